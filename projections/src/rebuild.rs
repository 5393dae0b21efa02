//! Rebuilding a projection from the start of the log, on demand (`boxctl rebuild`, or a
//! test comparing a rebuild with the live read model).
//!
//! [`rebuild_projection`] empties the projection's tables and sets its checkpoint back to
//! 0 (with its code's version) in one transaction, then replays the log in batches with
//! the runtime's rule: each batch locks the checkpoint, checks it is where this rebuild
//! left it, applies the batch and moves the checkpoint in the same transaction. A live
//! runner of the same projection (in this or another process) therefore cooperates
//! instead of doubling rows: whoever finds the checkpoint moved carries on from there.
//! The read model is incomplete while the rebuild runs. Building the new version into
//! fresh tables and swapping them in when caught up is not done yet (see ADR 0005).

use std::time::{Duration, Instant};

use std::sync::Arc;

use boxoffice_store::EventStore;
use boxoffice_store::tables::TablePool;
use chrono::Utc;
use serde::Serialize;

use crate::db::{Tx, position_param};
use crate::runtime::{BATCH_EVENTS_MAX, Projection, ProjectionError, lock_checkpoint};

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildReport {
    pub name: String,
    pub version: u32,
    /// Events read and applied by this rebuild (batches another runner applied in the
    /// meantime are not counted).
    pub events: u64,
    /// The log position the read model reflects at the end.
    pub position: u64,
    pub elapsed: Duration,
}

impl RebuildReport {
    pub fn events_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.events as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Empties `projection`'s tables and replays the whole log into them, `batch_events_max`
/// events per transaction (1..=[`BATCH_EVENTS_MAX`]), until it reaches the log's head.
pub async fn rebuild_projection(
    store: Arc<dyn EventStore>,
    pool: &TablePool,
    projection: &dyn Projection,
    batch_events_max: usize,
) -> Result<RebuildReport, ProjectionError> {
    assert!(
        (1..=BATCH_EVENTS_MAX).contains(&batch_events_max),
        "batch_events_max must be 1..={BATCH_EVENTS_MAX}"
    );
    let name = projection.name();
    let version = projection.version();
    let started = Instant::now();

    let mut tx = Tx::begin(pool).await?;
    tx.execute(
        "INSERT INTO projection_checkpoints (name, version, position, updated_at)
         VALUES ($1, $2, 0, $3) ON CONFLICT (name) DO NOTHING",
        &[name.into(), i64::from(version).into(), Utc::now().into()],
    )
    .await?;
    lock_checkpoint(&mut tx, name).await?;
    for table in projection.tables() {
        tx.execute(&format!("DELETE FROM {table}"), &[]).await?;
    }
    tx.execute(
        "UPDATE projection_checkpoints SET version = $2, position = 0, updated_at = $3 WHERE name = $1",
        &[name.into(), i64::from(version).into(), Utc::now().into()],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        projection = name,
        version,
        "rebuild started from position 0"
    );

    let mut position = 0;
    let mut applied = 0u64;
    loop {
        let events = store.read_all(position, batch_events_max).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        let mut tx = Tx::begin(pool).await?;
        match lock_checkpoint(&mut tx, name).await? {
            Some((v, p)) if v == version && p == position => {}
            Some((v, p)) if v == version && p > position => {
                // Another runner applied batches meanwhile: carry on after them.
                tx.rollback().await?;
                position = p;
                continue;
            }
            stored => {
                return Err(ProjectionError::Failed(format!(
                    "checkpoint of {name} became {stored:?} during its rebuild"
                )));
            }
        }
        projection.apply(&mut tx, &events).await?;
        tx.execute(
            "UPDATE projection_checkpoints SET position = $2, updated_at = $3 WHERE name = $1",
            &[name.into(), position_param(last), Utc::now().into()],
        )
        .await?;
        tx.commit().await?;
        applied += events.len() as u64;
        position = last;
    }
    let report = RebuildReport {
        name: name.to_owned(),
        version,
        events: applied,
        position,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        projection = name,
        events = report.events,
        position,
        events_per_second = report.events_per_second() as u64,
        "rebuild finished"
    );
    Ok(report)
}
