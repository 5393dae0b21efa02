//! The delivery worker: sends what the notifications projection put in
//! `notification_outbox`, through the channels of a [`NotifyConfig`].
//!
//! The worker polls for due rows (and wakes early when the notifications projection moves
//! on), claims each with a lease (so a second worker, or this one after a crash, leaves it
//! alone until the lease runs out), delivers it, and marks it delivered, or schedules a
//! retry with exponential backoff, or gives up after `attempts_max` attempts or when there
//! is nowhere to deliver to (`failed_at`, with the reason in `last_error`). All of that
//! state is in the table, so a restart loses nothing.
//!
//! Delivery is at least once: a crash between sending and marking the row sends again
//! after the lease. Receivers deduplicate on the notification id (`id` in both the email
//! line and the webhook body, also the `Boxoffice-Notification-Id` header).
//!
//! Channels:
//! - `email_file`: one JSON line per notification appended to a file, as an email would
//!   be sent: `{id, to, subject, text, kind, user_id, created_at, data}`, `to` from the
//!   `users` table. A round's lines are appended with one write, and the file is synced
//!   before their rows are marked delivered.
//! - `webhook`: `POST` of `{id, type, created_at, user_id, data}` as JSON to the user's
//!   own webhook (`notification_webhooks`) or else the configured URL, signed like the
//!   payment provider's webhooks:
//!   `Boxoffice-Signature: t=<unix seconds>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`.
//!   Any 2xx answer is a delivery; anything else, or no answer, is retried. Redirects are
//!   not followed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use boxoffice_domain::Clock;
use boxoffice_store::tables::TablePool;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::db::{self, DbRow, Param, Tx};
use crate::notifications::{NotificationKind, user_webhook};

/// Where notifications go. A channel without its setting is off.
#[derive(Clone, Default)]
pub struct NotifyConfig {
    /// The file emails are appended to, e.g. `{data_dir}/outbox/mail.jsonl`.
    pub email_file: Option<PathBuf>,
    /// The webhook for users without one of their own.
    pub webhook_url: Option<String>,
    /// The key that signs webhooks sent to `webhook_url`.
    pub webhook_secret: Vec<u8>,
}

/// The secret stays out of logs.
impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("email_file", &self.email_file)
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &format_args!("<{} bytes>", self.webhook_secret.len()),
            )
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyConfigError {
    #[error("invalid webhook configuration: {0}")]
    Webhook(String),
    #[error("cannot build the webhook client: {0}")]
    Client(String),
}

impl NotifyConfig {
    pub fn validate(&self) -> Result<(), NotifyConfigError> {
        if let Some(url) = &self.webhook_url {
            crate::notifications::validate_webhook(url, &self.webhook_secret)
                .map_err(|e| NotifyConfigError::Webhook(e.to_string()))?;
        }
        Ok(())
    }
}

/// A delivery channel, as stored in `notification_outbox.channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    EmailFile,
    Webhook,
}

impl Channel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::EmailFile => "email_file",
            Channel::Webhook => "webhook",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "email_file" => Some(Channel::EmailFile),
            "webhook" => Some(Channel::Webhook),
            _ => None,
        }
    }
}

/// Bounds and timings of the delivery worker.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Outbox rows taken per round.
    pub batch_rows_max: usize,
    /// The longest the worker sleeps without looking at the outbox.
    pub poll_interval_ms: u64,
    /// Delay before the second attempt; doubled for each further one.
    pub retry_backoff_ms_min: u64,
    /// The longest delay between attempts.
    pub retry_backoff_ms_max: u64,
    /// Attempts before a delivery is given up (`failed_at`).
    pub attempts_max: u32,
    /// How long a claimed row is left alone by other workers while it is being sent.
    pub lease_ms: u64,
    /// Time limit of one webhook request.
    pub webhook_timeout_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        // 1 s doubling to 1 h: 16 attempts span about 7 hours.
        Self {
            batch_rows_max: 100,
            poll_interval_ms: 1_000,
            retry_backoff_ms_min: 1_000,
            retry_backoff_ms_max: 3_600_000,
            attempts_max: 16,
            lease_ms: 60_000,
            webhook_timeout_ms: 10_000,
        }
    }
}

/// Most outbox rows one round may take.
pub const BATCH_ROWS_MAX: usize = 10_000;
/// Longest error text kept in `last_error`.
const LAST_ERROR_CHARS_MAX: usize = 1_000;
/// Shortest sleep between rounds, so a clock that disagrees with the rows never spins.
const IDLE_SLEEP_MS_MIN: u64 = 10;

impl DeliveryConfig {
    fn check(&self) {
        assert!(
            (1..=BATCH_ROWS_MAX).contains(&self.batch_rows_max),
            "batch_rows_max must be 1..={BATCH_ROWS_MAX}"
        );
        assert!(
            self.poll_interval_ms > 0,
            "poll_interval_ms must be positive"
        );
        assert!(
            0 < self.retry_backoff_ms_min && self.retry_backoff_ms_min <= self.retry_backoff_ms_max,
            "retry backoff bounds must be positive and ordered"
        );
        assert!(self.attempts_max >= 1, "attempts_max must be at least 1");
        assert!(
            self.lease_ms > self.webhook_timeout_ms,
            "a lease must outlast a webhook request"
        );
    }

    /// The delay after `attempts` failed attempts (1 or more).
    fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        let ms = self
            .retry_backoff_ms_min
            .saturating_mul(1_u64 << doublings)
            .min(self.retry_backoff_ms_max);
        Duration::from_millis(ms)
    }
}

/// The `Boxoffice-Signature` header value for a body sent at `unix_seconds`.
pub fn signature_header(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The running worker. Dropping it stops the worker at its next await;
/// [`DeliveryWorker::shutdown`] also waits for it.
pub struct DeliveryWorker {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl DeliveryWorker {
    /// Starts the worker. `wake` (the notifications projector's position) makes it look
    /// at the outbox as soon as new notifications are committed instead of at the next
    /// poll.
    pub fn start(
        pool: TablePool,
        notify: NotifyConfig,
        config: DeliveryConfig,
        clock: Arc<dyn Clock>,
        wake: Option<watch::Receiver<u64>>,
    ) -> Result<Self, NotifyConfigError> {
        let worker = Worker::new(pool, notify, config, clock)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(worker.run(shutdown_rx, wake));
        Ok(Self { shutdown, task })
    }

    /// Stops the worker and waits for it. A round in flight finishes the notification it
    /// is sending, hands the rest of its rows back and records them: a round is never
    /// dropped halfway, because a transaction cancelled in the middle (on SQLite, even in
    /// its `BEGIN`) could go back to the shared pool still open, holding the write lock.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

struct Worker {
    pool: TablePool,
    notify: NotifyConfig,
    config: DeliveryConfig,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
}

/// An outbox row that is due, with its notification.
struct Due {
    notification_id: String,
    channel: String,
    attempts: u32,
    next_attempt_at: DateTime<Utc>,
    user_id: String,
    kind: String,
    created_at: DateTime<Utc>,
    data: Value,
}

impl Due {
    fn decode(row: &DbRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            notification_id: row.text("notification_id")?,
            channel: row.text("channel")?,
            attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
            next_attempt_at: row.time("next_attempt_at")?,
            user_id: row.text("user_id")?,
            kind: row.text("kind")?,
            created_at: row.time("created_at")?,
            data: row.json("data")?,
        })
    }
}

/// Why a delivery did not happen.
enum Failure {
    /// Worth another attempt later.
    Retry(String),
    /// No attempt can succeed (no address, channel switched off).
    GiveUp(String),
}

/// Moves a pending row's due time from `$4` to `$3`: a claim (to the end of its lease)
/// or a hand-back (to its old time), only if no one moved it since.
const MOVE_DUE_SQL: &str = "UPDATE notification_outbox SET next_attempt_at = $3
     WHERE notification_id = $1 AND channel = $2 AND next_attempt_at = $4
       AND delivered_at IS NULL AND failed_at IS NULL";

/// Rows not yet delivered nor given up, whose notification exists. (After a projection
/// reset a row may wait for its notification to be rebuilt.)
const PENDING: &str = "FROM notification_outbox o JOIN notifications n ON n.id = o.notification_id
     WHERE o.delivered_at IS NULL AND o.failed_at IS NULL";

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Resolves when `wake` changes; never, if there is none or its sender is gone.
async fn woken(wake: &mut Option<watch::Receiver<u64>>) {
    match wake {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *wake = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

impl Worker {
    fn new(
        pool: TablePool,
        notify: NotifyConfig,
        config: DeliveryConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NotifyConfigError> {
        config.check();
        notify.validate()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.webhook_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyConfigError::Client(e.to_string()))?;
        Ok(Worker {
            pool,
            notify,
            config,
            clock,
            http,
        })
    }

    async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        mut wake: Option<watch::Receiver<u64>>,
    ) {
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        tracing::info!("notification delivery started");
        loop {
            if let Some(rx) = &mut wake {
                rx.borrow_and_update();
            }
            if *shutdown.borrow() {
                break;
            }
            let round = self.round(&shutdown).await;
            if *shutdown.borrow() {
                break;
            }
            let sleep = match round {
                Ok(taken) if taken >= self.config.batch_rows_max => continue,
                Ok(_) => match self.next_due().await {
                    Ok(Some(next)) => (next - self.clock.now()).to_std().unwrap_or_default(),
                    Ok(None) => poll,
                    Err(e) => {
                        tracing::warn!(error = %e, "notification outbox unreadable");
                        poll
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "notification outbox unreadable; retrying");
                    poll
                }
            };
            let sleep = sleep.clamp(Duration::from_millis(IDLE_SLEEP_MS_MIN), poll);
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break,
                () = woken(&mut wake) => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
        tracing::info!("notification delivery stopped");
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let row = db::fetch_optional(
            &self.pool,
            &format!("SELECT min(o.next_attempt_at) AS next_due {PENDING}"),
            &[],
        )
        .await?;
        match row {
            Some(row) => row.opt_time("next_due"),
            None => Ok(None),
        }
    }

    /// Delivers the rows due now; returns how many it took. The round claims its rows in
    /// one transaction and records what happened to them in another, so an on-sale's
    /// thousands of notifications a second cost two commits per round rather than two
    /// per notification. Delivery stays at least once: a crash before the second commit
    /// sends the round's rows again once their lease has passed.
    async fn round(&self, shutdown: &watch::Receiver<bool>) -> Result<usize, sqlx::Error> {
        let now = self.clock.now();
        let rows = db::fetch_all(
            &self.pool,
            &format!(
                "SELECT o.notification_id, o.channel, o.attempts, o.next_attempt_at,
                        n.user_id, n.kind, n.created_at, n.data
                 {PENDING} AND o.next_attempt_at <= $1
                 ORDER BY o.next_attempt_at, o.notification_id, o.channel LIMIT $2"
            ),
            &[now.into(), (self.config.batch_rows_max as i64).into()],
        )
        .await?;
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            match Due::decode(row) {
                Ok(row) => due.push(row),
                // A row that does not decode would come first again every round and
                // hold up the rows behind it: it is given up instead.
                Err(e) => self.give_up_undecodable(row, e).await?,
            }
        }
        self.send(due, shutdown).await?;
        Ok(rows.len())
    }

    /// Claims the rows of `due`, sends them, and records how each went.
    async fn send(
        &self,
        due: Vec<Due>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), sqlx::Error> {
        let lease_until =
            self.clock.now() + chrono::Duration::milliseconds(self.config.lease_ms as i64);
        let claimed = self.claim(due, lease_until).await?;
        // A row is only sent while its lease has room for a whole webhook request; the
        // rest of a slow round is handed back for the next one.
        let claimed_at = std::time::Instant::now();
        let sending_ms = self.config.lease_ms - self.config.webhook_timeout_ms;
        let mut sent = Vec::with_capacity(claimed.len());
        let mut handed_back = Vec::new();
        let mut emails = Vec::new();
        for due in claimed {
            if claimed_at.elapsed() >= Duration::from_millis(sending_ms) || *shutdown.borrow() {
                handed_back.push(due);
                continue;
            }
            let outcome = match Channel::parse(&due.channel) {
                // Emails go a round at a time, after the loop.
                Some(Channel::EmailFile) => {
                    emails.push(due);
                    continue;
                }
                Some(Channel::Webhook) => self.send_webhook(&due).await,
                None => Err(Failure::GiveUp(format!("unknown channel {}", due.channel))),
            };
            sent.push((due, outcome, self.clock.now()));
        }
        let emailed = self.send_emails(emails).await;
        let now = self.clock.now();
        sent.extend(
            emailed
                .into_iter()
                .map(|(due, outcome)| (due, outcome, now)),
        );
        self.record(sent, handed_back, lease_until).await
    }

    async fn give_up_undecodable(
        &self,
        row: &DbRow,
        error: sqlx::Error,
    ) -> Result<(), sqlx::Error> {
        let id = row.text("notification_id")?;
        let channel = row.text("channel")?;
        tracing::error!(notification = id, channel, %error, "outbox row does not decode; given up");
        db::execute(
            &self.pool,
            "UPDATE notification_outbox SET failed_at = $3, last_error = $4
             WHERE notification_id = $1 AND channel = $2",
            &[
                id.into(),
                channel.into(),
                self.clock.now().into(),
                truncate(format!("undecodable row: {error}")).into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Leases the rows of `due` to this worker until `lease_until`, in one transaction;
    /// the ones another worker claimed since they were read are left out.
    async fn claim(
        &self,
        due: Vec<Due>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Due>, sqlx::Error> {
        if due.is_empty() {
            return Ok(due);
        }
        let mut tx = Tx::begin(&self.pool).await?;
        let mut claimed = Vec::with_capacity(due.len());
        for due in due {
            let rows = tx
                .execute(
                    MOVE_DUE_SQL,
                    &[
                        due.notification_id.clone().into(),
                        due.channel.clone().into(),
                        lease_until.into(),
                        due.next_attempt_at.into(),
                    ],
                )
                .await?;
            if rows == 1 {
                claimed.push(due);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records the outcome of each row sent, and hands the rows not sent back (due again
    /// at their old time, if this worker's lease is still theirs), in one transaction.
    async fn record(
        &self,
        sent: Vec<(Due, Result<(), Failure>, DateTime<Utc>)>,
        handed_back: Vec<Due>,
        lease_until: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        if sent.is_empty() && handed_back.is_empty() {
            return Ok(());
        }
        let mut tx = Tx::begin(&self.pool).await?;
        for (due, outcome, now) in sent {
            let (sql, params) = self.outcome(due, outcome, now);
            tx.execute(sql, &params).await?;
        }
        for due in handed_back {
            tx.execute(
                MOVE_DUE_SQL,
                &[
                    due.notification_id.into(),
                    due.channel.into(),
                    due.next_attempt_at.into(),
                    lease_until.into(),
                ],
            )
            .await?;
        }
        tx.commit().await
    }

    /// The statement that records what one attempt of `due` came to.
    fn outcome(
        &self,
        due: Due,
        outcome: Result<(), Failure>,
        now: DateTime<Utc>,
    ) -> (&'static str, Vec<Param>) {
        let attempts = due.attempts.saturating_add(1);
        let (sql, outcome_params): (&str, Vec<Param>) = match outcome {
            Ok(()) => {
                tracing::debug!(
                    notification = due.notification_id,
                    channel = due.channel,
                    "notification delivered"
                );
                (
                    "UPDATE notification_outbox SET attempts = $3, delivered_at = $4, last_error = NULL
                     WHERE notification_id = $1 AND channel = $2",
                    vec![now.into()],
                )
            }
            Err(Failure::Retry(reason)) if attempts < self.config.attempts_max => {
                let next = now
                    + chrono::Duration::from_std(self.config.backoff(attempts))
                        .expect("backoff is bounded");
                tracing::warn!(
                    notification = due.notification_id,
                    channel = due.channel,
                    attempts,
                    error = reason,
                    "notification delivery failed; will retry"
                );
                (
                    "UPDATE notification_outbox SET attempts = $3, next_attempt_at = $4, last_error = $5
                     WHERE notification_id = $1 AND channel = $2",
                    vec![next.into(), truncate(reason).into()],
                )
            }
            Err(Failure::Retry(reason) | Failure::GiveUp(reason)) => {
                tracing::error!(
                    notification = due.notification_id,
                    channel = due.channel,
                    attempts,
                    error = reason,
                    "notification delivery given up"
                );
                (
                    "UPDATE notification_outbox SET attempts = $3, failed_at = $4, last_error = $5
                     WHERE notification_id = $1 AND channel = $2",
                    vec![now.into(), truncate(reason).into()],
                )
            }
        };
        let mut params: Vec<Param> = vec![
            due.notification_id.into(),
            due.channel.into(),
            i64::from(attempts).into(),
        ];
        params.extend(outcome_params);
        (sql, params)
    }

    /// Sends a round's emails: their recipients' addresses read with one query, their
    /// lines appended to the file with one write and synced once, so a round costs one
    /// query and one `fsync` however many emails it holds (one of each per email had made
    /// the worker fall behind an on-sale's expiring holds). A failure of either retries
    /// every email of the round; a user without an address, or a notification of an
    /// unknown kind, is given up alone.
    async fn send_emails(&self, emails: Vec<Due>) -> Vec<(Due, Result<(), Failure>)> {
        if emails.is_empty() {
            return Vec::new();
        }
        let Some(path) = &self.notify.email_file else {
            let off = || Failure::GiveUp("the email_file channel is not configured".into());
            return emails.into_iter().map(|due| (due, Err(off()))).collect();
        };
        let mut users: Vec<&str> = emails.iter().map(|due| due.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let sql = format!(
            "SELECT user_id, email FROM users WHERE user_id IN ({})",
            db::placeholders_for(db::backend_of(&self.pool), 1, users.len())
        );
        let params: Vec<Param> = users.iter().map(|&user| user.into()).collect();
        let addresses = db::fetch_all(&self.pool, &sql, &params)
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(|row| Ok((row.text("user_id")?, row.text("email")?)))
                    .collect::<Result<std::collections::HashMap<String, String>, sqlx::Error>>()
            });
        let addresses = match addresses {
            Ok(addresses) => addresses,
            Err(e) => {
                let failed = || Failure::Retry(format!("users table: {e}"));
                return emails.into_iter().map(|due| (due, Err(failed()))).collect();
            }
        };
        let mut lines = Vec::new();
        let mut outcomes = Vec::with_capacity(emails.len());
        let mut written = Vec::with_capacity(emails.len());
        for due in emails {
            let Some(kind) = NotificationKind::parse(&due.kind) else {
                let unknown = format!("unknown notification kind {}", due.kind);
                outcomes.push((due, Err(Failure::GiveUp(unknown))));
                continue;
            };
            let Some(to) = addresses.get(&due.user_id) else {
                let none = format!("user {} has no email address on file", due.user_id);
                outcomes.push((due, Err(Failure::GiveUp(none))));
                continue;
            };
            let (subject, text) = email_text(kind, &due.data);
            serde_json::to_writer(
                &mut lines,
                &json!({
                    "id": due.notification_id,
                    "to": to,
                    "subject": subject,
                    "text": text,
                    "kind": kind,
                    "user_id": due.user_id,
                    "created_at": due.created_at,
                    "data": due.data,
                }),
            )
            .expect("JSON values serialize");
            lines.push(b'\n');
            written.push(due);
        }
        if !written.is_empty() {
            let appended = append_lines(path, &lines)
                .await
                .map_err(|e| format!("{}: {e}", path.display()));
            outcomes.extend(written.into_iter().map(|due| {
                let outcome = appended.clone().map_err(Failure::Retry);
                (due, outcome)
            }));
        }
        outcomes
    }

    async fn send_webhook(&self, due: &Due) -> Result<(), Failure> {
        let Some(kind) = NotificationKind::parse(&due.kind) else {
            return Err(Failure::GiveUp(format!(
                "unknown notification kind {}",
                due.kind
            )));
        };
        let own = user_webhook(&self.pool, &due.user_id)
            .await
            .map_err(|e| Failure::Retry(format!("notification_webhooks table: {e}")))?;
        let (url, secret) = match (own, &self.notify.webhook_url) {
            (Some(own), _) => (own.url, own.secret),
            (None, Some(url)) => (url.clone(), self.notify.webhook_secret.clone()),
            (None, None) => {
                return Err(Failure::GiveUp(
                    "no webhook is configured for this user".into(),
                ));
            }
        };
        let body = serde_json::to_vec(&json!({
            "id": due.notification_id,
            "type": kind,
            "created_at": due.created_at,
            "user_id": due.user_id,
            "data": due.data,
        }))
        .expect("JSON values serialize");
        let signature = signature_header(&secret, self.clock.now().timestamp(), &body);
        let response = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Boxoffice-Signature", signature)
            .header("Boxoffice-Notification-Id", &due.notification_id)
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Retry(format!("POST {url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Retry(format!("POST {url}: HTTP {status}")))
        }
    }
}

/// An outbox row that was not delivered (for `boxctl reconcile`).
#[derive(Debug, Clone, PartialEq)]
pub struct Undelivered {
    pub notification_id: String,
    pub channel: String,
    pub user_id: String,
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    /// When a worker gave the delivery up, if it did.
    pub failed_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub data: Value,
}

/// Outbox rows not delivered: given up, or (for a notification made before `before`)
/// due since before `before` with no worker taking them, or failed at least once and
/// still being retried. Oldest first, at most `limit`.
pub async fn undelivered(
    pool: &TablePool,
    before: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Undelivered>, sqlx::Error> {
    let rows = db::fetch_all(
        pool,
        "SELECT o.notification_id, o.channel, o.attempts, o.next_attempt_at, o.failed_at,
                o.last_error, n.user_id, n.kind, n.created_at, n.data
         FROM notification_outbox o JOIN notifications n ON n.id = o.notification_id
         WHERE o.delivered_at IS NULL
           AND (o.failed_at IS NOT NULL
                OR (n.created_at < $1 AND (o.attempts > 0 OR o.next_attempt_at < $1)))
         ORDER BY n.created_at, o.notification_id, o.channel LIMIT $2",
        &[
            before.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Undelivered {
                notification_id: row.text("notification_id")?,
                channel: row.text("channel")?,
                user_id: row.text("user_id")?,
                kind: row.text("kind")?,
                created_at: row.time("created_at")?,
                attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
                next_attempt_at: row.time("next_attempt_at")?,
                failed_at: row.opt_time("failed_at")?,
                last_error: row.opt_text("last_error")?,
                data: row.json("data")?,
            })
        })
        .collect()
}

/// Makes a row that was not delivered due at `now` with a fresh count of attempts, so
/// that a delivery worker (the server's, or [`OneDelivery`]) sends it next. A row
/// delivered meanwhile is left alone; `false` when nothing was re-queued.
pub async fn requeue(
    pool: &TablePool,
    notification_id: &str,
    channel: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let changed = db::execute(
        pool,
        "UPDATE notification_outbox
         SET attempts = 0, next_attempt_at = $3, failed_at = NULL, last_error = NULL
         WHERE notification_id = $1 AND channel = $2 AND delivered_at IS NULL",
        &[notification_id.into(), channel.into(), now.into()],
    )
    .await?;
    Ok(changed == 1)
}

/// Where one outbox row stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowState {
    Delivered,
    /// Not delivered yet; a worker tries again.
    Pending {
        attempts: u32,
        last_error: Option<String>,
    },
    /// A worker gave it up.
    GivenUp {
        last_error: Option<String>,
    },
    /// No such row.
    Missing,
}

/// Where the outbox row of `notification_id` on `channel` stands.
pub async fn row_state(
    pool: &TablePool,
    notification_id: &str,
    channel: &str,
) -> Result<RowState, sqlx::Error> {
    let row = db::fetch_optional(
        pool,
        "SELECT attempts, delivered_at, failed_at, last_error FROM notification_outbox
         WHERE notification_id = $1 AND channel = $2",
        &[notification_id.into(), channel.into()],
    )
    .await?;
    let Some(row) = row else {
        return Ok(RowState::Missing);
    };
    let last_error = row.opt_text("last_error")?;
    Ok(if row.opt_time("delivered_at")?.is_some() {
        RowState::Delivered
    } else if row.opt_time("failed_at")?.is_some() {
        RowState::GivenUp { last_error }
    } else {
        RowState::Pending {
            attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
            last_error,
        }
    })
}

/// Single deliveries outside the worker's loop, through the worker's own code: the row
/// is claimed with a lease (so a running worker leaves it alone), sent on its channel,
/// and its outcome recorded as the worker records it. For `boxctl reconcile --fix`.
pub struct OneDelivery {
    worker: Worker,
}

impl OneDelivery {
    pub fn new(
        pool: TablePool,
        notify: NotifyConfig,
        config: DeliveryConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NotifyConfigError> {
        Ok(Self {
            worker: Worker::new(pool, notify, config, clock)?,
        })
    }

    /// Sends the row of `notification_id` on `channel` if it is due (a row that is not,
    /// or that another worker holds, is left alone) and says where it stands after.
    pub async fn deliver(
        &self,
        notification_id: &str,
        channel: &str,
    ) -> Result<RowState, sqlx::Error> {
        let pool = &self.worker.pool;
        let row = db::fetch_optional(
            pool,
            &format!(
                "SELECT o.notification_id, o.channel, o.attempts, o.next_attempt_at,
                        n.user_id, n.kind, n.created_at, n.data
                 {PENDING} AND o.notification_id = $1 AND o.channel = $2
                   AND o.next_attempt_at <= $3"
            ),
            &[
                notification_id.into(),
                channel.into(),
                self.worker.clock.now().into(),
            ],
        )
        .await?;
        if let Some(row) = row {
            match Due::decode(&row) {
                // Sent here and now, with no worker to stop.
                Ok(due) => {
                    self.worker
                        .send(vec![due], &watch::channel(false).1)
                        .await?
                }
                Err(e) => self.worker.give_up_undecodable(&row, e).await?,
            }
        }
        row_state(pool, notification_id, channel).await
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > LAST_ERROR_CHARS_MAX {
        let mut end = LAST_ERROR_CHARS_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Appends lines and syncs them, so a row is never marked delivered for a line that a
/// crash could still lose.
async fn append_lines(path: &std::path::Path, lines: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    // One write of all the lines: O_APPEND keeps concurrent writers' lines whole (a
    // regular file takes a whole write at once).
    file.write_all(lines).await?;
    file.sync_data().await
}

fn field<'a>(data: &'a Value, name: &str) -> &'a str {
    data.get(name).and_then(Value::as_str).unwrap_or("?")
}

/// Subject and plain-text body of a notification's email.
fn email_text(kind: NotificationKind, data: &Value) -> (String, String) {
    let reservation = field(data, "reservation_id");
    match kind {
        NotificationKind::WaitlistOffer => (
            "Seats from the waiting list are held for you".into(),
            format!(
                "Seats you waited for are held for you until {}. Check out reservation {reservation} before then to get them.",
                field(data, "expires_at")
            ),
        ),
        NotificationKind::OrderConfirmed => (
            "Your tickets".into(),
            format!(
                "Order {} is confirmed: {} ticket(s) issued for reservation {reservation}.",
                field(data, "order_id"),
                data.get("ticket_count")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            ),
        ),
        NotificationKind::OrderRefunded => {
            let amount = data.get("amount").cloned().unwrap_or(Value::Null);
            (
                "Your order was refunded".into(),
                format!(
                    "Order {} (reservation {reservation}) was refunded: {} {}.",
                    field(data, "order_id"),
                    field(&amount, "amount"),
                    field(&amount, "currency")
                ),
            )
        }
        NotificationKind::HoldExpired => {
            let offer = data
                .get("from_waitlist_offer")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let what = if offer {
                "The waiting-list offer"
            } else {
                "Your hold"
            };
            (
                "Your hold expired".into(),
                format!(
                    "{what} (reservation {reservation}) expired before checkout; the seats were released."
                ),
            )
        }
        NotificationKind::PaymentFailed => (
            "Your payment failed".into(),
            format!(
                "The payment for reservation {reservation} failed ({}); the seats were released.",
                field(data, "reason")
            ),
        ),
        NotificationKind::PaymentTimedOut => (
            "Your payment timed out".into(),
            format!(
                "The payment for reservation {reservation} was not confirmed in time and was voided; the seats were released."
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = DeliveryConfig {
            retry_backoff_ms_min: 100,
            retry_backoff_ms_max: 1_000,
            ..DeliveryConfig::default()
        };
        let delays: Vec<u64> = (1..=6)
            .map(|a| config.backoff(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(config.backoff(u32::MAX).as_millis(), 1_000);
    }

    #[test]
    fn the_signature_is_hmac_of_time_dot_body() {
        // RFC 4231 test case 2 key, over "1700000000.{}".
        let header = signature_header(b"Jefe", 1_700_000_000, b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"1700000000.{}");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(header, format!("t=1700000000,v1={expected}"));
    }

    #[test]
    fn every_kind_has_an_email() {
        for kind in NotificationKind::ALL {
            let (subject, text) = email_text(kind, &json!({"reservation_id": "rsv_1"}));
            assert!(!subject.is_empty());
            assert!(text.contains("rsv_1"), "{kind:?}: {text}");
        }
    }

    #[test]
    fn errors_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(LAST_ERROR_CHARS_MAX);
        let cut = truncate(long);
        assert!(cut.len() <= LAST_ERROR_CHARS_MAX);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
