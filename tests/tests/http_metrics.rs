//! `GET /metrics` over real HTTP on both backends: after a show and a hold, the scrape
//! has per-route request counts and latency buckets under route templates, the engine's
//! counters, and records an unknown path as `unmatched`, never under its raw path. A
//! second server in the same process keeps its own numbers.

use boxoffice_api::auth::Role;
use boxoffice_tests::http::Server;
use boxoffice_tests::{backends, fresh_sqlite_url};
use reqwest::Method as M;
use serde_json::{Value, json};

const HOLDS_ROUTE: &str = r#"route="/v1/shows/{show_id}/holds""#;

/// Scrapes `/metrics` without a token and checks the response is the text format.
async fn scrape(server: &Server) -> String {
    let response = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The lines of the series `name` (exactly that name) having every label in `labels`.
fn series<'a>(text: &'a str, name: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .collect()
}

/// The value of the single series `name` with `labels`.
fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    let lines = series(text, name, labels);
    assert_eq!(lines.len(), 1, "{name} {labels:?} in:\n{text}");
    let (_, value) = lines[0].rsplit_once(' ').expect("name and value");
    value
        .parse()
        .unwrap_or_else(|_| panic!("a number: {}", lines[0]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_publish_the_engine() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let buyer = server.user(&[]).await.token;

        let created = server
            .req(M::POST, "/v1/shows", &organizer)
            .json(&boxoffice_tests::fixtures::contract_show())
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", backend.name);
        let show: Value = created.json().await.unwrap();
        let show_id = show["show_id"].as_str().unwrap().to_string();
        let held = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .json(&json!({"seats": ["101-A-1", "101-A-2"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), 201, "{}", backend.name);
        let taken = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .json(&json!({"seats": ["101-A-1"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(taken.status(), 409, "{}", backend.name);
        let unknown = format!("/no-such-route-{}", uuid::Uuid::new_v4().simple());
        let missing = server.req(M::GET, &unknown, &buyer).send().await.unwrap();
        assert_eq!(missing.status(), 404);

        let text = scrape(&server).await;
        let name = backend.name;

        // Requests are counted per route template, method and status.
        let holds_201 = [HOLDS_ROUTE, r#"method="POST""#, r#"status="201""#];
        assert_eq!(
            value(&text, "http_requests_total", &holds_201),
            1.0,
            "{name}"
        );
        let holds_409 = [HOLDS_ROUTE, r#"status="409""#];
        assert_eq!(
            value(&text, "http_requests_total", &holds_409),
            1.0,
            "{name}"
        );
        let shows_201 = [r#"route="/v1/shows""#, r#"status="201""#];
        assert_eq!(
            value(&text, "http_requests_total", &shows_201),
            1.0,
            "{name}"
        );
        assert_eq!(value(&text, "boxoffice_holds_placed_total", &[]), 1.0);

        // Both hold requests are in the latency histogram, in buckets from 1 ms to 10 s.
        assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
        let buckets = series(
            &text,
            "http_request_duration_seconds_bucket",
            &[HOLDS_ROUTE],
        );
        assert!(
            buckets.iter().any(|l| l.contains(r#"le="0.001""#)),
            "{text}"
        );
        assert!(buckets.iter().any(|l| l.contains(r#"le="10""#)), "{text}");
        let count = value(&text, "http_request_duration_seconds_count", &[HOLDS_ROUTE]);
        assert_eq!(count, 2.0, "{name}");
        let inf = [HOLDS_ROUTE, r#"le="+Inf""#];
        let all = value(&text, "http_request_duration_seconds_bucket", &inf);
        assert_eq!(all, 2.0, "{name}");

        // The engine appended the show's creation and the hold.
        assert!(value(&text, "boxoffice_engine_batches_total", &[]) >= 2.0);
        assert!(value(&text, "boxoffice_engine_commands_total", &[]) >= 2.0);
        assert!(value(&text, "boxoffice_engine_events_appended_total", &[]) >= 3.0);
        assert_eq!(
            value(&text, "boxoffice_engine_append_failures_total", &[]),
            0.0
        );
        assert!(value(&text, "boxoffice_engine_mean_batch_commands", &[]) >= 1.0);
        assert!(value(&text, "boxoffice_engine_mean_append_seconds", &[]) > 0.0);
        for counter in [
            "boxoffice_engine_conflicts_total",
            "boxoffice_engine_reloads_total",
            "boxoffice_engine_expiries_total",
            "boxoffice_engine_decide_microseconds_total",
            "boxoffice_engine_append_microseconds_total",
        ] {
            assert!(value(&text, counter, &[]) >= 0.0, "{counter}");
            assert!(
                text.contains(&format!("# TYPE {counter} counter")),
                "{counter}"
            );
        }

        // An unknown path is one `unmatched` series; the path itself appears nowhere.
        let unmatched = [r#"route="unmatched""#, r#"status="404""#];
        assert_eq!(
            value(&text, "http_requests_total", &unmatched),
            1.0,
            "{name}"
        );
        assert!(!text.contains(&unknown), "{text}");
        assert!(!text.contains(&show_id), "a raw show path leaked:\n{text}");

        // A second server in this process has its own recorder: none of the above.
        let other = Server::start(&fresh_sqlite_url()).await;
        let fresh = scrape(&other).await;
        assert!(series(&fresh, "http_requests_total", &[HOLDS_ROUTE]).is_empty());
        assert_eq!(value(&fresh, "boxoffice_engine_batches_total", &[]), 0.0);
        other.stop().await;

        // The scrape before this one is counted under its own route.
        let again = scrape(&server).await;
        let scrapes = [r#"route="/metrics""#, r#"status="200""#];
        assert!(value(&again, "http_requests_total", &scrapes) >= 1.0);
        server.stop().await;
    }
}
