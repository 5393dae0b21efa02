//! PostgreSQL goes away under a running server: requests fail with 503 (never a 500 or
//! a hang), the process keeps running, and once the database is back it recovers by
//! itself without losing anything it acknowledged. Once with single requests, once in
//! the middle of a hold-and-checkout storm whose connections are cut and whose database
//! refuses connections for a while. PostgreSQL only (it needs a server whose connections
//! can be cut); skipped without `DATABASE_URL`.

use std::time::{Duration, Instant};

use boxoffice_tests::http::Server;
use boxoffice_tests::payments::check_payments;
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

/// What a storm buyer saw.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    statuses: std::collections::BTreeMap<u16, usize>,
    last_ack: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_survives_cut_connections_and_an_outage() {
    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        println!("skipped: DATABASE_URL not set");
        return;
    };
    const SEATS: u32 = 200;
    const BUYERS: usize = 8;
    let url = fresh_postgres_url(&admin_url).await;
    let database = url.rsplit_once('/').unwrap().1.to_string();
    let dir =
        std::env::temp_dir().join(format!("boxoffice-storm-{}", uuid::Uuid::new_v4().simple()));
    let mut config = boxoffice_api::Config::for_tests(url.clone(), dir);
    // The storm is as fast as the server lets it be; rate limits are another test's.
    config.rate_limit_per_user = 0;
    config.rate_limit_per_ip = 0;
    let server = Server::start_with(config).await;
    let organizer = server
        .user(&[boxoffice_api::auth::Role::Organizer])
        .await
        .token;
    let mut body = boxoffice_tests::fixtures::one_row_show("Storm night", SEATS, "10.00");
    body["limits"] = json!({
        "hold_ttl_seconds": 300, "payment_timeout_seconds": 30,
        "max_tickets_per_user": 50, "max_active_holds_per_user": 20
    });
    let show: Value = server
        .req(reqwest::Method::POST, "/v1/shows", &organizer)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let show_id = show["show_id"].as_str().expect("show created").to_string();

    let storm_until = Instant::now() + Duration::from_secs(8);
    let mut buyers = Vec::new();
    for n in 0..BUYERS {
        let token = server.user(&[]).await.token;
        let (client, base, show) = (server.client.clone(), server.base.clone(), show_id.clone());
        buyers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut seat = n as u32;
            let mut round = 0u32;
            while Instant::now() < storm_until {
                seat = (seat + BUYERS as u32) % SEATS;
                let sent = Instant::now();
                let held = client
                    .post(format!("{base}/v1/shows/{show}/holds"))
                    .bearer_auth(&token)
                    .json(&json!({"seats": [format!("1-A-{}", seat + 1)]}))
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await
                    .expect("the server answers while its database is gone");
                assert!(
                    sent.elapsed() < Duration::from_secs(15),
                    "a lost database must not hang requests"
                );
                *seen.statuses.entry(held.status().as_u16()).or_default() += 1;
                if held.status() != 201 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let held: Value = held.json().await.unwrap();
                let reservation = held["reservation_id"].as_str().unwrap().to_string();
                seen.acknowledged.push(reservation.clone());
                seen.last_ack = Some(Instant::now());
                round += 1;
                // Most holds are given back, so seats keep turning over; every tenth is paid.
                let paid = if round.is_multiple_of(10) {
                    client
                        .post(format!(
                            "{base}/v1/reservations/{reservation}/checkout?wait_seconds=0"
                        ))
                        .bearer_auth(&token)
                        .json(&json!({"payment_token": "tok_visa"}))
                } else {
                    client
                        .delete(format!("{base}/v1/reservations/{reservation}"))
                        .bearer_auth(&token)
                }
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .expect("the server answers while its database is gone");
                *seen.statuses.entry(paid.status().as_u16()).or_default() += 1;
            }
            seen
        }));
    }

    // The faults: connections cut twice, and the database gone for two seconds between.
    let cut = |reachable| set_reachable(&admin_url, &database, reachable);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    cut(true).await;
    terminate(&admin_url, &database).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cut(false).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    cut(true).await;
    let outage_ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    terminate(&admin_url, &database).await;

    let mut acknowledged = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut last_ack = None;
    for buyer in buyers {
        let seen = buyer.await.unwrap();
        acknowledged.extend(seen.acknowledged);
        for (status, n) in seen.statuses {
            *statuses.entry(status).or_default() += n;
        }
        last_ack = last_ack.max(seen.last_ack);
    }
    println!(
        "statuses {statuses:?}; {} holds acknowledged",
        acknowledged.len()
    );
    // Only answers a client can act on: done, taken, or "try again" while it was gone.
    for status in statuses.keys() {
        assert!(
            [200, 201, 202, 409, 503].contains(status),
            "unexpected status {status} during the storm: {statuses:?}"
        );
    }
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "the outage was not noticed"
    );
    assert!(
        last_ack.is_some_and(|at| at > outage_ended),
        "no hold went through after the database came back"
    );

    // Settled: every payment ended, nothing acknowledged is missing, every rule holds.
    let store = open(&url).await;
    let show_id = show_id.parse().unwrap();
    let settle_by = Instant::now() + Duration::from_secs(30);
    loop {
        let log = partition(&store, show_id).await;
        check_log(show_id, &log).unwrap();
        match check_payments(&log, Some(chrono::Utc::now() - chrono::Duration::days(1))) {
            Ok(report) => {
                for id in &acknowledged {
                    let id = id.parse().unwrap();
                    assert!(
                        report.trails.contains_key(&id),
                        "{id} acknowledged but not in the log"
                    );
                }
                println!(
                    "{} tickets issued after the faults",
                    report.count(|t| t.issued == 1)
                );
                break;
            }
            Err(e) if Instant::now() > settle_by => panic!("not settled: {e}"),
            Err(e)
                if e.contains("in flight after settling")
                    || e.contains("captured without tickets") =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    server.stop().await;
}

/// Cuts every open connection to the database (new ones are still allowed).
async fn terminate(admin_url: &str, database: &str) {
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(database)
        .execute(&mut admin)
        .await
        .unwrap();
}
