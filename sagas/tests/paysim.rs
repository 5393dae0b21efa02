//! The payment simulator over real HTTP: each test starts paysim on port 0 with a fresh
//! database in a temporary folder, talks to it with the production `ProviderClient`, and
//! receives its webhooks on a small axum server that checks every signature with
//! `signature::verify`, as the real webhook endpoint does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;

use boxoffice_sagas::paysim::{self, Paysim, PaysimConfig};
use boxoffice_sagas::provider::{
    CreateIntent, EVENT_CANCELED, EVENT_PAYMENT_FAILED, EVENT_SUCCEEDED, Intent, IntentStatus,
    ProviderClient, ProviderError, REFUND_SUCCEEDED, WebhookEvent,
};
use boxoffice_sagas::signature::{self, SIGNATURE_HEADER, SignatureError};

const SECRET: &[u8] = b"whsec_paysim_tests";
/// The bound on every wait for something asynchronous to happen.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(10);

/// A folder removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "boxoffice-paysim-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("paysim.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    /// What `signature::verify` said at arrival.
    signature: Result<i64, SignatureError>,
    event: Option<WebhookEvent>,
    /// What the receiver answered.
    answered: StatusCode,
    at_ms: i64,
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// The receiver answers 500 to this many deliveries before accepting any.
    fail_next: AtomicUsize,
}

/// A webhook endpoint that verifies and records every delivery.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .route("/webhooks", post(receive))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/webhooks", self.addr)
    }

    fn fail_next(&self, deliveries: usize) {
        self.state.fail_next.store(deliveries, Ordering::SeqCst);
    }

    fn all(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every delivery about `intent_id`, in arrival order.
    fn for_intent(&self, intent_id: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| {
                r.event
                    .as_ref()
                    .is_some_and(|e| e.data.object.id == intent_id)
            })
            .collect()
    }

    /// Accepted deliveries about `intent_id`: (event type, event).
    fn accepted(&self, intent_id: &str) -> Vec<(String, WebhookEvent)> {
        self.for_intent(intent_id)
            .into_iter()
            .filter(|r| r.answered == StatusCode::OK)
            .filter_map(|r| r.event.map(|e| (e.r#type.clone(), e)))
            .collect()
    }

    /// Waits for an accepted delivery of `event_type` about `intent_id`.
    async fn wait_for(&self, intent_id: &str, event_type: &str) -> WebhookEvent {
        wait_until(&format!("{event_type} for {intent_id}"), || {
            self.accepted(intent_id)
                .into_iter()
                .find(|(t, _)| t == event_type)
                .map(|(_, e)| e)
        })
        .await
    }

    fn assert_all_signed(&self) {
        for received in self.all() {
            assert!(
                received.signature.is_ok(),
                "badly signed delivery: {received:?}"
            );
            assert!(
                received.event.is_some(),
                "unparsable delivery: {received:?}"
            );
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let signature = signature::verify(SECRET, header, &body, Utc::now().timestamp());
    let event = WebhookEvent::parse(&body).ok();
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let answered = if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if signature.is_err() || event.is_none() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            signature,
            event,
            answered,
            at_ms: Utc::now().timestamp_millis(),
        });
    answered
}

/// Polls `check` until it yields a value, failing the test after [`WAIT_LIMIT`].
async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls the provider until the intent leaves `processing`.
async fn wait_settled(client: &ProviderClient, intent_id: &str) -> Intent {
    let started = Instant::now();
    loop {
        let intent = client.retrieve(intent_id).await.unwrap();
        if intent.status != IntentStatus::Processing {
            return intent;
        }
        assert!(started.elapsed() < WAIT_LIMIT, "{intent_id} never settled");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

struct Env {
    paysim: Paysim,
    client: ProviderClient,
    receiver: Receiver,
    dir: TempDir,
}

fn config(db: &Path, latency_ms: u64) -> PaysimConfig {
    let mut config = PaysimConfig::new(db, SECRET);
    config.latency_ms = latency_ms;
    config
}

async fn start(config: PaysimConfig) -> Paysim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    paysim::start(config, listener).await.unwrap()
}

impl Env {
    async fn start(latency_ms: u64, tweak: impl FnOnce(&mut PaysimConfig)) -> Env {
        let dir = TempDir::new();
        let receiver = Receiver::start().await;
        let mut config = config(&dir.db(), latency_ms);
        config.webhook_url = Some(receiver.url());
        tweak(&mut config);
        let api_key = config.api_key.clone();
        let paysim = start(config).await;
        let client = ProviderClient::new(&paysim.url(), api_key);
        Env {
            paysim,
            client,
            receiver,
            dir,
        }
    }

    async fn create(&self, token: &str) -> Intent {
        let key = uuid::Uuid::new_v4().to_string();
        self.client
            .create_intent(&request(token, 1_250), &key)
            .await
            .unwrap()
    }
}

fn request(token: &str, amount: i64) -> CreateIntent {
    CreateIntent {
        amount,
        currency: "eur".into(),
        payment_token: token.into(),
        metadata: BTreeMap::from([("reservation_id".into(), "res_1".into())]),
        capture_deadline: None,
    }
}

fn assert_rejected(
    result: Result<impl std::fmt::Debug, ProviderError>,
    status: u16,
    code: &str,
) -> Option<Intent> {
    match result {
        Err(ProviderError::Rejected {
            status: s,
            code: c,
            intent,
            ..
        }) if s == status && c == code => intent.map(|i| *i),
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn visa_succeeds_after_the_latency_with_one_signed_webhook() {
    let env = Env::start(50, |_| {}).await;
    let intent = env.create("tok_visa").await;
    assert!(intent.id.starts_with("pi_"), "{}", intent.id);
    assert_eq!(intent.status, IntentStatus::Processing);
    assert_eq!((intent.amount, intent.currency.as_str()), (1_250, "eur"));
    assert_eq!(intent.metadata["reservation_id"], "res_1");

    let event = env.receiver.wait_for(&intent.id, EVENT_SUCCEEDED).await;
    assert!(event.id.starts_with("evt_"));
    assert_eq!(event.data.object.status, IntentStatus::Succeeded);
    assert_eq!(event.data.object.amount, 1_250);
    let settled = env.client.retrieve(&intent.id).await.unwrap();
    assert_eq!(settled.status, IntentStatus::Succeeded);
    assert_eq!(settled.last_payment_error, None);
    assert_eq!(env.receiver.for_intent(&intent.id).len(), 1);
    env.receiver.assert_all_signed();
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn declined_and_unknown_tokens_fail_with_card_declined() {
    let env = Env::start(50, |_| {}).await;
    for token in ["tok_declined", "tok_mastercard"] {
        let intent = env.create(token).await;
        assert_eq!(intent.status, IntentStatus::Processing);
        let event = env
            .receiver
            .wait_for(&intent.id, EVENT_PAYMENT_FAILED)
            .await;
        assert_eq!(
            event.data.object.status,
            IntentStatus::RequiresPaymentMethod
        );
        let settled = env.client.retrieve(&intent.id).await.unwrap();
        assert_eq!(
            settled.status,
            IntentStatus::RequiresPaymentMethod,
            "{token}"
        );
        assert_eq!(settled.last_payment_error.unwrap().code, "card_declined");
    }
    env.receiver.assert_all_signed();
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn timeout_never_settles_and_accepts_cancellation_once() {
    let env = Env::start(20, |_| {}).await;
    let stuck = env.create("tok_timeout").await;
    // A tok_visa made afterwards settles later than the timeout would have; once it has,
    // the settlement worker has passed the point where it would have settled the other.
    let witness = env.create("tok_visa").await;
    env.receiver.wait_for(&witness.id, EVENT_SUCCEEDED).await;
    assert_eq!(
        env.client.retrieve(&stuck.id).await.unwrap().status,
        IntentStatus::Processing
    );
    assert!(env.receiver.for_intent(&stuck.id).is_empty());

    let canceled = env.client.cancel(&stuck.id).await.unwrap();
    assert_eq!(canceled.status, IntentStatus::Canceled);
    let event = env.receiver.wait_for(&stuck.id, EVENT_CANCELED).await;
    assert_eq!(event.data.object.status, IntentStatus::Canceled);
    // Cancelling again is idempotent and announces nothing new.
    let again = env.client.cancel(&stuck.id).await.unwrap();
    assert_eq!(again.status, IntentStatus::Canceled);
    let witness = env.create("tok_visa").await;
    env.receiver.wait_for(&witness.id, EVENT_SUCCEEDED).await;
    assert_eq!(env.receiver.for_intent(&stuck.id).len(), 1);
    env.receiver.assert_all_signed();
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn late_visa_captures_just_after_the_deadline_and_refuses_every_cancel() {
    let env = Env::start(50, |_| {}).await;
    let deadline: DateTime<Utc> = Utc::now() + chrono::Duration::milliseconds(800);
    let mut late = request("tok_late_visa", 4_000);
    late.capture_deadline = Some(deadline);
    let intent = env.client.create_intent(&late, "late-1").await.unwrap();

    // Before capture the provider already refuses, showing the intent still processing.
    let shown = assert_rejected(
        env.client.cancel(&intent.id).await,
        400,
        "payment_intent_unexpected_state",
    )
    .expect("the refusal carries the intent");
    assert_eq!(shown.id, intent.id);
    assert_eq!(shown.status, IntentStatus::Processing);

    let event = env.receiver.wait_for(&intent.id, EVENT_SUCCEEDED).await;
    let arrived_ms = env.receiver.for_intent(&intent.id)[0].at_ms;
    assert!(
        arrived_ms >= deadline.timestamp_millis() + 1_000,
        "captured at {arrived_ms}, deadline {}",
        deadline.timestamp_millis()
    );
    assert_eq!(event.data.object.status, IntentStatus::Succeeded);
    let shown = assert_rejected(
        env.client.cancel(&intent.id).await,
        400,
        "payment_intent_unexpected_state",
    )
    .unwrap();
    assert_eq!(shown.status, IntentStatus::Succeeded);

    // Without a deadline it captures after three latencies.
    let created = Instant::now();
    let undated = env.create("tok_late_visa").await;
    env.receiver.wait_for(&undated.id, EVENT_SUCCEEDED).await;
    assert!(created.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        wait_settled(&env.client, &undated.id).await.status,
        IntentStatus::Succeeded
    );
    env.receiver.assert_all_signed();
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn dup_visa_delivers_its_success_three_times_around_a_stale_failure() {
    let env = Env::start(50, |_| {}).await;
    let intent = env.create("tok_dup_visa").await;
    let deliveries = wait_until("four deliveries", || {
        let all = env.receiver.for_intent(&intent.id);
        (all.len() >= 4).then_some(all)
    })
    .await;
    assert_eq!(deliveries.len(), 4);
    assert!(deliveries.iter().all(|d| d.answered == StatusCode::OK));
    let events: Vec<&WebhookEvent> = deliveries
        .iter()
        .map(|d| d.event.as_ref().unwrap())
        .collect();
    let successes: Vec<&&WebhookEvent> = events
        .iter()
        .filter(|e| e.r#type == EVENT_SUCCEEDED)
        .collect();
    let failures: Vec<&&WebhookEvent> = events
        .iter()
        .filter(|e| e.r#type == EVENT_PAYMENT_FAILED)
        .collect();
    assert_eq!((successes.len(), failures.len()), (3, 1));
    // One success event, delivered three times.
    assert!(successes.iter().all(|e| e.id == successes[0].id));
    let (success, stale) = (successes[0], failures[0]);
    assert_ne!(stale.id, success.id);
    assert_eq!(success.data.object.status, IntentStatus::Succeeded);
    assert_eq!(
        stale.data.object.status,
        IntentStatus::RequiresPaymentMethod
    );
    assert!(
        stale.created < success.created,
        "{} vs {}",
        stale.created,
        success.created
    );
    // The stale event is also signed in the past, yet within the tolerance.
    let stale_at = deliveries
        .iter()
        .position(|d| d.event.as_ref().unwrap().id == stale.id)
        .unwrap();
    let stale_t = *deliveries[stale_at].signature.as_ref().unwrap();
    assert_eq!(stale_t, stale.created);
    assert!(
        deliveries
            .iter()
            .enumerate()
            .all(|(i, d)| i == stale_at || *d.signature.as_ref().unwrap() > stale_t)
    );
    // Out of order: the success arrives first, and again after the stale failure.
    assert_eq!(events[0].r#type, EVENT_SUCCEEDED);
    assert!(stale_at < 3, "the stale failure came last: {events:?}");

    assert_eq!(
        env.client.retrieve(&intent.id).await.unwrap().status,
        IntentStatus::Succeeded
    );
    env.receiver.assert_all_signed();
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn create_is_idempotent_per_key_and_request() {
    let env = Env::start(50, |_| {}).await;
    let first = env
        .client
        .create_intent(&request("tok_visa", 900), "key-a")
        .await
        .unwrap();
    let again = env
        .client
        .create_intent(&request("tok_visa", 900), "key-a")
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_rejected(
        env.client
            .create_intent(&request("tok_visa", 901), "key-a")
            .await,
        400,
        "idempotency_key_reused",
    );
    let other = env
        .client
        .create_intent(&request("tok_visa", 900), "key-b")
        .await
        .unwrap();
    assert_ne!(other.id, first.id);

    // A replay after settlement returns the intent as it is now, and charges nothing more.
    env.receiver.wait_for(&first.id, EVENT_SUCCEEDED).await;
    let late_replay = env
        .client
        .create_intent(&request("tok_visa", 900), "key-a")
        .await
        .unwrap();
    assert_eq!(late_replay.id, first.id);
    assert_eq!(late_replay.status, IntentStatus::Succeeded);
    env.receiver.wait_for(&other.id, EVENT_SUCCEEDED).await;
    let succeeded: Vec<String> = env
        .receiver
        .all()
        .into_iter()
        .filter_map(|r| r.event)
        .map(|e| e.data.object.id)
        .collect();
    assert_eq!(succeeded.len(), 2, "{succeeded:?}");
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn cancel_follows_the_intent_state() {
    let env = Env::start(300, |_| {}).await;
    // processing → canceled, and the settlement that was due later does not happen.
    let voided = env.create("tok_visa").await;
    let canceled = env.client.cancel(&voided.id).await.unwrap();
    assert_eq!(canceled.status, IntentStatus::Canceled);
    env.receiver.wait_for(&voided.id, EVENT_CANCELED).await;

    let paid = env.create("tok_visa").await;
    let declined = env.create("tok_declined").await;
    env.receiver.wait_for(&paid.id, EVENT_SUCCEEDED).await;
    env.receiver
        .wait_for(&declined.id, EVENT_PAYMENT_FAILED)
        .await;
    assert_eq!(
        env.client.retrieve(&voided.id).await.unwrap().status,
        IntentStatus::Canceled
    );
    assert_eq!(env.receiver.for_intent(&voided.id).len(), 1);

    // succeeded → refused, with the intent.
    let shown = assert_rejected(
        env.client.cancel(&paid.id).await,
        400,
        "payment_intent_unexpected_state",
    )
    .unwrap();
    assert_eq!(shown.status, IntentStatus::Succeeded);
    // requires_payment_method → canceled.
    let canceled = env.client.cancel(&declined.id).await.unwrap();
    assert_eq!(canceled.status, IntentStatus::Canceled);
    env.receiver.wait_for(&declined.id, EVENT_CANCELED).await;
    // unknown → not found.
    assert_eq!(
        env.client.cancel("pi_nope").await,
        Err(ProviderError::NotFound)
    );
    assert_eq!(
        env.client.retrieve("pi_nope").await,
        Err(ProviderError::NotFound)
    );
    env.receiver.assert_all_signed();
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn refunds_need_a_captured_intent_and_happen_once() {
    let env = Env::start(30, |_| {}).await;
    let paid = env.create("tok_visa").await;
    let declined = env.create("tok_declined").await;
    assert_eq!(
        wait_settled(&env.client, &paid.id).await.status,
        IntentStatus::Succeeded
    );
    wait_settled(&env.client, &declined.id).await;

    assert_rejected(
        env.client.refund(&paid.id, Some(1_251), "refund-0").await,
        400,
        "amount_too_large",
    );
    let refund = env.client.refund(&paid.id, None, "refund-1").await.unwrap();
    assert!(refund.id.starts_with("re_"));
    assert_eq!(
        (
            refund.payment_intent.as_str(),
            refund.amount,
            refund.status.as_str()
        ),
        (paid.id.as_str(), 1_250, "succeeded")
    );
    // The same key again is the same refund; another key is a second refund, refused.
    assert_eq!(
        env.client.refund(&paid.id, None, "refund-1").await.unwrap(),
        refund
    );
    assert_rejected(
        env.client.refund(&paid.id, None, "refund-2").await,
        400,
        "charge_already_refunded",
    );
    assert_rejected(
        env.client.refund(&paid.id, Some(5), "refund-1").await,
        400,
        "idempotency_key_reused",
    );
    let shown = assert_rejected(
        env.client.refund(&declined.id, None, "refund-3").await,
        400,
        "payment_intent_unexpected_state",
    )
    .unwrap();
    assert_eq!(shown.status, IntentStatus::RequiresPaymentMethod);
    assert_eq!(
        env.client.refund("pi_nope", None, "refund-4").await,
        Err(ProviderError::NotFound)
    );
    // A partial refund of another intent.
    let other = env.create("tok_visa").await;
    wait_settled(&env.client, &other.id).await;
    let partial = env
        .client
        .refund(&other.id, Some(250), "refund-5")
        .await
        .unwrap();
    assert_eq!(partial.amount, 250);
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn list_refunds_reads_one_intents_refunds() {
    let env = Env::start(20, |_| {}).await;
    let paid = env.create("tok_visa").await;
    let other = env.create("tok_visa").await;
    let declined = env.create("tok_declined").await;
    for intent in [&paid, &other, &declined] {
        wait_settled(&env.client, &intent.id).await;
    }
    for intent in [&paid, &other, &declined] {
        assert_eq!(
            env.client.list_refunds(&intent.id).await.unwrap(),
            [],
            "{}",
            intent.id
        );
    }

    let refund = env
        .client
        .refund(&paid.id, Some(300), "refund-paid")
        .await
        .unwrap();
    assert_eq!(refund.status, REFUND_SUCCEEDED);
    assert_eq!(
        env.client.list_refunds(&paid.id).await.unwrap(),
        vec![refund.clone()]
    );
    // Only that intent's refunds, and listing changes nothing.
    assert_eq!(env.client.list_refunds(&other.id).await.unwrap(), []);
    assert_eq!(env.client.list_refunds(&declined.id).await.unwrap(), []);
    let other_refund = env
        .client
        .refund(&other.id, None, "refund-other")
        .await
        .unwrap();
    assert_eq!(
        env.client.list_refunds(&other.id).await.unwrap(),
        [other_refund]
    );
    assert_eq!(
        env.client.list_refunds(&paid.id).await.unwrap(),
        vec![refund.clone()]
    );

    // Unknown intents are 404 resource_missing, like retrieve; odd ids are not sent.
    assert_eq!(
        env.client.list_refunds("pi_nope").await,
        Err(ProviderError::NotFound)
    );
    assert_eq!(
        env.client.list_refunds("pi_x&payment_intent=y").await,
        Err(ProviderError::NotFound)
    );

    // The wire shape is Stripe's list; the intent is required.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/refunds", env.paysim.url());
    let response = http
        .get(&url)
        .query(&[("payment_intent", paid.id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "object": "list",
            "data": [{
                "id": refund.id,
                "payment_intent": paid.id,
                "amount": 300,
                "status": "succeeded",
            }],
            "has_more": false,
        })
    );
    for query in ["", "?payment_intent=", "?limit=3"] {
        let response = http.get(format!("{url}{query}")).send().await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "parameter_missing", "{query}");
    }
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_fresh_signatures() {
    let env = Env::start(20, |_| {}).await;
    env.receiver.fail_next(2);
    let intent = env.create("tok_visa").await;
    let event = env.receiver.wait_for(&intent.id, EVENT_SUCCEEDED).await;
    let attempts = env.receiver.for_intent(&intent.id);
    let answers: Vec<StatusCode> = attempts.iter().map(|a| a.answered).collect();
    assert_eq!(
        answers,
        vec![
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::OK
        ]
    );
    // Same event each time, spaced by the backoff (0.5 s, then 1 s).
    assert!(
        attempts
            .iter()
            .all(|a| a.event.as_ref().unwrap().id == event.id)
    );
    let gaps: Vec<i64> = attempts
        .windows(2)
        .map(|w| w[1].at_ms - w[0].at_ms)
        .collect();
    assert!(gaps[0] >= 500 && gaps[1] >= 1_000, "{gaps:?}");
    let stamps: Vec<i64> = attempts
        .iter()
        .map(|a| *a.signature.as_ref().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert!(
        stamps[2] > stamps[0],
        "a retry 1.5 s later is signed anew: {stamps:?}"
    );
    env.receiver.assert_all_signed();
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn settlement_and_webhooks_resume_after_a_restart() {
    let dir = TempDir::new();
    let receiver = Receiver::start().await;
    let mut first_config = config(&dir.db(), 1_500);
    first_config.webhook_url = Some(receiver.url());
    let first = start(first_config).await;
    let client = ProviderClient::new(&first.url(), None);
    let intent = client
        .create_intent(&request("tok_visa", 700), "restart-1")
        .await
        .unwrap();
    first.shutdown().await;
    assert!(receiver.all().is_empty());

    // The second run starts without a webhook URL; the in-process server sets it later.
    let second = start(config(&dir.db(), 1_500)).await;
    let client = ProviderClient::new(&second.url(), None);
    assert_eq!(
        wait_settled(&client, &intent.id).await.status,
        IntentStatus::Succeeded
    );
    assert!(receiver.all().is_empty());
    second.set_webhook_url(receiver.url());
    let event = receiver.wait_for(&intent.id, EVENT_SUCCEEDED).await;
    assert_eq!(event.data.object.amount, 700);
    // The idempotency key survived too.
    let replay = client
        .create_intent(&request("tok_visa", 700), "restart-1")
        .await
        .unwrap();
    assert_eq!(replay.id, intent.id);
    receiver.assert_all_signed();
    second.shutdown().await;
}

#[tokio::test]
async fn a_pending_delivery_survives_a_restart() {
    let env = Env::start(20, |_| {}).await;
    env.receiver.fail_next(usize::MAX);
    let intent = env.create("tok_visa").await;
    wait_until("a refused attempt", || {
        (!env.receiver.for_intent(&intent.id).is_empty()).then_some(())
    })
    .await;
    env.paysim.shutdown().await;

    env.receiver.fail_next(0);
    let mut config = config(&env.dir.db(), 20);
    config.webhook_url = Some(env.receiver.url());
    let restarted = start(config).await;
    env.receiver.wait_for(&intent.id, EVENT_SUCCEEDED).await;
    let attempts = env.receiver.for_intent(&intent.id);
    assert_eq!(attempts.last().unwrap().answered, StatusCode::OK);
    assert!(attempts.len() >= 2);
    restarted.shutdown().await;
}

#[tokio::test]
async fn an_api_error_rate_of_one_answers_every_call_with_500_yet_some_take_effect() {
    let env = Env::start(20, |config| config.api_error_rate = 1.0).await;
    const CALLS: usize = 30;
    for n in 0..CALLS {
        let result = env
            .client
            .create_intent(&request("tok_visa", 100), &format!("lost-{n}"))
            .await;
        match result {
            Err(ProviderError::Transport(message)) => assert!(message.contains("500"), "{message}"),
            other => panic!("expected a 500, got {other:?}"),
        }
    }
    assert!(matches!(
        env.client.retrieve("pi_whatever").await,
        Err(ProviderError::Transport(_))
    ));
    assert!(matches!(
        env.client.list_refunds("pi_whatever").await,
        Err(ProviderError::Transport(_))
    ));
    // Half the failures happen after the work (a lost response), so some intents exist
    // and settle. All 30 failing before the work has a probability of 2^-30.
    wait_until("a webhook from a lost response", || {
        env.receiver
            .all()
            .into_iter()
            .find(|r| r.answered == StatusCode::OK)
    })
    .await;
    let settled = env.receiver.all().len();
    assert!(settled <= CALLS, "{settled}");
    env.receiver.assert_all_signed();
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn a_configured_api_key_is_required() {
    let env = Env::start(20, |config| config.api_key = Some("sk_test_1".into())).await;
    let intent = env.create("tok_visa").await;
    for client in [
        ProviderClient::new(&env.paysim.url(), None),
        ProviderClient::new(&env.paysim.url(), Some("sk_test_2".into())),
    ] {
        assert_rejected(client.retrieve(&intent.id).await, 401, "invalid_api_key");
        assert_rejected(
            client.list_refunds(&intent.id).await,
            401,
            "invalid_api_key",
        );
        assert_rejected(
            client.create_intent(&request("tok_visa", 100), "k").await,
            401,
            "invalid_api_key",
        );
    }
    assert_eq!(env.client.retrieve(&intent.id).await.unwrap().id, intent.id);
    assert_eq!(env.client.list_refunds(&intent.id).await.unwrap(), []);
    env.paysim.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_are_400_with_a_json_error() {
    let env = Env::start(20, |_| {}).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/payment_intents", env.paysim.url());
    let bodies = [
        "not json".to_owned(),
        "{}".to_owned(),
        r#"{"amount":0,"currency":"eur","payment_token":"tok_visa"}"#.to_owned(),
        r#"{"amount":-5,"currency":"eur","payment_token":"tok_visa"}"#.to_owned(),
        r#"{"amount":100,"currency":"EUR","payment_token":"tok_visa"}"#.to_owned(),
        r#"{"amount":100,"currency":"eur","payment_token":""}"#.to_owned(),
        format!(
            r#"{{"amount":100,"currency":"eur","payment_token":"tok_visa","metadata":{{"{}":"v"}}}}"#,
            "k".repeat(41)
        ),
    ];
    for body in bodies {
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(error["error"]["code"], "parameter_invalid", "{body}");
    }
    let response = http
        .post(&url)
        .header("Idempotency-Key", "k".repeat(256))
        .body(r#"{"amount":100,"currency":"eur","payment_token":"tok_visa"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http
        .get(format!("{}/v2/nothing", env.paysim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unrecognized_request_url");
    // A client pointed at the wrong path does not mistake that for a missing intent.
    let misdirected = ProviderClient::new(&format!("{}/wrong", env.paysim.url()), None);
    assert_rejected(
        misdirected.retrieve("pi_1").await,
        404,
        "unrecognized_request_url",
    );
    env.paysim.shutdown().await;
}
