//! Show leases on PostgreSQL: which node runs a show's write actor
//! (`docs/adr/0009-show-ownership.md`).
//!
//! Every statement is one conditional statement that uses the database's clock (`now()`),
//! never a node's, so nodes with skewed clocks agree on who owns what. A lease changes
//! owner only when it has expired (or its owner takes it back after a restart under the
//! same node id), and every change of owner bumps the show's `epoch`, the fencing token
//! that appends carry ([`crate::Fence`]). The SQLite backend is one process that owns
//! every show and has no leases.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::{StoreError, StoreResult};

/// Lease statements are few and small; two connections keep a renewal from waiting behind
/// a takeover scan.
const POOL_CONNECTIONS_MAX: u32 = 3;
/// A lease statement that takes longer than this is as good as failed: a renewal that
/// arrives after the lease expired renews nothing useful.
const STATEMENT_TIMEOUT_MS: u64 = 2_000;
const ACQUIRE_TIMEOUT_MS: u64 = 2_000;
/// Most shows renewed in one statement.
pub const RENEW_SHOWS_MAX: usize = 10_000;

/// Takes the lease if it is free, expired, or already this node's (a restart under the
/// same node id); every take bumps the epoch. Returns nothing when another node holds it.
const ACQUIRE_SQL: &str = "\
INSERT INTO show_leases AS l (show_id, owner_node, owner_url, epoch, expires_at)
VALUES ($1, $2, $3, 1, now() + $4 * interval '1 millisecond')
ON CONFLICT (show_id) DO UPDATE
    SET owner_node = EXCLUDED.owner_node,
        owner_url = EXCLUDED.owner_url,
        epoch = l.epoch + 1,
        expires_at = EXCLUDED.expires_at
    WHERE l.expires_at <= now() OR l.owner_node = EXCLUDED.owner_node
RETURNING l.epoch";

const HOLDER_SQL: &str = "\
SELECT owner_node, owner_url, epoch,
       greatest(0, (extract(epoch FROM (expires_at - now())) * 1000)::bigint) AS remaining_ms
FROM show_leases WHERE show_id = $1";

/// Extends the leases this node holds at the epochs it holds them. One that expired but
/// that nobody took over is extended too: its epoch proves nobody wrote in between.
const RENEW_SQL: &str = "\
UPDATE show_leases l SET expires_at = now() + $4 * interval '1 millisecond'
FROM unnest($1::text[], $2::bigint[]) AS h(show_id, epoch)
WHERE l.show_id = h.show_id AND l.epoch = h.epoch AND l.owner_node = $3
RETURNING l.show_id";

/// Lets leases go at once (graceful shutdown): expired now, so any node takes them.
const RELEASE_SQL: &str = "\
UPDATE show_leases l SET expires_at = now()
FROM unnest($1::text[], $2::bigint[]) AS h(show_id, epoch)
WHERE l.show_id = h.show_id AND l.epoch = h.epoch AND l.owner_node = $3";

/// Drops the lease of an id that is no show at all (an actor started for a lookup).
const ABANDON_SQL: &str =
    "DELETE FROM show_leases WHERE show_id = $1 AND epoch = $2 AND owner_node = $3";

const EXPIRED_SQL: &str = "\
SELECT show_id FROM show_leases WHERE expires_at <= now() ORDER BY expires_at LIMIT $1";

const LIVE_NODE_SQL: &str = "\
SELECT owner_url FROM show_leases WHERE expires_at > now() AND owner_node <> $1
ORDER BY random() LIMIT 1";

/// Who holds a show's lease, as the database saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub url: String,
    pub epoch: u64,
    /// How long the lease has left (0 if it has expired).
    pub remaining: Duration,
}

/// The outcome of trying to take a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This node holds the lease now, at this epoch.
    Taken { epoch: u64 },
    /// Another node holds it (`None`: it changed hands while we looked; ask again).
    Held(Option<Holder>),
}

/// The show lease table, with a small pool of its own.
#[derive(Clone)]
pub struct ShowLeases {
    pool: PgPool,
}

impl ShowLeases {
    /// Opens a pool on the PostgreSQL store at `url`; the event store's connect applies the
    /// migration that creates the table.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        let options = options
            .application_name("boxoffice-leases")
            .options([("statement_timeout", STATEMENT_TIMEOUT_MS.to_string())]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .acquire_timeout(Duration::from_millis(ACQUIRE_TIMEOUT_MS))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Ok(Self { pool })
    }

    /// Takes `show`'s lease for `lease` if it is free or expired.
    pub async fn acquire(
        &self,
        show: &str,
        node: &str,
        url: &str,
        lease: Duration,
    ) -> StoreResult<Acquired> {
        let taken: Option<i64> = sqlx::query_scalar(ACQUIRE_SQL)
            .bind(show)
            .bind(node)
            .bind(url)
            .bind(millis(lease))
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        match taken {
            Some(epoch) => Ok(Acquired::Taken {
                epoch: u64::try_from(epoch).expect("epochs are positive"),
            }),
            None => Ok(Acquired::Held(self.holder(show).await?)),
        }
    }

    /// Who holds `show`'s lease, if anyone ever did.
    pub async fn holder(&self, show: &str) -> StoreResult<Option<Holder>> {
        let row = sqlx::query(HOLDER_SQL)
            .bind(show)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|row| {
            let epoch: i64 = row.try_get("epoch")?;
            let remaining: i64 = row.try_get("remaining_ms")?;
            Ok(Holder {
                node: row.try_get("owner_node")?,
                url: row.try_get("owner_url")?,
                epoch: u64::try_from(epoch).unwrap_or(0),
                remaining: Duration::from_millis(u64::try_from(remaining).unwrap_or(0)),
            })
        })
        .transpose()
        .map_err(unavailable)
    }

    /// Extends the leases `node` holds (show, epoch) by `lease`; returns the shows whose
    /// lease it still holds. A show missing from the answer was taken over.
    pub async fn renew(
        &self,
        node: &str,
        held: &[(String, u64)],
        lease: Duration,
    ) -> StoreResult<Vec<String>> {
        assert!(held.len() <= RENEW_SHOWS_MAX, "renewals are bounded");
        let (shows, epochs) = split(held);
        sqlx::query_scalar(RENEW_SQL)
            .bind(&shows)
            .bind(&epochs)
            .bind(node)
            .bind(millis(lease))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)
    }

    /// Expires `node`'s leases on these shows now, so another node takes them at once.
    pub async fn release(&self, node: &str, held: &[(String, u64)]) -> StoreResult<()> {
        let (shows, epochs) = split(held);
        sqlx::query(RELEASE_SQL)
            .bind(&shows)
            .bind(&epochs)
            .bind(node)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Deletes the lease of an id that turned out to be no show.
    pub async fn abandon(&self, show: &str, node: &str, epoch: u64) -> StoreResult<()> {
        sqlx::query(ABANDON_SQL)
            .bind(show)
            .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
            .bind(node)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Shows whose lease has expired (their owner died, was cut off or let them go),
    /// oldest first, at most `limit`.
    pub async fn expired(&self, limit: usize) -> StoreResult<Vec<String>> {
        sqlx::query_scalar(EXPIRED_SQL)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)
    }

    /// The URL of some other node that holds a live lease (where a read-only node sends
    /// a command for a show nobody owns yet).
    pub async fn live_node(&self, node: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar(LIVE_NODE_SQL)
            .bind(node)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)
    }
}

fn split(held: &[(String, u64)]) -> (Vec<&str>, Vec<i64>) {
    held.iter()
        .map(|(show, epoch)| (show.as_str(), i64::try_from(*epoch).unwrap_or(i64::MAX)))
        .unzip()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}
