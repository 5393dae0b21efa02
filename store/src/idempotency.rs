//! Idempotency keys of API requests, with Stripe's semantics: the first request with a
//! key claims it; its response is kept and replayed to every later request with the same
//! key and the same fingerprint; a different request with the key is refused; a request
//! that arrives while the first is still being handled is told so. Keys are per user and
//! kept at least 24 hours.

use chrono::{DateTime, Duration, Utc};
use sqlx::Row;

use crate::StoreResult;
use crate::tables::{TablePool, unavailable};

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
}

/// A stored key as read back.
struct Row_ {
    fingerprint: String,
    status: Option<i64>,
    body: Option<Vec<u8>>,
    location: Option<String>,
    created_at: DateTime<Utc>,
}

impl IdempotencyKeys {
    pub fn new(pool: TablePool) -> Self {
        Self { pool }
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
        // Two rounds at most: the second after forgetting an expired or abandoned claim.
        for _ in 0..2 {
            if self.insert(user, key, fingerprint, now).await? {
                return Ok(Claim::Started);
            }
            let Some(row) = self.get(user, key).await? else {
                continue;
            };
            let expired = row.created_at < now - expire_after;
            let abandoned = row.status.is_none() && row.created_at < now - abandoned_after;
            if expired || abandoned {
                self.forget_if_created(user, key, row.created_at).await?;
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

    /// Stores the response of a claimed key.
    pub async fn complete(
        &self,
        user: &str,
        key: &str,
        status: u16,
        body: &[u8],
        location: Option<&str>,
    ) -> StoreResult<()> {
        let status = i64::from(status);
        match &self.pool {
            TablePool::Postgres(pool) => sqlx::query(
                "UPDATE idempotency_keys SET status = $3, response_body = $4, location = $5 WHERE user_id = $1 AND key = $2",
            )
            .bind(user)
            .bind(key)
            .bind(status)
            .bind(body)
            .bind(location)
            .execute(pool)
            .await
            .map(|_| ()),
            TablePool::Sqlite(pool) => sqlx::query(
                "UPDATE idempotency_keys SET status = ?3, response_body = ?4, location = ?5 WHERE user_id = ?1 AND key = ?2",
            )
            .bind(user)
            .bind(key)
            .bind(status)
            .bind(body)
            .bind(location)
            .execute(pool)
            .await
            .map(|_| ()),
        }
        .map_err(unavailable)
    }

    /// Gives up a claimed key without a response (the request failed in a way a retry
    /// may fix), so the same key can be used again.
    pub async fn release(&self, user: &str, key: &str) -> StoreResult<()> {
        match &self.pool {
            TablePool::Postgres(pool) => sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status IS NULL",
            )
            .bind(user)
            .bind(key)
            .execute(pool)
            .await
            .map(|_| ()),
            TablePool::Sqlite(pool) => sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = ?1 AND key = ?2 AND status IS NULL",
            )
            .bind(user)
            .bind(key)
            .execute(pool)
            .await
            .map(|_| ()),
        }
        .map_err(unavailable)
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

    async fn insert(
        &self,
        user: &str,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let inserted = match &self.pool {
            TablePool::Postgres(pool) => sqlx::query(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, key) DO NOTHING",
            )
            .bind(user)
            .bind(key)
            .bind(fingerprint)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
            TablePool::Sqlite(pool) => sqlx::query(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (user_id, key) DO NOTHING",
            )
            .bind(user)
            .bind(key)
            .bind(fingerprint)
            .bind(now.timestamp())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        };
        Ok(inserted.map_err(unavailable)? == 1)
    }

    async fn get(&self, user: &str, key: &str) -> StoreResult<Option<Row_>> {
        let columns = "fingerprint, status, response_body, location, created_at";
        match &self.pool {
            TablePool::Postgres(pool) => {
                let sql = format!(
                    "SELECT {columns} FROM idempotency_keys WHERE user_id = $1 AND key = $2"
                );
                let row = sqlx::query(&sql)
                    .bind(user)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
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
                .map_err(unavailable)
            }
            TablePool::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {columns} FROM idempotency_keys WHERE user_id = ?1 AND key = ?2"
                );
                let row = sqlx::query(&sql)
                    .bind(user)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
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
                .map_err(unavailable)
            }
        }
    }

    async fn forget_if_created(
        &self,
        user: &str,
        key: &str,
        created_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        match &self.pool {
            TablePool::Postgres(pool) => sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND created_at = $3",
            )
            .bind(user)
            .bind(key)
            .bind(created_at)
            .execute(pool)
            .await
            .map(|_| ()),
            TablePool::Sqlite(pool) => sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = ?1 AND key = ?2 AND created_at = ?3",
            )
            .bind(user)
            .bind(key)
            .bind(created_at.timestamp())
            .execute(pool)
            .await
            .map(|_| ()),
        }
        .map_err(unavailable)
    }
}
