//! Projection lag under load: how long after an append commits the seat-map read model
//! (`SeatMapProjection`, the SQL seat map) shows it.
//!
//! Two samplers run beside the load: one records when each new log head became visible
//! to this process (the store's head watch moves right after a commit), the other when
//! the projection's checkpoint moved. The lag of a head is the time until the first
//! checkpoint at or past it; the report gives its percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_projections::{Projections, RuntimeConfig, SeatMapProjection};
use boxoffice_store::EventStore;
use boxoffice_store::tables::TablePool;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the probe measured.
#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    /// Log heads sampled (one per commit this process saw).
    pub samples: usize,
    pub lag_ms_p50: f64,
    pub lag_ms_p90: f64,
    pub lag_ms_p99: f64,
    pub lag_ms_max: f64,
}

pub struct LagProbe {
    projections: Projections,
    stop: watch::Sender<bool>,
    heads: JoinHandle<Vec<(u64, Instant)>>,
    applied: JoinHandle<Vec<(u64, Instant)>>,
    store: Arc<dyn EventStore>,
}

/// Records every value a watch takes, with when, until `stop` turns true.
fn record(
    mut values: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Vec<(u64, Instant)>> {
    tokio::spawn(async move {
        let mut seen = Vec::with_capacity(1 << 16);
        seen.push((*values.borrow_and_update(), Instant::now()));
        loop {
            tokio::select! {
                changed = values.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    seen.push((*values.borrow_and_update(), Instant::now()));
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        seen
    })
}

impl LagProbe {
    /// Starts the seat-map projection on `url`'s side tables (it catches up first) and
    /// the samplers.
    pub async fn start(store: Arc<dyn EventStore>, url: &str) -> anyhow::Result<Self> {
        let pool = TablePool::connect(url).await?;
        // The server's batch size for this backend.
        let config = RuntimeConfig::for_backend(boxoffice_projections::db::backend_of(&pool));
        let projections = Projections::start(
            Arc::clone(&store),
            pool,
            vec![Arc::new(SeatMapProjection)],
            config,
        );
        let handle = projections.handles()[0].clone();
        let head = store.head_position().await?;
        anyhow::ensure!(
            handle.wait_for(head, Duration::from_secs(60)).await,
            "the seat-map projection did not catch up before the run"
        );
        let (stop, stop_rx) = watch::channel(false);
        let heads = record(store.subscribe_head(), stop_rx.clone());
        let applied = record(handle.subscribe(), stop_rx);
        Ok(Self {
            projections,
            stop,
            heads,
            applied,
            store,
        })
    }

    /// Waits for the projection to reach the head, stops, and computes the lags.
    pub async fn finish(self) -> anyhow::Result<LagReport> {
        let head = self.store.head_position().await?;
        let handle = self.projections.handles()[0].clone();
        anyhow::ensure!(
            handle.wait_for(head, Duration::from_secs(120)).await,
            "the seat-map projection did not reach the head within 2 minutes after the run"
        );
        self.stop.send_replace(true);
        let heads = self.heads.await?;
        let applied = self.applied.await?;
        self.projections.shutdown().await;
        let mut lags = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut j = 0;
        for &(position, committed) in heads.iter().skip(1) {
            while j < applied.len() && applied[j].0 < position {
                j += 1;
            }
            let Some(&(_, visible)) = applied.get(j) else {
                break;
            };
            let micros = visible.saturating_duration_since(committed).as_micros();
            lags.record((micros as u64).max(1))?;
        }
        let ms = |q: f64| lags.value_at_quantile(q) as f64 / 1000.0;
        Ok(LagReport {
            samples: lags.len() as usize,
            lag_ms_p50: ms(0.50),
            lag_ms_p90: ms(0.90),
            lag_ms_p99: ms(0.99),
            lag_ms_max: lags.max() as f64 / 1000.0,
        })
    }
}
