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

use std::collections::BTreeMap;

use async_trait::async_trait;
use boxoffice_domain::DomainEvent;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::show::{SectionLayout, ShowEvent};
use boxoffice_store::RecordedEvent;

use super::{expect_one, hour_of, inconsistent, insert_rows, split_amount, split_seat_id};
use crate::db::{Param, Tx};
use crate::orders::show_of;
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

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            match decode_wanted(event, &TYPES)? {
                Some(DomainEvent::Show(e)) => apply_show(tx, event, e).await?,
                Some(DomainEvent::Reservation(e)) => apply_reservation(tx, event, e).await?,
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
    match e {
        ShowEvent::ShowScheduled { definition, .. } => {
            let mut tiers = Vec::new();
            for section in &definition.sections {
                match &section.layout {
                    SectionLayout::Seated { rows } => {
                        for row in rows {
                            tiers.push(vec![
                                show.clone().into(),
                                section.id.clone().into(),
                                row.row.clone().into(),
                                row.tier.clone().into(),
                            ]);
                        }
                    }
                    SectionLayout::GeneralAdmission { tier, .. } => tiers.push(vec![
                        show.clone().into(),
                        section.id.clone().into(),
                        "".into(),
                        tier.clone().into(),
                    ]),
                }
            }
            insert_rows(
                tx,
                "sales_tiers",
                &["show_id", "section", "row_label", "tier"],
                tiers,
            )
            .await?;
            let prices = definition
                .price_tiers
                .iter()
                .map(|t| {
                    vec![
                        show.clone().into(),
                        t.id.clone().into(),
                        definition.currency.clone().into(),
                        t.price.0.into(),
                    ]
                })
                .collect();
            insert_rows(
                tx,
                "sales_tier_prices",
                &["show_id", "tier", "currency", "price_minor"],
                prices,
            )
            .await?;
        }
        ShowEvent::TierPriceChanged { tier_id, price } => {
            let updated = tx
                .execute(
                    "UPDATE sales_tier_prices SET price_minor = $3 WHERE show_id = $1 AND tier = $2",
                    &[show.into(), tier_id.clone().into(), price.0.into()],
                )
                .await?;
            expect_one(event, updated, || {
                format!("price of unknown tier {tier_id}")
            })?;
        }
        _ => {}
    }
    Ok(())
}

/// The tier of a row of seats (or of a GA section, `row` empty) and its current price.
async fn tier_of(
    tx: &mut Tx,
    event: &RecordedEvent,
    show: &str,
    section: &str,
    row: &str,
) -> Result<(String, i64), ProjectionError> {
    let found = tx
        .fetch_optional(
            "SELECT t.tier, p.price_minor FROM sales_tiers t
             JOIN sales_tier_prices p ON p.show_id = t.show_id AND p.tier = t.tier
             WHERE t.show_id = $1 AND t.section = $2 AND t.row_label = $3",
            &[show.into(), section.into(), row.into()],
        )
        .await?;
    let Some(found) = found else {
        return Err(inconsistent(
            event,
            format!("section {section} row {row:?} is not in the layout of show {show}"),
        ));
    };
    Ok((found.text("tier")?, found.int("price_minor")?))
}

/// Adds to one `sales` bucket.
async fn add_sales(
    tx: &mut Tx,
    key: [Param; 5],
    sold: i64,
    revenue: i64,
    refunded: i64,
    refunds: i64,
) -> Result<(), sqlx::Error> {
    let [show, tier, section, hour, currency] = key;
    tx.execute(
        "INSERT INTO sales (show_id, tier, section, hour, currency, tickets_sold, revenue_minor,
                            tickets_refunded, refunds_minor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (show_id, tier, section, hour) DO UPDATE SET
             tickets_sold = sales.tickets_sold + excluded.tickets_sold,
             revenue_minor = sales.revenue_minor + excluded.revenue_minor,
             tickets_refunded = sales.tickets_refunded + excluded.tickets_refunded,
             refunds_minor = sales.refunds_minor + excluded.refunds_minor",
        &[
            show,
            tier,
            section,
            hour,
            currency,
            sold.into(),
            revenue.into(),
            refunded.into(),
            refunds.into(),
        ],
    )
    .await?;
    Ok(())
}

struct Item {
    show: String,
    section: String,
    tier: String,
    quantity: i64,
    amount: i64,
    currency: String,
}

async fn items_of(
    tx: &mut Tx,
    event: &RecordedEvent,
    reservation: &str,
) -> Result<Vec<Item>, ProjectionError> {
    let rows = tx
        .fetch_all(
            "SELECT show_id, section, tier, quantity, amount_minor, currency
             FROM sales_reservation_items WHERE reservation_id = $1 ORDER BY section, tier",
            &[reservation.into()],
        )
        .await?;
    if rows.is_empty() {
        return Err(inconsistent(
            event,
            format!("reservation {reservation} was never placed"),
        ));
    }
    rows.iter()
        .map(|r| {
            Ok(Item {
                show: r.text("show_id")?,
                section: r.text("section")?,
                tier: r.text("tier")?,
                quantity: r.int("quantity")?,
                amount: r.int("amount_minor")?,
                currency: r.text("currency")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(ProjectionError::from)
}

async fn apply_reservation(
    tx: &mut Tx,
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
            // (section, tier) -> (quantity, list amount)
            let mut items: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
            if let Some(section) = section {
                let (tier, price) = tier_of(tx, event, &show, &section, "").await?;
                let quantity = i64::from(quantity);
                items.insert((section, tier), (quantity, price * quantity));
            } else {
                // Seats of one row share a tier: look each row up once.
                let mut rows: BTreeMap<(String, String), i64> = BTreeMap::new();
                for seat in &seats {
                    let Some((section, row, _)) = split_seat_id(seat) else {
                        return Err(inconsistent(event, format!("malformed seat id {seat:?}")));
                    };
                    *rows.entry((section.into(), row.into())).or_default() += 1;
                }
                for ((section, row), count) in rows {
                    let (tier, price) = tier_of(tx, event, &show, &section, &row).await?;
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
            let rows = items
                .into_iter()
                .zip(shares)
                .map(|(((section, tier), (quantity, _)), share)| {
                    vec![
                        rsv.clone().into(),
                        show.clone().into(),
                        section.into(),
                        tier.into(),
                        quantity.into(),
                        share.into(),
                        currency.clone().into(),
                    ]
                })
                .collect();
            insert_rows(
                tx,
                "sales_reservation_items",
                &[
                    "reservation_id",
                    "show_id",
                    "section",
                    "tier",
                    "quantity",
                    "amount_minor",
                    "currency",
                ],
                rows,
            )
            .await?;
        }
        ReservationEvent::TicketsIssued { .. } => {
            let hour = hour_of(event.recorded_at);
            for item in items_of(tx, event, &rsv).await? {
                let key = [
                    item.show.into(),
                    item.tier.into(),
                    item.section.into(),
                    hour.into(),
                    item.currency.into(),
                ];
                add_sales(tx, key, item.quantity, item.amount, 0, 0).await?;
            }
        }
        ReservationEvent::RefundIssued { amount, .. } => {
            let hour = hour_of(event.recorded_at);
            let items = items_of(tx, event, &rsv).await?;
            let weights: Vec<i64> = items.iter().map(|i| i.amount.max(0)).collect();
            let shares = split_amount(amount.0, &weights);
            for (item, share) in items.into_iter().zip(shares) {
                let key = [
                    item.show.into(),
                    item.tier.into(),
                    item.section.into(),
                    hour.into(),
                    item.currency.into(),
                ];
                add_sales(tx, key, 0, 0, item.quantity, share).await?;
            }
        }
        _ => {}
    }
    Ok(())
}
