//! The audit log read model: every event of the log, one row each, with the show, stream,
//! version, type, time, actor and correlation id from its envelope and a short readable
//! sentence saying what happened. Rows are written with multi-row INSERTs, one or a few
//! statements per batch.

use async_trait::async_trait;
use boxoffice_domain::DomainEvent;
use boxoffice_domain::pool::PoolEvent;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::seat::{ReleaseReason, SeatEvent};
use boxoffice_domain::show::ShowEvent;
use boxoffice_domain::waitlist::WaitlistEvent;
use boxoffice_store::RecordedEvent;

use crate::db::{Tx, position_param};
use crate::rows::write_rows;
use crate::runtime::{Projection, ProjectionError};

pub const NAME: &str = "audit_log";
pub const VERSION: u32 = 1;

/// Keeps `audit_log`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditLogProjection;

#[async_trait]
impl Projection for AuditLogProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_log"]
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            let decoded =
                DomainEvent::decode(&event.event_type, event.schema_version, &event.payload)
                    .map_err(|e| ProjectionError::Decode {
                        position: event.position,
                        reason: e.to_string(),
                    })?;
            rows.push(vec![
                position_param(event.position),
                event.partition_key.clone().into(),
                event.stream_id.clone().into(),
                position_param(event.version),
                event.event_type.clone().into(),
                event.recorded_at.into(),
                event.metadata.actor.clone().into(),
                event.metadata.correlation_id.to_string().into(),
                summary(&decoded).into(),
            ]);
        }
        write_rows(
            tx,
            "audit_log",
            &[
                "position",
                "show_id",
                "stream_id",
                "version",
                "event_type",
                "recorded_at",
                "actor",
                "correlation_id",
                "summary",
            ],
            rows,
            "",
        )
        .await?;
        Ok(())
    }
}

fn reason_text(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::Expired => "the hold expired",
        ReleaseReason::Cancelled => "the hold was cancelled",
        ReleaseReason::PaymentFailed => "the payment failed",
        ReleaseReason::PaymentTimedOut => "the payment timed out",
        ReleaseReason::Refunded => "the order was refunded",
    }
}

/// One sentence saying what an event means, for people reading the audit log.
pub fn summary(event: &DomainEvent) -> String {
    match event {
        DomainEvent::Show(e) => match e {
            ShowEvent::ShowScheduled { definition, .. } => {
                let seats: u32 = definition.sections.iter().map(|s| s.capacity()).sum();
                format!(
                    "Show \"{}\" scheduled for {} with {} sections and {seats} places.",
                    definition.name,
                    definition.starts_at.to_rfc3339(),
                    definition.sections.len()
                )
            }
            ShowEvent::ShowRescheduled { starts_at } => {
                format!("Show moved to {}.", starts_at.to_rfc3339())
            }
            ShowEvent::ShowRenamed { name } => format!("Show renamed to \"{name}\"."),
            ShowEvent::SalesWindowChanged {
                sales_open_at,
                sales_close_at,
            } => format!(
                "Sales window set to {} – {}.",
                sales_open_at.map_or("open".into(), |t| t.to_rfc3339()),
                sales_close_at.map_or("open".into(), |t| t.to_rfc3339())
            ),
            ShowEvent::TierPriceChanged { tier_id, price } => {
                format!("Price of tier {tier_id} set to {price}.")
            }
            ShowEvent::ShowCancelled { reason } => format!("Show cancelled: {reason}."),
        },
        DomainEvent::Seat(e) => match e {
            SeatEvent::SeatHeld {
                seat_id,
                reservation_id,
                until,
            } => format!(
                "Seat {seat_id} held for reservation {reservation_id} until {}.",
                until.to_rfc3339()
            ),
            SeatEvent::SeatReleased {
                seat_id,
                reservation_id,
                reason,
            } => format!(
                "Seat {seat_id} released from reservation {reservation_id}: {}.",
                reason_text(*reason)
            ),
            SeatEvent::SeatSold {
                seat_id, order_id, ..
            } => format!("Seat {seat_id} sold in order {order_id}."),
            SeatEvent::SeatBlocked { seat_id, reason } => {
                format!("Seat {seat_id} blocked: {reason}.")
            }
            SeatEvent::SeatUnblocked { seat_id } => format!("Seat {seat_id} unblocked."),
        },
        DomainEvent::Pool(e) => match e {
            PoolEvent::PoolSeatsHeld {
                section,
                reservation_id,
                quantity,
            } => format!("{quantity} places in {section} held for reservation {reservation_id}."),
            PoolEvent::PoolSeatsReleased {
                section,
                reservation_id,
                quantity,
                reason,
            } => format!(
                "{quantity} places in {section} released from reservation {reservation_id}: {}.",
                reason_text(*reason)
            ),
            PoolEvent::PoolSeatsSold {
                section,
                reservation_id,
                quantity,
            } => format!("{quantity} places in {section} sold to reservation {reservation_id}."),
        },
        DomainEvent::Reservation(e) => match e {
            ReservationEvent::ReservationPlaced {
                reservation_id,
                user_id,
                seats,
                section,
                quantity,
                total,
                currency,
                ..
            } => {
                let what = match section {
                    Some(section) => format!("{quantity} places in {section}"),
                    None => format!("seats {}", seats.join(", ")),
                };
                format!(
                    "User {user_id} placed reservation {reservation_id} for {what}, {total} {currency}."
                )
            }
            ReservationEvent::PaymentStarted {
                reservation_id,
                payment_id,
                ..
            } => format!("Payment {payment_id} started for reservation {reservation_id}."),
            ReservationEvent::PaymentCaptured {
                reservation_id,
                amount,
                ..
            } => format!("Payment of {amount} captured for reservation {reservation_id}."),
            ReservationEvent::PaymentFailed {
                reservation_id,
                reason,
                ..
            } => format!("Payment for reservation {reservation_id} failed: {reason}."),
            ReservationEvent::PaymentTimedOut { reservation_id, .. } => {
                format!("Payment for reservation {reservation_id} timed out and was voided.")
            }
            ReservationEvent::TicketsIssued {
                reservation_id,
                order_id,
                tickets,
            } => format!(
                "{} tickets issued in order {order_id} for reservation {reservation_id}.",
                tickets.len()
            ),
            ReservationEvent::HoldExpired { reservation_id } => {
                format!("Reservation {reservation_id} expired unpaid.")
            }
            ReservationEvent::ReservationCancelled { reservation_id, by } => {
                format!("Reservation {reservation_id} cancelled by {by}.")
            }
            ReservationEvent::RefundIssued {
                reservation_id,
                order_id,
                amount,
            } => format!(
                "Refund of {amount} issued for order {order_id} (reservation {reservation_id})."
            ),
        },
        DomainEvent::Waitlist(e) => match e {
            WaitlistEvent::WaitlistJoined {
                entry_id,
                user_id,
                quantity,
                ..
            } => format!("User {user_id} joined the waiting list for {quantity} ({entry_id})."),
            WaitlistEvent::WaitlistOffered {
                entry_id,
                reservation_id,
                quantity,
                ..
            } => format!(
                "Waiting-list entry {entry_id} offered {quantity} places as reservation {reservation_id}."
            ),
            WaitlistEvent::WaitlistOfferClaimed { entry_id, .. } => {
                format!("Waiting-list entry {entry_id} claimed its offer.")
            }
            WaitlistEvent::WaitlistOfferExpired { entry_id, .. } => {
                format!("Offer to waiting-list entry {entry_id} expired.")
            }
            WaitlistEvent::WaitlistLeft { entry_id } => {
                format!("Waiting-list entry {entry_id} left the list.")
            }
        },
    }
}
