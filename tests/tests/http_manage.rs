//! Managing a show over HTTP: only its organizer (or an admin) blocks and unblocks
//! seats, changes tier prices and cancels it; holds keep the price they were quoted.

use boxoffice_api::auth::Role;
use boxoffice_tests::backends;
use boxoffice_tests::http::Server;
use reqwest::Method as M;
use serde_json::{Value, json};

async fn status_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["code"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizers_manage_their_own_shows() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let owner = server.user(&[Role::Organizer]).await.token;
        let rival = server.user(&[Role::Organizer]).await.token;
        let admin = server.user(&[Role::Admin]).await.token;
        let buyer = server.user(&[]).await.token;
        let show: Value = server
            .req(M::POST, "/v1/shows", &owner)
            .json(&boxoffice_tests::fixtures::one_row_show(
                "Managed night",
                6,
                "50.00",
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = show["show_id"].as_str().unwrap().to_string();
        let path = |p: &str| format!("/v1/shows/{id}{p}");
        let held: Value = server
            .req(M::POST, &path("/holds"), &buyer)
            .json(&json!({"seats": ["1-A-1"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(held["total"]["amount"], "50.00");

        // Who may: the owner and admins; a rival organizer and a buyer may not.
        let block = json!({"seats": ["1-A-2"], "reason": "camera"});
        assert_eq!(
            status_code(
                server
                    .req(M::POST, &path("/seats/block"), &rival)
                    .json(&block)
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (403, "forbidden".into())
        );
        assert_eq!(
            status_code(
                server
                    .req(M::POST, &path("/seats/block"), &buyer)
                    .json(&block)
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (403, "forbidden".into())
        );
        let missing = "/v1/shows/shw_0000000000000000000000000000abcd/seats/block";
        assert_eq!(
            status_code(
                server
                    .req(M::POST, missing, &owner)
                    .json(&block)
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (404, "show_not_found".into())
        );

        // Blocking: a held seat cannot be blocked; a free one can, and cannot be held then.
        let held_seat = json!({"seats": ["1-A-1", "1-A-2"]});
        assert_eq!(
            status_code(
                server
                    .req(M::POST, &path("/seats/block"), &owner)
                    .json(&held_seat)
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (409, "seats_unavailable".into())
        );
        assert_eq!(
            server
                .req(M::POST, &path("/seats/block"), &owner)
                .json(&block)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let on_blocked = server
            .req(M::POST, &path("/holds"), &buyer)
            .json(&json!({"seats": ["1-A-2"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            status_code(on_blocked).await,
            (409, "seats_unavailable".into())
        );
        let empty = json!({"seats": []});
        assert_eq!(
            status_code(
                server
                    .req(M::POST, &path("/seats/block"), &owner)
                    .json(&empty)
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (422, "validation_failed".into())
        );
        let unblocked = server
            .req(M::POST, &path("/seats/unblock"), &admin)
            .json(&json!({"seats": ["1-A-2"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(unblocked.status(), 200);
        let position = unblocked.json::<Value>().await.unwrap()["position"]
            .as_u64()
            .unwrap();
        let map: Value = server
            .client
            .get(format!(
                "{}{}?min_position={position}",
                server.base,
                path("/seatmap")
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            map["sections"][0]["rows"][0]["seats"][1]["status"],
            "available"
        );

        // Prices: new holds pay the new price, the earlier hold keeps its quote.
        let repriced = server
            .req(M::PUT, &path("/tiers/A"), &owner)
            .json(&json!({"price": "65.00"}))
            .send()
            .await
            .unwrap();
        assert_eq!(repriced.status(), 200);
        assert_eq!(
            repriced.json::<Value>().await.unwrap()["price_tiers"][0]["price"]["amount"],
            "65.00"
        );
        let later: Value = server
            .req(M::POST, &path("/holds"), &buyer)
            .json(&json!({"seats": ["1-A-3"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(later["total"]["amount"], "65.00");
        let first: Value = server
            .req(
                M::GET,
                &format!(
                    "/v1/reservations/{}",
                    held["reservation_id"].as_str().unwrap()
                ),
                &buyer,
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(first["total"]["amount"], "50.00");
        assert_eq!(
            status_code(
                server
                    .req(M::PUT, &path("/tiers/A"), &owner)
                    .json(&json!({"price": "-1"}))
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (422, "validation_failed".into())
        );
        assert_eq!(
            status_code(
                server
                    .req(M::PUT, &path("/tiers/Z"), &owner)
                    .json(&json!({"price": "1.00"}))
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (422, "validation_failed".into())
        );

        // Cancelling: holds end, sales stop, and it cannot be cancelled twice.
        assert_eq!(
            status_code(
                server
                    .req(M::POST, &path("/cancel"), &rival)
                    .json(&json!({"reason": "x"}))
                    .send()
                    .await
                    .unwrap()
            )
            .await
            .0,
            403
        );
        let cancelled = server
            .req(M::POST, &path("/cancel"), &owner)
            .json(&json!({"reason": "storm"}))
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 202);
        let first: Value = server
            .req(
                M::GET,
                &format!(
                    "/v1/reservations/{}",
                    held["reservation_id"].as_str().unwrap()
                ),
                &buyer,
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(first["status"], "cancelled");
        let after = server
            .req(M::POST, &path("/holds"), &buyer)
            .json(&json!({"seats": ["1-A-5"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(status_code(after).await, (409, "sales_closed".into()));
        assert_eq!(
            status_code(
                server
                    .req(M::POST, &path("/cancel"), &owner)
                    .json(&json!({"reason": "again"}))
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (409, "sales_closed".into())
        );
        let shown: Value = server
            .client
            .get(format!("{}{}", server.base, path("")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut status = shown["status"].as_str().unwrap().to_string();
        while status != "cancelled" && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let shown: Value = server
                .client
                .get(format!("{}{}", server.base, path("")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            status = shown["status"].as_str().unwrap().to_string();
        }
        assert_eq!(status, "cancelled");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_a_show_and_honours_if_match() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let owner = server.user(&[Role::Organizer]).await.token;
        let rival = server.user(&[Role::Organizer]).await.token;
        let created: Value = server
            .req(M::POST, "/v1/shows", &owner)
            .json(&boxoffice_tests::fixtures::one_row_show(
                "Patched", 4, "10.00",
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["show_id"].as_str().unwrap().to_string();
        let path = format!("/v1/shows/{id}");
        assert_eq!(created["version"], 1, "{}", backend.name);

        // Another organizer may not; a buyer is refused by role.
        let (status, code) = status_code(
            server
                .req(M::PATCH, &path, &rival)
                .json(&json!({"name": "Mine"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (403, "forbidden"));

        // Several fields at once, against the version read.
        let response = server
            .req(M::PATCH, &path, &owner)
            .header("if-match", "\"1\"")
            .json(&json!({
                "name": "Patched (late show)",
                "starts_at": "2030-05-01T22:00:00Z",
                "sales_close_at": "2030-05-01T21:00:00Z"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["etag"], "\"4\"");
        let show: Value = response.json().await.unwrap();
        assert_eq!(show["name"], "Patched (late show)");
        assert_eq!(show["starts_at"], "2030-05-01T22:00:00Z");
        assert_eq!(show["sales_close_at"], "2030-05-01T21:00:00Z");
        assert_eq!(show["version"], 4);

        // A stale If-Match changes nothing: 412 with the current version.
        let response = server
            .req(M::PATCH, &path, &owner)
            .header("if-match", "\"1\"")
            .json(&json!({"name": "Lost update"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 412);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            (problem["code"].as_str(), problem["version"].as_u64()),
            (Some("precondition_failed"), Some(4))
        );

        // null clears the close of sales; an invalid result is refused whole.
        let (status, _) = status_code(
            server
                .req(M::PATCH, &path, &owner)
                .json(&json!({"sales_close_at": null}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        let (status, code) = status_code(
            server
                .req(M::PATCH, &path, &owner)
                .json(&json!({"name": "", "sales_open_at": "2030-01-01T00:00:00Z"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (422, "validation_failed"));
        let (status, code) = status_code(
            server
                .req(M::PATCH, &path, &owner)
                .json(&json!({"colour": "red"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (422, "validation_failed"));

        // GET gives the version as ETag (once the read model has the change).
        let mut etag = String::new();
        for _ in 0..250 {
            let response = server
                .client
                .get(format!("{}{path}", server.base))
                .send()
                .await
                .unwrap();
            let status = response.status();
            etag = match response.headers().get("etag") {
                Some(value) => value.to_str().unwrap().to_string(),
                None => format!("none (status {status}: {})", response.text().await.unwrap()),
            };
            if etag == "\"5\"" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(etag, "\"5\"");
        server.stop().await;
    }
}
