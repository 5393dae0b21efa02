//! A connection pool for the plain tables that live next to the event log (users,
//! idempotency keys): rows that change, which the log never does.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{StoreError, StoreResult};

const POOL_CONNECTIONS_MAX: u32 = 4;
const ACQUIRE_TIMEOUT_MS: u64 = 5_000;
/// SQLite has one writer at a time; these tables wait for the event writer's commits.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;

#[derive(Clone)]
pub enum TablePool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl TablePool {
    /// Opens a pool on the store at `url`; the event store's connect applies the
    /// migrations that create the tables.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(POOL_CONNECTIONS_MAX)
                .acquire_timeout(Duration::from_millis(ACQUIRE_TIMEOUT_MS))
                .connect(url)
                .await
                .map_err(unavailable)?;
            Ok(TablePool::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Config(e.to_string()))?
                .journal_mode(SqliteJournalMode::Wal)
                // The same durability as the event store on this file: a process crash
                // loses no commit; only a power loss may lose the last ones. With FULL,
                // every idempotency claim, user and read-model commit waited for an fsync
                // (measured as the first limit of the on-sale benchmark on SQLite).
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS));
            let pool = SqlitePoolOptions::new()
                .max_connections(POOL_CONNECTIONS_MAX)
                .acquire_timeout(Duration::from_millis(ACQUIRE_TIMEOUT_MS))
                .connect_with(options)
                .await
                .map_err(unavailable)?;
            Ok(TablePool::Sqlite(pool))
        } else {
            Err(StoreError::Config(format!(
                "unsupported database URL scheme: {url}"
            )))
        }
    }
}
