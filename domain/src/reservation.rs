//! The Reservation aggregate (`reservation-{reservation_id}`): one hold's life, from
//! placement through payment and tickets, or to expiry, cancellation or refund.
//! Rules 2 and 3 (payment implies tickets; no release while a payment is in flight) are
//! decided here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{EntryId, OrderId, PaymentId, ReservationId, TicketId, UserId};
use crate::money::Minor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Direct,
    Waitlist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Held,
    PaymentPending,
    Confirmed,
    Expired,
    Cancelled,
    PaymentFailed,
    Refunded,
}

impl ReservationStatus {
    /// Whether the reservation still has seats (held, paying or bought).
    pub fn has_seats(&self) -> bool {
        matches!(
            self,
            ReservationStatus::Held
                | ReservationStatus::PaymentPending
                | ReservationStatus::Confirmed
        )
    }

    /// Whether the reservation is over for good: no command can change it again (it
    /// expired, was cancelled, its payment failed, or it was refunded).
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            ReservationStatus::Expired
                | ReservationStatus::Cancelled
                | ReservationStatus::PaymentFailed
                | ReservationStatus::Refunded
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Captured,
    Failed,
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: PaymentId,
    pub deadline: DateTime<Utc>,
    pub status: PaymentStatus,
    pub payment_token: Option<String>,
    /// The provider's id of the payment, once captured.
    pub provider_ref: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub ticket_id: TicketId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    /// The unguessable secret a scanner verifies.
    pub code: String,
}

/// What a reservation holds: named seats, or places in a GA section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Items {
    Seats(Vec<String>),
    General { section: String, quantity: u32 },
}

impl Items {
    pub fn quantity(&self) -> u32 {
        match self {
            Items::Seats(seats) => seats.len() as u32,
            Items::General { quantity, .. } => *quantity,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub reservation_id: ReservationId,
    pub user_id: UserId,
    pub items: Items,
    pub placed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub total: Minor,
    pub currency: String,
    pub origin: Origin,
    pub entry_id: Option<EntryId>,
    pub idempotency_key: Option<String>,
    pub status: ReservationStatus,
    pub payment: Option<Payment>,
    pub order_id: Option<OrderId>,
    pub tickets: Vec<Ticket>,
}

impl Reservation {
    /// A payment is in flight: started, and neither failed nor voided. Captured counts:
    /// its seats must stay until the tickets are issued (rule 2).
    pub fn payment_in_flight(&self) -> bool {
        self.status == ReservationStatus::PaymentPending
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ReservationEvent {
    ReservationPlaced {
        reservation_id: ReservationId,
        user_id: UserId,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        seats: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        section: Option<String>,
        quantity: u32,
        placed_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        total: Minor,
        currency: String,
        origin: Origin,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry_id: Option<EntryId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    PaymentStarted {
        reservation_id: ReservationId,
        payment_id: PaymentId,
        deadline: DateTime<Utc>,
        /// The buyer's payment method token, kept so the saga can create the payment
        /// at the provider after a crash between this event and its call. A token
        /// stands for a card at the provider; it is not card data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payment_token: Option<String>,
    },
    PaymentCaptured {
        reservation_id: ReservationId,
        payment_id: PaymentId,
        amount: Minor,
        /// The provider's id of the captured payment (a PaymentIntent id), which a
        /// refund or a reconciliation names.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_ref: Option<String>,
    },
    PaymentFailed {
        reservation_id: ReservationId,
        payment_id: PaymentId,
        reason: String,
    },
    PaymentTimedOut {
        reservation_id: ReservationId,
        payment_id: PaymentId,
    },
    TicketsIssued {
        reservation_id: ReservationId,
        order_id: OrderId,
        tickets: Vec<Ticket>,
    },
    HoldExpired {
        reservation_id: ReservationId,
    },
    ReservationCancelled {
        reservation_id: ReservationId,
        by: String,
    },
    RefundIssued {
        reservation_id: ReservationId,
        order_id: OrderId,
        amount: Minor,
    },
}

impl ReservationEvent {
    pub const TYPES: [&'static str; 9] = [
        "ReservationPlaced",
        "PaymentStarted",
        "PaymentCaptured",
        "PaymentFailed",
        "PaymentTimedOut",
        "TicketsIssued",
        "HoldExpired",
        "ReservationCancelled",
        "RefundIssued",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            ReservationEvent::ReservationPlaced { .. } => "ReservationPlaced",
            ReservationEvent::PaymentStarted { .. } => "PaymentStarted",
            ReservationEvent::PaymentCaptured { .. } => "PaymentCaptured",
            ReservationEvent::PaymentFailed { .. } => "PaymentFailed",
            ReservationEvent::PaymentTimedOut { .. } => "PaymentTimedOut",
            ReservationEvent::TicketsIssued { .. } => "TicketsIssued",
            ReservationEvent::HoldExpired { .. } => "HoldExpired",
            ReservationEvent::ReservationCancelled { .. } => "ReservationCancelled",
            ReservationEvent::RefundIssued { .. } => "RefundIssued",
        }
    }

    pub fn reservation_id(&self) -> ReservationId {
        match self {
            ReservationEvent::ReservationPlaced { reservation_id, .. }
            | ReservationEvent::PaymentStarted { reservation_id, .. }
            | ReservationEvent::PaymentCaptured { reservation_id, .. }
            | ReservationEvent::PaymentFailed { reservation_id, .. }
            | ReservationEvent::PaymentTimedOut { reservation_id, .. }
            | ReservationEvent::TicketsIssued { reservation_id, .. }
            | ReservationEvent::HoldExpired { reservation_id }
            | ReservationEvent::ReservationCancelled { reservation_id, .. }
            | ReservationEvent::RefundIssued { reservation_id, .. } => *reservation_id,
        }
    }
}

/// Commands on an existing reservation. Placing one is decided by the show's booking
/// logic, which checks seats, pools and limits first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationCommand {
    StartPayment {
        payment_id: PaymentId,
        deadline: DateTime<Utc>,
        payment_token: Option<String>,
    },
    CapturePayment {
        payment_id: PaymentId,
        amount: Minor,
        provider_ref: Option<String>,
    },
    FailPayment {
        payment_id: PaymentId,
        reason: String,
    },
    TimeOutPayment {
        payment_id: PaymentId,
    },
    IssueTickets {
        order_id: OrderId,
        tickets: Vec<Ticket>,
    },
    Expire,
    Cancel {
        by: String,
    },
    Refund {
        amount: Minor,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReservationError {
    #[error("the reservation is not held")]
    NotHeld,
    #[error("the hold has expired")]
    HoldExpired,
    #[error("the hold has not expired yet")]
    NotDue,
    #[error("no payment of this id is in flight")]
    NoSuchPayment,
    #[error("the payment was already captured")]
    AlreadyCaptured,
    #[error("the payment has not been captured")]
    NotCaptured,
    #[error("tickets were already issued")]
    AlreadyIssued,
    #[error("the tickets do not match what was held")]
    TicketsMismatch,
    #[error("the reservation is not confirmed")]
    NotConfirmed,
    #[error("the amount does not match the reservation's total")]
    AmountMismatch,
}

/// Decides a command for an existing reservation at `now`.
pub fn decide(
    r: &Reservation,
    command: ReservationCommand,
    now: DateTime<Utc>,
) -> Result<ReservationEvent, ReservationError> {
    let reservation_id = r.reservation_id;
    let pending_payment = |payment_id: PaymentId| match &r.payment {
        Some(p) if p.payment_id == payment_id && r.status == ReservationStatus::PaymentPending => {
            Ok(p)
        }
        _ => Err(ReservationError::NoSuchPayment),
    };
    match command {
        ReservationCommand::StartPayment {
            payment_id,
            deadline,
            payment_token,
        } => {
            if r.status != ReservationStatus::Held {
                return Err(ReservationError::NotHeld);
            }
            if now >= r.expires_at {
                return Err(ReservationError::HoldExpired);
            }
            Ok(ReservationEvent::PaymentStarted {
                reservation_id,
                payment_id,
                deadline,
                payment_token,
            })
        }
        ReservationCommand::CapturePayment {
            payment_id,
            amount,
            provider_ref,
        } => {
            let payment = pending_payment(payment_id)?;
            if payment.status == PaymentStatus::Captured {
                return Err(ReservationError::AlreadyCaptured);
            }
            if amount != r.total {
                return Err(ReservationError::AmountMismatch);
            }
            Ok(ReservationEvent::PaymentCaptured {
                reservation_id,
                payment_id,
                amount,
                provider_ref,
            })
        }
        ReservationCommand::FailPayment { payment_id, reason } => {
            // A captured payment cannot fail afterwards: the buyer paid and gets tickets.
            if pending_payment(payment_id)?.status == PaymentStatus::Captured {
                return Err(ReservationError::AlreadyCaptured);
            }
            Ok(ReservationEvent::PaymentFailed {
                reservation_id,
                payment_id,
                reason,
            })
        }
        ReservationCommand::TimeOutPayment { payment_id } => {
            if pending_payment(payment_id)?.status == PaymentStatus::Captured {
                return Err(ReservationError::AlreadyCaptured);
            }
            Ok(ReservationEvent::PaymentTimedOut {
                reservation_id,
                payment_id,
            })
        }
        ReservationCommand::IssueTickets { order_id, tickets } => {
            if r.status == ReservationStatus::Confirmed {
                return Err(ReservationError::AlreadyIssued);
            }
            match &r.payment {
                Some(p)
                    if p.status == PaymentStatus::Captured
                        && r.status == ReservationStatus::PaymentPending => {}
                _ => return Err(ReservationError::NotCaptured),
            }
            if !tickets_match(&r.items, &tickets) {
                return Err(ReservationError::TicketsMismatch);
            }
            Ok(ReservationEvent::TicketsIssued {
                reservation_id,
                order_id,
                tickets,
            })
        }
        ReservationCommand::Expire => {
            if r.status != ReservationStatus::Held {
                return Err(ReservationError::NotHeld);
            }
            if now < r.expires_at {
                return Err(ReservationError::NotDue);
            }
            Ok(ReservationEvent::HoldExpired { reservation_id })
        }
        ReservationCommand::Cancel { by } => {
            if r.status != ReservationStatus::Held {
                return Err(ReservationError::NotHeld);
            }
            Ok(ReservationEvent::ReservationCancelled { reservation_id, by })
        }
        ReservationCommand::Refund { amount } => {
            if r.status != ReservationStatus::Confirmed {
                return Err(ReservationError::NotConfirmed);
            }
            if amount != r.total {
                return Err(ReservationError::AmountMismatch);
            }
            let order_id = r.order_id.expect("a confirmed reservation has an order");
            Ok(ReservationEvent::RefundIssued {
                reservation_id,
                order_id,
                amount,
            })
        }
    }
}

fn tickets_match(items: &Items, tickets: &[Ticket]) -> bool {
    match items {
        Items::Seats(seats) => {
            tickets.len() == seats.len()
                && seats.iter().all(|s| {
                    tickets
                        .iter()
                        .filter(|t| t.seat.as_deref() == Some(s.as_str()))
                        .count()
                        == 1
                })
        }
        Items::General { section, quantity } => {
            tickets.len() == *quantity as usize
                && tickets
                    .iter()
                    .all(|t| t.section.as_deref() == Some(section) && t.seat.is_none())
        }
    }
}

/// Creates the reservation from its first event.
pub fn place(event: &ReservationEvent) -> Reservation {
    match event {
        ReservationEvent::ReservationPlaced {
            reservation_id,
            user_id,
            seats,
            section,
            quantity,
            placed_at,
            expires_at,
            total,
            currency,
            origin,
            entry_id,
            idempotency_key,
        } => {
            let items = match section {
                Some(section) if seats.is_empty() => Items::General {
                    section: section.clone(),
                    quantity: *quantity,
                },
                _ => {
                    assert_eq!(
                        seats.len(),
                        *quantity as usize,
                        "ReservationPlaced seat count mismatch"
                    );
                    Items::Seats(seats.clone())
                }
            };
            Reservation {
                reservation_id: *reservation_id,
                user_id: *user_id,
                items,
                placed_at: *placed_at,
                expires_at: *expires_at,
                total: *total,
                currency: currency.clone(),
                origin: *origin,
                entry_id: *entry_id,
                idempotency_key: idempotency_key.clone(),
                status: ReservationStatus::Held,
                payment: None,
                order_id: None,
                tickets: Vec::new(),
            }
        }
        other => panic!("{} before ReservationPlaced", other.event_type()),
    }
}

/// A reservation from its stream's events, in version order (`None` for none).
pub fn replay<'e>(events: impl IntoIterator<Item = &'e ReservationEvent>) -> Option<Reservation> {
    let mut events = events.into_iter();
    let mut r = place(events.next()?);
    for e in events {
        apply(&mut r, e);
    }
    Some(r)
}

/// Applies an event to an existing reservation; asserts the transition is one `decide`
/// could have produced.
pub fn apply(r: &mut Reservation, event: &ReservationEvent) {
    use ReservationStatus as S;
    match event {
        ReservationEvent::ReservationPlaced { .. } => {
            panic!("ReservationPlaced twice for {}", r.reservation_id)
        }
        ReservationEvent::PaymentStarted {
            payment_id,
            deadline,
            payment_token,
            ..
        } => {
            assert_eq!(
                r.status,
                S::Held,
                "PaymentStarted on a reservation that is not held"
            );
            r.status = S::PaymentPending;
            r.payment = Some(Payment {
                payment_id: *payment_id,
                deadline: *deadline,
                status: PaymentStatus::Pending,
                payment_token: payment_token.clone(),
                provider_ref: None,
            });
        }
        ReservationEvent::PaymentCaptured {
            payment_id,
            provider_ref,
            ..
        } => {
            let p = r
                .payment
                .as_mut()
                .expect("PaymentCaptured without a payment");
            assert!(
                p.payment_id == *payment_id && p.status == PaymentStatus::Pending,
                "PaymentCaptured out of order"
            );
            p.status = PaymentStatus::Captured;
            p.provider_ref = provider_ref.clone();
        }
        ReservationEvent::PaymentFailed { payment_id, .. }
        | ReservationEvent::PaymentTimedOut { payment_id, .. } => {
            let p = r
                .payment
                .as_mut()
                .expect("payment outcome without a payment");
            assert!(
                p.payment_id == *payment_id && p.status == PaymentStatus::Pending,
                "payment failure out of order"
            );
            let failed = matches!(event, ReservationEvent::PaymentFailed { .. });
            p.status = if failed {
                PaymentStatus::Failed
            } else {
                PaymentStatus::TimedOut
            };
            r.status = if failed { S::PaymentFailed } else { S::Expired };
        }
        ReservationEvent::TicketsIssued {
            order_id, tickets, ..
        } => {
            assert!(
                r.status == S::PaymentPending
                    && r.payment
                        .as_ref()
                        .is_some_and(|p| p.status == PaymentStatus::Captured),
                "TicketsIssued without a captured payment"
            );
            r.status = S::Confirmed;
            r.order_id = Some(*order_id);
            r.tickets = tickets.clone();
        }
        ReservationEvent::HoldExpired { .. } => {
            assert_eq!(
                r.status,
                S::Held,
                "HoldExpired on a reservation that is not held"
            );
            r.status = S::Expired;
        }
        ReservationEvent::ReservationCancelled { .. } => {
            assert_eq!(
                r.status,
                S::Held,
                "ReservationCancelled on a reservation that is not held"
            );
            r.status = S::Cancelled;
        }
        ReservationEvent::RefundIssued { .. } => {
            assert_eq!(
                r.status,
                S::Confirmed,
                "RefundIssued on a reservation that is not confirmed"
            );
            r.status = S::Refunded;
        }
    }
}
