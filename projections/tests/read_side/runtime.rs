//! The projector runtime: rows and checkpoint commit together, restarts resume from the
//! checkpoint, a version bump rebuilds beside the old tables and swaps, and `wait_for`
//! follows the applied position.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use boxoffice_projections::db::Tx;
use boxoffice_projections::notifications::NAME as NOTIFICATIONS;
use boxoffice_projections::orders::NAME as ORDERS;
use boxoffice_projections::{
    NotificationsProjection, NotifyConfig, OrdersProjection, Projection, ProjectionError,
    Projections, load_checkpoint,
};
use boxoffice_store::RecordedEvent;

use crate::support::*;

/// The orders projection with a switchable failure after its rows are written, and a
/// version of the test's choosing.
struct Faulty {
    inner: Arc<dyn Projection>,
    version: u32,
    fail: AtomicBool,
    failures: AtomicU32,
    /// The most order rows seen inside a failing transaction.
    rows_seen_before_failing: AtomicI64,
}

impl Faulty {
    fn new(inner: Arc<dyn Projection>, version: u32, fail: bool) -> Arc<Self> {
        Arc::new(Self {
            inner,
            version,
            fail: AtomicBool::new(fail),
            failures: AtomicU32::new(0),
            rows_seen_before_failing: AtomicI64::new(0),
        })
    }
}

#[async_trait]
impl Projection for Faulty {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        self.inner.apply(tx, events).await?;
        if self.fail.load(Ordering::SeqCst) {
            let rows = tx
                .fetch_optional("SELECT count(*) AS n FROM orders", &[])
                .await?
                .expect("a count")
                .int("n")?;
            self.rows_seen_before_failing
                .fetch_max(rows, Ordering::SeqCst);
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(ProjectionError::Failed("injected failure".into()));
        }
        Ok(())
    }
}

/// The orders projection, counting its batches.
struct Counting {
    inner: OrdersProjection,
    batches: AtomicU32,
}

#[async_trait]
impl Projection for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn version(&self) -> u32 {
        self.inner.version()
    }

    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.inner.apply(tx, events).await
    }
}

async fn orders_and_tickets(env: &Env) -> (i64, i64) {
    (
        env.count("SELECT count(*) AS n FROM orders", &[]).await,
        env.count("SELECT count(*) AS n FROM tickets", &[]).await,
    )
}

#[tokio::test]
async fn a_failure_inside_apply_leaves_no_rows_and_no_checkpoint_then_a_retry_applies_once() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let mut head = 0;
        for i in 0..3 {
            let seats = [format!("S-R0-{i}a"), format!("S-R0-{i}b")];
            let seats: Vec<&str> = seats.iter().map(String::as_str).collect();
            head = log.buy(show, buyer, &seats).await.position;
        }
        let faulty = Faulty::new(Arc::new(OrdersProjection), 1, true);
        let projections = Projections::start(
            Arc::clone(&env.store),
            env.pool.clone(),
            vec![faulty.clone() as Arc<dyn Projection>],
            fast_runtime(),
        );
        // Several failed attempts, each after writing order rows in its transaction.
        eventually("three failed attempts", || async {
            (faulty.failures.load(Ordering::SeqCst) >= 3).then_some(())
        })
        .await;
        assert!(faulty.rows_seen_before_failing.load(Ordering::SeqCst) > 0);
        assert_eq!(orders_and_tickets(&env).await, (0, 0), "{}", env.backend);
        let checkpoint = load_checkpoint(&env.pool, ORDERS).await.unwrap().unwrap();
        assert_eq!(checkpoint.position, 0);
        assert_eq!(projections.get(ORDERS).unwrap().position(), 0);

        faulty.fail.store(false, Ordering::SeqCst);
        assert!(projections.get(ORDERS).unwrap().wait_for(head, WAIT).await);
        assert_eq!(orders_and_tickets(&env).await, (3, 6), "{}", env.backend);
        let checkpoint = load_checkpoint(&env.pool, ORDERS).await.unwrap().unwrap();
        assert_eq!(checkpoint.position, head);
        assert_eq!(checkpoint.version, 1);
        projections.shutdown().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_restart_resumes_from_the_checkpoint_without_duplicates() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let read = env.start(NotifyConfig::default());
        let mut head = 0;
        for i in 0..4 {
            head = log
                .buy(show, buyer, &[&format!("S-R0-{}", i + 1)])
                .await
                .position;
        }
        assert!(read.projections().wait_for_all(head, WAIT).await);
        read.shutdown().await;
        let first_head = head;

        // Appended while nothing runs.
        for i in 4..9 {
            head = log
                .buy(show, buyer, &[&format!("S-R0-{}", i + 1)])
                .await
                .position;
        }
        assert_eq!(
            load_checkpoint(&env.pool, ORDERS)
                .await
                .unwrap()
                .unwrap()
                .position,
            first_head,
            "{}: the checkpoint stayed where the first run stopped",
            env.backend
        );

        let read = env.start(NotifyConfig::default());
        assert!(read.projections().wait_for_all(head, WAIT).await);
        assert_eq!(orders_and_tickets(&env).await, (9, 9), "{}", env.backend);
        let (notes, _) = read.notifications().list(buyer, None, 100).await.unwrap();
        assert_eq!(notes.len(), 9);
        for name in [ORDERS, NOTIFICATIONS] {
            let checkpoint = load_checkpoint(&env.pool, name).await.unwrap().unwrap();
            assert_eq!(checkpoint.position, head, "{name}");
        }

        // A second runner of the same projections on the same tables (a second server
        // process) shares the work without applying anything twice.
        let second = Projections::start(
            Arc::clone(&env.store),
            env.pool.clone(),
            vec![
                Arc::new(OrdersProjection) as Arc<dyn Projection>,
                Arc::new(NotificationsProjection::new(&NotifyConfig::default())),
            ],
            fast_runtime(),
        );
        let mut purchases = Vec::new();
        for i in 9..20 {
            purchases.push(log.buy(show, buyer, &[&format!("S-R0-{}", i + 1)]).await);
        }
        head = purchases.last().unwrap().position;
        assert!(read.projections().wait_for_all(head, WAIT).await);
        assert!(second.wait_for_all(head, WAIT).await);
        assert_eq!(orders_and_tickets(&env).await, (20, 20), "{}", env.backend);
        assert_eq!(
            env.count("SELECT count(*) AS n FROM notifications", &[])
                .await,
            20
        );
        second.shutdown().await;
        read.shutdown().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_version_bump_rebuilds_the_read_model_and_swaps_it_in() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let email_file = env.dir.join("mail.jsonl");
        let notify = NotifyConfig {
            email_file: Some(email_file),
            ..NotifyConfig::default()
        };
        let start = |orders_version: u32, notifications_version: u32| {
            Projections::start(
                Arc::clone(&env.store),
                env.pool.clone(),
                vec![
                    Faulty::new(Arc::new(OrdersProjection), orders_version, false)
                        as Arc<dyn Projection>,
                    Faulty::new(
                        Arc::new(NotificationsProjection::new(&notify)),
                        notifications_version,
                        false,
                    ),
                ],
                fast_runtime(),
            )
        };
        let mut head = 0;
        for i in 0..3 {
            head = log
                .buy(show, buyer, &[&format!("S-R0-{}", i + 1)])
                .await
                .position;
        }
        let first = start(1, 1);
        assert!(first.wait_for_all(head, WAIT).await);
        first.shutdown().await;
        let (notes_before, _) = boxoffice_projections::NotificationsView::new(env.pool.clone())
            .list(buyer, None, 100)
            .await
            .unwrap();
        assert_eq!(notes_before.len(), 3);
        // One outbox row was delivered before the rebuild.
        boxoffice_projections::db::execute(
            &env.pool,
            "UPDATE notification_outbox SET delivered_at = next_attempt_at WHERE notification_id = $1",
            &[notes_before[0].id.clone().into()],
        )
        .await
        .unwrap();
        // A row the new version would not make: the swap must remove it.
        boxoffice_projections::db::execute(
            &env.pool,
            "INSERT INTO orders (order_id, reservation_id, show_id, user_id, status, total_minor,
                                 currency, paid_at, position)
             VALUES ('ord_stale', 'rsv_stale', 'shw_stale', 'usr_stale', 'paid', 1, 'EUR', $1, 999999)",
            &[chrono::Utc::now().into()],
        )
        .await
        .unwrap();

        let second = start(2, 2);
        // The old tables are complete up to `head`, so the handles report it at once; the
        // new version is in place when the checkpoints say so.
        for name in [ORDERS, NOTIFICATIONS] {
            eventually("the swap to version 2", || async {
                let checkpoint = load_checkpoint(&env.pool, name).await.unwrap().unwrap();
                (checkpoint.version == 2).then_some(())
            })
            .await;
        }
        assert!(second.wait_for_all(head, WAIT).await);
        assert_eq!(orders_and_tickets(&env).await, (3, 3), "{}", env.backend);
        assert_eq!(
            env.count(
                "SELECT count(*) AS n FROM orders WHERE order_id = 'ord_stale'",
                &[]
            )
            .await,
            0
        );
        for name in [ORDERS, NOTIFICATIONS] {
            let checkpoint = load_checkpoint(&env.pool, name).await.unwrap().unwrap();
            assert_eq!(
                (checkpoint.version, checkpoint.position),
                (2, head),
                "{name}"
            );
        }
        // The rebuilt notifications have the same ids, and the outbox kept its rows and
        // their state: nothing is delivered twice because of the rebuild.
        let (notes_after, _) = boxoffice_projections::NotificationsView::new(env.pool.clone())
            .list(buyer, None, 100)
            .await
            .unwrap();
        assert_eq!(notes_after, notes_before);
        assert_eq!(
            env.count("SELECT count(*) AS n FROM notification_outbox", &[])
                .await,
            3
        );
        assert_eq!(
            env.count(
                "SELECT count(*) AS n FROM notification_outbox WHERE delivered_at IS NOT NULL",
                &[]
            )
            .await,
            1
        );
        second.shutdown().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn wait_for_returns_once_the_position_is_applied() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let read = env.start(NotifyConfig::default());
        let orders = read.orders_projector().clone();
        assert!(
            orders.wait_for(0, Duration::ZERO).await,
            "position 0 is always applied"
        );

        // Nothing at position 1 yet: the wait times out.
        assert!(!orders.wait_for(1, Duration::from_millis(200)).await);

        // A waiter that starts before the append returns once it is applied.
        let waiter = {
            let orders = orders.clone();
            tokio::spawn(async move { orders.wait_for(1, WAIT).await })
        };
        let purchase = log.buy(show, buyer, &["S-R0-1"]).await;
        assert!(waiter.await.unwrap());
        assert!(orders.wait_for(purchase.position, WAIT).await);
        assert!(orders.position() >= purchase.position);
        assert!(read.orders().get(purchase.order).await.unwrap().is_some());

        read.shutdown().await;
        // A stopped projection never reaches a later position; the wait says so at once.
        let started = std::time::Instant::now();
        assert!(!orders.wait_for(purchase.position + 1, WAIT).await);
        assert!(started.elapsed() < WAIT / 2);
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_database_outage_is_retried_until_the_database_is_back() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let read = env.start(NotifyConfig::default());
        let first = log.buy(show, buyer, &["S-R0-1"]).await;
        assert!(read.projections().wait_for_all(first.position, WAIT).await);

        if !env.postgres_outage(true).await {
            println!("skipped: database outage on {} (no server)", env.backend);
            read.shutdown().await;
            env.cleanup().await;
            continue;
        }
        // The runners' next reads fail (their connections are gone and no new ones are
        // allowed); give them a few poll and retry rounds to fail in.
        tokio::time::sleep(Duration::from_millis(3 * fast_runtime().poll_interval_ms)).await;
        env.postgres_outage(false).await;

        // Still running: they pick up what is appended after the database came back.
        let second = log.buy(show, buyer, &["S-R0-2"]).await;
        assert!(read.projections().wait_for_all(second.position, WAIT).await);
        assert!(read.orders().get(second.order).await.unwrap().is_some());
        assert_eq!(orders_and_tickets(&env).await, (2, 2));
        read.shutdown().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_caught_up_runner_gathers_appends_for_its_batch_interval_unless_a_reader_waits() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let start = |interval_ms| {
            let counting = Arc::new(Counting {
                inner: OrdersProjection,
                batches: AtomicU32::new(0),
            });
            let projections = Projections::start(
                Arc::clone(&env.store),
                env.pool.clone(),
                vec![counting.clone() as Arc<dyn Projection>],
                boxoffice_projections::RuntimeConfig {
                    batch_events_max: 1_000,
                    batch_interval_ms_min: interval_ms,
                    ..fast_runtime()
                },
            );
            (counting, projections)
        };
        let applied = |projections: &Projections, position: u64| {
            projections.get(ORDERS).unwrap().position() >= position
        };

        // Eight purchases, one commit each, 20 ms apart: within a 400 ms interval they
        // make two or three batches (one per commit without it), and every order lands.
        let (counting, projections) = start(400);
        let mut head = 0;
        for i in 0..8 {
            head = log.buy(show, buyer, &[&format!("S-R1-{i}")]).await.position;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eventually("all eight applied", || async {
            applied(&projections, head).then_some(())
        })
        .await;
        let batches = counting.batches.load(Ordering::SeqCst);
        assert!(batches <= 3, "{} batches on {}", batches, env.backend);
        assert_eq!(orders_and_tickets(&env).await, (8, 8), "{}", env.backend);
        projections.shutdown().await;

        // With a 10 s interval, a purchase (a few appends) right after a batch waits for
        // it to pass, unless a reader waits for it: then it is applied at once.
        let (counting, projections) = start(10_000);
        let orders = projections.get(ORDERS).unwrap().clone();
        // A first batch, so that the interval runs from now.
        head = log.buy(show, buyer, &["S-R2-0"]).await.position;
        assert!(orders.wait_for(head, WAIT).await);
        for seat in ["S-R2-1", "S-R2-2"] {
            head = log.buy(show, buyer, &[seat]).await.position;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let batches = counting.batches.load(Ordering::SeqCst);
            assert!(!applied(&projections, head), "{}", env.backend);
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(counting.batches.load(Ordering::SeqCst), batches);
            let asked = std::time::Instant::now();
            assert!(orders.wait_for(head, WAIT).await);
            assert!(
                asked.elapsed() < Duration::from_secs(2),
                "{:?} on {}",
                asked.elapsed(),
                env.backend
            );
        }
        assert_eq!(orders_and_tickets(&env).await, (11, 11), "{}", env.backend);
        projections.shutdown().await;
        env.cleanup().await;
    }
}
