//! Notification delivery: signed webhooks to a real local receiver, retries after a 500,
//! an undelivered row surviving a restart of the worker, the email file, and per-user
//! webhooks.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use boxoffice_projections::db::{self, Param};
use boxoffice_projections::{DeliveryConfig, NotifyConfig, ReadSide, ReadSideConfig};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::support::*;

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    signature: String,
    notification_id: String,
    body: Vec<u8>,
    /// The status it was answered with.
    status: u16,
}

/// A local webhook receiver that answers with a settable status.
struct Receiver {
    status: AtomicU16,
    /// How long each answer takes.
    delay_ms: AtomicU64,
    received: Mutex<Vec<Received>>,
}

impl Receiver {
    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn receive(
    State((receiver, path)): State<(Arc<Receiver>, &'static str)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let delay = receiver.delay_ms.load(Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    let status = receiver.status.load(Ordering::SeqCst);
    receiver.received.lock().unwrap().push(Received {
        path: path.to_owned(),
        signature: header("boxoffice-signature"),
        notification_id: header("boxoffice-notification-id"),
        body: body.to_vec(),
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

/// Starts a receiver on a loopback port; returns it and its base URL.
async fn start_receiver(status: u16) -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver {
        status: AtomicU16::new(status),
        delay_ms: AtomicU64::new(0),
        received: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route(
            "/hook",
            post(receive).with_state((Arc::clone(&receiver), "/hook")),
        )
        .route(
            "/own",
            post(receive).with_state((Arc::clone(&receiver), "/own")),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, base)
}

/// Checks a `Boxoffice-Signature` header the way a receiver would, independently of the
/// signing code: fresh timestamp, HMAC-SHA256 of `"<t>.<body>"`.
fn signature_is_valid(header: &str, secret: &[u8], body: &[u8]) -> bool {
    let Some((t, v1)) = header
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
    else {
        return false;
    };
    let Ok(t) = t.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let Ok(v1) = hex::decode(v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

/// `(attempts, delivered, last_error)` of an outbox row.
async fn outbox_row(env: &Env, id: &str, channel: &str) -> (i64, bool, Option<String>) {
    let row = db::fetch_optional(
        &env.pool,
        "SELECT attempts, delivered_at, last_error FROM notification_outbox
         WHERE notification_id = $1 AND channel = $2",
        &[Param::from(id), channel.into()],
    )
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("an outbox row for {id} on {channel}"));
    (
        row.int("attempts").unwrap(),
        row.opt_time("delivered_at").unwrap().is_some(),
        row.opt_text("last_error").unwrap(),
    )
}

fn email_lines(path: &std::path::Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn webhooks_are_signed_retried_after_a_500_and_survive_a_restart_and_emails_are_written() {
    for env in backends().await {
        let (receiver, base) = start_receiver(500).await;
        let secret = b"whsec_global_test".to_vec();
        let email_file = env.dir.join("outbox").join("mail.jsonl");
        let notify = NotifyConfig {
            email_file: Some(email_file.clone()),
            webhook_url: Some(format!("{base}/hook")),
            webhook_secret: secret.clone(),
        };
        let (show, buyer) = (show(), user());
        let email = env.add_user(buyer).await;
        let mut log = Log::new(&env.store);

        let read = env.start(notify.clone());
        let purchase = log.buy(show, buyer, &["S-R0-1"]).await;
        assert!(
            read.notifications_projector()
                .wait_for(purchase.position, WAIT)
                .await
        );
        let (notes, _) = read.notifications().list(buyer, None, 10).await.unwrap();
        assert_eq!(notes.len(), 1);
        let id = notes[0].id.clone();

        // The receiver answers 500: the worker tries again, and again.
        eventually("a retry after the receiver's 500", || async {
            (receiver.received().len() >= 2).then_some(())
        })
        .await;
        // The email went out once meanwhile.
        let lines = eventually("the email line", || async {
            let lines = email_lines(&email_file);
            (!lines.is_empty()).then_some(lines)
        })
        .await;
        eventually("the email marked delivered", || async {
            outbox_row(&env, &id, "email_file").await.1.then_some(())
        })
        .await;
        read.shutdown().await;

        let (attempts, delivered, last_error) = outbox_row(&env, &id, "webhook").await;
        assert!(attempts >= 1, "{}: {attempts}", env.backend);
        assert!(!delivered, "{}: a 500 is not a delivery", env.backend);
        assert!(
            last_error.as_deref().is_some_and(|e| e.contains("500")),
            "{last_error:?}"
        );

        // The worker is down; the row waits in the table. The receiver recovers, a new
        // worker starts and delivers it.
        receiver.status.store(200, Ordering::SeqCst);
        let received_before = receiver.received().len();
        let read = env.start(notify.clone());
        eventually("the webhook delivered after the restart", || async {
            outbox_row(&env, &id, "webhook").await.1.then_some(())
        })
        .await;
        let received = receiver.received();
        assert!(received.len() > received_before);
        let last = received.last().unwrap();
        assert_eq!(last.path, "/hook");
        assert_eq!(last.notification_id, id);
        assert!(
            signature_is_valid(&last.signature, &secret, &last.body),
            "{}: bad signature {}",
            env.backend,
            last.signature
        );
        assert!(!signature_is_valid(
            &last.signature,
            b"another secret",
            &last.body
        ));
        let body: Value = serde_json::from_slice(&last.body).unwrap();
        assert_eq!(body["id"], id);
        assert_eq!(body["type"], "order_confirmed");
        assert_eq!(body["user_id"], buyer.to_string());
        assert_eq!(body["data"]["order_id"], purchase.order.to_string());
        // Every attempt carried the same notification id, so the receiver can dedupe.
        assert!(received.iter().all(|r| r.notification_id == id));

        // One email, to the user's address, never sent again after the restart.
        let lines_now = email_lines(&email_file);
        assert_eq!(lines_now, lines);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["id"], id);
        assert_eq!(lines[0]["to"], email);
        assert_eq!(lines[0]["kind"], "order_confirmed");
        assert!(!lines[0]["subject"].as_str().unwrap().is_empty());
        assert!(
            lines[0]["text"]
                .as_str()
                .unwrap()
                .contains(&purchase.order.to_string())
        );
        assert_eq!(outbox_row(&env, &id, "email_file").await.0, 1);

        read.shutdown().await;
        env.cleanup().await;
    }
}

/// Emails go a round at a time: one query for the addresses, one append and sync of all
/// the lines. A failed append retries every email of the round; a user without an
/// address is given up alone; each email is written once, to its own user.
#[tokio::test]
async fn a_rounds_emails_go_to_their_own_users_once_and_a_failed_append_retries_them_all() {
    for env in backends().await {
        let (show, first, second, nobody) = (show(), user(), user(), user());
        let addresses = [env.add_user(first).await, env.add_user(second).await];
        let mut log = Log::new(&env.store);
        let mut head = 0;
        for (buyer, seat) in [(first, "S-R0-1"), (second, "S-R0-2"), (nobody, "S-R0-3")] {
            head = log.buy(show, buyer, &[seat]).await.position;
        }
        // The file's directory is a file: nothing can be appended.
        let blocker = env.dir.join("blocker");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let notify = |file: std::path::PathBuf| NotifyConfig {
            email_file: Some(file),
            ..NotifyConfig::default()
        };
        let read = env.start(notify(blocker.join("mail.jsonl")));
        assert!(read.notifications_projector().wait_for(head, WAIT).await);
        let mut notification = Vec::new();
        for buyer in [first, second, nobody] {
            let (notes, _) = read.notifications().list(buyer, None, 10).await.unwrap();
            assert_eq!(notes.len(), 1, "{}", env.backend);
            notification.push(notes[0].id.clone());
        }
        for id in &notification[..2] {
            let (attempts, delivered, last_error) = eventually("a failed append", || async {
                let row = outbox_row(&env, id, "email_file").await;
                (row.0 >= 1).then_some(row)
            })
            .await;
            assert!(!delivered, "{}", env.backend);
            assert!(
                last_error.as_deref().is_some_and(|e| e.contains("blocker")),
                "{}: {attempts} {last_error:?}",
                env.backend
            );
        }
        read.shutdown().await;

        let email_file = env.dir.join("outbox").join("mail.jsonl");
        let read = env.start(notify(email_file.clone()));
        for id in &notification[..2] {
            eventually("the email delivered", || async {
                outbox_row(&env, id, "email_file").await.1.then_some(())
            })
            .await;
        }
        // The user without an address may be reached by either read side's rounds.
        let (delivered, last_error) = eventually("the addressless email given up", || async {
            let (_, delivered, last_error) = outbox_row(&env, &notification[2], "email_file").await;
            last_error.is_some().then_some((delivered, last_error))
        })
        .await;
        assert!(!delivered, "{}", env.backend);
        assert!(
            last_error
                .as_deref()
                .is_some_and(|e| e.contains("no email address")),
            "{}: {last_error:?}",
            env.backend
        );
        let mut lines: Vec<(String, String)> = email_lines(&email_file)
            .iter()
            .map(|l| {
                (
                    l["id"].as_str().unwrap().into(),
                    l["to"].as_str().unwrap().into(),
                )
            })
            .collect();
        lines.sort();
        let mut expected: Vec<(String, String)> = notification[..2]
            .iter()
            .cloned()
            .zip(addresses.iter().cloned())
            .collect();
        expected.sort();
        assert_eq!(lines, expected, "{}", env.backend);
        read.shutdown().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_users_own_webhook_is_used_instead_of_the_global_one() {
    for env in backends().await {
        let (receiver, base) = start_receiver(200).await;
        let (show, with_own, without) = (show(), user(), user());
        let own_secret = b"whsec_own".to_vec();
        let read = env.start(NotifyConfig::default());
        read.notifications()
            .set_user_webhook(with_own, &format!("{base}/own"), &own_secret)
            .await
            .unwrap();
        let stored = read
            .notifications()
            .user_webhook(with_own)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.url, format!("{base}/own"));
        assert_eq!(stored.secret, own_secret);
        assert!(
            read.notifications()
                .set_user_webhook(with_own, "ftp://nope", b"x")
                .await
                .is_err()
        );

        // No global webhook is configured: only the user with their own gets one.
        let mut log = Log::new(&env.store);
        log.buy(show, without, &["S-R0-1"]).await;
        let purchase = log.buy(show, with_own, &["S-R0-2"]).await;
        assert!(
            read.notifications_projector()
                .wait_for(purchase.position, WAIT)
                .await
        );
        assert_eq!(
            env.count("SELECT count(*) AS n FROM notification_outbox", &[])
                .await,
            1,
            "{}",
            env.backend
        );
        let (notes, _) = read.notifications().list(with_own, None, 10).await.unwrap();
        let id = notes[0].id.clone();
        eventually("the webhook delivered", || async {
            outbox_row(&env, &id, "webhook").await.1.then_some(())
        })
        .await;
        let received = receiver.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].path, "/own");
        assert!(signature_is_valid(
            &received[0].signature,
            &own_secret,
            &received[0].body
        ));

        assert!(
            read.notifications()
                .remove_user_webhook(with_own)
                .await
                .unwrap()
        );
        assert_eq!(
            read.notifications().user_webhook(with_own).await.unwrap(),
            None
        );
        read.shutdown().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_round_slower_than_its_lease_hands_rows_back_and_two_workers_send_each_once() {
    for env in backends().await {
        // Refused until every row exists and has failed once, so that the rounds after
        // take several due rows each.
        let (receiver, base) = start_receiver(500).await;
        let notify = NotifyConfig {
            webhook_url: Some(format!("{base}/hook")),
            webhook_secret: b"whsec_slow".to_vec(),
            ..NotifyConfig::default()
        };
        // A round may send for 400 - 300 = 100 ms: one 250 ms webhook, then it hands the
        // rest of its rows back. Were they kept, their 400 ms lease would run out while
        // the round still sent, and the other worker would send them a second time.
        let delivery = DeliveryConfig {
            lease_ms: 400,
            webhook_timeout_ms: 300,
            ..fast_delivery()
        };
        let start = || {
            ReadSide::start(
                Arc::clone(&env.store),
                env.pool.clone(),
                ReadSideConfig {
                    runtime: fast_runtime(),
                    notify: notify.clone(),
                    delivery: delivery.clone(),
                },
                Arc::new(boxoffice_domain::SystemClock),
            )
            .expect("read side starts")
        };
        let mut log = Log::new(&env.store);
        let show = show();
        let mut head = 0;
        for seat in ["S-R0-1", "S-R0-2", "S-R0-3", "S-R0-4", "S-R0-5"] {
            head = log.buy(show, user(), &[seat]).await.position;
        }
        let (first, second) = (start(), start());
        assert!(first.notifications_projector().wait_for(head, WAIT).await);
        let rows = env
            .count("SELECT count(*) AS n FROM notification_outbox", &[])
            .await;
        assert!(rows >= 5, "{rows} rows on {}", env.backend);
        let all_rows = |what: &'static str, condition: &'static str| {
            let sql = format!("SELECT count(*) AS n FROM notification_outbox WHERE {condition}");
            let env = &env;
            async move {
                eventually(what, || async {
                    (env.count(&sql, &[]).await == rows).then_some(())
                })
                .await
            }
        };
        all_rows("every row refused once", "attempts >= 1").await;
        receiver.delay_ms.store(250, Ordering::SeqCst);
        receiver.status.store(200, Ordering::SeqCst);
        all_rows("every row delivered", "delivered_at IS NOT NULL").await;
        let mut ids: Vec<String> = receiver
            .received()
            .into_iter()
            .filter(|r| r.status == 200)
            .map(|r| r.notification_id)
            .collect();
        ids.sort();
        let sent = ids.len();
        ids.dedup();
        assert_eq!(sent, ids.len(), "a row was sent twice on {}", env.backend);
        assert_eq!(sent as i64, rows);
        first.shutdown().await;
        second.shutdown().await;
        env.cleanup().await;
    }
}
