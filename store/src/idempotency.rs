//! Idempotency keys of API requests, with Stripe's semantics: the first request with a
//! key claims it; its response is kept and replayed to every later request with the same
//! key and the same fingerprint; a different request with the key is refused; a request
//! that arrives while the first is still being handled is told so. Keys are per user and
//! kept at least 24 hours.
//!
//! Every keyed POST claims its key before it is handled and stores its response after,
//! two writes on the request path. They are group-committed: a writer task (one of a
//! few) takes the claims, completions and releases that are waiting, applies them in one
//! transaction and answers them all when it commits (the event appends are batched the
//! same way). One commit for a whole batch instead of one per write took the on-sale
//! benchmark past the four connections and SQLite's single writer, which had capped keyed
//! POSTs at about 900 per second (`docs/adr/0012-batched-idempotency-keys.md`). On
//! PostgreSQL a batch's writes of a kind go in one statement each (ADR 0018).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::tables::{TablePool, unavailable};
use crate::transactions;
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
    Claim(ClaimOp),
    Complete(CompleteOp),
    Release { user: String, key: String },
}

/// A claim of a key (see [`IdempotencyStore::claim`]).
#[derive(Debug)]
struct ClaimOp {
    user: String,
    key: String,
    fingerprint: String,
    now: DateTime<Utc>,
    abandoned_after: Duration,
    expire_after: Duration,
}

/// The response stored for a claimed key.
#[derive(Debug)]
struct CompleteOp {
    user: String,
    key: String,
    status: i64,
    body: Vec<u8>,
    location: Option<String>,
}

impl Op {
    fn key(&self) -> (&str, &str) {
        match self {
            Op::Claim(ClaimOp { user, key, .. })
            | Op::Complete(CompleteOp { user, key, .. })
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
            .submit(Op::Claim(ClaimOp {
                user: user.to_owned(),
                key: key.to_owned(),
                fingerprint: fingerprint.to_owned(),
                now,
                abandoned_after,
                expire_after,
            }))
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
        self.submit(Op::Complete(CompleteOp {
            user: user.to_owned(),
            key: key.to_owned(),
            status: i64::from(status),
            body: body.to_vec(),
            location: location.map(str::to_owned),
        }))
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
            matches!(queued.op, Op::Claim(_)) && queued.at.elapsed() > wait_max
        };
        for queued in batch.extract_if(.., late) {
            let _ = queued.reply.send(Err(StoreError::Unavailable(
                "too many requests are waiting for their idempotency keys".into(),
            )));
        }
        if batch.is_empty() {
            continue;
        }
        // In key order, so that writers (of this process or another) applying writes one
        // at a time lock rows in the same order and never deadlock (set-based rounds can,
        // see `apply`); writes to one key keep their arrival order (a stable sort).
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
            // them, and a deadlock was retried one write at a time): a failure is the
            // database's (gone, SQLite's write lock not free within the busy timeout, or a
            // second deadlock), and every write of the batch answers with it, so
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
/// order. On PostgreSQL the writes go in rounds of set-based statements ([`apply_rounds`]);
/// on SQLite, in the process, one statement per write costs no round trip.
///
/// Rounds lock rows round by round, not in key order, so two writers can deadlock: one
/// completes key `a` in its first round and claims `b` again in its second, while the
/// other did the same the other way round. PostgreSQL then aborts one of them (after
/// `deadlock_timeout`), and that batch is applied again one write at a time in key order,
/// as before set-based rounds, which takes locks in the order every one-by-one writer
/// does.
async fn apply(pool: &TablePool, batch: &[Queued]) -> Result<Vec<Option<Claim>>, sqlx::Error> {
    match apply_in(pool, batch, true).await {
        Err(e) if is_deadlock(&e) => {
            tracing::warn!(
                writes = batch.len(),
                "idempotency-key batch deadlocked with another writer; applying it again one write at a time"
            );
            apply_in(pool, batch, false).await
        }
        applied => applied,
    }
}

/// A deadlock PostgreSQL broke by aborting this transaction.
fn is_deadlock(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40P01")
}

/// [`apply`] in one transaction, in rounds where the backend is PostgreSQL and `rounds`
/// is set, else one write after the other.
async fn apply_in(
    pool: &TablePool,
    batch: &[Queued],
    rounds: bool,
) -> Result<Vec<Option<Claim>>, sqlx::Error> {
    let mut tx = Tx::begin(pool).await?;
    let answers = match &tx {
        Tx::Postgres(_) if rounds => apply_rounds(&mut tx, batch).await?,
        _ => {
            let mut answers = Vec::with_capacity(batch.len());
            for op in batch.iter().map(|queued| &queued.op) {
                answers.push(apply_one(&mut tx, op).await?);
            }
            answers
        }
    };
    tx.commit().await?;
    Ok(answers)
}

/// One write, on its own: what the set-based rounds fall back to for a claim that meets a
/// stale key, and every write on SQLite.
async fn apply_one(tx: &mut Tx, op: &Op) -> Result<Option<Claim>, sqlx::Error> {
    Ok(match op {
        Op::Claim(c) => Some(claim(tx, c).await?),
        Op::Complete(c) => {
            tx.complete(&c.user, &c.key, c.status, &c.body, c.location.as_deref())
                .await?;
            None
        }
        Op::Release { user, key } => {
            tx.release(user, key).await?;
            None
        }
    })
}

/// The writes of a batch sorted by key (writes to one key next to each other, in arrival
/// order) split into rounds in which each key has one write at most: round `i` holds
/// every key's `i`-th write. Applying the rounds one after the other applies each key's
/// writes in order, and the writes of one round can go in one statement per kind.
fn rounds(keys: &[(&str, &str)]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut nth = 0;
    for (i, key) in keys.iter().enumerate() {
        nth = if i > 0 && keys[i - 1] == *key {
            nth + 1
        } else {
            0
        };
        if rounds.len() == nth {
            rounds.push(Vec::new());
        }
        rounds[nth].push(i);
    }
    rounds
}

/// Applies `batch` (sorted by key) on PostgreSQL round by round ([`rounds`]), each round
/// with a few statements whatever its size: its claims are inserted with one statement and
/// the keys that were taken read back with one more; its completions are one UPDATE and its
/// releases one DELETE (a kind with a single write in the round uses the single-row
/// statements). One statement per write had made this writer an eighth of the
/// server's CPU at an on-sale, in round trips and their bookkeeping. A claim that meets a
/// key gone stale (expired, abandoned, or deleted between the two statements) is settled
/// on its own, as on SQLite.
async fn apply_rounds(tx: &mut Tx, batch: &[Queued]) -> Result<Vec<Option<Claim>>, sqlx::Error> {
    let keys: Vec<(&str, &str)> = batch.iter().map(|queued| queued.op.key()).collect();
    let mut answers = vec![None; batch.len()];
    let mut custom = false;
    for round in rounds(&keys) {
        let (mut claims, mut completes, mut releases) = (Vec::new(), Vec::new(), Vec::new());
        for i in round {
            match &batch[i].op {
                Op::Claim(c) => claims.push((i, c)),
                Op::Complete(c) => completes.push((i, c)),
                Op::Release { .. } => releases.push(i),
            }
        }
        // One write of a kind goes as it does on SQLite: the single-row statements plan as
        // cheaply as they run.
        let mut single = Vec::new();
        if let [(i, _)] = claims[..] {
            single.push(i);
            claims.clear();
        }
        if let [(i, _)] = completes[..] {
            single.push(i);
            completes.clear();
        }
        if let [i] = releases[..] {
            single.push(i);
            releases.clear();
        }
        for i in single {
            answers[i] = apply_one(tx, &batch[i].op).await?;
        }
        if claims.is_empty() && completes.is_empty() && releases.is_empty() {
            continue;
        }
        if !custom {
            // These statements look keys up by the primary key. A generic plan of a join
            // with `unnest` is costed for ten rows and the table's size when it was made:
            // made while the table was small, it scans the table whole, and PostgreSQL
            // keeps it as the table grows (an on-sale's hold p50 doubled within 20 s). A
            // custom plan, made for each execution (about 60 µs, measured), knows both.
            sqlx::query("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)")
                .execute(&mut **tx.pg())
                .await?;
            custom = true;
        }
        if !claims.is_empty() {
            for i in claim_round(tx.pg(), &claims, &mut answers).await? {
                answers[i] = apply_one(tx, &batch[i].op).await?;
            }
        }
        if !completes.is_empty() {
            complete_round(tx.pg(), &completes).await?;
        }
        if !releases.is_empty() {
            release_round(tx.pg(), batch, &releases).await?;
        }
    }
    Ok(answers)
}
async fn claim(tx: &mut Tx, c: &ClaimOp) -> Result<Claim, sqlx::Error> {
    let (user, key) = (c.user.as_str(), c.key.as_str());
    // Two rounds at most: the second after forgetting an expired or abandoned claim.
    for _ in 0..2 {
        if tx.insert(user, key, &c.fingerprint, c.now).await? {
            return Ok(Claim::Started);
        }
        let Some(row) = tx.get(user, key).await? else {
            continue;
        };
        let created_at = row.created_at;
        match judge(row, c) {
            Some(found) => return Ok(found),
            None => tx.forget_if_created(user, key, created_at).await?,
        }
    }
    Ok(Claim::InFlight)
}

/// What claim `c` finds in the key `row` someone else stored; `None` if that key is stale
/// (expired, or a claim abandoned unanswered) and is to be forgotten and claimed anew.
fn judge(row: Row_, c: &ClaimOp) -> Option<Claim> {
    let expired = row.created_at < c.now - c.expire_after;
    let abandoned = row.status.is_none() && row.created_at < c.now - c.abandoned_after;
    if expired || abandoned {
        return None;
    }
    if row.fingerprint != c.fingerprint {
        return Some(Claim::Mismatch);
    }
    Some(match row.status {
        None => Claim::InFlight,
        Some(status) => Claim::Replay {
            status: u16::try_from(status).unwrap_or(500),
            body: row.body.unwrap_or_default(),
            location: row.location,
        },
    })
}

/// The claims of one round (each for another key, with its index in the batch): inserts
/// them all, then reads the keys that were already taken and answers each claim in
/// `answers`. Returns the claims left to settle one by one: those whose key is stale, or
/// was deleted between the two statements.
async fn claim_round(
    pg: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    claims: &[(usize, &ClaimOp)],
    answers: &mut [Option<Claim>],
) -> Result<Vec<usize>, sqlx::Error> {
    let (users, keys) = key_columns(claims.iter().map(|(_, c)| (&c.user, &c.key)));
    let (fingerprints, times): (Vec<&str>, Vec<DateTime<Utc>>) = claims
        .iter()
        .map(|(_, c)| (c.fingerprint.as_str(), c.now))
        .unzip();
    // In key order (the batch's), as the rows are locked.
    let inserted: std::collections::HashSet<(String, String)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, created_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
         ON CONFLICT (user_id, key) DO NOTHING
         RETURNING user_id, key",
    )
    .bind(&users)
    .bind(&keys)
    .bind(&fingerprints)
    .bind(&times)
    .fetch_all(&mut **pg)
    .await?
    .into_iter()
    .collect();
    let mut taken = Vec::new();
    for &(i, c) in claims {
        if inserted.contains(&(c.user.clone(), c.key.clone())) {
            answers[i] = Some(Claim::Started);
        } else {
            taken.push((i, c));
        }
    }
    if taken.is_empty() {
        return Ok(Vec::new());
    }
    let (users, keys) = key_columns(taken.iter().map(|(_, c)| (&c.user, &c.key)));
    let mut rows: std::collections::HashMap<(String, String), Row_> = sqlx::query(
        "SELECT k.user_id, k.key, k.fingerprint, k.status, k.response_body, k.location,
                k.created_at
         FROM unnest($1::text[], $2::text[]) AS t (user_id, key)
         JOIN idempotency_keys k ON k.user_id = t.user_id AND k.key = t.key",
    )
    .bind(&users)
    .bind(&keys)
    .fetch_all(&mut **pg)
    .await?
    .into_iter()
    .map(|r| {
        Ok((
            (r.try_get("user_id")?, r.try_get("key")?),
            Row_ {
                fingerprint: r.try_get("fingerprint")?,
                status: r.try_get::<Option<i32>, _>("status")?.map(i64::from),
                body: r.try_get("response_body")?,
                location: r.try_get("location")?,
                created_at: r.try_get("created_at")?,
            },
        ))
    })
    .collect::<Result<_, sqlx::Error>>()?;
    let mut stale = Vec::new();
    for (i, c) in taken {
        let found = rows
            .remove(&(c.user.clone(), c.key.clone()))
            .and_then(|row| judge(row, c));
        match found {
            Some(found) => answers[i] = Some(found),
            None => stale.push(i),
        }
    }
    Ok(stale)
}

/// Users and keys as the two array columns the set-based statements take.
fn key_columns<'a>(
    keys: impl Iterator<Item = (&'a String, &'a String)>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    keys.map(|(user, key)| (user.as_str(), key.as_str()))
        .unzip()
}

/// The completions of one round, each for another key, in one UPDATE.
async fn complete_round(
    pg: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    completes: &[(usize, &CompleteOp)],
) -> Result<(), sqlx::Error> {
    let (users, keys) = key_columns(completes.iter().map(|(_, c)| (&c.user, &c.key)));
    let (mut statuses, mut bodies, mut locations) = (Vec::new(), Vec::new(), Vec::new());
    for (_, c) in completes {
        statuses.push(c.status);
        bodies.push(c.body.as_slice());
        locations.push(c.location.as_deref());
    }
    sqlx::query(
        "UPDATE idempotency_keys k
         SET status = t.status, response_body = t.body, location = t.location
         FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::text[])
              AS t (user_id, key, status, body, location)
         WHERE k.user_id = t.user_id AND k.key = t.key",
    )
    .bind(&users)
    .bind(&keys)
    .bind(&statuses)
    .bind(&bodies)
    .bind(&locations)
    .execute(&mut **pg)
    .await
    .map(drop)
}

/// The releases of one round (indices into `batch`), each for another key, in one DELETE.
async fn release_round(
    pg: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    batch: &[Queued],
    releases: &[usize],
) -> Result<(), sqlx::Error> {
    let (users, keys): (Vec<&str>, Vec<&str>) = releases.iter().map(|&i| batch[i].op.key()).unzip();
    sqlx::query(
        "DELETE FROM idempotency_keys k
         USING unnest($1::text[], $2::text[]) AS t (user_id, key)
         WHERE k.user_id = t.user_id AND k.key = t.key AND k.status IS NULL",
    )
    .bind(&users)
    .bind(&keys)
    .execute(&mut **pg)
    .await
    .map(drop)
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
            TablePool::Postgres(p) => Tx::Postgres(transactions::begin(p, None).await?),
            TablePool::Sqlite(p) => {
                Tx::Sqlite(transactions::begin(p, Some("BEGIN IMMEDIATE")).await?)
            }
        })
    }

    /// The PostgreSQL transaction; only called on PostgreSQL's path.
    fn pg(&mut self) -> &mut sqlx::Transaction<'static, sqlx::Postgres> {
        match self {
            Tx::Postgres(tx) => tx,
            Tx::Sqlite(_) => unreachable!("the set-based rounds run on PostgreSQL only"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, Executor};

    #[test]
    fn each_round_holds_one_write_per_key_and_a_keys_writes_keep_their_order() {
        let keys = [
            ("u1", "a"),
            ("u1", "a"),
            ("u1", "a"),
            ("u1", "b"),
            ("u2", "a"),
            ("u2", "a"),
        ];
        assert_eq!(rounds(&keys), vec![vec![0, 3, 4], vec![1, 5], vec![2]]);
        assert_eq!(rounds(&[]), Vec::<Vec<usize>>::new());
        assert_eq!(rounds(&[("u", "k")]), vec![vec![0]]);
    }

    fn queued(op: Op) -> Queued {
        Queued {
            op,
            reply: oneshot::channel().0,
            at: std::time::Instant::now(),
        }
    }

    fn claim_of(key: &str, now: DateTime<Utc>) -> Op {
        Op::Claim(ClaimOp {
            user: "usr_d".into(),
            key: key.into(),
            fingerprint: "fp".into(),
            now,
            abandoned_after: Duration::seconds(120),
            expire_after: Duration::hours(24),
        })
    }

    /// A batch whose set-based round deadlocks with another transaction is applied again
    /// one write at a time and answers as if nothing had happened. The batch claims `a`
    /// (new) and `b` (completed, locked by the other transaction) in one statement: it
    /// inserts `a` and waits for `b`; the other transaction then inserts `a` and waits for
    /// the batch. PostgreSQL aborts the batch (the other session's `deadlock_timeout` is
    /// longer), which is retried, waits for the other transaction to roll back, and
    /// claims both.
    #[tokio::test]
    async fn a_batch_that_deadlocks_is_applied_again_one_write_at_a_time() {
        let Ok(admin_url) = std::env::var("DATABASE_URL") else {
            println!("skipped: PostgreSQL (DATABASE_URL not set)");
            return;
        };
        let name = format!("boxoffice_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let (server, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url.as_str(), String::new()),
        };
        let server = &server[..server[server.find("://").unwrap() + 3..]
            .find('/')
            .map_or(server.len(), |i| server.find("://").unwrap() + 3 + i)];
        let url = format!("{server}/{name}{query}");
        // Opening the event store applies the migrations.
        drop(crate::connect(&url, None).await.unwrap());
        let pool = TablePool::connect(&url).await.unwrap();
        let now = Utc::now();
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        other
            .execute(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, status, response_body, created_at)
                 VALUES ('usr_d', 'b', 'fp', 201, 'done', now())",
            )
            .await
            .unwrap();
        other
            .execute("SET deadlock_timeout = '20s'; BEGIN; UPDATE idempotency_keys SET status = 201 WHERE key = 'b'")
            .await
            .unwrap();

        let batch = Arc::new(vec![queued(claim_of("a", now)), queued(claim_of("b", now))]);
        let applying = {
            let (pool, batch) = (pool.clone(), Arc::clone(&batch));
            tokio::spawn(async move { apply(&pool, &batch).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // Waits for the batch's `a` until PostgreSQL aborts the batch.
        other
            .execute(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, created_at)
                 VALUES ('usr_d', 'a', 'other', now()) ON CONFLICT DO NOTHING",
            )
            .await
            .expect("the batch, not this session, is the deadlock's victim");
        other.execute("ROLLBACK").await.unwrap();
        let answers = applying
            .await
            .unwrap()
            .expect("the batch applied after all");
        assert_eq!(
            answers,
            vec![
                Some(Claim::Started),
                Some(Claim::Replay {
                    status: 201,
                    body: b"done".to_vec(),
                    location: None
                })
            ]
        );

        other.close().await.unwrap();
        drop(pool);
        admin
            .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
            .await
            .unwrap();
    }
}
