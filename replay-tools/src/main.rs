//! `boxctl`: replay, time travel, verification and export over the Boxoffice event log.
//! `main` only parses the command line and wires the store to the subcommand.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use boxoffice_domain::ShowId;
use boxoffice_replay_tools::export::{self, Format, What};
use boxoffice_replay_tools::point::Point;
use boxoffice_replay_tools::reconcile::{self, ReconcileConfig};
use boxoffice_replay_tools::replay::{self, Target};
use boxoffice_replay_tools::seatmap;
use boxoffice_replay_tools::verify::{self, VerifyConfig};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

/// As in the server: glibc's allocator spent about a third of a rebuild's reading of the
/// log in malloc and free (malloc_consolidate, unlink_chunk), mimalloc a fraction of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// The file holding the event log's hash-chain key (the server's
    /// `EVENT_CHAIN_KEY_FILE`); default `data/event-chain.key` when that file exists.
    /// `verify` checks the chain with it; commands that write (`reconcile --fix`) need it.
    #[arg(long, env = "EVENT_CHAIN_KEY_FILE", global = true, value_name = "FILE")]
    chain_key_file: Option<std::path::PathBuf>,
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
    /// Orders, tickets, sales (read models) or events (the log) as CSV or Parquet; a
    /// summary on stderr says which log position the rows reflect.
    Export(ExportArgs),
    /// Finds payments, holds and notifications left half done (captured without
    /// tickets, stuck payments, refunds not recorded, holds not released, notifications
    /// not delivered) and, with --fix, finishes them through the normal write path.
    /// Exit 0 when nothing remains, 1 when anomalies remain, 2 when a check failed.
    Reconcile(ReconcileArgs),
    /// Rebuilds read models from the log: each into fresh tables that replace the live
    /// ones in one transaction once caught up, so readers never see a partial model.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Args)]
struct RebuildArgs {
    /// The projections to rebuild (default: all). Names: orders, notifications,
    /// seat_map, reservations, sales, waitlist, audit_log.
    #[arg(value_name = "PROJECTION")]
    projections: Vec<String>,
    /// Events applied per transaction.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=boxoffice_projections::runtime::BATCH_EVENTS_MAX as u64))]
    batch_events: u64,
}

#[derive(Debug, Args)]
struct ReconcileArgs {
    /// Resolve what is found: commands through the engine, the payment provider's API,
    /// the notification outbox. Running it again does nothing more.
    #[arg(long)]
    fix: bool,
    /// Do not compare the read models with a replay of the log (`projection_drift`; each
    /// projection is replayed into temporary tables, which takes a while on a long log).
    #[arg(long)]
    skip_projections: bool,
    /// Leave alone what is younger than this: the running server is about to handle it.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    grace_seconds: u32,
    /// The payment provider's base URL (the server's PAYMENT_PROVIDER_URL). Without it
    /// the provider is not asked and payments are not fixed.
    #[arg(long, env = "PAYMENT_PROVIDER_URL", value_name = "URL")]
    provider_url: Option<String>,
    /// The API key sent to the payment provider.
    #[arg(long, env = "PAYMENT_PROVIDER_API_KEY", hide_env_values = true)]
    provider_api_key: Option<String>,
    /// Deliver email notifications to this file (the server's NOTIFY_EMAIL_FILE).
    /// Without it, undelivered emails are re-queued for the server's delivery worker.
    #[arg(long, env = "NOTIFY_EMAIL_FILE", value_name = "FILE")]
    notify_email_file: Option<std::path::PathBuf>,
    /// The server's NOTIFY_WEBHOOK_URL, to deliver webhook notifications directly.
    #[arg(long, env = "NOTIFY_WEBHOOK_URL", value_name = "URL")]
    notify_webhook_url: Option<String>,
    /// The server's NOTIFY_WEBHOOK_SECRET (required with the URL).
    #[arg(long, env = "NOTIFY_WEBHOOK_SECRET", hide_env_values = true)]
    notify_webhook_secret: Option<String>,
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
    /// Do not check the hash chain (when the key is not at hand); the rules are still
    /// checked. Without this flag, verify refuses to run without the key.
    #[arg(long)]
    skip_chain: bool,
    /// A JSON file of partition heads kept outside the database: each recorded head must
    /// still be in the log with the same link (catches a truncated partition, which the
    /// chain alone cannot). Created if missing; rewritten with the new heads after a
    /// clean run.
    #[arg(long, value_name = "FILE")]
    anchors: Option<std::path::PathBuf>,
    /// Do not compare the read models with a replay of the log (done by default on the
    /// whole log: each projection is replayed into temporary tables up to its checkpoint
    /// and compared row for row).
    #[arg(long)]
    skip_projections: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Orders, tickets and sales come from read models: they reflect the log up to their projection's checkpoint, which the summary on stderr prints with the log's head. Both formats have the same columns."
)]
struct ExportArgs {
    /// What to export.
    #[arg(long, value_enum)]
    what: What,
    /// The output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Write to this file instead of stdout (required for Parquet, a binary format only
    /// usable complete). The file appears only once the export is complete.
    #[arg(
        long,
        visible_alias = "out",
        value_name = "FILE",
        required_if_eq("format", "parquet")
    )]
    output: Option<std::path::PathBuf>,
}

/// The chain key from `--chain-key-file`, or from the server's default location when
/// that file exists; `None` when there is none (read-only commands do not need it).
fn chain_key(
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<boxoffice_store::chain::ChainKey>> {
    let default = std::path::Path::new("data/event-chain.key");
    let path = match file {
        Some(path) => path,
        None if default.exists() => default,
        None => return Ok(None),
    };
    boxoffice_store::chain::ChainKey::load(path)
        .map(Some)
        .with_context(|| format!("reading the chain key {}", path.display()))
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
    let chain_key = chain_key(cli.chain_key_file.as_deref())?;
    let store = boxoffice_store::connect(&url, chain_key.clone())
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
            if chain_key.is_none() && !args.skip_chain {
                anyhow::bail!(
                    "verify checks the hash chain and needs its key: pass --chain-key-file \
                     (or EVENT_CHAIN_KEY_FILE), or --skip-chain to check only the rules"
                );
            }
            let anchors = match &args.anchors {
                Some(path) if path.exists() => serde_json::from_slice(
                    &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("parsing the anchors in {}", path.display()))?,
                _ => Default::default(),
            };
            let config = VerifyConfig {
                now: args.now.unwrap_or_else(Utc::now),
                grace: chrono::Duration::seconds(i64::from(args.grace_seconds)),
                violations_max: args.max_violations as usize,
                chain_key: if args.skip_chain { None } else { chain_key },
                anchors,
            };
            let started = std::time::Instant::now();
            let whole_log = args.show.is_none();
            let mut report = verify::run(
                std::sync::Arc::clone(&store),
                args.show.map(|s| s.to_string()),
                config.clone(),
                cli.json,
            )
            .await?;
            let mut projections_skipped = Vec::new();
            if whole_log && !args.skip_projections && !report.truncated {
                let pool = boxoffice_store::tables::TablePool::connect(&url)
                    .await
                    .context("opening the read-model tables")?;
                let (drifted, skipped) = verify::check_projections(store, &pool, cli.json).await?;
                report.violations.extend(drifted);
                projections_skipped = skipped;
            }
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
                        "chain_checked": report.chain_checked,
                        "projections_skipped": projections_skipped,
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
                for skipped in &projections_skipped {
                    writeln!(out, "projection not compared: {skipped}")?;
                }
                match report.chain_checked {
                    Some(n) => writeln!(out, "hash chain checked over {n} events")?,
                    None => writeln!(out, "hash chain NOT checked (--skip-chain)")?,
                }
                if report.is_clean() {
                    writeln!(out, "clean: no violation found")?;
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
            if let Some(path) = &args.anchors
                && report.chain_checked.is_some()
                && !report.truncated
            {
                // Heads of partitions this run did not read (another show) are kept.
                let mut anchors: std::collections::BTreeMap<String, verify::Anchor> =
                    match std::fs::read(path) {
                        Ok(bytes) => serde_json::from_slice(&bytes)?,
                        Err(_) => Default::default(),
                    };
                anchors.extend(report.heads.clone());
                std::fs::write(path, serde_json::to_vec_pretty(&anchors)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Reconcile(args) => {
            if args.fix && chain_key.is_none() {
                anyhow::bail!(
                    "reconcile --fix appends events and needs the hash-chain key: pass \
                     --chain-key-file (or EVENT_CHAIN_KEY_FILE)"
                );
            }
            let tables = boxoffice_store::tables::TablePool::connect(&url)
                .await
                .context("opening the side tables")?;
            let config = ReconcileConfig {
                fix: args.fix,
                grace: chrono::Duration::seconds(i64::from(args.grace_seconds)),
                provider: args.provider_url.as_deref().map(|base| {
                    boxoffice_sagas::provider::ProviderClient::new(base, args.provider_api_key)
                }),
                notify: boxoffice_projections::NotifyConfig {
                    email_file: args.notify_email_file,
                    webhook_url: args.notify_webhook_url,
                    webhook_secret: args.notify_webhook_secret.unwrap_or_default().into_bytes(),
                },
                json: cli.json,
                projections: !args.skip_projections,
            };
            let clock = std::sync::Arc::new(boxoffice_domain::SystemClock);
            let report = reconcile::run(store, tables, clock, &config).await?;
            if cli.json {
                report.write_json(&mut out)?;
            } else {
                report.write_text(&mut out)?;
            }
            out.flush()?;
            return Ok(ExitCode::from(report.exit_status()));
        }
        Command::Rebuild(args) => {
            let pool = boxoffice_store::tables::TablePool::connect(&url)
                .await
                .context("opening the read-model tables")?;
            let all = boxoffice_projections::all_projections(&Default::default());
            let chosen: Vec<_> = if args.projections.is_empty() {
                all
            } else {
                let mut chosen = Vec::new();
                for name in &args.projections {
                    let Some(p) = all.iter().find(|p| p.name() == name) else {
                        let names: Vec<_> = all.iter().map(|p| p.name()).collect();
                        anyhow::bail!("no projection {name:?}; there are: {}", names.join(", "));
                    };
                    chosen.push(std::sync::Arc::clone(p));
                }
                chosen
            };
            for projection in chosen {
                let bar = boxoffice_replay_tools::progress::bar(
                    None,
                    cli.json,
                    &format!("rebuilding {}", projection.name()),
                );
                bar.enable_steady_tick(std::time::Duration::from_millis(200));
                let report = boxoffice_projections::rebuild_projection(
                    std::sync::Arc::clone(&store),
                    &pool,
                    projection.as_ref(),
                    args.batch_events as usize,
                )
                .await
                .with_context(|| format!("rebuilding {}", projection.name()))?;
                bar.finish_and_clear();
                if cli.json {
                    serde_json::to_writer(
                        &mut out,
                        &serde_json::json!({
                            "projection": report.name,
                            "version": report.version,
                            "events": report.events,
                            "applied": report.applied,
                            "position": report.position,
                            "elapsed_seconds": report.elapsed.as_secs_f64(),
                            "events_per_second": report.events_per_second().round(),
                        }),
                    )?;
                    writeln!(out)?;
                } else {
                    writeln!(
                        out,
                        "rebuilt {} (version {}): {} events to position {} ({} of its types applied) \
                         in {:.2} s ({:.0} events/s)",
                        report.name,
                        report.version,
                        report.events,
                        report.position,
                        report.applied,
                        report.elapsed.as_secs_f64(),
                        report.events_per_second()
                    )?;
                }
                out.flush()?;
            }
        }
        Command::Export(args) => {
            let (store, what) = (store.as_ref(), args.what);
            let summary = match (&args.output, args.format) {
                (Some(path), format) => {
                    export::to_file(&url, store, what, format, cli.json, path).await?
                }
                (None, Format::Csv) => {
                    let summary = export::write_csv(&url, store, what, cli.json, &mut out).await?;
                    out.flush()?;
                    summary
                }
                (None, Format::Parquet) => unreachable!("clap requires --output for Parquet"),
            };
            if cli.json {
                eprintln!("{}", summary.to_json());
            } else {
                eprintln!("{summary}");
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
