//! `boxctl reconcile` against anomalies made for real, on SQLite and (with `DATABASE_URL`
//! set) on a fresh PostgreSQL database: the real engine writes the log, the saga's own
//! settler talks to a payment simulator started in-process and is stopped half way (a
//! crash), a manual clock moves holds and payments past their deadlines, the real
//! notification projection and delivery worker fill and fail the outbox. Each test
//! checks the finding (kind and ids), the fix (the events appended, and verify's rules
//! over the whole log) and that a second run finds and does nothing.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use boxoffice_commands::{CommandMeta, Engine, EngineConfig};
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::reservation::{PaymentStatus, Reservation, ReservationStatus};
use boxoffice_domain::show::{
    Limits, PriceTier, RowDef, SectionDef, SectionLayout, ShowCommand, ShowDefinition, Venue,
};
use boxoffice_domain::{
    Clock, Command, DomainEvent, ManualClock, Minor, PaymentId, RandomIds, ReservationId, ShowId,
    ShowState, UserId,
};
use boxoffice_projections::delivery::{self, DeliveryConfig, RowState};
use boxoffice_projections::{
    DeliveryWorker, NotificationsProjection, NotifyConfig, Projections, RuntimeConfig,
    SeatMapProjection,
};
use boxoffice_replay_tools::reconcile::{self, Outcome, ReconcileConfig, Report, SeenIn};
use boxoffice_replay_tools::verify::{self, VerifyConfig};
use boxoffice_sagas::inbox::{Received, WebhookInbox};
use boxoffice_sagas::paysim::{self, Paysim, PaysimConfig};
use boxoffice_sagas::provider::{
    EVENT_PAYMENT_FAILED, EVENT_SUCCEEDED, Intent, IntentStatus, ProviderClient, REFUND_SUCCEEDED,
};
use boxoffice_sagas::saga::{self, PaymentSettler, Step};
use boxoffice_store::chain::ChainKey;
use boxoffice_store::tables::TablePool;
use boxoffice_store::users::{UserDirectory, UserRecord};
use boxoffice_store::{EventStore, RecordedEvent};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

/// The bound on every wait for something asynchronous.
const WAIT_LIMIT: StdDuration = StdDuration::from_secs(20);
const POLL_EVERY: StdDuration = StdDuration::from_millis(20);
const GRACE_SECONDS: i64 = 30;
const HOLD_TTL_SECONDS: u32 = 60;
const PAYMENT_TIMEOUT_SECONDS: u32 = 60;

/// A folder removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("boxctl-reconcile-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Backend {
    name: &'static str,
    url: String,
}

async fn backends(dir: &TempDir) -> Vec<Backend> {
    let mut all = vec![Backend {
        name: "sqlite",
        url: format!("sqlite://{}", dir.0.join("events.db").display()),
    }];
    match std::env::var("DATABASE_URL") {
        Ok(base) if base.starts_with("postgres") => {
            let url = boxoffice_tests::fresh_postgres_url(&base).await;
            all.push(Backend {
                name: "postgres",
                url,
            });
        }
        _ => println!("skipped: PostgreSQL (DATABASE_URL not set); running on SQLite only"),
    }
    all
}

/// One backend's world: the store, its side tables, a manual clock, a payment simulator,
/// and the engine that plays the server that crashed.
struct World {
    name: &'static str,
    url: String,
    key_file: PathBuf,
    key: ChainKey,
    store: Arc<dyn EventStore>,
    tables: TablePool,
    clock: Arc<ManualClock>,
    engine: Arc<Engine>,
    paysim: Option<Paysim>,
    provider: ProviderClient,
    show: ShowId,
    _dir: TempDir,
}

impl World {
    /// A world whose clock starts at `start` and one scheduled show of ten seats.
    async fn new(backend: Backend, start: DateTime<Utc>) -> World {
        let dir = TempDir::new();
        let key_file = dir.0.join("chain.key");
        let (key, _) = ChainKey::load_or_create(&key_file).unwrap();
        let store = boxoffice_store::connect(&backend.url, Some(key.clone()))
            .await
            .unwrap();
        let tables = TablePool::connect(&backend.url).await.unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let engine = Engine::new(
            Arc::clone(&store),
            Arc::clone(&clock) as Arc<dyn Clock>,
            Arc::new(RandomIds),
            EngineConfig::default(),
        );
        let mut sim = PaysimConfig::new(dir.0.join("paysim.db"), b"whsec_reconcile".to_vec());
        sim.latency_ms = 20;
        let paysim = paysim::start(
            sim,
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
        .unwrap();
        let provider = ProviderClient::new(&paysim.url(), None);
        let show = ShowId(Uuid::now_v7());
        engine
            .execute(
                show,
                Command::Show(ShowCommand::Schedule {
                    show_id: show,
                    organizer_id: UserId(Uuid::now_v7()),
                    definition: definition(start).into(),
                }),
                CommandMeta::new("usr_organizer"),
            )
            .await
            .unwrap();
        World {
            name: backend.name,
            url: backend.url,
            key_file,
            key,
            store,
            tables,
            clock,
            engine,
            paysim: Some(paysim),
            provider,
            show,
            _dir: dir,
        }
    }

    async fn execute(&self, command: Command) -> Option<Reservation> {
        self.engine
            .execute(self.show, command, CommandMeta::new("usr_test"))
            .await
            .unwrap()
            .reservation
    }

    async fn hold(&self, user: UserId, seat: &str) -> Reservation {
        self.execute(Command::Hold(HoldRequest {
            reservation_id: ReservationId(Uuid::now_v7()),
            user_id: user,
            idempotency_key: None,
            selection: Selection::Seats(vec![seat.to_string()]),
        }))
        .await
        .unwrap()
    }

    /// Checkout's part: `PaymentStarted` with the buyer's token.
    async fn start_payment(&self, r: &Reservation, token: &str) -> PaymentId {
        let payment_id = PaymentId(Uuid::now_v7());
        self.execute(Command::StartPayment {
            reservation_id: r.reservation_id,
            payment_id,
            payment_token: Some(token.into()),
        })
        .await;
        payment_id
    }

    /// The payment saga's own code, on the engine of the server that will crash.
    fn saga_settler(&self) -> PaymentSettler {
        PaymentSettler::new(
            Arc::clone(&self.engine),
            self.provider.clone(),
            saga::ACTOR,
            StdDuration::from_secs(3),
        )
    }

    /// The reservation as the log has it (also after the crash), replayed with the
    /// domain's `apply`.
    async fn reservation(&self, id: ReservationId) -> Reservation {
        let mut state = ShowState::new(self.show);
        let mut after = 0;
        loop {
            let page = self
                .store
                .read_partition(&self.show.to_string(), after, 10_000)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            for e in &page {
                state.apply(
                    &DomainEvent::decode(&e.event_type, e.schema_version, &e.payload).unwrap(),
                );
            }
        }
        state
            .reservation(id)
            .cloned()
            .expect("the reservation is in the log")
    }

    /// The saga's first pass: the payment is created at the provider (and the saga
    /// crashes); returns the provider's intent once it reads `status`.
    async fn create_intent(&self, r: &Reservation, status: IntentStatus) -> Intent {
        let r = self.reservation(r.reservation_id).await;
        let payment = r.payment.clone().unwrap();
        let mut intent_id = None;
        let step = self
            .saga_settler()
            .advance(self.show, &r, &payment, &mut intent_id)
            .await;
        assert!(matches!(step, Step::Wait(_)), "{}: {step:?}", self.name);
        let intent_id = intent_id.expect("the settler created the intent");
        wait_for_intent(&self.provider, &intent_id, status).await
    }

    /// Pays for `r` all the way, as the saga would.
    async fn pay_fully(&self, r: &Reservation, token: &str) -> Reservation {
        self.start_payment(r, token).await;
        let settler = self.saga_settler();
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        loop {
            let settled = settler
                .settle_now(self.show, r.reservation_id, 8)
                .await
                .unwrap();
            let now = settled.reservation.unwrap();
            if now.status == ReservationStatus::Confirmed {
                return now;
            }
            assert_eq!(
                now.status,
                ReservationStatus::PaymentPending,
                "{}",
                self.name
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "payment not settled"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The webhook the server stored for this intent (and then crashed).
    async fn record_webhook(&self, intent: &Intent, event_type: &str) {
        let body = json!({"type": event_type, "data": {"object": intent}}).to_string();
        let reservation = intent.metadata.get("reservation_id").cloned();
        WebhookInbox::new(self.tables.clone())
            .record(
                &Received {
                    event_id: &format!("evt_test_{}", Uuid::new_v4().simple()),
                    event_type,
                    intent_id: &intent.id,
                    reservation_id: reservation.as_deref(),
                    body: &body,
                },
                self.clock.now(),
            )
            .await
            .unwrap();
    }

    /// The server crashes: its engine stops (its timers with it).
    async fn crash(&self) {
        self.engine.shutdown().await;
    }

    fn config(&self, fix: bool) -> ReconcileConfig {
        ReconcileConfig {
            fix,
            grace: Duration::seconds(GRACE_SECONDS),
            provider: Some(self.provider.clone()),
            notify: NotifyConfig::default(),
            json: true,
            projections: true,
        }
    }

    async fn reconcile(&self, config: &ReconcileConfig) -> Report {
        reconcile::run(
            Arc::clone(&self.store),
            self.tables.clone(),
            Arc::clone(&self.clock) as Arc<dyn Clock>,
            config,
        )
        .await
        .unwrap()
    }

    /// A second run finds nothing, with or without --fix, and does nothing.
    async fn assert_clean_twice(&self) {
        let head = self.store.head_position().await.unwrap();
        for fix in [false, true] {
            let report = self.reconcile(&self.config(fix)).await;
            assert!(
                report.items.is_empty(),
                "{}: a second run found {:#?}",
                self.name,
                report.items
            );
            assert_eq!(report.exit_status(), 0, "{}: {report:?}", self.name);
        }
        assert_eq!(
            self.store.head_position().await.unwrap(),
            head,
            "{}: a second run appended events",
            self.name
        );
    }

    /// EVENTS.md rules 1-7 (and the hash chain) over the whole log.
    async fn assert_verified(&self) {
        let report = verify::run(
            Arc::clone(&self.store),
            None,
            VerifyConfig {
                now: self.clock.now(),
                grace: Duration::seconds(5),
                chain_key: Some(self.key.clone()),
                ..VerifyConfig::default()
            },
            true,
        )
        .await
        .unwrap();
        assert!(report.is_clean(), "{}: {:#?}", self.name, report.violations);
    }

    async fn events_of(&self, r: ReservationId) -> Vec<RecordedEvent> {
        self.store
            .read_stream(&format!("reservation-{r}"), 0)
            .await
            .unwrap()
    }

    async fn types_of(&self, r: ReservationId) -> Vec<String> {
        self.events_of(r)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    async fn finish(mut self) {
        if let Some(sim) = self.paysim.take() {
            sim.shutdown().await;
        }
    }
}

fn definition(now: DateTime<Utc>) -> ShowDefinition {
    ShowDefinition {
        name: "Reconcile night".into(),
        venue: Venue {
            name: "Arena".into(),
            city: "Lisbon".into(),
            country: "PT".into(),
            timezone: "Europe/Lisbon".into(),
        },
        starts_at: now + Duration::days(30),
        currency: "EUR".into(),
        sales_open_at: None,
        sales_close_at: None,
        limits: Limits {
            hold_ttl_seconds: HOLD_TTL_SECONDS,
            payment_timeout_seconds: PAYMENT_TIMEOUT_SECONDS,
            ..Limits::default()
        },
        price_tiers: vec![PriceTier {
            id: "A".into(),
            name: "All".into(),
            price: Minor(5_000),
        }],
        sections: vec![SectionDef {
            id: "S".into(),
            name: "Stalls".into(),
            layout: SectionLayout::Seated {
                rows: vec![RowDef {
                    row: "R0".into(),
                    seats: 10,
                    tier: "A".into(),
                }],
            },
        }],
    }
}

fn user() -> UserId {
    UserId(Uuid::now_v7())
}

async fn wait_for_intent(provider: &ProviderClient, id: &str, status: IntentStatus) -> Intent {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        let intent = provider.retrieve(id).await.unwrap();
        if intent.status == status {
            return intent;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "intent {id} still {:?}, waited for {status:?}",
            intent.status
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Whether the provider lists a succeeded refund of `intent`.
async fn refunded_at_provider(provider: &ProviderClient, intent: &Intent) -> bool {
    provider
        .list_refunds(&intent.id)
        .await
        .unwrap()
        .iter()
        .any(|r| r.payment_intent == intent.id && r.status == REFUND_SUCCEEDED)
}

fn fixed(report: &Report, kind: &str, r: ReservationId) -> (String, Vec<u64>) {
    let item = report
        .find(kind, r)
        .unwrap_or_else(|| panic!("no {kind} for {r}: {report:#?}"));
    match &item.fix {
        Some(Outcome::Fixed { action, positions }) => (action.clone(), positions.clone()),
        other => panic!("{kind} for {r} not fixed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn captured_without_tickets_gets_tickets_or_a_refund() {
    let dir = TempDir::new();
    for backend in backends(&dir).await {
        let w = World::new(backend, Utc::now()).await;
        let name = w.name;
        // (a) Captured in the log; the saga crashed before issuing tickets.
        let in_log = w.hold(user(), "S-R0-1").await;
        w.start_payment(&in_log, "tok_visa").await;
        let intent = w.create_intent(&in_log, IntentStatus::Succeeded).await;
        let r = w.reservation(in_log.reservation_id).await;
        let mut known = Some(intent.id.clone());
        let step = w
            .saga_settler()
            .advance(w.show, &r, r.payment.as_ref().unwrap(), &mut known)
            .await;
        assert_eq!(step, Step::Again, "{name}");
        // (b) Captured at the provider, whose webhook the server stored before it
        // crashed; the log has no capture.
        let at_provider = w.hold(user(), "S-R0-2").await;
        w.start_payment(&at_provider, "tok_visa").await;
        let intent_b = w.create_intent(&at_provider, IntentStatus::Succeeded).await;
        w.record_webhook(&intent_b, EVENT_SUCCEEDED).await;
        // (b') Captured at the provider after the log had failed the payment and
        // released its seats (a bug): only a refund can put it right.
        let released = w.hold(user(), "S-R0-3").await;
        let released_payment = w.start_payment(&released, "tok_visa").await;
        let intent_c = w.create_intent(&released, IntentStatus::Succeeded).await;
        w.execute(Command::FailPayment {
            reservation_id: released.reservation_id,
            payment_id: released_payment,
            reason: "bug".into(),
        })
        .await;
        w.record_webhook(&intent_c, EVENT_SUCCEEDED).await;
        // A paid order: nothing to report.
        let paid = w.hold(user(), "S-R0-4").await;
        w.pay_fully(&paid, "tok_visa").await;
        w.crash().await;
        w.clock.advance(Duration::seconds(GRACE_SECONDS + 5));

        let report = w.reconcile(&w.config(false)).await;
        assert_eq!(report.items.len(), 3, "{name}: {report:#?}");
        assert_eq!(report.exit_status(), 1, "{name}");
        let kind = "captured_without_tickets";
        let check = |r: ReservationId, seen: SeenIn, seats_released: bool| {
            let item = report
                .find(kind, r)
                .unwrap_or_else(|| panic!("{name}: {r}"));
            let value = serde_json::to_value(item).unwrap();
            assert_eq!(value["show_id"], json!(w.show.to_string()), "{name}");
            assert_eq!(value["seen_in"], json!(seen), "{name}: {value}");
            assert_eq!(value["seats_released"], json!(seats_released), "{name}");
            assert!(item.fix.is_none());
            value
        };
        let a = check(in_log.reservation_id, SeenIn::Log, false);
        assert!(a["captured_position"].as_u64().unwrap() > a["started_position"].as_u64().unwrap());
        let b = check(at_provider.reservation_id, SeenIn::Provider, false);
        assert_eq!(b["intent_id"], json!(intent_b.id), "{name}");
        let c = check(released.reservation_id, SeenIn::Provider, true);
        assert_eq!(c["payment_id"], json!(released_payment.to_string()));

        let report = w.reconcile(&w.config(true)).await;
        assert_eq!(report.remaining(), 0, "{name}: {report:#?}");
        assert_eq!(report.exit_status(), 0, "{name}");
        let (_, positions) = fixed(&report, kind, in_log.reservation_id);
        assert_eq!(positions.len(), 1, "{name}");
        let (_, positions) = fixed(&report, kind, at_provider.reservation_id);
        assert_eq!(positions.len(), 2, "{name}");
        let (action, _) = fixed(&report, kind, released.reservation_id);
        assert!(action.contains("refunded"), "{name}: {action}");

        assert_eq!(
            w.types_of(in_log.reservation_id).await,
            [
                "ReservationPlaced",
                "PaymentStarted",
                "PaymentCaptured",
                "TicketsIssued"
            ],
            "{name}"
        );
        let b_events = w.events_of(at_provider.reservation_id).await;
        let tail: Vec<(&str, &str)> = b_events[2..]
            .iter()
            .map(|e| (e.event_type.as_str(), e.metadata.actor.as_str()))
            .collect();
        assert_eq!(
            tail,
            [
                ("PaymentCaptured", reconcile::ACTOR),
                ("TicketsIssued", reconcile::ACTOR)
            ],
            "{name}"
        );
        assert_eq!(b_events[2].payload["provider_ref"], json!(intent_b.id));
        assert!(refunded_at_provider(&w.provider, &intent_c).await, "{name}");
        assert!(
            !refunded_at_provider(&w.provider, &intent_b).await,
            "{name}"
        );
        assert_eq!(
            w.types_of(released.reservation_id).await,
            ["ReservationPlaced", "PaymentStarted", "PaymentFailed"],
            "{name}: the log is not touched for a refund at the provider"
        );
        w.assert_verified().await;
        w.assert_clean_twice().await;
        println!("{name}: ok");
        w.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_stuck_is_settled_as_the_saga_would_at_the_deadline() {
    let dir = TempDir::new();
    for backend in backends(&dir).await {
        let w = World::new(backend, Utc::now()).await;
        let name = w.name;
        // Created at the provider, which never settles it: voided at the deadline.
        let open = w.hold(user(), "S-R0-1").await;
        w.start_payment(&open, "tok_timeout").await;
        let open_intent = w.create_intent(&open, IntentStatus::Processing).await;
        // Declined; the server stored the webhook and crashed.
        let declined = w.hold(user(), "S-R0-2").await;
        w.start_payment(&declined, "tok_declined").await;
        let declined_intent = w
            .create_intent(&declined, IntentStatus::RequiresPaymentMethod)
            .await;
        w.record_webhook(&declined_intent, EVENT_PAYMENT_FAILED)
            .await;
        // Succeeded, and nobody heard of it.
        let paid = w.hold(user(), "S-R0-3").await;
        w.start_payment(&paid, "tok_visa").await;
        w.create_intent(&paid, IntentStatus::Succeeded).await;
        w.crash().await;
        w.clock.advance(Duration::seconds(
            i64::from(PAYMENT_TIMEOUT_SECONDS) + GRACE_SECONDS + 5,
        ));

        let report = w.reconcile(&w.config(false)).await;
        assert_eq!(report.items.len(), 3, "{name}: {report:#?}");
        for r in [&open, &declined, &paid] {
            let item = report
                .find("payment_stuck", r.reservation_id)
                .unwrap_or_else(|| panic!("{name}: {report:#?}"));
            let value = serde_json::to_value(item).unwrap();
            assert_eq!(value["show_id"], json!(w.show.to_string()));
            assert!(value["started_position"].as_u64().unwrap() > 0);
        }
        let value =
            serde_json::to_value(report.find("payment_stuck", declined.reservation_id)).unwrap();
        assert_eq!(value["provider_status"], json!("requires_payment_method"));
        assert_eq!(value["intent_id"], json!(declined_intent.id));
        let value =
            serde_json::to_value(report.find("payment_stuck", open.reservation_id)).unwrap();
        assert_eq!(value["provider_status"], Value::Null, "{name}: not asked");

        let report = w.reconcile(&w.config(true)).await;
        assert_eq!(report.remaining(), 0, "{name}: {report:#?}");
        for r in [&open, &declined, &paid] {
            fixed(&report, "payment_stuck", r.reservation_id);
        }
        let voided = w.reservation(open.reservation_id).await;
        assert_eq!(
            voided.payment.as_ref().unwrap().status,
            PaymentStatus::TimedOut
        );
        let canceled = w.provider.retrieve(&open_intent.id).await.unwrap();
        assert_eq!(canceled.status, IntentStatus::Canceled, "{name}");
        assert_eq!(
            w.types_of(open.reservation_id).await[2..],
            ["PaymentTimedOut"],
            "{name}"
        );
        assert_eq!(
            w.types_of(declined.reservation_id).await[2..],
            ["PaymentFailed"],
            "{name}"
        );
        assert_eq!(
            w.types_of(paid.reservation_id).await[2..],
            ["PaymentCaptured", "TicketsIssued"],
            "{name}"
        );
        // The seats of the void and the decline are back on sale, released for why.
        for (r, reason) in [(&open, "payment_timed_out"), (&declined, "payment_failed")] {
            let stream = match &r.items {
                boxoffice_domain::reservation::Items::Seats(s) => {
                    format!("seat-{}-{}", w.show, s[0])
                }
                other => panic!("{other:?}"),
            };
            let last = w.store.read_stream(&stream, 0).await.unwrap();
            let last = last.last().unwrap();
            assert_eq!(last.event_type, "SeatReleased", "{name}: {stream}");
            assert_eq!(last.payload["reason"], json!(reason), "{name}");
        }
        w.assert_verified().await;
        w.assert_clean_twice().await;
        println!("{name}: ok");
        w.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_the_log_missed_is_recorded() {
    let dir = TempDir::new();
    for backend in backends(&dir).await {
        let w = World::new(backend, Utc::now()).await;
        let name = w.name;
        let refunded = w
            .pay_fully(&w.hold(user(), "S-R0-1").await, "tok_visa")
            .await;
        let kept = w
            .pay_fully(&w.hold(user(), "S-R0-2").await, "tok_visa")
            .await;
        // The saga's refund reached the provider; the process died before RefundIssued.
        let order = refunded.order_id.unwrap();
        let intent_id = refunded
            .payment
            .as_ref()
            .unwrap()
            .provider_ref
            .clone()
            .unwrap();
        w.provider
            .refund(
                &intent_id,
                Some(refunded.total.0),
                &format!("refund-{order}"),
            )
            .await
            .unwrap();
        w.crash().await;
        w.clock.advance(Duration::seconds(1));

        let report = w.reconcile(&w.config(false)).await;
        assert_eq!(report.items.len(), 1, "{name}: {report:#?}");
        let item = report
            .find("refund_not_recorded", refunded.reservation_id)
            .unwrap();
        let value = serde_json::to_value(item).unwrap();
        assert_eq!(value["order_id"], json!(order.to_string()), "{name}");
        assert_eq!(value["intent_id"], json!(intent_id), "{name}");
        let issued_at = w.events_of(refunded.reservation_id).await[3].position;
        assert_eq!(value["tickets_position"], json!(issued_at), "{name}");
        assert!(
            report
                .find("refund_not_recorded", kept.reservation_id)
                .is_none()
        );
        // The scan only reads the provider: the kept order is still not refunded there.
        let kept_intent = kept.payment.as_ref().unwrap().provider_ref.clone().unwrap();
        assert_eq!(
            w.provider.list_refunds(&kept_intent).await.unwrap(),
            [],
            "{name}"
        );

        let report = w.reconcile(&w.config(true)).await;
        let (_, positions) = fixed(&report, "refund_not_recorded", refunded.reservation_id);
        let events = w.events_of(refunded.reservation_id).await;
        let last = events.last().unwrap();
        assert_eq!(last.event_type, "RefundIssued", "{name}");
        assert_eq!(last.metadata.actor, reconcile::ACTOR);
        assert_eq!(positions, [last.position]);
        assert_eq!(
            w.reservation(kept.reservation_id).await.status,
            ReservationStatus::Confirmed,
            "{name}"
        );
        w.assert_verified().await;
        w.assert_clean_twice().await;
        println!("{name}: ok");
        w.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_past_its_time_is_expired() {
    let dir = TempDir::new();
    for backend in backends(&dir).await {
        let w = World::new(backend, Utc::now()).await;
        let name = w.name;
        let late = w.hold(user(), "S-R0-1").await;
        w.clock.advance(Duration::seconds(50));
        let young = w.hold(user(), "S-R0-2").await;
        // The server is down while the first hold falls due.
        w.crash().await;
        w.clock.advance(Duration::seconds(
            i64::from(HOLD_TTL_SECONDS) - 50 + GRACE_SECONDS + 5,
        ));
        assert!(young.expires_at > w.clock.now());

        let report = w.reconcile(&w.config(false)).await;
        assert_eq!(report.items.len(), 1, "{name}: {report:#?}");
        let value =
            serde_json::to_value(report.find("hold_not_released", late.reservation_id)).unwrap();
        let placed = w.events_of(late.reservation_id).await[0].position;
        assert_eq!(value["placed_position"], json!(placed), "{name}");
        assert_eq!(value["show_id"], json!(w.show.to_string()));

        let report = w.reconcile(&w.config(true)).await;
        let (_, positions) = fixed(&report, "hold_not_released", late.reservation_id);
        let events = w.events_of(late.reservation_id).await;
        assert_eq!(events.last().unwrap().event_type, "HoldExpired", "{name}");
        assert_eq!(positions, [events.last().unwrap().position]);
        assert_eq!(
            w.reservation(young.reservation_id).await.status,
            ReservationStatus::Held,
            "{name}: the young hold is left alone"
        );
        w.assert_verified().await;
        w.assert_clean_twice().await;
        println!("{name}: ok");
        w.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drifted_read_model_is_rebuilt() {
    let dir = TempDir::new();
    for backend in backends(&dir).await {
        let w = World::new(backend, Utc::now()).await;
        let name = w.name;
        w.hold(user(), "S-R0-1").await;
        w.hold(user(), "S-R0-2").await;
        let read_side = Projections::start(
            Arc::clone(&w.store),
            w.tables.clone(),
            vec![Arc::new(SeatMapProjection)],
            RuntimeConfig::default(),
        );
        caught_up(&w, &read_side).await;
        let checkpoint = read_side.handles()[0].position();
        read_side.shutdown().await;
        assert_eq!(w.reconcile(&w.config(false)).await.items.len(), 0, "{name}");

        // Someone "corrects" the seat map by hand: a held seat shown as available.
        let sql = "UPDATE seat_map SET status = 'available', reservation_id = NULL WHERE seat_id = 'S-R0-1'";
        if w.url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&w.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&w.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        }
        let report = w.reconcile(&w.config(false)).await;
        assert_eq!(report.items.len(), 1, "{name}: {report:#?}");
        let value = serde_json::to_value(&report.items[0].finding).unwrap();
        assert_eq!(value["kind"], json!("projection_drift"), "{name}");
        assert_eq!(value["projection"], json!("seat_map"));
        assert_eq!(value["position"], json!(checkpoint));
        assert_eq!(
            value["tables"],
            json!([{"table": "seat_map", "live_only": 1, "replay_only": 1}]),
            "{name}"
        );

        let head = w.store.head_position().await.unwrap();
        let report = w.reconcile(&w.config(true)).await;
        assert!(
            matches!(&report.items[0].fix, Some(Outcome::Fixed { action, positions })
                if action.starts_with("rebuilt seat_map") && positions.is_empty()),
            "{name}: {report:#?}"
        );
        assert_eq!(
            w.store.head_position().await.unwrap(),
            head,
            "{name}: no event appended"
        );
        let status: String = if w.url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&w.url).await.unwrap();
            sqlx::query_scalar("SELECT status FROM seat_map WHERE seat_id = 'S-R0-1'")
                .fetch_one(&mut conn)
                .await
                .unwrap()
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&w.url).await.unwrap();
            sqlx::query_scalar("SELECT status FROM seat_map WHERE seat_id = 'S-R0-1'")
                .fetch_one(&mut conn)
                .await
                .unwrap()
        };
        assert_eq!(status, "held", "{name}");
        w.assert_clean_twice().await;
        println!("{name}: ok");
        w.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undelivered_notifications_are_delivered() {
    let dir = TempDir::new();
    for backend in backends(&dir).await {
        let w = World::new(backend, Utc::now()).await;
        let name = w.name;
        let buyer = user();
        UserDirectory::new(w.tables.clone())
            .create(&UserRecord {
                user_id: buyer.to_string(),
                email: format!("{}@example.com", Uuid::new_v4().simple()),
                password_hash: "unused".into(),
                display_name: None,
                roles: vec!["buyer".into()],
                created_at: w.clock.now(),
            })
            .await
            .unwrap();
        let mail = w._dir.0.join("mail.jsonl");
        let channels = NotifyConfig {
            email_file: Some(mail.clone()),
            ..NotifyConfig::default()
        };
        let read_side = Projections::start(
            Arc::clone(&w.store),
            w.tables.clone(),
            vec![Arc::new(NotificationsProjection::new(&channels))],
            RuntimeConfig::default(),
        );
        // A hold expires: its notification is given up by a worker whose mail sink is
        // a folder (every attempt fails), after its one attempt.
        let first = w.hold(buyer, "S-R0-1").await;
        w.clock
            .advance(Duration::seconds(i64::from(HOLD_TTL_SECONDS) + 1));
        w.engine.tick(w.show).await.unwrap();
        caught_up(&w, &read_side).await;
        let broken = NotifyConfig {
            email_file: Some(w._dir.0.clone()),
            ..NotifyConfig::default()
        };
        let worker = DeliveryWorker::start(
            w.tables.clone(),
            broken,
            DeliveryConfig {
                attempts_max: 1,
                ..DeliveryConfig::default()
            },
            Arc::clone(&w.clock) as Arc<dyn Clock>,
            None,
        )
        .unwrap();
        let given_up = wait_for_rows(&w, 1).await;
        worker.shutdown().await;
        assert!(
            matches!(
                delivery::row_state(&w.tables, &given_up[0], "email_file")
                    .await
                    .unwrap(),
                RowState::GivenUp { .. }
            ),
            "{name}"
        );
        // A second expiry's notification waits with no worker running.
        let second = w.hold(buyer, "S-R0-2").await;
        w.clock
            .advance(Duration::seconds(i64::from(HOLD_TTL_SECONDS) + 1));
        w.engine.tick(w.show).await.unwrap();
        caught_up(&w, &read_side).await;
        read_side.shutdown().await;
        w.crash().await;
        w.clock.advance(Duration::seconds(GRACE_SECONDS + 5));

        let report = w.reconcile(&w.config(false)).await;
        assert_eq!(report.items.len(), 2, "{name}: {report:#?}");
        let given = report
            .find("notification_undelivered", first.reservation_id)
            .unwrap();
        let value = serde_json::to_value(given).unwrap();
        assert_eq!(value["given_up"], json!(true), "{name}");
        assert_eq!(value["attempts"], json!(1));
        assert_eq!(value["user_id"], json!(buyer.to_string()));
        assert_eq!(value["notification_kind"], json!("hold_expired"));
        assert_eq!(value["channel"], json!("email_file"));
        let waiting = report
            .find("notification_undelivered", second.reservation_id)
            .unwrap();
        let value = serde_json::to_value(waiting).unwrap();
        assert_eq!(value["given_up"], json!(false), "{name}");
        assert_eq!(value["attempts"], json!(0));

        let mut config = w.config(true);
        config.notify = channels;
        let report = w.reconcile(&config).await;
        assert_eq!(report.remaining(), 0, "{name}: {report:#?}");
        let mut ids = Vec::new();
        for r in [&first, &second] {
            let (action, _) = fixed(&report, "notification_undelivered", r.reservation_id);
            assert!(action.contains("delivered"), "{name}: {action}");
            let item = report
                .find("notification_undelivered", r.reservation_id)
                .unwrap();
            let value = serde_json::to_value(item).unwrap();
            ids.push(value["notification_id"].as_str().unwrap().to_owned());
        }
        let lines: Vec<Value> = std::fs::read_to_string(&mail)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut sent: Vec<String> = lines
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect();
        sent.sort();
        ids.sort();
        assert_eq!(sent, ids, "{name}: each delivered once");
        w.assert_verified().await;
        w.assert_clean_twice().await;
        assert_eq!(
            std::fs::read_to_string(&mail).unwrap().lines().count(),
            2,
            "{name}: nothing sent twice"
        );
        println!("{name}: ok");
        w.finish().await;
    }
}

async fn caught_up(w: &World, read_side: &Projections) {
    let head = w.store.head_position().await.unwrap();
    assert!(
        read_side.wait_for_all(head, WAIT_LIMIT).await,
        "{}: the notifications projection caught up",
        w.name
    );
}

/// Waits until `count` outbox rows have been given up; returns their notification ids.
async fn wait_for_rows(w: &World, count: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        let rows = delivery::undelivered(&w.tables, w.clock.now(), 100)
            .await
            .unwrap();
        let given: Vec<String> = rows
            .into_iter()
            .filter(|r| r.failed_at.is_some())
            .map(|r| r.notification_id)
            .collect();
        if given.len() >= count {
            return given;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no delivery given up",
            w.name
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn boxctl(w: &World, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_boxctl"))
        .args(args)
        .env("DATABASE_URL", &w.url)
        .env("EVENT_CHAIN_KEY_FILE", &w.key_file)
        .env("PAYMENT_PROVIDER_URL", w.provider.base_url())
        .env_remove("PAYMENT_PROVIDER_API_KEY")
        .env_remove("NOTIFY_EMAIL_FILE")
        .env_remove("NOTIFY_WEBHOOK_URL")
        .env_remove("NOTIFY_WEBHOOK_SECRET")
        .output()
        .expect("boxctl runs")
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boxctl_reconcile_reports_fixes_and_exits_accordingly() {
    let dir = TempDir::new();
    for backend in backends(&dir).await {
        // The binary judges at the real time: the world's clock starts two hours ago,
        // so its hold and payment are long overdue now.
        let w = World::new(backend, Utc::now() - Duration::hours(2)).await;
        let name = w.name;
        let late = w.hold(user(), "S-R0-1").await;
        let captured = w.hold(user(), "S-R0-2").await;
        w.start_payment(&captured, "tok_visa").await;
        let intent = w.create_intent(&captured, IntentStatus::Succeeded).await;
        let r = w.reservation(captured.reservation_id).await;
        let mut known = Some(intent.id.clone());
        let step = w
            .saga_settler()
            .advance(w.show, &r, r.payment.as_ref().unwrap(), &mut known)
            .await;
        assert_eq!(step, Step::Again);
        w.crash().await;

        let found = boxctl(&w, &["--json", "reconcile"]);
        assert_eq!(
            found.status.code(),
            Some(1),
            "{name}: {}",
            String::from_utf8_lossy(&found.stderr)
        );
        let lines = json_lines(&found);
        assert_eq!(lines.len(), 3, "{name}: {lines:?}");
        let of = |kind: &str| lines.iter().find(|l| l["kind"] == kind).unwrap().clone();
        let hold = of("hold_not_released");
        assert_eq!(
            hold["reservation_id"],
            json!(late.reservation_id.to_string())
        );
        assert_eq!(hold["fix"], Value::Null);
        let payment = of("captured_without_tickets");
        assert_eq!(
            payment["reservation_id"],
            json!(captured.reservation_id.to_string())
        );
        assert_eq!(payment["seen_in"], json!("log"));
        let summary = of("summary");
        assert_eq!(summary["found"], json!(2), "{name}");
        assert_eq!(summary["remaining"], json!(2));
        assert_eq!(summary["provider_checked"], json!(true));

        let fixing = boxctl(&w, &["--json", "reconcile", "--fix"]);
        assert_eq!(
            fixing.status.code(),
            Some(0),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&fixing.stdout),
            String::from_utf8_lossy(&fixing.stderr)
        );
        let lines = json_lines(&fixing);
        for line in &lines[..2] {
            assert_eq!(line["fix"]["outcome"], json!("fixed"), "{name}: {line}");
            assert!(!line["fix"]["positions"].as_array().unwrap().is_empty());
        }
        assert_eq!(lines[2]["fixed"], json!(2));
        assert_eq!(lines[2]["remaining"], json!(0));
        assert_eq!(
            w.events_of(captured.reservation_id)
                .await
                .last()
                .unwrap()
                .event_type,
            "TicketsIssued"
        );

        let again = boxctl(&w, &["reconcile", "--fix"]);
        assert_eq!(again.status.code(), Some(0), "{name}");
        let text = String::from_utf8(again.stdout).unwrap();
        assert!(
            text.contains("reconcile: 0 finding(s)") && text.contains("0 fixed, 0 remaining"),
            "{name}: {text}"
        );
        // Writing needs the chain key; reading does not.
        let no_key = std::process::Command::new(env!("CARGO_BIN_EXE_boxctl"))
            .args(["reconcile", "--fix"])
            .env("DATABASE_URL", &w.url)
            .env_remove("EVENT_CHAIN_KEY_FILE")
            .env_remove("PAYMENT_PROVIDER_URL")
            .output()
            .unwrap();
        assert_eq!(no_key.status.code(), Some(2), "{name}");
        println!("{name}: ok");
        w.finish().await;
    }
}
