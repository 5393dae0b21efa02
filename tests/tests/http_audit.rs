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
