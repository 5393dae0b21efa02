//! Measures how fast each projection rebuilds from the log, in events per second.
//!
//! ```text
//! cargo run --release -p boxoffice-projections --example rebuild_speed -- sqlite:///tmp/b.db 1000000
//! cargo run --release -p boxoffice-projections --example rebuild_speed -- postgres://postgres@127.0.0.1:5432/bench 1000000
//! ```
//!
//! The database must be empty (the store creates the tables), or hold the log of an
//! earlier run, which is then reused as it is. `REBUILD_ONLY=seat_map,orders` rebuilds
//! only the projections named; `CATCH_UP=1` measures the live runner catching up from an
//! empty read model instead of a rebuild. The log is a realistic
//! mix over 50 shows: every cycle holds a seat, pays, issues the ticket and sells the
//! seat; one in four is refunded and releases the seat again, one in four other holds
//! expires instead. Events are appended 200-ish at a time (group commit), then every
//! projection is rebuilt from position 0 with batches of 5,000 events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_domain::event::SCHEMA_VERSION_CURRENT;
use boxoffice_domain::{DomainEvent, OrderId, PaymentId, ReservationId, ShowId, TicketId, UserId};
use boxoffice_projections::{
    NotifyConfig, Projections, RuntimeConfig, all_projections, db, rebuild_projection,
};
use boxoffice_store::tables::TablePool;
use boxoffice_store::{AppendBatch, EventMetadata, NewEvent, PendingEvent, StreamExpectation};
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

/// The allocator of the server and of `boxctl`, which run the rebuilds measured here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHOWS: usize = 50;
const SEATS_PER_ROW: u32 = 500;
const CYCLES_PER_BATCH: usize = 30;
const _: () = assert!(CYCLES_PER_BATCH as u32 <= SEATS_PER_ROW);

fn ev(event_type: &str, payload: serde_json::Value) -> DomainEvent {
    DomainEvent::decode(event_type, SCHEMA_VERSION_CURRENT, &payload).expect("valid event")
}

fn scheduled(show: ShowId) -> DomainEvent {
    ev(
        "ShowScheduled",
        json!({
            "show_id": show, "organizer_id": UserId(Uuid::now_v7()), "name": "Bench show",
            "venue": {"name": "Hall", "city": "Lyon", "country": "FR", "timezone": "Europe/Paris"},
            "starts_at": Utc::now(), "currency": "EUR", "sales_open_at": null, "sales_close_at": null,
            "limits": {"max_tickets_per_user": 8, "hold_ttl_seconds": 300,
                       "payment_timeout_seconds": 120, "waitlist_claim_seconds": 600},
            "price_tiers": [{"id": "A", "name": "Front", "price": 6000}],
            "sections": [{"id": "S", "name": "Stalls", "kind": "seated",
                          "rows": [{"row": "R0", "seats": SEATS_PER_ROW, "tier": "A"}]}]
        }),
    )
}

/// One seat's cycle: what a hold, a purchase and maybe a refund or an expiry write.
fn cycle(seat: &str, n: u64) -> Vec<DomainEvent> {
    let (rsv, user, pay, order) = (
        ReservationId(Uuid::now_v7()),
        UserId(Uuid::now_v7()),
        PaymentId(Uuid::now_v7()),
        OrderId(Uuid::now_v7()),
    );
    let now = Utc::now();
    let mut events = vec![
        ev(
            "ReservationPlaced",
            json!({"reservation_id": rsv, "user_id": user, "seats": [seat], "quantity": 1,
            "placed_at": now, "expires_at": now, "total": 6000, "currency": "EUR", "origin": "direct"}),
        ),
        ev(
            "SeatHeld",
            json!({"seat_id": seat, "reservation_id": rsv, "until": now}),
        ),
    ];
    if n % 4 == 3 {
        events.push(ev("HoldExpired", json!({"reservation_id": rsv})));
        events.push(ev(
            "SeatReleased",
            json!({"seat_id": seat, "reservation_id": rsv, "reason": "expired"}),
        ));
        return events;
    }
    events.extend([
        ev(
            "PaymentStarted",
            json!({"reservation_id": rsv, "payment_id": pay, "deadline": now}),
        ),
        ev(
            "PaymentCaptured",
            json!({"reservation_id": rsv, "payment_id": pay, "amount": 6000}),
        ),
        ev(
            "TicketsIssued",
            json!({"reservation_id": rsv, "order_id": order,
            "tickets": [{"ticket_id": TicketId(Uuid::now_v7()), "seat": seat, "code": "c"}]}),
        ),
        ev(
            "SeatSold",
            json!({"seat_id": seat, "reservation_id": rsv, "order_id": order}),
        ),
    ]);
    // Every seat is released again so the next cycle can use it: refunded or (above) expired.
    events.push(ev(
        "RefundIssued",
        json!({"reservation_id": rsv, "order_id": order, "amount": 6000}),
    ));
    events.push(ev(
        "SeatReleased",
        json!({"seat_id": seat, "reservation_id": rsv, "reason": "refunded"}),
    ));
    events
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: rebuild_speed DATABASE_URL [EVENTS]");
    let target: u64 = args
        .next()
        .map_or(1_000_000, |n| n.parse().expect("a count"));
    let store = boxoffice_store::connect(&url, Some(boxoffice_store::chain::ChainKey::generate()))
        .await
        .expect("open store");
    let pool = TablePool::connect(&url).await.expect("open side tables");

    let shows: Vec<ShowId> = (0..SHOWS).map(|_| ShowId(Uuid::now_v7())).collect();
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut appended = 0u64;
    let mut cycles: HashMap<ShowId, u64> = HashMap::new();
    let started = Instant::now();
    let mut first = true;
    // A log left by an earlier run is reused: only the rebuilds run again.
    let head = store.head_position().await.expect("head");
    if head > 0 {
        println!("reusing the {head} events already in the log");
        appended = target;
    }
    while appended < target {
        for &show in &shows {
            let mut events = Vec::new();
            if first {
                events.push(scheduled(show));
            }
            // Consecutive seats, so one batch never holds a seat twice.
            let c = cycles.entry(show).or_default();
            for _ in 0..CYCLES_PER_BATCH {
                let seat = format!("S-R0-{}", *c % u64::from(SEATS_PER_ROW) + 1);
                events.extend(cycle(&seat, *c));
                *c += 1;
            }
            let mut streams: Vec<StreamExpectation> = Vec::new();
            let mut pending = Vec::with_capacity(events.len());
            for e in &events {
                let stream_id = e.stream_id(show);
                let index = match streams.iter().position(|s| s.stream_id == stream_id) {
                    Some(i) => i,
                    None => {
                        streams.push(StreamExpectation {
                            expected_version: versions.get(&stream_id).copied().unwrap_or(0),
                            stream_id: stream_id.clone(),
                        });
                        streams.len() - 1
                    }
                };
                *versions.entry(stream_id).or_default() += 1;
                let (event_type, schema_version, payload) = e.encode();
                pending.push(PendingEvent {
                    stream: index,
                    event: NewEvent {
                        event_type: event_type.into(),
                        schema_version,
                        payload,
                        metadata: EventMetadata {
                            event_id: Uuid::now_v7(),
                            correlation_id: Uuid::now_v7(),
                            causation_id: None,
                            actor: "system:bench".into(),
                        },
                    },
                });
            }
            appended += pending.len() as u64;
            store
                .append(AppendBatch {
                    partition_key: show.to_string(),
                    streams,
                    events: pending,
                    recorded_at: Utc::now(),
                })
                .await
                .expect("append");
        }
        first = false;
    }
    println!(
        "appended {appended} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut total_seconds = 0.0;
    // REBUILD_ONLY=seat_map,orders rebuilds only those.
    let only: Option<Vec<String>> = std::env::var("REBUILD_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    // REBUILD_BATCH=10000: positions per slice (events per transaction at most).
    let batch: usize = std::env::var("REBUILD_BATCH")
        .map_or(5_000, |b| b.parse().expect("REBUILD_BATCH is a count"));
    // CATCH_UP=1: instead of rebuilding, measures the live runner catching up from 0 with
    // the server's settings (`RuntimeConfig::for_backend`).
    let catch_up = std::env::var("CATCH_UP").is_ok_and(|v| v == "1");
    for projection in all_projections(&NotifyConfig::default()) {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == projection.name()))
        {
            continue;
        }
        if let TablePool::Postgres(pg) = &pool {
            // Each earlier run's swap left the live tables twice their size (the old rows
            // dead, their space not given back), which slowed the next swap by half. Each
            // run starts from compact tables, as a projection that never was rebuilt has.
            for table in projection.tables() {
                sqlx::query(&format!("VACUUM (FULL, ANALYZE) {table}"))
                    .execute(pg)
                    .await
                    .expect("vacuum");
            }
            // And the WAL those writes made is flushed now rather than by a checkpoint in
            // the middle of the measurement (best effort: it needs a privileged role).
            if let Err(e) = sqlx::query("CHECKPOINT").execute(pg).await {
                eprintln!("no CHECKPOINT before the rebuild: {e}");
            }
        }
        if let TablePool::Sqlite(lite) = &pool {
            // The same for SQLite: the WAL the last run's swap grew (hundreds of MB, which
            // every read then searches) is checkpointed into the database and truncated,
            // as the server's background checkpoints do between rebuilds.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(lite)
                .await
                .expect("checkpoint");
        }
        if catch_up {
            // The live runner from an empty read model: its tables emptied and its
            // checkpoint put back to 0, as for a projection added to an existing log.
            for table in projection.tables() {
                db::execute(&pool, &format!("DELETE FROM {table}"), &[])
                    .await
                    .expect("empty the table");
            }
            db::execute(
                &pool,
                "UPDATE projection_checkpoints SET position = 0 WHERE name = $1",
                &[projection.name().into()],
            )
            .await
            .expect("reset the checkpoint");
            let head = store.head_position().await.expect("head");
            let started = Instant::now();
            let runner = Projections::start(
                Arc::clone(&store),
                pool.clone(),
                vec![Arc::clone(&projection)],
                RuntimeConfig::for_backend(db::backend_of(&pool)),
            );
            assert!(
                runner.wait_for_all(head, Duration::from_secs(600)).await,
                "caught up"
            );
            let elapsed = started.elapsed().as_secs_f64();
            runner.shutdown().await;
            total_seconds += elapsed;
            println!(
                "{:<14} {head:>9} events caught up live  {elapsed:>7.2} s  {:>9.0} events/s",
                projection.name(),
                head as f64 / elapsed
            );
            continue;
        }
        let report = rebuild_projection(Arc::clone(&store), &pool, projection.as_ref(), batch)
            .await
            .expect("rebuild");
        total_seconds += report.elapsed.as_secs_f64();
        println!(
            "{:<14} {:>9} events ({:>7} applied)  {:>7.2} s  {:>9.0} events/s  (of which the swap {:.2} s)",
            report.name,
            report.events,
            report.applied,
            report.elapsed.as_secs_f64(),
            report.events_per_second(),
            report.swap.as_secs_f64()
        );
    }
    println!(
        "all projections one after another: {:.1} s, {:.0} events/s",
        total_seconds,
        appended as f64 / total_seconds
    );
}
