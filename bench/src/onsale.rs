//! `boxoffice-bench onsale`: an on-sale played against a running Boxoffice server over
//! real HTTP, as real buyers would play it, then audited from the event log.
//!
//! The target is a server given with `--url`, or the real `boxoffice` binary started here
//! as a separate process on a fresh store (the embedded SQLite default, or a fresh
//! PostgreSQL database with `--backend postgres`) with rate limits off, and stopped at the
//! end. Setup creates one show (seated sections plus a general-admission floor) and
//! registers the buyers concurrently. Then virtual buyers arrive, open-loop at `--rate`
//! arrivals per second or closed-loop as `--concurrency` users, each trying to hold 1–4
//! seats: explicit seats concentrated on the best rows (so buyers collide), best
//! available, or the floor. A refusal makes the buyer try another choice; a buyer who
//! gets nothing joins the waitlist. Most holds are checked out with a mix of the payment
//! simulator's test tokens, some are cancelled and some abandoned to expire.
//!
//! The report has the rates, per-operation latency percentiles as the client saw them
//! (request sent to body read), errors by HTTP status and problem `code`, the time to
//! sell out, and an audit of the show's event log made by `boxctl verify`'s own checker
//! (`boxoffice_replay_tools::verify`): seats held or sold twice, payments captured without
//! tickets and holds alive past their deadline must all be 0, or the bench fails.
//! `--compare A.json B.json` prints two such reports side by side.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cpu::{CpuSample, CpuUse};

/// Attempts one buyer makes to hold something before joining the waitlist.
const HOLD_ATTEMPTS_MAX: usize = 5;
/// Seats one buyer asks for, at most (the contract allows 10 per hold).
pub(crate) const SEATS_PER_BUYER_MAX: u32 = 4;
const _: () = assert!(SEATS_PER_BUYER_MAX <= boxoffice_domain::policy::SEATS_PER_HOLD_MAX);
/// A run without `--seconds` goes until sold out, but never longer than this.
const UNTIL_SOLD_OUT_SECONDS_MAX: u64 = 600;
/// Registrations (each two password hashes on the server) in flight during setup.
pub(crate) const SETUP_REQUESTS_IN_FLIGHT: usize = 16;
/// How long one HTTP request may take before it counts as a transport error.
const REQUEST_TIMEOUT_SECONDS: u64 = 60;
/// How long the started server may take to answer `/readyz`.
const SERVER_READY_SECONDS_MAX: u64 = 60;
/// How long the started server may take to stop after SIGTERM before it is killed.
const SERVER_STOP_SECONDS_MAX: u64 = 20;
/// After the load: the longest wait for abandoned holds to expire and late payments to
/// settle before the audit.
const SETTLE_SECONDS_MAX: u64 = 90;
/// The audit's tolerance for an expiry or a ticket issuance running late.
const AUDIT_GRACE_SECONDS: i64 = 5;
/// Violation messages kept in the report.
const VIOLATION_SAMPLES_MAX: usize = 10;
/// The shortest hold the contract accepts is 10 s; short holds let the abandoned ones
/// expire within a run.
pub(crate) const HOLD_TTL_SECONDS_DEFAULT: u32 = 10;
/// Closed-loop buyers when neither `--rate` nor `--concurrency` is given.
const CONCURRENCY_DEFAULT: usize = 256;
const PASSWORD: &str = "correct horse battery";

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ServerBackend {
    Sqlite,
    Postgres,
}

/// Which server a benchmark plays against: one it starts, or one already running.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Base URL of a running server (`http://host:port`). Without it the bench starts the
    /// `boxoffice` binary itself on a fresh store and stops it at the end.
    #[arg(long)]
    url: Option<String>,
    /// The server binary to start (default: `boxoffice` next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The store of the server the bench starts. `postgres` creates a fresh database on
    /// the server named by DATABASE_URL.
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: ServerBackend,
    /// With `--backend postgres`: the PostgreSQL server to create a fresh database on.
    /// With `--url`: the target server's own store, read for the audit (no audit without it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// With `--url`: the event-chain key file of the target server, so the audit checks
    /// the hash chain too.
    #[arg(long)]
    event_chain_key_file: Option<PathBuf>,
    /// With `--url`: an organizer's credentials (`boxoffice user add … --role organizer`).
    #[arg(long)]
    organizer_email: Option<String>,
    #[arg(long)]
    organizer_password: Option<String>,
}

impl ServerArgs {
    /// The running server of `--url`, or `None` when the bench starts its own.
    pub(crate) fn external(&self) -> anyhow::Result<Option<Target>> {
        self.url
            .as_deref()
            .map(|url| {
                Target::external(
                    url,
                    self.organizer_email.clone(),
                    self.organizer_password.clone(),
                    self.database_url.clone(),
                    self.event_chain_key_file.clone(),
                )
            })
            .transpose()
    }

    /// How to start the server when there is no `--url`.
    pub(crate) fn spec(&self, paysim_latency_ms: u64) -> ServerSpec {
        ServerSpec {
            bin: self.server_bin.clone(),
            backend: self.backend,
            database_url: self.database_url.clone(),
            paysim_latency_ms,
        }
    }
}

#[derive(Debug, Args)]
pub struct OnsaleArgs {
    /// Print two earlier `--json` reports side by side (with the change in %) and exit.
    #[arg(long, num_args = 2, value_names = ["A_JSON", "B_JSON"])]
    compare: Vec<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
    /// Seats in the seated sections (rounded up to whole rows).
    #[arg(long, default_value_t = 20_000)]
    seats: u32,
    /// Seated sections the seats are split into.
    #[arg(long, default_value_t = 4)]
    sections: u32,
    #[arg(long, default_value_t = 50)]
    seats_per_row: u32,
    /// Places on the general-admission floor (0: no floor).
    #[arg(long, default_value_t = 5_000)]
    ga_capacity: u32,
    /// Buyer accounts registered during setup; arrivals take them in turn.
    #[arg(long, default_value_t = 1_000)]
    buyers: usize,
    /// Open loop: buyers arriving per second, whatever the server's answers take.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<u32>,
    /// Closed loop: this many buyers, each starting again when done (the default, 256).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open loop: buyers in flight at most; arrivals beyond it are dropped and counted.
    #[arg(long, default_value_t = 5_000)]
    max_in_flight: usize,
    /// Length of the load. Without it the run ends when the show is sold out.
    #[arg(long)]
    seconds: Option<u64>,
    /// The show's hold time (10 s at least).
    #[arg(long, default_value_t = HOLD_TTL_SECONDS_DEFAULT)]
    hold_ttl_seconds: u32,
    /// The show's payment timeout (5 s at least): `tok_late_visa` is captured after it,
    /// `tok_timeout` voided after it.
    #[arg(long, default_value_t = 5)]
    payment_timeout_seconds: u32,
    /// `?wait_seconds=` of each checkout.
    #[arg(long, default_value_t = 5)]
    checkout_wait_seconds: u64,
    /// Of the holds: per cent checked out; `--abandon-percent` are left to expire, the
    /// rest cancelled.
    #[arg(long, default_value_t = 80)]
    checkout_percent: u32,
    #[arg(long, default_value_t = 10)]
    abandon_percent: u32,
    /// The started server's payment simulator latency.
    #[arg(long, default_value_t = 200)]
    paysim_latency_ms: u64,
    /// Seed of the buyers' choices.
    #[arg(long, default_value_t = 20_270_501)]
    seed: u64,
    /// Keep the started server's data directory (and PostgreSQL database).
    #[arg(long)]
    keep_data: bool,
    /// Send holds and checkouts without an `Idempotency-Key` (as careless clients do);
    /// by default each carries a fresh key, as the contract asks of clients.
    #[arg(long)]
    no_idempotency_keys: bool,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------
// The report

#[derive(Debug, Serialize, Deserialize)]
pub struct OnsaleReport {
    /// `sqlite`, `postgres` (the bench started the server) or `external`.
    pub backend: String,
    pub url: String,
    pub show_id: String,
    /// `open` (arrival rate) or `closed` (concurrency).
    pub mode: String,
    pub rate: Option<u32>,
    pub concurrency: Option<usize>,
    pub seats: u32,
    pub ga_capacity: u32,
    pub buyers: usize,
    pub seed: u64,
    #[serde(default = "yes")]
    pub idempotency_keys: bool,
    pub setup_seconds: f64,
    /// From the first arrival to the last (the load window).
    pub load_seconds: f64,
    /// From the first arrival until every buyer in flight was done.
    pub drain_seconds: f64,
    /// Buyers who arrived (sessions started).
    pub sessions: u64,
    /// Open loop: arrivals dropped because `--max-in-flight` buyers were in flight.
    pub arrivals_dropped: u64,
    pub hold_attempts: u64,
    pub holds: u64,
    pub seats_held: u64,
    /// Holds per second until sold out (or over the load window if it never sold out).
    pub holds_per_second: f64,
    pub hold_attempts_per_second: f64,
    pub checkouts_confirmed: u64,
    pub checkouts_pending: u64,
    pub checkouts_declined: u64,
    pub checkouts_other: u64,
    /// Confirmed checkouts per second of the drain window.
    pub checkouts_per_second: f64,
    pub cancels: u64,
    pub abandoned: u64,
    pub waitlist_joins: u64,
    /// When the show was first seen sold out (all seats and places held or sold).
    pub sold_out_after_seconds: Option<f64>,
    pub latency_ms: BTreeMap<String, OpLatency>,
    /// Non-2xx answers, `"<status> <code>"`; transport failures as `"transport <kind>"`.
    pub errors: BTreeMap<String, u64>,
    pub server_errors: u64,
    /// The machine's CPU over the load window, by side, and per hold attempt (all the
    /// load's work divided by its hold attempts). Absent in reports from before it.
    #[serde(default)]
    pub cpu: Option<CpuUse>,
    pub audit: Option<Audit>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OpLatency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Audit {
    pub events: u64,
    pub chain_checked: Option<u64>,
    /// Rule 1: a seat held or sold by two reservations at once (or a GA pool over capacity).
    pub seats_sold_twice: u64,
    /// Rule 2: payments captured without tickets (or tickets without a capture).
    pub payments_without_tickets: u64,
    /// Rule 4: holds alive past their deadline (or expired before it).
    pub holds_past_deadline: u64,
    /// Every other rule of EVENTS.md, the hash chain and the domain's replay.
    pub other_violations: u64,
    /// The checker stopped at its violation limit: the counts are lower bounds.
    pub truncated: bool,
    pub samples: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Audit {
    pub fn anomalies(&self) -> u64 {
        self.seats_sold_twice
            + self.payments_without_tickets
            + self.holds_past_deadline
            + self.other_violations
    }
}

// ---------------------------------------------------------------------------------------
// Entry point

pub async fn main(args: OnsaleArgs) -> anyhow::Result<()> {
    if !args.compare.is_empty() {
        return compare(&args.compare[0], &args.compare[1]);
    }
    anyhow::ensure!(args.buyers > 0, "--buyers must be positive");
    anyhow::ensure!(
        args.checkout_percent + args.abandon_percent <= 100,
        "--checkout-percent plus --abandon-percent must be at most 100"
    );
    anyhow::ensure!(
        args.sections > 0 && args.seats_per_row > 0 && args.seats > 0,
        "--seats, --sections and --seats-per-row must be positive"
    );
    let external = args.server.external()?;
    let args = &args;
    let (mut report, audit) = against_server(
        external,
        &args.server.spec(args.paysim_latency_ms),
        args.keep_data,
        |target, pid| async move {
            let report = run(args, &target, pid).await?;
            let show_id = report.show_id.clone();
            Ok((report, show_id))
        },
    )
    .await?;
    report.audit = audit;
    print(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    match &report.audit {
        Some(audit) if audit.anomalies() > 0 => {
            anyhow::bail!("the event log audit found {} anomalies", audit.anomalies())
        }
        _ => Ok(()),
    }
}

impl OnsaleArgs {
    fn show_spec(&self) -> ShowSpec {
        ShowSpec {
            seats: self.seats,
            sections: self.sections,
            seats_per_row: self.seats_per_row,
            ga_capacity: self.ga_capacity,
            buyers: self.buyers,
            hold_ttl_seconds: self.hold_ttl_seconds,
            payment_timeout_seconds: self.payment_timeout_seconds,
        }
    }
}

/// Runs `load` against the target: the external server if given, else a server started
/// here (and stopped after the load). `load` gets the target and the started server's
/// process id, and returns its result with the id of the show it played; that show's
/// event log is then audited (`None`: the target's store is unknown). On a failed load
/// a started server's data is kept and its log named.
pub(crate) async fn against_server<T, Fut>(
    external: Option<Target>,
    spec: &ServerSpec,
    keep_data: bool,
    load: impl FnOnce(Target, Option<u32>) -> Fut,
) -> anyhow::Result<(T, Option<Audit>)>
where
    Fut: std::future::Future<Output = anyhow::Result<(T, String)>>,
{
    let (target, server) = match external {
        Some(target) => (target, None),
        None => {
            let server = Server::start(spec).await?;
            (server.target(), Some(server))
        }
    };
    let pid = server.as_ref().and_then(|s| s.child.id());
    let result = load(target.clone(), pid).await;
    let stopped_at = Utc::now();
    match (result, server) {
        (Ok((out, show_id)), Some(mut server)) => {
            let audited = match server.stop().await {
                Ok(stopped_at) => audit_target(&target, &show_id, stopped_at).await,
                Err(e) => Err(e),
            };
            server.cleanup(keep_data).await;
            Ok((out, audited?))
        }
        (Ok((out, show_id)), None) => {
            let audited = audit_target(&target, &show_id, stopped_at).await?;
            Ok((out, audited))
        }
        (Err(e), Some(mut server)) => {
            let _ = server.stop().await;
            eprintln!("server log: {}", server.log.display());
            server.cleanup(true).await;
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

async fn audit_target(
    target: &Target,
    show_id: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Audit>> {
    match &target.store_url {
        Some(url) => Ok(Some(
            audit(url, target.chain_key_file.as_deref(), show_id, now).await?,
        )),
        None => {
            eprintln!(
                "audit skipped: the target's store is unknown (pass --database-url with --url)"
            );
            Ok(None)
        }
    }
}

/// Where the load goes and what the audit reads.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) backend: String,
    pub(crate) base: String,
    organizer: (String, String),
    pub(crate) store_url: Option<String>,
    chain_key_file: Option<PathBuf>,
}

impl Target {
    /// A server that is already running at `url`, with an organizer's credentials and,
    /// for the audit, its store and event-chain key.
    pub(crate) fn external(
        url: &str,
        organizer_email: Option<String>,
        organizer_password: Option<String>,
        store_url: Option<String>,
        chain_key_file: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let (Some(email), Some(password)) = (organizer_email, organizer_password) else {
            anyhow::bail!("--url needs --organizer-email and --organizer-password");
        };
        Ok(Self {
            backend: "external".into(),
            base: url.trim_end_matches('/').to_string(),
            organizer: (email, password),
            store_url,
            chain_key_file,
        })
    }
}

/// How to start the server the bench runs against.
pub(crate) struct ServerSpec {
    /// Default: `boxoffice` next to this binary.
    pub(crate) bin: Option<PathBuf>,
    pub(crate) backend: ServerBackend,
    /// With PostgreSQL: the server to create a fresh database on.
    pub(crate) database_url: Option<String>,
    pub(crate) paysim_latency_ms: u64,
}

/// The show setup creates and the buyer accounts it registers.
pub(crate) struct ShowSpec {
    /// Seats in the seated sections (rounded up to whole rows).
    pub(crate) seats: u32,
    pub(crate) sections: u32,
    pub(crate) seats_per_row: u32,
    /// Places on the general-admission floor (0: no floor).
    pub(crate) ga_capacity: u32,
    pub(crate) buyers: usize,
    pub(crate) hold_ttl_seconds: u32,
    pub(crate) payment_timeout_seconds: u32,
}

// ---------------------------------------------------------------------------------------
// The server the bench starts

pub(crate) struct Server {
    child: tokio::process::Child,
    backend: ServerBackend,
    base: String,
    data_dir: PathBuf,
    database_url: String,
    /// (server URL, database name) of the fresh PostgreSQL database.
    postgres: Option<(String, String)>,
    log: PathBuf,
    organizer: (String, String),
}

impl Server {
    pub(crate) async fn start(spec: &ServerSpec) -> anyhow::Result<Self> {
        let bin = match &spec.bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?.with_file_name("boxoffice"),
        };
        anyhow::ensure!(
            bin.exists(),
            "server binary {} not found: build it (`cargo build --release -p boxoffice-api`) or pass --server-bin",
            bin.display()
        );
        let data_dir = std::env::temp_dir().join(format!(
            "boxoffice-onsale-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&data_dir)?;
        let (database_url, postgres) = match spec.backend {
            ServerBackend::Sqlite => (
                format!("sqlite://{}", data_dir.join("boxoffice.db").display()),
                None,
            ),
            ServerBackend::Postgres => {
                let base = spec
                    .database_url
                    .clone()
                    .filter(|u| u.starts_with("postgres"))
                    .ok_or_else(|| {
                        anyhow::anyhow!("--backend postgres needs DATABASE_URL=postgres://…")
                    })?;
                let (url, name) = crate::fresh_postgres(&base).await?;
                (url, Some((base, name)))
            }
        };
        // A free port: bound and released at once, then handed to the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = data_dir.join("server.log");
        let organizer = (
            "organizer@onsale.bench".to_string(),
            "organizer-password".to_string(),
        );
        let command = |log: &Path| -> anyhow::Result<tokio::process::Command> {
            let mut c = tokio::process::Command::new(&bin);
            c.env("BIND_ADDR", format!("127.0.0.1:{port}"))
                .env("DATABASE_URL", &database_url)
                .env("DATA_DIR", &data_dir)
                .env("RATE_LIMIT_PER_USER", "0")
                .env("RATE_LIMIT_PER_IP", "0")
                .env("PAYSIM_LATENCY_MS", spec.paysim_latency_ms.to_string())
                // Everything else the server keeps under its fresh data directory.
                .env_remove("PAYMENT_PROVIDER_URL")
                .env_remove("PAYMENT_WEBHOOK_SECRET")
                .env_remove("JWT_SECRET")
                .env_remove("JWT_SECRET_FILE")
                .env_remove("EVENT_CHAIN_KEY_FILE")
                .env_remove("NOTIFY_EMAIL_FILE")
                .env_remove("NOTIFY_WEBHOOK_URL")
                .stdin(std::process::Stdio::null())
                .stdout(
                    std::fs::File::options()
                        .create(true)
                        .append(true)
                        .open(log)?,
                )
                .stderr(
                    std::fs::File::options()
                        .create(true)
                        .append(true)
                        .open(log)?,
                )
                .kill_on_drop(true);
            Ok(c)
        };
        let added = command(&log)?
            .args(["user", "add", "--email", &organizer.0, "--password"])
            .arg(&organizer.1)
            .args(["--role", "organizer"])
            .status()
            .await?;
        anyhow::ensure!(
            added.success(),
            "`boxoffice user add` failed; see {}",
            log.display()
        );
        let child = command(&log)?.arg("serve").spawn()?;
        let mut server = Self {
            child,
            backend: spec.backend,
            base: format!("http://127.0.0.1:{port}"),
            data_dir,
            database_url,
            postgres,
            log,
            organizer,
        };
        if let Err(e) = server.wait_ready().await {
            let _ = server.child.start_kill();
            anyhow::bail!("{e}; see {}", server.log.display());
        }
        Ok(server)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(SERVER_READY_SECONDS_MAX);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the server exited during start-up ({status})");
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the server was not ready within {SERVER_READY_SECONDS_MAX} s")
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) fn target(&self) -> Target {
        Target {
            backend: match self.backend {
                ServerBackend::Sqlite => "sqlite".into(),
                ServerBackend::Postgres => "postgres".into(),
            },
            base: self.base.clone(),
            organizer: self.organizer.clone(),
            store_url: Some(self.database_url.clone()),
            chain_key_file: Some(self.data_dir.join("event-chain.key")),
        }
    }

    /// SIGTERM, then a bounded wait for a graceful stop; returns when it stopped.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<DateTime<Utc>> {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let stopped_at = Utc::now();
        match tokio::time::timeout(
            Duration::from_secs(SERVER_STOP_SECONDS_MAX),
            self.child.wait(),
        )
        .await
        {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                eprintln!("the server did not stop within {SERVER_STOP_SECONDS_MAX} s: killed");
                self.child.kill().await?;
            }
        }
        Ok(stopped_at)
    }

    pub(crate) async fn cleanup(&self, keep: bool) {
        if keep {
            eprintln!(
                "kept: data directory {}, store {}",
                self.data_dir.display(),
                self.database_url
            );
            return;
        }
        if let Some((base, name)) = &self.postgres {
            crate::drop_postgres(base, name).await;
        }
        std::fs::remove_dir_all(&self.data_dir).ok();
    }
}

// ---------------------------------------------------------------------------------------
// The load

/// The show as the buyers see it.
pub(crate) struct Venue {
    show_id: String,
    sections: Vec<String>,
    rows_per_section: u32,
    seats_per_row: u32,
    /// Rows at the front that explicit choices aim at.
    hot_rows: u32,
    ga: bool,
}

pub(crate) struct Buyer {
    token: String,
}

/// Latency histograms and error counts, shared by all buyers.
#[derive(Default)]
pub(crate) struct Recorder {
    /// Per operation (`hold`, `checkout`, `cancel`, `waitlist`, …), microseconds.
    pub(crate) latency_micros: BTreeMap<&'static str, Histogram<u64>>,
    /// Non-2xx answers, `"<status> <code>"`; transport failures as `"transport <kind>"`.
    pub(crate) errors: BTreeMap<String, u64>,
}

/// Running totals since the load started.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sessions: AtomicU64,
    pub(crate) hold_attempts: AtomicU64,
    pub(crate) holds: AtomicU64,
    pub(crate) seats_held: AtomicU64,
    pub(crate) confirmed: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) declined: AtomicU64,
    pub(crate) checkout_other: AtomicU64,
    pub(crate) cancels: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) waitlist_joins: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) server_errors: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// What buyers do with a hold, and how they send their requests.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SessionMix {
    /// Of the holds: per cent checked out; `abandon_percent` are left to expire, the rest
    /// cancelled.
    pub(crate) checkout_percent: u32,
    pub(crate) abandon_percent: u32,
    /// `?wait_seconds=` of each checkout.
    pub(crate) checkout_wait_seconds: u64,
    /// Each hold and checkout carries a fresh `Idempotency-Key`.
    pub(crate) idempotency_keys: bool,
}

/// Everything the buyers share: the client, the show, the accounts and the records.
pub(crate) struct Ctx {
    client: reqwest::Client,
    base: String,
    venue: Venue,
    buyers: Vec<Buyer>,
    checkout_percent: u32,
    abandon_percent: u32,
    checkout_wait_seconds: u64,
    idempotency_keys: bool,
    pub(crate) counters: Counters,
    pub(crate) recorder: Mutex<Recorder>,
    /// Set when no new buyer may start.
    pub(crate) stop: AtomicBool,
    /// The latest `expires_at` of an abandoned hold, unix milliseconds.
    abandoned_expiry_ms: AtomicU64,
    /// The last checkout sent, unix milliseconds (late captures and voids follow it).
    last_checkout_ms: AtomicU64,
}

/// One answer: status (0 for a transport failure) and the JSON body (Null if none).
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl Ctx {
    pub(crate) fn new(
        client: reqwest::Client,
        base: String,
        venue: Venue,
        buyers: Vec<Buyer>,
        mix: SessionMix,
        recorder: Recorder,
    ) -> Self {
        assert!(
            mix.checkout_percent + mix.abandon_percent <= 100,
            "checkout and abandon shares exceed 100%"
        );
        Self {
            client,
            base,
            venue,
            buyers,
            checkout_percent: mix.checkout_percent,
            abandon_percent: mix.abandon_percent,
            checkout_wait_seconds: mix.checkout_wait_seconds,
            idempotency_keys: mix.idempotency_keys,
            counters: Counters::default(),
            recorder: Mutex::new(recorder),
            stop: AtomicBool::new(false),
            abandoned_expiry_ms: AtomicU64::new(0),
            last_checkout_ms: AtomicU64::new(0),
        }
    }

    /// The show's id.
    pub(crate) fn show_id(&self) -> &str {
        &self.venue.show_id
    }

    /// Seats in the seated sections.
    pub(crate) fn seated_capacity(&self) -> u32 {
        self.venue.sections.len() as u32 * self.venue.rows_per_section * self.venue.seats_per_row
    }

    /// Buyer accounts registered.
    pub(crate) fn buyer_accounts(&self) -> usize {
        self.buyers.len()
    }

    /// Sends a request, records its latency under `op` and a non-2xx answer under its
    /// status and problem code.
    async fn send(&self, op: &'static str, request: reqwest::RequestBuilder) -> Answer {
        let started = Instant::now();
        let answer = match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.bytes().await {
                    Ok(bytes) => Answer {
                        status,
                        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    },
                    Err(e) => transport_failure(&e),
                }
            }
            Err(e) => transport_failure(&e),
        };
        let micros = started.elapsed().as_micros().max(1) as u64;
        let error = (!(200..300).contains(&answer.status)).then(|| {
            if answer.status == 0 {
                format!("transport {}", answer.code())
            } else {
                format!("{} {}", answer.status, answer.code())
            }
        });
        if error.is_some() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        if answer.status == 0 || answer.status >= 500 {
            self.counters.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut recorder = self.recorder.lock().expect("recorder lock");
        recorder
            .latency_micros
            .entry(op)
            .or_insert_with(|| Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"))
            .saturating_record(micros);
        if let Some(error) = error {
            *recorder.errors.entry(error).or_default() += 1;
        }
        answer
    }

    fn post(
        &self,
        path: &str,
        token: &str,
        body: &Value,
        idempotent: bool,
    ) -> reqwest::RequestBuilder {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body);
        if idempotent && self.idempotency_keys {
            request.header("Idempotency-Key", uuid::Uuid::new_v4().simple().to_string())
        } else {
            request
        }
    }
}

/// The load's HTTP client: HTTP/1.1 (built without HTTP/2) with keep-alive, one idle
/// connection kept per buyer that can be in flight (`pool`), so connections are reused,
/// not re-opened.
pub(crate) fn http_client(pool: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(REQUEST_TIMEOUT_SECONDS))
        .build()?)
}

/// Open-loop arrivals: buyers start on schedule, `rate` per second from `started`,
/// whatever the answers take; arrivals beyond `max_in_flight` buyers in flight are
/// dropped and counted.
pub(crate) struct OpenLoop {
    started: Instant,
    rate: u32,
    max_in_flight: usize,
    seed: u64,
    arrived: u64,
    in_flight: Arc<AtomicUsize>,
    tasks: tokio::task::JoinSet<()>,
}

impl OpenLoop {
    pub(crate) fn new(started: Instant, rate: u32, max_in_flight: usize, seed: u64) -> Self {
        assert!(rate > 0, "an open loop needs a positive rate");
        Self {
            started,
            rate,
            max_in_flight,
            seed,
            arrived: 0,
            in_flight: Arc::new(AtomicUsize::new(0)),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Starts every arrival that fell due by now (a late tick starts all that fell due
    /// meanwhile) and reaps finished sessions so the set stays small.
    pub(crate) fn arrive_due(&mut self, ctx: &Arc<Ctx>) {
        let due = (self.started.elapsed().as_secs_f64() * f64::from(self.rate)) as u64;
        while self.arrived < due {
            let n = self.arrived;
            self.arrived += 1;
            if self.in_flight.load(Ordering::Relaxed) >= self.max_in_flight {
                ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            let (ctx, in_flight) = (Arc::clone(ctx), Arc::clone(&self.in_flight));
            let seed = self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            self.tasks.spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let buyer = &ctx.buyers[(n % ctx.buyers.len() as u64) as usize];
                session(&ctx, &mut rng, buyer).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        while self.tasks.try_join_next().is_some() {}
    }

    /// Buyers in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The sessions still running, to wait for.
    pub(crate) fn into_tasks(self) -> tokio::task::JoinSet<()> {
        self.tasks
    }
}

/// Abandoned holds expire and late payments settle (or are voided) on the server's own
/// schedule; an audit of the log is only meaningful once they had the time to. Waits for
/// that, at most `SETTLE_SECONDS_MAX`.
pub(crate) async fn settle(ctx: &Ctx, payment_timeout_seconds: u32, bar: &ProgressBar) {
    let payment_settle_ms = u64::from(payment_timeout_seconds) * 1_000 + 5_000;
    let settle_until_ms = ctx
        .abandoned_expiry_ms
        .load(Ordering::Relaxed)
        .max(ctx.last_checkout_ms.load(Ordering::Relaxed) + payment_settle_ms)
        + 2_000;
    let now_ms = unix_ms(Utc::now());
    if settle_until_ms > now_ms {
        let wait =
            Duration::from_millis((settle_until_ms - now_ms).min(SETTLE_SECONDS_MAX * 1_000));
        bar.set_message(format!(
            "waiting {:.0} s for abandoned holds to expire and late payments to settle",
            wait.as_secs_f64()
        ));
        tokio::time::sleep(wait).await;
    }
}

fn transport_failure(e: &reqwest::Error) -> Answer {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "other"
    };
    Answer {
        status: 0,
        body: json!({ "code": kind }),
    }
}

fn unix_ms(t: DateTime<Utc>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

/// What one buyer asks for.
enum Choice {
    Seats(Vec<String>),
    BestAvailable { section: String, quantity: u32 },
    Floor { quantity: u32 },
}

impl Venue {
    /// Adjacent seats in one of the front rows, near the middle: where everyone aims.
    fn explicit(&self, rng: &mut StdRng, quantity: u32) -> Choice {
        let section = &self.sections[rng.gen_range(0..self.sections.len())];
        // The product of two uniforms leans towards 0: the front rows are wanted most.
        let row = ((rng.r#gen::<f64>() * rng.r#gen::<f64>()) * f64::from(self.hot_rows)) as u32;
        let row = row.min(self.rows_per_section - 1);
        let quantity = quantity.min(self.seats_per_row);
        // Two uniforms summed: a triangle around the row's middle.
        let spread =
            (rng.r#gen::<f64>() + rng.r#gen::<f64>() - 1.0) * f64::from(self.seats_per_row) / 2.0;
        let centre = f64::from(self.seats_per_row + 1) / 2.0 + spread;
        let first = (centre - f64::from(quantity) / 2.0).round() as i64;
        let first = first.clamp(1, i64::from(self.seats_per_row - quantity + 1)) as u32;
        Choice::Seats(
            (first..first + quantity)
                .map(|n| format!("{section}-R{}-{n}", row + 1))
                .collect(),
        )
    }

    fn best_available(&self, rng: &mut StdRng, quantity: u32) -> Choice {
        Choice::BestAvailable {
            section: self.sections[rng.gen_range(0..self.sections.len())].clone(),
            quantity,
        }
    }

    /// The first choice: half explicit seats, three in ten best available, the rest the
    /// floor (best available if there is none).
    fn first_choice(&self, rng: &mut StdRng, quantity: u32) -> Choice {
        match rng.gen_range(0..10) {
            0..5 => self.explicit(rng, quantity),
            5..8 => self.best_available(rng, quantity),
            _ if self.ga => Choice::Floor { quantity },
            _ => self.best_available(rng, quantity),
        }
    }

    /// The next choice after a refusal: another explicit pick once, then best available
    /// anywhere, then the floor.
    fn next_choice(&self, rng: &mut StdRng, attempt: usize, quantity: u32) -> Choice {
        match attempt {
            1 => self.explicit(rng, quantity),
            2 | 3 => self.best_available(rng, quantity),
            _ if self.ga => Choice::Floor { quantity },
            _ => self.best_available(rng, quantity),
        }
    }
}

impl Choice {
    fn body(&self) -> Value {
        match self {
            Choice::Seats(seats) => json!({ "seats": seats }),
            Choice::BestAvailable { section, quantity } => {
                json!({ "section": section, "quantity": quantity, "best_available": true })
            }
            Choice::Floor { quantity } => json!({ "section": "floor", "quantity": quantity }),
        }
    }
}

/// The payment simulator's test tokens, with the share of checkouts (in 1/1000) each
/// gets: mostly cards that work, some declines, and a few of the awkward cases.
const PAYMENT_TOKENS: [(&str, u32); 5] = [
    ("tok_visa", 880),
    ("tok_declined", 60),
    ("tok_dup_visa", 30),
    ("tok_late_visa", 15),
    ("tok_timeout", 15),
];
const _: () = {
    let mut total = 0;
    let mut i = 0;
    while i < PAYMENT_TOKENS.len() {
        total += PAYMENT_TOKENS[i].1;
        i += 1;
    }
    assert!(total == 1_000);
};

fn payment_token(rng: &mut StdRng) -> &'static str {
    let mut pick = rng.gen_range(0..1_000);
    for (token, share) in PAYMENT_TOKENS {
        if pick < share {
            return token;
        }
        pick -= share;
    }
    unreachable!("the shares add up to 1,000")
}

/// One buyer's visit: hold (trying other choices after refusals), then check out,
/// cancel or walk away; or join the waitlist when nothing could be held.
async fn session(ctx: &Ctx, rng: &mut StdRng, buyer: &Buyer) {
    ctx.counters.sessions.fetch_add(1, Ordering::Relaxed);
    let show = &ctx.venue.show_id;
    let quantity = rng.gen_range(1..=SEATS_PER_BUYER_MAX);
    let mut choice = ctx.venue.first_choice(rng, quantity);
    let mut held = None;
    for attempt in 0..HOLD_ATTEMPTS_MAX {
        if attempt > 0 {
            choice = ctx.venue.next_choice(rng, attempt, quantity);
        }
        ctx.counters.hold_attempts.fetch_add(1, Ordering::Relaxed);
        let answer = ctx
            .send(
                "hold",
                ctx.post(
                    &format!("/v1/shows/{show}/holds"),
                    &buyer.token,
                    &choice.body(),
                    true,
                ),
            )
            .await;
        match answer.status {
            201 => {
                held = Some(answer.body);
                break;
            }
            409 if matches!(answer.code(), "seats_unavailable" | "sold_out") => continue,
            // A limit, a closed sale or a failure: this buyer gives up.
            _ => return,
        }
    }
    let Some(reservation) = held else {
        let answer = ctx
            .send(
                "waitlist",
                ctx.post(
                    &format!("/v1/shows/{show}/waitlist"),
                    &buyer.token,
                    &json!({ "quantity": quantity }),
                    true,
                ),
            )
            .await;
        if answer.status == 201 {
            ctx.counters.waitlist_joins.fetch_add(1, Ordering::Relaxed);
        }
        return;
    };
    ctx.counters.holds.fetch_add(1, Ordering::Relaxed);
    ctx.counters.seats_held.fetch_add(
        reservation["quantity"].as_u64().unwrap_or(0),
        Ordering::Relaxed,
    );
    let Some(id) = reservation["reservation_id"].as_str() else {
        return;
    };
    let what = rng.gen_range(0..100);
    if what < ctx.checkout_percent {
        ctx.last_checkout_ms
            .fetch_max(unix_ms(Utc::now()), Ordering::Relaxed);
        let token = payment_token(rng);
        let answer = ctx
            .send(
                "checkout",
                ctx.post(
                    &format!(
                        "/v1/reservations/{id}/checkout?wait_seconds={}",
                        ctx.checkout_wait_seconds
                    ),
                    &buyer.token,
                    &json!({ "payment_token": token }),
                    true,
                ),
            )
            .await;
        let counter = match answer.status {
            200 => &ctx.counters.confirmed,
            202 => &ctx.counters.pending,
            402 => &ctx.counters.declined,
            _ => &ctx.counters.checkout_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    } else if what < ctx.checkout_percent + ctx.abandon_percent {
        ctx.counters.abandoned.fetch_add(1, Ordering::Relaxed);
        if let Some(expires_at) = reservation["expires_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            ctx.abandoned_expiry_ms
                .fetch_max(unix_ms(expires_at.with_timezone(&Utc)), Ordering::Relaxed);
        }
    } else {
        let answer = ctx
            .send(
                "cancel",
                ctx.client
                    .delete(format!("{}/v1/reservations/{id}", ctx.base))
                    .bearer_auth(&buyer.token),
            )
            .await;
        if answer.status == 200 {
            ctx.counters.cancels.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run(
    args: &OnsaleArgs,
    target: &Target,
    server_pid: Option<u32>,
) -> anyhow::Result<OnsaleReport> {
    let concurrency = match args.rate {
        Some(_) => None,
        None => Some(args.concurrency.unwrap_or(CONCURRENCY_DEFAULT)),
    };
    anyhow::ensure!(
        args.rate.is_none_or(|r| r > 0) && concurrency.is_none_or(|c| c > 0),
        "--rate and --concurrency must be positive"
    );
    let pool = concurrency
        .unwrap_or(args.max_in_flight)
        .max(SETUP_REQUESTS_IN_FLIGHT);
    let client = http_client(pool)?;
    let setup_started = Instant::now();
    let (venue, buyers, recorder) = setup(&args.show_spec(), target, &client).await?;
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "setup: show {} ({} seats in {} sections + {} on the floor), {} buyers in {:.1} s",
        venue.show_id,
        venue.sections.len() as u32 * venue.rows_per_section * venue.seats_per_row,
        venue.sections.len(),
        args.ga_capacity,
        buyers.len(),
        setup_seconds
    );
    let mix = SessionMix {
        checkout_percent: args.checkout_percent,
        abandon_percent: args.abandon_percent,
        checkout_wait_seconds: args.checkout_wait_seconds,
        idempotency_keys: !args.no_idempotency_keys,
    };
    let ctx = Arc::new(Ctx::new(
        client,
        target.base.clone(),
        venue,
        buyers,
        mix,
        recorder,
    ));

    let limit = Duration::from_secs(args.seconds.unwrap_or(UNTIL_SOLD_OUT_SECONDS_MAX));
    let until_sold_out = args.seconds.is_none();
    let bar = progress_bar(args.seconds);
    let started = Instant::now();
    let cpu_before = CpuSample::take(server_pid);
    let sold_out = Arc::new(Mutex::new(None::<(f64, u64)>));
    let monitor = tokio::spawn(monitor(
        Arc::clone(&ctx),
        started,
        bar.clone(),
        Arc::clone(&sold_out),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let is_over = |ctx: &Ctx| {
        started.elapsed() >= limit
            || (until_sold_out && sold_out.lock().expect("sold-out lock").is_some())
            || ctx.stop.load(Ordering::Relaxed)
    };
    match (args.rate, concurrency) {
        (Some(rate), _) => {
            let mut arrivals = OpenLoop::new(started, rate, args.max_in_flight, args.seed);
            while !is_over(&ctx) {
                arrivals.arrive_due(&ctx);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tasks = arrivals.into_tasks();
        }
        (None, Some(users)) => {
            for user in 0..users {
                let ctx = Arc::clone(&ctx);
                let seed = args.seed ^ (user as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                tasks.spawn(async move {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let mut n = user;
                    while !ctx.stop.load(Ordering::Relaxed) {
                        let buyer = &ctx.buyers[n % ctx.buyers.len()];
                        session(&ctx, &mut rng, buyer).await;
                        n += users;
                    }
                });
            }
            while !is_over(&ctx) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        (None, None) => unreachable!("one of rate and concurrency is set"),
    }
    ctx.stop.store(true, Ordering::Relaxed);
    let load_seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_before.until(
        &CpuSample::take(server_pid),
        ctx.counters.hold_attempts.load(Ordering::Relaxed),
    );
    bar.set_message("load over; waiting for the buyers in flight");
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    monitor.abort();

    if target.store_url.is_some() {
        settle(&ctx, args.payment_timeout_seconds, &bar).await;
    }
    bar.finish_and_clear();

    let c = &ctx.counters;
    let holds = c.holds.load(Ordering::Relaxed);
    let sold_out = *sold_out.lock().expect("sold-out lock");
    let holds_per_second = match sold_out {
        Some((seconds, holds_then)) if seconds > 0.0 => holds_then as f64 / seconds,
        _ => holds as f64 / load_seconds,
    };
    let recorder = std::mem::take(&mut *ctx.recorder.lock().expect("recorder lock"));
    let latency_ms = recorder
        .latency_micros
        .iter()
        .map(|(op, h)| {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
            (
                (*op).to_string(),
                OpLatency {
                    count: h.len(),
                    p50: ms(0.50),
                    p90: ms(0.90),
                    p99: ms(0.99),
                    max: h.max() as f64 / 1_000.0,
                },
            )
        })
        .collect();
    Ok(OnsaleReport {
        backend: target.backend.clone(),
        url: target.base.clone(),
        show_id: ctx.venue.show_id.clone(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        rate: args.rate,
        concurrency,
        seats: ctx.venue.sections.len() as u32
            * ctx.venue.rows_per_section
            * ctx.venue.seats_per_row,
        ga_capacity: args.ga_capacity,
        buyers: ctx.buyers.len(),
        seed: args.seed,
        idempotency_keys: !args.no_idempotency_keys,
        setup_seconds,
        load_seconds,
        drain_seconds,
        sessions: c.sessions.load(Ordering::Relaxed),
        arrivals_dropped: c.dropped.load(Ordering::Relaxed),
        hold_attempts: c.hold_attempts.load(Ordering::Relaxed),
        holds,
        seats_held: c.seats_held.load(Ordering::Relaxed),
        holds_per_second,
        hold_attempts_per_second: c.hold_attempts.load(Ordering::Relaxed) as f64 / load_seconds,
        checkouts_confirmed: c.confirmed.load(Ordering::Relaxed),
        checkouts_pending: c.pending.load(Ordering::Relaxed),
        checkouts_declined: c.declined.load(Ordering::Relaxed),
        checkouts_other: c.checkout_other.load(Ordering::Relaxed),
        checkouts_per_second: c.confirmed.load(Ordering::Relaxed) as f64 / drain_seconds,
        cancels: c.cancels.load(Ordering::Relaxed),
        abandoned: c.abandoned.load(Ordering::Relaxed),
        waitlist_joins: c.waitlist_joins.load(Ordering::Relaxed),
        sold_out_after_seconds: sold_out.map(|(seconds, _)| seconds),
        latency_ms,
        errors: recorder.errors,
        server_errors: c.server_errors.load(Ordering::Relaxed),
        cpu: Some(cpu),
        audit: None,
    })
}

pub(crate) fn progress_bar(seconds: Option<u64>) -> ProgressBar {
    let bar = match seconds {
        Some(seconds) => ProgressBar::new(seconds * 1_000).with_style(
            ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {msg}")
                .expect("a valid template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] until sold out: {msg}")
                .expect("a valid template"),
        ),
    };
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Updates the progress bar and watches the show for the moment it sells out (every seat
/// and place held or sold), as the public show endpoint tells it.
async fn monitor(
    ctx: Arc<Ctx>,
    started: Instant,
    bar: ProgressBar,
    sold_out: Arc<Mutex<Option<(f64, u64)>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let c = &ctx.counters;
        let holds = c.holds.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (holds - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, holds);
        bar.set_position(started.elapsed().as_millis() as u64);
        bar.set_message(format!(
            "{holds} holds ({rate:.0}/s), {} confirmed, {} errors{}",
            c.confirmed.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
            if sold_out.lock().expect("sold-out lock").is_some() {
                ", sold out"
            } else {
                ""
            }
        ));
        if sold_out.lock().expect("sold-out lock").is_some() {
            continue;
        }
        let url = format!("{}/v1/shows/{}", ctx.base, ctx.venue.show_id);
        let Ok(response) = ctx.client.get(url).send().await else {
            continue;
        };
        let Ok(show) = response.json::<Value>().await else {
            continue;
        };
        let available: u64 = show["sections"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["available"].as_u64()).sum())
            .unwrap_or(u64::MAX);
        if show["status"] == "sold_out" || available == 0 {
            *sold_out.lock().expect("sold-out lock") = Some((
                started.elapsed().as_secs_f64(),
                c.holds.load(Ordering::Relaxed),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Setup

pub(crate) async fn setup(
    show_spec: &ShowSpec,
    target: &Target,
    client: &reqwest::Client,
) -> anyhow::Result<(Venue, Vec<Buyer>, Recorder)> {
    let base = &target.base;
    let answer: Value = client
        .post(format!("{base}/v1/auth/token"))
        .json(&json!({ "email": target.organizer.0, "password": target.organizer.1 }))
        .send()
        .await?
        .json()
        .await?;
    let organizer = answer["access_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("organizer sign-in refused: {answer}"))?
        .to_string();

    let rows_per_section = show_spec
        .seats
        .div_ceil(show_spec.sections)
        .div_ceil(show_spec.seats_per_row);
    // The front third of each section is tier A.
    let sections: Vec<String> = (1..=show_spec.sections)
        .map(|s| format!("{}", 100 + s))
        .collect();
    let mut section_defs: Vec<Value> = sections
        .iter()
        .map(|id| {
            json!({
                "id": id, "name": format!("Section {id}"), "kind": "seated",
                "rows": (1..=rows_per_section).map(|r| json!({
                    "row": format!("R{r}"),
                    "seats": show_spec.seats_per_row,
                    "tier": if r <= rows_per_section.div_ceil(3) { "A" } else { "B" },
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if show_spec.ga_capacity > 0 {
        section_defs.push(json!({
            "id": "floor", "name": "Floor", "kind": "general_admission",
            "capacity": show_spec.ga_capacity, "tier": "B",
        }));
    }
    let show = json!({
        "name": "On-sale bench",
        "venue": {"name": "Arena", "city": "Lisbon", "country": "PT", "timezone": "Europe/Lisbon"},
        "starts_at": (Utc::now() + chrono::Duration::days(60)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "currency": "EUR",
        "limits": {
            "max_tickets_per_user": boxoffice_domain::show::MAX_TICKETS_PER_USER_MAX,
            "max_active_holds_per_user": boxoffice_domain::show::ACTIVE_HOLDS_PER_USER_MAX,
            "hold_ttl_seconds": show_spec.hold_ttl_seconds,
            "payment_timeout_seconds": show_spec.payment_timeout_seconds,
            "waitlist_claim_seconds": show_spec.hold_ttl_seconds.max(boxoffice_domain::show::WAITLIST_CLAIM_SECONDS_MIN),
        },
        "price_tiers": [{"id": "A", "name": "Front", "price": "120.00"},
                        {"id": "B", "name": "Back", "price": "60.00"}],
        "sections": section_defs,
    });
    let answer: Value = client
        .post(format!("{base}/v1/shows"))
        .bearer_auth(&organizer)
        .json(&show)
        .send()
        .await?
        .json()
        .await?;
    let show_id = answer["show_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("show not created: {answer}"))?
        .to_string();
    let venue = Venue {
        show_id,
        sections,
        rows_per_section,
        seats_per_row: show_spec.seats_per_row,
        hot_rows: (rows_per_section / 5).max(1),
        ga: show_spec.ga_capacity > 0,
    };

    // Buyers register and sign in over HTTP, a bounded number at a time: each is two
    // password hashes on the server, which is what setup time goes to.
    let setup_ctx = Arc::new(Ctx::new(
        client.clone(),
        base.clone(),
        Venue {
            show_id: String::new(),
            sections: Vec::new(),
            rows_per_section: 0,
            seats_per_row: 0,
            hot_rows: 0,
            ga: false,
        },
        Vec::new(),
        SessionMix::default(),
        Recorder::default(),
    ));
    let bar = ProgressBar::new(show_spec.buyers as u64).with_style(
        ProgressStyle::with_template(
            "registering buyers [{elapsed_precise}] {wide_bar} {pos}/{len}",
        )
        .expect("a valid template"),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..SETUP_REQUESTS_IN_FLIGHT.min(show_spec.buyers) {
        let (ctx, next, bar, run) = (
            Arc::clone(&setup_ctx),
            Arc::clone(&next),
            bar.clone(),
            run.clone(),
        );
        let total = show_spec.buyers;
        workers.spawn(async move {
            let mut tokens = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(tokens);
                }
                let email = format!("buyer{i}-{}@onsale.bench", &run[..12]);
                let registered = ctx
                    .send(
                        "register",
                        ctx.client
                            .post(format!("{}/v1/auth/register", ctx.base))
                            .json(&json!({ "email": email, "password": PASSWORD })),
                    )
                    .await;
                anyhow::ensure!(
                    registered.status == 201,
                    "registration refused ({}): {}",
                    registered.status,
                    registered.body
                );
                let signed_in = ctx
                    .send(
                        "token",
                        ctx.client
                            .post(format!("{}/v1/auth/token", ctx.base))
                            .json(&json!({ "email": email, "password": PASSWORD })),
                    )
                    .await;
                let token = signed_in.body["access_token"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("sign-in refused: {}", signed_in.body))?;
                tokens.push(Buyer {
                    token: token.to_string(),
                });
                bar.inc(1);
            }
        });
    }
    let mut buyers = Vec::with_capacity(show_spec.buyers);
    while let Some(done) = workers.join_next().await {
        buyers.extend(done??);
    }
    bar.finish_and_clear();
    let recorder = std::mem::take(&mut *setup_ctx.recorder.lock().expect("recorder lock"));
    Ok((venue, buyers, recorder))
}

// ---------------------------------------------------------------------------------------
// The audit

/// Reads the show's partition of the event log straight from the store and checks it
/// with `boxctl verify`'s checker, as judged at `now`.
async fn audit(
    store_url: &str,
    chain_key_file: Option<&Path>,
    show_id: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Audit> {
    use boxoffice_replay_tools::verify;
    let store = boxoffice_store::connect(store_url, None).await?;
    let chain_key = match chain_key_file {
        Some(path) if path.exists() => Some(boxoffice_store::chain::ChainKey::load(path)?),
        _ => None,
    };
    let show_id = show_id.to_string();
    let config = verify::VerifyConfig {
        now,
        grace: chrono::Duration::seconds(AUDIT_GRACE_SECONDS),
        chain_key,
        ..verify::VerifyConfig::default()
    };
    let checked = verify::run(store, Some(show_id), config, false).await?;
    anyhow::ensure!(
        checked.events > 0,
        "the show has no events in {store_url}: is it the target server's store?"
    );
    let count = |rule: &str| checked.violations.iter().filter(|v| v.rule == rule).count() as u64;
    let named = count("1") + count("2") + count("4");
    Ok(Audit {
        events: checked.events,
        chain_checked: checked.chain_checked,
        seats_sold_twice: count("1"),
        payments_without_tickets: count("2"),
        holds_past_deadline: count("4"),
        other_violations: checked.violations.len() as u64 - named,
        truncated: checked.truncated,
        samples: checked
            .violations
            .iter()
            .take(VIOLATION_SAMPLES_MAX)
            .map(|v| format!("rule {} at {}: {}", v.rule, v.position, v.message))
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------
// Output

fn print(r: &OnsaleReport) {
    let how = match (r.rate, r.concurrency) {
        (Some(rate), _) => format!("open loop, {rate} arrivals/s"),
        (None, Some(users)) => format!("closed loop, {users} buyers"),
        (None, None) => r.mode.clone(),
    };
    println!(
        "on-sale on {} ({}), {how}: {} seats + {} on the floor, {} buyer accounts, seed {}, {}",
        r.backend,
        r.url,
        r.seats,
        r.ga_capacity,
        r.buyers,
        r.seed,
        if r.idempotency_keys {
            "idempotency keys on"
        } else {
            "no idempotency keys"
        }
    );
    println!(
        "  setup {:.1} s; load {:.1} s (all buyers done after {:.1} s); {} buyers arrived, {} arrivals dropped",
        r.setup_seconds, r.load_seconds, r.drain_seconds, r.sessions, r.arrivals_dropped
    );
    println!(
        "  holds: {} of {} attempts ({} seats) = {:.0} holds/s{}, {:.0} attempts/s",
        r.holds,
        r.hold_attempts,
        r.seats_held,
        r.holds_per_second,
        if r.sold_out_after_seconds.is_some() {
            " until sold out"
        } else {
            ""
        },
        r.hold_attempts_per_second
    );
    match r.sold_out_after_seconds {
        Some(s) => println!("  sold out after {s:.1} s"),
        None => println!("  not sold out"),
    }
    println!(
        "  checkouts: {} confirmed ({:.0}/s), {} pending, {} declined, {} other; {} cancelled, {} abandoned; {} joined the waitlist",
        r.checkouts_confirmed,
        r.checkouts_per_second,
        r.checkouts_pending,
        r.checkouts_declined,
        r.checkouts_other,
        r.cancels,
        r.abandoned,
        r.waitlist_joins
    );
    println!(
        "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency ms", "count", "p50", "p90", "p99", "max"
    );
    for (op, l) in &r.latency_ms {
        println!(
            "  {:<10} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            op, l.count, l.p50, l.p90, l.p99, l.max
        );
    }
    if r.errors.is_empty() {
        println!("  no errors");
    } else {
        let errors: Vec<String> = r.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!("  answers other than 2xx: {}", errors.join(", "));
    }
    if r.server_errors > 0 {
        println!(
            "  WARNING: {} server errors (5xx or transport failures)",
            r.server_errors
        );
    }
    if let Some(cpu) = &r.cpu {
        cpu.print("hold attempt");
    }
    match &r.audit {
        Some(a) => {
            println!(
                "  audit of the show's event log ({} events, hash chain {}): {} seats sold twice, {} payments captured without tickets, {} holds alive past their deadline, {} other violations{}",
                a.events,
                match a.chain_checked {
                    Some(n) => format!("checked over {n}"),
                    None => "not checked".into(),
                },
                a.seats_sold_twice,
                a.payments_without_tickets,
                a.holds_past_deadline,
                a.other_violations,
                if a.truncated {
                    " (stopped early: at least)"
                } else {
                    ""
                }
            );
            for sample in &a.samples {
                println!("    {sample}");
            }
        }
        None => println!("  audit: not run (the target's store is unknown)"),
    }
}

/// Prints two reports side by side with the change from A to B in per cent.
fn compare(a: &Path, b: &Path) -> anyhow::Result<()> {
    let read = |p: &Path| -> anyhow::Result<OnsaleReport> {
        let text =
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let (ra, rb) = (read(a)?, read(b)?);
    let mut rows: Vec<(String, Option<f64>, Option<f64>)> = vec![
        ("backend".into(), None, None),
        (
            "holds/s".into(),
            Some(ra.holds_per_second),
            Some(rb.holds_per_second),
        ),
        (
            "hold attempts/s".into(),
            Some(ra.hold_attempts_per_second),
            Some(rb.hold_attempts_per_second),
        ),
        (
            "checkouts/s".into(),
            Some(ra.checkouts_per_second),
            Some(rb.checkouts_per_second),
        ),
        ("holds".into(), Some(ra.holds as f64), Some(rb.holds as f64)),
        (
            "checkouts confirmed".into(),
            Some(ra.checkouts_confirmed as f64),
            Some(rb.checkouts_confirmed as f64),
        ),
        (
            "sold out after s".into(),
            ra.sold_out_after_seconds,
            rb.sold_out_after_seconds,
        ),
        (
            "errors (non-2xx)".into(),
            Some(ra.errors.values().sum::<u64>() as f64),
            Some(rb.errors.values().sum::<u64>() as f64),
        ),
        (
            "server errors".into(),
            Some(ra.server_errors as f64),
            Some(rb.server_errors as f64),
        ),
        (
            "anomalies".into(),
            ra.audit.as_ref().map(|x| x.anomalies() as f64),
            rb.audit.as_ref().map(|x| x.anomalies() as f64),
        ),
    ];
    let ops: std::collections::BTreeSet<&String> =
        ra.latency_ms.keys().chain(rb.latency_ms.keys()).collect();
    for op in ops {
        let (la, lb) = (ra.latency_ms.get(op), rb.latency_ms.get(op));
        for (name, pick) in [
            ("p50", (|l: &OpLatency| l.p50) as fn(&OpLatency) -> f64),
            ("p90", |l| l.p90),
            ("p99", |l| l.p99),
            ("max", |l| l.max),
        ] {
            rows.push((format!("{op} {name} ms"), la.map(pick), lb.map(pick)));
        }
    }
    let name_a = a.display().to_string();
    let name_b = b.display().to_string();
    println!("{:<22} {:>16} {:>16} {:>9}", "", name_a, name_b, "change");
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    for (label, va, vb) in rows {
        if label == "backend" {
            println!(
                "{:<22} {:>16} {:>16}",
                label,
                format!("{} {}", ra.backend, ra.mode),
                format!("{} {}", rb.backend, rb.mode)
            );
            continue;
        }
        let change = match (va, vb) {
            (Some(x), Some(y)) if x != 0.0 => format!("{:+.1}%", (y - x) / x * 100.0),
            _ => "-".into(),
        };
        println!(
            "{:<22} {:>16} {:>16} {:>9}",
            label,
            cell(va),
            cell(vb),
            change
        );
    }
    Ok(())
}
