//! Fresh databases on both backends, domain events to append, and bounded waits.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_domain::event::SCHEMA_VERSION_CURRENT;
use boxoffice_domain::{
    DomainEvent, EntryId, OrderId, PaymentId, ReservationId, ShowId, SystemClock, TicketId, UserId,
};
use boxoffice_projections::db::{self, Param};
use boxoffice_projections::{
    DeliveryConfig, NotifyConfig, ReadSide, ReadSideConfig, RuntimeConfig,
};
use boxoffice_store::tables::TablePool;
use boxoffice_store::users::{UserDirectory, UserRecord};
use boxoffice_store::{
    AppendBatch, EventMetadata, EventStore, NewEvent, PendingEvent, StreamExpectation,
};
use chrono::Utc;
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

/// Longest any test waits for a condition.
pub const WAIT: Duration = Duration::from_secs(20);

/// One backend's fresh database, opened as the server opens it: the event store (which
/// runs the migrations) and a pool for the side tables.
pub struct Env {
    pub backend: &'static str,
    pub store: Arc<dyn EventStore>,
    pub pool: TablePool,
    /// A scratch directory of this test (the SQLite file lives here too).
    pub dir: PathBuf,
    postgres: Option<(String, String)>,
}

/// A fresh SQLite database, and a fresh PostgreSQL one if `DATABASE_URL` is set.
pub async fn backends() -> Vec<Env> {
    // Logs of the runners and the worker, shown for failing tests (`RUST_LOG` filters).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "boxoffice_projections=info".into()),
        )
        .with_test_writer()
        .try_init();
    let mut envs = Vec::new();
    let dir = std::env::temp_dir().join(format!("boxoffice-proj-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("events.db").display());
    envs.push(Env::open("sqlite", url, dir, None).await);
    match std::env::var("DATABASE_URL") {
        Ok(admin) if admin.starts_with("postgres") => {
            let name = format!("boxoffice_test_{}", Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to DATABASE_URL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            conn.close().await.ok();
            let (prefix, _) = admin.rsplit_once('/').expect("a database URL has a path");
            let url = format!("{prefix}/{name}");
            let dir =
                std::env::temp_dir().join(format!("boxoffice-proj-{}", Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            envs.push(Env::open("postgres", url, dir, Some((admin, name))).await);
        }
        _ => println!("skipped: PostgreSQL (DATABASE_URL not set); running on SQLite only"),
    }
    envs
}

impl Env {
    async fn open(
        backend: &'static str,
        url: String,
        dir: PathBuf,
        postgres: Option<(String, String)>,
    ) -> Self {
        let store =
            boxoffice_store::connect(&url, Some(boxoffice_store::chain::ChainKey::generate()))
                .await
                .expect("open store");
        let pool = TablePool::connect(&url).await.expect("open side tables");
        Env {
            backend,
            store,
            pool,
            dir,
            postgres,
        }
    }

    /// Removes the test's database and files (called when a test passed).
    pub async fn cleanup(self) {
        let Env {
            store,
            pool,
            dir,
            postgres,
            ..
        } = self;
        match pool {
            TablePool::Postgres(p) => p.close().await,
            TablePool::Sqlite(p) => p.close().await,
        }
        drop(store);
        if let Some((admin, name)) = postgres {
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to DATABASE_URL");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .expect("drop test database");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    /// Takes the PostgreSQL database down (no connections allowed, every open one
    /// ended) or brings it back. `false` on SQLite, which has no server to lose.
    pub async fn postgres_outage(&self, down: bool) -> bool {
        let Some((admin, name)) = &self.postgres else {
            return false;
        };
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS {}",
            !down
        ))
        .execute(&mut conn)
        .await
        .expect("switch connections");
        if down {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(name)
            .execute(&mut conn)
            .await
            .expect("end connections");
        }
        conn.close().await.ok();
        true
    }

    /// A read side with short timings, so tests do not wait on production intervals.
    pub fn start(&self, notify: NotifyConfig) -> ReadSide {
        ReadSide::start(
            Arc::clone(&self.store),
            self.pool.clone(),
            ReadSideConfig {
                runtime: fast_runtime(),
                notify,
                delivery: fast_delivery(),
            },
            Arc::new(SystemClock),
        )
        .expect("read side starts")
    }

    pub async fn count(&self, sql: &str, params: &[Param]) -> i64 {
        let rows = db::fetch_all(&self.pool, sql, params).await.expect("count");
        rows[0].int("n").expect("a count")
    }

    /// Registers a user in the `users` table (the email channel looks addresses up there).
    pub async fn add_user(&self, user: UserId) -> String {
        let email = format!("{}@example.test", user.uuid().simple());
        UserDirectory::new(self.pool.clone())
            .create(&UserRecord {
                user_id: user.to_string(),
                email: email.clone(),
                password_hash: "not-a-hash".into(),
                display_name: None,
                roles: vec!["buyer".into()],
                created_at: Utc::now(),
            })
            .await
            .expect("create user");
        email
    }
}

pub fn fast_runtime() -> RuntimeConfig {
    RuntimeConfig {
        batch_events_max: 7,
        poll_interval_ms: 500,
        retry_backoff_ms_min: 10,
        retry_backoff_ms_max: 100,
        batch_interval_ms_min: 0,
    }
}

pub fn fast_delivery() -> DeliveryConfig {
    DeliveryConfig {
        poll_interval_ms: 200,
        retry_backoff_ms_min: 50,
        retry_backoff_ms_max: 200,
        attempts_max: 50,
        lease_ms: 5_000,
        webhook_timeout_ms: 2_000,
        ..DeliveryConfig::default()
    }
}

/// Polls `check` until it yields a value, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A domain event from its stored form, so tests build only valid events (and do not
/// break when a payload gains an optional field).
pub fn event(event_type: &str, payload: Value) -> DomainEvent {
    DomainEvent::decode(event_type, SCHEMA_VERSION_CURRENT, &payload)
        .unwrap_or_else(|e| panic!("test event {event_type}: {e}"))
}

pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

pub fn placed(
    rsv: ReservationId,
    user: UserId,
    seats: &[&str],
    total: i64,
    entry: Option<EntryId>,
) -> DomainEvent {
    let now = Utc::now();
    let mut payload = json!({
        "reservation_id": rsv,
        "user_id": user,
        "seats": seats,
        "quantity": seats.len(),
        "placed_at": now,
        "expires_at": now + chrono::Duration::minutes(5),
        "total": total,
        "currency": "EUR",
        "origin": if entry.is_some() { "waitlist" } else { "direct" },
    });
    if let Some(entry) = entry {
        payload["entry_id"] = json!(entry);
    }
    event("ReservationPlaced", payload)
}

pub fn seat_held(seat: &str, rsv: ReservationId) -> DomainEvent {
    event(
        "SeatHeld",
        json!({"seat_id": seat, "reservation_id": rsv, "until": Utc::now()}),
    )
}

pub fn payment_started(rsv: ReservationId, pay: PaymentId) -> DomainEvent {
    event(
        "PaymentStarted",
        json!({"reservation_id": rsv, "payment_id": pay, "deadline": Utc::now() + chrono::Duration::minutes(2)}),
    )
}

pub fn payment_captured(rsv: ReservationId, pay: PaymentId, amount: i64) -> DomainEvent {
    event(
        "PaymentCaptured",
        json!({"reservation_id": rsv, "payment_id": pay, "amount": amount}),
    )
}

pub fn payment_failed(rsv: ReservationId, pay: PaymentId) -> DomainEvent {
    event(
        "PaymentFailed",
        json!({"reservation_id": rsv, "payment_id": pay, "reason": "card_declined"}),
    )
}

pub fn payment_timed_out(rsv: ReservationId, pay: PaymentId) -> DomainEvent {
    event(
        "PaymentTimedOut",
        json!({"reservation_id": rsv, "payment_id": pay}),
    )
}

pub fn tickets_issued(rsv: ReservationId, order: OrderId, seats: &[&str]) -> DomainEvent {
    let tickets: Vec<Value> = seats
        .iter()
        .map(|seat| {
            json!({
                "ticket_id": TicketId(new_id()),
                "seat": seat,
                "code": format!("code-{}", new_id().simple()),
            })
        })
        .collect();
    event(
        "TicketsIssued",
        json!({"reservation_id": rsv, "order_id": order, "tickets": tickets}),
    )
}

pub fn refund_issued(rsv: ReservationId, order: OrderId, amount: i64) -> DomainEvent {
    event(
        "RefundIssued",
        json!({"reservation_id": rsv, "order_id": order, "amount": amount}),
    )
}

pub fn hold_expired(rsv: ReservationId) -> DomainEvent {
    event("HoldExpired", json!({"reservation_id": rsv}))
}

pub fn waitlist_joined(entry: EntryId, user: UserId, quantity: u32) -> DomainEvent {
    event(
        "WaitlistJoined",
        json!({"entry_id": entry, "user_id": user, "quantity": quantity}),
    )
}

pub fn waitlist_offered(entry: EntryId, rsv: ReservationId, seats: &[&str]) -> DomainEvent {
    event(
        "WaitlistOffered",
        json!({
            "entry_id": entry,
            "reservation_id": rsv,
            "seats": seats,
            "quantity": seats.len(),
            "expires_at": Utc::now() + chrono::Duration::minutes(10),
        }),
    )
}

/// Appends domain events as the engine would: one atomic batch per call, each stream
/// continuing from the version this log has seen.
pub struct Log {
    store: Arc<dyn EventStore>,
    versions: HashMap<String, u64>,
    scheduled: std::collections::HashSet<ShowId>,
}

/// The layout every test show gets unless a test schedules its own: section `S` with rows
/// `R0` (tier A, 60.00) and `R1` (tier B, 40.00) of 200 seats, and a GA section `GA` of 50
/// places (tier C, 25.00).
pub fn show_scheduled(show: ShowId) -> DomainEvent {
    event(
        "ShowScheduled",
        json!({
            "show_id": show,
            "organizer_id": UserId(new_id()),
            "name": "Test show",
            "venue": {"name": "Hall", "city": "Lyon", "country": "FR", "timezone": "Europe/Paris"},
            "starts_at": Utc::now() + chrono::Duration::days(30),
            "currency": "EUR",
            "sales_open_at": null,
            "sales_close_at": null,
            "limits": {"max_tickets_per_user": 8, "hold_ttl_seconds": 300,
                       "payment_timeout_seconds": 120, "waitlist_claim_seconds": 600},
            "price_tiers": [
                {"id": "A", "name": "Front", "price": 6000},
                {"id": "B", "name": "Back", "price": 4000},
                {"id": "C", "name": "Floor", "price": 2500}
            ],
            "sections": [
                {"id": "S", "name": "Stalls", "kind": "seated", "rows": [
                    {"row": "R0", "seats": 200, "tier": "A"},
                    {"row": "R1", "seats": 200, "tier": "B"}
                ]},
                {"id": "GA", "name": "Floor", "kind": "general_admission", "capacity": 50, "tier": "C"}
            ]
        }),
    )
}

impl Log {
    pub fn new(store: &Arc<dyn EventStore>) -> Self {
        Self {
            store: Arc::clone(store),
            versions: HashMap::new(),
            scheduled: std::collections::HashSet::new(),
        }
    }

    /// Appends `events` of `show` in one transaction; returns the last position.
    /// A show is scheduled (with [`show_scheduled`]'s layout) in the first batch appended
    /// to it, as the engine would have done before any hold.
    pub async fn append(&mut self, show: ShowId, events: &[DomainEvent]) -> u64 {
        let mut with_schedule = Vec::new();
        let events = if self.scheduled.insert(show) {
            with_schedule.push(show_scheduled(show));
            with_schedule.extend_from_slice(events);
            &with_schedule[..]
        } else {
            events
        };
        let mut streams: Vec<StreamExpectation> = Vec::new();
        let mut pending = Vec::with_capacity(events.len());
        for domain_event in events {
            let stream_id = domain_event.stream_id(show);
            let index = match streams.iter().position(|s| s.stream_id == stream_id) {
                Some(index) => index,
                None => {
                    streams.push(StreamExpectation {
                        expected_version: self.versions.get(&stream_id).copied().unwrap_or(0),
                        stream_id,
                    });
                    streams.len() - 1
                }
            };
            let (event_type, schema_version, payload) = domain_event.encode();
            pending.push(PendingEvent {
                stream: index,
                event: NewEvent {
                    event_type: event_type.to_owned(),
                    schema_version,
                    payload,
                    metadata: EventMetadata {
                        event_id: new_id(),
                        correlation_id: new_id(),
                        causation_id: None,
                        actor: "system:test".into(),
                    },
                },
            });
        }
        for p in &pending {
            *self
                .versions
                .entry(streams[p.stream].stream_id.clone())
                .or_default() += 1;
        }
        let result = self
            .store
            .append(AppendBatch {
                partition_key: show.to_string(),
                streams,
                events: pending,
                recorded_at: Utc::now(),
            })
            .await
            .expect("append");
        result.last_position
    }

    /// A whole purchase as the engine and the payment saga write it: the hold, the
    /// payment, the capture and the tickets, in four appends.
    pub async fn buy(&mut self, show: ShowId, user: UserId, seats: &[&str]) -> Purchase {
        let rsv = ReservationId(new_id());
        let pay = PaymentId(new_id());
        let order = OrderId(new_id());
        let total = 6_000 * seats.len() as i64;
        let mut hold = vec![placed(rsv, user, seats, total, None)];
        hold.extend(seats.iter().map(|s| seat_held(s, rsv)));
        self.append(show, &hold).await;
        self.append(show, &[payment_started(rsv, pay)]).await;
        self.append(show, &[payment_captured(rsv, pay, total)])
            .await;
        let position = self
            .append(show, &[tickets_issued(rsv, order, seats)])
            .await;
        Purchase {
            reservation: rsv,
            order,
            total,
            position,
        }
    }
}

pub struct Purchase {
    pub reservation: ReservationId,
    pub order: OrderId,
    pub total: i64,
    /// The position of its TicketsIssued event.
    pub position: u64,
}

pub fn show() -> ShowId {
    ShowId(new_id())
}

pub fn user() -> UserId {
    UserId(new_id())
}
