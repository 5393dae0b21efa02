//! Long runs of the deterministic simulation: `simulate --seeds 100000 [--first 0]
//! [--steps 60] [--parallel 4]`. CI runs 1,000 seeds through the `simulation` test; this
//! is the knob for more. Exits 1 with the failing seed's report if one breaks a rule.

use boxoffice_tests::simulation::{SimConfig, run_seeds};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "simulate",
    about = "Run seeds of Boxoffice's deterministic simulation"
)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Steps per seed before the world settles.
    #[arg(long, default_value_t = SimConfig::default().steps)]
    steps: usize,
    /// Seeds run at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let started = std::time::Instant::now();
    let seeds = args.first..args.first + args.seeds;
    match run_seeds(seeds, SimConfig { steps: args.steps }, args.parallel).await {
        Ok(stats) => println!(
            "{} seeds of {} steps passed in {:.1}s: {} commands accepted, {} refused, {} events, \
             {} payments, {} ticket issues, {} crash-restarts",
            args.seeds,
            args.steps,
            started.elapsed().as_secs_f64(),
            stats.accepted,
            stats.refused,
            stats.events,
            stats.payments,
            stats.tickets_issued,
            stats.restarts
        ),
        Err(failure) => {
            eprintln!("{failure}");
            std::process::exit(1);
        }
    }
}
