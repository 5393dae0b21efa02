//! The simulator's own SQLite database: intents, idempotency keys, refunds, webhook
//! events and the webhook outbox. It is what lets the simulator survive a restart the
//! way a real provider does: settlements and pending deliveries resume from here.
//!
//! Every change runs in one transaction on the single writer connection, so a cancel and
//! a settlement of the same intent are serialized and exactly one of them wins. Reads
//! that change nothing (retrieve, list refunds, "what is due next") use a separate
//! read-only pool.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use boxoffice_store::transactions;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};

use super::behaviour::{self, CancelDecision, PlannedEvent};
use crate::provider::{Intent, IntentStatus, REFUND_SUCCEEDED, Refund, WebhookData, WebhookEvent};

/// Readers serve retrieve requests; a few suffice for a simulator.
const READ_CONNECTIONS_MAX: u32 = 4;
const BUSY_TIMEOUT_MS: u64 = 5_000;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS intents (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        amount INTEGER NOT NULL,
        currency TEXT NOT NULL,
        payment_token TEXT NOT NULL,
        metadata TEXT NOT NULL,
        created INTEGER NOT NULL,
        last_payment_error TEXT,
        settle_at_ms INTEGER
    ) STRICT",
    "CREATE INDEX IF NOT EXISTS intents_due ON intents (settle_at_ms)
        WHERE status = 'processing'",
    "CREATE TABLE IF NOT EXISTS idempotency_keys (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        object_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    ) STRICT",
    "CREATE TABLE IF NOT EXISTS refunds (
        id TEXT PRIMARY KEY,
        payment_intent TEXT NOT NULL UNIQUE REFERENCES intents (id),
        amount INTEGER NOT NULL,
        status TEXT NOT NULL,
        created INTEGER NOT NULL
    ) STRICT",
    "CREATE TABLE IF NOT EXISTS webhook_events (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        intent_id TEXT NOT NULL REFERENCES intents (id),
        created INTEGER NOT NULL,
        payload TEXT NOT NULL
    ) STRICT",
    "CREATE TABLE IF NOT EXISTS webhook_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL REFERENCES webhook_events (id),
        signature_timestamp INTEGER,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error TEXT
    ) STRICT",
    "CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (next_attempt_ms)
        WHERE state = 'pending'",
];

const INTENT_COLUMNS: &str =
    "id, status, amount, currency, payment_token, metadata, created, last_payment_error";

const SCOPE_INTENTS: &str = "payment_intents";
const SCOPE_REFUNDS: &str = "refunds";

/// The answer to a create request.
#[derive(Debug)]
pub(crate) enum CreateOutcome {
    Created(Intent),
    /// The key was seen with the same request: the intent it created, as it is now.
    Replayed(Intent),
    /// The key was seen with a different request.
    KeyReused,
}

/// The answer to a cancel request.
#[derive(Debug)]
pub(crate) enum CancelOutcome {
    Canceled(Intent),
    AlreadyCanceled(Intent),
    Refused(Intent),
    NotFound,
}

/// The answer to a refund request.
#[derive(Debug)]
pub(crate) enum RefundOutcome {
    Created(Refund),
    Replayed(Refund),
    KeyReused,
    NotFound,
    /// The intent has not succeeded, so there is nothing to refund.
    NotCaptured(Intent),
    AlreadyRefunded,
    AmountTooLarge {
        captured: i64,
    },
}

/// A pending webhook delivery.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub payload: String,
    pub signature_timestamp: Option<i64>,
    pub attempts: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and its tables.
    pub(crate) async fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&writer).await?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS_MAX)
            .connect_with(options.read_only(true))
            .await
            .with_context(|| format!("opening {} for reading", path.display()))?;
        Ok(Store { writer, reader })
    }

    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Records a new intent unless `idempotency_key` was already used.
    pub(crate) async fn create_intent(
        &self,
        idempotency_key: Option<&str>,
        fingerprint: &str,
        intent: &Intent,
        settle_at_ms: Option<i64>,
        now_ms: i64,
    ) -> anyhow::Result<CreateOutcome> {
        assert_eq!(intent.status, IntentStatus::Processing);
        let mut tx = transactions::begin(&self.writer, None).await?;
        if let Some(key) = idempotency_key {
            if let Some((seen, intent_id)) = find_key(&mut tx, SCOPE_INTENTS, key).await? {
                if seen != fingerprint {
                    return Ok(CreateOutcome::KeyReused);
                }
                let intent = load_intent(&mut tx, &intent_id)
                    .await?
                    .with_context(|| format!("idempotency key {key} names missing {intent_id}"))?;
                return Ok(CreateOutcome::Replayed(intent));
            }
            insert_key(&mut tx, SCOPE_INTENTS, key, fingerprint, &intent.id, now_ms).await?;
        }
        sqlx::query(
            "INSERT INTO intents (id, status, amount, currency, payment_token, metadata,
                created, last_payment_error, settle_at_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
        )
        .bind(&intent.id)
        .bind(intent.status.as_str())
        .bind(intent.amount)
        .bind(&intent.currency)
        .bind(&intent.payment_token)
        .bind(serde_json::to_string(&intent.metadata)?)
        .bind(intent.created)
        .bind(settle_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CreateOutcome::Created(intent.clone()))
    }

    pub(crate) async fn intent(&self, id: &str) -> anyhow::Result<Option<Intent>> {
        let mut conn = self.reader.acquire().await?;
        load_intent(&mut conn, id).await
    }

    /// Applies the cancel rules of [`behaviour::decide_cancel`].
    pub(crate) async fn cancel_intent(
        &self,
        id: &str,
        now_ms: i64,
    ) -> anyhow::Result<CancelOutcome> {
        let mut tx = transactions::begin(&self.writer, None).await?;
        let Some(mut intent) = load_intent(&mut tx, id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        match behaviour::decide_cancel(&intent) {
            CancelDecision::Refuse => Ok(CancelOutcome::Refused(intent)),
            CancelDecision::AlreadyCanceled => Ok(CancelOutcome::AlreadyCanceled(intent)),
            CancelDecision::Cancel => {
                intent.status = IntentStatus::Canceled;
                let updated = sqlx::query(
                    "UPDATE intents SET status = ?, settle_at_ms = NULL
                     WHERE id = ? AND status IN ('processing', 'requires_payment_method')",
                )
                .bind(intent.status.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                assert_eq!(
                    updated, 1,
                    "a cancellable intent changed inside its transaction"
                );
                let event = behaviour::canceled_event(&intent, now_ms.div_euclid(1_000));
                insert_event(&mut tx, &event, now_ms).await?;
                tx.commit().await?;
                Ok(CancelOutcome::Canceled(intent))
            }
        }
    }

    /// Up to `limit` processing intents whose settle time has come, earliest first.
    pub(crate) async fn due_intents(&self, now_ms: i64, limit: u32) -> anyhow::Result<Vec<String>> {
        let ids = sqlx::query_scalar(
            "SELECT id FROM intents
             WHERE status = 'processing' AND settle_at_ms <= ?
             ORDER BY settle_at_ms, id LIMIT ?",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(ids)
    }

    /// The earliest settle time still ahead, if any intent is waiting for one.
    pub(crate) async fn next_settle_ms(&self) -> anyhow::Result<Option<i64>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(settle_at_ms) FROM intents
             WHERE status = 'processing' AND settle_at_ms IS NOT NULL",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(next)
    }

    /// Settles the intent if it is still processing and due, recording its events.
    /// `None` when something else (a cancel) got there first.
    pub(crate) async fn settle(&self, id: &str, now_ms: i64) -> anyhow::Result<Option<Intent>> {
        let mut tx = transactions::begin(&self.writer, None).await?;
        let due: Option<Option<i64>> =
            sqlx::query_scalar("SELECT settle_at_ms FROM intents WHERE id = ? AND status = ?")
                .bind(id)
                .bind(IntentStatus::Processing.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        match due {
            Some(Some(settle_at_ms)) if settle_at_ms <= now_ms => {}
            _ => return Ok(None),
        }
        let intent = load_intent(&mut tx, id)
            .await?
            .with_context(|| format!("{id} vanished inside its transaction"))?;
        let (settled, events) = behaviour::settle(&intent, now_ms.div_euclid(1_000));
        sqlx::query(
            "UPDATE intents SET status = ?, last_payment_error = ?, settle_at_ms = NULL
             WHERE id = ?",
        )
        .bind(settled.status.as_str())
        .bind(
            settled
                .last_payment_error
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        for event in &events {
            insert_event(&mut tx, event, now_ms).await?;
        }
        tx.commit().await?;
        Ok(Some(settled))
    }

    /// Refunds a succeeded intent, once, in full or in part.
    pub(crate) async fn refund(
        &self,
        idempotency_key: Option<&str>,
        fingerprint: &str,
        intent_id: &str,
        amount: Option<i64>,
        now_ms: i64,
    ) -> anyhow::Result<RefundOutcome> {
        let mut tx = transactions::begin(&self.writer, None).await?;
        if let Some(key) = idempotency_key
            && let Some((seen, refund_id)) = find_key(&mut tx, SCOPE_REFUNDS, key).await?
        {
            if seen != fingerprint {
                return Ok(RefundOutcome::KeyReused);
            }
            let refund = load_refund(&mut tx, &refund_id)
                .await?
                .with_context(|| format!("idempotency key {key} names missing {refund_id}"))?;
            return Ok(RefundOutcome::Replayed(refund));
        }
        let Some(intent) = load_intent(&mut tx, intent_id).await? else {
            return Ok(RefundOutcome::NotFound);
        };
        if intent.status != IntentStatus::Succeeded {
            return Ok(RefundOutcome::NotCaptured(intent));
        }
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM refunds WHERE payment_intent = ?")
                .bind(intent_id)
                .fetch_optional(&mut *tx)
                .await?;
        if existing.is_some() {
            return Ok(RefundOutcome::AlreadyRefunded);
        }
        let amount = amount.unwrap_or(intent.amount);
        if amount > intent.amount {
            return Ok(RefundOutcome::AmountTooLarge {
                captured: intent.amount,
            });
        }
        assert!(amount > 0, "the API refuses non-positive refund amounts");
        let refund = Refund {
            id: super::new_id("re"),
            payment_intent: intent_id.to_owned(),
            amount,
            status: REFUND_SUCCEEDED.to_owned(),
        };
        if let Some(key) = idempotency_key {
            insert_key(&mut tx, SCOPE_REFUNDS, key, fingerprint, &refund.id, now_ms).await?;
        }
        sqlx::query(
            "INSERT INTO refunds (id, payment_intent, amount, status, created)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&refund.id)
        .bind(&refund.payment_intent)
        .bind(refund.amount)
        .bind(&refund.status)
        .bind(now_ms.div_euclid(1_000))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RefundOutcome::Created(refund))
    }

    /// The refunds of intent `intent_id`, oldest first; `None` when there is no such
    /// intent.
    pub(crate) async fn refunds_of(&self, intent_id: &str) -> anyhow::Result<Option<Vec<Refund>>> {
        let mut conn = self.reader.acquire().await?;
        // Intents are never deleted, so one that exists here still exists below.
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM intents WHERE id = ?")
            .bind(intent_id)
            .fetch_optional(&mut *conn)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT id, payment_intent, amount, status FROM refunds
             WHERE payment_intent = ? ORDER BY created, id",
        )
        .bind(intent_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(refund_from_row)
            .collect::<anyhow::Result<_>>()
            .map(Some)
    }

    /// Up to `limit` pending deliveries whose time has come, earliest first.
    pub(crate) async fn due_deliveries(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT o.id, o.event_id, e.payload, o.signature_timestamp, o.attempts
             FROM webhook_outbox o JOIN webhook_events e ON e.id = o.event_id
             WHERE o.state = 'pending' AND o.next_attempt_ms <= ?
             ORDER BY o.next_attempt_ms, o.id LIMIT ?",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Delivery {
                    id: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    payload: row.try_get("payload")?,
                    signature_timestamp: row.try_get("signature_timestamp")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// The earliest pending delivery time, if any delivery is pending.
    pub(crate) async fn next_delivery_ms(&self) -> anyhow::Result<Option<i64>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_ms) FROM webhook_outbox WHERE state = 'pending'",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(next)
    }

    pub(crate) async fn delivery_succeeded(&self, id: i64, attempts: i64) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE webhook_outbox SET state = 'delivered', attempts = ?, last_error = NULL
             WHERE id = ?",
        )
        .bind(attempts)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Records a failed attempt; `next_attempt_ms: None` gives the delivery up.
    pub(crate) async fn delivery_failed(
        &self,
        id: i64,
        attempts: i64,
        next_attempt_ms: Option<i64>,
        error: &str,
    ) -> anyhow::Result<()> {
        let (state, next) = match next_attempt_ms {
            Some(next) => ("pending", Some(next)),
            None => ("failed", None),
        };
        sqlx::query(
            "UPDATE webhook_outbox
             SET state = ?, attempts = ?, next_attempt_ms = COALESCE(?, next_attempt_ms),
                 last_error = ?
             WHERE id = ?",
        )
        .bind(state)
        .bind(attempts)
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

async fn find_key(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
) -> anyhow::Result<Option<(String, String)>> {
    let row = sqlx::query(
        "SELECT fingerprint, object_id FROM idempotency_keys WHERE scope = ? AND key = ?",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(|row| Ok((row.try_get("fingerprint")?, row.try_get("object_id")?)))
        .transpose()
}

async fn insert_key(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
    fingerprint: &str,
    object_id: &str,
    now_ms: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, object_id, created_ms)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(scope)
    .bind(key)
    .bind(fingerprint)
    .bind(object_id)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
}

async fn load_intent(conn: &mut SqliteConnection, id: &str) -> anyhow::Result<Option<Intent>> {
    let row = sqlx::query(&format!(
        "SELECT {INTENT_COLUMNS} FROM intents WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(intent_from_row).transpose()
}

fn intent_from_row(row: &SqliteRow) -> anyhow::Result<Intent> {
    let status: String = row.try_get("status")?;
    let metadata: String = row.try_get("metadata")?;
    let last_payment_error: Option<String> = row.try_get("last_payment_error")?;
    Ok(Intent {
        id: row.try_get("id")?,
        status: IntentStatus::parse(&status)
            .with_context(|| format!("unknown intent status {status:?}"))?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        payment_token: row.try_get("payment_token")?,
        metadata: serde_json::from_str(&metadata).context("intent metadata")?,
        created: row.try_get("created")?,
        last_payment_error: last_payment_error
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .context("intent last_payment_error")?,
    })
}

async fn load_refund(conn: &mut SqliteConnection, id: &str) -> anyhow::Result<Option<Refund>> {
    let row = sqlx::query("SELECT id, payment_intent, amount, status FROM refunds WHERE id = ?")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(refund_from_row).transpose()
}

fn refund_from_row(row: &SqliteRow) -> anyhow::Result<Refund> {
    Ok(Refund {
        id: row.try_get("id")?,
        payment_intent: row.try_get("payment_intent")?,
        amount: row.try_get("amount")?,
        status: row.try_get("status")?,
    })
}

/// Records one webhook event and queues its deliveries, inside the caller's transaction
/// so an intent never changes without its event.
async fn insert_event(
    conn: &mut SqliteConnection,
    event: &PlannedEvent,
    now_ms: i64,
) -> anyhow::Result<()> {
    let webhook = WebhookEvent {
        id: super::new_id("evt"),
        r#type: event.event_type.to_owned(),
        created: event.created,
        data: WebhookData {
            object: event.object.clone(),
        },
    };
    sqlx::query(
        "INSERT INTO webhook_events (id, type, intent_id, created, payload)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&webhook.id)
    .bind(&webhook.r#type)
    .bind(&event.object.id)
    .bind(webhook.created)
    .bind(serde_json::to_string(&webhook)?)
    .execute(&mut *conn)
    .await?;
    for delivery in &event.deliveries {
        sqlx::query(
            "INSERT INTO webhook_outbox (event_id, signature_timestamp, state, next_attempt_ms)
             VALUES (?, ?, 'pending', ?)",
        )
        .bind(&webhook.id)
        .bind(delivery.signature_timestamp)
        .bind(now_ms.saturating_add(delivery.delay_ms))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
