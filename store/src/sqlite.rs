//! The SQLite backend: the event log in one WAL-mode file, written by exactly one
//! connection and read through a small pool.
//!
//! One writer connection behind a mutex makes every append a `BEGIN IMMEDIATE` … `COMMIT`
//! on its own, so rowid positions are assigned in commit order without further work.
//! sqlx runs each SQLite connection on a worker thread and pays a hop per statement, so an
//! append is a fixed handful of statements whatever its size: the whole batch travels as
//! one JSON text parameter and is expanded by `json_each` inside SQLite. For the same
//! reason reads in position order (`read_all`, `read_range`, `read_partition`) come back as
//! one row: SQLite
//! folds the slice into a JSON array of the events' columns (see [`SELECT_SLICE`]).
//!
//! Automatic WAL checkpoints are off on the writer, because SQLite would run them inside
//! the commit that crosses the threshold and double that commit's latency; a background
//! task checkpoints from a connection of its own instead: passively every second, and
//! with TRUNCATE when the WAL has grown past the journal size limit, since under appends
//! without a pause the WAL is never found fully copied and would grow by gigabytes.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tokio::task::JoinHandle;

use crate::chain::{ChainKey, GENESIS, Link};
use crate::common::{
    advance_head, assert_contiguous, chain_links, checkpoint_position, content_digests,
    decode_link, decode_metadata, decode_position, decode_stored_position, decode_version,
    expected_version_i64, planned_events, read_limit, require_key, saturating_i64, validate,
};
use crate::recent::RecentEvents;
use crate::{
    AppendBatch, AppendResult, EventMetadata, EventStore, RecordedEvent, StoreError, StoreResult,
};

/// Read connections; reads in WAL mode run beside the writer, so a few are plenty.
const READ_POOL_CONNECTIONS_MAX: u32 = 4;
/// How long to wait for a pooled read connection before reporting the store unavailable.
const ACQUIRE_TIMEOUT_MS: u64 = 5_000;
/// How long a statement waits on another process's lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT_MS: u64 = 5_000;
/// How often the background task checkpoints the WAL into the database file.
const CHECKPOINT_INTERVAL_MS: u64 = 1_000;
/// The WAL file is truncated back to this size after a checkpoint resets it, so one burst
/// does not leave a huge file behind.
const JOURNAL_SIZE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;
/// A WAL longer than this many frames (pages, 4 KiB by default: the journal size limit)
/// after a passive checkpoint is started again with a TRUNCATE checkpoint.
const WAL_TRUNCATE_FRAMES: i64 = (JOURNAL_SIZE_LIMIT_BYTES / 4096) as i64;

/// SQLITE_CONSTRAINT_UNIQUE, the extended result code of a unique index violation. In
/// `events` the only unique index a correct append can hit is `events_stream_version_key`
/// (positions come from AUTOINCREMENT, and a duplicate rowid would be
/// SQLITE_CONSTRAINT_PRIMARYKEY).
const SQLITE_CONSTRAINT_UNIQUE: &str = "2067";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The first stream (in the order given) that is not at its expected version E: current
/// means no row at all for E = 0, or a row at E and none at E + 1. `?1` is a JSON array of
/// `[stream_id, expected_version]` pairs.
/// The check made before the insert, over the streams the writer believes exist
/// (`?1`: `[[stream_id, expected_version], …]` with E > 0): the row at E must exist. Any
/// other stale expectation (a row at E + 1, or a row for a stream expected to be new)
/// makes the insert fail on `events_stream_version_key`, mapped to the same conflict.
const BEHIND_STREAM_SQL: &str = "\
SELECT s.value ->> 0
FROM json_each(?1) AS s
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.value ->> 0 AND e.version = s.value ->> 1)
ORDER BY s.key
LIMIT 1";

const STALE_STREAM_SQL: &str = "\
SELECT s.value ->> 0
FROM json_each(?1) AS s
WHERE NOT CASE
    WHEN s.value ->> 1 = 0 THEN
        NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.value ->> 0)
    ELSE
        EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.value ->> 0 AND e.version = s.value ->> 1)
        AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.value ->> 0 AND e.version = (s.value ->> 1) + 1)
    END
ORDER BY s.key
LIMIT 1";

/// Inserts the whole batch, in array order, from one JSON array of [`JsonEvent`]. `->`
/// keeps payload and metadata as JSON text; `->>` unwraps the scalars. `?4` holds the
/// events' hash-chain links, 32 bytes each in the same order.
const INSERT_SQL: &str = "\
INSERT INTO events (partition_key, stream_id, version, event_type, schema_version, payload, metadata, recorded_at, chain)
SELECT ?2, e.value ->> 's', e.value ->> 'v', e.value ->> 't', e.value ->> 'sv', e.value -> 'p', e.value -> 'm', ?3,
       substr(?4, e.key * 32 + 1, 32)
FROM json_each(?1) AS e
ORDER BY e.key";

/// The partition's newest link, which the batch's chain continues.
const LAST_LINK_SQL: &str =
    "SELECT chain FROM events WHERE partition_key = ?1 ORDER BY position DESC LIMIT 1";

/// What the writer asserts after its insert, before committing: the rows in the computed
/// position range, and the first and last of them belonging to the first and last event of
/// the batch (so the range is this batch's, in the order given).
const VERIFY_SQL: &str = "\
SELECT (SELECT count(*) FROM events WHERE position >= ?1),
       (SELECT coalesce(max(position), 0) FROM events),
       (SELECT stream_id FROM events WHERE position = ?1),
       (SELECT version FROM events WHERE position = ?1),
       (SELECT stream_id FROM events WHERE position = ?2),
       (SELECT version FROM events WHERE position = ?2)";

const SELECT_EVENT_COLUMNS: &str = "\
SELECT position, partition_key, stream_id, version, event_type, schema_version, payload, metadata, recorded_at, chain
FROM events";

/// A slice of the log as one row: `{inner}` (a `SELECT * FROM events …` in position order)
/// folded into a JSON array of `[position, partition_key, stream_id, version, event_type,
/// schema_version, payload, metadata, recorded_at, chain as hex]`, the texts as JSON
/// strings. sqlx hands each row over from its worker thread on its own: fetching a million
/// events took 4.0–4.5 s of CPU with no decoding at all, and as JSON arrays of 5,000 about
/// 1.9 s with the payloads' texts left unparsed (2026-11-25).
const SELECT_SLICE: &str = "SELECT json_group_array(json_array(position, partition_key, \
     stream_id, version, event_type, schema_version, payload, metadata, recorded_at, \
     CASE WHEN chain IS NULL THEN NULL ELSE hex(chain) END)) AS events FROM ({inner})";

const HEAD_SQL: &str = "SELECT coalesce(max(position), 0) FROM events";

/// One event as the insert statement reads it from the JSON batch. Short keys keep the
/// parameter small; payload and metadata are embedded as JSON, not as strings, so they are
/// parsed once by SQLite and stored as its canonical JSON text.
#[derive(Serialize)]
struct JsonEvent<'a> {
    s: &'a str,
    v: i64,
    t: &'a str,
    sv: i32,
    p: &'a serde_json::Value,
    m: &'a EventMetadata,
}

/// The single writer connection, and whether a transaction may be open on it: set before
/// BEGIN and cleared after COMMIT or ROLLBACK, so an append that failed or panicked in
/// between leaves a mark, and the next use of the writer rolls back first.
struct Writer {
    conn: SqliteConnection,
    in_transaction: bool,
}

/// The SQLite event store. Dropping it stops its checkpoint task.
pub struct SqliteEventStore {
    writer: Arc<Mutex<Writer>>,
    chain_key: Option<ChainKey>,
    readers: SqlitePool,
    head: Arc<watch::Sender<u64>>,
    recent: Arc<RecentEvents>,
    checkpointer: Option<JoinHandle<()>>,
}

impl Drop for SqliteEventStore {
    fn drop(&mut self) {
        if let Some(task) = &self.checkpointer {
            task.abort();
        }
    }
}

impl SqliteEventStore {
    /// Opens (creating if missing) the database named by a `sqlite://path` URL, runs the
    /// migrations, and starts the checkpoint task. `sqlite::memory:` opens a private
    /// in-memory database shared by this store's connections.
    pub async fn connect(url: &str, chain_key: Option<ChainKey>) -> StoreResult<Self> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .foreign_keys(true);
        let in_memory = is_in_memory(url);
        if !in_memory {
            create_parent_dir(base.get_filename())?;
        }

        // Checkpoints are the background task's job, never the writer's (see module docs).
        let writer_options = base
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES.to_string());
        let mut writer = writer_options.connect().await.map_err(open_error)?;
        MIGRATOR
            .run(&mut writer)
            .await
            .map_err(|e| StoreError::Config(format!("SQLite migration failed: {e}")))?;
        let head: i64 = sqlx::query_scalar(HEAD_SQL)
            .fetch_one(&mut writer)
            .await
            .map_err(unavailable)?;
        let head = Arc::new(watch::channel(decode_stored_position("head position", head)?).0);

        // An in-memory database lives in shared cache, where a read-only connection cannot
        // attach; readers wait on the writer through SQLite's unlock notification there.
        let reader_options = if in_memory {
            base.clone()
        } else {
            base.clone().read_only(true)
        };
        let readers = SqlitePoolOptions::new()
            .max_connections(READ_POOL_CONNECTIONS_MAX)
            .acquire_timeout(Duration::from_millis(ACQUIRE_TIMEOUT_MS))
            .connect_with(reader_options)
            .await
            .map_err(open_error)?;

        let checkpointer = if in_memory {
            None
        } else {
            let conn = base
                .pragma("wal_autocheckpoint", "0")
                .connect()
                .await
                .map_err(open_error)?;
            Some(tokio::spawn(checkpoint_periodically(
                conn,
                head.subscribe(),
            )))
        };

        Ok(Self {
            writer: Arc::new(Mutex::new(Writer {
                conn: writer,
                in_transaction: false,
            })),
            chain_key,
            readers,
            head,
            recent: Arc::default(),
            checkpointer,
        })
    }

    async fn fetch_events<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let rows = query.fetch_all(&self.readers).await.map_err(unavailable)?;
        rows.iter().map(decode_event).collect()
    }

    /// The events `inner` selects (`SELECT * FROM events …`), fetched as one row (see
    /// [`SELECT_SLICE`]). If the slice does not decode, it is read again row by row, so that
    /// the error names the event's position as before.
    async fn fetch_slice(
        &self,
        inner: &str,
        binds: &[Bind<'_>],
    ) -> StoreResult<Vec<RecordedEvent>> {
        let sql = SELECT_SLICE.replace("{inner}", inner);
        let row = bind_all(sqlx::query(&sql), binds)
            .fetch_one(&self.readers)
            .await
            .map_err(unavailable)?;
        let decoded = row
            .try_get::<&str, _>("events")
            .map_err(|e| corrupt(0, e))
            .and_then(decode_slice);
        match decoded {
            Ok(events) => Ok(events),
            Err(_) => self.fetch_events(bind_all(sqlx::query(inner), binds)).await,
        }
    }
}

/// A parameter of a slice's query.
#[derive(Debug, Clone, Copy)]
enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    binds: &[Bind<'q>],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for bind in binds {
        query = match *bind {
            Bind::Int(value) => query.bind(value),
            Bind::Text(value) => query.bind(value),
        };
    }
    query
}

/// One event of a slice as [`SELECT_SLICE`] writes it.
#[derive(serde::Deserialize)]
struct SliceEvent(
    i64,
    String,
    String,
    i64,
    String,
    i32,
    String,
    String,
    String,
    Option<String>,
);

/// The events of a slice, in position order (SQLite feeds `json_group_array` in the
/// subquery's order, but does not promise it).
fn decode_slice(text: &str) -> StoreResult<Vec<RecordedEvent>> {
    let rows: Vec<SliceEvent> = serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        position: 0,
        reason: format!("a slice of the log: {e}"),
    })?;
    let mut events = rows
        .into_iter()
        .map(|row| {
            let position = decode_position(row.0)?;
            let chain = row
                .9
                .map(|hex| {
                    from_hex(&hex).ok_or_else(|| StoreError::Corrupt {
                        position,
                        reason: format!("chain {hex:?} is not hexadecimal"),
                    })
                })
                .transpose()?;
            decode_parts(StoredEvent {
                position,
                partition_key: row.1,
                stream_id: row.2,
                version: row.3,
                event_type: row.4,
                schema_version: row.5,
                payload: &row.6,
                metadata: &row.7,
                recorded_at: &row.8,
                chain,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    events.sort_by_key(|e| e.position);
    Ok(events)
}

/// The bytes an even-length hexadecimal text spells (SQLite's `hex()` writes upper case).
fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[async_trait]
impl EventStore for SqliteEventStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn append(&self, batch: AppendBatch) -> StoreResult<AppendResult> {
        validate(&batch)?;
        // Serialized before taking the writer, so that building the JSON of one batch
        // overlaps with the previous batch's commit instead of extending it.
        let key = require_key(&self.chain_key)?.clone();
        let encoded = EncodedBatch::new(&batch)?;
        let writer = Arc::clone(&self.writer).lock_owned().await;
        // The append runs in a task of its own so that a caller giving up (a dropped
        // future) cannot stop it between BEGIN and COMMIT with the writer mid-transaction.
        // It also advances the head itself, so readers wake even if the caller is gone.
        let head = Arc::clone(&self.head);
        let recent = Arc::clone(&self.recent);
        let task = tokio::spawn(async move {
            let mut writer = writer;
            let (result, links) = append_on_writer(&mut writer, &batch, encoded, key).await?;
            // Landed before the writer is free, so that appends land in commit order and
            // a reader woken by a later one never meets this one missing.
            recent.committed(batch, result.first_position, &links, &head);
            drop(writer);
            Ok(result)
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Unavailable(format!(
                "SQLite append task ended: {e}"
            ))),
        }
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let sql = format!(
            "{SELECT_EVENT_COLUMNS} WHERE stream_id = ?1 AND version > ?2 ORDER BY version"
        );
        self.fetch_events(
            sqlx::query(&sql)
                .bind(stream_id)
                .bind(saturating_i64(after_version)),
        )
        .await
    }

    async fn read_partition(
        &self,
        partition_key: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.fetch_slice(
            "SELECT * FROM events WHERE partition_key = ?1 AND position > ?2 \
             ORDER BY position LIMIT ?3",
            &[
                Bind::Text(partition_key),
                Bind::Int(saturating_i64(after)),
                Bind::Int(read_limit(limit)),
            ],
        )
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> StoreResult<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(events) = self.recent.read_landed(after, limit, &self.head).await {
            return Ok(events);
        }
        self.fetch_slice(
            "SELECT * FROM events WHERE position > ?1 ORDER BY position LIMIT ?2",
            &[
                Bind::Int(saturating_i64(after)),
                Bind::Int(read_limit(limit)),
            ],
        )
        .await
    }

    async fn read_range(
        &self,
        after: u64,
        until: u64,
        types: Option<&[&str]>,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        if limit == 0 || until <= after || types.is_some_and(<[&str]>::is_empty) {
            return Ok(Vec::new());
        }
        let filter = types.map_or(String::new(), |types| {
            let marks: Vec<String> = (0..types.len()).map(|i| format!("?{}", i + 4)).collect();
            format!(" AND event_type IN ({})", marks.join(", "))
        });
        let inner = format!(
            "SELECT * FROM events WHERE position > ?1 AND position <= ?2{filter} \
             ORDER BY position LIMIT ?3"
        );
        let mut binds = vec![
            Bind::Int(saturating_i64(after)),
            Bind::Int(saturating_i64(until)),
            Bind::Int(read_limit(limit)),
        ];
        binds.extend(types.unwrap_or_default().iter().map(|t| Bind::Text(t)));
        self.fetch_slice(&inner, &binds).await
    }

    async fn count_until(&self, until: u64) -> StoreResult<u64> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position <= ?1")
            .bind(saturating_i64(until))
            .fetch_one(&self.readers)
            .await
            .map_err(unavailable)?;
        decode_stored_position("event count", count)
    }

    async fn head_position(&self) -> StoreResult<u64> {
        let head: i64 = sqlx::query_scalar(HEAD_SQL)
            .fetch_one(&self.readers)
            .await
            .map_err(unavailable)?;
        let head = decode_stored_position("head position", head)?;
        advance_head(&self.head, head);
        Ok(head)
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn load_checkpoint(&self, consumer: &str) -> StoreResult<u64> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE consumer = ?1")
                .bind(consumer)
                .fetch_optional(&self.readers)
                .await
                .map_err(unavailable)?;
        position.map_or(Ok(0), |p| decode_stored_position("checkpoint", p))
    }

    async fn save_checkpoint(&self, consumer: &str, position: u64) -> StoreResult<()> {
        let position = checkpoint_position(position)?;
        // Checkpoints are writes, so they go through the one writer connection too.
        let mut writer = self.writer.lock().await;
        let writer = &mut *writer;
        rollback_abandoned(writer).await;
        sqlx::query(
            "INSERT INTO checkpoints (consumer, position, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(consumer)
        .bind(position)
        .bind(format_timestamp(Utc::now()))
        .execute(&mut writer.conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn partitions(&self) -> StoreResult<Vec<String>> {
        // A loose index scan over events_partition_position_idx: one index probe per
        // partition instead of reading every event.
        sqlx::query_scalar(
            "WITH RECURSIVE p(key) AS (
                 SELECT min(partition_key) FROM events
                 UNION ALL
                 SELECT (SELECT min(e.partition_key) FROM events e WHERE e.partition_key > p.key)
                 FROM p WHERE p.key IS NOT NULL
             )
             SELECT key FROM p WHERE key IS NOT NULL",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(unavailable)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// A batch as the two JSON parameters of an append.
struct EncodedBatch {
    /// `[[stream_id, expected_version], …]` for naming a stale stream.
    streams: String,
    /// The same for streams expected to exist (E > 0), for the check before the
    /// insert; `None` when every stream is new.
    existing_streams: Option<String>,
    /// `[JsonEvent, …]` in append order for the insert.
    events: String,
    /// Each event's content digest, for its hash-chain link.
    digests: Vec<[u8; 32]>,
    event_count: usize,
}

impl EncodedBatch {
    fn new(batch: &AppendBatch) -> StoreResult<Self> {
        let streams: Vec<(&str, i64)> = batch
            .streams
            .iter()
            .map(|s| {
                (
                    s.stream_id.as_str(),
                    expected_version_i64(s.expected_version),
                )
            })
            .collect();
        let planned: Vec<_> = planned_events(batch).collect();
        let digests = content_digests(batch, &planned);
        let events: Vec<JsonEvent<'_>> = planned
            .iter()
            .map(|p| JsonEvent {
                s: p.stream_id,
                v: p.version,
                t: &p.event.event_type,
                sv: p.event.schema_version,
                p: &p.event.payload,
                m: &p.event.metadata,
            })
            .collect();
        let encode_error = |e: serde_json::Error| {
            StoreError::InvalidAppend(format!("batch cannot be encoded: {e}"))
        };
        let existing: Vec<(&str, i64)> = streams.iter().copied().filter(|(_, e)| *e > 0).collect();
        Ok(Self {
            existing_streams: if existing.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&existing).map_err(encode_error)?)
            },
            streams: serde_json::to_string(&streams).map_err(encode_error)?,
            events: serde_json::to_string(&events).map_err(encode_error)?,
            digests,
            event_count: events.len(),
        })
    }
}

/// One append on the writer connection: BEGIN IMMEDIATE, version check, insert, verify,
/// COMMIT; ROLLBACK on any failure.
async fn append_on_writer(
    writer: &mut OwnedMutexGuard<Writer>,
    batch: &AppendBatch,
    encoded: EncodedBatch,
    key: ChainKey,
) -> StoreResult<(AppendResult, Vec<Link>)> {
    let writer = &mut **writer;
    rollback_abandoned(writer).await;
    // Marked before BEGIN, so that whatever happens from here on (an error, a panic, a
    // BEGIN that failed half-way) the next use of the writer starts with a rollback.
    writer.in_transaction = true;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer.conn)
        .await
        .map_err(unavailable)?;
    match insert_batch(&mut writer.conn, batch, &encoded, &key).await {
        Ok(result) => {
            if let Err(e) = sqlx::query("COMMIT").execute(&mut writer.conn).await {
                rollback_abandoned(writer).await;
                return Err(unavailable(e));
            }
            writer.in_transaction = false;
            Ok(result)
        }
        Err(e) => {
            rollback_abandoned(writer).await;
            Err(e)
        }
    }
}

/// The statements between BEGIN and COMMIT.
async fn insert_batch(
    conn: &mut SqliteConnection,
    batch: &AppendBatch,
    encoded: &EncodedBatch,
    key: &ChainKey,
) -> StoreResult<(AppendResult, Vec<Link>)> {
    if let Some(existing) = &encoded.existing_streams {
        let behind: Option<String> = sqlx::query_scalar(BEHIND_STREAM_SQL)
            .bind(existing)
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
        if let Some(stream_id) = behind {
            return Err(StoreError::Conflict { stream_id });
        }
    }

    let previous: Option<Option<Vec<u8>>> = sqlx::query_scalar(LAST_LINK_SQL)
        .bind(&batch.partition_key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
    let previous = decode_link(0, previous.flatten())?.unwrap_or(GENESIS);
    let links = chain_links(key, previous, &encoded.digests);
    let inserted = sqlx::query(INSERT_SQL)
        .bind(&encoded.events)
        .bind(&batch.partition_key)
        .bind(format_timestamp(batch.recorded_at))
        .bind(links.concat())
        .execute(&mut *conn)
        .await;
    let inserted = match inserted {
        Ok(inserted) => inserted,
        Err(e) if is_unique_violation(&e) => {
            // A stream expected to be new already exists, or one is ahead of what the
            // writer believes: a conflict. Name the first stale stream, for the caller.
            let stream_id = sqlx::query_scalar(STALE_STREAM_SQL)
                .bind(&encoded.streams)
                .fetch_optional(&mut *conn)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| batch.streams[0].stream_id.clone());
            return Err(StoreError::Conflict { stream_id });
        }
        Err(e) => return Err(unavailable(e)),
    };

    // One writer holds the database lock, so AUTOINCREMENT hands this statement the rowids
    // right after the previous maximum, in insert order.
    let last = inserted.last_insert_rowid();
    let count = i64::try_from(inserted.rows_affected()).expect("row count fits in i64");
    let first = last - count + 1;
    let (in_range, max, first_stream, first_version, last_stream, last_version): (
        i64,
        i64,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i64>,
    ) = sqlx::query_as(VERIFY_SQL)
        .bind(first)
        .bind(last)
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)?;
    assert_contiguous(first, last, count, encoded.event_count);
    assert_eq!(
        in_range, count,
        "rows at or above position {first} are not exactly this append"
    );
    assert_eq!(
        max, last,
        "position {last} is not the newest row after the append"
    );
    let planned_first = planned_events(batch)
        .next()
        .expect("validated batch has events");
    let planned_last = planned_events(batch)
        .last()
        .expect("validated batch has events");
    assert_eq!(
        (first_stream.as_deref(), first_version),
        (Some(planned_first.stream_id), Some(planned_first.version)),
        "position {first} is not the first event of the append"
    );
    assert_eq!(
        (last_stream.as_deref(), last_version),
        (Some(planned_last.stream_id), Some(planned_last.version)),
        "position {last} is not the last event of the append"
    );
    let result = AppendResult {
        first_position: first as u64,
        last_position: last as u64,
    };
    Ok((result, links))
}

/// Rolls back a transaction that may be left open on the writer by an error, a failed
/// COMMIT or a panic mid-append. The ROLLBACK may fail harmlessly ("no transaction is
/// active" when SQLite already rolled back on its own); if it failed for real, the next
/// BEGIN fails, marks the writer again, and the next append retries the rollback.
async fn rollback_abandoned(writer: &mut Writer) {
    if writer.in_transaction {
        if let Err(error) = sqlx::query("ROLLBACK").execute(&mut writer.conn).await {
            tracing::debug!(%error, "SQLite rollback of an abandoned append failed");
        }
        writer.in_transaction = false;
    }
}

/// Moves committed WAL frames into the database file once a second while appends come in.
/// PASSIVE never waits for readers or the writer, so it cannot stall an append; frames a
/// reader still needs are left for the next round.
async fn checkpoint_periodically(mut conn: SqliteConnection, mut head: watch::Receiver<u64>) {
    let mut interval = tokio::time::interval(Duration::from_millis(CHECKPOINT_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // Nothing was appended since the last round: nothing to copy.
        if !head.has_changed().unwrap_or(false) {
            continue;
        }
        head.mark_unchanged();
        let result: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await;
        match result {
            Ok((busy, wal_frames, checkpointed_frames)) => {
                tracing::trace!(
                    busy,
                    wal_frames,
                    checkpointed_frames,
                    "SQLite WAL checkpoint"
                );
                // The WAL starts again from its beginning only when a writer finds it all
                // copied into the database; under a steady stream of appends there is
                // always a newer frame, so a passive checkpoint alone lets the file grow
                // by gigabytes. A TRUNCATE checkpoint holds the next append back while it
                // copies the frames since the passive one, and empties the file.
                if wal_frames > WAL_TRUNCATE_FRAMES {
                    let started = std::time::Instant::now();
                    let result: Result<(i64, i64, i64), _> =
                        sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                            .fetch_one(&mut conn)
                            .await;
                    match result {
                        Ok((busy, wal_frames, _)) => tracing::debug!(
                            busy,
                            wal_frames,
                            millis = started.elapsed().as_millis() as u64,
                            "SQLite WAL truncated"
                        ),
                        Err(error) => tracing::warn!(%error, "SQLite WAL truncation failed"),
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "SQLite WAL checkpoint failed"),
        }
    }
}

fn decode_event(row: &SqliteRow) -> StoreResult<RecordedEvent> {
    let position = decode_position(column(row, 0, "position")?)?;
    decode_parts(StoredEvent {
        position,
        partition_key: column(row, position, "partition_key")?,
        stream_id: column(row, position, "stream_id")?,
        version: column(row, position, "version")?,
        event_type: column(row, position, "event_type")?,
        schema_version: column(row, position, "schema_version")?,
        payload: column(row, position, "payload")?,
        metadata: column(row, position, "metadata")?,
        recorded_at: column(row, position, "recorded_at")?,
        chain: column(row, position, "chain")?,
    })
}

/// Column `name` of the row of the event at `position` (0 before it is known).
fn column<'r, T>(row: &'r SqliteRow, position: u64, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name).map_err(|e| corrupt(position, e))
}

/// An event's columns as stored, before decoding.
struct StoredEvent<'a> {
    position: u64,
    partition_key: String,
    stream_id: String,
    version: i64,
    event_type: String,
    schema_version: i32,
    payload: &'a str,
    metadata: &'a str,
    recorded_at: &'a str,
    chain: Option<Vec<u8>>,
}

fn decode_parts(stored: StoredEvent<'_>) -> StoreResult<RecordedEvent> {
    let position = stored.position;
    let payload = serde_json::from_str(stored.payload).map_err(|e| StoreError::Corrupt {
        position,
        reason: format!("payload: {e}"),
    })?;
    let recorded_at = DateTime::parse_from_rfc3339(stored.recorded_at)
        .map_err(|e| StoreError::Corrupt {
            position,
            reason: format!("recorded_at {:?}: {e}", stored.recorded_at),
        })?
        .with_timezone(&Utc);
    Ok(RecordedEvent {
        position,
        partition_key: stored.partition_key,
        stream_id: stored.stream_id,
        version: decode_version(position, stored.version)?,
        event_type: stored.event_type,
        schema_version: stored.schema_version,
        payload,
        metadata: decode_metadata(position, stored.metadata)?,
        recorded_at,
        chain: decode_link(position, stored.chain)?,
    })
}

/// The stored form of a timestamp: RFC 3339 UTC with exactly six fractional digits
/// (sub-microsecond digits are truncated, as PostgreSQL's timestamptz does).
fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

fn create_parent_dir(path: &Path) -> StoreResult<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Config(format!("cannot create directory {}: {e}", dir.display()))
        }),
        _ => Ok(()),
    }
}

fn corrupt(position: u64, error: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        position,
        reason: error.to_string(),
    }
}

/// A unique index violation, recognised by its extended result code, never by message text.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(SQLITE_CONSTRAINT_UNIQUE))
}

/// The file could not be opened: a bad path or permissions are configuration problems.
fn open_error(error: sqlx::Error) -> StoreError {
    StoreError::Config(format!("cannot open SQLite database: {error}"))
}

/// Every database failure other than a version conflict: the operation may be retried.
fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("SQLite: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewEvent, StreamAppend};

    #[test]
    fn hex_reads_what_sqlite_writes() {
        assert_eq!(from_hex("00FFa510"), Some(vec![0x00, 0xff, 0xa5, 0x10]));
        assert_eq!(from_hex(""), Some(Vec::new()));
        assert_eq!(from_hex("ABC"), None);
        assert_eq!(from_hex("0G"), None);
    }

    /// A slice read as one row (`read_all`, `read_range`, `read_partition`) gives exactly
    /// what reading its rows one by one gives: texts with quotes, escapes and non-ASCII characters, numbers
    /// at the edges of JSON's, a row from before the hash chain, and a type filter.
    #[tokio::test]
    async fn slices_read_as_one_row_equal_the_rows_read_one_by_one() {
        let store = SqliteEventStore::connect("sqlite::memory:", Some(ChainKey::generate()))
            .await
            .unwrap();
        let event = |event_type: &str, payload: serde_json::Value| NewEvent {
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: EventMetadata {
                event_id: uuid::Uuid::now_v7(),
                correlation_id: uuid::Uuid::now_v7(),
                causation_id: Some(uuid::Uuid::now_v7()),
                actor: "user:\"quoted\" \\ back/slash é 🎫".into(),
            },
        };
        let mut streams = Vec::new();
        for i in 0..5u64 {
            streams.push(StreamAppend {
                stream_id: format!("seat-{i}"),
                expected_version: 0,
                events: vec![
                    event(
                        "SeatHeld",
                        serde_json::json!({
                            "seat": format!("S-R0-{i}"),
                            "note": "tab\there, newline\nthere, nul \u{0} and \u{2028}",
                            "big": i64::MAX, "small": i64::MIN, "ratio": 0.1 + i as f64,
                            "nested": {"list": [1, null, true, "x"]},
                        }),
                    ),
                    event(
                        "SeatReleased",
                        serde_json::json!({"seat": format!("S-R0-{i}")}),
                    ),
                ],
            });
        }
        store
            .append(AppendBatch::grouped("show-1", streams, Utc::now()))
            .await
            .unwrap();
        // A row written before the chain existed has no link.
        sqlx::query(
            "INSERT INTO events (partition_key, stream_id, version, event_type, schema_version,
                 payload, metadata, recorded_at)
             VALUES ('show-1', 'legacy', 1, 'SeatHeld', 1, '{\"seat\": \"old\"}', ?1,
                 '2026-11-23T05:06:07.123456Z')",
        )
        .bind(serde_json::to_string(&event("SeatHeld", serde_json::json!({})).metadata).unwrap())
        .execute(&store.readers)
        .await
        .unwrap();
        let head = store.head_position().await.unwrap();
        assert_eq!(head, 11);

        let one_by_one = store
            .fetch_events(sqlx::query(&format!(
                "{SELECT_EVENT_COLUMNS} ORDER BY position"
            )))
            .await
            .unwrap();
        assert_eq!(one_by_one.len(), 11);
        assert!(one_by_one[..10].iter().all(|e| e.chain.is_some()));
        assert!(one_by_one[10].chain.is_none());

        assert_eq!(store.read_all(0, 100).await.unwrap(), one_by_one);
        assert_eq!(store.read_all(3, 4).await.unwrap(), one_by_one[3..7]);
        assert_eq!(
            store.read_range(2, 11, None, 100).await.unwrap(),
            one_by_one[2..]
        );
        let held: Vec<RecordedEvent> = one_by_one
            .iter()
            .filter(|e| e.event_type == "SeatHeld" && e.position > 1)
            .cloned()
            .collect();
        assert_eq!(
            store
                .read_range(1, 11, Some(&["SeatHeld"]), 100)
                .await
                .unwrap(),
            held
        );
        assert!(
            store
                .read_range(11, 20, None, 100)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.read_partition("show-1", 2, 100).await.unwrap(),
            one_by_one[2..]
        );
        assert_eq!(
            store.read_partition("show-1", 0, 3).await.unwrap(),
            one_by_one[..3]
        );
        assert!(
            store
                .read_partition("show-2", 0, 100)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
