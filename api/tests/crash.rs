//! The real `boxoffice` binary killed with SIGKILL at random moments during a checkout
//! storm (all test tokens, including `tok_late_visa`, `tok_dup_visa` and `tok_timeout`),
//! restarted on the same database and data directory, then left to settle: the log must
//! hold no captured payment without tickets, no double capture, no seat released with a
//! payment in flight, no hold alive past its deadline, and every payment must have ended.
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

/// One buyer's attempt: hold a random free-looking seat and pay with a random token.
/// Errors (the server is being killed) are expected and ignored; returns the
/// reservation id if the hold was acknowledged.
async fn attempt(
    client: &reqwest::Client,
    base: &str,
    show: &str,
    buyer: &str,
    seed: u64,
) -> Option<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let seat = format!("1-A-{}", rng.gen_range(1..=SEATS));
    let token = TOKENS[rng.gen_range(0..TOKENS.len())];
    let held: Value = client
        .post(format!("{base}/v1/shows/{show}/holds"))
        .bearer_auth(buyer)
        .json(&json!({"seats": [seat]}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let reservation = held["reservation_id"].as_str()?.to_string();
    let _ = client
        .post(format!(
            "{base}/v1/reservations/{reservation}/checkout?wait_seconds=0"
        ))
        .bearer_auth(buyer)
        .json(&json!({"payment_token": token}))
        .send()
        .await;
    Some(reservation)
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
                        if let Some(r) = attempt(&client, &base, &show, &buyer, seed + i).await {
                            held.push(r);
                        }
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
        assert!(!acknowledged.is_empty(), "the storm placed no hold");

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
                    // Every acknowledged hold is in the log (nothing acknowledged lost).
                    for id in &acknowledged {
                        let id = id.parse().unwrap();
                        assert!(
                            report.trails.contains_key(&id),
                            "{id} acknowledged but not in the log"
                        );
                    }
                    println!(
                        "{}: {} kills, {} holds acknowledged, {} issued, {} failed, {} voided, {} expired",
                        backend.name,
                        kills,
                        acknowledged.len(),
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
