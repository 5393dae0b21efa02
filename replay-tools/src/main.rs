//! `boxctl`: replay, time travel, verification and export over the Boxoffice event log.
//! `main` only parses the command line and wires the store to the subcommand.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use boxoffice_domain::ShowId;
use boxoffice_replay_tools::export::{self, What};
use boxoffice_replay_tools::point::Point;
use boxoffice_replay_tools::replay::{self, Target};
use boxoffice_replay_tools::seatmap;
use boxoffice_replay_tools::verify::{self, VerifyConfig};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "boxctl",
    version,
    about = "Replay, time-travel, verify and export the Boxoffice event log"
)]
struct Cli {
    /// The event store: postgres://… or sqlite://path.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Machine output: JSON (lines) on stdout, no progress bars.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The history of a stream or a show, one line per event, as it happened.
    Replay(ReplayArgs),
    /// A show's seat map as it was at a log position or a time.
    Seatmap(SeatmapArgs),
    /// Checks the log against the rules of EVENTS.md; exit 1 with the first offending
    /// positions if any rule is broken.
    Verify(VerifyArgs),
    /// Orders, tickets or events as CSV.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "target")]
struct ReplayTarget {
    /// One stream: seat-…, reservation-…, show-…, pool-…, waitlist-….
    #[arg(long)]
    stream: Option<String>,
    /// Every stream of one show (shw_…), in log order.
    #[arg(long)]
    show: Option<ShowId>,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    target: ReplayTarget,
    /// Stop after this log position or RFC 3339 time (inclusive).
    #[arg(long, value_name = "POSITION|TIME")]
    until: Option<Point>,
}

#[derive(Debug, Args)]
struct SeatmapArgs {
    /// The show (shw_…).
    #[arg(long)]
    show: ShowId,
    /// The log position or RFC 3339 time to show the map at (default: now).
    #[arg(long, value_name = "POSITION|TIME")]
    at: Option<Point>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Verify one show's partition only (shw_…).
    #[arg(long)]
    show: Option<ShowId>,
    /// The moment the log is judged at for rule 4 (holds still open past their
    /// deadline); default: the current time.
    #[arg(long, value_name = "TIME")]
    now: Option<DateTime<Utc>>,
    /// How late an expiry or a ticket issuance may be before it counts as missing.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    grace_seconds: u32,
    /// Stop after this many violations.
    #[arg(long, default_value_t = verify::VIOLATIONS_MAX as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_violations: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Csv,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// What to export.
    #[arg(long, value_enum)]
    what: What,
    /// The output format (CSV only: Parquet would pull in the whole Arrow stack).
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Write to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("boxctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let url = cli
        .database_url
        .context("no database: set DATABASE_URL or pass --database-url")?;
    let store = boxoffice_store::connect(&url)
        .await
        .context("opening the event store")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match cli.command {
        Command::Replay(args) => {
            let target = match (args.target.stream, args.target.show) {
                (Some(stream), _) => Target::Stream(stream),
                (None, Some(show)) => Target::Show(show.to_string()),
                (None, None) => unreachable!("clap requires one"),
            };
            replay::run(store.as_ref(), &target, args.until, cli.json, &mut out).await?;
        }
        Command::Seatmap(args) => {
            let at = seatmap::load(store.as_ref(), args.show, args.at, cli.json).await?;
            if cli.json {
                serde_json::to_writer(&mut out, &seatmap::render_json(&at))?;
                writeln!(out)?;
            } else {
                seatmap::render_text(&at, &mut out)?;
            }
        }
        Command::Verify(args) => {
            let config = VerifyConfig {
                now: args.now.unwrap_or_else(Utc::now),
                grace: chrono::Duration::seconds(i64::from(args.grace_seconds)),
                violations_max: args.max_violations as usize,
            };
            let started = std::time::Instant::now();
            let report = verify::run(
                store,
                args.show.map(|s| s.to_string()),
                config.clone(),
                cli.json,
            )
            .await?;
            let seconds = started.elapsed().as_secs_f64();
            let rate = report.events as f64 / seconds.max(1e-9);
            if cli.json {
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({
                        "ok": report.is_clean(),
                        "events": report.events,
                        "shows": report.shows,
                        "streams": report.streams,
                        "last_position": report.last_position,
                        "now": config.now,
                        "grace_seconds": args.grace_seconds,
                        "elapsed_seconds": seconds,
                        "events_per_second": rate.round(),
                        "truncated": report.truncated,
                        "violations": report.violations,
                    }),
                )?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "verified {} events, {} shows, {} streams up to position {} in {seconds:.2} s ({rate:.0} events/s)",
                    report.events, report.shows, report.streams, report.last_position
                )?;
                if report.is_clean() {
                    writeln!(out, "clean: rules 1-7 hold")?;
                } else {
                    writeln!(
                        out,
                        "FAILED: {} violation(s){}",
                        report.violations.len(),
                        if report.truncated {
                            " (scan stopped early)"
                        } else {
                            ""
                        }
                    )?;
                    for v in &report.violations {
                        writeln!(
                            out,
                            "  rule {} at position {}: {}",
                            v.rule, v.position, v.message
                        )?;
                    }
                }
            }
            out.flush()?;
            if !report.is_clean() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Export(args) => {
            let Format::Csv = args.format;
            match &args.out {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let mut file = std::io::BufWriter::new(file);
                    export::run(&url, store.as_ref(), args.what, cli.json, &mut file).await?;
                    file.flush()?;
                }
                None => {
                    export::run(&url, store.as_ref(), args.what, cli.json, &mut out).await?;
                }
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
