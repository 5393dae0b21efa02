//! `boxctl seatmap`: a show's seat map as it was at a log position or a time, rebuilt by
//! replaying the show's partition through the domain's `apply` up to that point.

use std::io::Write;
use std::panic::AssertUnwindSafe;

use anyhow::Context;
use boxoffice_domain::booking::SectionIndex;
use boxoffice_domain::seat::SeatState;
use boxoffice_domain::{DomainEvent, ShowId, ShowState};
use boxoffice_store::EventStore;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::point::Point;
use crate::{READ_PAGE_EVENTS, progress};

/// A show's state at a point, and the last event that went into it.
pub struct ShowAt {
    pub state: ShowState,
    pub position: u64,
    pub recorded_at: Option<DateTime<Utc>>,
    pub events: u64,
}

/// Replays the show's partition up to and including `at` (everything if `None`).
pub async fn load(
    store: &dyn EventStore,
    show: ShowId,
    at: Option<Point>,
    json: bool,
) -> anyhow::Result<ShowAt> {
    let bar = progress::bar(None, json, "replaying");
    let mut state = ShowState::new(show);
    let mut result_position = 0;
    let mut recorded_at = None;
    let mut events = 0;
    let mut after = 0;
    'pages: loop {
        let page = store
            .read_partition(&show.to_string(), after, READ_PAGE_EVENTS)
            .await
            .with_context(|| format!("reading show {show}"))?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in &page {
            if at.is_some_and(|p| !p.includes(e)) {
                break 'pages;
            }
            let event = DomainEvent::decode(&e.event_type, e.schema_version, &e.payload)
                .with_context(|| format!("event at position {} does not decode", e.position))?;
            std::panic::catch_unwind(AssertUnwindSafe(|| state.apply(&event))).map_err(|p| {
                anyhow::anyhow!(
                    "the log breaks the domain's rules at position {}: {}",
                    e.position,
                    crate::verify::panic_message(&*p)
                )
            })?;
            result_position = e.position;
            recorded_at = Some(e.recorded_at);
            events += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if state.show.is_none() {
        anyhow::bail!("show {show} was not scheduled at that point");
    }
    Ok(ShowAt {
        state,
        position: result_position,
        recorded_at,
        events,
    })
}

/// The one-letter status of a seat in the text map.
pub fn letter(state: &SeatState) -> char {
    match state {
        SeatState::Available => 'A',
        SeatState::Held { .. } => 'H',
        SeatState::Sold { .. } => 'S',
        SeatState::Blocked => 'B',
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    available: u64,
    held: u64,
    sold: u64,
    blocked: u64,
}

impl Counts {
    fn add(&mut self, state: &SeatState) {
        match state {
            SeatState::Available => self.available += 1,
            SeatState::Held { .. } => self.held += 1,
            SeatState::Sold { .. } => self.sold += 1,
            SeatState::Blocked => self.blocked += 1,
        }
    }
}

/// The seat map as text: per section, one line per row of one-letter statuses; GA
/// sections with counts; totals.
pub fn render_text(at: &ShowAt, out: &mut dyn Write) -> std::io::Result<()> {
    let state = &at.state;
    let show = state.show.as_ref().expect("loaded shows are scheduled");
    let d = &show.definition;
    writeln!(
        out,
        "show {} {:?} at position {}{}{}",
        state.show_id,
        d.name,
        at.position,
        at.recorded_at
            .map(|t| format!(" ({})", t.to_rfc3339()))
            .unwrap_or_default(),
        if show.cancelled { " CANCELLED" } else { "" }
    )?;
    writeln!(out, "legend: A available, H held, S sold, B blocked")?;
    let mut seats = Counts::default();
    let (mut capacity, mut held, mut sold) = (0u64, 0u64, 0u64);
    for section in &state.sections {
        match section {
            SectionIndex::Seated { id, rows } => {
                writeln!(out, "section {id}")?;
                let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(1);
                for row in rows {
                    let line: String = row
                        .seats
                        .iter()
                        .map(|&i| {
                            let slot = &state.seats[i as usize];
                            seats.add(&slot.state);
                            letter(&slot.state)
                        })
                        .collect();
                    writeln!(out, "  {:>width$}  {line}", row.label)?;
                }
            }
            SectionIndex::General { id, .. } => {
                let pool = &state.pools[id.as_str()];
                writeln!(
                    out,
                    "section {id} (general admission): capacity {}, held {}, sold {}, available {}",
                    pool.capacity,
                    pool.held,
                    pool.sold,
                    pool.available()
                )?;
                capacity += u64::from(pool.capacity);
                held += u64::from(pool.held);
                sold += u64::from(pool.sold);
            }
        }
    }
    let total = seats.available + seats.held + seats.sold + seats.blocked;
    writeln!(
        out,
        "totals: {total} seats ({} available, {} held, {} sold, {} blocked); {capacity} GA places ({} available, {held} held, {sold} sold)",
        seats.available,
        seats.held,
        seats.sold,
        seats.blocked,
        capacity.saturating_sub(held + sold),
    )
}

/// The seat map as JSON, shaped like the API's seat map plus counts and totals.
pub fn render_json(at: &ShowAt) -> Value {
    let state = &at.state;
    let show = state.show.as_ref().expect("loaded shows are scheduled");
    let d = &show.definition;
    let price = |tier: usize| json!({"amount": d.price_tiers[tier].price.to_string(), "currency": d.currency});
    let mut seats = Counts::default();
    let (mut capacity, mut held, mut sold) = (0u64, 0u64, 0u64);
    let sections: Vec<Value> = state
        .sections
        .iter()
        .map(|section| match section {
            SectionIndex::Seated { id, rows } => json!({
                "kind": "seated",
                "id": id,
                "rows": rows.iter().map(|row| json!({
                    "row": row.label,
                    "seats": row.seats.iter().map(|&i| {
                        let slot = &state.seats[i as usize];
                        seats.add(&slot.state);
                        json!({
                            "id": slot.id,
                            "status": slot.state.status_name(),
                            "tier": d.price_tiers[slot.tier].id,
                            "price": price(slot.tier),
                        })
                    }).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
            SectionIndex::General { id, tier } => {
                let pool = &state.pools[id.as_str()];
                capacity += u64::from(pool.capacity);
                held += u64::from(pool.held);
                sold += u64::from(pool.sold);
                json!({
                    "kind": "general_admission",
                    "id": id,
                    "capacity": pool.capacity,
                    "held": pool.held,
                    "sold": pool.sold,
                    "available": pool.available(),
                    "tier": d.price_tiers[*tier].id,
                    "price": price(*tier),
                })
            }
        })
        .collect();
    json!({
        "show_id": state.show_id.to_string(),
        "name": d.name,
        "cancelled": show.cancelled,
        "position": at.position,
        "recorded_at": at.recorded_at,
        "events": at.events,
        "sections": sections,
        "totals": {
            "seats": {
                "available": seats.available,
                "held": seats.held,
                "sold": seats.sold,
                "blocked": seats.blocked,
            },
            "general_admission": {
                "capacity": capacity,
                "held": held,
                "sold": sold,
                "available": capacity.saturating_sub(held + sold),
            },
        },
    })
}
