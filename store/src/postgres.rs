//! The PostgreSQL backend: the event log in one `events` table, appends serialized by a
//! global transaction-scoped advisory lock, and readers woken by one NOTIFY per batch.
//!
//! Why the lock: a `bigserial` position is assigned at insert but becomes visible at
//! commit. Two concurrent appends can commit in the opposite order of their positions, and
//! a reader that has already moved past the later position would never see the earlier
//! one (Eventuous #222, Marten #4953). Holding one lock from before the first `nextval`
//! until after commit makes "position order = commit order" true. The cost is one append
//! at a time, which the engine's group commit turns into large batches
//! (docs/adr/0002-global-order.md).

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chain::{CHAIN_BYTES, ChainKey, GENESIS, Link};
use crate::common::{
    advance_head, assert_contiguous, chain_links, checkpoint_position, content_digests,
    decode_link, decode_metadata, decode_position, decode_stored_position, decode_version,
    expected_version_i64, planned_events, read_limit, require_key, saturating_i64, validate,
};
use crate::recent::{Landing, RecentEvents};
use crate::transactions;
use crate::{AppendBatch, AppendResult, EventStore, Fence, RecordedEvent, StoreError, StoreResult};

/// The channel every committed append notifies, with its last position as the payload.
pub const NOTIFY_CHANNEL: &str = "boxoffice_events";

/// The key of the advisory lock every append holds until it commits. Any process that
/// appends to the same database must use the same key, so it is fixed here ("BoxOffic" in
/// ASCII).
pub const APPEND_LOCK_KEY: i64 = 0x426F_784F_6666_6963;

/// Connections in the pool: appends run one at a time, the rest serve reads.
const POOL_CONNECTIONS_MAX: u32 = 16;
/// How long to wait for a connection before reporting the database unavailable; a down
/// database must fail fast, not hang the caller.
const ACQUIRE_TIMEOUT_MS: u64 = 5_000;
/// Server-side bound on one statement, including the wait for the append lock.
const STATEMENT_TIMEOUT_MS: u64 = 30_000;
/// Server-side bound on a transaction left idle by a stuck client: it would otherwise keep
/// the append lock and stop every writer.
const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 30_000;
/// Client-side bound on one whole operation, for the network failures the server cannot
/// see (a half-open connection never answers). Longer than the server's bound so that the
/// server's own error is what the caller normally gets.
const OPERATION_TIMEOUT_MS: u64 = 40_000;
/// Backoff of the notification listener while the database is unreachable.
const LISTENER_BACKOFF_MS_MIN: u64 = 100;
const LISTENER_BACKOFF_MS_MAX: u64 = 5_000;

/// SQLSTATE unique_violation.
const SQLSTATE_UNIQUE_VIOLATION: &str = "23505";
/// The constraint whose violation means a version conflict.
const STREAM_VERSION_CONSTRAINT: &str = "events_stream_version_key";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Opens the transaction and takes the append lock in one round trip. Every `nextval` of
/// this transaction happens after the lock is granted, and the lock is released only after
/// the commit is visible, so the next append's positions are all above this one's.
static BEGIN_AND_LOCK_SQL: LazyLock<String> =
    LazyLock::new(|| format!("BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})"));

/// The first stream (in the order given) that is not at its expected version E: current
/// means no row at all for E = 0, or a row at E and none at E + 1. Run under the append
/// lock in a statement of its own, so its snapshot includes every earlier append.
const STALE_STREAM_SQL: &str = "\
SELECT s.stream_id
FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS s(stream_id, expected, ord)
WHERE NOT CASE
    WHEN s.expected = 0 THEN
        NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.stream_id)
    ELSE
        EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.stream_id AND e.version = s.expected)
        AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.stream_id AND e.version = s.expected + 1)
    END
ORDER BY s.ord
LIMIT 1";

/// The one statement run under the lock before the insert. `behind`: the check over the
/// streams the writer believes exist (expected version E > 0): the row at E must exist, or
/// the stream is behind what the writer believes. Everything else a stale expected version
/// can mean (a row at E + 1, or any row for a stream expected to be new) makes the insert
/// itself fail on `events_stream_version_key`, which is mapped to the same conflict. One
/// index probe per existing stream, none for new ones. `chain`: the partition's newest
/// link, which this batch's chain continues (one backward probe of the partition index).
/// `lease_epoch`: with a fence (`$4` not null), the show lease's epoch, read FOR SHARE so
/// that a takeover (which updates the row) waits until this append has committed or
/// rolled back, and every append after a takeover sees the new epoch.
const PREPARE_SQL: &str = "\
SELECT
  (SELECT l.epoch FROM show_leases l WHERE $4::bigint IS NOT NULL AND l.show_id = $3 FOR SHARE) AS lease_epoch,
  (SELECT s.stream_id
   FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS s(stream_id, expected, ord)
   WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.stream_id AND e.version = s.expected)
   ORDER BY s.ord
   LIMIT 1) AS behind,
  (SELECT e.chain FROM events e WHERE e.partition_key = $3 ORDER BY e.position DESC LIMIT 1) AS chain";

/// The batch goes in with COPY (text format), in the given order: measured about twice
/// as fast as an INSERT … SELECT FROM unnest for the engine's batches. Positions come from
/// the bigserial's default, taken row by row while this transaction holds the append lock.
const COPY_SQL: &str = "COPY events (partition_key, stream_id, version, event_type, schema_version, payload, metadata, recorded_at, chain) FROM STDIN";

/// After the COPY: the position range the rows got (the sequence's current value is the
/// last; the lock makes the range contiguous), what the caller asserts before committing,
/// and the one NOTIFY of the batch. `$1` is the number of rows copied.
const COPIED_SQL: &str = "\
WITH range AS (
    SELECT currval(pg_get_serial_sequence('events', 'position')) AS last_position
)
SELECT range.last_position - $1 + 1 AS first_position,
       range.last_position AS last_position,
       (SELECT count(*) FROM events e WHERE e.position BETWEEN range.last_position - $1 + 1 AND range.last_position) AS inserted_count,
       (SELECT e.position FROM events e WHERE e.position = range.last_position - $1 + 1 AND e.stream_id = $3 AND e.version = $4) AS first_event_position,
       (SELECT e.position FROM events e WHERE e.position = range.last_position AND e.stream_id = $5 AND e.version = $6) AS last_event_position,
       pg_notify($2, range.last_position::text)
FROM range";

const SELECT_EVENT_COLUMNS: &str = "\
SELECT position, partition_key, stream_id, version, event_type, schema_version, payload,
       metadata::text AS metadata, recorded_at, chain
FROM events";

const HEAD_SQL: &str = "SELECT coalesce(max(position), 0) FROM events";

/// The PostgreSQL event store. Dropping it stops its notification listener.
pub struct PgEventStore {
    pool: PgPool,
    chain_key: Option<ChainKey>,
    head: Arc<watch::Sender<u64>>,
    recent: Arc<RecentEvents>,
    listener: JoinHandle<()>,
}

impl Drop for PgEventStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgEventStore {
    /// Connects, runs the migrations, and starts following other processes' appends.
    pub async fn connect(url: &str, chain_key: Option<ChainKey>) -> StoreResult<Self> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        let options = options.application_name("boxoffice-store").options([
            ("statement_timeout", STATEMENT_TIMEOUT_MS.to_string()),
            (
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT_MS.to_string(),
            ),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .acquire_timeout(Duration::from_millis(ACQUIRE_TIMEOUT_MS))
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        if !migrations_applied(&pool).await? {
            MIGRATOR.run(&pool).await.map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) if is_connection_error(&e) => {
                    unavailable(e)
                }
                e => StoreError::Config(format!("PostgreSQL migration failed: {e}")),
            })?;
        }

        // The listener gets a pool of its own with one connection, so that it never takes
        // a connection from appends and reads, and so that PgListener can reconnect through
        // it after the database comes back.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(ACQUIRE_TIMEOUT_MS))
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let (listener, head) = listen(&listener_pool).await.map_err(unavailable)?;
        let head = Arc::new(watch::channel(head).0);
        let listener = tokio::spawn(follow_notifications(
            listener_pool,
            listener,
            Arc::clone(&head),
        ));
        Ok(Self {
            pool,
            chain_key,
            head,
            recent: Arc::default(),
            listener,
        })
    }

    async fn append_locked(
        &self,
        batch: &AppendBatch,
        fence: Option<Fence>,
    ) -> StoreResult<(AppendResult, Vec<Link>, Landing)> {
        let mut stream_ids = Vec::with_capacity(batch.streams.len());
        let mut expected = Vec::with_capacity(batch.streams.len());
        let key = require_key(&self.chain_key)?;
        let mut existing_ids = Vec::new();
        let mut existing_expected = Vec::new();
        for stream in &batch.streams {
            stream_ids.push(stream.stream_id.as_str());
            expected.push(expected_version_i64(stream.expected_version));
            if stream.expected_version > 0 {
                existing_ids.push(stream.stream_id.as_str());
                existing_expected.push(expected_version_i64(stream.expected_version));
            }
        }
        let event_count = batch.event_count();
        let planned: Vec<_> = planned_events(batch).collect();
        let first_event = (planned[0].stream_id, planned[0].version);
        let last_event = (
            planned[event_count - 1].stream_id,
            planned[event_count - 1].version,
        );
        // Everything is encoded here, before the lock: serializing thousands of payloads
        // must not hold up other writers. Only the links, which need the partition's
        // newest link, are made under it.
        let rows = copy_rows(&batch.partition_key, batch.recorded_at, &planned);
        let digests = content_digests(batch, &planned);
        let prepare = sqlx::query(PREPARE_SQL)
            .bind(&existing_ids)
            .bind(&existing_expected)
            .bind(&batch.partition_key)
            .bind(fence.map(|f| saturating_i64(f.epoch)));

        // Begun in a task of its own: `bounded`'s timeout may give up on this append while
        // its BEGIN waits for the lock, and a cancelled BEGIN would otherwise leave the
        // connection in the pool inside a transaction that takes the lock and keeps it
        // (`transactions`). The wait measured includes taking a connection from the pool.
        let lock_requested = Instant::now();
        let mut tx = transactions::begin(&self.pool, Some(BEGIN_AND_LOCK_SQL.as_str()))
            .await
            .map_err(unavailable)?;
        let lock_acquired = Instant::now();

        let prepared = prepare.fetch_one(&mut *tx).await.map_err(unavailable)?;
        if let Some(fence) = fence {
            let lease_epoch = prepared
                .try_get::<Option<i64>, _>("lease_epoch")
                .map_err(unavailable)?;
            if lease_epoch != Some(saturating_i64(fence.epoch)) {
                rollback_quietly(tx).await;
                return Err(StoreError::Fenced {
                    partition_key: batch.partition_key.clone(),
                    epoch: fence.epoch,
                });
            }
        }
        if let Some(stream_id) = prepared
            .try_get::<Option<String>, _>("behind")
            .map_err(unavailable)?
        {
            rollback_quietly(tx).await;
            return Err(StoreError::Conflict { stream_id });
        }
        let previous = prepared
            .try_get::<Option<Vec<u8>>, _>("chain")
            .map_err(unavailable)?;
        let previous = decode_link(0, previous)?.unwrap_or(GENESIS);
        let links = chain_links(key, previous, &digests);
        let copy_data = rows.with_links(&links);

        let copied = async {
            let mut copy = tx.copy_in_raw(COPY_SQL).await?;
            copy.send(copy_data).await?;
            copy.finish().await
        }
        .await;
        match copied {
            Ok(rows) => assert_eq!(
                rows, event_count as u64,
                "COPY wrote {rows} rows of {event_count}"
            ),
            Err(e) if is_stream_version_violation(&e) => {
                // A stream expected to be new already exists, or one is ahead of what the
                // writer believes: a conflict. Find the stream that lost, for the caller.
                rollback_quietly(tx).await;
                let stream_id = self
                    .stale_stream(&stream_ids, &expected)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| stream_ids[0].to_owned());
                return Err(StoreError::Conflict { stream_id });
            }
            Err(e) => return Err(unavailable(e)),
        }
        let row = sqlx::query(COPIED_SQL)
            .bind(event_count as i64)
            .bind(NOTIFY_CHANNEL)
            .bind(first_event.0)
            .bind(first_event.1)
            .bind(last_event.0)
            .bind(last_event.1)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
        let first: i64 = row.try_get("first_position").map_err(unavailable)?;
        let last: i64 = row.try_get("last_position").map_err(unavailable)?;
        let count: i64 = row.try_get("inserted_count").map_err(unavailable)?;
        let first_event_position: Option<i64> =
            row.try_get("first_event_position").map_err(unavailable)?;
        let last_event_position: Option<i64> =
            row.try_get("last_event_position").map_err(unavailable)?;
        assert_contiguous(first, last, count, event_count);
        assert_eq!(
            first_event_position,
            Some(first),
            "position {first} is not the first event of the append"
        );
        assert_eq!(
            last_event_position,
            Some(last),
            "position {last} is not the last event of the append"
        );

        // Announced before the COMMIT, whose NOTIFY may move the head (and wake readers)
        // before this task has put the events in memory: readers wait for them there.
        let landing = self.recent.landing(first as u64, last as u64);
        tx.commit().await.map_err(unavailable)?;
        tracing::debug!(
            events = event_count,
            first_position = first,
            lock_wait_us = (lock_acquired - lock_requested).as_micros() as u64,
            locked_us = lock_acquired.elapsed().as_micros() as u64,
            "append committed"
        );
        let result = AppendResult {
            first_position: first as u64,
            last_position: last as u64,
        };
        Ok((result, links, landing))
    }

    /// The first stale stream, outside any transaction; used only to name the stream of a
    /// unique violation.
    async fn stale_stream(
        &self,
        stream_ids: &[&str],
        expected: &[i64],
    ) -> StoreResult<Option<String>> {
        sqlx::query_scalar(STALE_STREAM_SQL)
            .bind(stream_ids)
            .bind(expected)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn fetch_events(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(decode_event).collect()
    }
}

/// The batch as COPY text-format rows, one per event in append order: tab-separated
/// columns, each escaped so that a backslash, tab, newline or carriage return inside a
/// value (JSON escapes contain backslashes) reads back as itself. The last column, the
/// hash-chain link, is added by [`CopyRows::with_links`] once the lock is held.
fn copy_rows(
    partition_key: &str,
    recorded_at: DateTime<Utc>,
    planned: &[crate::common::PlannedEvent<'_>],
) -> CopyRows {
    let recorded_at = recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut out = Vec::with_capacity(planned.len() * 512);
    let mut ends = Vec::with_capacity(planned.len());
    let mut json = Vec::with_capacity(512);
    for p in planned {
        copy_field(&mut out, partition_key.as_bytes());
        out.push(b'\t');
        copy_field(&mut out, p.stream_id.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(p.version.to_string().as_bytes());
        out.push(b'\t');
        copy_field(&mut out, p.event.event_type.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(p.event.schema_version.to_string().as_bytes());
        out.push(b'\t');
        json.clear();
        serde_json::to_writer(&mut json, &p.event.payload).expect("a JSON value serializes");
        copy_field(&mut out, &json);
        out.push(b'\t');
        json.clear();
        serde_json::to_writer(&mut json, &p.event.metadata).expect("metadata has only string keys");
        copy_field(&mut out, &json);
        out.push(b'\t');
        out.extend_from_slice(recorded_at.as_bytes());
        ends.push(out.len());
    }
    CopyRows { data: out, ends }
}

/// COPY rows without their last column: the bytes, and where each row ends.
struct CopyRows {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl CopyRows {
    /// The rows, each completed with its link as a bytea (`\\x` and hex).
    fn with_links(&self, links: &[Link]) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = Vec::with_capacity(self.data.len() + links.len() * (5 + 2 * CHAIN_BYTES));
        let mut start = 0;
        for (&end, link) in self.ends.iter().zip(links) {
            out.extend_from_slice(&self.data[start..end]);
            out.extend_from_slice(b"\t\\\\x");
            for byte in link {
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0xf)]);
            }
            out.push(b'\n');
            start = end;
        }
        out
    }
}

/// One value in COPY's text format (`COPY … FROM STDIN`, tab-separated columns): a
/// backslash, tab, newline or carriage return in it is escaped so that it reads back as
/// itself. Also used by the projections' bulk writes.
pub fn copy_field(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

#[async_trait]
impl EventStore for PgEventStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn append(&self, batch: AppendBatch) -> StoreResult<AppendResult> {
        self.append_fenced(batch, None).await
    }

    async fn append_fenced(
        &self,
        batch: AppendBatch,
        fence: Option<Fence>,
    ) -> StoreResult<AppendResult> {
        validate(&batch)?;
        let (result, links, _landing) = bounded(self.append_locked(&batch, fence)).await?;
        self.recent
            .committed(batch, result.first_position, &links, &self.head);
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let sql = format!(
            "{SELECT_EVENT_COLUMNS} WHERE stream_id = $1 AND version > $2 ORDER BY version"
        );
        bounded(
            self.fetch_events(
                sqlx::query(&sql)
                    .bind(stream_id)
                    .bind(saturating_i64(after_version)),
            ),
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
        let sql = format!(
            "{SELECT_EVENT_COLUMNS} WHERE partition_key = $1 AND position > $2 ORDER BY position LIMIT $3"
        );
        let query = sqlx::query(&sql)
            .bind(partition_key)
            .bind(saturating_i64(after))
            .bind(read_limit(limit));
        bounded(self.fetch_events(query)).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> StoreResult<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(events) = self.recent.read_landed(after, limit, &self.head).await {
            return Ok(events);
        }
        let sql = format!("{SELECT_EVENT_COLUMNS} WHERE position > $1 ORDER BY position LIMIT $2");
        let query = sqlx::query(&sql)
            .bind(saturating_i64(after))
            .bind(read_limit(limit));
        bounded(self.fetch_events(query)).await
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
        let sql = format!(
            "{SELECT_EVENT_COLUMNS} WHERE position > $1 AND position <= $2 \
             AND ($3::text[] IS NULL OR event_type = ANY($3)) ORDER BY position LIMIT $4"
        );
        let query = sqlx::query(&sql)
            .bind(saturating_i64(after))
            .bind(saturating_i64(until))
            .bind(types.map(<[&str]>::to_vec))
            .bind(read_limit(limit));
        bounded(self.fetch_events(query)).await
    }

    async fn count_until(&self, until: u64) -> StoreResult<u64> {
        let count: i64 = bounded(async {
            sqlx::query_scalar("SELECT count(*) FROM events WHERE position <= $1")
                .bind(saturating_i64(until))
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)
        })
        .await?;
        decode_stored_position("event count", count)
    }

    async fn head_position(&self) -> StoreResult<u64> {
        let head = bounded(fetch_head(&self.pool)).await?;
        advance_head(&self.head, head);
        Ok(head)
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn load_checkpoint(&self, consumer: &str) -> StoreResult<u64> {
        let position: Option<i64> = bounded(async {
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE consumer = $1")
                .bind(consumer)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)
        })
        .await?;
        position.map_or(Ok(0), |p| decode_stored_position("checkpoint", p))
    }

    async fn save_checkpoint(&self, consumer: &str, position: u64) -> StoreResult<()> {
        let position = checkpoint_position(position)?;
        bounded(async {
            sqlx::query(
                "INSERT INTO checkpoints (consumer, position, updated_at) VALUES ($1, $2, now())
                 ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
            )
            .bind(consumer)
            .bind(position)
            .execute(&self.pool)
            .await
            .map_err(unavailable)
        })
        .await?;
        Ok(())
    }

    async fn partitions(&self) -> StoreResult<Vec<String>> {
        // A loose index scan over events_partition_position_idx: one index probe per
        // partition instead of reading every event.
        bounded(async {
            sqlx::query_scalar(
                "WITH RECURSIVE p(key) AS (
                     (SELECT partition_key FROM events ORDER BY partition_key LIMIT 1)
                     UNION ALL
                     SELECT (SELECT e.partition_key FROM events e WHERE e.partition_key > p.key
                             ORDER BY e.partition_key LIMIT 1)
                     FROM p WHERE p.key IS NOT NULL
                 )
                 SELECT key FROM p WHERE key IS NOT NULL",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        bounded(async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(unavailable)
        })
        .await?;
        Ok(())
    }
}

/// Whether every migration of this build is already applied, with the checksum this
/// build has. Then the store does not run the migrator, which needs CREATE on the schema
/// even when there is nothing to do: an application role with only the privileges of the
/// README ("Locking down the event table") can open the store once an admin has migrated.
async fn migrations_applied(pool: &PgPool) -> StoreResult<bool> {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            // No migrations table yet (or not readable): let the migrator say what is wrong.
            Err(sqlx::Error::Database(_)) => return Ok(false),
            Err(e) => return Err(unavailable(e)),
        };
    let applied: std::collections::HashMap<i64, Vec<u8>> = applied.into_iter().collect();
    Ok(MIGRATOR.iter().all(|m| {
        applied
            .get(&m.version)
            .is_some_and(|checksum| *checksum == *m.checksum)
    }))
}

/// Runs one store operation under the client-side bound.
async fn bounded<T>(operation: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    tokio::time::timeout(Duration::from_millis(OPERATION_TIMEOUT_MS), operation)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "no answer from PostgreSQL in {OPERATION_TIMEOUT_MS} ms"
            )))
        })
}

async fn fetch_head(pool: &PgPool) -> StoreResult<u64> {
    let head: i64 = sqlx::query_scalar(HEAD_SQL)
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    decode_stored_position("head position", head)
}

/// Ends a transaction that decided not to commit. A failed rollback leaves nothing to do:
/// the connection is discarded by the pool and the server aborts the transaction.
async fn rollback_quietly(tx: sqlx::Transaction<'_, sqlx::Postgres>) {
    if let Err(error) = tx.rollback().await {
        tracing::debug!(%error, "rollback after a rejected append failed");
    }
}

/// Opens a listener on the notification channel and reads the head through it. LISTEN is
/// active before the read, so an append committed after the read is notified and one
/// committed before it is counted by it.
async fn listen(pool: &PgPool) -> Result<(PgListener, u64), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    let head: i64 = sqlx::query_scalar(HEAD_SQL)
        .fetch_one(&mut listener)
        .await?;
    Ok((listener, u64::try_from(head).unwrap_or(0)))
}

/// Keeps the head watch up to date with appends by every process, from the one NOTIFY each
/// committed append sends. Runs until the store is dropped. When the connection fails the
/// listener is replaced by a new one (with backoff while the database is unreachable) and
/// the head is re-read, since notifications sent while disconnected are lost.
async fn follow_notifications(
    pool: PgPool,
    mut listener: PgListener,
    head: Arc<watch::Sender<u64>>,
) {
    loop {
        let error = receive_until_error(&mut listener, &head).await;
        tracing::warn!(%error, "event notification listener lost its connection; reconnecting");
        // The pool holds one connection: hand the broken one back before asking again.
        drop(listener);
        let mut backoff_ms = LISTENER_BACKOFF_MS_MIN;
        listener = loop {
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            match listen(&pool).await {
                Ok((listener, position)) => {
                    advance_head(&head, position);
                    tracing::info!(position, "event notification listener reconnected");
                    break listener;
                }
                Err(error) => {
                    tracing::warn!(%error, backoff_ms, "event notification listener cannot reach PostgreSQL");
                    backoff_ms = (backoff_ms * 2).min(LISTENER_BACKOFF_MS_MAX);
                }
            }
        };
    }
}

/// Applies notifications to the head watch until the listener fails.
async fn receive_until_error(listener: &mut PgListener, head: &watch::Sender<u64>) -> sqlx::Error {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notification.payload().parse::<u64>() {
                Ok(position) => advance_head(head, position),
                Err(_) => tracing::warn!(
                    payload = notification.payload(),
                    "ignoring a malformed event notification"
                ),
            },
            // sqlx re-established a dropped connection (and re-issued LISTEN) on its own;
            // whatever was notified in between is gone, so re-read the head.
            Ok(None) => match sqlx::query_scalar::<_, i64>(HEAD_SQL)
                .fetch_one(&mut *listener)
                .await
            {
                Ok(position) => advance_head(head, u64::try_from(position).unwrap_or(0)),
                Err(error) => return error,
            },
            Err(error) => return error,
        }
    }
}

fn decode_event(row: &PgRow) -> StoreResult<RecordedEvent> {
    let position = decode_position(row.try_get("position").map_err(|e| corrupt(0, e))?)?;
    let version = decode_version(
        position,
        row.try_get("version").map_err(|e| corrupt(position, e))?,
    )?;
    let metadata: &str = row.try_get("metadata").map_err(|e| corrupt(position, e))?;
    let metadata = decode_metadata(position, metadata)?;
    let recorded_at: DateTime<Utc> = row
        .try_get("recorded_at")
        .map_err(|e| corrupt(position, e))?;
    Ok(RecordedEvent {
        position,
        partition_key: row
            .try_get("partition_key")
            .map_err(|e| corrupt(position, e))?,
        stream_id: row.try_get("stream_id").map_err(|e| corrupt(position, e))?,
        version,
        event_type: row
            .try_get("event_type")
            .map_err(|e| corrupt(position, e))?,
        schema_version: row
            .try_get("schema_version")
            .map_err(|e| corrupt(position, e))?,
        payload: row.try_get("payload").map_err(|e| corrupt(position, e))?,
        metadata,
        recorded_at,
        chain: decode_link(
            position,
            row.try_get("chain").map_err(|e| corrupt(position, e))?,
        )?,
    })
}

fn corrupt(position: u64, error: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        position,
        reason: error.to_string(),
    }
}

/// A unique violation of `events_stream_version_key`, recognised by SQLSTATE and
/// constraint name, never by message text.
fn is_stream_version_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some(SQLSTATE_UNIQUE_VIOLATION)
                && db.constraint() == Some(STREAM_VERSION_CONSTRAINT)
        }
        _ => false,
    }
}

/// Errors that mean the database could not be reached, as opposed to one that answered.
fn is_connection_error(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    )
}

/// Every database failure other than a version conflict: the operation may be retried.
fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {error}"))
}
