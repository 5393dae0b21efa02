//! `GET /v1/audit` over HTTP: auditors and admins read the raw event log in order, for
//! the whole log, one show or one stream, page by page; buyers and organizers may not.

use boxoffice_api::auth::Role;
use boxoffice_tests::backends;
use boxoffice_tests::http::Server;
use reqwest::Method as M;
use serde_json::{Value, json};

async fn get(server: &Server, path: &str, token: &str) -> (u16, Value) {
    let response = server.req(M::GET, path, token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_read_the_log_in_order() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer_user = server.user(&[Role::Organizer]).await;
        let organizer = organizer_user.token.clone();
        let auditor = server.user(&[Role::Auditor]).await.token;
        let buyer = server.user(&[]).await;
        let show: Value = server
            .req(M::POST, "/v1/shows", &organizer)
            .json(&boxoffice_tests::fixtures::one_row_show(
                "Audited", 5, "10.00",
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let show = show["show_id"].as_str().unwrap().to_string();
        for seat in ["1-A-1", "1-A-2", "1-A-3"] {
            let status = server
                .req(M::POST, &format!("/v1/shows/{show}/holds"), &buyer.token)
                .json(&json!({ "seats": [seat] }))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 201);
        }

        for token in [&buyer.token, &organizer] {
            let (status, problem) = get(&server, "/v1/audit", token).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (403, Some("forbidden")),
                "{}",
                backend.name
            );
        }

        // One show's log, two events a page, every event once, positions increasing.
        let mut seen: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/audit?show_id={show}&limit=2&cursor={c}"),
                None => format!("/v1/audit?show_id={show}&limit=2"),
            };
            let (status, page) = get(&server, &path, &auditor).await;
            assert_eq!(status, 200, "{page}");
            seen.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        // ShowScheduled, then per hold ReservationPlaced + SeatHeld.
        assert_eq!(seen.len(), 7, "{seen:?}");
        assert_eq!(seen[0]["type"], "ShowScheduled");
        assert_eq!(seen[0]["actor"], organizer_user.user_id.as_str());
        let positions: Vec<u64> = seen
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        let placed = seen
            .iter()
            .find(|e| e["type"] == "ReservationPlaced")
            .unwrap();
        assert_eq!(placed["actor"], buyer.user_id.as_str());
        assert_eq!(placed["data"]["user_id"], buyer.user_id.as_str());
        assert!(placed["correlation_id"].is_string());

        // One stream: a seat's history.
        let stream = format!("seat-{show}-1-A-2");
        let (status, page) = get(&server, &format!("/v1/audit?stream={stream}"), &auditor).await;
        assert_eq!(status, 200);
        let types: Vec<&str> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["SeatHeld"]);
        assert_eq!(page["data"][0]["version"], 1);

        // `after` skips what was read; a bad cursor is a validation error.
        let (_, page) = get(
            &server,
            &format!("/v1/audit?show_id={show}&after={}", positions[5]),
            &auditor,
        )
        .await;
        assert_eq!(page["data"].as_array().unwrap().len(), 1);
        let (status, _) = get(&server, "/v1/audit?cursor=nope", &auditor).await;
        assert_eq!(status, 422);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sales_report_counts_what_was_sold_refunded_and_held() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let rival = server.user(&[Role::Organizer]).await.token;
        let auditor = server.user(&[Role::Auditor]).await.token;
        let support = server.user(&[Role::Support]).await.token;
        let buyer = server.user(&[]).await.token;
        let show: Value = server
            .req(M::POST, "/v1/shows", &organizer)
            .json(&boxoffice_tests::fixtures::contract_show())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let show = show["show_id"].as_str().unwrap().to_string();
        let hold = |body: Value| {
            let (server, show, buyer) = (&server, show.clone(), buyer.clone());
            async move {
                let r: Value = server
                    .req(M::POST, &format!("/v1/shows/{show}/holds"), &buyer)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r["reservation_id"].as_str().unwrap().to_string()
            }
        };
        let pay = |reservation: String| {
            let (server, buyer) = (&server, buyer.clone());
            async move {
                let r: Value = server
                    .req(
                        M::POST,
                        &format!("/v1/reservations/{reservation}/checkout?wait_seconds=10"),
                        &buyer,
                    )
                    .json(&json!({"payment_token": "tok_visa"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(r["status"], "confirmed", "{r}");
                r["order_id"].as_str().unwrap().to_string()
            }
        };
        // Two front seats (tier A, 120.00) and two floor places (tier B, 60.00) paid;
        // the floor order refunded; one back seat only held.
        pay(hold(json!({"seats": ["101-A-1", "101-A-2"]})).await).await;
        let floor = pay(hold(json!({"section": "floor", "quantity": 2})).await).await;
        let refund = server
            .req(M::POST, &format!("/v1/orders/{floor}/refund"), &support)
            .send()
            .await
            .unwrap();
        assert_eq!(refund.status(), 200);
        hold(json!({"seats": ["101-B-1"]})).await;

        let path = format!("/v1/shows/{show}/sales");
        for (token, want) in [(&buyer, 403), (&rival, 403), (&support, 403)] {
            let (status, _) = get(&server, &path, token).await;
            assert_eq!(status, want, "{}", backend.name);
        }
        let (status, report) = get(&server, &path, &auditor).await;
        assert_eq!(status, 200, "{report}");
        let (status, by_owner) = get(&server, &path, &organizer).await;
        assert_eq!(status, 200);
        assert_eq!(report, by_owner);
        assert_eq!(report["tickets_sold"], 4, "{report}");
        assert_eq!(report["tickets_refunded"], 2);
        assert_eq!(
            report["revenue"],
            json!({"amount": "360.00", "currency": "EUR"})
        );
        assert_eq!(
            report["refunds"],
            json!({"amount": "120.00", "currency": "EUR"})
        );
        assert_eq!(
            report["net_revenue"],
            json!({"amount": "240.00", "currency": "EUR"})
        );
        let tier_a = report["by_tier"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == "A")
            .unwrap();
        assert_eq!(
            (
                tier_a["tickets_sold"].as_i64(),
                tier_a["revenue"]["amount"].as_str()
            ),
            (Some(2), Some("240.00"))
        );
        assert_eq!(report["holds"]["created"], 3);
        assert_eq!(report["holds"]["converted"], 2);
        assert_eq!(report["holds"]["open"], 1);
        let (status, _) = get(
            &server,
            "/v1/shows/shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3/sales",
            &auditor,
        )
        .await;
        assert_eq!(status, 404);
        server.stop().await;
    }
}
