//! One way to run SQL against either backend of a [`TablePool`]: a statement written once
//! with `$1`, `$2`, … placeholders, its parameters as [`Param`] values, and rows read
//! back through [`DbRow`].
//!
//! Why not `sqlx::Any`: the Any driver only carries integers, floats, text and bytes, so
//! timestamps and JSON would have to be text on PostgreSQL too, and the read models
//! would lose `timestamptz`/`jsonb` there. Why not a generic `Projection<DB>`: every
//! projection would need trait bounds for each type it binds on each database, and a
//! set of projections could not live in one `Vec<Arc<dyn Projection>>`. The enum here
//! costs one `match` per statement and keeps the projections' code backend-free; the
//! handful of statements that really differ (row locks) ask [`Tx::backend`].
//!
//! Both backends accept `$N` placeholders (sqlx's SQLite driver maps `$N` to the N-th
//! argument), and the SQL used here sticks to what PostgreSQL and SQLite share
//! (`ON CONFLICT`, partial indexes, `LIMIT`). Timestamps are `timestamptz` on PostgreSQL
//! and RFC 3339 text with six fractional digits on SQLite (fixed width, so text order is
//! time order), like the event log's `recorded_at`.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Row;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};

use boxoffice_store::tables::TablePool;
use boxoffice_store::transactions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A statement parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Time(DateTime<Utc>),
    OptTime(Option<DateTime<Utc>>),
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

impl From<&str> for Param {
    fn from(value: &str) -> Self {
        Param::Text(value.to_owned())
    }
}

impl From<String> for Param {
    fn from(value: String) -> Self {
        Param::Text(value)
    }
}

impl From<Option<String>> for Param {
    fn from(value: Option<String>) -> Self {
        Param::OptText(value)
    }
}

impl From<i64> for Param {
    fn from(value: i64) -> Self {
        Param::Int(value)
    }
}

impl From<Option<i64>> for Param {
    fn from(value: Option<i64>) -> Self {
        Param::OptInt(value)
    }
}

impl From<DateTime<Utc>> for Param {
    fn from(value: DateTime<Utc>) -> Self {
        Param::Time(value)
    }
}

impl From<Option<DateTime<Utc>>> for Param {
    fn from(value: Option<DateTime<Utc>>) -> Self {
        Param::OptTime(value)
    }
}

impl From<serde_json::Value> for Param {
    fn from(value: serde_json::Value) -> Self {
        Param::Json(value)
    }
}

impl From<Vec<u8>> for Param {
    fn from(value: Vec<u8>) -> Self {
        Param::Bytes(value)
    }
}

/// A position from the store as the BIGINT the tables hold. Positions never exceed
/// i64::MAX (the store keeps them in a BIGINT too).
pub fn position_param(position: u64) -> Param {
    Param::Int(i64::try_from(position).expect("log positions fit in i64"))
}

/// How SQLite stores a timestamp (RFC 3339, microseconds, `Z`); also how a COPY gives one
/// to PostgreSQL.
pub fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn bind_pg<'q>(
    mut query: Query<'q, sqlx::Postgres, PgArguments>,
    params: &'q [Param],
) -> Query<'q, sqlx::Postgres, PgArguments> {
    for param in params {
        query = match param {
            Param::Text(v) => query.bind(v.as_str()),
            Param::OptText(v) => query.bind(v.as_deref()),
            Param::Int(v) => query.bind(*v),
            Param::OptInt(v) => query.bind(*v),
            Param::Time(v) => query.bind(*v),
            Param::OptTime(v) => query.bind(*v),
            Param::Json(v) => query.bind(sqlx::types::Json(v)),
            Param::Bytes(v) => query.bind(v.as_slice()),
        };
    }
    query
}

fn bind_sqlite<'q>(
    mut query: Query<'q, sqlx::Sqlite, SqliteArguments<'q>>,
    params: &'q [Param],
) -> Query<'q, sqlx::Sqlite, SqliteArguments<'q>> {
    for param in params {
        query = match param {
            Param::Text(v) => query.bind(v.as_str()),
            Param::OptText(v) => query.bind(v.as_deref()),
            Param::Int(v) => query.bind(*v),
            Param::OptInt(v) => query.bind(*v),
            Param::Time(v) => query.bind(sqlite_time(*v)),
            Param::OptTime(v) => query.bind(v.map(sqlite_time)),
            Param::Json(v) => query.bind(v.to_string()),
            Param::Bytes(v) => query.bind(v.as_slice()),
        };
    }
    query
}

/// A row of either backend, read by column name.
pub enum DbRow {
    Postgres(PgRow),
    Sqlite(SqliteRow),
}

fn decode_error(column: &str, reason: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: reason.to_string().into(),
    }
}

fn parse_sqlite_time(column: &str, text: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| decode_error(column, e))
}

impl DbRow {
    pub fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        match self {
            DbRow::Postgres(r) => r.try_get(column),
            DbRow::Sqlite(r) => r.try_get(column),
        }
    }

    pub fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            DbRow::Postgres(r) => r.try_get(column),
            DbRow::Sqlite(r) => r.try_get(column),
        }
    }

    pub fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        match self {
            DbRow::Postgres(r) => r.try_get(column),
            DbRow::Sqlite(r) => r.try_get(column),
        }
    }

    pub fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        match self {
            DbRow::Postgres(r) => r.try_get(column),
            DbRow::Sqlite(r) => r.try_get(column),
        }
    }

    /// A stored position (never negative).
    pub fn position(&self, column: &str) -> Result<u64, sqlx::Error> {
        let raw = self.int(column)?;
        u64::try_from(raw).map_err(|_| decode_error(column, format!("negative position {raw}")))
    }

    pub fn time(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        match self {
            DbRow::Postgres(r) => r.try_get(column),
            DbRow::Sqlite(r) => parse_sqlite_time(column, &r.try_get::<String, _>(column)?),
        }
    }

    pub fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        match self {
            DbRow::Postgres(r) => r.try_get(column),
            DbRow::Sqlite(r) => r
                .try_get::<Option<String>, _>(column)?
                .map(|t| parse_sqlite_time(column, &t))
                .transpose(),
        }
    }

    pub fn json(&self, column: &str) -> Result<serde_json::Value, sqlx::Error> {
        match self {
            DbRow::Postgres(r) => r.try_get(column),
            DbRow::Sqlite(r) => serde_json::from_str(&r.try_get::<String, _>(column)?)
                .map_err(|e| decode_error(column, e)),
        }
    }

    pub fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error> {
        match self {
            DbRow::Postgres(r) => r.try_get(column),
            DbRow::Sqlite(r) => r.try_get(column),
        }
    }
}

/// Which backend a pool talks to.
pub fn backend_of(pool: &TablePool) -> Backend {
    match pool {
        TablePool::Postgres(_) => Backend::Postgres,
        TablePool::Sqlite(_) => Backend::Sqlite,
    }
}

/// Runs a statement on the pool outside any transaction; returns the rows it changed.
pub async fn execute(pool: &TablePool, sql: &str, params: &[Param]) -> Result<u64, sqlx::Error> {
    match pool {
        TablePool::Postgres(p) => Ok(bind_pg(sqlx::query(sql), params)
            .execute(p)
            .await?
            .rows_affected()),
        TablePool::Sqlite(p) => Ok(bind_sqlite(sqlx::query(sql), params)
            .execute(p)
            .await?
            .rows_affected()),
    }
}

/// Every row of a query run on the pool.
pub async fn fetch_all(
    pool: &TablePool,
    sql: &str,
    params: &[Param],
) -> Result<Vec<DbRow>, sqlx::Error> {
    match pool {
        TablePool::Postgres(p) => Ok(bind_pg(sqlx::query(sql), params)
            .fetch_all(p)
            .await?
            .into_iter()
            .map(DbRow::Postgres)
            .collect()),
        TablePool::Sqlite(p) => Ok(bind_sqlite(sqlx::query(sql), params)
            .fetch_all(p)
            .await?
            .into_iter()
            .map(DbRow::Sqlite)
            .collect()),
    }
}

/// The row of a query run on the pool, if there is one.
pub async fn fetch_optional(
    pool: &TablePool,
    sql: &str,
    params: &[Param],
) -> Result<Option<DbRow>, sqlx::Error> {
    match pool {
        TablePool::Postgres(p) => Ok(bind_pg(sqlx::query(sql), params)
            .fetch_optional(p)
            .await?
            .map(DbRow::Postgres)),
        TablePool::Sqlite(p) => Ok(bind_sqlite(sqlx::query(sql), params)
            .fetch_optional(p)
            .await?
            .map(DbRow::Sqlite)),
    }
}

/// `value` appended to `out` as one column of a `COPY … FROM STDIN` text-format row, as
/// PostgreSQL reads it into a column of its type.
fn copy_value(out: &mut Vec<u8>, value: &Param) {
    use boxoffice_store::postgres::copy_field;
    use std::io::Write;
    match value {
        Param::Text(v) | Param::OptText(Some(v)) => copy_field(out, v.as_bytes()),
        Param::Int(v) | Param::OptInt(Some(v)) => {
            write!(out, "{v}").expect("writing to a Vec");
        }
        Param::Time(v) | Param::OptTime(Some(v)) => {
            out.extend_from_slice(sqlite_time(*v).as_bytes());
        }
        Param::Json(v) => copy_field(out, v.to_string().as_bytes()),
        Param::Bytes(v) => {
            // bytea's hex input, `\x…`; its backslash escaped for COPY.
            out.extend_from_slice(b"\\\\x");
            out.extend_from_slice(hex::encode(v).as_bytes());
        }
        Param::OptText(None) | Param::OptInt(None) | Param::OptTime(None) => {
            out.extend_from_slice(b"\\N");
        }
    }
}

enum TxInner {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// An open transaction on the side tables. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    inner: TxInner,
}

impl Tx {
    /// Begins a transaction. On SQLite it is `BEGIN IMMEDIATE`: the write lock is taken
    /// up front, so the transaction waits (busy timeout) for other writers instead of
    /// failing with SQLITE_BUSY when it upgrades from reading to writing. Begun in a task
    /// of its own, so that a caller cancelled meanwhile leaves no transaction open on the
    /// pool's connection (`boxoffice_store::transactions`).
    pub async fn begin(pool: &TablePool) -> Result<Self, sqlx::Error> {
        let inner = match pool {
            TablePool::Postgres(p) => TxInner::Postgres(transactions::begin(p, None).await?),
            TablePool::Sqlite(p) => {
                TxInner::Sqlite(transactions::begin(p, Some("BEGIN IMMEDIATE")).await?)
            }
        };
        Ok(Self { inner })
    }

    /// Begins a transaction that takes no lock up front: on SQLite a plain `BEGIN`. For a
    /// transaction that writes only TEMP tables (the TEMP database has a lock of its own)
    /// and reads the rest: it never holds up the writers of the database, appends
    /// included. One that writes a table of the main database must use [`Tx::begin`].
    pub async fn begin_deferred(pool: &TablePool) -> Result<Self, sqlx::Error> {
        let inner = match pool {
            TablePool::Postgres(p) => TxInner::Postgres(transactions::begin(p, None).await?),
            TablePool::Sqlite(p) => TxInner::Sqlite(transactions::begin(p, None).await?),
        };
        Ok(Self { inner })
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            TxInner::Postgres(_) => Backend::Postgres,
            TxInner::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Runs a statement; returns the rows it changed.
    /// Inserts `rows` into `table (columns)` with one `COPY … FROM STDIN` on PostgreSQL,
    /// far cheaper per row than binding parameters; `false` (and nothing written) on
    /// SQLite, which has no COPY. Plain inserts only: no `ON CONFLICT`.
    pub async fn copy_in(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Vec<Param>],
    ) -> Result<bool, sqlx::Error> {
        let TxInner::Postgres(tx) = &mut self.inner else {
            return Ok(false);
        };
        let mut data = Vec::with_capacity(rows.len() * columns.len() * 24);
        for row in rows {
            assert_eq!(
                row.len(),
                columns.len(),
                "a row of {table} has the wrong width"
            );
            for (i, value) in row.iter().enumerate() {
                if i > 0 {
                    data.push(b'\t');
                }
                copy_value(&mut data, value);
            }
            data.push(b'\n');
        }
        let sql = format!("COPY {table} ({}) FROM STDIN", columns.join(", "));
        let mut copy = tx.copy_in_raw(&sql).await?;
        if let Err(e) = copy.send(data).await {
            // Ends the COPY so that the connection is usable (the error is the one reported).
            let _ = copy.abort(e.to_string()).await;
            return Err(e);
        }
        copy.finish().await?;
        Ok(true)
    }

    pub async fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, sqlx::Error> {
        match &mut self.inner {
            TxInner::Postgres(tx) => Ok(bind_pg(sqlx::query(sql), params)
                .execute(&mut **tx)
                .await?
                .rows_affected()),
            TxInner::Sqlite(tx) => Ok(bind_sqlite(sqlx::query(sql), params)
                .execute(&mut **tx)
                .await?
                .rows_affected()),
        }
    }

    pub async fn fetch_optional(
        &mut self,
        sql: &str,
        params: &[Param],
    ) -> Result<Option<DbRow>, sqlx::Error> {
        match &mut self.inner {
            TxInner::Postgres(tx) => Ok(bind_pg(sqlx::query(sql), params)
                .fetch_optional(&mut **tx)
                .await?
                .map(DbRow::Postgres)),
            TxInner::Sqlite(tx) => Ok(bind_sqlite(sqlx::query(sql), params)
                .fetch_optional(&mut **tx)
                .await?
                .map(DbRow::Sqlite)),
        }
    }

    pub async fn fetch_all(
        &mut self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<DbRow>, sqlx::Error> {
        match &mut self.inner {
            TxInner::Postgres(tx) => Ok(bind_pg(sqlx::query(sql), params)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(DbRow::Postgres)
                .collect()),
            TxInner::Sqlite(tx) => Ok(bind_sqlite(sqlx::query(sql), params)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(DbRow::Sqlite)
                .collect()),
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Postgres(tx) => tx.commit().await,
            TxInner::Sqlite(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Postgres(tx) => tx.rollback().await,
            TxInner::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// How long opening a [`Session`] may wait for the database.
const SESSION_CONNECT_MS_MAX: u64 = 10_000;

/// One database connection of its own, outside the shared pool, for as long as this value
/// lives: every transaction begun on it runs on that same connection, so what is
/// connection-local (TEMP tables) stays visible from one transaction to the next. A
/// projection rebuild builds its shadow tables on one (`shadow.rs`).
///
/// It is a pool of exactly one connection opened with the shared pool's connect options,
/// and never shared with anyone: idle and lifetime limits are off, so the connection is
/// only replaced if it breaks, and then what lived on it is gone. Callers that rely on
/// connection-local state must check it is still there in each transaction. Dropping the
/// session (a cancelled task) closes the connection, which drops its TEMP tables.
#[derive(Clone)]
pub struct Session {
    pool: TablePool,
}

impl Session {
    /// Opens the session's connection on the database of `pool`.
    pub async fn open(pool: &TablePool) -> Result<Self, sqlx::Error> {
        let connect = std::time::Duration::from_millis(SESSION_CONNECT_MS_MAX);
        let pool = match pool {
            TablePool::Postgres(p) => TablePool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .test_before_acquire(false)
                    .acquire_timeout(connect)
                    .connect_with((*p.connect_options()).clone())
                    .await?,
            ),
            TablePool::Sqlite(p) => TablePool::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .test_before_acquire(false)
                    .acquire_timeout(connect)
                    .connect_with((*p.connect_options()).clone())
                    .await?,
            ),
        };
        Ok(Self { pool })
    }

    pub fn backend(&self) -> Backend {
        backend_of(&self.pool)
    }

    /// Begins a transaction on the session's connection (like [`Tx::begin`]: `BEGIN
    /// IMMEDIATE` on SQLite). One at a time: a second `begin` while a transaction is open
    /// waits for it.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Tx::begin(&self.pool).await
    }

    /// [`Tx::begin_deferred`] on the session's connection.
    pub async fn begin_deferred(&self) -> Result<Tx, sqlx::Error> {
        Tx::begin_deferred(&self.pool).await
    }

    /// Runs a statement on the session's connection outside any transaction.
    pub async fn execute(&self, sql: &str, params: &[Param]) -> Result<u64, sqlx::Error> {
        execute(&self.pool, sql, params).await
    }

    pub async fn fetch_all(&self, sql: &str, params: &[Param]) -> Result<Vec<DbRow>, sqlx::Error> {
        fetch_all(&self.pool, sql, params).await
    }

    pub async fn fetch_optional(
        &self,
        sql: &str,
        params: &[Param],
    ) -> Result<Option<DbRow>, sqlx::Error> {
        fetch_optional(&self.pool, sql, params).await
    }

    /// Closes the connection (after any open transaction ends), for every clone.
    pub async fn close(self) {
        match self.pool {
            TablePool::Postgres(p) => p.close().await,
            TablePool::Sqlite(p) => p.close().await,
        }
    }
}

/// A list of `count` placeholders for parameters `first`, `first + 1`, …, in the form the
/// backend binds fastest: `$first, …` on PostgreSQL; on SQLite plain `?`s, which bind in
/// order, so the parameters before them must be bound in order too (all `?`, or the
/// statement's `$N` numbering ending at `first - 1`). sqlx binds each `$N` on SQLite by
/// asking SQLite for the parameter's name, a scan of every named parameter, so a
/// statement with thousands of `$N`s spends its time there (quadratic); `?` has no name.
pub fn placeholders_for(backend: Backend, first: usize, count: usize) -> String {
    match backend {
        Backend::Postgres => placeholders(first, count),
        Backend::Sqlite => vec!["?"; count].join(", "),
    }
}

/// A `$first, $first+1, …` list of `count` placeholders, for `IN (…)`.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_count_from_the_first() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 0), "");
        assert_eq!(placeholders_for(Backend::Postgres, 2, 2), "$2, $3");
        assert_eq!(placeholders_for(Backend::Sqlite, 2, 2), "?, ?");
    }

    #[test]
    fn sqlite_times_are_fixed_width() {
        let t: DateTime<Utc> = "2027-05-01T20:00:00Z".parse().unwrap();
        assert_eq!(sqlite_time(t), "2027-05-01T20:00:00.000000Z");
    }
}
