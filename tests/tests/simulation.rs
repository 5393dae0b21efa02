//! The deterministic simulation (see `boxoffice_tests::simulation`): 1,000 seeds of the
//! engine on SQLite with clock jumps, payment outcomes, duplicate and reordered payment
//! commands and crash-restarts, every rule checked after every step.
//!
//! `SIM_SEEDS=N` runs N seeds (default 1,000), `SIM_FIRST_SEED=S` starts at S,
//! `SIM_SEED=S` runs seed S alone and `SIM_STEPS` sets the steps per seed (a failure
//! message says which to set). For long runs,
//! `cargo run --release -p boxoffice-tests --bin simulate -- --seeds 100000`.

use boxoffice_tests::simulation::{SimConfig, run_seeds};

const SEEDS_DEFAULT: u64 = 1_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_seeded_worlds_keep_every_rule() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
            let count = env_u64("SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
            (first..first + count).collect()
        }
    };
    let count = seeds.len();
    let started = std::time::Instant::now();
    let config = SimConfig {
        steps: env_u64("SIM_STEPS").map_or(SimConfig::default().steps, |s| s as usize),
    };
    match run_seeds(seeds, config, 4).await {
        Ok(stats) => {
            println!(
                "{count} seeds in {:.1}s: {} steps, {} commands accepted, {} refused, {} events, \
                 {} payments, {} ticket issues, {} holds of named seats, {} crash-restarts, \
                 {} refusals of forgotten reservations read back from the log",
                started.elapsed().as_secs_f64(),
                stats.steps,
                stats.accepted,
                stats.refused,
                stats.events,
                stats.payments,
                stats.tickets_issued,
                stats.named_holds,
                stats.restarts,
                stats.refused_from_log
            );
            // The mix must reach the paths it is about, or the run proves little.
            assert!(
                stats.tickets_issued > 0
                    && stats.restarts > 0
                    && stats.refused > 0
                    && stats.named_holds > 0
                    && stats.refused_from_log > 0,
                "{stats:?}"
            );
        }
        Err(failure) => panic!("{failure}"),
    }
}
