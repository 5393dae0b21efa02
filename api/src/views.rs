//! Response bodies, as the contract writes them.

use boxoffice_domain::booking::SectionIndex;
use boxoffice_domain::reservation::{Items, PaymentStatus, Reservation};
use boxoffice_domain::show::{SectionLayout, Show};
use boxoffice_domain::{Minor, ShowState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize)]
pub struct Money {
    pub amount: String,
    pub currency: String,
}

impl Money {
    pub fn new(amount: Minor, currency: &str) -> Self {
        Self {
            amount: amount.to_string(),
            currency: currency.to_string(),
        }
    }
}

pub fn reservation(r: &Reservation, show_id: &str) -> Value {
    let (seats, section): (Vec<String>, Option<String>) = match &r.items {
        Items::Seats(seats) => (seats.clone(), None),
        Items::General { section, .. } => (Vec::new(), Some(section.clone())),
    };
    let payment = r.payment.as_ref().map(|p| {
        let status = match p.status {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Failed => "failed",
            PaymentStatus::TimedOut => "timed_out",
        };
        json!({"payment_id": p.payment_id.to_string(), "status": status, "deadline": p.deadline})
    });
    let mut body = json!({
        "reservation_id": r.reservation_id.to_string(),
        "show_id": show_id,
        "status": r.status,
        "seats": seats,
        "quantity": r.items.quantity(),
        "expires_at": r.expires_at,
        "total": Money::new(r.total, &r.currency),
        "payment": payment,
        "order_id": r.order_id.map(|o| o.to_string()),
        "origin": r.origin,
        "created_at": r.placed_at,
    });
    if let Some(section) = section {
        body["section"] = json!(section);
    }
    body
}

/// A show with its section summaries and status at `now`.
pub fn show(state: &ShowState, show: &Show, now: DateTime<Utc>) -> Value {
    let d = &show.definition;
    let sections: Vec<Value> = d
        .sections
        .iter()
        .zip(&state.sections)
        .map(|(def, index)| {
            let available = match index {
                SectionIndex::Seated { rows, .. } => {
                    rows.iter().flat_map(|r| &r.seats).filter(|&&i| state.seats[i as usize].state.is_available()).count() as u32
                }
                SectionIndex::General { id, .. } => state.pools[id].available(),
            };
            let kind = match def.layout {
                SectionLayout::Seated { .. } => "seated",
                SectionLayout::GeneralAdmission { .. } => "general_admission",
            };
            json!({"id": def.id, "name": def.name, "kind": kind, "capacity": def.capacity(), "available": available})
        })
        .collect();
    let tiers: Vec<Value> = d
        .price_tiers
        .iter()
        .map(|t| json!({"id": t.id, "name": t.name, "price": Money::new(t.price, &d.currency)}))
        .collect();
    json!({
        "show_id": show.show_id.to_string(),
        "name": d.name,
        "venue": d.venue,
        "starts_at": d.starts_at,
        "currency": d.currency,
        "sales_open_at": d.sales_open_at,
        "sales_close_at": d.sales_close_at,
        "limits": d.limits,
        "price_tiers": tiers,
        "sections": sections,
        "status": show.status(now, state.anything_available()),
        "organizer_id": show.organizer_id.to_string(),
    })
}

/// The seat map body: every seat with its status, tier and price; GA sections with counts.
pub fn seatmap(state: &ShowState, show: &Show, position: u64) -> Value {
    let d = &show.definition;
    let prices: Vec<Money> = d
        .price_tiers
        .iter()
        .map(|t| Money::new(t.price, &d.currency))
        .collect();
    let sections: Vec<Value> = state
        .sections
        .iter()
        .map(|index| match index {
            SectionIndex::Seated { id, rows } => {
                let rows: Vec<Value> = rows
                    .iter()
                    .map(|row| {
                        let seats: Vec<Value> = row
                            .seats
                            .iter()
                            .map(|&i| {
                                let slot = &state.seats[i as usize];
                                json!({
                                    "id": slot.id,
                                    "status": slot.state.status_name(),
                                    "tier": d.price_tiers[slot.tier].id,
                                    "price": prices[slot.tier],
                                })
                            })
                            .collect();
                        json!({"row": row.label, "seats": seats})
                    })
                    .collect();
                json!({"id": id, "kind": "seated", "rows": rows})
            }
            SectionIndex::General { id, tier } => {
                let pool = &state.pools[id];
                json!({
                    "id": id,
                    "kind": "general_admission",
                    "capacity": pool.capacity,
                    "available": pool.available(),
                    "tier": d.price_tiers[*tier].id,
                    "price": prices[*tier],
                })
            }
        })
        .collect();
    json!({"show_id": show.show_id.to_string(), "position": position, "sections": sections})
}
