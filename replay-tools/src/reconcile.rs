//! `boxctl reconcile`: finds what the system left half done and, with `--fix`, finishes
//! each piece through the normal write path, for support staff.
//!
//! The scan only reads: the log (replayed per show with the domain's own `apply`), the
//! webhook inbox, the notification outbox and, when a provider is configured, the
//! provider's answers about payments the log names. What it finds:
//!
//! - `captured_without_tickets`: a `PaymentCaptured` with no `TicketsIssued` after it;
//!   or a payment the provider reports succeeded while the log has no capture (its
//!   intent id known from the webhook inbox), also one whose seats were already released.
//! - `payment_stuck`: a `PaymentStarted` still without outcome past its deadline.
//! - `refund_not_recorded`: an order whose payment the provider lists a succeeded refund
//!   of, while the log has no `RefundIssued` for it.
//! - `hold_not_released`: a hold still holding its seats past its `expires_at`.
//! - `notification_undelivered`: an outbox row given up, or not delivered long after it
//!   was due or after failed attempts.
//!
//! Anything younger than the grace period is left to the running server. With `--fix`
//! each finding is resolved by the same code the server runs: payments by the saga's
//! [`PaymentSettler`] (capture and tickets, failure, void at the provider, refund), holds
//! by the engine (`Expire`; the engine expires a due hold itself as soon as it loads the
//! show, which comes first), notifications by the delivery worker's code. Commands go
//! through [`Engine`] with expected versions, so a server running at the same time is
//! safe; no event is written by hand, none edited. What is fixed is no longer found, so
//! a second run finds and does nothing.
//!
//! The scan makes no write call to the provider. Whether an intent was refunded is read
//! from the provider's list of its refunds ([`ProviderClient::list_refunds`]); only a
//! refund that succeeded counts. A payment whose intent the scan does not know is never
//! created at the provider by the scan (that would start a charge); `--fix` looks it up
//! as the saga does.
//!
//! Projection drift is not checked here yet. It would be one more [`Finding`] variant,
//! found by one more scan step in [`run`] and fixed by one more arm in `fix`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;

use boxoffice_commands::{CommandMeta, Engine, EngineConfig};
use boxoffice_domain::reservation::{PaymentStatus, ReservationEvent, ReservationStatus};
use boxoffice_domain::{
    Clock, Command, DomainEvent, OrderId, PaymentId, RandomIds, ReservationId, ShowId, ShowState,
};
use boxoffice_projections::db;
use boxoffice_projections::delivery::{
    self, Channel, DeliveryConfig, NotifyConfig, OneDelivery, RowState,
};
use boxoffice_sagas::provider::{
    EVENT_SUCCEEDED, IntentStatus, ProviderClient, ProviderError, REFUND_SUCCEEDED,
};
use boxoffice_sagas::saga::{PaymentSettler, RefundError, Step};
use boxoffice_store::tables::TablePool;
use boxoffice_store::{EventStore, RecordedEvent};
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::{READ_PAGE_EVENTS, progress, verify};

/// The actor recorded on the events reconcile's commands append.
pub const ACTOR: &str = "system:reconcile";
/// Findings kept at most; a scan that finds more says it stopped there.
pub const FINDINGS_MAX: usize = 10_000;
/// Requests to the provider in flight at once during the scan.
const PROVIDER_CALLS_IN_FLIGHT_MAX: usize = 8;
/// Passes of the saga's settler per payment when fixing: capture and tickets take two,
/// a void three; the rest is room for retries after a failing provider.
const SETTLE_PASSES_MAX: u32 = 8;
/// Webhook inbox rows read per page.
const INBOX_PAGE_ROWS: i64 = 5_000;
/// How long the settler waits before looking again at an unconfirmed void (reported to
/// the saga's code; reconcile itself does not wait).
const SETTLE_POLL_MAX: std::time::Duration = std::time::Duration::from_secs(3);

/// What to look at and whether to fix it.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Resolve what is found.
    pub fix: bool,
    /// What is younger than this is left to the running server.
    pub grace: Duration,
    /// The payment provider; without it the provider is not asked and payments are
    /// not fixed.
    pub provider: Option<ProviderClient>,
    /// The channels reconcile may deliver notifications on itself (the server's
    /// settings). A row on a channel not configured here is re-queued for the server's
    /// delivery worker instead.
    pub notify: NotifyConfig,
    /// Machine output: no progress bars.
    pub json: bool,
    /// Compare every read model with a replay of the log (`projection_drift`).
    pub projections: bool,
}

/// Where a capture was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeenIn {
    /// A `PaymentCaptured` in the log.
    Log,
    /// The provider reports the payment succeeded; the log has no capture.
    Provider,
}

/// One anomaly, with the ids and log positions involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    CapturedWithoutTickets {
        show_id: ShowId,
        reservation_id: ReservationId,
        payment_id: PaymentId,
        seen_in: SeenIn,
        /// The `PaymentStarted`.
        started_position: u64,
        /// The `PaymentCaptured`, when the log has one.
        captured_position: Option<u64>,
        /// The provider's payment, when known.
        intent_id: Option<String>,
        /// The log already released the reservation's seats (its payment failed or was
        /// voided): only a refund at the provider can put it right.
        seats_released: bool,
    },
    PaymentStuck {
        show_id: ShowId,
        reservation_id: ReservationId,
        payment_id: PaymentId,
        started_position: u64,
        deadline: DateTime<Utc>,
        intent_id: Option<String>,
        /// What the provider says, when the scan knew the intent; `--fix` asks anyway.
        provider_status: Option<String>,
    },
    RefundNotRecorded {
        show_id: ShowId,
        reservation_id: ReservationId,
        order_id: OrderId,
        intent_id: String,
        /// The `TicketsIssued` that made the order.
        tickets_position: u64,
    },
    HoldNotReleased {
        show_id: ShowId,
        reservation_id: ReservationId,
        /// The `ReservationPlaced`.
        placed_position: u64,
        expires_at: DateTime<Utc>,
    },
    /// A read model differs from a replay of the log up to its checkpoint.
    ProjectionDrift {
        projection: String,
        /// The checkpoint both sides were compared at.
        position: u64,
        tables: Vec<boxoffice_projections::TableDrift>,
    },
    NotificationUndelivered {
        notification_id: String,
        channel: String,
        user_id: String,
        notification_kind: String,
        reservation_id: Option<String>,
        attempts: u32,
        /// The delivery worker gave it up.
        given_up: bool,
        last_error: Option<String>,
        created_at: DateTime<Utc>,
    },
}

impl Finding {
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::CapturedWithoutTickets { .. } => "captured_without_tickets",
            Finding::PaymentStuck { .. } => "payment_stuck",
            Finding::RefundNotRecorded { .. } => "refund_not_recorded",
            Finding::HoldNotReleased { .. } => "hold_not_released",
            Finding::NotificationUndelivered { .. } => "notification_undelivered",
            Finding::ProjectionDrift { .. } => "projection_drift",
        }
    }

    /// The reservation the finding is about, if any.
    pub fn reservation_id(&self) -> Option<ReservationId> {
        match self {
            Finding::CapturedWithoutTickets { reservation_id, .. }
            | Finding::PaymentStuck { reservation_id, .. }
            | Finding::RefundNotRecorded { reservation_id, .. }
            | Finding::HoldNotReleased { reservation_id, .. } => Some(*reservation_id),
            Finding::NotificationUndelivered { reservation_id, .. } => {
                reservation_id.as_deref().and_then(|r| r.parse().ok())
            }
            Finding::ProjectionDrift { .. } => None,
        }
    }

    /// One readable line.
    pub fn describe(&self) -> String {
        match self {
            Finding::ProjectionDrift {
                projection,
                position,
                tables,
            } => format!(
                "projection {projection} differs from a replay of the log up to position {position}: {}",
                tables
                    .iter()
                    .map(|t| format!(
                        "{} ({} live rows not in the replay, {} replayed rows missing)",
                        t.table, t.live_only, t.replay_only
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Finding::CapturedWithoutTickets {
                show_id,
                reservation_id,
                payment_id,
                seen_in,
                started_position,
                captured_position,
                intent_id,
                seats_released,
            } => {
                let seen = match (seen_in, captured_position) {
                    (SeenIn::Log, Some(p)) => format!("captured at position {p}"),
                    _ => format!(
                        "the provider captured {}",
                        intent_id.as_deref().unwrap_or("it")
                    ),
                };
                let after = if *seats_released {
                    "but the log released its seats (refund due)"
                } else {
                    "no tickets issued"
                };
                format!(
                    "show {show_id} reservation {reservation_id} payment {payment_id} (started at position {started_position}): {seen}, {after}"
                )
            }
            Finding::PaymentStuck {
                show_id,
                reservation_id,
                payment_id,
                started_position,
                deadline,
                provider_status,
                ..
            } => format!(
                "show {show_id} reservation {reservation_id} payment {payment_id} started at position {started_position}, no outcome past its deadline {} (provider: {})",
                deadline.to_rfc3339(),
                provider_status.as_deref().unwrap_or("not asked")
            ),
            Finding::RefundNotRecorded {
                show_id,
                reservation_id,
                order_id,
                intent_id,
                tickets_position,
            } => format!(
                "show {show_id} reservation {reservation_id} order {order_id} (tickets at position {tickets_position}): refunded at the provider ({intent_id}), no RefundIssued"
            ),
            Finding::HoldNotReleased {
                show_id,
                reservation_id,
                placed_position,
                expires_at,
            } => format!(
                "show {show_id} reservation {reservation_id} (placed at position {placed_position}) still holds its seats past {}",
                expires_at.to_rfc3339()
            ),
            Finding::NotificationUndelivered {
                notification_id,
                channel,
                user_id,
                notification_kind,
                reservation_id,
                attempts,
                given_up,
                last_error,
                ..
            } => format!(
                "notification {notification_id} ({notification_kind} for {user_id}{}) on {channel}: {} after {attempts} attempt(s){}",
                reservation_id
                    .as_deref()
                    .map(|r| format!(", reservation {r}"))
                    .unwrap_or_default(),
                if *given_up {
                    "given up"
                } else {
                    "not delivered"
                },
                last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// What `--fix` did about a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Put right: what was done, and the positions of the events appended for it.
    Fixed { action: String, positions: Vec<u64> },
    /// Someone else (the running server) put it right between the scan and the fix.
    AlreadyResolved { state: String },
    /// Still wrong.
    NotFixed { reason: String },
}

/// A finding and, with `--fix`, what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    #[serde(flatten)]
    pub finding: Finding,
    pub fix: Option<Outcome>,
}

impl Item {
    /// Still wrong after this run.
    pub fn remains(&self) -> bool {
        matches!(self.fix, None | Some(Outcome::NotFixed { .. }))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The moment the scan judged the log at.
    pub now: DateTime<Utc>,
    pub events: u64,
    pub shows: usize,
    pub last_position: u64,
    pub provider_checked: bool,
    /// Checks left out because they are not configured (no provider).
    pub skipped: Vec<String>,
    /// Checks that failed (the provider could not tell, a show's log does not replay):
    /// the run is not conclusive about them.
    pub failed_checks: Vec<String>,
    pub items: Vec<Item>,
    /// More than [`FINDINGS_MAX`] findings: the rest were not listed.
    pub truncated: bool,
}

impl Report {
    pub fn remaining(&self) -> usize {
        self.items.iter().filter(|i| i.remains()).count()
    }

    pub fn fixed(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.fix, Some(Outcome::Fixed { .. })))
            .count()
    }

    /// The exit status of `boxctl reconcile`: 1 when anomalies remain, else 2 when a
    /// check failed, else 0.
    pub fn exit_status(&self) -> u8 {
        if self.remaining() > 0 {
            1
        } else if !self.failed_checks.is_empty() {
            2
        } else {
            0
        }
    }

    /// The finding of `kind` about `reservation`, if any (for tests and scripts).
    pub fn find(&self, kind: &str, reservation: ReservationId) -> Option<&Item> {
        self.items
            .iter()
            .find(|i| i.finding.kind() == kind && i.finding.reservation_id() == Some(reservation))
    }

    /// One line per finding, then a summary.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for item in &self.items {
            writeln!(out, "{}  {}", item.finding.kind(), item.finding.describe())?;
            match &item.fix {
                None => {}
                Some(Outcome::Fixed { action, positions }) => {
                    let at = if positions.is_empty() {
                        String::new()
                    } else {
                        let list: Vec<String> = positions.iter().map(u64::to_string).collect();
                        format!(" (positions {})", list.join(", "))
                    };
                    writeln!(out, "  fixed: {action}{at}")?;
                }
                Some(Outcome::AlreadyResolved { state }) => {
                    writeln!(out, "  already resolved: {state}")?;
                }
                Some(Outcome::NotFixed { reason }) => writeln!(out, "  NOT FIXED: {reason}")?,
            }
        }
        for note in &self.skipped {
            writeln!(out, "not checked: {note}")?;
        }
        for note in &self.failed_checks {
            writeln!(out, "CHECK FAILED: {note}")?;
        }
        writeln!(
            out,
            "reconcile: {} finding(s) in {} events of {} show(s) up to position {}{}; {} fixed, {} remaining{}",
            self.items.len(),
            self.events,
            self.shows,
            self.last_position,
            if self.provider_checked {
                ", provider asked"
            } else {
                ", provider not asked"
            },
            self.fixed(),
            self.remaining(),
            if self.truncated {
                " (more not listed)"
            } else {
                ""
            }
        )
    }

    /// One JSON line per finding, then one with `"kind": "summary"`.
    pub fn write_json(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        for item in &self.items {
            serde_json::to_writer(&mut *out, item)?;
            writeln!(out)?;
        }
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({
                "kind": "summary",
                "now": self.now,
                "events": self.events,
                "shows": self.shows,
                "last_position": self.last_position,
                "provider_checked": self.provider_checked,
                "found": self.items.len(),
                "fixed": self.fixed(),
                "remaining": self.remaining(),
                "skipped": self.skipped,
                "failed_checks": self.failed_checks,
                "truncated": self.truncated,
            }),
        )?;
        writeln!(out)?;
        Ok(())
    }
}

/// One reservation's positions in the log.
#[derive(Debug, Default)]
struct Trail {
    /// The reservation stream's version at the scan.
    version: u64,
    placed: u64,
    started: Option<(u64, DateTime<Utc>)>,
    captured: Option<(u64, DateTime<Utc>)>,
    issued: Option<u64>,
}

struct ShowScan {
    state: ShowState,
    /// An event did not decode or the domain refused it: its state is not trusted.
    broken: bool,
    trails: HashMap<ReservationId, Trail>,
}

/// What the log says, per show.
struct LogScan {
    shows: HashMap<ShowId, ShowScan>,
    events: u64,
    last_position: u64,
}

fn feed(scan: &mut LogScan, e: &RecordedEvent) {
    scan.events += 1;
    scan.last_position = scan.last_position.max(e.position);
    let Ok(show_id) = e.partition_key.parse::<ShowId>() else {
        return;
    };
    let show = scan.shows.entry(show_id).or_insert_with(|| ShowScan {
        state: ShowState::new(show_id),
        broken: false,
        trails: HashMap::new(),
    });
    if show.broken {
        return;
    }
    let Ok(event) = DomainEvent::decode(&e.event_type, e.schema_version, &e.payload) else {
        show.broken = true;
        return;
    };
    if let DomainEvent::Reservation(r) = &event {
        let trail = show.trails.entry(r.reservation_id()).or_default();
        trail.version = e.version;
        let at = (e.position, e.recorded_at);
        match r {
            ReservationEvent::ReservationPlaced { .. } => trail.placed = e.position,
            ReservationEvent::PaymentStarted { .. } => trail.started = Some(at),
            ReservationEvent::PaymentCaptured { .. } => trail.captured = Some(at),
            ReservationEvent::TicketsIssued { .. } => trail.issued = Some(e.position),
            _ => {}
        }
    }
    if verify::apply_caught(&mut show.state, &event).is_err() {
        show.broken = true;
    }
}

async fn scan_log(store: &dyn EventStore, json: bool) -> anyhow::Result<LogScan> {
    let head = store.head_position().await?;
    let bar = progress::bar(Some(head), json, "scanning the log");
    let mut scan = LogScan {
        shows: HashMap::new(),
        events: 0,
        last_position: 0,
    };
    let mut after = 0;
    loop {
        let page = store.read_all(after, READ_PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in &page {
            feed(&mut scan, e);
        }
        bar.set_position(after.min(head));
    }
    bar.finish_and_clear();
    Ok(scan)
}

/// A payment in flight with no capture, or one the log failed or voided: the provider
/// may know better.
#[derive(Debug, Clone)]
struct PaymentCandidate {
    show_id: ShowId,
    reservation_id: ReservationId,
    payment_id: PaymentId,
    started_position: u64,
    deadline: DateTime<Utc>,
    /// The log ended the payment (failed or voided) and released the seats.
    ended: bool,
}

#[derive(Debug, Clone)]
struct OrderCandidate {
    show_id: ShowId,
    reservation_id: ReservationId,
    order_id: OrderId,
    intent_id: String,
    tickets_position: u64,
}

/// What the log alone shows, and what to ask the provider about.
#[derive(Default)]
struct FromLog {
    findings: Vec<Finding>,
    payments: Vec<PaymentCandidate>,
    orders: Vec<OrderCandidate>,
    broken_shows: Vec<ShowId>,
}

fn judge_log(scan: &LogScan, now: DateTime<Utc>, grace: Duration) -> FromLog {
    let mut out = FromLog::default();
    let mut shows: Vec<&ShowId> = scan.shows.keys().collect();
    shows.sort();
    for show_id in shows {
        let show = &scan.shows[show_id];
        if show.broken {
            out.broken_shows.push(*show_id);
            continue;
        }
        let mut reservations: Vec<_> = show.state.reservations.values().collect();
        reservations.sort_by_key(|r| r.reservation_id);
        for r in reservations {
            let id = r.reservation_id;
            let trail = show.trails.get(&id);
            let placed_position = trail.map_or(0, |t| t.placed);
            let started = trail.and_then(|t| t.started);
            match (&r.status, &r.payment) {
                (ReservationStatus::Held, _) if r.expires_at + grace < now => {
                    out.findings.push(Finding::HoldNotReleased {
                        show_id: *show_id,
                        reservation_id: id,
                        placed_position,
                        expires_at: r.expires_at,
                    });
                }
                (ReservationStatus::PaymentPending, Some(p))
                    if p.status == PaymentStatus::Captured =>
                {
                    let captured = trail.and_then(|t| t.captured);
                    if captured.is_some_and(|(_, at)| at + grace < now) {
                        out.findings.push(Finding::CapturedWithoutTickets {
                            show_id: *show_id,
                            reservation_id: id,
                            payment_id: p.payment_id,
                            seen_in: SeenIn::Log,
                            started_position: started.map_or(0, |s| s.0),
                            captured_position: captured.map(|c| c.0),
                            intent_id: p.provider_ref.clone(),
                            seats_released: false,
                        });
                    }
                }
                // Younger than the grace: the running saga's business.
                (ReservationStatus::PaymentPending, Some(p))
                    if started.is_some_and(|(_, at)| at + grace < now) =>
                {
                    out.payments.push(PaymentCandidate {
                        show_id: *show_id,
                        reservation_id: id,
                        payment_id: p.payment_id,
                        started_position: started.map_or(0, |s| s.0),
                        deadline: p.deadline,
                        ended: false,
                    });
                }
                (_, Some(p))
                    if matches!(p.status, PaymentStatus::Failed | PaymentStatus::TimedOut) =>
                {
                    out.payments.push(PaymentCandidate {
                        show_id: *show_id,
                        reservation_id: id,
                        payment_id: p.payment_id,
                        started_position: started.map_or(0, |s| s.0),
                        deadline: p.deadline,
                        ended: true,
                    });
                }
                // Paid with tickets and no `RefundIssued` (which makes it `Refunded`):
                // the provider may hold a refund the log missed.
                (ReservationStatus::Confirmed, Some(p)) if r.total.0 > 0 => {
                    if let (Some(intent_id), Some(order_id)) = (p.provider_ref.clone(), r.order_id)
                    {
                        out.orders.push(OrderCandidate {
                            show_id: *show_id,
                            reservation_id: id,
                            order_id,
                            intent_id,
                            tickets_position: trail.and_then(|t| t.issued).unwrap_or(0),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The provider's intents the webhook inbox names for each of `wanted`, each with
/// whether a webhook said it succeeded.
async fn inbox_intents(
    pool: &TablePool,
    wanted: &HashSet<ReservationId>,
) -> anyhow::Result<HashMap<ReservationId, BTreeMap<String, bool>>> {
    let mut found: HashMap<ReservationId, BTreeMap<String, bool>> = HashMap::new();
    let mut after = String::new();
    loop {
        let rows = db::fetch_all(
            pool,
            "SELECT event_id, event_type, intent_id, reservation_id FROM payment_webhooks
             WHERE event_id > $1 ORDER BY event_id LIMIT $2",
            &[after.clone().into(), INBOX_PAGE_ROWS.into()],
        )
        .await?;
        for row in &rows {
            let reservation = row
                .opt_text("reservation_id")?
                .and_then(|r| r.parse::<ReservationId>().ok());
            if let Some(reservation) = reservation.filter(|r| wanted.contains(r)) {
                let succeeded = row.text("event_type")? == EVENT_SUCCEEDED;
                *found
                    .entry(reservation)
                    .or_default()
                    .entry(row.text("intent_id")?)
                    .or_default() |= succeeded;
            }
        }
        if rows.len() < INBOX_PAGE_ROWS as usize {
            return Ok(found);
        }
        after = rows.last().expect("a full page").text("event_id")?;
    }
}

/// Whether the provider holds a succeeded refund of the intent (its list of refunds,
/// a read).
async fn refunded(provider: &ProviderClient, intent_id: &str) -> Result<bool, ProviderError> {
    let refunds = provider.list_refunds(intent_id).await?;
    Ok(refunds
        .iter()
        .any(|r| r.payment_intent == intent_id && r.status == REFUND_SUCCEEDED))
}

/// What the provider says about one candidate: a finding, or why it could not tell.
type Asked = Result<Option<Finding>, String>;

async fn ask_about_payment(
    provider: &ProviderClient,
    c: PaymentCandidate,
    intents: BTreeSet<String>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Asked {
    let mut seen: Option<(String, IntentStatus)> = None;
    for intent_id in intents {
        let intent = match provider.retrieve(&intent_id).await {
            Ok(intent) => intent,
            Err(ProviderError::NotFound) => continue,
            Err(e) => return Err(format!("payment {} ({intent_id}): {e}", c.payment_id)),
        };
        // The inbox is keyed by reservation; the intent names its payment.
        if intent
            .metadata
            .get("payment_id")
            .is_some_and(|p| *p != c.payment_id.to_string())
        {
            continue;
        }
        let succeeded = intent.status == IntentStatus::Succeeded;
        seen = Some((intent.id, intent.status));
        if succeeded {
            break;
        }
    }
    if c.ended {
        let Some((intent_id, IntentStatus::Succeeded)) = seen else {
            return Ok(None);
        };
        return match refunded(provider, &intent_id).await {
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some(Finding::CapturedWithoutTickets {
                show_id: c.show_id,
                reservation_id: c.reservation_id,
                payment_id: c.payment_id,
                seen_in: SeenIn::Provider,
                started_position: c.started_position,
                captured_position: None,
                intent_id: Some(intent_id),
                seats_released: true,
            })),
            Err(e) => Err(format!("refunds of {intent_id}: {e}")),
        };
    }
    match seen {
        Some((intent_id, IntentStatus::Succeeded)) => Ok(Some(Finding::CapturedWithoutTickets {
            show_id: c.show_id,
            reservation_id: c.reservation_id,
            payment_id: c.payment_id,
            seen_in: SeenIn::Provider,
            started_position: c.started_position,
            captured_position: None,
            intent_id: Some(intent_id),
            seats_released: false,
        })),
        seen if c.deadline + grace < now => Ok(Some(stuck(&c, seen))),
        _ => Ok(None),
    }
}

fn stuck(c: &PaymentCandidate, seen: Option<(String, IntentStatus)>) -> Finding {
    let (intent_id, provider_status) = match seen {
        Some((id, status)) => (Some(id), Some(status.as_str().to_owned())),
        None => (None, None),
    };
    Finding::PaymentStuck {
        show_id: c.show_id,
        reservation_id: c.reservation_id,
        payment_id: c.payment_id,
        started_position: c.started_position,
        deadline: c.deadline,
        intent_id,
        provider_status,
    }
}

/// An order the log has not refunded (no `RefundIssued`) is a finding when the
/// provider holds a succeeded refund of its payment.
async fn ask_about_order(provider: &ProviderClient, c: OrderCandidate) -> Asked {
    match refunded(provider, &c.intent_id).await {
        Ok(true) => Ok(Some(Finding::RefundNotRecorded {
            show_id: c.show_id,
            reservation_id: c.reservation_id,
            order_id: c.order_id,
            intent_id: c.intent_id,
            tickets_position: c.tickets_position,
        })),
        Ok(false) => Ok(None),
        Err(e) => Err(format!("order {} ({}): {e}", c.order_id, c.intent_id)),
    }
}

/// Scans for anomalies and, with `config.fix`, resolves them. `clock` is the engine's
/// clock and the moment the scan judges at.
pub async fn run(
    store: Arc<dyn EventStore>,
    tables: TablePool,
    clock: Arc<dyn Clock>,
    config: &ReconcileConfig,
) -> anyhow::Result<Report> {
    let now = clock.now();
    let grace = config.grace;
    let scan = scan_log(store.as_ref(), config.json).await?;
    let from_log = judge_log(&scan, now, grace);
    let mut findings = from_log.findings;
    let mut failed_checks: Vec<String> = from_log
        .broken_shows
        .iter()
        .map(|s| format!("show {s}: its log does not replay (see boxctl verify)"))
        .collect();
    let mut skipped = Vec::new();

    match &config.provider {
        None => {
            // Without the provider, a payment past its deadline is still stuck.
            findings.extend(
                from_log
                    .payments
                    .iter()
                    .filter(|c| !c.ended && c.deadline + grace < now)
                    .map(|c| stuck(c, None)),
            );
            skipped.push(
                "the payment provider (no --provider-url / PAYMENT_PROVIDER_URL): captures and refunds the log does not know of".into(),
            );
        }
        Some(provider) => {
            let wanted: HashSet<ReservationId> =
                from_log.payments.iter().map(|c| c.reservation_id).collect();
            let mut intents = if wanted.is_empty() {
                HashMap::new()
            } else {
                inbox_intents(&tables, &wanted).await?
            };
            let asks = from_log.payments.len() + from_log.orders.len();
            let bar = progress::bar(Some(asks as u64), config.json, "asking the provider");
            let mut calls = Vec::with_capacity(asks);
            for c in from_log.payments {
                let known: BTreeSet<String> = intents
                    .remove(&c.reservation_id)
                    .unwrap_or_default()
                    .into_iter()
                    // A payment the log ended is only worth asking about when a webhook
                    // said it succeeded.
                    .filter(|(_, succeeded)| *succeeded || !c.ended)
                    .map(|(intent, _)| intent)
                    .collect();
                if c.ended && known.is_empty() {
                    bar.inc(1);
                    continue;
                }
                calls.push(futures::future::Either::Left(ask_about_payment(
                    provider, c, known, now, grace,
                )));
            }
            for c in from_log.orders {
                calls.push(futures::future::Either::Right(ask_about_order(provider, c)));
            }
            let mut answers =
                futures::stream::iter(calls).buffer_unordered(PROVIDER_CALLS_IN_FLIGHT_MAX);
            while let Some(answer) = answers.next().await {
                bar.inc(1);
                match answer {
                    Ok(Some(finding)) => findings.push(finding),
                    Ok(None) => {}
                    Err(why) => failed_checks.push(format!("the provider could not tell: {why}")),
                }
            }
            bar.finish_and_clear();
        }
    }

    if config.projections {
        let projections = boxoffice_projections::all_projections(&config.notify);
        let bar = progress::bar(
            Some(projections.len() as u64),
            config.json,
            "comparing read models with a replay",
        );
        for projection in projections {
            match boxoffice_projections::compare_with_replay(
                Arc::clone(&store),
                &tables,
                projection.as_ref(),
                boxoffice_projections::runtime::BATCH_EVENTS_MAX,
            )
            .await
            {
                Ok(report) if report.drifted() => findings.push(Finding::ProjectionDrift {
                    projection: report.name,
                    position: report.position,
                    tables: report.tables,
                }),
                Ok(_) => {}
                Err(e) => failed_checks.push(format!(
                    "projection {} could not be compared with a replay: {e}",
                    projection.name()
                )),
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
    }

    for row in delivery::undelivered(&tables, now - grace, FINDINGS_MAX + 1).await? {
        findings.push(Finding::NotificationUndelivered {
            reservation_id: row
                .data
                .get("reservation_id")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            notification_id: row.notification_id,
            channel: row.channel,
            user_id: row.user_id,
            notification_kind: row.kind,
            attempts: row.attempts,
            given_up: row.failed_at.is_some(),
            last_error: row.last_error,
            created_at: row.created_at,
        });
    }

    // The provider answers in any order; the report reads in a stable one.
    findings.sort_by(|a, b| {
        (a.kind(), a.reservation_id(), a.describe()).cmp(&(
            b.kind(),
            b.reservation_id(),
            b.describe(),
        ))
    });
    let truncated = findings.len() > FINDINGS_MAX;
    findings.truncate(FINDINGS_MAX);
    let mut items: Vec<Item> = findings
        .into_iter()
        .map(|finding| Item { finding, fix: None })
        .collect();
    if config.fix && !items.is_empty() {
        // What a fix appended is read from each stream's version at the scan: fixing one
        // show's first finding loads it into the engine, which may already act on others
        // of its findings (a due hold expires as the show loads).
        let versions = scan
            .shows
            .values()
            .flat_map(|s| s.trails.iter().map(|(id, t)| (*id, t.version)))
            .collect();
        let fixer = Fixer::new(
            Arc::clone(&store),
            tables,
            Arc::clone(&clock),
            versions,
            config,
        )?;
        let bar = progress::bar(Some(items.len() as u64), config.json, "fixing");
        for item in &mut items {
            item.fix = Some(fixer.fix(&item.finding).await);
            bar.inc(1);
        }
        bar.finish_and_clear();
        fixer.engine.shutdown().await;
    }
    Ok(Report {
        now,
        events: scan.events,
        shows: scan.shows.len(),
        last_position: scan.last_position,
        provider_checked: config.provider.is_some(),
        skipped,
        failed_checks,
        items,
        truncated,
    })
}

/// Resolves findings through the engine, the saga's settler and the delivery code.
struct Fixer {
    store: Arc<dyn EventStore>,
    tables: TablePool,
    clock: Arc<dyn Clock>,
    /// Each reservation stream's version at the scan.
    versions: HashMap<ReservationId, u64>,
    engine: Arc<Engine>,
    settler: Option<PaymentSettler>,
    notify: NotifyConfig,
    delivery: Option<OneDelivery>,
}

impl Fixer {
    fn new(
        store: Arc<dyn EventStore>,
        tables: TablePool,
        clock: Arc<dyn Clock>,
        versions: HashMap<ReservationId, u64>,
        config: &ReconcileConfig,
    ) -> anyhow::Result<Self> {
        // Built as the server builds it. Shows are loaded on first use, so only those
        // with something to fix are.
        let engine = Engine::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::new(RandomIds),
            EngineConfig::default(),
        );
        let settler = config.provider.clone().map(|provider| {
            PaymentSettler::new(Arc::clone(&engine), provider, ACTOR, SETTLE_POLL_MAX)
        });
        let channels = config.notify.email_file.is_some() || config.notify.webhook_url.is_some();
        let delivery = if channels {
            Some(OneDelivery::new(
                tables.clone(),
                config.notify.clone(),
                DeliveryConfig::default(),
                Arc::clone(&clock),
            )?)
        } else {
            None
        };
        Ok(Self {
            store,
            tables,
            clock,
            versions,
            engine,
            settler,
            notify: config.notify.clone(),
            delivery,
        })
    }

    async fn fix(&self, finding: &Finding) -> Outcome {
        let done = match finding {
            Finding::CapturedWithoutTickets {
                payment_id,
                intent_id: Some(intent_id),
                seats_released: true,
                ..
            } => self.refund_orphan(*payment_id, intent_id).await,
            Finding::CapturedWithoutTickets {
                show_id,
                reservation_id,
                ..
            }
            | Finding::PaymentStuck {
                show_id,
                reservation_id,
                ..
            } => self.settle(*show_id, *reservation_id).await,
            Finding::RefundNotRecorded {
                show_id,
                reservation_id,
                ..
            } => self.record_refund(*show_id, *reservation_id).await,
            Finding::HoldNotReleased {
                show_id,
                reservation_id,
                ..
            } => self.expire(*show_id, *reservation_id).await,
            Finding::NotificationUndelivered {
                notification_id,
                channel,
                ..
            } => self.redeliver(notification_id, channel).await,
            Finding::ProjectionDrift { projection, .. } => self.rebuild(projection).await,
        };
        done.unwrap_or_else(|e| Outcome::NotFixed {
            reason: format!("{e:#}"),
        })
    }

    /// Rebuilds a drifted read model from the log (beside the live one, swapped in when
    /// caught up): a projection's rows are derived data, so this is its normal repair.
    async fn rebuild(&self, name: &str) -> anyhow::Result<Outcome> {
        let projections = boxoffice_projections::all_projections(&self.notify);
        let projection = projections
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| anyhow::anyhow!("no projection {name}"))?;
        let report = boxoffice_projections::rebuild_projection(
            Arc::clone(&self.store),
            &self.tables,
            projection.as_ref(),
            boxoffice_projections::runtime::BATCH_EVENTS_MAX,
        )
        .await?;
        Ok(Outcome::Fixed {
            action: format!(
                "rebuilt {name} from the log ({} events, to position {})",
                report.events, report.position
            ),
            positions: Vec::new(),
        })
    }

    fn no_provider() -> Outcome {
        Outcome::NotFixed {
            reason: "fixing a payment needs the payment provider (--provider-url / PAYMENT_PROVIDER_URL)".into(),
        }
    }

    /// The reservation stream's version at the scan.
    fn version(&self, reservation: ReservationId) -> u64 {
        self.versions.get(&reservation).copied().unwrap_or(0)
    }

    /// The reservation's events after `version`.
    async fn since(
        &self,
        reservation: ReservationId,
        version: u64,
    ) -> anyhow::Result<Vec<RecordedEvent>> {
        Ok(self
            .store
            .read_stream(&format!("reservation-{reservation}"), version)
            .await?)
    }

    /// What the appended events did, and where.
    fn appended(events: &[RecordedEvent]) -> Outcome {
        let types: Vec<String> = events
            .iter()
            .map(|e| format!("{} by {}", e.event_type, e.metadata.actor))
            .collect();
        Outcome::Fixed {
            action: format!("appended {}", types.join(", ")),
            positions: events.iter().map(|e| e.position).collect(),
        }
    }

    /// Settles a payment exactly as the saga would now (see [`PaymentSettler`]).
    async fn settle(&self, show: ShowId, reservation: ReservationId) -> anyhow::Result<Outcome> {
        let Some(settler) = &self.settler else {
            return Ok(Self::no_provider());
        };
        let before = self.version(reservation);
        let settled = settler
            .settle_now(show, reservation, SETTLE_PASSES_MAX)
            .await?;
        let events = self.since(reservation, before).await?;
        let ours: Vec<RecordedEvent> = events
            .into_iter()
            .filter(|e| e.metadata.actor == ACTOR)
            .collect();
        let Some(r) = settled.reservation else {
            return Ok(Outcome::NotFixed {
                reason: "the engine does not know the reservation".into(),
            });
        };
        if r.status == ReservationStatus::PaymentPending {
            let reason = match settled.last {
                Step::Wait(_) => {
                    "the provider has not decided yet (still processing, or the void is not confirmed); run again later"
                }
                Step::Retry | Step::Again => {
                    "the provider or the store kept failing; run again later"
                }
                Step::Stop => {
                    "the saga's settler stopped (e.g. a capture of another amount, logged by the settler): a human must look"
                }
            };
            let mut reason = reason.to_owned();
            if !ours.is_empty() {
                reason.push_str(&format!(
                    " (appended {} at positions {:?})",
                    ours.iter()
                        .map(|e| e.event_type.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    ours.iter().map(|e| e.position).collect::<Vec<_>>()
                ));
            }
            return Ok(Outcome::NotFixed { reason });
        }
        if ours.is_empty() {
            return Ok(Outcome::AlreadyResolved {
                state: format!("the reservation is {:?}", r.status),
            });
        }
        let mut outcome = Self::appended(&ours);
        if let (Outcome::Fixed { action, .. }, Some(order)) = (&mut outcome, r.order_id) {
            action.push_str(&format!(" (order {order})"));
        }
        Ok(outcome)
    }

    /// Appends `RefundIssued` for an order the provider refunded, through the saga's
    /// refund (idempotent at the provider: the same key finds the same refund).
    async fn record_refund(
        &self,
        show: ShowId,
        reservation: ReservationId,
    ) -> anyhow::Result<Outcome> {
        let Some(settler) = &self.settler else {
            return Ok(Self::no_provider());
        };
        let before = self.version(reservation);
        let refunded = settler.refund(show, reservation, ACTOR).await;
        let ours: Vec<RecordedEvent> = self
            .since(reservation, before)
            .await?
            .into_iter()
            .filter(|e| e.metadata.actor == ACTOR)
            .collect();
        Ok(match refunded {
            Ok(r) if r.status == ReservationStatus::Refunded && !ours.is_empty() => {
                Self::appended(&ours)
            }
            Ok(r) => Outcome::AlreadyResolved {
                state: format!("the reservation is {:?}", r.status),
            },
            Err(RefundError::NotPaid) => Outcome::AlreadyResolved {
                state: "the reservation has no paid order any more".into(),
            },
            Err(e) => Outcome::NotFixed {
                reason: e.to_string(),
            },
        })
    }

    /// Refunds, at the provider, a payment captured after the log released its seats.
    async fn refund_orphan(&self, payment: PaymentId, intent_id: &str) -> anyhow::Result<Outcome> {
        let Some(settler) = &self.settler else {
            return Ok(Self::no_provider());
        };
        let key = format!("refund-{payment}");
        Ok(
            match settler.provider().refund(intent_id, None, &key).await {
                Ok(refund) => Outcome::Fixed {
                    action: format!(
                        "refunded {} at the provider ({}, key {key}): it was captured after the log released its seats",
                        refund.amount, refund.id
                    ),
                    positions: Vec::new(),
                },
                Err(ProviderError::Rejected { code, .. }) if code == "charge_already_refunded" => {
                    Outcome::AlreadyResolved {
                        state: "refunded at the provider".into(),
                    }
                }
                Err(e) => Outcome::NotFixed {
                    reason: format!("the provider did not refund: {e}"),
                },
            },
        )
    }

    /// Expires a hold past its time. Loading the show into the engine expires every due
    /// hold first (its timers, rule 4), so `Expire` mostly finds it done by then.
    async fn expire(&self, show: ShowId, reservation: ReservationId) -> anyhow::Result<Outcome> {
        let before = self.version(reservation);
        let sent = self
            .engine
            .execute(
                show,
                Command::Expire {
                    reservation_id: reservation,
                },
                CommandMeta::new(ACTOR),
            )
            .await;
        let events = self.since(reservation, before).await?;
        let expired: Vec<RecordedEvent> = events
            .into_iter()
            .filter(|e| e.event_type == "HoldExpired")
            .collect();
        if !expired.is_empty() {
            return Ok(Self::appended(&expired));
        }
        let status = self
            .engine
            .reservation(show, reservation)
            .await?
            .map(|r| r.status);
        Ok(match status {
            Some(ReservationStatus::Held) | None => Outcome::NotFixed {
                reason: match sent {
                    Err(e) => format!("the engine refused to expire it: {e}"),
                    Ok(_) => "the engine did not expire the hold".into(),
                },
            },
            Some(status) => Outcome::AlreadyResolved {
                state: format!("the reservation is {status:?}"),
            },
        })
    }

    /// Makes an undelivered notification due again and, on a channel configured here,
    /// delivers it now with the delivery worker's code.
    async fn redeliver(&self, notification_id: &str, channel: &str) -> anyhow::Result<Outcome> {
        let now = self.clock.now();
        if !delivery::requeue(&self.tables, notification_id, channel, now).await? {
            return Ok(
                match delivery::row_state(&self.tables, notification_id, channel).await? {
                    RowState::Delivered => Outcome::AlreadyResolved {
                        state: "delivered".into(),
                    },
                    state => Outcome::NotFixed {
                        reason: format!("could not re-queue it ({state:?})"),
                    },
                },
            );
        }
        let here = match Channel::parse(channel) {
            Some(Channel::EmailFile) => self.notify.email_file.is_some(),
            Some(Channel::Webhook) => self.notify.webhook_url.is_some(),
            None => false,
        };
        let Some(delivery) = self.delivery.as_ref().filter(|_| here) else {
            return Ok(Outcome::Fixed {
                action: "re-queued for the server's delivery worker".into(),
                positions: Vec::new(),
            });
        };
        Ok(match delivery.deliver(notification_id, channel).await? {
            RowState::Delivered => Outcome::Fixed {
                action: format!("re-queued and delivered on {channel}"),
                positions: Vec::new(),
            },
            RowState::Pending { last_error, .. } => Outcome::NotFixed {
                reason: format!(
                    "re-queued, but delivering it failed again ({}); the delivery worker retries",
                    last_error.unwrap_or_default()
                ),
            },
            RowState::GivenUp { last_error } => Outcome::NotFixed {
                reason: format!(
                    "re-queued, but delivering it was given up again: {}",
                    last_error.unwrap_or_default()
                ),
            },
            RowState::Missing => Outcome::NotFixed {
                reason: "the outbox row is gone".into(),
            },
        })
    }
}
