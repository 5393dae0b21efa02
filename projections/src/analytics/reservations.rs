//! The reservations read model: one row per reservation, from `ReservationPlaced` through
//! payment to its end (confirmed, refunded, expired, cancelled, payment failed or timed
//! out). `seconds_to_checkout` (placing to capture) is kept per row so SQL can take any
//! average or percentile of it; the `hold_funnel` and `v_hold_conversion` views count the
//! outcomes per show.

use async_trait::async_trait;
use boxoffice_domain::DomainEvent;
use boxoffice_domain::reservation::{Origin, ReservationEvent};
use boxoffice_store::RecordedEvent;

use super::expect_one;
use crate::db::{Param, Tx, position_param};
use crate::orders::show_of;
use crate::runtime::{Projection, ProjectionError, decode_wanted};

pub const NAME: &str = "reservations";
pub const VERSION: u32 = 1;

/// Keeps `reservations`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReservationsProjection;

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

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if let Some(DomainEvent::Reservation(e)) =
                decode_wanted(event, &ReservationEvent::TYPES)?
            {
                apply_one(tx, event, e).await?;
            }
        }
        Ok(())
    }
}

/// Closes a reservation that is in `from` with `status` and `reason`.
async fn close(
    tx: &mut Tx,
    event: &RecordedEvent,
    reservation: String,
    from: &str,
    status: &str,
) -> Result<(), ProjectionError> {
    let updated = tx
        .execute(
            &format!(
                "UPDATE reservations SET status = $2, close_reason = $2, closed_at = $3
                 WHERE reservation_id = $1 AND status = '{from}'"
            ),
            &[
                reservation.clone().into(),
                status.into(),
                event.recorded_at.into(),
            ],
        )
        .await?;
    expect_one(event, updated, || {
        format!("reservation {reservation} {status}, but it is not {from}")
    })
}

async fn apply_one(
    tx: &mut Tx,
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
            tx.execute(
                "INSERT INTO reservations (reservation_id, show_id, user_id, origin, status, quantity,
                     seats, section, total_minor, currency, placed_at, expires_at, position)
                 VALUES ($1, $2, $3, $4, 'held', $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    rsv.into(),
                    show.to_string().into(),
                    user_id.to_string().into(),
                    origin.into(),
                    i64::from(quantity).into(),
                    seats.into(),
                    section.into(),
                    total.0.into(),
                    currency.into(),
                    placed_at.into(),
                    expires_at.into(),
                    position_param(event.position),
                ],
            )
            .await?;
        }
        ReservationEvent::PaymentStarted { .. } => {
            let updated = tx
                .execute(
                    "UPDATE reservations SET status = 'payment_pending', payment_started_at = $2
                     WHERE reservation_id = $1 AND status = 'held'",
                    &[rsv.clone().into(), event.recorded_at.into()],
                )
                .await?;
            expect_one(event, updated, || {
                format!("payment started for {rsv}, which is not held")
            })?;
        }
        ReservationEvent::PaymentCaptured { .. } => {
            let row = tx
                .fetch_optional(
                    "SELECT placed_at FROM reservations
                     WHERE reservation_id = $1 AND status = 'payment_pending'",
                    &[rsv.clone().into()],
                )
                .await?;
            let Some(row) = row else {
                return Err(super::inconsistent(
                    event,
                    format!("payment captured for {rsv}, which has no payment pending"),
                ));
            };
            let seconds = (event.recorded_at - row.time("placed_at")?)
                .num_seconds()
                .max(0);
            tx.execute(
                "UPDATE reservations SET paid_at = $2, seconds_to_checkout = $3
                 WHERE reservation_id = $1",
                &[rsv.into(), event.recorded_at.into(), Param::Int(seconds)],
            )
            .await?;
        }
        ReservationEvent::PaymentFailed { .. } => {
            close(tx, event, rsv, "payment_pending", "payment_failed").await?;
        }
        ReservationEvent::PaymentTimedOut { .. } => {
            close(tx, event, rsv, "payment_pending", "payment_timed_out").await?;
        }
        ReservationEvent::TicketsIssued { order_id, .. } => {
            let updated = tx
                .execute(
                    "UPDATE reservations SET status = 'confirmed', confirmed_at = $2, order_id = $3
                     WHERE reservation_id = $1 AND status = 'payment_pending' AND paid_at IS NOT NULL",
                    &[
                        rsv.clone().into(),
                        event.recorded_at.into(),
                        order_id.to_string().into(),
                    ],
                )
                .await?;
            expect_one(event, updated, || {
                format!("tickets issued for {rsv}, which has no captured payment")
            })?;
        }
        ReservationEvent::HoldExpired { .. } => {
            close(tx, event, rsv, "held", "expired").await?;
        }
        ReservationEvent::ReservationCancelled { .. } => {
            close(tx, event, rsv, "held", "cancelled").await?;
        }
        ReservationEvent::RefundIssued { .. } => {
            close(tx, event, rsv, "confirmed", "refunded").await?;
        }
    }
    Ok(())
}
