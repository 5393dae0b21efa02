//! Rebuilding a projection from the start of the log beside the read model that readers
//! use, and swapping the result in when it has caught up (ADR 0008). The runtime does it
//! when a projection's code version changed; [`rebuild_projection`] does it on demand
//! (`boxctl rebuild`, or a test comparing a rebuild with the live read model).
//!
//! The new read model is built into shadow tables (TEMP copies of the projection's tables,
//! see `shadow.rs`) on a connection of its own, one transaction per batch, while the real
//! tables and the checkpoint stay as they are and keep serving. Once a read of the log
//! comes back short of a full batch (the shadow is near the head), one transaction locks
//! the checkpoint, checks that its version is still the one the real tables held when the
//! rebuild began, applies what is left of the log to the shadow, replaces the real
//! tables' rows with the shadow's and sets the checkpoint to (the code's version, the
//! shadow's position). Readers see the old read model until that commit and the new one
//! after it, never a partial one.
//!
//! If the checkpoint's version changed meanwhile, another process swapped a read model in
//! first: this rebuild discards its shadow and swaps nothing. A live runner of the same
//! version (a forced rebuild while the projection runs) keeps applying to the real tables
//! during the rebuild; the swap, taken under the checkpoint's lock, moves the checkpoint to
//! at least where that runner was, and the runner, finding its checkpoint moved, carries on
//! from there. A rebuild that fails, is cancelled or crashes leaves the real tables and the
//! checkpoint untouched; its shadow tables vanish with its connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_store::tables::TablePool;
use boxoffice_store::{EventStore, RecordedEvent};
use chrono::Utc;
use serde::Serialize;

use crate::db::{self, position_param};
use crate::runtime::{
    BATCH_EVENTS_MAX, Projection, ProjectionError, check_tables, load_checkpoint, lock_checkpoint,
};
use crate::shadow::Shadow;

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildReport {
    pub name: String,
    /// The version now in the checkpoint: the code's.
    pub version: u32,
    /// Events read and applied into the new tables by this rebuild.
    pub events: u64,
    /// The log position the swapped-in read model reflects.
    pub position: u64,
    pub elapsed: Duration,
    /// Of `elapsed`, the final transaction: applying the log's tail and copying the shadow
    /// tables over the real ones.
    pub swap: Duration,
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

/// How a rebuild beside the live tables ended.
#[derive(Debug)]
pub(crate) enum Rebuilt {
    /// The new rows are in the real tables and the checkpoint is (code version, position).
    Swapped(RebuildReport),
    /// The checkpoint's version changed while the rebuild ran (to `stored`): another
    /// process swapped a read model in first, and this one was discarded.
    Superseded { stored: Option<(u32, u64)> },
}

/// Rebuilds `projection` from the start of the log into shadow tables,
/// `batch_events_max` events per transaction (1..=[`BATCH_EVENTS_MAX`]), and swaps them in
/// when caught up; readers see the old read model until then. This is a forced rebuild:
/// it runs whatever version the checkpoint holds, the code's included, and leaves the
/// checkpoint at the code's version.
///
/// Fails, swapping nothing, if another process swapped in a different version during the
/// rebuild (or on any database or log error); the old read model is then still in place.
pub async fn rebuild_projection(
    store: Arc<dyn EventStore>,
    pool: &TablePool,
    projection: &dyn Projection,
    batch_events_max: usize,
) -> Result<RebuildReport, ProjectionError> {
    let name = projection.name();
    check_tables(projection);
    // A projection that never ran gets its checkpoint here, at 0 with empty tables.
    db::execute(
        pool,
        "INSERT INTO projection_checkpoints (name, version, position, updated_at)
         VALUES ($1, $2, 0, $3) ON CONFLICT (name) DO NOTHING",
        &[
            name.into(),
            i64::from(projection.version()).into(),
            Utc::now().into(),
        ],
    )
    .await?;
    let held = load_checkpoint(pool, name)
        .await?
        .ok_or_else(|| ProjectionError::Failed(format!("the checkpoint row of {name} vanished")))?;
    match rebuild_beside(&store, pool, projection, batch_events_max, held.version).await? {
        Rebuilt::Swapped(report) => Ok(report),
        Rebuilt::Superseded { stored } => Err(ProjectionError::Failed(format!(
            "the checkpoint of {name} became {stored:?} while it was rebuilt from version \
             {}: another process swapped its read model in first; nothing was swapped",
            held.version
        ))),
    }
}

/// Builds `projection` into shadow tables and swaps them in if the checkpoint still holds
/// `held_version` (the version of the real tables when the caller decided to rebuild).
pub(crate) async fn rebuild_beside(
    store: &Arc<dyn EventStore>,
    pool: &TablePool,
    projection: &dyn Projection,
    batch_events_max: usize,
    held_version: u32,
) -> Result<Rebuilt, ProjectionError> {
    assert!(
        (1..=BATCH_EVENTS_MAX).contains(&batch_events_max),
        "batch_events_max must be 1..={BATCH_EVENTS_MAX}"
    );
    tracing::info!(
        projection = projection.name(),
        held_version,
        version = projection.version(),
        "rebuilding into shadow tables; the current tables keep serving"
    );
    let shadow = Shadow::create(pool, projection.tables()).await?;
    let rebuilt = build_and_swap(
        &shadow,
        store,
        pool,
        projection,
        batch_events_max,
        held_version,
    )
    .await;
    // Also after an error: the old tables and checkpoint are untouched, and the shadow is
    // of no further use.
    shadow.discard().await;
    rebuilt
}

/// Pages read ahead of the one being applied during a rebuild's catch-up.
const PAGES_AHEAD: usize = 2;

/// Aborts a task when dropped (the read-ahead of a rebuild that ends early).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asserts that `events` continue the log after `after`, in order.
fn check_order(name: &str, after: u64, events: &[RecordedEvent]) {
    let mut previous = after;
    for event in events {
        assert!(
            event.position > previous,
            "read_all returned position {} after {previous} for {name}",
            event.position
        );
        previous = event.position;
    }
}

async fn build_and_swap(
    shadow: &Shadow,
    store: &Arc<dyn EventStore>,
    pool: &TablePool,
    projection: &dyn Projection,
    batch_events_max: usize,
    held_version: u32,
) -> Result<Rebuilt, ProjectionError> {
    let name = projection.name();
    let version = projection.version();
    let started = Instant::now();
    let mut position = 0;
    let mut applied = 0u64;

    // Catch up, one batch per transaction, until a read comes back short of a full batch.
    // The next page is read (and decoded) by a task of its own while this one applies the
    // current page: reading and applying take about as long each, on different cores.
    let (pages_tx, mut pages) = tokio::sync::mpsc::channel(PAGES_AHEAD);
    let reader = {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let page = store.read_all(after, batch_events_max).await;
                let (full, last) = match &page {
                    Ok(events) => (
                        events.len() == batch_events_max,
                        events.last().map(|e| e.position),
                    ),
                    Err(_) => (false, None),
                };
                if pages_tx.send(page).await.is_err() || !full {
                    return;
                }
                after = last.expect("a full page has a last event");
            }
        })
    };
    let _stop_reader = AbortOnDrop(reader);
    loop {
        // A cheap look (no lock) so that the loser of a race stops early; the swap checks
        // again under the lock.
        let stored = load_checkpoint(pool, name).await?;
        if stored.as_ref().map(|c| c.version) != Some(held_version) {
            tracing::info!(
                projection = name,
                ?stored,
                "rebuild superseded; discarding it"
            );
            return Ok(Rebuilt::Superseded {
                stored: stored.map(|c| (c.version, c.position)),
            });
        }
        let Some(events) = pages.recv().await else {
            break;
        };
        let events = events?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        check_order(name, position, &events);
        let mut tx = shadow.begin().await?;
        projection.apply(&mut tx, &events).await?;
        tx.commit().await?;
        position = last;
        applied += events.len() as u64;
        if events.len() < batch_events_max {
            break;
        }
    }

    // The swap. While the checkpoint is locked nobody applies a batch to the real tables.
    let swap_started = Instant::now();
    let mut tx = shadow.begin().await?;
    let stored_position = match lock_checkpoint(&mut tx, name).await? {
        Some((stored_version, stored_position)) if stored_version == held_version => {
            stored_position
        }
        stored => {
            tx.rollback().await?;
            tracing::info!(
                projection = name,
                ?stored,
                "rebuild superseded; discarding it"
            );
            return Ok(Rebuilt::Superseded { stored });
        }
    };
    // What was appended since the last read, and at least up to where a live runner of
    // the real tables got: the read model must not move back behind what `wait_for` has
    // already promised.
    loop {
        let events = store.read_all(position, batch_events_max).await?;
        if let Some(last) = events.last().map(|e| e.position) {
            check_order(name, position, &events);
            projection.apply(&mut tx, &events).await?;
            position = last;
            applied += events.len() as u64;
        }
        if events.len() < batch_events_max && position >= stored_position {
            break;
        }
        // A runner applied up to `stored_position` after reading it from this log, so a
        // later read returns at least that far.
        assert!(
            !events.is_empty(),
            "the log of {name} ends at {position}, before its checkpoint {stored_position}"
        );
    }
    shadow.copy_into_place(&mut tx).await?;
    let updated = tx
        .execute(
            "UPDATE projection_checkpoints SET version = $2, position = $3, updated_at = $4
             WHERE name = $1",
            &[
                name.into(),
                i64::from(version).into(),
                position_param(position),
                Utc::now().into(),
            ],
        )
        .await?;
    assert_eq!(updated, 1, "the locked checkpoint row of {name} exists");
    tx.commit().await?;

    let report = RebuildReport {
        name: name.to_owned(),
        version,
        events: applied,
        position,
        elapsed: started.elapsed(),
        swap: swap_started.elapsed(),
    };
    tracing::info!(
        projection = name,
        held_version,
        version,
        events = report.events,
        position,
        events_per_second = report.events_per_second() as u64,
        "rebuild swapped in"
    );
    Ok(Rebuilt::Swapped(report))
}

/// How a projection's read model compares with a replay of the log up to its checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    pub name: String,
    /// The code version replayed; `None` in `skipped` when the tables hold another.
    pub version: u32,
    /// The checkpoint compared at: live rows and replay both reflect the log up to here.
    pub position: u64,
    /// Tables that differ (empty: the read model equals the replay).
    pub tables: Vec<crate::shadow::TableDrift>,
    /// Why nothing was compared (the tables hold another version than this code's).
    pub skipped: Option<String>,
}

impl DriftReport {
    pub fn drifted(&self) -> bool {
        !self.tables.is_empty()
    }
}

/// Replays the log into shadow tables up to the projection's checkpoint and compares them
/// with the live tables, row for row, without changing anything. The checkpoint is locked
/// for the final catch-up and the comparison, so the live rows and the replay reflect the
/// same position (a live runner waits for that moment).
pub async fn compare_with_replay(
    store: Arc<dyn EventStore>,
    pool: &TablePool,
    projection: &dyn Projection,
    batch_events_max: usize,
) -> Result<DriftReport, ProjectionError> {
    assert!(
        (1..=BATCH_EVENTS_MAX).contains(&batch_events_max),
        "batch_events_max must be 1..={BATCH_EVENTS_MAX}"
    );
    let name = projection.name();
    let version = projection.version();
    check_tables(projection);
    let report = |position, tables, skipped| DriftReport {
        name: name.to_owned(),
        version,
        position,
        tables,
        skipped,
    };
    let Some(held) = load_checkpoint(pool, name).await? else {
        return Ok(report(
            0,
            Vec::new(),
            Some("the projection never ran".into()),
        ));
    };
    if held.version != version {
        return Ok(report(
            held.position,
            Vec::new(),
            Some(format!(
                "its tables hold version {}, this code replays version {version}",
                held.version
            )),
        ));
    }
    let shadow = Shadow::create(pool, projection.tables()).await?;
    let compared = replay_and_compare(
        &shadow,
        store.as_ref(),
        projection,
        batch_events_max,
        held.position,
    )
    .await;
    shadow.discard().await;
    let (position, tables) = compared?;
    Ok(report(position, tables, None))
}

async fn replay_and_compare(
    shadow: &Shadow,
    store: &dyn EventStore,
    projection: &dyn Projection,
    batch_events_max: usize,
    mut target: u64,
) -> Result<(u64, Vec<crate::shadow::TableDrift>), ProjectionError> {
    let name = projection.name();
    let mut position = 0;
    let mut locked = None;
    loop {
        if position >= target {
            let mut tx = shadow.begin().await?;
            match lock_checkpoint(&mut tx, name).await? {
                Some((v, p)) if v == projection.version() && p == position => {
                    let drift = shadow.differences(&mut tx).await?;
                    tx.rollback().await?;
                    return Ok((position, drift));
                }
                Some((v, p)) if v == projection.version() && p > position => {
                    // The live runner moved on: replay further and look again.
                    tx.rollback().await?;
                    target = p;
                    locked = Some(p);
                }
                stored => {
                    tx.rollback().await?;
                    return Err(ProjectionError::Failed(format!(
                        "the checkpoint of {name} became {stored:?} during the comparison (after {locked:?})"
                    )));
                }
            }
        }
        let mut events = store.read_all(position, batch_events_max).await?;
        events.retain(|e| e.position <= target);
        let Some(last) = events.last().map(|e| e.position) else {
            return Err(ProjectionError::Failed(format!(
                "the log ends at {position}, before the checkpoint {target} of {name}"
            )));
        };
        check_order(name, position, &events);
        let mut tx = shadow.begin().await?;
        projection.apply(&mut tx, &events).await?;
        tx.commit().await?;
        position = last;
    }
}
