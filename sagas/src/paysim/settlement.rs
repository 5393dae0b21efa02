//! The settlement worker: settles each `processing` intent when its stored settle time
//! comes. Because the times live in the database, a restart picks up where the previous
//! run stopped; an intent whose time passed while the simulator was down settles at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Shared;

/// Intents settled per database read.
const BATCH_SIZE: u32 = 64;
/// The longest sleep between checks, a safety net for a missed wake-up.
const IDLE_MS_MAX: i64 = 1_000;
/// The pause after a database error before trying again.
const ERROR_BACKOFF_MS: i64 = 1_000;

pub(crate) async fn run(shared: Arc<Shared>, mut stopping: watch::Receiver<bool>) {
    loop {
        let wait_ms = match settle_due(&shared).await {
            Ok(Some(next_ms)) => (next_ms - super::now_ms()).clamp(0, IDLE_MS_MAX),
            Ok(None) => IDLE_MS_MAX,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "paysim settlement failed");
                ERROR_BACKOFF_MS
            }
        };
        let wait = Duration::from_millis(wait_ms.unsigned_abs());
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            _ = shared.settle_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Settles everything due and returns the next settle time.
async fn settle_due(shared: &Shared) -> anyhow::Result<Option<i64>> {
    loop {
        let now_ms = super::now_ms();
        let due = shared.store.due_intents(now_ms, BATCH_SIZE).await?;
        for id in &due {
            if let Some(intent) = shared.store.settle(id, now_ms).await? {
                tracing::debug!(intent = %intent.id, status = %intent.status, "paysim settled an intent");
                shared.deliver_wake.notify_one();
            }
        }
        if due.len() < BATCH_SIZE as usize {
            break;
        }
    }
    shared.store.next_settle_ms().await
}
