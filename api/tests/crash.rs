//! The real `boxoffice` binary killed with SIGKILL at random moments during a storm of the
//! whole flow (named, best-available and GA holds paid with every test token, including
//! `tok_late_visa`, `tok_dup_visa` and `tok_timeout`; holds cancelled; waitlist joins once
//! sold out),
//! restarted on the same database and data directory, then left to settle: the log must
//! hold no captured payment without tickets, no double capture, no seat released with a
//! payment in flight, no hold alive past its deadline, and every payment must have ended;
//! every hold, cancellation and waitlist entry the server acknowledged must be in it.
//! On both backends. `CRASH_KILLS` sets the number of kills (default 3).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boxoffice_domain::ShowId;
use boxoffice_tests::payments::check_payments;
use boxoffice_tests::{backends, check_log, open, partition};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const TOKENS: [&str; 6] = [
    "tok_visa",
    "tok_visa",
    "tok_declined",
    "tok_timeout",
    "tok_late_visa",
    "tok_dup_visa",
];
const BUYERS: usize = 12;
const SEATS: u32 = 60;
const FLOOR: u32 = 20;

struct Node {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_boxoffice")
}

fn environment(cmd: &mut Command, url: &str, data: &Path, port: u16) {
    cmd.env("DATABASE_URL", url)
        .env("DATA_DIR", data)
        .env("EVENT_CHAIN_KEY_FILE", boxoffice_tests::chain_key_file())
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("JWT_SECRET", "crash-test-secret-that-is-long-enough-0123")
        .env("PAYMENT_WEBHOOK_SECRET", "crash-test-webhooks")
        .env("PAYSIM_LATENCY_MS", "150")
        .env("RATE_LIMIT_PER_USER", "10000")
        .env("RATE_LIMIT_PER_IP", "100000")
        .env("RUST_LOG", "warn")
        .env_remove("PAYMENT_PROVIDER_URL");
}

async fn start(url: &str, data: &Path, port: u16) -> Node {
    let mut cmd = Command::new(binary());
    cmd.arg("serve").stdout(Stdio::null()).stderr(Stdio::null());
    environment(&mut cmd, url, data, port);
    let child = cmd.spawn().expect("start boxoffice");
    let mut node = Node {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", node.base)).send().await
            && r.status() == 200
        {
            return node;
        }
        if started.elapsed() > Duration::from_secs(60) {
            kill(&mut node);
            panic!("server not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill(node: &mut Node) {
    // SIGKILL: no shutdown hook runs, in-flight requests and payments are cut anywhere.
    node.child.kill().expect("SIGKILL");
    node.child.wait().expect("reaped");
}

async fn token(client: &reqwest::Client, base: &str, email: &str) -> String {
    let body: Value = client
        .post(format!("{base}/v1/auth/token"))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().expect("token").to_string()
}

/// What the server acknowledged before a kill, to be found in the log afterwards.
#[derive(Debug)]
enum Ack {
    Hold(String),
    Cancelled(String),
    Joined(String),
}

/// One buyer's attempt, a random part of the whole flow: hold a named seat, the best
/// available or GA places and pay with a random token; or hold and cancel; or join the
/// waitlist. Errors (the server is being killed) are expected and ignored; returns what
/// the server acknowledged.
async fn attempt(
    client: &reqwest::Client,
    base: &str,
    show: &str,
    buyer: &str,
    seed: u64,
) -> Vec<Ack> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acks = Vec::new();
    let post = |path: String, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(buyer)
            .json(&body)
            .send()
    };
    let action = rng.gen_range(0..100);
    if action >= 90 {
        let quantity = rng.gen_range(1..=2);
        let joined = post(
            format!("/v1/shows/{show}/waitlist"),
            json!({"quantity": quantity}),
        )
        .await;
        if let Ok(response) = joined
            && response.status() == 201
            && let Ok(body) = response.json::<Value>().await
            && let Some(entry) = body["entry_id"].as_str()
        {
            acks.push(Ack::Joined(entry.to_string()));
        }
        return acks;
    }
    let selection = match action {
        0..=59 => json!({"seats": [format!("1-A-{}", rng.gen_range(1..=SEATS))]}),
        60..=74 => json!({"section": "floor", "quantity": rng.gen_range(1..=2)}),
        _ => json!({"section": "1", "best_available": true, "quantity": rng.gen_range(1..=2)}),
    };
    let Ok(held) = post(format!("/v1/shows/{show}/holds"), selection).await else {
        return acks;
    };
    let Ok(held) = held.json::<Value>().await else {
        return acks;
    };
    let Some(reservation) = held["reservation_id"].as_str().map(str::to_string) else {
        return acks;
    };
    acks.push(Ack::Hold(reservation.clone()));
    if action >= 80 {
        let cancelled = client
            .delete(format!("{base}/v1/reservations/{reservation}"))
            .bearer_auth(buyer)
            .send()
            .await;
        if cancelled.is_ok_and(|r| r.status() == 200) {
            acks.push(Ack::Cancelled(reservation));
        }
        return acks;
    }
    let token = TOKENS[rng.gen_range(0..TOKENS.len())];
    let _ = post(
        format!("/v1/reservations/{reservation}/checkout?wait_seconds=0"),
        json!({"payment_token": token}),
    )
    .await;
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_checkout_storm_loses_nothing_and_breaks_no_rule() {
    let kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(3);
    for backend in backends().await {
        let data: PathBuf =
            std::env::temp_dir().join(format!("boxoffice-crash-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        // The organizer is made with the real CLI, against the same database.
        let mut add = Command::new(binary());
        add.args([
            "user",
            "add",
            "--email",
            "org@crash.test",
            "--password",
            "correct horse battery",
            "--role",
            "organizer",
        ]);
        environment(&mut add, &backend.url, &data, port);
        let out = add.output().expect("user add");
        assert!(
            out.status.success(),
            "boxoffice user add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut node = start(&backend.url, &data, port).await;
        let client = reqwest::Client::new();
        let organizer = token(&client, &node.base, "org@crash.test").await;
        let mut show_body = boxoffice_tests::fixtures::one_row_show("Crash night", SEATS, "30.00");
        show_body["sections"].as_array_mut().unwrap().push(
            json!({"id": "floor", "name": "Floor", "kind": "general_admission",
                         "capacity": FLOOR, "tier": "A"}),
        );
        show_body["limits"] = json!({
            "hold_ttl_seconds": 10, "payment_timeout_seconds": 5,
            "max_tickets_per_user": 50, "max_active_holds_per_user": 20
        });
        let show: Value = client
            .post(format!("{}/v1/shows", node.base))
            .bearer_auth(&organizer)
            .json(&show_body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let show = show["show_id"].as_str().unwrap().to_string();
        let mut buyers = Vec::new();
        for n in 0..BUYERS {
            let email = format!("buyer{n}@crash.test");
            client
                .post(format!("{}/v1/auth/register", node.base))
                .json(&json!({"email": email, "password": "correct horse battery"}))
                .send()
                .await
                .unwrap();
            buyers.push(token(&client, &node.base, &email).await);
        }

        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut acknowledged = Vec::new();
        for round in 0..=kills {
            // A storm: every buyer keeps trying until the kill.
            let storm_for = Duration::from_millis(rng.gen_range(300..1_500));
            let until = Instant::now() + storm_for;
            let mut tasks = Vec::new();
            for (n, buyer) in buyers.iter().enumerate() {
                let (client, base, show, buyer) = (
                    client.clone(),
                    node.base.clone(),
                    show.clone(),
                    buyer.clone(),
                );
                let seed = (round as u64) << 32 | n as u64;
                tasks.push(tokio::spawn(async move {
                    let mut held = Vec::new();
                    let mut i = 0;
                    while Instant::now() < until {
                        held.extend(attempt(&client, &base, &show, &buyer, seed + i).await);
                        i += 1_000_003;
                    }
                    held
                }));
            }
            if round < kills {
                tokio::time::sleep(storm_for).await;
                kill(&mut node);
            }
            for task in tasks {
                acknowledged.extend(task.await.unwrap());
            }
            if round < kills {
                node = start(&backend.url, &data, port).await;
            }
        }
        assert!(
            acknowledged.iter().any(|a| matches!(a, Ack::Hold(_))),
            "the storm placed no hold"
        );

        // Settle: every payment ends (tok_timeout at its 5 s deadline, tok_late_visa
        // just after), and every unpaid hold expires after its 10 s.
        let settle_by = Instant::now() + Duration::from_secs(40);
        let store = open(&backend.url).await;
        let show_id: ShowId = show.parse().unwrap();
        loop {
            let log = partition(&store, show_id).await;
            let now = chrono::Utc::now() - chrono::Duration::seconds(3);
            match check_payments(&log, Some(now)) {
                Ok(report) => {
                    check_log(show_id, &log).unwrap();
                    // Nothing acknowledged was lost: every hold, cancellation and
                    // waitlist entry the server answered for is in the log.
                    let joined: std::collections::HashSet<String> = log
                        .iter()
                        .filter(|e| e.event_type == "WaitlistJoined")
                        .filter_map(|e| e.payload["entry_id"].as_str().map(str::to_string))
                        .collect();
                    for ack in &acknowledged {
                        match ack {
                            Ack::Hold(id) => {
                                let id = id.parse().unwrap();
                                assert!(
                                    report.trails.contains_key(&id),
                                    "{id} acknowledged but not in the log"
                                );
                            }
                            Ack::Cancelled(id) => {
                                let id = id.parse().unwrap();
                                assert_eq!(
                                    report.trails.get(&id).map(|t| t.cancelled),
                                    Some(1),
                                    "{id}: cancellation acknowledged but not in the log"
                                );
                            }
                            Ack::Joined(entry) => assert!(
                                joined.contains(entry),
                                "waitlist entry {entry} acknowledged but not in the log"
                            ),
                        }
                    }
                    let count =
                        |pick: fn(&Ack) -> bool| acknowledged.iter().filter(|a| pick(a)).count();
                    println!(
                        "{}: {} kills, {} holds, {} cancellations and {} waitlist joins acknowledged, \
                         {} issued, {} failed, {} voided, {} expired",
                        backend.name,
                        kills,
                        count(|a| matches!(a, Ack::Hold(_))),
                        count(|a| matches!(a, Ack::Cancelled(_))),
                        count(|a| matches!(a, Ack::Joined(_))),
                        report.count(|t| t.issued == 1),
                        report.count(|t| t.failed == 1),
                        report.count(|t| t.timed_out == 1),
                        report.count(|t| t.expired == 1),
                    );
                    break;
                }
                Err(e) if Instant::now() > settle_by => {
                    panic!("{}: not settled: {e}", backend.name)
                }
                // Rule violations that cannot heal (a double capture, an early release)
                // fail at once; "still in flight" may just need more time.
                Err(e)
                    if e.contains("in flight after settling")
                        || e.contains("captured without tickets")
                        || e.contains("past its deadline") =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("{}: {e}", backend.name),
            }
        }
        kill(&mut node);
    }
}
