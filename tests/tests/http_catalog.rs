//! The show catalogue over HTTP: soonest first, search by text, city and date range,
//! and cursor pagination that visits every match once.

use boxoffice_api::auth::Role;
use boxoffice_tests::backends;
use boxoffice_tests::http::Server;
use reqwest::Method as M;
use serde_json::{Value, json};

fn show(name: &str, city: &str, starts_at: &str) -> Value {
    json!({
        "name": name,
        "venue": {"name": format!("{city} Arena"), "city": city, "country": "PT", "timezone": "Europe/Lisbon"},
        "starts_at": starts_at,
        "currency": "EUR",
        "price_tiers": [{"id": "A", "name": "All", "price": "10.00"}],
        "sections": [{"id": "1", "name": "One", "kind": "seated", "rows": [{"row": "A", "seats": 4, "tier": "A"}]}]
    })
}

async fn names(server: &Server, query: &str) -> (Vec<String>, Option<String>) {
    let page: Value = server
        .client
        .get(format!("{}/v1/shows?{query}", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    (names, page["next_cursor"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_are_listed_soonest_first_searched_and_paged() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let shows = [
            ("Fado Night", "Lisbon", "2030-03-01T20:00:00Z"),
            ("Jazz at the Docks", "Porto", "2030-01-15T21:00:00Z"),
            ("Fado Matinee", "Porto", "2030-02-01T15:00:00Z"),
            ("Rock Festival", "Lisbon", "2030-06-10T18:00:00Z"),
            ("Opera Gala", "Lisbon", "2030-04-20T19:30:00Z"),
        ];
        let mut last_position = 0;
        let mut first_id = String::new();
        for (name, city, at) in shows {
            let created = server
                .req(M::POST, "/v1/shows", &organizer)
                .json(&show(name, city, at))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
            last_position = created.headers()["x-log-position"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            if first_id.is_empty() {
                first_id = created.json::<Value>().await.unwrap()["show_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
            }
        }
        // Wait (bounded) for the read model to see the last show.
        let caught_up = server
            .client
            .get(format!(
                "{}/v1/shows/{first_id}/seatmap?min_position={last_position}",
                server.base
            ))
            .send()
            .await
            .unwrap();
        assert!(
            caught_up.json::<Value>().await.unwrap()["position"]
                .as_u64()
                .is_some()
        );

        let (all, next) = names(&server, "").await;
        assert_eq!(
            all,
            [
                "Jazz at the Docks",
                "Fado Matinee",
                "Fado Night",
                "Opera Gala",
                "Rock Festival"
            ],
            "{}",
            backend.name
        );
        assert_eq!(next, None);

        // Paging two at a time visits each show once, in order.
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let query = match &cursor {
                Some(c) => format!("limit=2&cursor={c}"),
                None => "limit=2".to_string(),
            };
            let (page, next) = names(&server, &query).await;
            assert!(page.len() <= 2);
            paged.extend(page);
            cursor = next;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(paged, all);

        assert_eq!(
            names(&server, "q=fado").await.0,
            ["Fado Matinee", "Fado Night"]
        );
        assert_eq!(
            names(&server, "q=PORTO%20arena").await.0,
            ["Jazz at the Docks", "Fado Matinee"]
        );
        assert_eq!(
            names(&server, "city=lisbon").await.0,
            ["Fado Night", "Opera Gala", "Rock Festival"]
        );
        assert_eq!(
            names(&server, "from=2030-02-01T15:00:00Z&to=2030-04-20T19:30:00Z")
                .await
                .0,
            ["Fado Matinee", "Fado Night"]
        );
        assert_eq!(names(&server, "q=fado&city=lisbon").await.0, ["Fado Night"]);
        let listed: Value = server
            .client
            .get(format!("{}/v1/shows?q=opera", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["data"][0]["status"], "on_sale");
        assert_eq!(listed["data"][0]["sections"][0]["available"], 4);

        for bad in [
            "limit=0",
            "limit=101",
            "limit=abc",
            "cursor=zz",
            "from=yesterday",
            "from=2030-02-01T00:00:00Z&to=2030-01-01T00:00:00Z",
        ] {
            let response = server
                .client
                .get(format!("{}/v1/shows?{bad}", server.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 422, "{bad}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "validation_failed", "{bad}");
        }
        server.stop().await;
    }
}
