//! Idempotency keys of API requests, with Stripe's semantics: the first request with a
//! key claims it; its response is kept and replayed to every later request with the same
//! key and the same fingerprint; a different request with the key is refused; a request
//! that arrives while the first is still being handled is told so. Keys are per user and
//! kept at least 24 hours.
//!
//! Every keyed POST claims its key before it is handled and stores its response after,
//! two writes on the request path. They are group-committed: a writer task (one of a
//! few) takes the claims, completions and releases that are waiting, applies them one
//! after the other in one transaction and answers them all when it commits (the event appends are
//! batched the same way). One commit for a whole batch instead of one per write took the
//! on-sale benchmark past the four connections and SQLite's single writer, which had
//! capped keyed POSTs at about 900 per second (`docs/adr/0012-batched-idempotency-keys.md`).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::tables::{TablePool, unavailable};
use crate::{StoreError, StoreResult};

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's: handle it, then `complete` or `release`.
    Started,
    /// The key answered this same request before: replay this.
    Replay {
        status: u16,
        body: Vec<u8>,
        location: Option<String>,
    },
    /// The first request with this key is still being handled.
    InFlight,
    /// The key was used for a different request.
    Mismatch,
}

pub struct IdempotencyKeys {
    pool: TablePool,
    ops: mpsc::Sender<Queued>,
}

/// Most writes in one transaction.
const BATCH_OPS_MAX: usize = 256;
/// Writers, each with a batch in flight on a connection of its own (the pool has four;
/// one is left for the other tables). One was not enough: its statements run one after
/// the other, and on a machine whose cores are busy each round trip waits to be
/// scheduled, so a single writer fell behind an on-sale once it sold out.
const WRITERS: usize = 3;
/// Writes waiting for a writer; a request past this waits for room.
const QUEUE_OPS_MAX: usize = 8 * BATCH_OPS_MAX;

/// One write of the request path, as the writer applies it.
#[derive(Debug)]
enum Op {
    Claim {
        user: String,
        key: String,
        fingerprint: String,
        now: DateTime<Utc>,
        abandoned_after: Duration,
        expire_after: Duration,
    },
    Complete {
        user: String,
        key: String,
        status: i64,
        body: Vec<u8>,
        location: Option<String>,
    },
    Release {
        user: String,
        key: String,
    },
}

impl Op {
    fn key(&self) -> (&str, &str) {
        match self {
            Op::Claim { user, key, .. }
            | Op::Complete { user, key, .. }
            | Op::Release { user, key } => (user, key),
        }
    }
}

/// What a write answers: a claim's finding, or nothing for the others.
type Answer = StoreResult<Option<Claim>>;

struct Queued {
    op: Op,
    reply: oneshot::Sender<Answer>,
    at: std::time::Instant,
}

/// A claim that waited this long for the writer is refused (the request answers 503 with
/// a Retry-After) instead of adding to a backlog its client has likely given up on; the
/// other writes are always applied, since their requests' effects already happened.
const CLAIM_WAIT_MS_MAX: u64 = 5_000;

/// A stored key as read back.
struct Row_ {
    fingerprint: String,
    status: Option<i64>,
    body: Option<Vec<u8>>,
    location: Option<String>,
    created_at: DateTime<Utc>,
}

impl IdempotencyKeys {
    /// Starts the writer task on the current Tokio runtime; it ends when this value is
    /// dropped.
    pub fn new(pool: TablePool) -> Self {
        let (ops, queue) = mpsc::channel(QUEUE_OPS_MAX);
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        for _ in 0..WRITERS {
            tokio::spawn(write(pool.clone(), Arc::clone(&queue)));
        }
        Self { pool, ops }
    }

    async fn submit(&self, op: Op) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Queued {
                op,
                reply,
                at: std::time::Instant::now(),
            })
            .await
            .map_err(|_| StoreError::Unavailable("the idempotency-key writer stopped".into()))?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("the idempotency-key writer stopped mid-batch".into())
        })?
    }

    /// Claims `key` for `user`. A key older than `expire_after` is forgotten; a claim
    /// still unanswered after `abandoned_after` (its process died) can be taken over.
    pub async fn claim(
        &self,
        user: &str,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        abandoned_after: Duration,
        expire_after: Duration,
    ) -> StoreResult<Claim> {
        let claim = self
            .submit(Op::Claim {
                user: user.to_owned(),
                key: key.to_owned(),
                fingerprint: fingerprint.to_owned(),
                now,
                abandoned_after,
                expire_after,
            })
            .await?;
        Ok(claim.expect("a claim answers with what it found"))
    }

    /// Stores the response of a claimed key.
    pub async fn complete(
        &self,
        user: &str,
        key: &str,
        status: u16,
        body: &[u8],
        location: Option<&str>,
    ) -> StoreResult<()> {
        self.submit(Op::Complete {
            user: user.to_owned(),
            key: key.to_owned(),
            status: i64::from(status),
            body: body.to_vec(),
            location: location.map(str::to_owned),
        })
        .await
        .map(drop)
    }

    /// Gives up a claimed key without a response (the request failed in a way a retry
    /// may fix), so the same key can be used again.
    pub async fn release(&self, user: &str, key: &str) -> StoreResult<()> {
        self.submit(Op::Release {
            user: user.to_owned(),
            key: key.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Deletes keys created before `before`; returns how many.
    pub async fn purge(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        match &self.pool {
            TablePool::Postgres(pool) => {
                sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                    .bind(before)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            }
            TablePool::Sqlite(pool) => {
                sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?1")
                    .bind(before.timestamp())
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            }
        }
        .map_err(unavailable)
    }
}

/// A writer: takes what is waiting (up to a batch), applies it in one transaction and
/// answers every write once it has committed. Until the queue closes.
async fn write(pool: TablePool, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>) {
    let mut batch = Vec::with_capacity(BATCH_OPS_MAX);
    loop {
        // The next writer takes its batch while this one applies its own.
        if queue
            .lock()
            .await
            .recv_many(&mut batch, BATCH_OPS_MAX)
            .await
            == 0
        {
            return;
        }
        let wait_max = std::time::Duration::from_millis(CLAIM_WAIT_MS_MAX);
        let late = |queued: &mut Queued| {
            matches!(queued.op, Op::Claim { .. }) && queued.at.elapsed() > wait_max
        };
        for queued in batch.extract_if(.., late) {
            let _ = queued.reply.send(Err(StoreError::Unavailable(
                "too many requests are waiting for their idempotency keys".into(),
            )));
        }
        if batch.is_empty() {
            continue;
        }
        // In key order, so that two writers (of this process or another) lock rows in the
        // same order and never deadlock; writes to one key keep their arrival order (a stable sort).
        batch.sort_by(|a: &Queued, b: &Queued| a.op.key().cmp(&b.op.key()));
        let started = std::time::Instant::now();
        let applied = apply(&pool, &batch).await;
        let took = started.elapsed();
        if took > std::time::Duration::from_secs(1) {
            tracing::warn!(
                writes = batch.len(),
                took_ms = took.as_millis() as u64,
                failed = applied.is_err(),
                "slow idempotency-key batch"
            );
        }
        match applied {
            Ok(answers) => {
                for (queued, answer) in batch.drain(..).zip(answers) {
                    let _ = queued.reply.send(Ok(answer));
                }
            }
            // The statements cannot fail on what one write holds (conflicts are part of
            // them): a failure is the database's (gone, or SQLite's write lock not free
            // within the busy timeout), and every write of the batch answers with it, so
            // that its request is refused 503 at once instead of waiting out another
            // busy timeout per write.
            Err(e) => {
                for queued in batch.drain(..) {
                    let _ = queued
                        .reply
                        .send(Err(StoreError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

/// Applies the writes of `batch` in order in one transaction; their answers, in the same
/// order.
async fn apply(pool: &TablePool, batch: &[Queued]) -> Result<Vec<Option<Claim>>, sqlx::Error> {
    let mut tx = Tx::begin(pool).await?;
    let mut answers = Vec::with_capacity(batch.len());
    for op in batch.iter().map(|queued| &queued.op) {
        answers.push(match op {
            Op::Claim {
                user,
                key,
                fingerprint,
                now,
                abandoned_after,
                expire_after,
            } => Some(
                claim(
                    &mut tx,
                    user,
                    key,
                    fingerprint,
                    *now,
                    *abandoned_after,
                    *expire_after,
                )
                .await?,
            ),
            Op::Complete {
                user,
                key,
                status,
                body,
                location,
            } => {
                tx.complete(user, key, *status, body, location.as_deref())
                    .await?;
                None
            }
            Op::Release { user, key } => {
                tx.release(user, key).await?;
                None
            }
        });
    }
    tx.commit().await?;
    Ok(answers)
}

async fn claim(
    tx: &mut Tx,
    user: &str,
    key: &str,
    fingerprint: &str,
    now: DateTime<Utc>,
    abandoned_after: Duration,
    expire_after: Duration,
) -> Result<Claim, sqlx::Error> {
    // Two rounds at most: the second after forgetting an expired or abandoned claim.
    for _ in 0..2 {
        if tx.insert(user, key, fingerprint, now).await? {
            return Ok(Claim::Started);
        }
        let Some(row) = tx.get(user, key).await? else {
            continue;
        };
        let expired = row.created_at < now - expire_after;
        let abandoned = row.status.is_none() && row.created_at < now - abandoned_after;
        if expired || abandoned {
            tx.forget_if_created(user, key, row.created_at).await?;
            continue;
        }
        if row.fingerprint != fingerprint {
            return Ok(Claim::Mismatch);
        }
        return Ok(match row.status {
            None => Claim::InFlight,
            Some(status) => Claim::Replay {
                status: u16::try_from(status).unwrap_or(500),
                body: row.body.unwrap_or_default(),
                location: row.location,
            },
        });
    }
    Ok(Claim::InFlight)
}

/// A transaction of the writer. On SQLite it is `BEGIN IMMEDIATE`: it takes the write
/// lock first and waits for it (busy timeout) rather than failing when it would upgrade.
enum Tx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl Tx {
    async fn begin(pool: &TablePool) -> Result<Self, sqlx::Error> {
        Ok(match pool {
            TablePool::Postgres(p) => Tx::Postgres(p.begin().await?),
            TablePool::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
    }

    async fn insert(
        &mut self,
        user: &str,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let inserted = match self {
            Tx::Postgres(tx) => sqlx::query(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, key) DO NOTHING",
            )
            .bind(user)
            .bind(key)
            .bind(fingerprint)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
            Tx::Sqlite(tx) => sqlx::query(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (user_id, key) DO NOTHING",
            )
            .bind(user)
            .bind(key)
            .bind(fingerprint)
            .bind(now.timestamp())
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        };
        Ok(inserted == 1)
    }

    async fn get(&mut self, user: &str, key: &str) -> Result<Option<Row_>, sqlx::Error> {
        let columns = "fingerprint, status, response_body, location, created_at";
        match self {
            Tx::Postgres(tx) => {
                let sql = format!(
                    "SELECT {columns} FROM idempotency_keys WHERE user_id = $1 AND key = $2"
                );
                let row = sqlx::query(&sql)
                    .bind(user)
                    .bind(key)
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(|r| {
                    Ok(Row_ {
                        fingerprint: r.try_get("fingerprint")?,
                        status: r.try_get::<Option<i32>, _>("status")?.map(i64::from),
                        body: r.try_get("response_body")?,
                        location: r.try_get("location")?,
                        created_at: r.try_get("created_at")?,
                    })
                })
                .transpose()
            }
            Tx::Sqlite(tx) => {
                let sql = format!(
                    "SELECT {columns} FROM idempotency_keys WHERE user_id = ?1 AND key = ?2"
                );
                let row = sqlx::query(&sql)
                    .bind(user)
                    .bind(key)
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(|r| {
                    let created: i64 = r.try_get("created_at")?;
                    Ok(Row_ {
                        fingerprint: r.try_get("fingerprint")?,
                        status: r.try_get("status")?,
                        body: r.try_get("response_body")?,
                        location: r.try_get("location")?,
                        created_at: DateTime::from_timestamp(created, 0).unwrap_or_default(),
                    })
                })
                .transpose()
            }
        }
    }

    async fn forget_if_created(
        &mut self,
        user: &str,
        key: &str,
        created_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND created_at = $3",
            )
            .bind(user)
            .bind(key)
            .bind(created_at)
            .execute(&mut **tx)
            .await
            .map(drop),
            Tx::Sqlite(tx) => sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = ?1 AND key = ?2 AND created_at = ?3",
            )
            .bind(user)
            .bind(key)
            .bind(created_at.timestamp())
            .execute(&mut **tx)
            .await
            .map(drop),
        }
    }

    async fn complete(
        &mut self,
        user: &str,
        key: &str,
        status: i64,
        body: &[u8],
        location: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => sqlx::query(
                "UPDATE idempotency_keys SET status = $3, response_body = $4, location = $5 WHERE user_id = $1 AND key = $2",
            )
            .bind(user)
            .bind(key)
            .bind(status)
            .bind(body)
            .bind(location)
            .execute(&mut **tx)
            .await
            .map(drop),
            Tx::Sqlite(tx) => sqlx::query(
                "UPDATE idempotency_keys SET status = ?3, response_body = ?4, location = ?5 WHERE user_id = ?1 AND key = ?2",
            )
            .bind(user)
            .bind(key)
            .bind(status)
            .bind(body)
            .bind(location)
            .execute(&mut **tx)
            .await
            .map(drop),
        }
    }

    async fn release(&mut self, user: &str, key: &str) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status IS NULL",
            )
            .bind(user)
            .bind(key)
            .execute(&mut **tx)
            .await
            .map(drop),
            Tx::Sqlite(tx) => sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = ?1 AND key = ?2 AND status IS NULL",
            )
            .bind(user)
            .bind(key)
            .execute(&mut **tx)
            .await
            .map(drop),
        }
    }
}
