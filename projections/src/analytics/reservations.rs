//! The reservations read model: one row per reservation, from `ReservationPlaced` through
//! payment to its end (confirmed, refunded, expired, cancelled, payment failed or timed
//! out). `seconds_to_checkout` (placing to capture) is kept per row so SQL can take any
//! average or percentile of it; the `hold_funnel` and `v_hold_conversion` views count the
//! outcomes per show.

use async_trait::async_trait;
use boxoffice_domain::DomainEvent;
use boxoffice_domain::reservation::{Origin, ReservationEvent};
use boxoffice_store::RecordedEvent;

use super::inconsistent;
use crate::db::{Param, Tx, position_param};
use crate::orders::show_of;
use crate::rows::{Kind, Record, Rows, Table};
use crate::runtime::{Projection, ProjectionError, decode_wanted};

pub const NAME: &str = "reservations";
pub const VERSION: u32 = 1;

/// Keeps `reservations`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReservationsProjection;

static RESERVATIONS: Table = Table {
    name: "reservations",
    columns: &[
        ("reservation_id", Kind::Text),
        ("show_id", Kind::Text),
        ("user_id", Kind::Text),
        ("origin", Kind::Text),
        ("status", Kind::Text),
        ("quantity", Kind::Int),
        ("seats", Kind::OptText),
        ("section", Kind::OptText),
        ("total_minor", Kind::Int),
        ("currency", Kind::Text),
        ("placed_at", Kind::Time),
        ("expires_at", Kind::Time),
        ("payment_started_at", Kind::OptTime),
        ("paid_at", Kind::OptTime),
        ("seconds_to_checkout", Kind::OptInt),
        ("confirmed_at", Kind::OptTime),
        ("order_id", Kind::OptText),
        ("closed_at", Kind::OptTime),
        ("close_reason", Kind::OptText),
        ("position", Kind::Int),
    ],
    key: 1,
};

#[async_trait]
impl Projection for ReservationsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        &["reservations"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&ReservationEvent::TYPES)
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let mut decoded = Vec::new();
        for event in events {
            if let Some(DomainEvent::Reservation(e)) =
                decode_wanted(event, &ReservationEvent::TYPES)?
            {
                decoded.push((event, e));
            }
        }
        if decoded.is_empty() {
            return Ok(());
        }
        let mut rows = Rows::new(&RESERVATIONS);
        rows.load(
            tx,
            decoded
                .iter()
                .map(|(_, e)| vec![e.reservation_id().to_string()]),
        )
        .await?;
        for (event, e) in decoded {
            apply_one(&mut rows, event, e)?;
        }
        rows.flush(tx).await?;
        Ok(())
    }
}

/// The reservation's row, if it is in `from` (and `also` holds of it).
fn row_in<'r>(
    rows: &'r mut Rows,
    event: &RecordedEvent,
    reservation: &str,
    from: &str,
    also: impl FnOnce(&Record) -> bool,
    what: impl FnOnce() -> String,
) -> Result<&'r mut Record, ProjectionError> {
    match rows.get_mut(&[reservation.to_owned()]) {
        Some(row) if row.text("status") == from && also(row) => Ok(row),
        _ => Err(inconsistent(event, what())),
    }
}

/// Ends a reservation that is in `from` with `status`.
fn close(
    rows: &mut Rows,
    event: &RecordedEvent,
    reservation: &str,
    from: &str,
    status: &str,
) -> Result<(), ProjectionError> {
    let row = row_in(
        rows,
        event,
        reservation,
        from,
        |_| true,
        || format!("reservation {reservation} {status}, but it is not {from}"),
    )?;
    row.set("status", status);
    row.set("close_reason", status);
    row.set("closed_at", event.recorded_at);
    Ok(())
}

fn apply_one(
    rows: &mut Rows,
    event: &RecordedEvent,
    e: ReservationEvent,
) -> Result<(), ProjectionError> {
    let rsv = e.reservation_id().to_string();
    match e {
        ReservationEvent::ReservationPlaced {
            user_id,
            seats,
            section,
            quantity,
            placed_at,
            expires_at,
            total,
            currency,
            origin,
            ..
        } => {
            let show = show_of(event)?;
            let origin = match origin {
                Origin::Direct => "direct",
                Origin::Waitlist => "waitlist",
            };
            let seats = (!seats.is_empty()).then(|| seats.join(","));
            let added = rows.insert(Record::new(
                &RESERVATIONS,
                vec![
                    rsv.clone().into(),
                    show.to_string().into(),
                    user_id.to_string().into(),
                    origin.into(),
                    "held".into(),
                    i64::from(quantity).into(),
                    seats.into(),
                    section.into(),
                    total.0.into(),
                    currency.into(),
                    placed_at.into(),
                    expires_at.into(),
                    Param::OptTime(None),
                    Param::OptTime(None),
                    Param::OptInt(None),
                    Param::OptTime(None),
                    Param::OptText(None),
                    Param::OptTime(None),
                    Param::OptText(None),
                    position_param(event.position),
                ],
            ));
            if !added {
                return Err(inconsistent(
                    event,
                    format!("reservation {rsv} placed twice"),
                ));
            }
        }
        ReservationEvent::PaymentStarted { .. } => {
            let row = row_in(
                rows,
                event,
                &rsv,
                "held",
                |_| true,
                || format!("payment started for {rsv}, which is not held"),
            )?;
            row.set("status", "payment_pending");
            row.set("payment_started_at", event.recorded_at);
        }
        ReservationEvent::PaymentCaptured { .. } => {
            let row = row_in(
                rows,
                event,
                &rsv,
                "payment_pending",
                |_| true,
                || format!("payment captured for {rsv}, which has no payment pending"),
            )?;
            let seconds = (event.recorded_at - row.time("placed_at"))
                .num_seconds()
                .max(0);
            row.set("paid_at", event.recorded_at);
            row.set("seconds_to_checkout", Param::Int(seconds));
        }
        ReservationEvent::PaymentFailed { .. } => {
            close(rows, event, &rsv, "payment_pending", "payment_failed")?;
        }
        ReservationEvent::PaymentTimedOut { .. } => {
            close(rows, event, &rsv, "payment_pending", "payment_timed_out")?;
        }
        ReservationEvent::TicketsIssued { order_id, .. } => {
            let row = row_in(
                rows,
                event,
                &rsv,
                "payment_pending",
                |r| r.opt_time("paid_at").is_some(),
                || format!("tickets issued for {rsv}, which has no captured payment"),
            )?;
            row.set("status", "confirmed");
            row.set("confirmed_at", event.recorded_at);
            row.set("order_id", order_id.to_string());
        }
        ReservationEvent::HoldExpired { .. } => {
            close(rows, event, &rsv, "held", "expired")?;
        }
        ReservationEvent::ReservationCancelled { .. } => {
            close(rows, event, &rsv, "held", "cancelled")?;
        }
        ReservationEvent::RefundIssued { .. } => {
            close(rows, event, &rsv, "confirmed", "refunded")?;
        }
    }
    Ok(())
}
