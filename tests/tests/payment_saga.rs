//! The payment saga against the real simulator over HTTP, on both backends, without the
//! HTTP API in between: every test token ends in the right state with the right events
//! (rules 2 and 3 checked over the log), a saga stopped mid-payment is finished by a new
//! one started on the same log, and a refund releases the seats.

use std::sync::Arc;
use std::time::Duration;

use boxoffice_commands::{CommandMeta, Engine, EngineConfig};
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::reservation::{Reservation, ReservationStatus};
use boxoffice_domain::show::{Limits, ShowCommand};
use boxoffice_domain::{
    Clock, Command, PaymentId, RandomIds, ReservationId, ShowId, SystemClock, UserId,
};
use boxoffice_sagas::paysim::{self, Paysim, PaysimConfig};
use boxoffice_sagas::provider::ProviderClient;
use boxoffice_sagas::saga::{PaymentSaga, SagaConfig};
use boxoffice_store::EventStore;
use boxoffice_tests::payments::check_payments;
use boxoffice_tests::{backends, check_log, open, partition, show_definition};

const PAYMENT_TIMEOUT_SECONDS: u32 = 5;

async fn simulator(dir: &std::path::Path, latency_ms: u64) -> Paysim {
    let mut config = PaysimConfig::new(dir.join("paysim.db"), b"whsec_test".to_vec());
    config.latency_ms = latency_ms;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    paysim::start(config, listener).await.unwrap()
}

fn engine(store: &Arc<dyn EventStore>) -> Arc<Engine> {
    Engine::new(
        Arc::clone(store),
        Arc::new(SystemClock) as Arc<dyn Clock>,
        Arc::new(RandomIds),
        EngineConfig::default(),
    )
}

fn saga(engine: &Arc<Engine>, sim: &Paysim) -> Arc<PaymentSaga> {
    let config = SagaConfig {
        poll_initial: Duration::from_millis(100),
        poll_max: Duration::from_millis(400),
        retry_max: Duration::from_millis(500),
    };
    PaymentSaga::new(
        Arc::clone(engine),
        ProviderClient::new(&sim.url(), None),
        config,
    )
}

async fn schedule(engine: &Engine) -> ShowId {
    let show = ShowId(uuid::Uuid::now_v7());
    let definition = show_definition(
        2,
        10,
        20,
        Limits {
            payment_timeout_seconds: PAYMENT_TIMEOUT_SECONDS,
            max_tickets_per_user: 50,
            max_active_holds_per_user: 20,
            ..Limits::default()
        },
    );
    let command = ShowCommand::Schedule {
        show_id: show,
        organizer_id: UserId(uuid::Uuid::now_v7()),
        definition: definition.into(),
    };
    engine
        .execute(show, Command::Show(command), CommandMeta::new("test"))
        .await
        .unwrap();
    show
}

async fn hold(engine: &Engine, show: ShowId, selection: Selection) -> ReservationId {
    let id = ReservationId(uuid::Uuid::now_v7());
    let command = Command::Hold(HoldRequest {
        reservation_id: id,
        user_id: UserId(uuid::Uuid::now_v7()),
        idempotency_key: None,
        selection,
    });
    engine
        .execute(show, command, CommandMeta::new("buyer"))
        .await
        .unwrap();
    id
}

async fn start_payment(engine: &Engine, show: ShowId, id: ReservationId, token: &str) {
    let command = Command::StartPayment {
        reservation_id: id,
        payment_id: PaymentId(uuid::Uuid::now_v7()),
        payment_token: Some(token.into()),
    };
    engine
        .execute(show, command, CommandMeta::new("buyer"))
        .await
        .unwrap();
}

async fn reservation(engine: &Engine, show: ShowId, id: ReservationId) -> Reservation {
    engine
        .query(show, move |s| s.reservation(id).cloned().unwrap())
        .await
        .unwrap()
}

/// Waits until the reservation leaves `payment_pending`, or panics after `limit`.
async fn settled(engine: &Engine, show: ShowId, id: ReservationId, limit: Duration) -> Reservation {
    let started = std::time::Instant::now();
    loop {
        let r = reservation(engine, show, id).await;
        if r.status != ReservationStatus::PaymentPending {
            return r;
        }
        assert!(
            started.elapsed() < limit,
            "{id} still paying after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn seats(ids: &[&str]) -> Selection {
    Selection::Seats(ids.iter().map(|s| s.to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_test_token_ends_in_the_right_state() {
    for backend in backends().await {
        let dir = tempdir();
        let sim = simulator(&dir, 100).await;
        let store = open(&backend.url).await;
        let engine = engine(&store);
        let saga = saga(&engine, &sim);
        saga.start().await;
        let show = schedule(&engine).await;

        let visa = hold(&engine, show, seats(&["S-R0-1", "S-R0-2"])).await;
        let declined = hold(&engine, show, seats(&["S-R0-3"])).await;
        let timeout = hold(&engine, show, seats(&["S-R0-4"])).await;
        let late = hold(&engine, show, seats(&["S-R0-5"])).await;
        let dup = hold(
            &engine,
            show,
            Selection::General {
                section: "floor".into(),
                quantity: 3,
            },
        )
        .await;
        for (id, token) in [
            (visa, "tok_visa"),
            (declined, "tok_declined"),
            (timeout, "tok_timeout"),
            (late, "tok_late_visa"),
            (dup, "tok_dup_visa"),
        ] {
            start_payment(&engine, show, id, token).await;
            saga.begin(show, id);
        }
        let limit = Duration::from_secs(u64::from(PAYMENT_TIMEOUT_SECONDS) + 10);

        let r = settled(&engine, show, visa, limit).await;
        assert_eq!(r.status, ReservationStatus::Confirmed, "{}", backend.name);
        assert_eq!(r.tickets.len(), 2);
        assert!(r.tickets.iter().all(|t| t.code.len() == 40));
        assert_ne!(r.tickets[0].code, r.tickets[1].code);
        assert!(r.payment.as_ref().unwrap().provider_ref.is_some());

        let r = settled(&engine, show, declined, limit).await;
        assert_eq!(r.status, ReservationStatus::PaymentFailed);
        let r = settled(&engine, show, dup, limit).await;
        assert_eq!(r.status, ReservationStatus::Confirmed);
        assert_eq!(r.tickets.len(), 3);
        // tok_timeout never settles: voided at the deadline, then released.
        let r = settled(&engine, show, timeout, limit).await;
        assert_eq!(r.status, ReservationStatus::Expired);
        // tok_late_visa captures just after the deadline and refuses the void: the buyer
        // gets the tickets anyway (rule 2).
        let r = settled(&engine, show, late, limit).await;
        assert_eq!(r.status, ReservationStatus::Confirmed, "{}", backend.name);

        let state = engine.query(show, |s| s.clone()).await.unwrap();
        assert_eq!(state.seat("S-R0-3").unwrap().state, Default::default());
        let log = partition(&store, show).await;
        check_log(show, &log).unwrap();
        let report = check_payments(&log, Some(chrono::Utc::now())).unwrap();
        assert_eq!(report.count(|t| t.issued == 1), 3);
        assert_eq!(report.count(|t| t.failed == 1), 1);
        assert_eq!(report.count(|t| t.timed_out == 1), 1);

        saga.shutdown().await;
        engine.shutdown().await;
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_saga_finishes_what_a_stopped_one_left_in_flight() {
    for backend in backends().await {
        let dir = tempdir();
        let sim = simulator(&dir, 300).await;
        let store = open(&backend.url).await;
        let first_engine = engine(&store);
        let show = schedule(&first_engine).await;
        // Payments started with no saga running at all (the process died right after
        // appending PaymentStarted), and some started under a saga that then stopped
        // while the provider was still processing them.
        let mut ids = Vec::new();
        for n in 1..=4 {
            let id = hold(&first_engine, show, seats(&[&format!("S-R1-{n}")])).await;
            start_payment(&first_engine, show, id, "tok_visa").await;
            ids.push(id);
        }
        let stopped = saga(&first_engine, &sim);
        for n in 5..=8 {
            let id = hold(&first_engine, show, seats(&[&format!("S-R1-{n}")])).await;
            start_payment(&first_engine, show, id, "tok_visa").await;
            stopped.begin(show, id);
            ids.push(id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        stopped.shutdown().await;
        first_engine.shutdown().await;

        // "Restart": a new engine loads the log, a new saga resumes.
        let engine = engine(&store);
        engine.load_all().await.unwrap();
        let saga = saga(&engine, &sim);
        saga.start().await;
        for id in &ids {
            let r = settled(&engine, show, *id, Duration::from_secs(15)).await;
            assert_eq!(r.status, ReservationStatus::Confirmed, "{}", backend.name);
        }
        let log = partition(&store, show).await;
        let report = check_payments(&log, Some(chrono::Utc::now())).unwrap();
        assert_eq!(report.count(|t| t.issued == 1), 8);
        saga.shutdown().await;
        engine.shutdown().await;
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_pays_back_once_and_releases_the_seats() {
    for backend in backends().await {
        let dir = tempdir();
        let sim = simulator(&dir, 50).await;
        let store = open(&backend.url).await;
        let engine = engine(&store);
        let saga = saga(&engine, &sim);
        saga.start().await;
        let show = schedule(&engine).await;
        let id = hold(&engine, show, seats(&["S-R0-9"])).await;
        start_payment(&engine, show, id, "tok_visa").await;
        saga.begin(show, id);
        let r = settled(&engine, show, id, Duration::from_secs(10)).await;
        assert_eq!(r.status, ReservationStatus::Confirmed);

        let refunded = saga.refund(show, id, "support").await.unwrap();
        assert_eq!(refunded.status, ReservationStatus::Refunded);
        // A second refund changes nothing and is not an error.
        let again = saga.refund(show, id, "support").await.unwrap();
        assert_eq!(again.status, ReservationStatus::Refunded);
        let seat = engine
            .query(show, |s| s.seat("S-R0-9").unwrap().state)
            .await
            .unwrap();
        assert_eq!(seat, Default::default(), "{}", backend.name);
        let log = partition(&store, show).await;
        let report = check_payments(&log, Some(chrono::Utc::now())).unwrap();
        assert_eq!(report.count(|t| t.refunded == 1), 1);
        assert_eq!(
            log.iter()
                .filter(|e| e.event_type == "RefundIssued")
                .count(),
            1
        );
        saga.shutdown().await;
        engine.shutdown().await;
        sim.shutdown().await;
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("boxoffice-saga-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
