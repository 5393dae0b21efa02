//! The seat map read model: `seat_map_shows` (the catalogue: name, start, currency,
//! cancelled or not), `seat_map` (one row per seat: where it is, its tier, its status and
//! the reservation holding it) and `seat_map_ga` (one row per general-admission section:
//! capacity, held, sold). Seat and section rows are created from the layout in
//! `ShowScheduled`; each later seat or pool event moves one row, checked against the state
//! the row is in, so the table also re-checks rule 1 of `EVENTS.md` as it goes.

use async_trait::async_trait;
use boxoffice_domain::DomainEvent;
use boxoffice_domain::pool::PoolEvent;
use boxoffice_domain::seat::{ReleaseReason, SeatEvent};
use boxoffice_domain::show::{SectionLayout, ShowEvent};
use boxoffice_store::RecordedEvent;

use super::{expect_one, insert_rows};
use crate::db::{Param, Tx, position_param};
use crate::orders::show_of;
use crate::runtime::{Projection, ProjectionError, decode_wanted};

pub const NAME: &str = "seat_map";
pub const VERSION: u32 = 1;

const TYPES: [&str; 10] = [
    "ShowScheduled",
    "ShowCancelled",
    "SeatHeld",
    "SeatReleased",
    "SeatSold",
    "SeatBlocked",
    "SeatUnblocked",
    "PoolSeatsHeld",
    "PoolSeatsReleased",
    "PoolSeatsSold",
];

/// Keeps `seat_map_shows`, `seat_map` and `seat_map_ga`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeatMapProjection;

#[async_trait]
impl Projection for SeatMapProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        &["seat_map", "seat_map_ga", "seat_map_shows"]
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            match decode_wanted(event, &TYPES)? {
                Some(DomainEvent::Show(e)) => apply_show(tx, event, e).await?,
                Some(DomainEvent::Seat(e)) => apply_seat(tx, event, e).await?,
                Some(DomainEvent::Pool(e)) => apply_pool(tx, event, e).await?,
                _ => {}
            }
        }
        Ok(())
    }
}

async fn apply_show(
    tx: &mut Tx,
    event: &RecordedEvent,
    e: ShowEvent,
) -> Result<(), ProjectionError> {
    let show = show_of(event)?.to_string();
    let at = position_param(event.position);
    match e {
        ShowEvent::ShowScheduled { definition, .. } => {
            tx.execute(
                "INSERT INTO seat_map_shows (show_id, name, starts_at, currency, status, cancelled_at, updated_position)
                 VALUES ($1, $2, $3, $4, 'scheduled', NULL, $5)",
                &[
                    show.clone().into(),
                    definition.name.clone().into(),
                    definition.starts_at.into(),
                    definition.currency.clone().into(),
                    at.clone(),
                ],
            )
            .await?;
            let mut seats = Vec::new();
            let mut pools = Vec::new();
            for section in &definition.sections {
                match &section.layout {
                    SectionLayout::Seated { rows } => {
                        for row in rows {
                            for number in 1..=row.seats {
                                seats.push(vec![
                                    show.clone().into(),
                                    format!("{}-{}-{number}", section.id, row.row).into(),
                                    section.id.clone().into(),
                                    row.row.clone().into(),
                                    i64::from(number).into(),
                                    row.tier.clone().into(),
                                    "available".into(),
                                    at.clone(),
                                ]);
                            }
                        }
                    }
                    SectionLayout::GeneralAdmission { capacity, tier } => pools.push(vec![
                        show.clone().into(),
                        section.id.clone().into(),
                        tier.clone().into(),
                        i64::from(*capacity).into(),
                        Param::Int(0),
                        Param::Int(0),
                        at.clone(),
                    ]),
                }
            }
            insert_rows(
                tx,
                "seat_map",
                &[
                    "show_id",
                    "seat_id",
                    "section",
                    "row_label",
                    "number",
                    "tier",
                    "status",
                    "updated_position",
                ],
                seats,
            )
            .await?;
            insert_rows(
                tx,
                "seat_map_ga",
                &[
                    "show_id",
                    "section",
                    "tier",
                    "capacity",
                    "held",
                    "sold",
                    "updated_position",
                ],
                pools,
            )
            .await?;
        }
        ShowEvent::ShowCancelled { .. } => {
            let updated = tx
                .execute(
                    "UPDATE seat_map_shows SET status = 'cancelled', cancelled_at = $2, updated_position = $3
                     WHERE show_id = $1 AND status = 'scheduled'",
                    &[show.clone().into(), event.recorded_at.into(), at],
                )
                .await?;
            expect_one(event, updated, || {
                format!("show {show} cancelled, but it is not a scheduled show")
            })?;
        }
        _ => {}
    }
    Ok(())
}

async fn apply_seat(
    tx: &mut Tx,
    event: &RecordedEvent,
    e: SeatEvent,
) -> Result<(), ProjectionError> {
    let show = show_of(event)?.to_string();
    let at = position_param(event.position);
    // (new status, new reservation, condition on the current row, parameters)
    let (sql, params, what): (&str, Vec<Param>, &str) = match &e {
        SeatEvent::SeatHeld {
            seat_id,
            reservation_id,
            ..
        } => (
            "UPDATE seat_map SET status = 'held', reservation_id = $3, updated_position = $4
             WHERE show_id = $1 AND seat_id = $2 AND status = 'available'",
            vec![
                show.into(),
                seat_id.clone().into(),
                reservation_id.to_string().into(),
                at,
            ],
            "held, but it is not available",
        ),
        SeatEvent::SeatReleased {
            seat_id,
            reservation_id,
            reason,
        } => {
            // A refund releases a sold seat; every other reason a held one.
            let from = if *reason == ReleaseReason::Refunded {
                "sold"
            } else {
                "held"
            };
            (
                if from == "sold" {
                    "UPDATE seat_map SET status = 'available', reservation_id = NULL, updated_position = $4
                     WHERE show_id = $1 AND seat_id = $2 AND reservation_id = $3 AND status = 'sold'"
                } else {
                    "UPDATE seat_map SET status = 'available', reservation_id = NULL, updated_position = $4
                     WHERE show_id = $1 AND seat_id = $2 AND reservation_id = $3 AND status = 'held'"
                },
                vec![
                    show.into(),
                    seat_id.clone().into(),
                    reservation_id.to_string().into(),
                    at,
                ],
                "released, but this reservation does not have it",
            )
        }
        SeatEvent::SeatSold {
            seat_id,
            reservation_id,
            ..
        } => (
            "UPDATE seat_map SET status = 'sold', updated_position = $4
             WHERE show_id = $1 AND seat_id = $2 AND reservation_id = $3 AND status = 'held'",
            vec![
                show.into(),
                seat_id.clone().into(),
                reservation_id.to_string().into(),
                at,
            ],
            "sold, but this reservation does not hold it",
        ),
        SeatEvent::SeatBlocked { seat_id, .. } => (
            "UPDATE seat_map SET status = 'blocked', updated_position = $3
             WHERE show_id = $1 AND seat_id = $2 AND status = 'available'",
            vec![show.into(), seat_id.clone().into(), at],
            "blocked, but it is not available",
        ),
        SeatEvent::SeatUnblocked { seat_id } => (
            "UPDATE seat_map SET status = 'available', updated_position = $3
             WHERE show_id = $1 AND seat_id = $2 AND status = 'blocked'",
            vec![show.into(), seat_id.clone().into(), at],
            "unblocked, but it is not blocked",
        ),
    };
    let updated = tx.execute(sql, &params).await?;
    expect_one(event, updated, || format!("seat {} {what}", e.seat_id()))
}

async fn apply_pool(
    tx: &mut Tx,
    event: &RecordedEvent,
    e: PoolEvent,
) -> Result<(), ProjectionError> {
    let show = show_of(event)?.to_string();
    let at = position_param(event.position);
    let (sql, quantity, what) = match &e {
        PoolEvent::PoolSeatsHeld { quantity, .. } => (
            "UPDATE seat_map_ga SET held = held + $3, updated_position = $4
             WHERE show_id = $1 AND section = $2 AND held + sold + $3 <= capacity",
            *quantity,
            "held over capacity",
        ),
        PoolEvent::PoolSeatsReleased {
            quantity, reason, ..
        } if *reason == ReleaseReason::Refunded => (
            "UPDATE seat_map_ga SET sold = sold - $3, updated_position = $4
             WHERE show_id = $1 AND section = $2 AND sold >= $3",
            *quantity,
            "refunded more than was sold",
        ),
        PoolEvent::PoolSeatsReleased { quantity, .. } => (
            "UPDATE seat_map_ga SET held = held - $3, updated_position = $4
             WHERE show_id = $1 AND section = $2 AND held >= $3",
            *quantity,
            "released more than was held",
        ),
        PoolEvent::PoolSeatsSold { quantity, .. } => (
            "UPDATE seat_map_ga SET held = held - $3, sold = sold + $3, updated_position = $4
             WHERE show_id = $1 AND section = $2 AND held >= $3",
            *quantity,
            "sold more than was held",
        ),
    };
    let updated = tx
        .execute(
            sql,
            &[
                show.into(),
                e.section().to_owned().into(),
                i64::from(quantity).into(),
                at,
            ],
        )
        .await?;
    expect_one(event, updated, || {
        format!("GA section {} {what} (or is unknown)", e.section())
    })
}
