//! `boxoffice-bench ceiling`: the most requests per second this machine can answer over
//! HTTP through the server's whole middleware stack, with no domain work behind them
//! (`GET /healthz` by default), with the same client the on-sale bench uses. A hold is
//! such a request plus the engine, the store and the read side, so this is the upper
//! bound any hold rate measured on the same machine can reach, and the CPU it reports
//! per request is the part of a hold's cost that is HTTP alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cpu::{CpuSample, CpuUse};
use crate::onsale::{Server, ServerArgs, http_client};

#[derive(Debug, Args)]
pub struct CeilingArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The path every request GETs; it must answer 2xx without credentials.
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Requests in flight at once (closed loop, one connection each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the measured window, after a one-second warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// With `--url`: the server's process id, so its CPU is reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CeilingReport {
    pub backend: String,
    pub url: String,
    pub path: String,
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_second: f64,
    pub failures: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    pub cpu: CpuUse,
}

const WARM_UP: Duration = Duration::from_secs(1);
/// Latencies above a minute are recorded as a minute.
const LATENCY_MICROS_MAX: u64 = 60_000_000;

pub async fn main(args: CeilingArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.concurrency > 0 && args.seconds > 0,
        "--concurrency and --seconds must be positive"
    );
    let report = match args.server.external()? {
        Some(target) => load(&args, &target.backend, &target.base, args.server_pid).await?,
        None => {
            let mut server = Server::start(&args.server.spec(0)).await?;
            let target = server.target();
            let pid = server.pid();
            let report = load(&args, &target.backend, &target.base, pid).await;
            let stopped = server.stop().await;
            server.cleanup(report.is_err()).await;
            stopped?;
            report?
        }
    };
    print(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    anyhow::ensure!(
        report.failures == 0,
        "{} requests failed or were not 2xx",
        report.failures
    );
    Ok(())
}

async fn load(
    args: &CeilingArgs,
    backend: &str,
    base: &str,
    server_pid: Option<u32>,
) -> anyhow::Result<CeilingReport> {
    let client = http_client(args.concurrency)?;
    let url = format!("{base}{}", args.path);
    let first = client.get(&url).send().await?;
    anyhow::ensure!(
        first.status().is_success(),
        "GET {url} answered {}",
        first.status()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, url) = (client.clone(), url.clone());
        let (stop, measuring, failures) = (stop.clone(), measuring.clone(), failures.clone());
        workers.spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, LATENCY_MICROS_MAX, 3)
                .expect("histogram bounds");
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let ok = match client.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        latency.saturating_record(sent.elapsed().as_micros() as u64);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latency
        });
    }
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let before = CpuSample::take(server_pid);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let after = CpuSample::take(server_pid);
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1, LATENCY_MICROS_MAX, 3)?;
    while let Some(worker) = workers.join_next().await {
        latency.add(worker?)?;
    }
    let requests = latency.len();
    let cpu = before.until(&after, requests);
    let ms = |micros: u64| micros as f64 / 1_000.0;
    Ok(CeilingReport {
        backend: backend.to_string(),
        url,
        path: args.path.clone(),
        concurrency: args.concurrency,
        seconds: cpu.seconds,
        requests,
        requests_per_second: requests as f64 / cpu.seconds,
        failures: failures.load(Ordering::Relaxed),
        latency_ms_p50: ms(latency.value_at_quantile(0.50)),
        latency_ms_p99: ms(latency.value_at_quantile(0.99)),
        latency_ms_max: ms(latency.max()),
        cpu,
    })
}

fn print(r: &CeilingReport) {
    println!(
        "ceiling: GET {} on {} ({} in flight), {:.1} s",
        r.path, r.backend, r.concurrency, r.seconds
    );
    println!(
        "  {} requests = {:.0} requests/s, {} failed; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.requests,
        r.requests_per_second,
        r.failures,
        r.latency_ms_p50,
        r.latency_ms_p99,
        r.latency_ms_max
    );
    r.cpu.print("request");
}
