//! Per-user notifications, derived from the log, and the outbox rows that get them
//! delivered (`GET /v1/me/notifications`; delivery is `delivery.rs`).
//!
//! | kind                | caused by          | for the user of                      |
//! |---------------------|--------------------|--------------------------------------|
//! | `waitlist_offer`    | `WaitlistOffered`  | the entry (its `WaitlistJoined`)     |
//! | `order_confirmed`   | `TicketsIssued`    | the reservation (`ReservationPlaced`) |
//! | `order_refunded`    | `RefundIssued`     | the reservation                      |
//! | `hold_expired`      | `HoldExpired`      | the reservation                      |
//! | `payment_failed`    | `PaymentFailed`    | the reservation                      |
//! | `payment_timed_out` | `PaymentTimedOut`  | the reservation                      |
//!
//! A notification's id is `ntf_` + the causing event's `event_id` (simple form), so a
//! replay makes the same ids. In the transaction that inserts a notification the
//! projection also inserts one outbox row per channel that applies to the user: `email_file`
//! when an email file is configured, `webhook` when a global webhook URL is configured or
//! the user has a webhook of their own. Outbox rows are not the projection's: a rebuild
//! (version bump, `boxctl rebuild`) does not shadow them, and the rebuilt notification,
//! having the same id, finds its row already there (`ON CONFLICT DO NOTHING`), so nothing
//! is sent twice because of a rebuild. Which channels apply is decided when the notification is made; a webhook
//! added later does not reach older notifications.

use std::collections::HashSet;

use async_trait::async_trait;
use boxoffice_domain::reservation::{Origin, ReservationEvent};
use boxoffice_domain::waitlist::WaitlistEvent;
use boxoffice_domain::{DomainEvent, UserId};
use boxoffice_store::RecordedEvent;
use boxoffice_store::tables::TablePool;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ViewError;
use crate::cursor::Cursor;
use crate::db::{self, DbRow, Param, Tx, placeholders_for, position_param};
use crate::delivery::{Channel, NotifyConfig};
use crate::orders::show_of;
use crate::rows::{Kind, Record, Rows, Table, rows_per_statement, write_rows};
use crate::runtime::{Projection, ProjectionError, decode_wanted};

pub const NAME: &str = "notifications";
pub const VERSION: u32 = 1;

/// Most notifications one list call returns.
pub const PAGE_LIMIT_MAX: usize = 100;
/// Longest webhook URL a user may set.
pub const WEBHOOK_URL_CHARS_MAX: usize = 2_048;
/// Longest webhook signing secret.
pub const WEBHOOK_SECRET_BYTES_MAX: usize = 256;

const TYPES: [&str; 8] = [
    "WaitlistJoined",
    "ReservationPlaced",
    "WaitlistOffered",
    "TicketsIssued",
    "RefundIssued",
    "HoldExpired",
    "PaymentFailed",
    "PaymentTimedOut",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    WaitlistOffer,
    OrderConfirmed,
    OrderRefunded,
    HoldExpired,
    PaymentFailed,
    PaymentTimedOut,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 6] = [
        NotificationKind::WaitlistOffer,
        NotificationKind::OrderConfirmed,
        NotificationKind::OrderRefunded,
        NotificationKind::HoldExpired,
        NotificationKind::PaymentFailed,
        NotificationKind::PaymentTimedOut,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            NotificationKind::WaitlistOffer => "waitlist_offer",
            NotificationKind::OrderConfirmed => "order_confirmed",
            NotificationKind::OrderRefunded => "order_refunded",
            NotificationKind::HoldExpired => "hold_expired",
            NotificationKind::PaymentFailed => "payment_failed",
            NotificationKind::PaymentTimedOut => "payment_timed_out",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One notification as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// `ntf_` + the causing event's id; receivers deduplicate on it.
    pub id: String,
    pub user_id: UserId,
    pub kind: NotificationKind,
    /// When the causing event was recorded.
    pub created_at: DateTime<Utc>,
    pub data: Value,
}

/// The notification id an event causes.
pub fn notification_id(event: &RecordedEvent) -> String {
    format!("ntf_{}", event.metadata.event_id.simple())
}

/// Keeps `notifications` and its helper tables, and fills the outbox.
#[derive(Debug, Clone)]
pub struct NotificationsProjection {
    email: bool,
    global_webhook: bool,
}

impl NotificationsProjection {
    /// The channels come from the delivery configuration: which are configured decides
    /// which outbox rows a notification gets.
    pub fn new(config: &NotifyConfig) -> Self {
        Self {
            email: config.email_file.is_some(),
            global_webhook: config.webhook_url.is_some(),
        }
    }
}

fn inconsistent(event: &RecordedEvent, reason: impl Into<String>) -> ProjectionError {
    ProjectionError::Inconsistent {
        position: event.position,
        reason: reason.into(),
    }
}

static ENTRIES: Table = Table {
    name: "notifications_waitlist_entries",
    columns: &[
        ("entry_id", Kind::Text),
        ("show_id", Kind::Text),
        ("user_id", Kind::Text),
    ],
    key: 1,
};

static RESERVATIONS: Table = Table {
    name: "notifications_reservations",
    columns: &[
        ("reservation_id", Kind::Text),
        ("show_id", Kind::Text),
        ("user_id", Kind::Text),
        ("currency", Kind::Text),
        ("origin", Kind::Text),
        ("entry_id", Kind::OptText),
    ],
    key: 1,
};

const NOTIFICATION_COLUMNS: [&str; 6] = ["id", "user_id", "kind", "created_at", "data", "position"];
const OUTBOX_COLUMNS: [&str; 4] = ["notification_id", "channel", "attempts", "next_attempt_at"];

/// The rows one batch works on.
struct Batch {
    entries: Rows,
    reservations: Rows,
}

/// A notification an event makes: (event, user, kind, data).
type Made<'e> = (&'e RecordedEvent, String, NotificationKind, Value);

fn origin_str(origin: Origin) -> &'static str {
    match origin {
        Origin::Direct => "direct",
        Origin::Waitlist => "waitlist",
    }
}

#[async_trait]
impl Projection for NotificationsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        // Not notification_outbox (see the module docs) nor notification_webhooks
        // (settings, not derived from the log).
        &[
            "notifications",
            "notifications_reservations",
            "notifications_waitlist_entries",
        ]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&TYPES)
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let mut decoded = Vec::new();
        let (mut entries, mut reservations) = (Vec::new(), Vec::new());
        for event in events {
            let Some(e) = decode_wanted(event, &TYPES)? else {
                continue;
            };
            match &e {
                DomainEvent::Waitlist(
                    WaitlistEvent::WaitlistJoined { entry_id, .. }
                    | WaitlistEvent::WaitlistOffered { entry_id, .. },
                ) => entries.push(vec![entry_id.to_string()]),
                DomainEvent::Reservation(r) => {
                    reservations.push(vec![r.reservation_id().to_string()])
                }
                _ => continue,
            }
            decoded.push((event, e));
        }
        if decoded.is_empty() {
            return Ok(());
        }
        let mut batch = Batch {
            entries: Rows::new(&ENTRIES),
            reservations: Rows::new(&RESERVATIONS),
        };
        batch.entries.load(tx, entries).await?;
        batch.reservations.load(tx, reservations).await?;
        let mut made = Vec::new();
        for (event, e) in decoded {
            if let Some((user_id, kind, data)) = remember(&mut batch, event, e)? {
                made.push((event, user_id, kind, data));
            }
        }
        batch.entries.flush(tx).await?;
        batch.reservations.flush(tx).await?;
        self.notify(tx, made).await
    }
}

/// Records what later events need, and says which notification this event makes.
fn remember(
    batch: &mut Batch,
    event: &RecordedEvent,
    domain_event: DomainEvent,
) -> Result<Option<(String, NotificationKind, Value)>, ProjectionError> {
    let show_id = show_of(event)?.to_string();
    let made = match domain_event {
        DomainEvent::Waitlist(WaitlistEvent::WaitlistJoined {
            entry_id, user_id, ..
        }) => {
            let added = batch.entries.insert(Record::new(
                &ENTRIES,
                vec![
                    entry_id.to_string().into(),
                    show_id.into(),
                    user_id.to_string().into(),
                ],
            ));
            if !added {
                return Err(inconsistent(event, format!("{entry_id} joined twice")));
            }
            None
        }
        DomainEvent::Waitlist(WaitlistEvent::WaitlistOffered {
            entry_id,
            reservation_id,
            seats,
            section,
            quantity,
            expires_at,
        }) => {
            let user_id = batch
                .entries
                .get(&[entry_id.to_string()])
                .ok_or_else(|| {
                    inconsistent(event, format!("offer to {entry_id}, which never joined"))
                })?
                .text("user_id")
                .to_owned();
            let data = json!({
                "show_id": show_id,
                "entry_id": entry_id,
                "reservation_id": reservation_id,
                "seats": seats,
                "section": section,
                "quantity": quantity,
                "expires_at": expires_at,
            });
            Some((user_id, NotificationKind::WaitlistOffer, data))
        }
        DomainEvent::Reservation(e) => reservation_event(batch, event, show_id, e)?,
        _ => None,
    };
    Ok(made)
}

fn reservation_event(
    batch: &mut Batch,
    event: &RecordedEvent,
    show_id: String,
    e: ReservationEvent,
) -> Result<Option<(String, NotificationKind, Value)>, ProjectionError> {
    let reservation_id = e.reservation_id().to_string();
    if let ReservationEvent::ReservationPlaced {
        user_id,
        currency,
        origin,
        entry_id,
        ..
    } = &e
    {
        let added = batch.reservations.insert(Record::new(
            &RESERVATIONS,
            vec![
                reservation_id.clone().into(),
                show_id.into(),
                user_id.to_string().into(),
                currency.clone().into(),
                origin_str(*origin).into(),
                Param::OptText(entry_id.map(|e| e.to_string())),
            ],
        ));
        if !added {
            return Err(inconsistent(
                event,
                format!("{reservation_id} placed twice"),
            ));
        }
        return Ok(None);
    }
    let info = batch
        .reservations
        .get(std::slice::from_ref(&reservation_id))
        .ok_or_else(|| inconsistent(event, format!("{reservation_id} was never placed")))?;
    let origin = info.text("origin");
    let (kind, data) = match e {
        ReservationEvent::TicketsIssued {
            order_id, tickets, ..
        } => (
            NotificationKind::OrderConfirmed,
            json!({
                "show_id": show_id,
                "reservation_id": reservation_id,
                "order_id": order_id,
                "ticket_count": tickets.len(),
            }),
        ),
        ReservationEvent::RefundIssued {
            order_id, amount, ..
        } => (
            NotificationKind::OrderRefunded,
            json!({
                "show_id": show_id,
                "reservation_id": reservation_id,
                "order_id": order_id,
                "amount": {"amount": amount.to_string(), "currency": info.text("currency")},
            }),
        ),
        ReservationEvent::HoldExpired { .. } => (
            NotificationKind::HoldExpired,
            json!({
                "show_id": show_id,
                "reservation_id": reservation_id,
                "origin": origin,
                "from_waitlist_offer": origin == "waitlist",
                "entry_id": info.opt_text("entry_id"),
            }),
        ),
        ReservationEvent::PaymentFailed {
            payment_id, reason, ..
        } => (
            NotificationKind::PaymentFailed,
            json!({
                "show_id": show_id,
                "reservation_id": reservation_id,
                "payment_id": payment_id,
                "reason": reason,
            }),
        ),
        ReservationEvent::PaymentTimedOut { payment_id, .. } => (
            NotificationKind::PaymentTimedOut,
            json!({
                "show_id": show_id,
                "reservation_id": reservation_id,
                "payment_id": payment_id,
            }),
        ),
        _ => return Ok(None),
    };
    Ok(Some((info.text("user_id").to_owned(), kind, data)))
}

impl NotificationsProjection {
    /// Inserts the batch's notifications and their outbox rows.
    async fn notify(&self, tx: &mut Tx, made: Vec<Made<'_>>) -> Result<(), ProjectionError> {
        if made.is_empty() {
            return Ok(());
        }
        // The users, among those notified, with a webhook of their own.
        let mut hooked: HashSet<String> = HashSet::new();
        if !self.global_webhook {
            let mut users: Vec<&str> = made.iter().map(|(_, user, _, _)| user.as_str()).collect();
            users.sort_unstable();
            users.dedup();
            for chunk in users.chunks(rows_per_statement(1)) {
                let rows = tx
                    .fetch_all(
                        &format!(
                            "SELECT user_id FROM notification_webhooks WHERE user_id IN ({})",
                            placeholders_for(tx.backend(), 1, chunk.len())
                        ),
                        &chunk.iter().map(|u| Param::from(*u)).collect::<Vec<_>>(),
                    )
                    .await?;
                for row in rows {
                    hooked.insert(row.text("user_id")?);
                }
            }
        }
        let mut notifications = Vec::with_capacity(made.len());
        let mut outbox = Vec::new();
        for (event, user_id, kind, data) in made {
            let id = notification_id(event);
            let mut channels = Vec::with_capacity(2);
            if self.email {
                channels.push(Channel::EmailFile);
            }
            if self.global_webhook || hooked.contains(&user_id) {
                channels.push(Channel::Webhook);
            }
            for channel in channels {
                // Due at once: the event's time is in the past by the time this commits.
                outbox.push(vec![
                    id.clone().into(),
                    channel.as_str().into(),
                    Param::Int(0),
                    event.recorded_at.into(),
                ]);
            }
            notifications.push(vec![
                id.into(),
                user_id.into(),
                kind.as_str().into(),
                event.recorded_at.into(),
                data.into(),
                position_param(event.position),
            ]);
        }
        write_rows(
            tx,
            "notifications",
            &NOTIFICATION_COLUMNS,
            notifications,
            "",
        )
        .await?;
        write_rows(
            tx,
            "notification_outbox",
            &OUTBOX_COLUMNS,
            outbox,
            "ON CONFLICT (notification_id, channel) DO NOTHING",
        )
        .await?;
        Ok(())
    }
}

/// A user's own webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserWebhook {
    pub url: String,
    pub secret: Vec<u8>,
}

/// Checks a webhook URL and secret before they are stored.
pub fn validate_webhook(url: &str, secret: &[u8]) -> Result<(), ViewError> {
    if url.len() > WEBHOOK_URL_CHARS_MAX {
        return Err(ViewError::Invalid(format!(
            "the webhook URL is longer than {WEBHOOK_URL_CHARS_MAX} characters"
        )));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ViewError::Invalid(format!("the webhook URL does not parse: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ViewError::Invalid(
            "the webhook URL must be http(s) with a host".into(),
        ));
    }
    if secret.is_empty() || secret.len() > WEBHOOK_SECRET_BYTES_MAX {
        return Err(ViewError::Invalid(format!(
            "the webhook secret must be 1 to {WEBHOOK_SECRET_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Reads the notifications read model, and keeps users' webhook settings.
#[derive(Clone)]
pub struct NotificationsView {
    pool: TablePool,
}

fn decode_notification(row: &DbRow) -> Result<(Notification, u64), ViewError> {
    let user_id = row.text("user_id")?;
    let kind = row.text("kind")?;
    let notification = Notification {
        id: row.text("id")?,
        user_id: user_id
            .parse()
            .map_err(|_| ViewError::Corrupt(format!("notification user {user_id:?}")))?,
        kind: NotificationKind::parse(&kind)
            .ok_or_else(|| ViewError::Corrupt(format!("notification kind {kind:?}")))?,
        created_at: row.time("created_at")?,
        data: row.json("data")?,
    };
    Ok((notification, row.position("position")?))
}

impl NotificationsView {
    pub fn new(pool: TablePool) -> Self {
        Self { pool }
    }

    /// A page of a user's notifications, newest first, after the row named by `cursor`,
    /// and the next page's cursor if there is one. `limit` is capped at
    /// [`PAGE_LIMIT_MAX`] (and at least 1).
    pub async fn list(
        &self,
        user_id: UserId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Notification>, Option<String>), ViewError> {
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let mut params: Vec<Param> = vec![user_id.to_string().into()];
        let mut after = String::new();
        if let Some(text) = cursor {
            let cursor = Cursor::decode(text).ok_or(ViewError::InvalidCursor)?;
            params.push(position_param(cursor.position));
            params.push(cursor.id.into());
            after = "AND (position < $2 OR (position = $2 AND id < $3))".into();
        }
        params.push(((limit + 1) as i64).into());
        let sql = format!(
            "SELECT id, user_id, kind, created_at, data, position FROM notifications
             WHERE user_id = $1 {after}
             ORDER BY position DESC, id DESC LIMIT ${}",
            params.len()
        );
        let rows = db::fetch_all(&self.pool, &sql, &params).await?;
        let mut page = Vec::with_capacity(limit);
        let mut next = None;
        for row in rows.iter().take(limit) {
            let (notification, position) = decode_notification(row)?;
            if page.len() + 1 == limit && rows.len() > limit {
                next = Some(
                    Cursor {
                        position,
                        id: notification.id.clone(),
                    }
                    .encode(),
                );
            }
            page.push(notification);
        }
        Ok((page, next))
    }

    /// Sets (or replaces) a user's own webhook, used instead of the global one for
    /// notifications made from now on.
    pub async fn set_user_webhook(
        &self,
        user_id: UserId,
        url: &str,
        secret: &[u8],
    ) -> Result<(), ViewError> {
        validate_webhook(url, secret)?;
        db::execute(
            &self.pool,
            "INSERT INTO notification_webhooks (user_id, url, secret, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE
             SET url = excluded.url, secret = excluded.secret, updated_at = excluded.updated_at",
            &[
                user_id.to_string().into(),
                url.into(),
                secret.to_vec().into(),
                Utc::now().into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn user_webhook(&self, user_id: UserId) -> Result<Option<UserWebhook>, ViewError> {
        Ok(user_webhook(&self.pool, &user_id.to_string()).await?)
    }

    /// Removes a user's webhook; `false` if there was none.
    pub async fn remove_user_webhook(&self, user_id: UserId) -> Result<bool, ViewError> {
        let removed = db::execute(
            &self.pool,
            "DELETE FROM notification_webhooks WHERE user_id = $1",
            &[user_id.to_string().into()],
        )
        .await?;
        Ok(removed > 0)
    }
}

pub(crate) async fn user_webhook(
    pool: &TablePool,
    user_id: &str,
) -> Result<Option<UserWebhook>, sqlx::Error> {
    let row = db::fetch_optional(
        pool,
        "SELECT url, secret FROM notification_webhooks WHERE user_id = $1",
        &[user_id.into()],
    )
    .await?;
    row.map(|r| {
        Ok(UserWebhook {
            url: r.text("url")?,
            secret: r.bytes("secret")?,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in NotificationKind::ALL {
            assert_eq!(NotificationKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                Value::String(kind.as_str().into())
            );
        }
        assert_eq!(NotificationKind::parse("nope"), None);
    }

    #[test]
    fn webhooks_must_be_http_with_a_secret() {
        assert!(validate_webhook("https://example.test/hook", b"s").is_ok());
        assert!(validate_webhook("http://127.0.0.1:9/x", b"s").is_ok());
        assert!(validate_webhook("ftp://example.test/", b"s").is_err());
        assert!(validate_webhook("not a url", b"s").is_err());
        assert!(validate_webhook("https://example.test/", b"").is_err());
        let long = format!("https://example.test/{}", "a".repeat(WEBHOOK_URL_CHARS_MAX));
        assert!(validate_webhook(&long, b"s").is_err());
    }
}
