//! The sales read model: `sales`, tickets sold and refunded and their money per show,
//! tier, section and UTC hour.
//!
//! Events about a sale name seats or a GA section, not tiers, so the projection keeps
//! each show's layout (`sales_tiers`: the tier of every row of seats and of every GA
//! section) and its current tier prices (`sales_tier_prices`) from `ShowScheduled` and
//! `TierPriceChanged`. When a reservation is placed it records what was bought, by
//! section and tier, in `sales_reservation_items`, splitting the reservation's total over
//! the items in proportion to their list prices then (the engine quotes the total from
//! the same prices, so the split is exact unless a price changed in between). Tickets
//! issued count as sold, with that split, in the hour of `TicketsIssued`; a refund counts
//! its amount, split the same way, in the hour of `RefundIssued`.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use boxoffice_domain::DomainEvent;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::show::{SectionLayout, ShowEvent};
use boxoffice_store::RecordedEvent;
use chrono::{DateTime, Utc};

use super::{hour_of, inconsistent, split_amount, split_seat_id};
use crate::db::{Param, Tx, placeholders_for};
use crate::orders::show_of;
use crate::rows::{Kind, Record, Rows, Table, rows_per_statement, write_rows};
use crate::runtime::{Projection, ProjectionError, decode_wanted};

pub const NAME: &str = "sales";
pub const VERSION: u32 = 1;

const TYPES: [&str; 5] = [
    "ShowScheduled",
    "TierPriceChanged",
    "ReservationPlaced",
    "TicketsIssued",
    "RefundIssued",
];

/// Keeps `sales` and its helpers `sales_tiers`, `sales_tier_prices` and
/// `sales_reservation_items`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SalesProjection;

static TIERS: Table = Table {
    name: "sales_tiers",
    columns: &[
        ("show_id", Kind::Text),
        ("section", Kind::Text),
        ("row_label", Kind::Text),
        ("tier", Kind::Text),
    ],
    key: 3,
};

static PRICES: Table = Table {
    name: "sales_tier_prices",
    columns: &[
        ("show_id", Kind::Text),
        ("tier", Kind::Text),
        ("currency", Kind::Text),
        ("price_minor", Kind::Int),
    ],
    key: 2,
};

const ITEM_COLUMNS: [&str; 7] = [
    "reservation_id",
    "show_id",
    "section",
    "tier",
    "quantity",
    "amount_minor",
    "currency",
];

const SALES_COLUMNS: [&str; 9] = [
    "show_id",
    "tier",
    "section",
    "hour",
    "currency",
    "tickets_sold",
    "revenue_minor",
    "tickets_refunded",
    "refunds_minor",
];

/// What a reservation bought in one section and tier.
#[derive(Debug, Clone)]
struct Item {
    show: String,
    section: String,
    tier: String,
    quantity: i64,
    amount: i64,
    currency: String,
}

/// One `sales` row's change: (currency, sold, revenue, refunded, refunds).
type SalesDelta = (String, i64, i64, i64, i64);

/// The rows one batch works on. Items and sales are only ever added to: new items are
/// inserted, and sales changes are summed per row and added to the table's figures.
struct Batch {
    tiers: Rows,
    prices: Rows,
    /// The items of every reservation the batch names, in (section, tier) order.
    items: HashMap<String, Vec<Item>>,
    new_items: Vec<Vec<Param>>,
    sales: BTreeMap<(String, String, String, DateTime<Utc>), SalesDelta>,
}

#[async_trait]
impl Projection for SalesProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "sales",
            "sales_reservation_items",
            "sales_tier_prices",
            "sales_tiers",
        ]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&TYPES)
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let mut decoded = Vec::new();
        let (mut tiers, mut prices, mut reservations) = (Vec::new(), Vec::new(), Vec::new());
        for event in events {
            let Some(e) = decode_wanted(event, &TYPES)? else {
                continue;
            };
            let show = show_of(event)?.to_string();
            match &e {
                DomainEvent::Show(ShowEvent::TierPriceChanged { tier_id, .. }) => {
                    prices.push(vec![show, tier_id.clone()]);
                }
                DomainEvent::Reservation(r) => {
                    if let ReservationEvent::ReservationPlaced { seats, section, .. } = r {
                        if let Some(section) = section {
                            tiers.push(vec![show, section.clone(), String::new()]);
                        } else {
                            for seat in seats {
                                if let Some((section, row, _)) = split_seat_id(seat) {
                                    tiers.push(vec![show.clone(), section.into(), row.into()]);
                                }
                            }
                        }
                    }
                    reservations.push(r.reservation_id().to_string());
                }
                _ => {}
            }
            decoded.push((event, e));
        }
        if decoded.is_empty() {
            return Ok(());
        }
        let mut batch = Batch {
            tiers: Rows::new(&TIERS),
            prices: Rows::new(&PRICES),
            items: load_items(tx, reservations).await?,
            new_items: Vec::new(),
            sales: BTreeMap::new(),
        };
        batch.tiers.load(tx, tiers.clone()).await?;
        // The prices of the tiers found, and of those whose price changes.
        for key in &tiers {
            if let Some(row) = batch.tiers.get(key) {
                prices.push(vec![key[0].clone(), row.text("tier").to_owned()]);
            }
        }
        batch.prices.load(tx, prices).await?;
        for (event, e) in decoded {
            match e {
                DomainEvent::Show(e) => apply_show(&mut batch, event, e)?,
                DomainEvent::Reservation(e) => apply_reservation(&mut batch, event, e)?,
                _ => {}
            }
        }
        batch.tiers.flush(tx).await?;
        batch.prices.flush(tx).await?;
        write_rows(
            tx,
            "sales_reservation_items",
            &ITEM_COLUMNS,
            batch.new_items,
            "",
        )
        .await?;
        let sales = batch
            .sales
            .into_iter()
            .map(
                |((show, tier, section, hour), (currency, sold, revenue, refunded, refunds))| {
                    vec![
                        show.into(),
                        tier.into(),
                        section.into(),
                        hour.into(),
                        currency.into(),
                        sold.into(),
                        revenue.into(),
                        refunded.into(),
                        refunds.into(),
                    ]
                },
            )
            .collect();
        write_rows(
            tx,
            "sales",
            &SALES_COLUMNS,
            sales,
            "ON CONFLICT (show_id, tier, section, hour) DO UPDATE SET
                 tickets_sold = sales.tickets_sold + excluded.tickets_sold,
                 revenue_minor = sales.revenue_minor + excluded.revenue_minor,
                 tickets_refunded = sales.tickets_refunded + excluded.tickets_refunded,
                 refunds_minor = sales.refunds_minor + excluded.refunds_minor",
        )
        .await?;
        Ok(())
    }
}

/// The stored items of `reservations`, by reservation, each in (section, tier) order.
async fn load_items(
    tx: &mut Tx,
    mut reservations: Vec<String>,
) -> Result<HashMap<String, Vec<Item>>, sqlx::Error> {
    reservations.sort_unstable();
    reservations.dedup();
    let mut items: HashMap<String, Vec<Item>> = HashMap::new();
    for chunk in reservations.chunks(rows_per_statement(1)) {
        let rows = tx
            .fetch_all(
                &format!(
                    "SELECT reservation_id, show_id, section, tier, quantity, amount_minor, currency
                     FROM sales_reservation_items WHERE reservation_id IN ({})",
                    placeholders_for(tx.backend(), 1, chunk.len())
                ),
                &chunk
                    .iter()
                    .map(|r| Param::Text(r.clone()))
                    .collect::<Vec<_>>(),
            )
            .await?;
        for r in rows {
            items
                .entry(r.text("reservation_id")?)
                .or_default()
                .push(Item {
                    show: r.text("show_id")?,
                    section: r.text("section")?,
                    tier: r.text("tier")?,
                    quantity: r.int("quantity")?,
                    amount: r.int("amount_minor")?,
                    currency: r.text("currency")?,
                });
        }
    }
    for list in items.values_mut() {
        list.sort_by(|a, b| (&a.section, &a.tier).cmp(&(&b.section, &b.tier)));
    }
    Ok(items)
}

fn apply_show(
    batch: &mut Batch,
    event: &RecordedEvent,
    e: ShowEvent,
) -> Result<(), ProjectionError> {
    let show = show_of(event)?.to_string();
    match e {
        ShowEvent::ShowScheduled { definition, .. } => {
            let mut added = true;
            for section in &definition.sections {
                match &section.layout {
                    SectionLayout::Seated { rows } => {
                        for row in rows {
                            added &= batch.tiers.insert(Record::new(
                                &TIERS,
                                vec![
                                    show.clone().into(),
                                    section.id.clone().into(),
                                    row.row.clone().into(),
                                    row.tier.clone().into(),
                                ],
                            ));
                        }
                    }
                    SectionLayout::GeneralAdmission { tier, .. } => {
                        added &= batch.tiers.insert(Record::new(
                            &TIERS,
                            vec![
                                show.clone().into(),
                                section.id.clone().into(),
                                "".into(),
                                tier.clone().into(),
                            ],
                        ));
                    }
                }
            }
            for t in &definition.price_tiers {
                added &= batch.prices.insert(Record::new(
                    &PRICES,
                    vec![
                        show.clone().into(),
                        t.id.clone().into(),
                        definition.currency.clone().into(),
                        t.price.0.into(),
                    ],
                ));
            }
            if !added {
                return Err(inconsistent(
                    event,
                    format!("show {show} scheduled twice, or its layout repeats a row or tier"),
                ));
            }
        }
        ShowEvent::TierPriceChanged { tier_id, price } => {
            let Some(row) = batch.prices.get_mut(&[show, tier_id.clone()]) else {
                return Err(inconsistent(
                    event,
                    format!("price of unknown tier {tier_id}"),
                ));
            };
            row.set("price_minor", price.0);
        }
        _ => {}
    }
    Ok(())
}

/// The tier and current price of a row of seats (`row` empty: of a GA section).
fn tier_of(
    batch: &Batch,
    event: &RecordedEvent,
    show: &str,
    section: &str,
    row: &str,
) -> Result<(String, i64), ProjectionError> {
    let missing = || {
        inconsistent(
            event,
            format!("section {section} row {row:?} is not in the layout of show {show}"),
        )
    };
    let tier = batch
        .tiers
        .get(&[show.to_owned(), section.to_owned(), row.to_owned()])
        .ok_or_else(missing)?
        .text("tier")
        .to_owned();
    // Loaded for every tier row in the table; a tier row added by this batch comes with
    // its show's prices, so a price not known here does not exist.
    let price = batch
        .prices
        .get_if_known(&[show.to_owned(), tier.clone()])
        .ok_or_else(missing)?
        .int("price_minor");
    Ok((tier, price))
}

impl Batch {
    fn add_sales(&mut self, item: Item, hour: DateTime<Utc>, change: [i64; 4]) {
        let delta = self
            .sales
            .entry((item.show, item.tier, item.section, hour))
            .or_insert_with(|| (item.currency, 0, 0, 0, 0));
        delta.1 += change[0];
        delta.2 += change[1];
        delta.3 += change[2];
        delta.4 += change[3];
    }

    fn items_of(
        &self,
        event: &RecordedEvent,
        reservation: &str,
    ) -> Result<Vec<Item>, ProjectionError> {
        match self.items.get(reservation) {
            Some(items) if !items.is_empty() => Ok(items.clone()),
            _ => Err(inconsistent(
                event,
                format!("reservation {reservation} was never placed"),
            )),
        }
    }
}

fn apply_reservation(
    batch: &mut Batch,
    event: &RecordedEvent,
    e: ReservationEvent,
) -> Result<(), ProjectionError> {
    let rsv = e.reservation_id().to_string();
    match e {
        ReservationEvent::ReservationPlaced {
            seats,
            section,
            quantity,
            total,
            currency,
            ..
        } => {
            let show = show_of(event)?.to_string();
            if batch.items.get(&rsv).is_some_and(|i| !i.is_empty()) {
                return Err(inconsistent(
                    event,
                    format!("reservation {rsv} placed twice"),
                ));
            }
            let mut items: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
            if let Some(section) = section {
                let (tier, price) = tier_of(batch, event, &show, &section, "")?;
                let quantity = i64::from(quantity);
                items.insert((section, tier), (quantity, price * quantity));
            } else {
                let mut rows: BTreeMap<(String, String), i64> = BTreeMap::new();
                for seat in &seats {
                    let Some((section, row, _)) = split_seat_id(seat) else {
                        return Err(inconsistent(event, format!("malformed seat id {seat:?}")));
                    };
                    *rows.entry((section.into(), row.into())).or_default() += 1;
                }
                for ((section, row), count) in rows {
                    let (tier, price) = tier_of(batch, event, &show, &section, &row)?;
                    let item = items.entry((section, tier)).or_default();
                    item.0 += count;
                    item.1 += price * count;
                }
            }
            if items.is_empty() {
                return Err(inconsistent(
                    event,
                    format!("reservation {rsv} holds nothing"),
                ));
            }
            let weights: Vec<i64> = items.values().map(|(_, list)| *list).collect();
            let shares = split_amount(total.0, &weights);
            let items: Vec<Item> = items
                .into_iter()
                .zip(shares)
                .map(|(((section, tier), (quantity, _)), share)| Item {
                    show: show.clone(),
                    section,
                    tier,
                    quantity,
                    amount: share,
                    currency: currency.clone(),
                })
                .collect();
            for item in &items {
                batch.new_items.push(vec![
                    rsv.clone().into(),
                    item.show.clone().into(),
                    item.section.clone().into(),
                    item.tier.clone().into(),
                    item.quantity.into(),
                    item.amount.into(),
                    item.currency.clone().into(),
                ]);
            }
            batch.items.insert(rsv, items);
        }
        ReservationEvent::TicketsIssued { .. } => {
            let hour = hour_of(event.recorded_at);
            for item in batch.items_of(event, &rsv)? {
                let change = [item.quantity, item.amount, 0, 0];
                batch.add_sales(item, hour, change);
            }
        }
        ReservationEvent::RefundIssued { amount, .. } => {
            let hour = hour_of(event.recorded_at);
            let items = batch.items_of(event, &rsv)?;
            let weights: Vec<i64> = items.iter().map(|i| i.amount.max(0)).collect();
            let shares = split_amount(amount.0, &weights);
            for (item, share) in items.into_iter().zip(shares) {
                let change = [0, 0, item.quantity, share];
                batch.add_sales(item, hour, change);
            }
        }
        _ => {}
    }
    Ok(())
}
