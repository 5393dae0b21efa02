//! Rebuilding a projection from the start of the log beside the read model that readers
//! use, and swapping the result in when it has caught up (ADR 0008). The runtime does it
//! when a projection's code version changed; [`rebuild_projection`] does it on demand
//! (`boxctl rebuild`, or a test comparing a rebuild with the live read model).
//!
//! The new read model is built into shadow tables (copies of the projection's tables, see
//! `shadow.rs`) on a connection of its own, one transaction per slice of the log,
//! while the real tables and the checkpoint stay as they are and keep serving. Only the
//! event types the projection applies are read, two slices at a time (ADR 0013); a
//! projection that computes its rows in SQL from the log's table (`audit_log`, ADR 0022)
//! reads nothing and is handed ranges of 20 slices instead, two at once on PostgreSQL (on
//! a second connection), without holding SQLite's write lock. Once the
//! shadow is less than a slice behind the head, one transaction locks
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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_store::tables::TablePool;
use boxoffice_store::{EventStore, RecordedEvent, StoreError};
use chrono::Utc;
use serde::Serialize;

use crate::db::{self, position_param};
use crate::runtime::{
    BATCH_EVENTS_MAX, Projection, ProjectionError, check_tables, load_checkpoint, lock_checkpoint,
};
use crate::shadow::{Purpose, Shadow};

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildReport {
    pub name: String,
    /// The version now in the checkpoint: the code's.
    pub version: u32,
    /// The events of the log up to `position`: what the new read model was built from.
    pub events: u64,
    /// Of those, the ones read and applied: a rebuild reads only the types its projection
    /// acts on (`Projection::event_types`).
    pub applied: u64,
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
    let mut shadow = Shadow::create(pool, projection.tables(), Purpose::Swap).await?;
    let rebuilt = build_and_swap(
        &mut shadow,
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

/// Slices of the log read at once during a rebuild's catch-up, each by a task of its own
/// (on a connection of its own): reading and decoding the log is most of a rebuild's work,
/// and one reader left a core idle while it waited for the database.
const READERS: usize = 2;
/// Slices read ahead of the one being applied.
const SLICES_AHEAD: usize = 2;

/// Aborts a task when dropped (the read-ahead of a rebuild that ends early).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asserts that `events` continue the log after `after`, in order.
pub(crate) fn check_order(name: &str, after: u64, events: &[RecordedEvent]) {
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

/// One slice of the log as a rebuild reads it: the events of the projection's types at
/// positions up to `until`, after the previous slice's `until`.
type Slice = Result<(u64, Vec<RecordedEvent>), StoreError>;

/// Reads the log from `from` to `head` (a position the store returned as its head, so that
/// every slice below it is complete) in slices of `span` positions, `READERS` at a time,
/// and sends them in log order; stops after the first error.
async fn read_slices(
    store: Arc<dyn EventStore>,
    from: u64,
    head: u64,
    span: usize,
    types: Option<&'static [&'static str]>,
    out: tokio::sync::mpsc::Sender<Slice>,
) {
    let mut in_flight = VecDeque::with_capacity(READERS);
    let mut next = from;
    loop {
        while in_flight.len() < READERS && next < head {
            let (after, until) = (next, next.saturating_add(span as u64).min(head));
            let store = Arc::clone(&store);
            in_flight.push_back(tokio::spawn(async move {
                let events = store.read_range(after, until, types, span).await?;
                Ok((until, events))
            }));
            next = until;
        }
        let Some(reading) = in_flight.pop_front() else {
            return;
        };
        let slice = reading.await.unwrap_or_else(|e| {
            Err(StoreError::Unavailable(format!(
                "a reader of the log ended: {e}"
            )))
        });
        let failed = slice.is_err();
        if out.send(slice).await.is_err() || failed {
            return;
        }
    }
}

/// Positions per transaction when the rows are computed in SQL (`applies_in_sql`), in
/// slices: the database does the whole work of a range in one statement, with no
/// process work to overlap, so a range is many slices (100,000 positions for slices of
/// 5,000).
const SQL_RANGE_SLICES: u64 = 20;

/// Applies the log from `from` to `head` to the copies of a projection that computes its
/// rows in SQL: nothing is read, the database does the work, a range of `span`
/// positions per transaction, two ranges at once on two connections where the copies
/// allow it (PostgreSQL), so that both cores work. Returns the events applied, or how the
/// rebuild was superseded.
async fn apply_ranges(
    shadow: &Shadow,
    pool: &TablePool,
    projection: &dyn Projection,
    held_version: u32,
    from: u64,
    head: u64,
    span: u64,
) -> Result<Result<u64, Rebuilt>, ProjectionError> {
    // Without a second connection (none to be had: `max_connections`), one does it all.
    let helper = shadow.helper(pool).await.unwrap_or_else(|e| {
        tracing::warn!(
            projection = projection.name(),
            error = %e,
            "no second connection for the rebuild; applying one range at a time"
        );
        None
    });
    let mut position = from;
    let mut applied = 0;
    let applied_or_error = async {
        while position < head {
            if let Some(superseded) = superseded(pool, projection.name(), held_version).await? {
                return Ok(Err(superseded));
            }
            let middle = position.saturating_add(span).min(head);
            let until = match &helper {
                Some(_) => middle.saturating_add(span).min(head),
                None => middle,
            };
            let first = async {
                // Writes only the copies: on SQLite (TEMP copies) the ranges do not hold up
                // the appends, which the one write lock a `BEGIN IMMEDIATE` takes would.
                let mut tx = shadow.begin_copies_only().await?;
                let written = projection.apply_range(&mut tx, position, middle).await?;
                tx.commit().await?;
                Ok::<_, ProjectionError>(written)
            };
            let second = async {
                let Some(helper) = helper.as_ref().filter(|_| middle < until) else {
                    return Ok(0);
                };
                let mut tx = helper.begin().await?;
                let written = projection.apply_range(&mut tx, middle, until).await?;
                tx.commit().await?;
                Ok(written)
            };
            let (first, second) = tokio::try_join!(first, second)?;
            applied += first + second;
            position = until;
        }
        Ok(Ok(applied))
    }
    .await;
    if let Some(helper) = helper {
        helper.close().await;
    }
    applied_or_error
}

/// A cheap look (no lock) at whether another process swapped a read model in meanwhile, so
/// that the loser of a race stops early; the swap checks again under the lock.
async fn superseded(
    pool: &TablePool,
    name: &str,
    held_version: u32,
) -> Result<Option<Rebuilt>, ProjectionError> {
    let stored = load_checkpoint(pool, name).await?;
    if stored.as_ref().map(|c| c.version) == Some(held_version) {
        return Ok(None);
    }
    tracing::info!(
        projection = name,
        ?stored,
        "rebuild superseded; discarding it"
    );
    Ok(Some(Rebuilt::Superseded {
        stored: stored.map(|c| (c.version, c.position)),
    }))
}

async fn build_and_swap(
    shadow: &mut Shadow,
    store: &Arc<dyn EventStore>,
    pool: &TablePool,
    projection: &dyn Projection,
    batch_events_max: usize,
    held_version: u32,
) -> Result<Rebuilt, ProjectionError> {
    let name = projection.name();
    let version = projection.version();
    let types = projection.event_types();
    let started = Instant::now();
    // Everything up to here is in the shadow (the events of the projection's types).
    let mut position = 0;
    let mut applied = 0u64;

    // Catch up to the head, one slice of `batch_events_max` positions per transaction,
    // while the next slices are read (and decoded) by tasks of their own; then again to
    // the new head, until the log is less than a slice ahead: that rest is applied in the
    // swap's transaction.
    //
    // Copies to be moved into place were made without some indexes and the like, for
    // speed; they are made once caught up (`finish`), outside the swap's transaction
    // (which holds the checkpoint), and what was appended meanwhile is caught up again.
    for finished in [false, true] {
        loop {
            let head = store.head_position().await?;
            if head.saturating_sub(position) <= batch_events_max as u64 {
                break;
            }
            if projection.applies_in_sql() {
                let span = batch_events_max as u64 * SQL_RANGE_SLICES;
                match apply_ranges(shadow, pool, projection, held_version, position, head, span)
                    .await?
                {
                    Ok(written) => applied += written,
                    Err(superseded) => return Ok(superseded),
                }
                position = head;
                continue;
            }
            let (slices_tx, mut slices) = tokio::sync::mpsc::channel(SLICES_AHEAD);
            let _stop_readers = AbortOnDrop(tokio::spawn(read_slices(
                Arc::clone(store),
                position,
                head,
                batch_events_max,
                types,
                slices_tx,
            )));
            while let Some(slice) = slices.recv().await {
                if let Some(superseded) = superseded(pool, name, held_version).await? {
                    return Ok(superseded);
                }
                let (until, events) = slice?;
                check_order(name, position, &events);
                if !events.is_empty() {
                    let mut tx = shadow.begin().await?;
                    projection.apply(&mut tx, &events).await?;
                    tx.commit().await?;
                    applied += events.len() as u64;
                }
                position = until;
            }
            if position != head {
                return Err(ProjectionError::Failed(format!(
                    "the log's readers stopped at {position}, before the head {head}"
                )));
            }
        }
        if !finished {
            shadow.finish().await?;
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
    // already promised. A runner applied up to `stored_position` after reading it from
    // this log, so the head is at least there.
    let head = store.head_position().await?;
    assert!(
        head >= stored_position,
        "the log of {name} ends at {head}, before its checkpoint {stored_position}"
    );
    if projection.applies_in_sql() && position < head {
        applied += projection.apply_range(&mut tx, position, head).await?;
        position = head;
    }
    while position < head {
        let until = position.saturating_add(batch_events_max as u64).min(head);
        let events = store
            .read_range(position, until, types, batch_events_max)
            .await?;
        check_order(name, position, &events);
        if !events.is_empty() {
            projection.apply(&mut tx, &events).await?;
            applied += events.len() as u64;
        }
        position = until;
    }
    shadow.put_in_place(&mut tx).await?;
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

    let elapsed = started.elapsed();
    let swap = swap_started.elapsed();
    let report = RebuildReport {
        name: name.to_owned(),
        version,
        events: store.count_until(position).await?,
        applied,
        position,
        elapsed,
        swap,
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
    let shadow = Shadow::create(pool, projection.tables(), Purpose::Compare).await?;
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
        if events.is_empty() {
            return Err(ProjectionError::Failed(format!(
                "the log ends at {position}, before the checkpoint {target} of {name}"
            )));
        }
        events.retain(|e| e.position <= target);
        let Some(last) = events.last().map(|e| e.position) else {
            // No event between here and the checkpoint, but some after it: the checkpoint
            // is a position without an event (a hole left by a failed append on
            // PostgreSQL), which a runner of a projection computed in SQL may stop at.
            position = target;
            continue;
        };
        check_order(name, position, &events);
        let mut tx = shadow.begin().await?;
        projection.apply(&mut tx, &events).await?;
        tx.commit().await?;
        position = last;
    }
}
