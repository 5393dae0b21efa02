//! The waitlist's fairness rules over HTTP, on both backends (EVENTS.md rule 5):
//! released seats go to the first waiting entry that fits, in order of joining; a group
//! too big for what was freed is passed over, not split; a user who reached the ticket
//! cap meanwhile is passed over; an unclaimed offer expires after the claim window and
//! passes the seats on; and released seats reach public sale only when no waiting entry
//! fits.

use std::time::{Duration, Instant};

use boxoffice_api::auth::Role;
use boxoffice_tests::backends;
use boxoffice_tests::http::Server;
use reqwest::Method as M;
use serde_json::{Value, json};

async fn call(
    server: &Server,
    method: M,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server.req(method, path, token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn entry(server: &Server, id: &str, token: &str) -> Value {
    call(server, M::GET, &format!("/v1/waitlist/{id}"), token, None)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_fit_in_order_groups_the_cap_and_the_claim_window() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let mut users = Vec::new();
        for _ in 0..7 {
            users.push(server.user(&[]).await.token);
        }
        let (a, b, c, d, e, f, g) = (
            &users[0], &users[1], &users[2], &users[3], &users[4], &users[5], &users[6],
        );
        let (status, show) = call(
            &server,
            M::POST,
            "/v1/shows",
            &organizer,
            Some(json!({
                "name": "Fair night",
                "venue": {"name": "Club", "city": "Porto", "country": "PT", "timezone": "Europe/Lisbon"},
                "starts_at": "2030-05-01T20:00:00Z",
                "currency": "EUR",
                "limits": {"max_tickets_per_user": 2, "waitlist_claim_seconds": 10},
                "price_tiers": [{"id": "A", "name": "All", "price": "20.00"}],
                "sections": [
                    {"id": "1", "name": "Stalls", "kind": "seated", "rows": [{"row": "A", "seats": 3, "tier": "A"}]},
                    {"id": "ga", "name": "Floor", "kind": "general_admission", "capacity": 5, "tier": "A"}
                ]
            })),
        )
        .await;
        assert_eq!(status, 201, "{show}");
        let show = show["show_id"].as_str().unwrap().to_string();
        let holds = format!("/v1/shows/{show}/holds");
        let waitlist = format!("/v1/shows/{show}/waitlist");
        let hold = |token: &String, seat: &'static str| {
            let (server, holds, token) = (&server, &holds, token.clone());
            async move {
                call(
                    server,
                    M::POST,
                    holds,
                    &token,
                    Some(json!({ "seats": [seat] })),
                )
                .await
            }
        };

        // Section 1 sells out.
        let (_, held_a) = hold(a, "1-A-1").await;
        let (_, held_b) = hold(b, "1-A-2").await;
        let (_, held_c) = hold(c, "1-A-3").await;
        assert!(held_a["reservation_id"].is_string() && held_b["reservation_id"].is_string());
        // The line, in order: D wants 2, A wants 1 (and then reaches the cap on the
        // floor), E wants 1, G wants 1.
        let join = |token: &String, quantity: u32| {
            let (server, waitlist, token) = (&server, &waitlist, token.clone());
            async move {
                let body = json!({"quantity": quantity, "section": "1"});
                call(server, M::POST, waitlist, &token, Some(body)).await
            }
        };
        let (status, w_d) = join(d, 2).await;
        assert_eq!(status, 201, "{}: {w_d}", backend.name);
        let (_, w_a) = join(a, 1).await;
        let (_, w_e) = join(e, 1).await;
        let (_, w_g) = join(g, 1).await;
        let ids: Vec<String> = [&w_d, &w_a, &w_e, &w_g]
            .iter()
            .map(|w| w["entry_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            [&w_d, &w_a, &w_e, &w_g].map(|w| w["position"].as_u64().unwrap()),
            [1, 2, 3, 4]
        );
        let (status, _) = call(
            &server,
            M::POST,
            &holds,
            a,
            Some(json!({"section": "ga", "quantity": 1})),
        )
        .await;
        assert_eq!(status, 201, "A reaches the cap of 2 on the floor");

        // C cancels: one seat. D's group of 2 does not fit, A is at the cap: E, the
        // first entry that fits, gets the offer; the seat is not on public sale.
        let rsv_c = held_c["reservation_id"].as_str().unwrap();
        let (status, _) = call(
            &server,
            M::DELETE,
            &format!("/v1/reservations/{rsv_c}"),
            c,
            None,
        )
        .await;
        assert_eq!(status, 200);
        let offered = entry(&server, &ids[2], e).await;
        assert_eq!(offered["status"], "offered", "{offered}");
        assert_eq!(entry(&server, &ids[0], d).await["status"], "waiting");
        assert_eq!(entry(&server, &ids[1], a).await["status"], "waiting");
        assert_eq!(entry(&server, &ids[3], g).await["status"], "waiting");
        let (status, taken) = hold(f, "1-A-3").await;
        assert_eq!(
            (status, taken["code"].as_str()),
            (409, Some("seats_unavailable"))
        );

        // E lets the claim window pass: the offer expires and passes on to G.
        let started = Instant::now();
        loop {
            let now = entry(&server, &ids[3], g).await;
            if now["status"] == "offered" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "G got no offer: {now}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(entry(&server, &ids[2], e).await["status"], "expired");
        let (status, _) = hold(f, "1-A-3").await;
        assert_eq!(status, 409, "still not public: it is G's offer now");

        // B cancels: one more seat. D still does not fit (1 free), A is capped, G already
        // has an offer: no waiting entry fits, so the seat returns to public sale.
        let rsv_b = held_b["reservation_id"].as_str().unwrap();
        call(
            &server,
            M::DELETE,
            &format!("/v1/reservations/{rsv_b}"),
            b,
            None,
        )
        .await;
        let (status, bought) = hold(f, "1-A-2").await;
        assert_eq!(status, 201, "{bought}");
        assert_eq!(entry(&server, &ids[0], d).await["status"], "waiting");
        server.stop().await;
    }
}
