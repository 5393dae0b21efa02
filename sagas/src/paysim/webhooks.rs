//! The webhook worker: delivers queued events from the outbox to the configured URL,
//! signed at delivery time, retrying failures with exponential backoff. Delivery is at
//! least once: an attempt cut short by a shutdown is made again after the restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Shared;
use super::store::Delivery;
use crate::signature::{self, SIGNATURE_HEADER};

/// How long one delivery may take before it counts as failed.
pub(crate) const DELIVERY_TIMEOUT_MS: u64 = 5_000;
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// The delay after the first failed attempt; it doubles with each further failure.
pub(crate) const RETRY_DELAY_MS_MIN: i64 = 500;
pub(crate) const RETRY_DELAY_MS_MAX: i64 = 30_000;
/// Attempts before a delivery is given up (about eight minutes of retrying).
pub(crate) const ATTEMPTS_MAX: i64 = 20;
/// Deliveries in flight at once.
const BATCH_SIZE: u32 = 16;
const IDLE_MS_MAX: i64 = 1_000;
const ERROR_BACKOFF_MS: i64 = 1_000;

const _: () = assert!(RETRY_DELAY_MS_MIN <= RETRY_DELAY_MS_MAX);

/// The wait before attempt `attempts + 1`, after `attempts` failed ones.
pub(crate) fn retry_delay_ms(attempts: i64) -> i64 {
    assert!(attempts >= 1);
    let doublings = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(16);
    (RETRY_DELAY_MS_MIN << doublings).min(RETRY_DELAY_MS_MAX)
}

pub(crate) async fn run(shared: Arc<Shared>, mut stopping: watch::Receiver<bool>) {
    loop {
        let wait_ms = match shared.webhook_url() {
            // Without a URL, deliveries wait in the outbox for one to be set.
            None => IDLE_MS_MAX,
            Some(url) => {
                let outcome = tokio::select! {
                    // Dropping the batch aborts its requests; they stay pending.
                    _ = stopping.wait_for(|stop| *stop) => return,
                    outcome = deliver_due(&shared, &url) => outcome,
                };
                match outcome {
                    Ok(Some(next_ms)) => (next_ms - super::now_ms()).clamp(0, IDLE_MS_MAX),
                    Ok(None) => IDLE_MS_MAX,
                    Err(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            "paysim webhook delivery failed"
                        );
                        ERROR_BACKOFF_MS
                    }
                }
            }
        };
        let wait = Duration::from_millis(wait_ms.unsigned_abs());
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            _ = shared.deliver_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Makes one attempt at every due delivery, records the results, and returns the next
/// delivery time.
async fn deliver_due(shared: &Arc<Shared>, url: &str) -> anyhow::Result<Option<i64>> {
    let due = shared
        .store
        .due_deliveries(super::now_ms(), BATCH_SIZE)
        .await?;
    let full_batch = due.len() == BATCH_SIZE as usize;
    let mut attempts = JoinSet::new();
    for delivery in due {
        attempts.spawn(attempt(shared.clone(), url.to_owned(), delivery));
    }
    while let Some(joined) = attempts.join_next().await {
        let (delivery, result) = joined?;
        let attempts = delivery.attempts + 1;
        match result {
            Ok(()) => {
                tracing::debug!(event = %delivery.event_id, attempts, "paysim delivered a webhook");
                shared
                    .store
                    .delivery_succeeded(delivery.id, attempts)
                    .await?;
            }
            Err(error) => {
                let next_ms = (attempts < ATTEMPTS_MAX)
                    .then(|| super::now_ms().saturating_add(retry_delay_ms(attempts)));
                if next_ms.is_none() {
                    tracing::warn!(event = %delivery.event_id, attempts, %error, "paysim gave up a webhook");
                } else {
                    tracing::debug!(event = %delivery.event_id, attempts, %error, "paysim webhook attempt failed");
                }
                shared
                    .store
                    .delivery_failed(delivery.id, attempts, next_ms, &error)
                    .await?;
            }
        }
    }
    if full_batch {
        return Ok(Some(super::now_ms()));
    }
    shared.store.next_delivery_ms().await
}

async fn attempt(
    shared: Arc<Shared>,
    url: String,
    delivery: Delivery,
) -> (Delivery, Result<(), String>) {
    let rate = shared.config.webhook_failure_rate;
    if rate > 0.0 && rand::random::<f64>() < rate {
        return (delivery, Err("dropped by webhook_failure_rate".to_owned()));
    }
    // Signed now, so a retry carries a fresh timestamp; the stale replay keeps its own.
    let timestamp = delivery
        .signature_timestamp
        .unwrap_or_else(|| super::now_ms().div_euclid(1_000));
    let header = signature::sign(
        &shared.config.webhook_secret,
        timestamp,
        delivery.payload.as_bytes(),
    );
    let response = shared
        .webhook_http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, header)
        .body(delivery.payload.clone())
        .send()
        .await;
    let result = match response {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("answered {}", response.status())),
        Err(error) => Err(error.to_string()),
    };
    (delivery, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let delays: Vec<i64> = (1..=8).map(retry_delay_ms).collect();
        assert_eq!(
            delays,
            vec![500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]
        );
        assert_eq!(retry_delay_ms(ATTEMPTS_MAX), RETRY_DELAY_MS_MAX);
        assert_eq!(retry_delay_ms(i64::MAX), RETRY_DELAY_MS_MAX);
    }
}
