//! The orders read model: one row per order (created by `TicketsIssued`, refunded by
//! `RefundIssued`) and one per ticket, for `GET /v1/orders` and `GET /v1/orders/{id}`.
//!
//! `TicketsIssued` names only the reservation, so the projection remembers every
//! `ReservationPlaced` (buyer, show, currency, total) and `PaymentCaptured` (amount and
//! time) in `orders_reservations`. An order's `paid_at` is when the payment was captured
//! (the `recorded_at` of `PaymentCaptured`), falling back to the `TicketsIssued` event's
//! if the capture is not in the log; its total is the captured amount, falling back to
//! the reservation's total.
//!
//! Lists are newest first: by the log position of the `TicketsIssued` event, then order
//! id, with an opaque cursor over that key (see `cursor.rs`).

use async_trait::async_trait;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::{DomainEvent, Minor, OrderId, ReservationId, ShowId, TicketId, UserId};
use boxoffice_store::RecordedEvent;
use boxoffice_store::tables::TablePool;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ViewError;
use crate::cursor::Cursor;
use crate::db::{self, DbRow, Param, Tx, placeholders, position_param};
use crate::rows::{Kind, Record, Rows, Table, write_rows};
use crate::runtime::{Projection, ProjectionError, decode_wanted};

pub const NAME: &str = "orders";
pub const VERSION: u32 = 1;

/// Most orders one list call returns.
pub const PAGE_LIMIT_MAX: usize = 100;

const TYPES: [&str; 4] = [
    "ReservationPlaced",
    "PaymentCaptured",
    "TicketsIssued",
    "RefundIssued",
];

/// Keeps `orders`, `tickets` and its helper `orders_reservations`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrdersProjection;

fn inconsistent(event: &RecordedEvent, reason: impl Into<String>) -> ProjectionError {
    ProjectionError::Inconsistent {
        position: event.position,
        reason: reason.into(),
    }
}

/// The show an event belongs to: its partition key.
pub(crate) fn show_of(event: &RecordedEvent) -> Result<ShowId, ProjectionError> {
    event
        .partition_key
        .parse()
        .map_err(|_| inconsistent(event, "partition key is not a show id"))
}

static RESERVATIONS: Table = Table {
    name: "orders_reservations",
    columns: &[
        ("reservation_id", Kind::Text),
        ("show_id", Kind::Text),
        ("user_id", Kind::Text),
        ("currency", Kind::Text),
        ("total_minor", Kind::Int),
        ("captured_minor", Kind::OptInt),
        ("captured_at", Kind::OptTime),
    ],
    key: 1,
};

static ORDERS: Table = Table {
    name: "orders",
    columns: &[
        ("order_id", Kind::Text),
        ("reservation_id", Kind::Text),
        ("show_id", Kind::Text),
        ("user_id", Kind::Text),
        ("status", Kind::Text),
        ("total_minor", Kind::Int),
        ("currency", Kind::Text),
        ("paid_at", Kind::Time),
        ("refunded_at", Kind::OptTime),
        ("position", Kind::Int),
    ],
    key: 1,
};

const TICKET_COLUMNS: [&str; 8] = [
    "ticket_id",
    "order_id",
    "show_id",
    "reservation_id",
    "seat",
    "section",
    "code",
    "ordinal",
];

/// The rows one batch works on; tickets are only ever added.
struct Batch {
    reservations: Rows,
    orders: Rows,
    tickets: Vec<Vec<Param>>,
}

#[async_trait]
impl Projection for OrdersProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tickets", "orders", "orders_reservations"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&TYPES)
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let mut decoded = Vec::new();
        let (mut reservations, mut orders) = (Vec::new(), Vec::new());
        for event in events {
            let Some(DomainEvent::Reservation(e)) = decode_wanted(event, &TYPES)? else {
                continue;
            };
            match &e {
                ReservationEvent::ReservationPlaced { reservation_id, .. }
                | ReservationEvent::PaymentCaptured { reservation_id, .. } => {
                    reservations.push(vec![reservation_id.to_string()]);
                }
                ReservationEvent::TicketsIssued {
                    reservation_id,
                    order_id,
                    ..
                } => {
                    reservations.push(vec![reservation_id.to_string()]);
                    orders.push(vec![order_id.to_string()]);
                }
                ReservationEvent::RefundIssued { order_id, .. } => {
                    orders.push(vec![order_id.to_string()]);
                }
                _ => continue,
            }
            decoded.push((event, e));
        }
        if decoded.is_empty() {
            return Ok(());
        }
        let mut batch = Batch {
            reservations: Rows::new(&RESERVATIONS),
            orders: Rows::new(&ORDERS),
            tickets: Vec::new(),
        };
        batch.reservations.load(tx, reservations).await?;
        batch.orders.load(tx, orders).await?;
        for (event, e) in decoded {
            apply_one(&mut batch, event, e)?;
        }
        batch.reservations.flush(tx).await?;
        // Tickets refer to their order.
        batch.orders.flush(tx).await?;
        write_rows(tx, "tickets", &TICKET_COLUMNS, batch.tickets, "").await?;
        Ok(())
    }
}

fn apply_one(
    batch: &mut Batch,
    event: &RecordedEvent,
    e: ReservationEvent,
) -> Result<(), ProjectionError> {
    match e {
        ReservationEvent::ReservationPlaced {
            reservation_id,
            user_id,
            total,
            currency,
            ..
        } => {
            let show = show_of(event)?;
            let added = batch.reservations.insert(Record::new(
                &RESERVATIONS,
                vec![
                    reservation_id.to_string().into(),
                    show.to_string().into(),
                    user_id.to_string().into(),
                    currency.into(),
                    total.0.into(),
                    Param::OptInt(None),
                    Param::OptTime(None),
                ],
            ));
            if !added {
                return Err(inconsistent(
                    event,
                    format!("reservation {reservation_id} placed twice"),
                ));
            }
        }
        ReservationEvent::PaymentCaptured {
            reservation_id,
            amount,
            ..
        } => {
            let Some(row) = batch.reservations.get_mut(&[reservation_id.to_string()]) else {
                return Err(inconsistent(
                    event,
                    format!("payment captured for {reservation_id}, which was never placed"),
                ));
            };
            row.set("captured_minor", amount.0);
            row.set("captured_at", event.recorded_at);
        }
        ReservationEvent::TicketsIssued {
            reservation_id,
            order_id,
            tickets,
            ..
        } => {
            let row = batch
                .reservations
                .get(&[reservation_id.to_string()])
                .ok_or_else(|| {
                    inconsistent(
                        event,
                        format!("tickets issued for {reservation_id}, which was never placed"),
                    )
                })?;
            let show_id = row.text("show_id").to_owned();
            let total = row
                .opt_int("captured_minor")
                .unwrap_or(row.int("total_minor"));
            let paid_at = row.opt_time("captured_at").unwrap_or(event.recorded_at);
            let order = Record::new(
                &ORDERS,
                vec![
                    order_id.to_string().into(),
                    reservation_id.to_string().into(),
                    show_id.clone().into(),
                    row.text("user_id").into(),
                    "paid".into(),
                    total.into(),
                    row.text("currency").into(),
                    paid_at.into(),
                    Param::OptTime(None),
                    position_param(event.position),
                ],
            );
            if !batch.orders.insert(order) {
                return Err(inconsistent(
                    event,
                    format!("order {order_id} issued twice"),
                ));
            }
            for (ordinal, ticket) in tickets.iter().enumerate() {
                batch.tickets.push(vec![
                    ticket.ticket_id.to_string().into(),
                    order_id.to_string().into(),
                    show_id.clone().into(),
                    reservation_id.to_string().into(),
                    ticket.seat.clone().into(),
                    ticket.section.clone().into(),
                    ticket.code.clone().into(),
                    (ordinal as i64).into(),
                ]);
            }
        }
        ReservationEvent::RefundIssued { order_id, .. } => {
            match batch.orders.get_mut(&[order_id.to_string()]) {
                Some(row) if row.text("status") == "paid" => {
                    row.set("status", "refunded");
                    row.set("refunded_at", event.recorded_at);
                }
                _ => {
                    return Err(inconsistent(
                        event,
                        format!("refund of {order_id}, which is not a paid order"),
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Paid,
    Refunded,
}

impl OrderStatus {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "paid" => Some(OrderStatus::Paid),
            "refunded" => Some(OrderStatus::Refunded),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRow {
    pub ticket_id: TicketId,
    pub seat: Option<String>,
    pub section: Option<String>,
    /// The unguessable secret a scanner verifies.
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: OrderId,
    pub reservation_id: ReservationId,
    pub show_id: ShowId,
    pub user_id: UserId,
    pub status: OrderStatus,
    /// In minor units of `currency`.
    pub total: Minor,
    pub currency: String,
    pub paid_at: DateTime<Utc>,
    pub refunded_at: Option<DateTime<Utc>>,
    /// In the order they were issued.
    pub tickets: Vec<TicketRow>,
}

/// Which orders a list returns; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub user_id: Option<UserId>,
    pub show_id: Option<ShowId>,
}

/// Reads the orders read model.
#[derive(Clone)]
pub struct OrdersView {
    pool: TablePool,
}

const ORDER_COLUMNS: &str = "order_id, reservation_id, show_id, user_id, status, total_minor, currency, paid_at, refunded_at, position";

fn parse_id<T: std::str::FromStr>(row: &DbRow, column: &str) -> Result<T, ViewError> {
    let text = row.text(column)?;
    text.parse()
        .map_err(|_| ViewError::Corrupt(format!("{column} {text:?} is not a valid id")))
}

/// An order row without its tickets, and its list key.
fn decode_order(row: &DbRow) -> Result<(Order, u64), ViewError> {
    let status = row.text("status")?;
    let order = Order {
        order_id: parse_id(row, "order_id")?,
        reservation_id: parse_id(row, "reservation_id")?,
        show_id: parse_id(row, "show_id")?,
        user_id: parse_id(row, "user_id")?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| ViewError::Corrupt(format!("order status {status:?}")))?,
        total: Minor(row.int("total_minor")?),
        currency: row.text("currency")?,
        paid_at: row.time("paid_at")?,
        refunded_at: row.opt_time("refunded_at")?,
        tickets: Vec::new(),
    };
    Ok((order, row.position("position")?))
}

impl OrdersView {
    pub fn new(pool: TablePool) -> Self {
        Self { pool }
    }

    pub async fn get(&self, order_id: OrderId) -> Result<Option<Order>, ViewError> {
        let row = db::fetch_optional(
            &self.pool,
            &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1"),
            &[order_id.to_string().into()],
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (order, _) = decode_order(&row)?;
        let mut orders = vec![order];
        self.attach_tickets(&mut orders).await?;
        Ok(orders.pop())
    }

    /// A page of orders, newest first, after the row named by `after_cursor`, and the
    /// cursor of the next page if there is one. `limit` is capped at [`PAGE_LIMIT_MAX`]
    /// (and at least 1).
    pub async fn list(
        &self,
        filter: &OrderFilter,
        after_cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Order>, Option<String>), ViewError> {
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let mut conditions = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        if let Some(user_id) = filter.user_id {
            params.push(user_id.to_string().into());
            conditions.push(format!("user_id = ${}", params.len()));
        }
        if let Some(show_id) = filter.show_id {
            params.push(show_id.to_string().into());
            conditions.push(format!("show_id = ${}", params.len()));
        }
        if let Some(text) = after_cursor {
            let cursor = Cursor::decode(text).ok_or(ViewError::InvalidCursor)?;
            params.push(position_param(cursor.position));
            let p = params.len();
            params.push(cursor.id.into());
            let id = params.len();
            conditions.push(format!(
                "(position < ${p} OR (position = ${p} AND order_id < ${id}))"
            ));
        }
        // One row more than asked says whether another page follows.
        params.push(((limit + 1) as i64).into());
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders {where_clause}
             ORDER BY position DESC, order_id DESC LIMIT ${}",
            params.len()
        );
        let rows = db::fetch_all(&self.pool, &sql, &params).await?;
        let mut orders = Vec::with_capacity(limit);
        let mut next = None;
        for (index, row) in rows.iter().enumerate() {
            let (order, position) = decode_order(row)?;
            if index == limit {
                break;
            }
            if index + 1 == limit && rows.len() > limit {
                next = Some(
                    Cursor {
                        position,
                        id: order.order_id.to_string(),
                    }
                    .encode(),
                );
            }
            orders.push(order);
        }
        self.attach_tickets(&mut orders).await?;
        Ok((orders, next))
    }

    async fn attach_tickets(&self, orders: &mut [Order]) -> Result<(), ViewError> {
        if orders.is_empty() {
            return Ok(());
        }
        let params: Vec<Param> = orders
            .iter()
            .map(|o| o.order_id.to_string().into())
            .collect();
        let sql = format!(
            "SELECT order_id, ticket_id, seat, section, code FROM tickets
             WHERE order_id IN ({}) ORDER BY order_id, ordinal",
            placeholders(1, params.len())
        );
        for row in db::fetch_all(&self.pool, &sql, &params).await? {
            let order_id: OrderId = parse_id(&row, "order_id")?;
            let ticket = TicketRow {
                ticket_id: parse_id(&row, "ticket_id")?,
                seat: row.opt_text("seat")?,
                section: row.opt_text("section")?,
                code: row.text("code")?,
            };
            let order = orders
                .iter_mut()
                .find(|o| o.order_id == order_id)
                .expect("tickets were selected by these orders' ids");
            order.tickets.push(ticket);
        }
        Ok(())
    }
}
