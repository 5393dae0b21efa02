//! An independent checker of the payment rules over a show's stored log (EVENTS.md rules
//! 2, 3 and 4), written from the contract rather than from the domain's code.

use std::collections::HashMap;

use boxoffice_domain::ReservationId;
use boxoffice_domain::event::DomainEvent;
use boxoffice_domain::pool::PoolEvent;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::seat::SeatEvent;
use boxoffice_store::RecordedEvent;
use chrono::{DateTime, Utc};

/// One reservation's payment history as the log tells it.
#[derive(Debug, Default, Clone)]
pub struct PaymentTrail {
    pub started: usize,
    pub captured: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub issued: usize,
    pub refunded: usize,
    pub expired: usize,
    pub cancelled: usize,
    pub released: usize,
    pub tickets: usize,
    pub expires_at: Option<DateTime<Utc>>,
    /// Set while a payment is started and neither failed nor voided nor issued.
    pub in_flight: bool,
}

impl PaymentTrail {
    /// The reservation reached an end: tickets, failure, void, expiry or cancellation.
    pub fn settled(&self) -> bool {
        !self.in_flight
            && (self.issued > 0
                || self.failed > 0
                || self.timed_out > 0
                || self.expired > 0
                || self.cancelled > 0)
    }
}

/// What the check found, per reservation.
#[derive(Debug, Default)]
pub struct PaymentReport {
    pub trails: HashMap<ReservationId, PaymentTrail>,
}

impl PaymentReport {
    pub fn count(&self, pick: impl Fn(&PaymentTrail) -> bool) -> usize {
        self.trails.values().filter(|t| pick(t)).count()
    }
}

/// Checks, over one show's log in order:
/// - rule 2: every `PaymentCaptured` is followed by exactly one `TicketsIssued`, and
///   tickets come only after a capture; a reservation is captured at most once (no
///   double charge); the seats of a captured reservation are released only after a
///   `RefundIssued`;
/// - rule 3: no seat of a reservation with a payment in flight is released before its
///   `PaymentFailed` / `PaymentTimedOut`;
/// - when `settled_by` is given (the log was read after the system settled at that
///   time): no payment is still in flight, and no hold is still alive past its
///   `expires_at` (rule 4).
pub fn check_payments(
    log: &[RecordedEvent],
    settled_by: Option<DateTime<Utc>>,
) -> Result<PaymentReport, String> {
    let mut report = PaymentReport::default();
    for r in log {
        let event = DomainEvent::decode(&r.event_type, r.schema_version, &r.payload)
            .map_err(|e| format!("position {}: {e}", r.position))?;
        let at = r.position;
        match event {
            DomainEvent::Reservation(e) => {
                let id = e.reservation_id();
                let t = report.trails.entry(id).or_default();
                match e {
                    ReservationEvent::ReservationPlaced { expires_at, .. } => {
                        t.expires_at = Some(expires_at);
                    }
                    ReservationEvent::PaymentStarted { .. } => {
                        t.started += 1;
                        t.in_flight = true;
                    }
                    ReservationEvent::PaymentCaptured { .. } => {
                        t.captured += 1;
                        if t.captured > 1 {
                            return Err(format!("position {at}: {id} captured twice"));
                        }
                        if !t.in_flight {
                            return Err(format!(
                                "position {at}: {id} captured with no payment in flight"
                            ));
                        }
                    }
                    ReservationEvent::PaymentFailed { .. }
                    | ReservationEvent::PaymentTimedOut { .. } => {
                        if t.captured > 0 {
                            return Err(format!("position {at}: {id} failed after its capture"));
                        }
                        if matches!(e, ReservationEvent::PaymentFailed { .. }) {
                            t.failed += 1;
                        } else {
                            t.timed_out += 1;
                        }
                        t.in_flight = false;
                    }
                    ReservationEvent::TicketsIssued { tickets, .. } => {
                        if t.captured != 1 || t.issued > 0 {
                            return Err(format!(
                                "position {at}: {id} issued tickets (captured {}, issued before {})",
                                t.captured, t.issued
                            ));
                        }
                        t.issued += 1;
                        t.tickets = tickets.len();
                        t.in_flight = false;
                    }
                    ReservationEvent::HoldExpired { .. } => {
                        if t.in_flight {
                            return Err(format!(
                                "position {at}: {id} expired with a payment in flight"
                            ));
                        }
                        t.expired += 1;
                    }
                    ReservationEvent::ReservationCancelled { .. } => {
                        if t.in_flight {
                            return Err(format!(
                                "position {at}: {id} cancelled with a payment in flight"
                            ));
                        }
                        t.cancelled += 1;
                    }
                    ReservationEvent::RefundIssued { .. } => {
                        if t.issued != 1 {
                            return Err(format!("position {at}: {id} refunded without tickets"));
                        }
                        t.refunded += 1;
                    }
                }
            }
            DomainEvent::Seat(SeatEvent::SeatReleased { reservation_id, .. })
            | DomainEvent::Pool(PoolEvent::PoolSeatsReleased { reservation_id, .. }) => {
                let t = report.trails.entry(reservation_id).or_default();
                if t.in_flight {
                    return Err(format!(
                        "position {at}: seats of {reservation_id} released with a payment in flight (rule 3)"
                    ));
                }
                if t.captured > 0 && t.refunded == 0 {
                    return Err(format!(
                        "position {at}: seats of paid {reservation_id} released before a refund (rule 2)"
                    ));
                }
                t.released += 1;
            }
            _ => {}
        }
    }
    for (id, t) in &report.trails {
        if t.captured == 1 && t.issued != 1 && settled_by.is_some() {
            return Err(format!("{id}: captured without tickets (rule 2)"));
        }
    }
    if let Some(now) = settled_by {
        for (id, t) in &report.trails {
            if t.in_flight {
                return Err(format!("{id}: payment still in flight after settling"));
            }
            let held = t.started == 0 && t.expired == 0 && t.cancelled == 0;
            if held && t.expires_at.is_some_and(|e| e < now) {
                return Err(format!("{id}: hold alive past its deadline (rule 4)"));
            }
        }
    }
    Ok(report)
}
