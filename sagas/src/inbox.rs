//! The payment webhook inbox: every verified webhook is stored, deduplicated by the
//! provider's event id, before the provider is answered 200. The saga never acts on a
//! webhook's body; a webhook only tells it which payment to re-read now.

use chrono::{DateTime, Utc};
use sqlx::Row;

use boxoffice_store::tables::TablePool;
use boxoffice_store::{StoreError, StoreResult};

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The statement for `pool`'s dialect: written with PostgreSQL's `$n` parameters, which
/// SQLite spells `?n`.
fn dialect(pool: &TablePool, sql: &str) -> String {
    match pool {
        TablePool::Postgres(_) => sql.to_owned(),
        TablePool::Sqlite(_) => sql.replace('$', "?"),
    }
}

/// A stored webhook that has not been handed to the saga yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unprocessed {
    pub event_id: String,
    pub intent_id: String,
    pub reservation_id: Option<String>,
}

/// A webhook as received: its provider event id, type, the payment it is about and the
/// raw body.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub intent_id: &'a str,
    pub reservation_id: Option<&'a str>,
    pub body: &'a str,
}

#[derive(Clone)]
pub struct WebhookInbox {
    pool: TablePool,
}

impl WebhookInbox {
    pub fn new(pool: TablePool) -> Self {
        Self { pool }
    }

    /// Stores a webhook; `false` when its event id was stored before (a duplicate).
    pub async fn record(&self, hook: &Received<'_>, now: DateTime<Utc>) -> StoreResult<bool> {
        let sql = dialect(
            &self.pool,
            "INSERT INTO payment_webhooks (event_id, event_type, intent_id, reservation_id, body, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
        );
        macro_rules! run {
            ($pool:expr) => {
                sqlx::query(&sql)
                    .bind(hook.event_id)
                    .bind(hook.event_type)
                    .bind(hook.intent_id)
                    .bind(hook.reservation_id)
                    .bind(hook.body)
                    .bind(now.timestamp_millis())
                    .execute($pool)
                    .await
                    .map(|r| r.rows_affected())
            };
        }
        let done = match &self.pool {
            TablePool::Postgres(pool) => run!(pool),
            TablePool::Sqlite(pool) => run!(pool),
        }
        .map_err(unavailable)?;
        Ok(done == 1)
    }

    /// Marks a webhook as handed to the saga.
    pub async fn mark_processed(&self, event_id: &str, now: DateTime<Utc>) -> StoreResult<()> {
        let sql = dialect(
            &self.pool,
            "UPDATE payment_webhooks SET processed_at = $2 WHERE event_id = $1",
        );
        let millis = now.timestamp_millis();
        match &self.pool {
            TablePool::Postgres(pool) => sqlx::query(&sql)
                .bind(event_id)
                .bind(millis)
                .execute(pool)
                .await
                .map(|_| ()),
            TablePool::Sqlite(pool) => sqlx::query(&sql)
                .bind(event_id)
                .bind(millis)
                .execute(pool)
                .await
                .map(|_| ()),
        }
        .map_err(unavailable)
    }

    /// Webhooks stored but not yet handed to the saga (the process stopped in between),
    /// oldest first.
    pub async fn unprocessed(&self, limit: i64) -> StoreResult<Vec<Unprocessed>> {
        let sql = dialect(
            &self.pool,
            "SELECT event_id, intent_id, reservation_id FROM payment_webhooks \
             WHERE processed_at IS NULL ORDER BY received_at LIMIT $1",
        );
        let rows = match &self.pool {
            TablePool::Postgres(pool) => sqlx::query(&sql)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<String, _>(1),
                        r.get::<Option<String>, _>(2),
                    )
                })
                .collect::<Vec<_>>(),
            TablePool::Sqlite(pool) => sqlx::query(&sql)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<String, _>(1),
                        r.get::<Option<String>, _>(2),
                    )
                })
                .collect(),
        };
        Ok(rows
            .into_iter()
            .map(|(event_id, intent_id, reservation_id)| Unprocessed {
                event_id,
                intent_id,
                reservation_id,
            })
            .collect())
    }

    /// How many webhooks with this event id are stored (0 or 1): for tests and audits.
    pub async fn count(&self, event_id: &str) -> StoreResult<i64> {
        let sql = dialect(
            &self.pool,
            "SELECT COUNT(*) FROM payment_webhooks WHERE event_id = $1",
        );
        match &self.pool {
            TablePool::Postgres(pool) => sqlx::query(&sql)
                .bind(event_id)
                .fetch_one(pool)
                .await
                .map(|r| r.get::<i64, _>(0)),
            TablePool::Sqlite(pool) => sqlx::query(&sql)
                .bind(event_id)
                .fetch_one(pool)
                .await
                .map(|r| r.get::<i64, _>(0)),
        }
        .map_err(unavailable)
    }
}
