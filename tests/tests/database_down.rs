//! PostgreSQL goes away under a running server: requests fail with 503 (never a 500 or
//! a hang), the process keeps running, and once the database is back it recovers by
//! itself without losing anything it acknowledged. PostgreSQL only (it needs a server
//! whose connections can be cut); skipped without `DATABASE_URL`.

use std::time::{Duration, Instant};

use boxoffice_tests::http::Server;
use boxoffice_tests::{check_log, fresh_postgres_url, open, partition};
use serde_json::{Value, json};
use sqlx::Connection;

/// Refuses new connections to the database and cuts the open ones (or lets them back).
async fn set_reachable(admin_url: &str, database: &str, reachable: bool) {
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS {reachable}"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    if !reachable {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(database)
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_gives_503_and_the_server_recovers() {
    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        println!("skipped: DATABASE_URL not set");
        return;
    };
    let url = fresh_postgres_url(&admin_url).await;
    let database = url.rsplit_once('/').unwrap().1.to_string();
    let server = Server::start(&url).await;
    let organizer = server
        .user(&[boxoffice_api::auth::Role::Organizer])
        .await
        .token;
    let buyer = server.user(&[]).await.token;
    use reqwest::Method as M;

    let show: Value = server
        .req(M::POST, "/v1/shows", &organizer)
        .json(&boxoffice_tests::fixtures::one_row_show(
            "Outage night",
            50,
            "10.00",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let show_id = show["show_id"].as_str().unwrap().to_string();
    let hold = |seat: &str| {
        server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .json(&json!({"seats": [seat]}))
    };
    let before = hold("1-A-1").send().await.unwrap();
    assert_eq!(before.status(), 201);
    let acknowledged: Value = before.json().await.unwrap();

    set_reachable(&admin_url, &database, false).await;
    let started = Instant::now();
    let during = hold("1-A-2").send().await.unwrap();
    assert_eq!(during.status(), 503, "{:?}", during.text().await);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a lost database must not hang requests"
    );
    let ready = server
        .client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        server
            .client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    set_reachable(&admin_url, &database, true).await;
    // Recovery is by itself: retry (bounded) until a hold goes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut recovered = false;
    let mut n = 3;
    while Instant::now() < deadline {
        let r = hold(&format!("1-A-{n}")).send().await.unwrap();
        if r.status() == 201 {
            recovered = true;
            break;
        }
        assert_eq!(r.status(), 503);
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "the server did not recover after the database came back"
    );
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

    // What was acknowledged before the outage is still there.
    let rsv = acknowledged["reservation_id"].as_str().unwrap();
    let read: Value = server
        .req(M::GET, &format!("/v1/reservations/{rsv}"), &buyer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "held");
    server.stop().await;

    let store = open(&url).await;
    let show_id = show_id.parse().unwrap();
    let log = partition(&store, show_id).await;
    check_log(show_id, &log).unwrap();
}
