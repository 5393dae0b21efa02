//! One short line per event for humans: what happened, to what, by whom it was decided
//! lies in the metadata printed beside it.

use boxoffice_domain::DomainEvent;
use boxoffice_domain::pool::PoolEvent;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::seat::{ReleaseReason, SeatEvent};
use boxoffice_domain::show::{SectionLayout, ShowEvent};
use boxoffice_domain::waitlist::WaitlistEvent;
use chrono::{DateTime, Utc};

fn clock(t: &DateTime<Utc>) -> String {
    t.format("%H:%M:%S").to_string()
}

fn stamp(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn reason(r: ReleaseReason) -> &'static str {
    match r {
        ReleaseReason::Expired => "expired",
        ReleaseReason::Cancelled => "cancelled",
        ReleaseReason::PaymentFailed => "payment_failed",
        ReleaseReason::PaymentTimedOut => "payment_timed_out",
        ReleaseReason::Refunded => "refunded",
    }
}

/// A short human summary of an event's payload.
pub fn summarize(event: &DomainEvent) -> String {
    match event {
        DomainEvent::Show(e) => show(e),
        DomainEvent::Seat(e) => match e {
            SeatEvent::SeatHeld {
                seat_id,
                reservation_id,
                until,
            } => format!("{seat_id} by {reservation_id} until {}", clock(until)),
            SeatEvent::SeatReleased {
                seat_id,
                reservation_id,
                reason: r,
            } => format!("{seat_id} from {reservation_id} ({})", reason(*r)),
            SeatEvent::SeatSold {
                seat_id,
                reservation_id,
                order_id,
            } => format!("{seat_id} to {reservation_id} in {order_id}"),
            SeatEvent::SeatBlocked { seat_id, reason } => format!("{seat_id}: {reason}"),
            SeatEvent::SeatUnblocked { seat_id } => seat_id.clone(),
        },
        DomainEvent::Pool(e) => match e {
            PoolEvent::PoolSeatsHeld {
                section,
                reservation_id,
                quantity,
            } => format!("{quantity} in {section} by {reservation_id}"),
            PoolEvent::PoolSeatsReleased {
                section,
                reservation_id,
                quantity,
                reason: r,
            } => format!(
                "{quantity} in {section} from {reservation_id} ({})",
                reason(*r)
            ),
            PoolEvent::PoolSeatsSold {
                section,
                reservation_id,
                quantity,
            } => format!("{quantity} in {section} to {reservation_id}"),
        },
        DomainEvent::Reservation(e) => reservation(e),
        DomainEvent::Waitlist(e) => match e {
            WaitlistEvent::WaitlistJoined {
                entry_id,
                user_id,
                quantity,
                section,
            } => format!(
                "{entry_id} for {user_id}: {quantity} in {}",
                section.as_deref().unwrap_or("any section")
            ),
            WaitlistEvent::WaitlistOffered {
                entry_id,
                reservation_id,
                seats,
                section,
                quantity,
                expires_at,
            } => {
                let what = if seats.is_empty() {
                    format!("{quantity} in {}", section.as_deref().unwrap_or("?"))
                } else {
                    seats.join(",")
                };
                format!(
                    "{entry_id} offered {what} as {reservation_id} until {}",
                    clock(expires_at)
                )
            }
            WaitlistEvent::WaitlistOfferClaimed {
                entry_id,
                reservation_id,
            } => format!("{entry_id} claimed {reservation_id}"),
            WaitlistEvent::WaitlistOfferExpired {
                entry_id,
                reservation_id,
            } => format!("{entry_id} let {reservation_id} expire"),
            WaitlistEvent::WaitlistLeft { entry_id } => format!("{entry_id} left"),
        },
    }
}

fn show(e: &ShowEvent) -> String {
    match e {
        ShowEvent::ShowScheduled {
            show_id,
            organizer_id,
            definition,
        } => {
            let mut seats = 0u64;
            let mut places = 0u64;
            for s in &definition.sections {
                match &s.layout {
                    SectionLayout::Seated { rows } => {
                        seats += rows.iter().map(|r| u64::from(r.seats)).sum::<u64>()
                    }
                    SectionLayout::GeneralAdmission { capacity, .. } => {
                        places += u64::from(*capacity)
                    }
                }
            }
            format!(
                "{show_id} {:?} at {} by {organizer_id}: {seats} seats, {places} GA places",
                definition.name,
                stamp(&definition.starts_at)
            )
        }
        ShowEvent::ShowRescheduled { starts_at } => format!("now at {}", stamp(starts_at)),
        ShowEvent::ShowRenamed { name } => format!("now {name:?}"),
        ShowEvent::SalesWindowChanged {
            sales_open_at,
            sales_close_at,
        } => format!(
            "sales from {} until {}",
            sales_open_at.as_ref().map_or("scheduling".into(), stamp),
            sales_close_at.as_ref().map_or("the show".into(), stamp)
        ),
        ShowEvent::TierPriceChanged { tier_id, price } => format!("tier {tier_id} now {price}"),
        ShowEvent::ShowCancelled { reason } => format!("cancelled: {reason}"),
    }
}

fn reservation(e: &ReservationEvent) -> String {
    match e {
        ReservationEvent::ReservationPlaced {
            reservation_id,
            user_id,
            seats,
            section,
            quantity,
            expires_at,
            total,
            currency,
            ..
        } => {
            let what = if seats.is_empty() {
                format!("{quantity} in {}", section.as_deref().unwrap_or("?"))
            } else {
                seats.join(",")
            };
            format!(
                "{reservation_id} for {user_id}: {what}, {total} {currency}, until {}",
                clock(expires_at)
            )
        }
        ReservationEvent::PaymentStarted {
            payment_id,
            deadline,
            ..
        } => format!("{payment_id} until {}", clock(deadline)),
        ReservationEvent::PaymentCaptured {
            payment_id, amount, ..
        } => format!("{payment_id} captured {amount}"),
        ReservationEvent::PaymentFailed {
            payment_id, reason, ..
        } => format!("{payment_id} failed: {reason}"),
        ReservationEvent::PaymentTimedOut { payment_id, .. } => format!("{payment_id} voided"),
        ReservationEvent::TicketsIssued {
            order_id, tickets, ..
        } => format!("{order_id} with {} tickets", tickets.len()),
        ReservationEvent::HoldExpired { reservation_id } => format!("{reservation_id} expired"),
        ReservationEvent::ReservationCancelled { reservation_id, by } => {
            format!("{reservation_id} cancelled by {by}")
        }
        ReservationEvent::RefundIssued {
            order_id, amount, ..
        } => format!("{order_id} refunded {amount}"),
    }
}
