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

use super::inconsistent;
use crate::db::{Backend, Param, Tx, position_param};
use crate::orders::show_of;
use crate::rows::{Kind, Record, Rows, Table};
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

static SHOWS: Table = Table {
    name: "seat_map_shows",
    columns: &[
        ("show_id", Kind::Text),
        ("name", Kind::Text),
        ("starts_at", Kind::Time),
        ("currency", Kind::Text),
        ("status", Kind::Text),
        ("cancelled_at", Kind::OptTime),
        ("updated_position", Kind::Int),
    ],
    key: 1,
};

static SEATS: Table = Table {
    name: "seat_map",
    columns: &[
        ("show_id", Kind::Text),
        ("seat_id", Kind::Text),
        ("section", Kind::Text),
        ("row_label", Kind::Text),
        ("number", Kind::Int),
        ("tier", Kind::Text),
        ("status", Kind::Text),
        ("reservation_id", Kind::OptText),
        ("updated_position", Kind::Int),
    ],
    key: 2,
};

static SECTIONS: Table = Table {
    name: "seat_map_ga",
    columns: &[
        ("show_id", Kind::Text),
        ("section", Kind::Text),
        ("tier", Kind::Text),
        ("capacity", Kind::Int),
        ("held", Kind::Int),
        ("sold", Kind::Int),
        ("updated_position", Kind::Int),
    ],
    key: 2,
};

/// The rows one batch works on.
struct Batch {
    shows: Rows,
    seats: Rows,
    sections: Rows,
}

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

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&TYPES)
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let mut decoded = Vec::new();
        let (mut shows, mut seats, mut sections) = (Vec::new(), Vec::new(), Vec::new());
        for event in events {
            let Some(e) = decode_wanted(event, &TYPES)? else {
                continue;
            };
            let show = show_of(event)?.to_string();
            match &e {
                DomainEvent::Show(_) => shows.push(vec![show]),
                DomainEvent::Seat(e) => seats.push(vec![show, e.seat_id().to_owned()]),
                DomainEvent::Pool(e) => sections.push(vec![show, e.section().to_owned()]),
                _ => continue,
            }
            decoded.push((event, e));
        }
        if decoded.is_empty() {
            return Ok(());
        }
        let mut batch = Batch {
            shows: Rows::new(&SHOWS),
            seats: Rows::new(&SEATS),
            sections: Rows::new(&SECTIONS),
        };
        batch.shows.load(tx, shows).await?;
        batch.seats.load(tx, seats).await?;
        batch.sections.load(tx, sections).await?;
        let scheduled = decoded
            .iter()
            .any(|(_, e)| matches!(e, DomainEvent::Show(ShowEvent::ShowScheduled { .. })));
        for (event, e) in decoded {
            match e {
                DomainEvent::Show(e) => apply_show(&mut batch, event, e)?,
                DomainEvent::Seat(e) => apply_seat(&mut batch.seats, event, e)?,
                DomainEvent::Pool(e) => apply_pool(&mut batch.sections, event, e)?,
                _ => {}
            }
        }
        batch.shows.flush(tx).await?;
        batch.seats.flush(tx).await?;
        batch.sections.flush(tx).await?;
        if scheduled && tx.backend() == Backend::Postgres {
            // A new show's seats can multiply the table's rows before autovacuum notices
            // (and it never analyzes a rebuild's TEMP tables). With statistics from before
            // them, PostgreSQL read `show_id = $1 AND seat_id IN (…)` as "every seat of the
            // show, filtered": 100–300 ms per batch on a 50,000-seat show, and the seat
            // map fell tens of seconds behind an on-sale. ANALYZE sees this transaction's
            // rows.
            tx.execute("ANALYZE seat_map", &[]).await?;
        }
        Ok(())
    }
}

fn apply_show(
    batch: &mut Batch,
    event: &RecordedEvent,
    e: ShowEvent,
) -> Result<(), ProjectionError> {
    let show = show_of(event)?.to_string();
    let at = position_param(event.position);
    match e {
        ShowEvent::ShowScheduled { definition, .. } => {
            let added = batch.shows.insert(Record::new(
                &SHOWS,
                vec![
                    show.clone().into(),
                    definition.name.clone().into(),
                    definition.starts_at.into(),
                    definition.currency.clone().into(),
                    "scheduled".into(),
                    Param::OptTime(None),
                    at.clone(),
                ],
            ));
            if !added {
                return Err(inconsistent(event, format!("show {show} scheduled twice")));
            }
            // A show new to the table has no seat or section rows either.
            for section in &definition.sections {
                let added = match &section.layout {
                    SectionLayout::Seated { rows } => rows.iter().all(|row| {
                        (1..=row.seats).all(|number| {
                            batch.seats.insert(Record::new(
                                &SEATS,
                                vec![
                                    show.clone().into(),
                                    format!("{}-{}-{number}", section.id, row.row).into(),
                                    section.id.clone().into(),
                                    row.row.clone().into(),
                                    i64::from(number).into(),
                                    row.tier.clone().into(),
                                    "available".into(),
                                    Param::OptText(None),
                                    at.clone(),
                                ],
                            ))
                        })
                    }),
                    SectionLayout::GeneralAdmission { capacity, tier } => {
                        batch.sections.insert(Record::new(
                            &SECTIONS,
                            vec![
                                show.clone().into(),
                                section.id.clone().into(),
                                tier.clone().into(),
                                i64::from(*capacity).into(),
                                Param::Int(0),
                                Param::Int(0),
                                at.clone(),
                            ],
                        ))
                    }
                };
                if !added {
                    return Err(inconsistent(
                        event,
                        format!("section {} of show {show} has a place twice", section.id),
                    ));
                }
            }
        }
        ShowEvent::ShowCancelled { .. } => {
            let row = batch
                .shows
                .get_mut(std::slice::from_ref(&show))
                .filter(|r| r.text("status") == "scheduled")
                .ok_or_else(|| {
                    inconsistent(
                        event,
                        format!("show {show} cancelled, but it is not a scheduled show"),
                    )
                })?;
            row.set("status", "cancelled");
            row.set("cancelled_at", event.recorded_at);
            row.set("updated_position", at);
        }
        _ => {}
    }
    Ok(())
}

fn apply_seat(
    seats: &mut Rows,
    event: &RecordedEvent,
    e: SeatEvent,
) -> Result<(), ProjectionError> {
    let show = show_of(event)?.to_string();
    let key = [show, e.seat_id().to_owned()];
    let row = seats.get_mut(&key);
    // The row must be in `from` (and held by `holder`, if given) for the event to apply.
    fn check<'r>(
        event: &RecordedEvent,
        seat: &str,
        row: Option<&'r mut Record>,
        from: &str,
        holder: Option<String>,
        what: &str,
    ) -> Result<&'r mut Record, ProjectionError> {
        match row {
            Some(row)
                if row.text("status") == from
                    && holder
                        .as_deref()
                        .is_none_or(|h| row.opt_text("reservation_id") == Some(h)) =>
            {
                Ok(row)
            }
            _ => Err(inconsistent(event, format!("seat {seat} {what}"))),
        }
    }
    let seat = e.seat_id().to_owned();
    let check = |row, from, holder, what| check(event, &seat, row, from, holder, what);
    let (row, status, reservation) = match &e {
        SeatEvent::SeatHeld { reservation_id, .. } => (
            check(row, "available", None, "held, but it is not available")?,
            "held",
            Some(reservation_id.to_string()),
        ),
        SeatEvent::SeatReleased {
            reservation_id,
            reason,
            ..
        } => {
            // A refund releases a sold seat; every other reason a held one.
            let from = if *reason == ReleaseReason::Refunded {
                "sold"
            } else {
                "held"
            };
            (
                check(
                    row,
                    from,
                    Some(reservation_id.to_string()),
                    "released, but this reservation does not have it",
                )?,
                "available",
                None,
            )
        }
        SeatEvent::SeatSold { reservation_id, .. } => (
            check(
                row,
                "held",
                Some(reservation_id.to_string()),
                "sold, but this reservation does not hold it",
            )?,
            "sold",
            Some(reservation_id.to_string()),
        ),
        SeatEvent::SeatBlocked { .. } => {
            let row = check(row, "available", None, "blocked, but it is not available")?;
            let keep = row.opt_text("reservation_id").map(str::to_owned);
            (row, "blocked", keep)
        }
        SeatEvent::SeatUnblocked { .. } => {
            let row = check(row, "blocked", None, "unblocked, but it is not blocked")?;
            let keep = row.opt_text("reservation_id").map(str::to_owned);
            (row, "available", keep)
        }
    };
    row.set("status", status);
    row.set("reservation_id", Param::OptText(reservation));
    row.set("updated_position", position_param(event.position));
    Ok(())
}

fn apply_pool(
    sections: &mut Rows,
    event: &RecordedEvent,
    e: PoolEvent,
) -> Result<(), ProjectionError> {
    let show = show_of(event)?.to_string();
    let Some(row) = sections.get_mut(&[show, e.section().to_owned()]) else {
        return Err(inconsistent(
            event,
            format!("GA section {} is unknown", e.section()),
        ));
    };
    let (held, sold, capacity) = (row.int("held"), row.int("sold"), row.int("capacity"));
    let (held, sold, what) = match &e {
        PoolEvent::PoolSeatsHeld { quantity, .. } => {
            (held + i64::from(*quantity), sold, "held over capacity")
        }
        PoolEvent::PoolSeatsReleased {
            quantity, reason, ..
        } if *reason == ReleaseReason::Refunded => (
            held,
            sold - i64::from(*quantity),
            "refunded more than was sold",
        ),
        PoolEvent::PoolSeatsReleased { quantity, .. } => (
            held - i64::from(*quantity),
            sold,
            "released more than was held",
        ),
        PoolEvent::PoolSeatsSold { quantity, .. } => (
            held - i64::from(*quantity),
            sold + i64::from(*quantity),
            "sold more than was held",
        ),
    };
    if held < 0 || sold < 0 || held + sold > capacity {
        return Err(inconsistent(
            event,
            format!("GA section {} {what}", e.section()),
        ));
    }
    row.set("held", held);
    row.set("sold", sold);
    row.set("updated_position", position_param(event.position));
    Ok(())
}
