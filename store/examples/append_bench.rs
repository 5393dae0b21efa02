//! Raw append throughput of both backends with the batches the write engine's group
//! commit produces: 1000 holds × 3 events (a new reservation stream plus two seat streams
//! that already exist), 3000 events per append.
//!
//! ```text
//! cargo run --release -p boxoffice-store --example append_bench -- [batches] [writers]
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release ...
//! ```
//!
//! SQLite runs on a fresh temporary file. PostgreSQL runs only when `DATABASE_URL` is
//! set, on a fresh database created next to the one named there and dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_store::{AppendBatch, EventMetadata, EventStore, NewEvent, StreamAppend};
use chrono::Utc;
use serde_json::json;
use sqlx::{Connection, Executor};
use uuid::Uuid;

const HOLDS_PER_BATCH: usize = 1000;
const SEATS_PER_HOLD: usize = 2;
const EVENTS_PER_BATCH: usize = HOLDS_PER_BATCH * (1 + SEATS_PER_HOLD);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let batches: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let writers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    anyhow::ensure!(
        batches >= writers && writers >= 1,
        "need batches >= writers >= 1"
    );

    let dir = std::env::temp_dir().join(format!(
        "boxoffice-append-bench-{}",
        Uuid::new_v4().simple()
    ));
    let sqlite_url = format!("sqlite://{}", dir.join("events.db").display());
    let result = run("sqlite", &sqlite_url, batches, writers).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;

    match std::env::var("DATABASE_URL") {
        Ok(admin_url) => {
            let name = format!("boxoffice_bench_{}", Uuid::new_v4().simple());
            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
            admin
                .execute(format!("CREATE DATABASE {name}").as_str())
                .await?;
            let result = run(
                "postgres",
                &with_database(&admin_url, &name),
                batches,
                writers,
            )
            .await;
            admin
                .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
                .await?;
            result?;
        }
        Err(_) => println!("postgres: skipped: DATABASE_URL not set"),
    }
    Ok(())
}

/// Appends `batches` batches from `writers` concurrent tasks, each writer on its own seats
/// so that no append conflicts, and prints events/s and per-append latency.
async fn run(backend: &str, url: &str, batches: usize, writers: usize) -> anyhow::Result<()> {
    let store =
        boxoffice_store::connect(url, Some(boxoffice_store::chain::ChainKey::generate())).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = Arc::clone(&store);
        let rounds = batches / writers + usize::from(writer < batches % writers);
        tasks.push(tokio::spawn(async move {
            write_rounds(store, writer, rounds).await
        }));
    }
    let mut latencies = Vec::with_capacity(batches);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let wall = started.elapsed();
    let appending: Duration = latencies.iter().sum();
    latencies.sort_unstable();
    let events = batches * EVENTS_PER_BATCH;
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "{backend}: {batches} appends × {EVENTS_PER_BATCH} events by {writers} writer(s): {:.0} events/s wall \
         ({:.0} events/s inside append per writer); append p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        events as f64 / wall.as_secs_f64(),
        events as f64 / appending.as_secs_f64(),
        percentile(0.5).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3,
        latencies.last().expect("at least one append").as_secs_f64() * 1e3,
    );
    anyhow::ensure!(
        store.head_position().await? >= events as u64,
        "not every event was appended"
    );
    Ok(())
}

/// One writer's appends; returns the time each `append` call took. Building a batch is
/// not timed: the engine builds it while the previous one commits.
async fn write_rounds(
    store: Arc<dyn EventStore>,
    writer: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let batch = hold_batch(writer, round as u64);
        let started = Instant::now();
        let result = store.append(batch).await?;
        latencies.push(started.elapsed());
        anyhow::ensure!(
            result.last_position - result.first_position + 1 == EVENTS_PER_BATCH as u64
        );
    }
    Ok(latencies)
}

/// 1000 holds of two seats each. The writer's 2000 seats are held once per round, so each
/// seat stream is at version `round` and gets one more event.
fn hold_batch(writer: usize, round: u64) -> AppendBatch {
    let show_id = format!("shw_{writer}");
    let correlation_id = Uuid::now_v7();
    let until = (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    let mut streams = Vec::with_capacity(EVENTS_PER_BATCH);
    for hold in 0..HOLDS_PER_BATCH {
        let reservation_id = format!("rsv_{}", Uuid::now_v7().simple());
        let seats: Vec<String> = (0..SEATS_PER_HOLD)
            .map(|s| format!("S{}", hold * SEATS_PER_HOLD + s))
            .collect();
        let placed = event(
            "ReservationPlaced",
            json!({
                "user_id": format!("usr_{hold}"),
                "seats": seats,
                "expires_at": until,
                "total": "120.00",
                "origin": "public",
                "idempotency_key": Uuid::now_v7().to_string(),
            }),
            correlation_id,
        );
        streams.push(StreamAppend {
            stream_id: format!("reservation-{reservation_id}"),
            expected_version: 0,
            events: vec![placed],
        });
        for seat in &seats {
            let held = event(
                "SeatHeld",
                json!({ "reservation_id": reservation_id, "until": until }),
                correlation_id,
            );
            streams.push(StreamAppend {
                stream_id: format!("seat-{show_id}-{seat}"),
                expected_version: round,
                events: vec![held],
            });
        }
    }
    AppendBatch::grouped(show_id, streams, Utc::now())
}

fn event(event_type: &str, payload: serde_json::Value, correlation_id: Uuid) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload,
        metadata: EventMetadata {
            event_id: Uuid::now_v7(),
            correlation_id,
            causation_id: None,
            actor: "usr_bench".to_owned(),
        },
    }
}

/// The same server URL with another database name.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}
