//! The projector runtime: runs each [`Projection`] as a task that follows the global
//! log and keeps its read model, and its checkpoint, in the side tables.
//!
//! A runner reads a batch of events after its checkpoint, applies it in one transaction
//! and writes the new checkpoint in that same transaction. Delivery is at least once (a
//! crash before the commit re-reads the batch), the effect exactly once (the rows and the
//! checkpoint commit together or not at all). The checkpoint row is locked and compared
//! with what the runner believes before every batch, so two runners of one projection (two
//! server processes on one database) never apply a batch twice: the one that finds the
//! checkpoint moved reloads it and carries on from there.
//!
//! A runner catches up on start, then follows live appends: it wakes on the store's
//! [`EventStore::subscribe_head`] watch and, as a safety net, on a slow poll. It never
//! advances past an event it has not applied: `read_all` returns the log in commit order
//! without gaps a later read could fill, and the checkpoint is the last position applied.
//! (A projection computed in SQL reads nothing: its runner applies the positions up to the
//! store's head, which are all committed, since the store commits positions in order.)
//! Any error (database down, an event the projection cannot use) is logged and retried
//! with exponential backoff; the task only ends at shutdown.
//!
//! Versions: the checkpoint also records which version of the projection's code the
//! tables hold, and only a rebuild changes it. A runner whose code is newer than the
//! stored version rebuilds the read model beside the old one ([`crate::rebuild`]: shadow
//! tables on a connection of its own, swapped in when caught up) while the old tables and
//! checkpoint keep serving; until the swap its handle reports the old checkpoint's
//! position, then it follows the log as usual. Two processes starting the new version at
//! once both build, and the first swap wins: the other finds the version changed and
//! discards its copy. A runner whose code is older than the stored version (a process not
//! yet upgraded) stands by: it applies nothing, and its handle follows the checkpoint that
//! the newer process moves. Going back to an older version takes an explicit rebuild with
//! the older code (`boxctl rebuild`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use boxoffice_domain::DomainEvent;
use boxoffice_store::tables::TablePool;
use boxoffice_store::{EventStore, RecordedEvent, StoreError};
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::db::{self, Backend, Tx, position_param};

/// Why applying a batch failed. Every one of them is retried (with backoff): the batch
/// and the checkpoint were rolled back together, so a retry starts from a clean state.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read-model database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// An event of a type the projection uses does not decode. It is not skipped: the
    /// projection stops at it, logging, until a fixed build can read it.
    #[error("event at position {position} cannot be decoded: {reason}")]
    Decode { position: u64, reason: String },
    /// An event contradicts what the read model holds (tickets for a reservation that
    /// was never placed, …): the log broke a rule of `EVENTS.md`, or the projection has
    /// a bug. Not skipped either.
    #[error("event at position {position} does not fit the read model: {reason}")]
    Inconsistent { position: u64, reason: String },
    /// A projection's own failure.
    #[error("{0}")]
    Failed(String),
}

/// A named, versioned consumer of the global log that keeps a read model in the side
/// tables.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Unique among the projections of a process; the checkpoint's key.
    fn name(&self) -> &'static str;

    /// Bumped whenever the projection's output for the same log changes; a runner of a
    /// newer version rebuilds the read model beside the old one and swaps it in.
    fn version(&self) -> u32;

    /// The tables holding this projection's rows, children before parents: a rebuild
    /// builds a copy of each and, at the swap, empties them in this order and refills them
    /// in the reverse order. `apply` must name them unqualified, so that during a rebuild
    /// its statements reach the copies.
    fn tables(&self) -> &'static [&'static str];

    /// The event types `apply` acts on, or `None` for every type. A rebuild reads only
    /// these from the log; a live runner's batches hold every type, the others included.
    /// `apply` must ignore any other type, so that both give the same read model.
    fn event_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Applies a batch of events, in log order, inside the runner's transaction. The
    /// batch holds every event of the log in its range, except, during a rebuild, types
    /// outside [`Self::event_types`]. An error rolls back everything done here.
    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError>;

    /// Whether the projection computes its rows in SQL from the log's own table (the
    /// store's `events`, in the same database) rather than from decoded events. Its
    /// runner and its rebuilds read no event: they call [`Self::apply_range`] on the
    /// positions after the checkpoint up to the head, at most `batch_events_max`
    /// positions per live batch (so the checkpoint may be a position without an event).
    /// `apply` is still called by a replay compared with the live tables
    /// ([`crate::compare_with_replay`]), and must give the same rows as `apply_range`
    /// over the batch's range.
    fn applies_in_sql(&self) -> bool {
        false
    }

    /// For a projection that [`Self::applies_in_sql`]: applies the log's events at
    /// positions in `(after, until]`, every one of which is committed, inside the runner's
    /// transaction; returns how many events it applied.
    async fn apply_range(
        &self,
        _tx: &mut Tx,
        _after: u64,
        _until: u64,
    ) -> Result<u64, ProjectionError> {
        Err(ProjectionError::Failed(format!(
            "{} does not apply ranges of the log in SQL",
            self.name()
        )))
    }
}

/// Decodes a stored event if its type is one of `wanted`; `Ok(None)` for other types.
pub fn decode_wanted(
    event: &RecordedEvent,
    wanted: &[&str],
) -> Result<Option<DomainEvent>, ProjectionError> {
    if !wanted.contains(&event.event_type.as_str()) {
        return Ok(None);
    }
    DomainEvent::decode(&event.event_type, event.schema_version, &event.payload)
        .map(Some)
        .map_err(|e| ProjectionError::Decode {
            position: event.position,
            reason: e.to_string(),
        })
}

/// Bounds and timings of the runners.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Events read and applied in one transaction.
    pub batch_events_max: usize,
    /// The safety-net poll: how long a caught-up runner waits for a head change before
    /// reading anyway (appends by other processes on SQLite wake nobody).
    pub poll_interval_ms: u64,
    /// The first retry delay after an error; doubled on each further error.
    pub retry_backoff_ms_min: u64,
    /// The longest retry delay.
    pub retry_backoff_ms_max: u64,
    /// The shortest time from the start of one batch of a caught-up runner to the start
    /// of its next: what is appended meanwhile is applied together, in one transaction,
    /// instead of one transaction per commit of the engine. A reader waiting for the read
    /// model to reach a position ([`ProjectorHandle::wait_for`]) cuts the wait short; a
    /// runner that is behind never waits. 0: a batch as soon as the head moves.
    pub batch_interval_ms_min: u64,
}

/// One transaction stays well below the store's largest read.
pub const BATCH_EVENTS_MAX: usize = 10_000;
const _: () = assert!(BATCH_EVENTS_MAX <= boxoffice_store::READ_LIMIT_MAX);

impl RuntimeConfig {
    /// The defaults, with the batch size suited to `backend`. On PostgreSQL batches of
    /// 1,024 events cut the seat map's lag behind the engine benchmark (100,000 seats,
    /// about 15,500 holds/s) from 1.52 / 1.98 s to 0.73 / 1.02 s (p50 / p99). On SQLite
    /// they also held the one write lock long enough to slow the engine from about 8,000
    /// to 5,000 holds/s, so SQLite keeps 256.
    pub fn for_backend(backend: crate::db::Backend) -> Self {
        Self {
            batch_events_max: match backend {
                crate::db::Backend::Postgres => 1_024,
                crate::db::Backend::Sqlite => 256,
            },
            batch_interval_ms_min: BATCH_INTERVAL_MS_SERVER,
            ..Self::default()
        }
    }
}

/// The server's `batch_interval_ms_min`. In an on-sale on PostgreSQL at 800 buyers/s the
/// seven runners each committed a transaction per engine commit, and the read side took
/// most of PostgreSQL's core; applied at most every 25 ms they commit at most 40 a second
/// each, and a read model lags by at most that much more (the API's seat map is fed in
/// memory and does not wait).
pub const BATCH_INTERVAL_MS_SERVER: u64 = 25;

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            // On SQLite a batch's transaction holds the database's one write lock, which
            // the event store's appends wait for: at ~13k events/s of catch-up (measured,
            // release build) 256 events hold it for about 20 ms.
            batch_events_max: 256,
            poll_interval_ms: 2_000,
            retry_backoff_ms_min: 100,
            retry_backoff_ms_max: 30_000,
            batch_interval_ms_min: 0,
        }
    }
}

impl RuntimeConfig {
    fn check(&self) {
        assert!(
            (1..=BATCH_EVENTS_MAX).contains(&self.batch_events_max),
            "batch_events_max must be 1..={BATCH_EVENTS_MAX}"
        );
        assert!(
            self.poll_interval_ms > 0,
            "poll_interval_ms must be positive"
        );
        assert!(
            0 < self.retry_backoff_ms_min && self.retry_backoff_ms_min <= self.retry_backoff_ms_max,
            "retry backoff bounds must be positive and ordered"
        );
    }
}

/// A projection's stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub version: u32,
    /// The last log position applied (0: none yet).
    pub position: u64,
    pub updated_at: DateTime<Utc>,
}

/// Reads a projection's checkpoint, if it has one.
pub async fn load_checkpoint(
    pool: &TablePool,
    name: &str,
) -> Result<Option<Checkpoint>, sqlx::Error> {
    let row = db::fetch_optional(
        pool,
        "SELECT version, position, updated_at FROM projection_checkpoints WHERE name = $1",
        &[name.into()],
    )
    .await?;
    row.map(|r| {
        Ok(Checkpoint {
            version: decode_version(r.int("version")?)?,
            position: r.position("position")?,
            updated_at: r.time("updated_at")?,
        })
    })
    .transpose()
}

fn decode_version(raw: i64) -> Result<u32, sqlx::Error> {
    u32::try_from(raw).map_err(|_| sqlx::Error::ColumnDecode {
        index: "version".into(),
        source: format!("version {raw} out of range").into(),
    })
}

/// The checkpoint as `(version, position)`, locked until the transaction ends.
pub(crate) async fn lock_checkpoint(
    tx: &mut Tx,
    name: &str,
) -> Result<Option<(u32, u64)>, sqlx::Error> {
    // SQLite's BEGIN IMMEDIATE already holds the database's write lock.
    let sql = match tx.backend() {
        Backend::Postgres => {
            "SELECT version, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE"
        }
        Backend::Sqlite => "SELECT version, position FROM projection_checkpoints WHERE name = $1",
    };
    let row = tx.fetch_optional(sql, &[name.into()]).await?;
    row.map(|r| Ok((decode_version(r.int("version")?)?, r.position("position")?)))
        .transpose()
}

/// Panics unless every table of `projection` is a plain identifier (the table names are
/// written into SQL).
pub(crate) fn check_tables(projection: &dyn Projection) {
    for table in projection.tables() {
        assert!(
            !table.is_empty() && table.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "projection {} names a table {table:?} that is not a plain identifier",
            projection.name()
        );
    }
}

/// What the API holds of a running projection: its applied position.
#[derive(Clone)]
pub struct ProjectorHandle {
    name: &'static str,
    version: u32,
    applied: watch::Receiver<u64>,
    /// Tells the runner that a reader waits, so it does not wait out its batch interval.
    hurry: Arc<Notify>,
}

impl ProjectorHandle {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The last log position whose effects are committed in the read model (0 until the
    /// runner has loaded its checkpoint).
    pub fn position(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A watch of [`Self::position`], for waking on progress.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Waits until the read model reflects `position` (so a caller can read its own
    /// write); `false` if that did not happen within `timeout` or the runner stopped.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut applied = self.applied.clone();
        if *applied.borrow() < position {
            self.hurry.notify_one();
        }
        matches!(
            tokio::time::timeout(timeout, applied.wait_for(|p| *p >= position)).await,
            Ok(Ok(_))
        )
    }
}

/// A set of running projections. Dropping it stops them too (after their current batch);
/// [`Projections::shutdown`] also waits for them to finish.
pub struct Projections {
    handles: Vec<ProjectorHandle>,
    projections: Vec<Arc<dyn Projection>>,
    store: Arc<dyn EventStore>,
    pool: TablePool,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Projections {
    /// Starts one runner task per projection. Panics on a duplicate name or a bad config
    /// (both are programming errors).
    pub fn start(
        store: Arc<dyn EventStore>,
        pool: TablePool,
        projections: Vec<Arc<dyn Projection>>,
        config: RuntimeConfig,
    ) -> Self {
        config.check();
        let (shutdown, _) = watch::channel(false);
        let mut handles = Vec::with_capacity(projections.len());
        let mut tasks = Vec::with_capacity(projections.len());
        let all = projections.clone();
        for projection in projections {
            let name = projection.name();
            assert!(
                !handles.iter().any(|h: &ProjectorHandle| h.name == name),
                "projection {name} started twice"
            );
            check_tables(projection.as_ref());
            let (applied, applied_rx) = watch::channel(0);
            let hurry = Arc::new(Notify::new());
            handles.push(ProjectorHandle {
                name,
                version: projection.version(),
                applied: applied_rx,
                hurry: Arc::clone(&hurry),
            });
            let runner = Runner {
                projection: Arc::clone(&projection),
                store: Arc::clone(&store),
                pool: pool.clone(),
                config: config.clone(),
                applied,
                hurry,
            };
            tasks.push(tokio::spawn(runner.run(shutdown.subscribe())));
        }
        Self {
            handles,
            projections: all,
            store,
            pool,
            shutdown,
            tasks,
        }
    }

    /// Rebuilds one running projection from the start of the log beside its tables and
    /// swaps the result in (see [`crate::rebuild::rebuild_projection`]) while its runner
    /// keeps the current tables going: at the swap the runner finds its checkpoint moved,
    /// reloads it and continues after the rebuild's position, so no event is applied twice.
    /// `None` for an unknown name.
    pub async fn rebuild(
        &self,
        name: &str,
        batch_events_max: usize,
    ) -> Option<Result<crate::rebuild::RebuildReport, ProjectionError>> {
        let projection = self.projections.iter().find(|p| p.name() == name)?;
        Some(
            crate::rebuild::rebuild_projection(
                Arc::clone(&self.store),
                &self.pool,
                projection.as_ref(),
                batch_events_max,
            )
            .await,
        )
    }

    pub fn get(&self, name: &str) -> Option<&ProjectorHandle> {
        self.handles.iter().find(|h| h.name == name)
    }

    pub fn handles(&self) -> &[ProjectorHandle] {
        &self.handles
    }

    /// Waits until every projection reflects `position`.
    pub async fn wait_for_all(&self, position: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for handle in &self.handles {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !handle.wait_for(position, left).await {
                return false;
            }
        }
        true
    }

    /// Stops every runner once the batch it is applying has committed (a rebuild in
    /// progress is abandoned), and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in self.tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

struct Runner {
    projection: Arc<dyn Projection>,
    store: Arc<dyn EventStore>,
    pool: TablePool,
    config: RuntimeConfig,
    applied: watch::Sender<u64>,
    hurry: Arc<Notify>,
}

/// What a runner knows of its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Nothing yet, or it may have moved: load it before the next batch.
    Unloaded,
    /// The tables hold this code's version up to this position.
    At(u64),
    /// The tables hold this newer version, which another process keeps up: apply
    /// nothing, look again on the next wake.
    StandingBy { stored_version: u32 },
}

/// The stored checkpoint, compared with the code's version.
enum Loaded {
    Current {
        position: u64,
    },
    /// An older version: rebuild beside it.
    Older {
        stored_version: u32,
        position: u64,
    },
    Newer {
        stored_version: u32,
        position: u64,
    },
}

enum Step {
    /// Nothing after the checkpoint.
    Idle,
    /// A batch was applied (or the checkpoint reloaded); `more` if another may follow
    /// at once.
    Progress { more: bool },
}

/// Whether shutdown was asked for, or its sender is gone.
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Resolves when shutdown is asked for, or when its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

impl Runner {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.projection.name();
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let backoff_min = Duration::from_millis(self.config.retry_backoff_ms_min);
        let backoff_max = Duration::from_millis(self.config.retry_backoff_ms_max);
        let interval = Duration::from_millis(self.config.batch_interval_ms_min);
        let mut last_batch: Option<tokio::time::Instant> = None;
        let mut head = self.store.subscribe_head();
        let mut known = Known::Unloaded;
        let mut backoff = backoff_min;
        let mut failures: u32 = 0;
        tracing::info!(projection = name, "projection started");
        loop {
            if stopping(&shutdown) {
                break;
            }
            // A batch is never cancelled half-way: cancelled during its COMMIT, the
            // commit could land after `shutdown` returned (rows and checkpoint moving
            // under whoever looks next), and cancelled during its BEGIN on SQLite, the
            // pooled connection could be left inside a transaction holding the write
            // lock. A batch is bounded (`batch_events_max`), so shutdown waits at most
            // one. Only a rebuild, which runs on its own connection, stops half-way.
            let started = tokio::time::Instant::now();
            let step = self.step(&mut known, &mut head, &mut shutdown).await;
            match step {
                Ok(step) => {
                    if failures > 0 {
                        tracing::info!(projection = name, failures, "projection recovered");
                    }
                    failures = 0;
                    backoff = backoff_min;
                    if let Step::Progress { more } = step {
                        last_batch = Some(started);
                        if more {
                            continue;
                        }
                    }
                    tokio::select! {
                        biased;
                        () = stopped(&mut shutdown) => break,
                        changed = head.changed() => {
                            // The store is gone; only the poll is left to wake us.
                            if changed.is_err() {
                                tokio::time::sleep(poll).await;
                            }
                        }
                        () = tokio::time::sleep(poll) => {}
                    }
                    // Let what the engine appends next join this batch, unless a reader
                    // waits for it.
                    if let Some(due) = last_batch.map(|at| at + interval)
                        && due > tokio::time::Instant::now()
                    {
                        tokio::select! {
                            biased;
                            () = stopped(&mut shutdown) => break,
                            () = self.hurry.notified() => {}
                            () = tokio::time::sleep_until(due) => {}
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    known = Known::Unloaded;
                    let retry_in_ms = backoff.as_millis() as u64;
                    if matches!(
                        e,
                        ProjectionError::Decode { .. } | ProjectionError::Inconsistent { .. }
                    ) {
                        // Retrying will not help until the code or the log changes: the
                        // read model stays behind until someone acts.
                        tracing::error!(
                            projection = name,
                            error = %e,
                            failures,
                            retry_in_ms,
                            "projection stuck on an event it cannot apply"
                        );
                    } else {
                        tracing::warn!(
                            projection = name,
                            error = %e,
                            failures,
                            retry_in_ms,
                            "projection batch failed; retrying"
                        );
                    }
                    tokio::select! {
                        biased;
                        () = stopped(&mut shutdown) => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(backoff_max);
                }
            }
        }
        tracing::info!(projection = name, "projection stopped");
    }

    fn publish(&self, position: u64) {
        self.applied.send_if_modified(|current| {
            let changed = *current != position;
            *current = position;
            changed
        });
    }

    async fn step(
        &self,
        known: &mut Known,
        head: &mut watch::Receiver<u64>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Step, ProjectionError> {
        let name = self.projection.name();
        let version = self.projection.version();
        let position = match *known {
            Known::At(position) => position,
            Known::Unloaded | Known::StandingBy { .. } => match self.load().await? {
                Loaded::Current { position } => {
                    tracing::info!(projection = name, version, position, "checkpoint loaded");
                    *known = Known::At(position);
                    self.publish(position);
                    position
                }
                Loaded::Newer {
                    stored_version,
                    position,
                } => {
                    if *known != (Known::StandingBy { stored_version }) {
                        tracing::warn!(
                            projection = name,
                            stored_version,
                            version,
                            "the tables hold a newer version of this projection; standing by \
                             (rebuild explicitly to go back to this version)"
                        );
                    }
                    *known = Known::StandingBy { stored_version };
                    // Another process keeps the tables; reads here see what it applied.
                    self.publish(position);
                    head.borrow_and_update();
                    return Ok(Step::Idle);
                }
                Loaded::Older {
                    stored_version,
                    position,
                } => {
                    // The old tables keep serving, complete up to their checkpoint, until
                    // the swap; the handle says so.
                    self.publish(position);
                    // Stopped half-way at shutdown: the shadow tables live on the
                    // rebuild's own connection, which closes (and rolls back) with it; the
                    // real tables and checkpoint are untouched until the swap commits.
                    tokio::select! {
                        biased;
                        () = stopped(shutdown) => return Ok(Step::Idle),
                        rebuilt = crate::rebuild::rebuild_beside(
                            &self.store,
                            &self.pool,
                            self.projection.as_ref(),
                            self.config.batch_events_max,
                            stored_version,
                        ) => rebuilt?,
                    };
                    // Swapped in by this runner or by another process: load what is there.
                    *known = Known::Unloaded;
                    return Ok(Step::Progress { more: true });
                }
            },
        };
        // Marked seen before reading: an append after this point wakes the next wait.
        head.borrow_and_update();
        let batch_max = self.config.batch_events_max;
        let batch = if self.projection.applies_in_sql() {
            // Nothing to read: the positions up to the head are all committed (the store
            // commits them in order), and the database reads the events itself.
            let log_head = self.store.head_position().await?;
            if log_head <= position {
                return Ok(Step::Idle);
            }
            let until = position.saturating_add(batch_max as u64).min(log_head);
            Batch::Range {
                until,
                more: until < log_head,
            }
        } else {
            let events = self.store.read_all(position, batch_max).await?;
            if events.is_empty() {
                return Ok(Step::Idle);
            }
            crate::rebuild::check_order(name, position, &events);
            Batch::Events(events)
        };

        let mut tx = Tx::begin(&self.pool).await?;
        let stored = lock_checkpoint(&mut tx, name).await?;
        if stored != Some((version, position)) {
            // Another runner (another process) moved the checkpoint, or a rebuild swapped.
            tx.rollback().await?;
            tracing::info!(
                projection = name,
                expected = position,
                ?stored,
                "checkpoint moved under this runner; reloading it"
            );
            *known = Known::Unloaded;
            return Ok(Step::Progress { more: true });
        }
        let (last, more) = match &batch {
            Batch::Range { until, more } => {
                self.projection
                    .apply_range(&mut tx, position, *until)
                    .await?;
                (*until, *more)
            }
            Batch::Events(events) => {
                self.projection.apply(&mut tx, events).await?;
                let last = events.last().map_or(position, |e| e.position);
                (last, events.len() >= batch_max)
            }
        };
        let updated = tx
            .execute(
                "UPDATE projection_checkpoints SET position = $2, updated_at = $3 WHERE name = $1",
                &[name.into(), position_param(last), Utc::now().into()],
            )
            .await?;
        assert_eq!(updated, 1, "the locked checkpoint row of {name} exists");
        tx.commit().await?;
        *known = Known::At(last);
        self.publish(last);
        Ok(Step::Progress { more })
    }

    /// Loads the checkpoint, creating it at 0 with the code's version for a projection that
    /// never ran (its tables are empty). Changes nothing else: only a rebuild's swap
    /// changes the stored version.
    async fn load(&self) -> Result<Loaded, ProjectionError> {
        let name = self.projection.name();
        let version = self.projection.version();
        let checkpoint = match load_checkpoint(&self.pool, name).await? {
            Some(checkpoint) => checkpoint,
            None => {
                db::execute(
                    &self.pool,
                    "INSERT INTO projection_checkpoints (name, version, position, updated_at)
                     VALUES ($1, $2, 0, $3) ON CONFLICT (name) DO NOTHING",
                    &[name.into(), i64::from(version).into(), Utc::now().into()],
                )
                .await?;
                load_checkpoint(&self.pool, name).await?.ok_or_else(|| {
                    ProjectionError::Failed(format!(
                        "the checkpoint row of {name} vanished while it was being loaded"
                    ))
                })?
            }
        };
        let position = checkpoint.position;
        Ok(match checkpoint.version.cmp(&version) {
            std::cmp::Ordering::Equal => Loaded::Current { position },
            std::cmp::Ordering::Less => Loaded::Older {
                stored_version: checkpoint.version,
                position,
            },
            std::cmp::Ordering::Greater => Loaded::Newer {
                stored_version: checkpoint.version,
                position,
            },
        })
    }
}

/// What a runner applies in one transaction.
enum Batch {
    /// The events read after the checkpoint.
    Events(Vec<RecordedEvent>),
    /// For a projection computed in SQL: the positions after the checkpoint up to `until`;
    /// `more` if the head is further.
    Range { until: u64, more: bool },
}
