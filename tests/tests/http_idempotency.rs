//! Idempotency keys over HTTP (Stripe's semantics): ten concurrent identical requests
//! with one key make one effect and one answer; a repeat replays it; the key with a
//! different body is refused; keys are per user.

use std::collections::HashSet;

use boxoffice_api::auth::Role;
use boxoffice_tests::http::Server;
use boxoffice_tests::{backends, open, partition};
use reqwest::Method as M;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_one_effect_one_answer() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let buyer = server.user(&[]).await.token;

        // Creating a show twice with one key makes one show.
        let create = || {
            server
                .req(M::POST, "/v1/shows", &organizer)
                .header("idempotency-key", "show-1")
                .json(&boxoffice_tests::fixtures::one_row_show(
                    "Idempotent night",
                    20,
                    "10.00",
                ))
        };
        let first = create().send().await.unwrap();
        assert_eq!(first.status(), 201);
        let location = first.headers()["location"].to_str().unwrap().to_string();
        let first: Value = first.json().await.unwrap();
        let again = create().send().await.unwrap();
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.headers()["location"].to_str().unwrap(), location);
        assert_eq!(again.json::<Value>().await.unwrap(), first);
        let show_id = first["show_id"].as_str().unwrap().to_string();

        // Ten at once with one key: one reservation, one answer.
        let hold = format!("/v1/shows/{show_id}/holds");
        let body = json!({"seats": ["1-A-1", "1-A-2"]});
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let request = server
                .req(M::POST, &hold, &buyer)
                .header("idempotency-key", "hold-key")
                .json(&body);
            tasks.push(tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            }));
        }
        let mut answers = HashSet::new();
        let mut created = 0;
        for t in tasks {
            let (status, body) = t.await.unwrap();
            match status {
                201 => {
                    created += 1;
                    answers.insert(body.to_string());
                }
                409 => assert_eq!(
                    body["code"], "idempotency_key_in_use",
                    "{}: {body}",
                    backend.name
                ),
                other => panic!("{}: unexpected {other}: {body}", backend.name),
            }
        }
        assert!(created >= 1, "{}: no request succeeded", backend.name);
        assert_eq!(
            answers.len(),
            1,
            "{}: different answers for one key: {answers:?}",
            backend.name
        );
        let store = open(&backend.url).await;
        let log = partition(&store, show_id.parse().unwrap()).await;
        assert_eq!(
            log.iter()
                .filter(|e| e.event_type == "ReservationPlaced")
                .count(),
            1,
            "{}: more than one effect",
            backend.name
        );

        // Once settled, the same request replays the same answer.
        let replay = server
            .req(M::POST, &hold, &buyer)
            .header("idempotency-key", "hold-key")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 201);
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        assert!(answers.contains(&replay.json::<Value>().await.unwrap().to_string()));

        // The key with a different body is refused and changes nothing.
        let reused = server
            .req(M::POST, &hold, &buyer)
            .header("x-idempotency-key", "hold-key")
            .json(&json!({"seats": ["1-A-3"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(reused.status(), 422);
        assert_eq!(
            reused.json::<Value>().await.unwrap()["code"],
            "idempotency_key_reused"
        );

        // Another user's key of the same name is another key.
        let other = server.user(&[]).await.token;
        let theirs = server
            .req(M::POST, &hold, &other)
            .header("idempotency-key", "hold-key")
            .json(&json!({"seats": ["1-A-5"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(theirs.status(), 201);
        assert!(theirs.headers().get("idempotent-replayed").is_none());

        // An error answer is kept too: the same request gets the same refusal.
        let taken = json!({"seats": ["1-A-1"]});
        let refused = server
            .req(M::POST, &hold, &other)
            .header("idempotency-key", "taken")
            .json(&taken)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 409);
        let refused_again = server
            .req(M::POST, &hold, &other)
            .header("idempotency-key", "taken")
            .json(&taken)
            .send()
            .await
            .unwrap();
        assert_eq!(refused_again.status(), 409);
        assert_eq!(refused_again.headers()["idempotent-replayed"], "true");
        assert_eq!(
            refused_again.headers()["content-type"],
            "application/problem+json"
        );
        let log = partition(&store, show_id.parse().unwrap()).await;
        assert_eq!(
            log.iter()
                .filter(|e| e.event_type == "ReservationPlaced")
                .count(),
            2
        );
        server.stop().await;
    }
}
