//! The first HTTP slice over real HTTP: the server runs on port 0 with a fresh store
//! (both backends), and a client creates a show, reads it and its seat map, holds seats
//! in all three ways, reads and cancels the reservation, and gets problem+json errors.

use boxoffice_api::auth::Role;
use boxoffice_tests::backends;
use boxoffice_tests::http::Server;
use serde_json::{Value, json};

async fn problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_creates_a_show_holds_and_cancels_over_http() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let buyer = server.user(&[]).await.token;
        let mut others = Vec::new();
        for _ in 0..5 {
            others.push(server.user(&[]).await.token);
        }
        use reqwest::Method as M;

        let health = server
            .client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(
            server
                .client
                .get(format!("{}/readyz", server.base))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );

        let created = server
            .req(M::POST, "/v1/shows", &organizer)
            .json(&boxoffice_tests::fixtures::contract_show())
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", backend.name);
        let location = created.headers()["location"].to_str().unwrap().to_string();
        let show: Value = created.json().await.unwrap();
        let show_id = show["show_id"].as_str().unwrap().to_string();
        assert_eq!(location, format!("/v1/shows/{show_id}"));
        assert_eq!(show["status"], "on_sale");
        assert_eq!(show["sections"][0]["available"], 60);
        assert_eq!(show["sections"][1]["capacity"], 5);

        // Explicit seats.
        let held = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .header("idempotency-key", "hold-1")
            .json(&json!({"seats": ["101-A-1", "101-A-2"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), 201);
        let position: u64 = held.headers()["x-log-position"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let hold: Value = held.json().await.unwrap();
        assert_eq!(hold["status"], "held");
        assert_eq!(
            hold["total"],
            json!({"amount": "240.00", "currency": "EUR"})
        );
        assert_eq!(hold["origin"], "direct");
        let rsv = hold["reservation_id"].as_str().unwrap().to_string();

        // The same key and body return the same reservation; another body is refused.
        let again: Value = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .header("idempotency-key", "hold-1")
            .json(&json!({"seats": ["101-A-1", "101-A-2"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(again["reservation_id"], rsv.as_str());
        let reused = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .header("idempotency-key", "hold-1")
            .json(&json!({"seats": ["101-A-3"]}))
            .send()
            .await
            .unwrap();
        problem(reused, 422, "idempotency_key_reused").await;

        // The seat map reads its own writes and answers 304 to a matching ETag.
        let map = server
            .req(
                M::GET,
                &format!("/v1/shows/{show_id}/seatmap?min_position={position}"),
                &buyer,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(map.status(), 200);
        let etag = map.headers()["etag"].to_str().unwrap().to_string();
        let map: Value = map.json().await.unwrap();
        assert!(map["position"].as_u64().unwrap() >= position);
        let seat = &map["sections"][0]["rows"][0]["seats"][0];
        assert_eq!(seat["id"], "101-A-1");
        assert_eq!(seat["status"], "held");
        assert_eq!(
            seat["price"],
            json!({"amount": "120.00", "currency": "EUR"})
        );
        let not_modified = server
            .req(M::GET, &format!("/v1/shows/{show_id}/seatmap"), &buyer)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(not_modified.status(), 304);

        // Taken seats are named; GA and best-available bodies work.
        let taken = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &others[0])
            .json(&json!({"seats": ["101-A-2", "101-A-3"]}))
            .send()
            .await
            .unwrap();
        let body = problem(taken, 409, "seats_unavailable").await;
        assert_eq!(body["unavailable"], json!(["101-A-2"]));
        let ga = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &others[1])
            .json(&json!({"section": "floor", "quantity": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(ga.status(), 201);
        let ga: Value = ga.json().await.unwrap();
        assert_eq!(ga["section"], "floor");
        assert_eq!(ga["total"]["amount"], "120.00");
        let too_many = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &others[2])
            .json(&json!({"section": "floor", "quantity": 4}))
            .send()
            .await
            .unwrap();
        problem(too_many, 409, "sold_out").await;
        let best = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &others[3])
            .json(&json!({"section": "101", "quantity": 2, "best_available": true}))
            .send()
            .await
            .unwrap();
        let best: Value = best.json().await.unwrap();
        assert_eq!(best["seats"], json!(["101-A-15", "101-A-16"]));

        // Bad input is problem+json and changes nothing.
        let invalid = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .json(&json!({"seats": []}))
            .send()
            .await
            .unwrap();
        let body = problem(invalid, 422, "validation_failed").await;
        assert_eq!(body["errors"][0]["field"], "seats");
        let unknown = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .json(&json!({"seats": ["9-Z-1"]}))
            .send()
            .await
            .unwrap();
        problem(unknown, 422, "validation_failed").await;
        let malformed = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        problem(malformed, 400, "malformed_json").await;
        let no_show = server
            .req(
                M::POST,
                "/v1/shows/shw_0000000000000000000000000000000a/holds",
                &buyer,
            )
            .json(&json!({"seats": ["101-A-1"]}))
            .send()
            .await
            .unwrap();
        problem(no_show, 404, "show_not_found").await;
        let mut bad_show = boxoffice_tests::fixtures::contract_show();
        bad_show["price_tiers"][0]["price"] = json!("-1.00");
        bad_show["sections"][0]["rows"][0]["tier"] = json!("Z");
        let rejected = server
            .req(M::POST, "/v1/shows", &organizer)
            .json(&bad_show)
            .send()
            .await
            .unwrap();
        let body = problem(rejected, 422, "validation_failed").await;
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&"price_tiers[0].price")
                && fields.contains(&"sections[0].rows[0].tier"),
            "{fields:?}"
        );
        let unauthenticated = server
            .client
            .post(format!("{}/v1/shows", server.base))
            .json(&boxoffice_tests::fixtures::contract_show())
            .send()
            .await
            .unwrap();
        problem(unauthenticated, 401, "unauthorized").await;

        // The reservation: its owner reads and cancels it; anyone else gets 404.
        let read: Value = server
            .req(M::GET, &format!("/v1/reservations/{rsv}"), &buyer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(read["seats"], json!(["101-A-1", "101-A-2"]));
        let other = server
            .req(M::GET, &format!("/v1/reservations/{rsv}"), &others[4])
            .send()
            .await
            .unwrap();
        problem(other, 404, "reservation_not_found").await;
        let cancelled = server
            .req(M::DELETE, &format!("/v1/reservations/{rsv}"), &buyer)
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 200);
        let cancelled: Value = cancelled.json().await.unwrap();
        assert_eq!(cancelled["status"], "cancelled");
        let twice = server
            .req(M::DELETE, &format!("/v1/reservations/{rsv}"), &buyer)
            .send()
            .await
            .unwrap();
        problem(twice, 409, "reservation_not_held").await;

        // Errors made outside the handlers are problem+json too.
        let bad_query = server
            .req(
                M::GET,
                &format!("/v1/shows/{show_id}/seatmap?min_position=abc"),
                &buyer,
            )
            .send()
            .await
            .unwrap();
        problem(bad_query, 400, "bad_request").await;
        let too_big = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .header("content-type", "application/json")
            .body(format!("{{\"seats\": [\"{}\"]}}", "x".repeat(300 * 1024)))
            .send()
            .await
            .unwrap();
        problem(too_big, 413, "payload_too_large").await;
        let not_json = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .body("seats")
            .send()
            .await
            .unwrap();
        problem(not_json, 415, "unsupported_media_type").await;
        let wrong_method = server
            .req(M::PUT, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .send()
            .await
            .unwrap();
        problem(wrong_method, 405, "method_not_allowed").await;
        let missing = server
            .req(M::GET, "/v1/nothing-here", &buyer)
            .send()
            .await
            .unwrap();
        problem(missing, 404, "not_found").await;
        server.stop().await;
    }
}
