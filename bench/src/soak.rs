//! `boxoffice-bench soak`: a bounded soak of a Boxoffice server over real HTTP, to see
//! whether its memory stays flat and its latency does not drift under a steady load.
//!
//! It reuses the on-sale bench's parts (`onsale`): the server it starts as a separate
//! process (or one given with `--url`), the show and buyer setup, the HTTP client, the
//! buyer sessions and the audit of the show's event log. Buyers arrive open-loop at a
//! steady `--rate` for `--minutes`. So that the show keeps selling for the whole run
//! instead of selling out or slowly filling its best rows, seats are recycled: by default
//! most holds are cancelled (50%) or abandoned to expire (30%) and only 20% are checked
//! out, and the show is sized from the run (four times the seats the checkouts can sell,
//! at least 20,000), so the load the server sees is the same in the last minute as in the
//! first.
//!
//! Every `--window-seconds` it takes a sample: the server process's resident set size
//! (`VmRSS` in `/proc/<pid>/status`), the p50/p99 latency of the holds and checkouts
//! answered in that window, the operations answered and the errors. At the end it prints
//! the windows and three verdicts: memory is flat (the median RSS of the last quarter of
//! the windows is within `--max-rss-growth-percent` of the first quarter's), the hold p99
//! does not drift (the last quarter's median p99 is below `--max-latency-drift` times the
//! first quarter's), and the event log audit finds no anomaly. The first
//! `--warmup-windows` (allocator pools, caches and connection pools filling up) are not
//! judged. It exits non-zero when a verdict fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::onsale::{self, Audit, Counters, OpenLoop, SessionMix, Target};

/// A run without a big enough show would fill its best rows: the show gets this many
/// times the seats the checkouts can sell.
const SEATS_HEADROOM_FACTOR: u64 = 4;
/// The smallest show the soak sizes (the on-sale bench's default).
const SEATS_AUTO_MIN: u32 = 20_000;
/// Seats one buyer asks for on average (1 to `SEATS_PER_BUYER_MAX`, uniformly), in tenths.
const SEATS_PER_BUYER_MEAN_TENTHS: u64 = (1 + onsale::SEATS_PER_BUYER_MAX as u64) * 10 / 2;
/// A soak longer than this is not "bounded".
const MINUTES_MAX: u64 = 24 * 60;
/// Windows the run may be cut into, at most.
const WINDOWS_MAX: u64 = 10_000;

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Buyers arriving per second (open loop), steady for the whole run.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Length of the load.
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Length of one sample window.
    #[arg(long, default_value_t = 10)]
    window_seconds: u64,
    /// Windows at the start not judged (warm-up).
    #[arg(long, default_value_t = 1)]
    warmup_windows: usize,
    /// Memory is flat when the median RSS of the last quarter of the judged windows is
    /// less than this much (per cent) above the first quarter's.
    #[arg(long, default_value_t = 20.0)]
    max_rss_growth_percent: f64,
    /// Latency does not drift when the median hold p99 of the last quarter of the judged
    /// windows is below this many times the first quarter's.
    #[arg(long, default_value_t = 2.0)]
    max_latency_drift: f64,
    #[command(flatten)]
    server: onsale::ServerArgs,
    /// With `--url`: the server's process id on this machine, for its RSS (without it
    /// there is no memory verdict).
    #[arg(long, requires = "url")]
    server_pid: Option<u32>,
    /// Seats in the seated sections (default: four times what the checkouts can sell,
    /// at least 20,000).
    #[arg(long)]
    seats: Option<u32>,
    #[arg(long, default_value_t = 4)]
    sections: u32,
    #[arg(long, default_value_t = 50)]
    seats_per_row: u32,
    /// Places on the general-admission floor (default: a quarter of the seats).
    #[arg(long)]
    ga_capacity: Option<u32>,
    /// Buyer accounts registered during setup; arrivals take them in turn.
    #[arg(long, default_value_t = 1_000)]
    buyers: usize,
    /// Open loop: buyers in flight at most; arrivals beyond it are dropped and counted.
    #[arg(long, default_value_t = 5_000)]
    max_in_flight: usize,
    /// The show's hold time (10 s at least).
    #[arg(long, default_value_t = onsale::HOLD_TTL_SECONDS_DEFAULT)]
    hold_ttl_seconds: u32,
    /// The show's payment timeout (5 s at least).
    #[arg(long, default_value_t = 5)]
    payment_timeout_seconds: u32,
    /// `?wait_seconds=` of each checkout.
    #[arg(long, default_value_t = 5)]
    checkout_wait_seconds: u64,
    /// Of the holds: per cent checked out; `--abandon-percent` are left to expire, the
    /// rest cancelled (seats are recycled, so the show keeps selling).
    #[arg(long, default_value_t = 20)]
    checkout_percent: u32,
    #[arg(long, default_value_t = 30)]
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
    /// Send holds and checkouts without an `Idempotency-Key`.
    #[arg(long)]
    no_idempotency_keys: bool,
    /// Write the report (settings, windows, verdicts) as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------
// The report

#[derive(Debug, Serialize)]
pub struct SoakReport {
    /// `sqlite`, `postgres` (the bench started the server) or `external`.
    pub backend: String,
    pub url: String,
    pub show_id: String,
    /// The server process whose RSS was sampled.
    pub server_pid: Option<u32>,
    pub rate: u32,
    pub minutes: u64,
    pub window_seconds: u64,
    pub warmup_windows: usize,
    pub seats: u32,
    pub ga_capacity: u32,
    pub buyers: usize,
    pub checkout_percent: u32,
    pub abandon_percent: u32,
    pub seed: u64,
    pub idempotency_keys: bool,
    pub setup_seconds: f64,
    /// From the first arrival to the last.
    pub load_seconds: f64,
    /// From the first arrival until every buyer in flight was done.
    pub drain_seconds: f64,
    /// The server's RSS once the buyers in flight were done.
    pub rss_kib_after_drain: Option<u64>,
    pub totals: Totals,
    pub windows: Vec<Window>,
    pub audit: Option<Audit>,
    pub verdict: Option<Verdict>,
}

/// Counts since the load started (or, in a window, during it).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    /// Buyers who arrived (sessions started).
    pub arrivals: u64,
    /// Arrivals dropped because `--max-in-flight` buyers were in flight.
    pub dropped: u64,
    pub hold_attempts: u64,
    pub holds: u64,
    pub checkouts_confirmed: u64,
    pub checkouts_pending: u64,
    pub checkouts_declined: u64,
    pub cancels: u64,
    pub abandoned: u64,
    pub waitlist_joins: u64,
}

impl Totals {
    fn read(c: &Counters) -> Self {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Self {
            arrivals: load(&c.sessions),
            dropped: load(&c.dropped),
            hold_attempts: load(&c.hold_attempts),
            holds: load(&c.holds),
            checkouts_confirmed: load(&c.confirmed),
            checkouts_pending: load(&c.pending),
            checkouts_declined: load(&c.declined),
            cancels: load(&c.cancels),
            abandoned: load(&c.abandoned),
            waitlist_joins: load(&c.waitlist_joins),
        }
    }

    /// What happened since `before`.
    fn since(&self, before: &Self) -> Self {
        Self {
            arrivals: self.arrivals - before.arrivals,
            dropped: self.dropped - before.dropped,
            hold_attempts: self.hold_attempts - before.hold_attempts,
            holds: self.holds - before.holds,
            checkouts_confirmed: self.checkouts_confirmed - before.checkouts_confirmed,
            checkouts_pending: self.checkouts_pending - before.checkouts_pending,
            checkouts_declined: self.checkouts_declined - before.checkouts_declined,
            cancels: self.cancels - before.cancels,
            abandoned: self.abandoned - before.abandoned,
            waitlist_joins: self.waitlist_joins - before.waitlist_joins,
        }
    }
}

/// Latency of the answers to one operation within a window, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct WindowLatency {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// One sample window. Requests count in the window in which their answer arrived.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub index: usize,
    /// Seconds since the load started, at the window's end.
    pub end_seconds: f64,
    pub seconds: f64,
    /// A warm-up window (not judged).
    pub warmup: bool,
    /// The server's resident set size at the window's end.
    pub rss_kib: Option<u64>,
    /// Buyers in flight at the window's end.
    pub in_flight: usize,
    pub counts: Totals,
    /// Requests answered in the window, every operation.
    pub operations: u64,
    pub hold_ms: Option<WindowLatency>,
    pub checkout_ms: Option<WindowLatency>,
    /// Answers a buyer expects now and then: 409 seats taken or sold out (the buyer tries
    /// another choice) and 402 declined cards (the simulator's `tok_declined`).
    pub expected_refusals: u64,
    /// Every other non-2xx answer and transport failure.
    pub errors: u64,
    /// Of `errors`: 5xx answers and transport failures.
    pub server_errors: u64,
    /// Every non-2xx answer by `"<status> <code>"` (`"transport <kind>"`).
    pub answers: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    /// Windows judged (after the warm-up, without a short last window).
    pub windows_judged: usize,
    /// Windows in each of the first and last quarters.
    pub quarter_windows: usize,
    /// None: the RSS was not sampled (an external server without `--server-pid`).
    pub memory: Option<MemoryVerdict>,
    pub latency: LatencyVerdict,
    /// None: no audit (an external server without `--database-url`).
    pub audit_anomalies: Option<u64>,
    pub pass: bool,
}

#[derive(Debug, Serialize)]
pub struct MemoryVerdict {
    pub first_quarter_median_kib: u64,
    pub last_quarter_median_kib: u64,
    pub growth_percent: f64,
    pub max_growth_percent: f64,
    pub flat: bool,
}

#[derive(Debug, Serialize)]
pub struct LatencyVerdict {
    /// Median of the windows' hold p99, milliseconds (None: no holds answered).
    pub first_quarter_hold_p99_ms: Option<f64>,
    pub last_quarter_hold_p99_ms: Option<f64>,
    pub ratio: Option<f64>,
    pub max_ratio: f64,
    pub no_drift: bool,
}

// ---------------------------------------------------------------------------------------
// Entry point

pub async fn main(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    anyhow::ensure!(args.buyers > 0, "--buyers must be positive");
    anyhow::ensure!(
        (1..=MINUTES_MAX).contains(&args.minutes),
        "--minutes must be 1 to {MINUTES_MAX}"
    );
    anyhow::ensure!(args.window_seconds > 0, "--window-seconds must be positive");
    anyhow::ensure!(
        args.checkout_percent + args.abandon_percent <= 100,
        "--checkout-percent plus --abandon-percent must be at most 100"
    );
    anyhow::ensure!(
        args.sections > 0 && args.seats_per_row > 0,
        "--sections and --seats-per-row must be positive"
    );
    anyhow::ensure!(
        args.max_rss_growth_percent > 0.0 && args.max_latency_drift > 1.0,
        "--max-rss-growth-percent must be positive and --max-latency-drift above 1"
    );
    let load_seconds = args.minutes * 60;
    let windows_total = load_seconds.div_ceil(args.window_seconds);
    anyhow::ensure!(
        windows_total <= WINDOWS_MAX,
        "at most {WINDOWS_MAX} windows: raise --window-seconds"
    );
    anyhow::ensure!(
        windows_total >= args.warmup_windows as u64 + 2,
        "{windows_total} windows leave fewer than 2 to judge after {} warm-up windows",
        args.warmup_windows
    );

    // Sizing: the seats the checkouts can sell in the run, at most (every checkout paid).
    let sold_max = u64::from(args.rate) * load_seconds * SEATS_PER_BUYER_MEAN_TENTHS / 10
        * u64::from(args.checkout_percent)
        / 100;
    let row_block = u64::from(args.sections * args.seats_per_row);
    let seats_cap = u64::from(boxoffice_domain::show::SEATS_PER_SHOW_MAX) / row_block * row_block;
    let seats = match args.seats {
        Some(seats) => seats,
        None => (sold_max * SEATS_HEADROOM_FACTOR)
            .max(u64::from(SEATS_AUTO_MIN))
            .div_ceil(row_block)
            .saturating_mul(row_block)
            .min(seats_cap) as u32,
    };
    anyhow::ensure!(seats > 0, "--seats must be positive");
    let ga_capacity = args.ga_capacity.unwrap_or(seats / 4);
    let capacity = u64::from(seats) + u64::from(ga_capacity);
    if sold_max * 2 > capacity {
        eprintln!(
            "warning: the checkouts may sell up to {sold_max} of the show's {capacity} places; \
             the best rows will fill and the load change as the run goes (raise --seats or \
             lower --checkout-percent)"
        );
    }
    // Each account buys its share of the sold seats; past the show's per-buyer ticket
    // limit its holds would be refused, and the load change as the run goes.
    let tickets_per_buyer_max = sold_max.div_ceil(args.buyers as u64);
    let tickets_limit = u64::from(boxoffice_domain::show::MAX_TICKETS_PER_USER_MAX);
    anyhow::ensure!(
        tickets_per_buyer_max * 2 <= tickets_limit,
        "{} buyers would buy up to {tickets_per_buyer_max} tickets each, too close to the \
         limit of {tickets_limit}: raise --buyers",
        args.buyers
    );

    let external = args.server.external()?;
    let spec = args.server.spec(args.paysim_latency_ms);
    let show_spec = onsale::ShowSpec {
        seats,
        sections: args.sections,
        seats_per_row: args.seats_per_row,
        ga_capacity,
        buyers: args.buyers,
        hold_ttl_seconds: args.hold_ttl_seconds,
        payment_timeout_seconds: args.payment_timeout_seconds,
    };
    let args = &args;
    let show_spec = &show_spec;
    let (mut report, audit) =
        onsale::against_server(external, &spec, args.keep_data, |target, pid| async move {
            let report = run(args, show_spec, &target, pid.or(args.server_pid)).await?;
            let show_id = report.show_id.clone();
            Ok((report, show_id))
        })
        .await?;
    report.audit = audit;
    let verdict = judge(&report, args);
    let pass = verdict.pass;
    report.verdict = Some(verdict);
    print(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    anyhow::ensure!(pass, "the soak failed a verdict");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The load

async fn run(
    args: &SoakArgs,
    show_spec: &onsale::ShowSpec,
    target: &Target,
    pid: Option<u32>,
) -> anyhow::Result<SoakReport> {
    if pid.is_none() {
        eprintln!("no server process id (pass --server-pid with --url): RSS not sampled");
    }
    let client = onsale::http_client(args.max_in_flight.max(onsale::SETUP_REQUESTS_IN_FLIGHT))?;
    let setup_started = Instant::now();
    let (venue, buyers, _) = onsale::setup(show_spec, target, &client).await?;
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    let mix = SessionMix {
        checkout_percent: args.checkout_percent,
        abandon_percent: args.abandon_percent,
        checkout_wait_seconds: args.checkout_wait_seconds,
        idempotency_keys: !args.no_idempotency_keys,
    };
    // A fresh recorder: the setup's registrations are not part of any window.
    let ctx = Arc::new(onsale::Ctx::new(
        client,
        target.base.clone(),
        venue,
        buyers,
        mix,
        onsale::Recorder::default(),
    ));
    eprintln!(
        "setup: show {} ({} seats + {} on the floor), {} buyers in {:.1} s; soak: {} arrivals/s for {} min, {} s windows",
        ctx.show_id(),
        ctx.seated_capacity(),
        show_spec.ga_capacity,
        ctx.buyer_accounts(),
        setup_seconds,
        args.rate,
        args.minutes,
        args.window_seconds
    );

    let load = Duration::from_secs(args.minutes * 60);
    let window = Duration::from_secs(args.window_seconds);
    let windows_total = (args.minutes * 60).div_ceil(args.window_seconds) as usize;
    let bar = onsale::progress_bar(Some(args.minutes * 60));
    let started = Instant::now();
    let mut arrivals = OpenLoop::new(started, args.rate, args.max_in_flight, args.seed);
    let mut windows: Vec<Window> = Vec::with_capacity(windows_total);
    let mut before = Totals::default();
    let mut window_started = Duration::ZERO;
    while windows.len() < windows_total {
        // Window k ends at k times the window length, the last one at the end of the load.
        let window_ends = (window * (windows.len() as u32 + 1)).min(load);
        let elapsed = started.elapsed();
        if elapsed >= window_ends {
            // Arrivals that fell due by the end of the load still start (within a tick).
            arrivals.arrive_due(&ctx);
            let sample = take_sample(
                &ctx,
                windows.len(),
                window_started,
                elapsed,
                args.warmup_windows,
                pid,
                arrivals.in_flight(),
                &mut before,
            );
            bar.suspend(|| eprintln!("{}", window_line(&sample)));
            windows.push(sample);
            window_started = elapsed;
            continue;
        }
        arrivals.arrive_due(&ctx);
        bar.set_position(elapsed.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ctx.stop.store(true, Ordering::Relaxed);
    let load_seconds = started.elapsed().as_secs_f64();
    bar.set_message("load over; waiting for the buyers in flight");
    let mut tasks = arrivals.into_tasks();
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    let rss_kib_after_drain = pid.and_then(rss_kib);
    if target.store_url.is_some() {
        onsale::settle(&ctx, args.payment_timeout_seconds, &bar).await;
    }
    bar.finish_and_clear();

    Ok(SoakReport {
        backend: target.backend.clone(),
        url: target.base.clone(),
        show_id: ctx.show_id().to_string(),
        server_pid: pid,
        rate: args.rate,
        minutes: args.minutes,
        window_seconds: args.window_seconds,
        warmup_windows: args.warmup_windows,
        seats: ctx.seated_capacity(),
        ga_capacity: show_spec.ga_capacity,
        buyers: ctx.buyer_accounts(),
        checkout_percent: args.checkout_percent,
        abandon_percent: args.abandon_percent,
        seed: args.seed,
        idempotency_keys: !args.no_idempotency_keys,
        setup_seconds,
        load_seconds,
        drain_seconds,
        rss_kib_after_drain,
        totals: Totals::read(&ctx.counters),
        windows,
        audit: None,
        verdict: None,
    })
}

/// Ends a window: takes the latency and error records the buyers filled since the last
/// window (leaving empty ones), the counters' change and the server's RSS.
#[allow(clippy::too_many_arguments)]
fn take_sample(
    ctx: &onsale::Ctx,
    index: usize,
    window_started: Duration,
    now: Duration,
    warmup_windows: usize,
    pid: Option<u32>,
    in_flight: usize,
    before: &mut Totals,
) -> Window {
    let recorder = std::mem::take(&mut *ctx.recorder.lock().expect("recorder lock"));
    let totals = Totals::read(&ctx.counters);
    let counts = totals.since(before);
    *before = totals;
    let rss_kib = pid.and_then(rss_kib);
    let latency = |op: &str| recorder.latency_micros.get(op).and_then(window_latency);
    let (mut expected_refusals, mut errors, mut server_errors) = (0, 0, 0);
    for (answer, n) in &recorder.errors {
        let (status, code) = answer.split_once(' ').unwrap_or((answer.as_str(), ""));
        match (status, code) {
            ("409", "seats_unavailable" | "sold_out") | ("402", _) => expected_refusals += n,
            _ => {
                errors += n;
                if status == "transport" || status.starts_with('5') {
                    server_errors += n;
                }
            }
        }
    }
    Window {
        index,
        end_seconds: now.as_secs_f64(),
        seconds: (now - window_started).as_secs_f64(),
        warmup: index < warmup_windows,
        rss_kib,
        in_flight,
        counts,
        operations: recorder.latency_micros.values().map(Histogram::len).sum(),
        hold_ms: latency("hold"),
        checkout_ms: latency("checkout"),
        expected_refusals,
        errors,
        server_errors,
        answers: recorder.errors,
    }
}

fn window_latency(h: &Histogram<u64>) -> Option<WindowLatency> {
    if h.is_empty() {
        return None;
    }
    let ms = |micros: u64| micros as f64 / 1_000.0;
    Some(WindowLatency {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.50)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
    })
}

/// The resident set size of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`), or
/// None if it cannot be read (no such process, not Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------------------
// The verdicts

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn judge(report: &SoakReport, args: &SoakArgs) -> Verdict {
    // A last window shorter than half the others has too few answers to compare.
    let full = report.window_seconds as f64 / 2.0;
    let judged: Vec<&Window> = report
        .windows
        .iter()
        .filter(|w| !w.warmup && w.seconds >= full)
        .collect();
    let quarter = (judged.len() / 4).max(1);
    let (first, last) = (
        &judged[..quarter.min(judged.len())],
        &judged[judged.len().saturating_sub(quarter)..],
    );
    let rss_median = |ws: &[&Window]| -> Option<f64> {
        let values: Vec<f64> = ws
            .iter()
            .filter_map(|w| w.rss_kib)
            .map(|k| k as f64)
            .collect();
        // Every window of the quarter must have been sampled for a fair median.
        (values.len() == ws.len()).then(|| median(values)).flatten()
    };
    let memory = match (rss_median(first), rss_median(last)) {
        (Some(a), Some(b)) if a > 0.0 => {
            let growth_percent = (b - a) / a * 100.0;
            Some(MemoryVerdict {
                first_quarter_median_kib: a.round() as u64,
                last_quarter_median_kib: b.round() as u64,
                growth_percent,
                max_growth_percent: args.max_rss_growth_percent,
                flat: growth_percent < args.max_rss_growth_percent,
            })
        }
        _ => None,
    };
    let p99_median = |ws: &[&Window]| {
        median(
            ws.iter()
                .filter_map(|w| w.hold_ms.as_ref().map(|l| l.p99))
                .collect(),
        )
    };
    let (a, b) = (p99_median(first), p99_median(last));
    let ratio = match (a, b) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    };
    let latency = LatencyVerdict {
        first_quarter_hold_p99_ms: a,
        last_quarter_hold_p99_ms: b,
        ratio,
        max_ratio: args.max_latency_drift,
        no_drift: ratio.is_some_and(|r| r < args.max_latency_drift),
    };
    let audit_anomalies = report.audit.as_ref().map(Audit::anomalies);
    // An RSS that could not be sampled is reported, not failed: with `--url` and no
    // `--server-pid` there is nothing to judge. A started server must be sampled.
    let memory_ok = match &memory {
        Some(m) => m.flat,
        None => report.backend == "external" && report.server_pid.is_none(),
    };
    let pass = judged.len() >= 2
        && memory_ok
        && latency.no_drift
        && audit_anomalies.is_none_or(|n| n == 0);
    Verdict {
        windows_judged: judged.len(),
        quarter_windows: quarter,
        memory,
        latency,
        audit_anomalies,
        pass,
    }
}

// ---------------------------------------------------------------------------------------
// Output

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn latency_cell(l: &Option<WindowLatency>) -> String {
    l.as_ref()
        .map_or("-".into(), |l| format!("{:.1} / {:.1}", l.p50, l.p99))
}

fn window_line(w: &Window) -> String {
    format!(
        "{:>4}{} {:>7.1} {:>8} {:>6} {:>6} {:>6} {:>6} {:>16} {:>16} {:>6} {:>6} {:>5} {:>6}",
        w.index,
        if w.warmup { "*" } else { " " },
        w.end_seconds,
        mib(w.rss_kib),
        w.counts.arrivals,
        w.operations,
        w.counts.holds,
        w.counts.checkouts_confirmed,
        latency_cell(&w.hold_ms),
        latency_cell(&w.checkout_ms),
        w.expected_refusals,
        w.errors,
        w.server_errors,
        w.in_flight,
    )
}

fn print(r: &SoakReport) {
    println!(
        "soak on {} ({}): {} arrivals/s for {} min, {} s windows ({} warm-up); show {} seats + {} on the floor, \
         {} buyer accounts; of the holds {}% checked out, {}% abandoned, the rest cancelled; seed {}, {}",
        r.backend,
        r.url,
        r.rate,
        r.minutes,
        r.window_seconds,
        r.warmup_windows,
        r.seats,
        r.ga_capacity,
        r.buyers,
        r.checkout_percent,
        r.abandon_percent,
        r.seed,
        if r.idempotency_keys {
            "idempotency keys on"
        } else {
            "no idempotency keys"
        }
    );
    println!(
        "{:>5} {:>7} {:>8} {:>6} {:>6} {:>6} {:>6} {:>16} {:>16} {:>6} {:>6} {:>5} {:>6}",
        "win",
        "end s",
        "RSS MiB",
        "buyers",
        "ops",
        "holds",
        "paid",
        "hold p50/p99 ms",
        "chk p50/p99 ms",
        "refus",
        "errors",
        "5xx",
        "flight"
    );
    for w in &r.windows {
        println!("{}", window_line(w));
    }
    println!(
        "  (* warm-up, not judged; refus: 409 seats taken and 402 declined cards; errors: other non-2xx, of which 5xx and transport failures)"
    );
    let t = &r.totals;
    println!(
        "  totals: {} buyers arrived ({} dropped), {} holds of {} attempts, {} checkouts confirmed, {} pending, {} declined, \
         {} cancelled, {} abandoned, {} joined the waitlist; load {:.1} s, all buyers done after {:.1} s; RSS after the drain {} MiB",
        t.arrivals,
        t.dropped,
        t.holds,
        t.hold_attempts,
        t.checkouts_confirmed,
        t.checkouts_pending,
        t.checkouts_declined,
        t.cancels,
        t.abandoned,
        t.waitlist_joins,
        r.load_seconds,
        r.drain_seconds,
        mib(r.rss_kib_after_drain),
    );
    let answers: BTreeMap<&str, u64> =
        r.windows
            .iter()
            .flat_map(|w| &w.answers)
            .fold(BTreeMap::new(), |mut all, (k, n)| {
                *all.entry(k.as_str()).or_default() += n;
                all
            });
    if !answers.is_empty() {
        let answers: Vec<String> = answers.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!("  answers other than 2xx: {}", answers.join(", "));
    }
    let Some(v) = &r.verdict else { return };
    let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!(
        "verdicts over {} judged windows (first and last quarter: {} windows each):",
        v.windows_judged, v.quarter_windows
    );
    match &v.memory {
        Some(m) => println!(
            "  {} memory {}: median RSS {} MiB -> {} MiB ({:+.1}%, limit {:.0}%)",
            pass(m.flat),
            if m.flat { "flat" } else { "grows" },
            mib(Some(m.first_quarter_median_kib)),
            mib(Some(m.last_quarter_median_kib)),
            m.growth_percent,
            m.max_growth_percent
        ),
        None if r.backend == "external" && r.server_pid.is_none() => {
            println!("  ---- memory: not measured (pass --server-pid with --url)")
        }
        None => println!("  FAIL memory: the server's RSS could not be sampled in every window"),
    }
    let l = &v.latency;
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    println!(
        "  {} latency {}: median hold p99 {} ms -> {} ms (x{}, limit x{:.1})",
        pass(l.no_drift),
        if l.no_drift {
            "does not drift"
        } else {
            "drifts"
        },
        ms(l.first_quarter_hold_p99_ms),
        ms(l.last_quarter_hold_p99_ms),
        l.ratio.map_or("-".into(), |r| format!("{r:.2}")),
        l.max_ratio
    );
    match (&r.audit, v.audit_anomalies) {
        (Some(a), Some(n)) => {
            println!(
                "  {} audit of the show's event log ({} events, hash chain {}): {} seats sold twice, {} payments without tickets, \
                 {} holds alive past their deadline, {} other violations{}",
                pass(n == 0),
                a.events,
                a.chain_checked
                    .map_or("not checked".into(), |n| format!("checked over {n}")),
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
        _ => println!("  ---- audit: not run (the target's store is unknown)"),
    }
    if v.windows_judged < 2 {
        println!("  FAIL fewer than 2 windows to judge");
    }
    println!("soak {}", if v.pass { "passed" } else { "FAILED" });
}
