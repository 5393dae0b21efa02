//! The Boxoffice event store: the append-only log that is the source of truth.
//!
//! One [`EventStore`] trait with two backends side by side: [`postgres::PgEventStore`]
//! and [`sqlite::SqliteEventStore`]. Both give the same guarantees:
//!
//! - `append` commits the events of several streams in one transaction or none, and
//!   checks each stream's expected version; a stale one is [`StoreError::Conflict`].
//!   `UNIQUE (stream_id, version)` is the last line of defence against oversell.
//! - Global positions are assigned in commit order, so a reader that has seen position N
//!   never later sees a new event below N (see `docs/adr/0002-global-order.md`).
//! - Readers are woken by [`EventStore::subscribe_head`], a watch of the newest committed
//!   position (fed in-process, and on PostgreSQL also by one NOTIFY per committed batch).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub mod chain;
mod common;
pub mod idempotency;
pub mod leases;
pub mod postgres;
mod recent;
pub mod sqlite;
pub mod tables;
pub mod transactions;
pub mod users;

/// Most events one `append` may carry; the engine's batches stay below it.
pub const APPEND_EVENTS_MAX: usize = 65_536;
/// Most events one read returns.
pub const READ_LIMIT_MAX: usize = 100_000;

/// Who and what caused an event. Stored as JSON next to the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub event_id: uuid::Uuid,
    pub correlation_id: uuid::Uuid,
    pub causation_id: Option<uuid::Uuid>,
    /// A user id (`usr_…`) or a system actor (`system:expiry`, `system:payment-saga`, …).
    pub actor: String,
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    pub metadata: EventMetadata,
}

/// A stream written by an append, with the version the writer believes it is at (0 for
/// a stream with no events yet).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamExpectation {
    pub stream_id: String,
    pub expected_version: u64,
}

/// One event of an append and the stream it goes to (an index into the batch's streams).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEvent {
    pub stream: usize,
    pub event: NewEvent,
}

/// The events for one stream, for building a batch stream by stream with
/// [`AppendBatch::grouped`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    pub stream_id: String,
    pub expected_version: u64,
    pub events: Vec<NewEvent>,
}

/// One atomic append: every stream belongs to the same partition (a show). Events are
/// stored in the order given, across streams, so the log reads as things happened; each
/// stream's versions continue from its expected version in that order.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendBatch {
    /// The partition key: the show id every stream here belongs to.
    pub partition_key: String,
    /// Every stream written, each once.
    pub streams: Vec<StreamExpectation>,
    pub events: Vec<PendingEvent>,
    /// When the events are recorded; from the caller's clock so tests are deterministic.
    pub recorded_at: DateTime<Utc>,
}

impl AppendBatch {
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// A batch that writes each stream's events in turn, streams in the order given.
    pub fn grouped(
        partition_key: impl Into<String>,
        streams: Vec<StreamAppend>,
        recorded_at: DateTime<Utc>,
    ) -> Self {
        let mut expectations = Vec::with_capacity(streams.len());
        let mut events = Vec::new();
        for (index, stream) in streams.into_iter().enumerate() {
            expectations.push(StreamExpectation {
                stream_id: stream.stream_id,
                expected_version: stream.expected_version,
            });
            events.extend(stream.events.into_iter().map(|event| PendingEvent {
                stream: index,
                event,
            }));
        }
        Self {
            partition_key: partition_key.into(),
            streams: expectations,
            events,
            recorded_at,
        }
    }
}

/// A fencing token: the epoch of the show lease under which a node writes the show
/// (`docs/adr/0009-show-ownership.md`). An append that carries one commits only while the
/// partition's lease still has this epoch; a node that lost its lease (it was paused or
/// cut off past its expiry and another node took the show over) gets
/// [`StoreError::Fenced`] and nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub epoch: u64,
}

/// What a successful append committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Position of the first and last event committed (inclusive). Positions inside
    /// one append are contiguous and in the order the events were given.
    pub first_position: u64,
    pub last_position: u64,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: u64,
    pub partition_key: String,
    pub stream_id: String,
    pub version: u64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    pub metadata: EventMetadata,
    pub recorded_at: DateTime<Utc>,
    /// The event's link in its partition's hash chain ([`chain`]); `None` only for events
    /// written before the chain existed, or stripped by someone tampering with the log.
    pub chain: Option<chain::Link>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A stream was not at its expected version: another writer got there first.
    #[error("version conflict on stream {stream_id}")]
    Conflict { stream_id: String },
    /// The append carried a fence whose epoch is no longer the partition's lease epoch:
    /// another node owns the show now. Nothing was written.
    #[error("append fenced off: partition {partition_key} is no longer leased at epoch {epoch}")]
    Fenced { partition_key: String, epoch: u64 },
    /// The batch is malformed (empty, too large, a stream named twice, …).
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// The database could not be reached or failed; the operation may be retried.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The store could not be opened: a bad URL, a failed migration.
    #[error("event store configuration: {0}")]
    Config(String),
    /// A stored row could not be decoded (corrupt metadata, a negative version, …).
    #[error("corrupt event at position {position}: {reason}")]
    Corrupt { position: u64, reason: String },
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Which backend this is, for logs and metrics: `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;

    /// Appends all events of all streams atomically, or nothing.
    async fn append(&self, batch: AppendBatch) -> StoreResult<AppendResult>;

    /// Like [`EventStore::append`], and with a fence, only while the partition's show
    /// lease still has the fence's epoch (checked in the append's own transaction), else
    /// [`StoreError::Fenced`]. Only PostgreSQL has leases; the default refuses a fence.
    async fn append_fenced(
        &self,
        batch: AppendBatch,
        fence: Option<Fence>,
    ) -> StoreResult<AppendResult> {
        match fence {
            None => self.append(batch).await,
            Some(_) => Err(StoreError::InvalidAppend(format!(
                "the {} backend has no show leases to fence appends with",
                self.backend()
            ))),
        }
    }

    /// All events of one stream, in version order, with `version > after_version`.
    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> StoreResult<Vec<RecordedEvent>>;

    /// Events of one partition (show) with `position > after`, in position order, at most `limit`.
    async fn read_partition(
        &self,
        partition_key: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>>;

    /// The global log: events with `position > after`, in position (= commit) order, at
    /// most `limit`. Never skips an event that a later call could return below the
    /// highest position this call returned.
    async fn read_all(&self, after: u64, limit: usize) -> StoreResult<Vec<RecordedEvent>>;

    /// A slice of the global log: events with `after < position <= until`, in position
    /// order, at most `limit`, and of those only the ones whose type is in `types` (all of
    /// them for `None`). A rebuild reads the log this way, several slices at once and
    /// without the types its projection ignores. The slice is complete only if `until` is
    /// at most a position that `head_position` returned: below that, every event has
    /// committed.
    async fn read_range(
        &self,
        after: u64,
        until: u64,
        types: Option<&[&str]>,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>>;

    /// How many events the log holds at positions up to `until`.
    async fn count_until(&self, until: u64) -> StoreResult<u64>;

    /// The newest committed position (0 for an empty log).
    async fn head_position(&self) -> StoreResult<u64>;

    /// A watch of the newest committed position known to this process; it changes after
    /// every local append and, on PostgreSQL, after appends by other processes.
    fn subscribe_head(&self) -> watch::Receiver<u64>;

    /// A consumer's checkpoint (0 if it has none).
    async fn load_checkpoint(&self, consumer: &str) -> StoreResult<u64>;

    /// Stores a consumer's checkpoint.
    async fn save_checkpoint(&self, consumer: &str, position: u64) -> StoreResult<()>;

    /// Every partition key that has events, for loading all shows on start.
    async fn partitions(&self) -> StoreResult<Vec<String>>;

    /// Cheap liveness check of the database.
    async fn ping(&self) -> StoreResult<()>;
}

/// Opens the store named by a URL: `postgres://…` or `sqlite://path` (the file is
/// created if missing). Runs the migrations of that backend.
///
/// Appends link every event into its partition's hash chain with `chain_key`; a store
/// opened without a key reads but refuses to append ([`StoreError::Config`]), so a tool
/// that only reads never needs the secret.
pub async fn connect(
    url: &str,
    chain_key: Option<chain::ChainKey>,
) -> StoreResult<std::sync::Arc<dyn EventStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            postgres::PgEventStore::connect(url, chain_key).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(
            sqlite::SqliteEventStore::connect(url, chain_key).await?,
        ))
    } else {
        Err(StoreError::Config(format!(
            "unsupported database URL scheme: {url}"
        )))
    }
}
