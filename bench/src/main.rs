//! `boxoffice-bench`: benchmarks and load generators.
//!
//! `engine` drives the write engine in-process (no HTTP): many concurrent clients each
//! holding 2 adjacent seats of one big show, on each backend; it prints holds/s,
//! events/s, latency percentiles and an oversell check read back from the log.
//! `checkout` measures end-to-end checkout latency over HTTP; `onsale` plays a whole
//! on-sale over HTTP against a real server process and audits its event log; `soak`
//! holds a steady load on such a server for minutes and checks that its memory stays
//! flat and its latency does not drift.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use boxoffice_commands::{CommandMeta, Engine, EngineConfig, EngineError};
use boxoffice_domain::booking::{BookingError, HoldRequest, Selection};
use boxoffice_domain::seat::SeatEvent;
use boxoffice_domain::show::{
    Limits, PriceTier, RowDef, SectionDef, SectionLayout, ShowCommand, ShowDefinition, Venue,
};
use boxoffice_domain::{
    Command, DomainEvent, Minor, RandomIds, ReservationId, ShowId, SystemClock, UserId,
};
use boxoffice_store::EventStore;
mod ceiling;
mod checkout;
mod cpu;
mod lag;
mod onsale;
mod soak;

use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::Connection;

/// glibc's allocator fragments under the engine's many short-lived batch allocations
/// (measured: malloc_consolidate and unlink_chunk near 10% of the engine benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "boxoffice-bench", version, about = "Boxoffice benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive the write engine in-process with concurrent 2-seat holds on one show.
    Engine {
        /// Which backend(s) to run on. PostgreSQL needs DATABASE_URL (a fresh database is created on its server).
        #[arg(long, value_enum, default_value = "both")]
        backend: BackendChoice,
        /// Seats in the show (rows of 500).
        #[arg(long, default_value_t = 100_000)]
        seats: u32,
        /// Concurrent clients.
        #[arg(long, default_value_t = 1_024)]
        clients: usize,
        /// Stop after this many seconds even if seats remain.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Write the results as JSON here too.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Also run the seat-map projection and measure its lag behind the appends.
        #[arg(long)]
        projection_lag: bool,
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
    /// End-to-end checkout latency over HTTP: the real server in-process with its
    /// payment simulator; concurrent buyers hold a seat and pay for it, repeatedly.
    Checkout {
        /// Which backend(s) to run on. PostgreSQL needs DATABASE_URL.
        #[arg(long, value_enum, default_value = "both")]
        backend: BackendChoice,
        /// Concurrent buyers.
        #[arg(long, default_value_t = 50)]
        buyers: usize,
        /// Checkouts per buyer.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// The simulated provider's latency (the server's default is 200 ms).
        #[arg(long, default_value_t = 200)]
        paysim_latency_ms: u64,
        /// Write the results as JSON here too.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
    /// An on-sale over real HTTP against a running server (`--url`) or one started here
    /// as a separate process: buyers hold, pay, cancel, abandon and join the waitlist;
    /// prints rates, latencies and errors, and audits the event log (`--compare A B`
    /// prints two runs side by side).
    Onsale(Box<onsale::OnsaleArgs>),
    /// A bounded soak over real HTTP: a steady open-loop rate of buyers (seats recycled
    /// by cancels and abandons) for `--minutes` against a server started here or
    /// `--url`; samples the server's RSS and each window's latency and errors, and judges
    /// memory growth, latency drift and the event log audit.
    Soak(Box<soak::SoakArgs>),
    /// The HTTP ceiling: closed-loop GETs of one cheap path (`/healthz`) through the
    /// server's whole middleware stack, with the on-sale bench's client; prints requests/s
    /// and the CPU each side spends per request, the bound any hold rate on this machine
    /// stays under.
    Ceiling(Box<ceiling::CeilingArgs>),
}

const SEATS_PER_ROW: u32 = 500;

#[derive(Debug, Serialize)]
struct EngineRun {
    backend: String,
    seats: u32,
    clients: usize,
    seconds: f64,
    holds: u64,
    refusals: u64,
    holds_per_second: f64,
    events_per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    batches: u64,
    mean_batch_commands: f64,
    seats_sold_twice: u64,
    seats_held_in_log: u64,
    /// Share of the run the show's actor spent deciding and encoding, and appending.
    decide_seconds: f64,
    append_seconds: f64,
    /// The seat-map projection's lag behind the appends (with `--projection-lag`).
    projection_lag: Option<lag::LagReport>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Engine {
            backend,
            seats,
            clients,
            seconds,
            json,
            projection_lag,
            database_url,
        } => {
            let mut runs = Vec::new();
            if matches!(backend, BackendChoice::Sqlite | BackendChoice::Both) {
                let dir = std::env::temp_dir()
                    .join(format!("boxoffice-bench-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir)?;
                let url = format!("sqlite://{}", dir.join("bench.db").display());
                runs.push(
                    engine_run("sqlite", &url, seats, clients, seconds, projection_lag).await?,
                );
                std::fs::remove_dir_all(&dir).ok();
            }
            if matches!(backend, BackendChoice::Postgres | BackendChoice::Both) {
                match database_url.filter(|u| u.starts_with("postgres")) {
                    Some(base) => {
                        let (url, name) = fresh_postgres(&base).await?;
                        runs.push(
                            engine_run("postgres", &url, seats, clients, seconds, projection_lag)
                                .await?,
                        );
                        drop_postgres(&base, &name).await;
                    }
                    None => eprintln!("postgres: skipped (set DATABASE_URL=postgres://…)"),
                }
            }
            for run in &runs {
                print_run(run);
            }
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&runs)?)?;
            }
            if runs.iter().any(|r| r.seats_sold_twice > 0) {
                anyhow::bail!("oversell detected");
            }
            Ok(())
        }
        Cmd::Checkout {
            backend,
            buyers,
            rounds,
            paysim_latency_ms,
            json,
            database_url,
        } => {
            let runs =
                checkout_runs(backend, buyers, rounds, paysim_latency_ms, database_url).await?;
            for run in &runs {
                checkout::print(run);
            }
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&runs)?)?;
            }
            Ok(())
        }
        Cmd::Onsale(args) => onsale::main(*args).await,
        Cmd::Soak(args) => soak::main(*args).await,
        Cmd::Ceiling(args) => ceiling::main(*args).await,
    }
}

async fn checkout_runs(
    backend: BackendChoice,
    buyers: usize,
    rounds: usize,
    latency: u64,
    database_url: Option<String>,
) -> anyhow::Result<Vec<checkout::CheckoutRun>> {
    let mut runs = Vec::new();
    if matches!(backend, BackendChoice::Sqlite | BackendChoice::Both) {
        let dir =
            std::env::temp_dir().join(format!("boxoffice-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}", dir.join("bench.db").display());
        runs.push(checkout::run("sqlite", &url, buyers, rounds, latency).await?);
        std::fs::remove_dir_all(&dir).ok();
    }
    if matches!(backend, BackendChoice::Postgres | BackendChoice::Both) {
        match database_url.filter(|u| u.starts_with("postgres")) {
            Some(base) => {
                let (url, name) = fresh_postgres(&base).await?;
                runs.push(checkout::run("postgres", &url, buyers, rounds, latency).await?);
                drop_postgres(&base, &name).await;
            }
            None => eprintln!("postgres: skipped (set DATABASE_URL=postgres://…)"),
        }
    }
    Ok(runs)
}

async fn fresh_postgres(base: &str) -> anyhow::Result<(String, String)> {
    let name = format!("boxoffice_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(base).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("DATABASE_URL has no database"))?;
    Ok((format!("{prefix}/{name}"), name))
}

async fn drop_postgres(base: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

fn definition(seats: u32) -> ShowDefinition {
    let rows = seats.div_ceil(SEATS_PER_ROW);
    ShowDefinition {
        name: "Bench".into(),
        venue: Venue {
            name: "Stadium".into(),
            city: "Lisbon".into(),
            country: "PT".into(),
            timezone: "Europe/Lisbon".into(),
        },
        starts_at: chrono::Utc::now() + chrono::Duration::days(30),
        currency: "EUR".into(),
        sales_open_at: None,
        sales_close_at: None,
        limits: Limits {
            hold_ttl_seconds: 3_600,
            ..Limits::default()
        },
        price_tiers: vec![PriceTier {
            id: "A".into(),
            name: "All".into(),
            price: Minor(5_000),
        }],
        sections: vec![SectionDef {
            id: "S".into(),
            name: "Stadium".into(),
            layout: SectionLayout::Seated {
                rows: (0..rows)
                    .map(|r| RowDef {
                        row: format!("R{r}"),
                        seats: SEATS_PER_ROW,
                        tier: "A".into(),
                    })
                    .collect(),
            },
        }],
    }
}

async fn engine_run(
    backend: &str,
    url: &str,
    seats: u32,
    clients: usize,
    seconds: u64,
    projection_lag: bool,
) -> anyhow::Result<EngineRun> {
    let store =
        boxoffice_store::connect(url, Some(boxoffice_store::chain::ChainKey::generate())).await?;
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::new(SystemClock),
        Arc::new(RandomIds),
        EngineConfig::default(),
    );
    let show = ShowId(uuid::Uuid::now_v7());
    let schedule = ShowCommand::Schedule {
        show_id: show,
        organizer_id: UserId(uuid::Uuid::now_v7()),
        definition: definition(seats).into(),
    };
    engine
        .execute(show, Command::Show(schedule), CommandMeta::new("bench"))
        .await?;
    let rows = seats.div_ceil(SEATS_PER_ROW);
    let lag_probe = if projection_lag {
        Some(lag::LagProbe::start(Arc::clone(&store), url).await?)
    } else {
        None
    };

    // Each client walks its own sequence of pair slots, spread over the whole show so
    // that clients collide sometimes (two clients can pick the same pair) but not always.
    let pairs_per_row = SEATS_PER_ROW / 2;
    let total_pairs = u64::from(rows * pairs_per_row);
    let next_pair = Arc::new(AtomicU64::new(0));
    let sold_out = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let engine = Arc::clone(&engine);
        let next_pair = Arc::clone(&next_pair);
        let sold_out = Arc::clone(&sold_out);
        tasks.push(tokio::spawn(async move {
            // Raw samples: a histogram per client, allocated inside the timed window, cost
            // more than the engine work it measured (seen in a profile).
            let mut latencies: Vec<u32> = Vec::with_capacity(256);
            let (mut holds, mut refusals) = (0u64, 0u64);
            while Instant::now() < deadline && !sold_out.load(Ordering::Relaxed) {
                // Mostly fresh pairs; one in eight aims at a pair someone already has.
                let n = next_pair.fetch_add(1, Ordering::Relaxed);
                let pair = if n % 8 == 7 { n / 2 } else { n };
                if pair >= total_pairs {
                    sold_out.store(true, Ordering::Relaxed);
                    break;
                }
                let row = pair / u64::from(pairs_per_row);
                let first = (pair % u64::from(pairs_per_row)) * 2 + 1;
                let selection = Selection::Seats(vec![
                    format!("S-R{row}-{first}"),
                    format!("S-R{row}-{}", first + 1),
                ]);
                let request = HoldRequest {
                    reservation_id: ReservationId(uuid::Uuid::now_v7()),
                    user_id: UserId(uuid::Uuid::now_v7()),
                    idempotency_key: None,
                    selection,
                };
                let t = Instant::now();
                let result = engine
                    .execute(show, Command::Hold(request), CommandMeta::new("bench"))
                    .await;
                latencies.push(t.elapsed().as_micros().clamp(1, u128::from(u32::MAX)) as u32);
                match result {
                    Ok(_) => holds += 1,
                    Err(EngineError::Domain(BookingError::SeatsUnavailable { .. })) => {
                        refusals += 1
                    }
                    Err(e) => panic!("hold failed: {e}"),
                }
            }
            (holds, refusals, latencies)
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await?);
    }
    let finished = Instant::now();
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut holds, mut refusals) = (0, 0);
    for t in results {
        let (h, r, samples) = t;
        holds += h;
        refusals += r;
        for micros in samples {
            latencies.record(u64::from(micros))?;
        }
    }
    let elapsed = finished.duration_since(started).as_secs_f64();
    let stats = engine.stats();
    let batches = stats.batches.load(Ordering::Relaxed);
    let events = stats.events_appended.load(Ordering::Relaxed);
    let commands = stats.commands.load(Ordering::Relaxed);
    let decide_seconds = stats.decide_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let append_seconds = stats.append_micros.load(Ordering::Relaxed) as f64 / 1e6;
    engine.shutdown().await;
    let projection_lag = match lag_probe {
        Some(probe) => Some(probe.finish().await?),
        None => None,
    };
    let (sold_twice, held_in_log) = oversell_check(&store, show).await?;
    Ok(EngineRun {
        backend: backend.to_string(),
        seats,
        clients,
        seconds: elapsed,
        holds,
        refusals,
        holds_per_second: holds as f64 / elapsed,
        events_per_second: events as f64 / elapsed,
        latency_ms_p50: latencies.value_at_quantile(0.50) as f64 / 1000.0,
        latency_ms_p99: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latency_ms_max: latencies.max() as f64 / 1000.0,
        batches,
        mean_batch_commands: if batches > 0 {
            commands as f64 / batches as f64
        } else {
            0.0
        },
        seats_sold_twice: sold_twice,
        seats_held_in_log: held_in_log,
        decide_seconds,
        append_seconds,
        projection_lag,
    })
}

/// Reads the show's log back and counts seats held while already held.
async fn oversell_check(store: &Arc<dyn EventStore>, show: ShowId) -> anyhow::Result<(u64, u64)> {
    let mut holder: HashMap<String, ReservationId> = HashMap::new();
    let (mut twice, mut held) = (0, 0);
    let mut after = 0;
    loop {
        let page = store
            .read_partition(&show.to_string(), after, 50_000)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for r in &page {
            match DomainEvent::decode(&r.event_type, r.schema_version, &r.payload)? {
                DomainEvent::Seat(SeatEvent::SeatHeld {
                    seat_id,
                    reservation_id,
                    ..
                }) => {
                    held += 1;
                    if holder.insert(seat_id, reservation_id).is_some() {
                        twice += 1;
                    }
                }
                DomainEvent::Seat(SeatEvent::SeatReleased { seat_id, .. }) => {
                    holder.remove(&seat_id);
                }
                _ => {}
            }
        }
    }
    Ok((twice, held))
}

fn print_run(r: &EngineRun) {
    println!(
        "{:>8}: {} holds in {:.1}s = {:.0} holds/s, {:.0} events/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {} batches (mean {:.0} commands; actor deciding {:.2}s, appending {:.2}s); {} refused; \
         oversell check: {} seats held in log, {} held twice",
        r.backend,
        r.holds,
        r.seconds,
        r.holds_per_second,
        r.events_per_second,
        r.latency_ms_p50,
        r.latency_ms_p99,
        r.latency_ms_max,
        r.batches,
        r.mean_batch_commands,
        r.decide_seconds,
        r.append_seconds,
        r.refusals,
        r.seats_held_in_log,
        r.seats_sold_twice,
    );
    if let Some(lag) = &r.projection_lag {
        println!(
            "{:>8}  seat-map projection lag over {} commits: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            "", lag.samples, lag.lag_ms_p50, lag.lag_ms_p90, lag.lag_ms_p99, lag.lag_ms_max
        );
    }
}
