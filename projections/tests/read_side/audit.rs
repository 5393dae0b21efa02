//! The audit log's sentences, which the database writes (ADR 0022): every event type
//! against a sentence made here in Rust from the decoded event, on both backends, live and
//! rebuilt; and an event without a sentence stopping the projection at its position.

use std::collections::BTreeSet;
use std::sync::Arc;

use boxoffice_domain::pool::PoolEvent;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::seat::{ReleaseReason, SeatEvent};
use boxoffice_domain::show::ShowEvent;
use boxoffice_domain::waitlist::WaitlistEvent;
use boxoffice_domain::{
    DomainEvent, EntryId, OrderId, PaymentId, ReservationId, ShowId, TicketId, UserId,
};
use boxoffice_projections::db::{self, Tx};
use boxoffice_projections::{
    AuditLogProjection, Projection, ProjectionError, Projections, compare_with_replay,
    rebuild_projection,
};
use boxoffice_store::{
    AppendBatch, EventMetadata, NewEvent, PendingEvent, RecordedEvent, StreamExpectation,
};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use crate::support::*;

/// Timestamps whose fractions print with 0, 3, 6 and 9 digits.
fn instants() -> [DateTime<Utc>; 4] {
    let base = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 58).unwrap();
    [
        base,
        base + chrono::Duration::milliseconds(120),
        base + chrono::Duration::microseconds(123_450),
        base + chrono::Duration::nanoseconds(123_456_789),
    ]
}

/// At least one event of every type the domain has, with the values that are easy to get
/// wrong in SQL: quotes, apostrophes and other scripts in names, amounts below one unit
/// and negative, seats listed out of order, absent and null options.
fn every_type() -> Vec<DomainEvent> {
    let [t0, t1, t2, t3] = instants();
    let rsv = ReservationId(new_id());
    let ga_rsv = ReservationId(new_id());
    let entry = EntryId(new_id());
    let user = UserId(new_id());
    let pay = PaymentId(new_id());
    let order = OrderId(new_id());
    let tickets: Vec<Value> = ["S-R0-10", "S-R0-2"]
        .iter()
        .map(|seat| json!({"ticket_id": TicketId(new_id()), "seat": seat, "code": "c"}))
        .collect();
    vec![
        event("ShowRescheduled", json!({"starts_at": t3})),
        event("ShowRenamed", json!({"name": "L'Été \"Gala\" — 東京 ✓"})),
        event(
            "SalesWindowChanged",
            json!({"sales_open_at": t1, "sales_close_at": null}),
        ),
        event("SalesWindowChanged", json!({"sales_open_at": null})),
        event("SalesWindowChanged", json!({"sales_open_at": t0, "sales_close_at": t2})),
        event("TierPriceChanged", json!({"tier_id": "A", "price": 5})),
        event("TierPriceChanged", json!({"tier_id": "B", "price": -123_405})),
        event(
            "ReservationPlaced",
            json!({
                "reservation_id": rsv, "user_id": user, "seats": ["S-R0-10", "S-R0-2", "S-R1-1"],
                "quantity": 3, "placed_at": t0, "expires_at": t1, "total": 16_000,
                "currency": "EUR", "origin": "direct",
            }),
        ),
        event(
            "SeatHeld",
            json!({"seat_id": "S-R0-10", "reservation_id": rsv, "until": t0}),
        ),
        event(
            "SeatHeld",
            json!({"seat_id": "S-R0-2", "reservation_id": rsv, "until": t2}),
        ),
        event(
            "PaymentStarted",
            json!({"reservation_id": rsv, "payment_id": pay, "deadline": t1}),
        ),
        event(
            "PaymentCaptured",
            json!({"reservation_id": rsv, "payment_id": pay, "amount": 16_000}),
        ),
        event(
            "TicketsIssued",
            json!({"reservation_id": rsv, "order_id": order, "tickets": tickets}),
        ),
        event(
            "SeatSold",
            json!({"seat_id": "S-R0-10", "reservation_id": rsv, "order_id": order}),
        ),
        event(
            "RefundIssued",
            json!({"reservation_id": rsv, "order_id": order, "amount": 100}),
        ),
        event(
            "SeatReleased",
            json!({"seat_id": "S-R1-1", "reservation_id": rsv, "reason": "refunded"}),
        ),
        event(
            "SeatBlocked",
            json!({"seat_id": "S-R1-5", "reason": "the owner's guest"}),
        ),
        event("SeatUnblocked", json!({"seat_id": "S-R1-5"})),
        event(
            "ReservationPlaced",
            json!({
                "reservation_id": ga_rsv, "user_id": user, "section": "GA", "quantity": 2,
                "placed_at": t0, "expires_at": t1, "total": 5_001, "currency": "CHF",
                "origin": "waitlist", "entry_id": entry,
            }),
        ),
        event(
            "PoolSeatsHeld",
            json!({"section": "GA", "reservation_id": ga_rsv, "quantity": 2}),
        ),
        event(
            "PoolSeatsSold",
            json!({"section": "GA", "reservation_id": ga_rsv, "quantity": 2}),
        ),
        event(
            "PoolSeatsReleased",
            json!({"section": "GA", "reservation_id": ga_rsv, "quantity": 1, "reason": "payment_timed_out"}),
        ),
        event(
            "PaymentFailed",
            json!({"reservation_id": ga_rsv, "payment_id": pay, "reason": "card_declined"}),
        ),
        event(
            "PaymentTimedOut",
            json!({"reservation_id": ga_rsv, "payment_id": pay}),
        ),
        event("HoldExpired", json!({"reservation_id": ga_rsv})),
        event(
            "ReservationCancelled",
            json!({"reservation_id": ga_rsv, "by": "support"}),
        ),
        event(
            "WaitlistJoined",
            json!({"entry_id": entry, "user_id": user, "quantity": 2, "section": "GA"}),
        ),
        event(
            "WaitlistOffered",
            json!({"entry_id": entry, "reservation_id": ga_rsv, "section": "GA", "quantity": 2, "expires_at": t3}),
        ),
        event(
            "WaitlistOfferClaimed",
            json!({"entry_id": entry, "reservation_id": ga_rsv}),
        ),
        event(
            "WaitlistOfferExpired",
            json!({"entry_id": entry, "reservation_id": ga_rsv}),
        ),
        event("WaitlistLeft", json!({"entry_id": entry})),
        event(
            "ShowCancelled",
            json!({"reason": "the venue's roof; \"force majeure\""}),
        ),
    ]
    .into_iter()
    .chain(
        [
            "expired",
            "cancelled",
            "payment_failed",
            "payment_timed_out",
        ]
        .map(|reason| {
            event(
                "SeatReleased",
                json!({"seat_id": "S-R0-2", "reservation_id": rsv, "reason": reason}),
            )
        }),
    )
    .collect()
}

/// The audit log's rows as text, in log order.
async fn audit_rows(env: &Env) -> Vec<Vec<String>> {
    let rows = db::fetch_all(
        &env.pool,
        "SELECT CAST(position AS text) AS p, show_id, stream_id, CAST(version AS text) AS v,
                event_type, recorded_at, actor, correlation_id, summary
         FROM audit_log ORDER BY position",
        &[],
    )
    .await
    .expect("audit rows");
    rows.iter()
        .map(|r| {
            let text = |c: &str| r.text(c).unwrap();
            vec![
                text("p"),
                text("show_id"),
                text("stream_id"),
                text("v"),
                text("event_type"),
                r.time("recorded_at").unwrap().to_rfc3339(),
                text("actor"),
                text("correlation_id"),
                text("summary"),
            ]
        })
        .collect()
}

/// What the row of `event` must hold, from the stored event and its decoded payload.
fn expected_row(event: &RecordedEvent) -> Vec<String> {
    let decoded = DomainEvent::decode(&event.event_type, event.schema_version, &event.payload)
        .expect("the test's events decode");
    vec![
        event.position.to_string(),
        event.partition_key.clone(),
        event.stream_id.clone(),
        event.version.to_string(),
        event.event_type.clone(),
        event.recorded_at.to_rfc3339(),
        event.metadata.actor.clone(),
        event.metadata.correlation_id.to_string(),
        summary(&decoded),
    ]
}

#[tokio::test]
async fn every_event_type_gets_its_sentence_live_and_rebuilt() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        let show = show();
        // Batches of several sizes, so that live batches start and end anywhere.
        let events = every_type();
        for chunk in events.chunks(5) {
            log.append(show, chunk).await;
        }
        log.buy(ShowId(new_id()), UserId(new_id()), &["S-R0-1"])
            .await;
        let head = env.store.head_position().await.unwrap();
        let recorded = env.store.read_all(0, 1_000).await.unwrap();
        assert_eq!(recorded.len() as u64, head);
        let types: BTreeSet<&str> = recorded.iter().map(|e| e.event_type.as_str()).collect();
        let all: BTreeSet<&str> = ShowEvent::TYPES
            .iter()
            .chain(&SeatEvent::TYPES)
            .chain(&PoolEvent::TYPES)
            .chain(&ReservationEvent::TYPES)
            .chain(&WaitlistEvent::TYPES)
            .copied()
            .collect();
        assert_eq!(types, all, "the test covers every event type");
        let expected: Vec<Vec<String>> = recorded.iter().map(expected_row).collect();

        // Live, in ranges of 7 positions.
        let running = Projections::start(
            Arc::clone(&env.store),
            env.pool.clone(),
            vec![Arc::new(AuditLogProjection)],
            fast_runtime(),
        );
        assert!(running.wait_for_all(head, WAIT).await);
        running.shutdown().await;
        let live = audit_rows(&env).await;
        for (row, want) in live.iter().zip(&expected) {
            assert_eq!(row, want, "{}", env.backend);
        }
        assert_eq!(live.len(), expected.len(), "{}", env.backend);

        // Rebuilt: ranges of 20 positions (slices of 1), two at once on PostgreSQL.
        let report = rebuild_projection(Arc::clone(&env.store), &env.pool, &AuditLogProjection, 1)
            .await
            .expect("rebuild");
        assert_eq!((report.events, report.applied), (head, head));
        assert_eq!(audit_rows(&env).await, expected, "{}", env.backend);

        // Replayed through `apply` (batches of decoded-then-unused events), as `boxctl
        // verify` compares: no drift.
        let drift = compare_with_replay(Arc::clone(&env.store), &env.pool, &AuditLogProjection, 5)
            .await
            .expect("compare");
        assert_eq!(
            (drift.position, drift.drifted()),
            (head, false),
            "{drift:?}"
        );
        env.cleanup().await;
    }
}

/// Appends one event as it is, unchecked, to a stream of its own; returns its position.
async fn append_raw(env: &Env, event_type: &str, schema_version: i32, payload: Value) -> u64 {
    let metadata = EventMetadata {
        event_id: new_id(),
        correlation_id: new_id(),
        causation_id: None,
        actor: "system:test".into(),
    };
    env.store
        .append(AppendBatch {
            partition_key: ShowId(new_id()).to_string(),
            streams: vec![StreamExpectation {
                stream_id: format!("seat-{}", new_id().simple()),
                expected_version: 0,
            }],
            events: vec![PendingEvent {
                stream: 0,
                event: NewEvent {
                    event_type: event_type.into(),
                    schema_version,
                    payload,
                    metadata,
                },
            }],
            recorded_at: Utc::now(),
        })
        .await
        .expect("append")
        .last_position
}

#[tokio::test]
async fn an_event_without_a_sentence_stops_the_audit_log_at_its_position() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        log.buy(show(), user(), &["S-R0-1"]).await;
        let good = env.store.head_position().await.unwrap();
        let rsv = ReservationId(new_id());
        let cases = [
            // A field missing.
            (
                "SeatHeld",
                1,
                json!({"seat_id": "S-R0-1", "reservation_id": rsv}),
            ),
            // A release reason the domain does not have.
            (
                "SeatReleased",
                1,
                json!({"seat_id": "S-R0-1", "reservation_id": rsv, "reason": "lost"}),
            ),
            // A schema version this code does not know.
            ("HoldExpired", 2, json!({"reservation_id": rsv})),
            // A type this code does not know.
            ("SeatTeleported", 1, json!({"seat_id": "S-R0-1"})),
        ];
        for (event_type, schema_version, payload) in cases {
            let bad = append_raw(&env, event_type, schema_version, payload).await;
            let mut tx = Tx::begin(&env.pool).await.unwrap();
            let failed = AuditLogProjection.apply_range(&mut tx, bad - 1, bad).await;
            match failed {
                Err(ProjectionError::Decode { position, reason }) => {
                    assert_eq!(position, bad, "{} {event_type}: {reason}", env.backend);
                    assert!(reason.contains(event_type), "{reason}");
                }
                other => panic!("{} {event_type}: {other:?}", env.backend),
            }
            // The transaction is still usable, and holds nothing of the failed range.
            assert_eq!(
                AuditLogProjection
                    .apply_range(&mut tx, 0, good)
                    .await
                    .unwrap(),
                good
            );
            let rows = tx
                .fetch_all("SELECT count(*) AS n FROM audit_log", &[])
                .await
                .unwrap();
            assert_eq!(rows[0].int("n").unwrap(), good as i64);
            tx.rollback().await.unwrap();
        }
        env.cleanup().await;
    }
}

/// Moves the log's next position `by` further: the positions skipped never hold an event,
/// as after a failed append on PostgreSQL.
async fn skip_positions(env: &Env, by: i64) {
    let head = env.store.head_position().await.unwrap() as i64;
    let sql = if env.backend == "postgres" {
        "SELECT setval(pg_get_serial_sequence('events', 'position'), $1)"
    } else {
        "UPDATE sqlite_sequence SET seq = $1 WHERE name = 'events'"
    };
    db::fetch_all(&env.pool, sql, &[(head + by).into()])
        .await
        .expect("skip positions");
}

#[tokio::test]
async fn a_checkpoint_between_events_is_compared_and_resumed_from() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        let show = show();
        log.buy(show, user(), &["S-R0-1"]).await;
        let before_hole = env.store.head_position().await.unwrap();
        skip_positions(&env, 10).await;
        log.buy(show, user(), &["S-R0-2"]).await;
        let head = env.store.head_position().await.unwrap();
        assert!(
            head > before_hole + 10,
            "{}: the positions were skipped",
            env.backend
        );
        let count = env.store.read_all(0, 1_000).await.unwrap().len() as u64;
        assert_eq!(count, head - 10);

        // A runner that stopped after the range ending inside the hole: the events before
        // it applied, the checkpoint on a position without an event.
        let run = || async {
            let running = Projections::start(
                Arc::clone(&env.store),
                env.pool.clone(),
                vec![Arc::new(AuditLogProjection)],
                fast_runtime(),
            );
            assert!(running.wait_for_all(head, WAIT).await);
            running.shutdown().await;
        };
        run().await;
        let stopped_at = before_hole + 5;
        db::execute(
            &env.pool,
            "DELETE FROM audit_log WHERE position > $1",
            &[(stopped_at as i64).into()],
        )
        .await
        .unwrap();
        db::execute(
            &env.pool,
            "UPDATE projection_checkpoints SET position = $1 WHERE name = 'audit_log'",
            &[(stopped_at as i64).into()],
        )
        .await
        .unwrap();
        let drift = compare_with_replay(Arc::clone(&env.store), &env.pool, &AuditLogProjection, 3)
            .await
            .expect("compare at a checkpoint between events");
        assert_eq!(
            (drift.position, drift.drifted()),
            (stopped_at, false),
            "{}: {drift:?}",
            env.backend
        );

        // Resumed, it applies the rest once.
        run().await;
        assert_eq!(
            env.count("SELECT count(*) AS n FROM audit_log", &[]).await,
            count as i64
        );
        let drift = compare_with_replay(Arc::clone(&env.store), &env.pool, &AuditLogProjection, 3)
            .await
            .expect("compare at the head");
        assert_eq!(
            (drift.position, drift.drifted()),
            (head, false),
            "{drift:?}"
        );
        env.cleanup().await;
    }
}

/// The audit log, but its first range waits (inside its transaction, after writing the
/// copy) until the test lets it go.
struct HeldAuditLog {
    in_range: Arc<tokio::sync::Notify>,
    go: Arc<tokio::sync::Notify>,
    held: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Projection for HeldAuditLog {
    fn name(&self) -> &'static str {
        "audit_log_held"
    }
    fn version(&self) -> u32 {
        1
    }
    fn tables(&self) -> &'static [&'static str] {
        AuditLogProjection.tables()
    }
    fn applies_in_sql(&self) -> bool {
        true
    }
    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        AuditLogProjection.apply(tx, events).await
    }
    async fn apply_range(
        &self,
        tx: &mut Tx,
        after: u64,
        until: u64,
    ) -> Result<u64, ProjectionError> {
        let written = AuditLogProjection.apply_range(tx, after, until).await?;
        if !self.held.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.in_range.notify_one();
            self.go.notified().await;
        }
        Ok(written)
    }
}

#[tokio::test]
async fn a_rebuilds_ranges_let_appends_through_on_sqlite() {
    for env in backends().await {
        let mut log = Log::new(&env.store);
        let show = show();
        log.buy(show, user(), &["S-R0-1"]).await;
        if env.backend != "sqlite" {
            // PostgreSQL has no database-wide write lock to hold.
            env.cleanup().await;
            continue;
        }
        let projection = Arc::new(HeldAuditLog {
            in_range: Arc::new(tokio::sync::Notify::new()),
            go: Arc::new(tokio::sync::Notify::new()),
            held: false.into(),
        });
        let rebuild = tokio::spawn({
            let (store, pool, projection) = (
                Arc::clone(&env.store),
                env.pool.clone(),
                Arc::clone(&projection),
            );
            async move { rebuild_projection(store, &pool, projection.as_ref(), 1).await }
        });
        // The rebuild's first range has written the copy and keeps its transaction open.
        tokio::time::timeout(WAIT, projection.in_range.notified())
            .await
            .expect("the rebuild reaches its first range");
        // An append meanwhile goes through instead of waiting for that transaction.
        let appended = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            log.buy(show, user(), &["S-R0-2"]),
        )
        .await;
        assert!(
            appended.is_ok(),
            "the append waited for the rebuild's range"
        );
        projection.go.notify_one();
        let report = rebuild.await.unwrap().expect("rebuild");
        assert_eq!(report.position, env.store.head_position().await.unwrap());
        env.cleanup().await;
    }
}

// The sentences as the Rust code made them before the database did (ADR 0022): the
// reference the SQL must match, from the decoded event.

fn reason_text(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::Expired => "the hold expired",
        ReleaseReason::Cancelled => "the hold was cancelled",
        ReleaseReason::PaymentFailed => "the payment failed",
        ReleaseReason::PaymentTimedOut => "the payment timed out",
        ReleaseReason::Refunded => "the order was refunded",
    }
}

/// One sentence saying what an event means, for people reading the audit log.
fn summary(event: &DomainEvent) -> String {
    match event {
        DomainEvent::Show(e) => match e {
            ShowEvent::ShowScheduled { definition, .. } => {
                let seats: u32 = definition.sections.iter().map(|s| s.capacity()).sum();
                format!(
                    "Show \"{}\" scheduled for {} with {} sections and {seats} places.",
                    definition.name,
                    definition.starts_at.to_rfc3339(),
                    definition.sections.len()
                )
            }
            ShowEvent::ShowRescheduled { starts_at } => {
                format!("Show moved to {}.", starts_at.to_rfc3339())
            }
            ShowEvent::ShowRenamed { name } => format!("Show renamed to \"{name}\"."),
            ShowEvent::SalesWindowChanged {
                sales_open_at,
                sales_close_at,
            } => format!(
                "Sales window set to {} – {}.",
                sales_open_at.map_or("open".into(), |t| t.to_rfc3339()),
                sales_close_at.map_or("open".into(), |t| t.to_rfc3339())
            ),
            ShowEvent::TierPriceChanged { tier_id, price } => {
                format!("Price of tier {tier_id} set to {price}.")
            }
            ShowEvent::ShowCancelled { reason } => format!("Show cancelled: {reason}."),
        },
        DomainEvent::Seat(e) => match e {
            SeatEvent::SeatHeld {
                seat_id,
                reservation_id,
                until,
            } => format!(
                "Seat {seat_id} held for reservation {reservation_id} until {}.",
                until.to_rfc3339()
            ),
            SeatEvent::SeatReleased {
                seat_id,
                reservation_id,
                reason,
            } => format!(
                "Seat {seat_id} released from reservation {reservation_id}: {}.",
                reason_text(*reason)
            ),
            SeatEvent::SeatSold {
                seat_id, order_id, ..
            } => format!("Seat {seat_id} sold in order {order_id}."),
            SeatEvent::SeatBlocked { seat_id, reason } => {
                format!("Seat {seat_id} blocked: {reason}.")
            }
            SeatEvent::SeatUnblocked { seat_id } => format!("Seat {seat_id} unblocked."),
        },
        DomainEvent::Pool(e) => match e {
            PoolEvent::PoolSeatsHeld {
                section,
                reservation_id,
                quantity,
            } => format!("{quantity} places in {section} held for reservation {reservation_id}."),
            PoolEvent::PoolSeatsReleased {
                section,
                reservation_id,
                quantity,
                reason,
            } => format!(
                "{quantity} places in {section} released from reservation {reservation_id}: {}.",
                reason_text(*reason)
            ),
            PoolEvent::PoolSeatsSold {
                section,
                reservation_id,
                quantity,
            } => format!("{quantity} places in {section} sold to reservation {reservation_id}."),
        },
        DomainEvent::Reservation(e) => match e {
            ReservationEvent::ReservationPlaced {
                reservation_id,
                user_id,
                seats,
                section,
                quantity,
                total,
                currency,
                ..
            } => {
                let what = match section {
                    Some(section) => format!("{quantity} places in {section}"),
                    None => format!("seats {}", seats.join(", ")),
                };
                format!(
                    "User {user_id} placed reservation {reservation_id} for {what}, {total} {currency}."
                )
            }
            ReservationEvent::PaymentStarted {
                reservation_id,
                payment_id,
                ..
            } => format!("Payment {payment_id} started for reservation {reservation_id}."),
            ReservationEvent::PaymentCaptured {
                reservation_id,
                amount,
                ..
            } => format!("Payment of {amount} captured for reservation {reservation_id}."),
            ReservationEvent::PaymentFailed {
                reservation_id,
                reason,
                ..
            } => format!("Payment for reservation {reservation_id} failed: {reason}."),
            ReservationEvent::PaymentTimedOut { reservation_id, .. } => {
                format!("Payment for reservation {reservation_id} timed out and was voided.")
            }
            ReservationEvent::TicketsIssued {
                reservation_id,
                order_id,
                tickets,
            } => format!(
                "{} tickets issued in order {order_id} for reservation {reservation_id}.",
                tickets.len()
            ),
            ReservationEvent::HoldExpired { reservation_id } => {
                format!("Reservation {reservation_id} expired unpaid.")
            }
            ReservationEvent::ReservationCancelled { reservation_id, by } => {
                format!("Reservation {reservation_id} cancelled by {by}.")
            }
            ReservationEvent::RefundIssued {
                reservation_id,
                order_id,
                amount,
            } => format!(
                "Refund of {amount} issued for order {order_id} (reservation {reservation_id})."
            ),
        },
        DomainEvent::Waitlist(e) => match e {
            WaitlistEvent::WaitlistJoined {
                entry_id,
                user_id,
                quantity,
                ..
            } => format!("User {user_id} joined the waiting list for {quantity} ({entry_id})."),
            WaitlistEvent::WaitlistOffered {
                entry_id,
                reservation_id,
                quantity,
                ..
            } => format!(
                "Waiting-list entry {entry_id} offered {quantity} places as reservation {reservation_id}."
            ),
            WaitlistEvent::WaitlistOfferClaimed { entry_id, .. } => {
                format!("Waiting-list entry {entry_id} claimed its offer.")
            }
            WaitlistEvent::WaitlistOfferExpired { entry_id, .. } => {
                format!("Offer to waiting-list entry {entry_id} expired.")
            }
            WaitlistEvent::WaitlistLeft { entry_id } => {
                format!("Waiting-list entry {entry_id} left the list.")
            }
        },
    }
}
