//! Response bodies, as the contract writes them. Each is a type deriving `ToSchema`, so
//! the OpenAPI document is generated from the very types the handlers serialize and the
//! two cannot drift apart. The enums mirror the domain's with exhaustive conversions: a
//! new domain state does not compile until the API (and so its schema) names it.

use boxoffice_domain::booking::SectionIndex;
use boxoffice_domain::reservation::{
    Items, Origin as DomainOrigin, PaymentStatus as DomainPaymentStatus, Reservation,
    ReservationStatus as DomainReservationStatus,
};
use boxoffice_domain::seat::SeatState;
use boxoffice_domain::show::{SectionLayout, Show, ShowStatus as DomainShowStatus};
use boxoffice_domain::{Minor, ShowState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// An amount of money: a decimal string and an ISO 4217 currency code. Never a float.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"amount": "120.00", "currency": "EUR"}))]
pub struct Money {
    /// A decimal string with two decimals.
    #[schema(example = "120.00")]
    pub amount: String,
    /// An ISO 4217 code.
    #[schema(example = "EUR")]
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

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Held,
    PaymentPending,
    Confirmed,
    Expired,
    Cancelled,
    PaymentFailed,
    Refunded,
}

impl From<DomainReservationStatus> for ReservationStatus {
    fn from(s: DomainReservationStatus) -> Self {
        use DomainReservationStatus as D;
        match s {
            D::Held => Self::Held,
            D::PaymentPending => Self::PaymentPending,
            D::Confirmed => Self::Confirmed,
            D::Expired => Self::Expired,
            D::Cancelled => Self::Cancelled,
            D::PaymentFailed => Self::PaymentFailed,
            D::Refunded => Self::Refunded,
        }
    }
}

/// How a reservation came about: the buyer's own hold, or a waitlist offer.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Direct,
    Waitlist,
}

impl From<DomainOrigin> for Origin {
    fn from(o: DomainOrigin) -> Self {
        match o {
            DomainOrigin::Direct => Self::Direct,
            DomainOrigin::Waitlist => Self::Waitlist,
        }
    }
}

/// Where a reservation's payment stands.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Captured,
    Failed,
    TimedOut,
}

impl From<DomainPaymentStatus> for PaymentStatus {
    fn from(s: DomainPaymentStatus) -> Self {
        use DomainPaymentStatus as D;
        match s {
            D::Pending => Self::Pending,
            D::Captured => Self::Captured,
            D::Failed => Self::Failed,
            D::TimedOut => Self::TimedOut,
        }
    }
}

/// A reservation's payment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Payment {
    #[schema(example = "pay_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub payment_id: String,
    pub status: PaymentStatus,
    /// When the payment must have settled, or the seats are released.
    pub deadline: DateTime<Utc>,
}

/// A reservation: seats (or general-admission places) held, being paid for, bought or
/// released.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReservationView {
    #[schema(example = "rsv_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub reservation_id: String,
    #[schema(example = "shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub show_id: String,
    pub status: ReservationStatus,
    /// The seats, for a seated reservation; empty for general admission.
    #[schema(example = json!(["101-A-1", "101-A-2"]))]
    pub seats: Vec<String>,
    /// The section, for a general-admission reservation (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    /// Seats or places reserved.
    pub quantity: u32,
    /// When the hold lapses unless paid for.
    pub expires_at: DateTime<Utc>,
    pub total: Money,
    #[schema(required = true)]
    pub payment: Option<Payment>,
    #[schema(required = true)]
    pub order_id: Option<String>,
    pub origin: Origin,
    pub created_at: DateTime<Utc>,
}

impl ReservationView {
    pub fn new(r: &Reservation, show_id: &str) -> Self {
        let (seats, section) = match &r.items {
            Items::Seats(seats) => (seats.clone(), None),
            Items::General { section, .. } => (Vec::new(), Some(section.clone())),
        };
        Self {
            reservation_id: r.reservation_id.to_string(),
            show_id: show_id.to_string(),
            status: r.status.into(),
            seats,
            section,
            quantity: r.items.quantity(),
            expires_at: r.expires_at,
            total: Money::new(r.total, &r.currency),
            payment: r.payment.as_ref().map(|p| Payment {
                payment_id: p.payment_id.to_string(),
                status: p.status.into(),
                deadline: p.deadline,
            }),
            order_id: r.order_id.map(|o| o.to_string()),
            origin: r.origin.into(),
            created_at: r.placed_at,
        }
    }
}

/// A reservation as a JSON value, for a handler that adds members of its own.
pub fn reservation(r: &Reservation, show_id: &str) -> Value {
    serde_json::to_value(ReservationView::new(r, show_id)).expect("a reservation serializes")
}

/// Where a show stands for buyers.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShowStatus {
    Scheduled,
    OnSale,
    SoldOut,
    SalesClosed,
    Cancelled,
}

impl From<DomainShowStatus> for ShowStatus {
    fn from(s: DomainShowStatus) -> Self {
        use DomainShowStatus as D;
        match s {
            D::Scheduled => Self::Scheduled,
            D::OnSale => Self::OnSale,
            D::SoldOut => Self::SoldOut,
            D::SalesClosed => Self::SalesClosed,
            D::Cancelled => Self::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SectionKind {
    Seated,
    GeneralAdmission,
}

/// Where a show takes place.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Venue {
    #[schema(example = "Arena")]
    pub name: String,
    #[schema(example = "Lisbon")]
    pub city: String,
    #[schema(example = "PT")]
    pub country: String,
    /// An IANA time zone.
    #[schema(example = "Europe/Lisbon")]
    pub timezone: String,
}

/// A show's limits per buyer and its timers.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Limits {
    pub max_tickets_per_user: u32,
    pub hold_ttl_seconds: u32,
    pub payment_timeout_seconds: u32,
    pub waitlist_claim_seconds: u32,
    pub max_active_holds_per_user: u32,
}

/// A price tier and its current price.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PriceTierView {
    #[schema(example = "A")]
    pub id: String,
    #[schema(example = "Front")]
    pub name: String,
    pub price: Money,
}

/// A section's summary: its size and how much of it is available now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SectionSummary {
    #[schema(example = "101")]
    pub id: String,
    #[schema(example = "Section 101")]
    pub name: String,
    pub kind: SectionKind,
    pub capacity: u32,
    pub available: u32,
}

/// A show (one ticketed event) with its section summaries and status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShowView {
    #[schema(example = "shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub show_id: String,
    #[schema(example = "Night 1")]
    pub name: String,
    pub venue: Venue,
    pub starts_at: DateTime<Utc>,
    #[schema(example = "EUR")]
    pub currency: String,
    #[schema(required = true)]
    pub sales_open_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub sales_close_at: Option<DateTime<Utc>>,
    pub limits: Limits,
    pub price_tiers: Vec<PriceTierView>,
    pub sections: Vec<SectionSummary>,
    pub status: ShowStatus,
    #[schema(example = "usr_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub organizer_id: String,
    /// The show's version: how many changes its stream has. Also the `ETag`; send it as
    /// `If-Match` on `PATCH` to change only the version you read.
    #[schema(example = 1)]
    pub version: u64,
}

impl ShowView {
    /// The show with its section summaries and status at `now`.
    pub fn new(state: &ShowState, show: &Show, now: DateTime<Utc>) -> Self {
        let d = &show.definition;
        let sections = d
            .sections
            .iter()
            .zip(&state.sections)
            .map(|(def, index)| {
                let available = match index {
                    SectionIndex::Seated { rows, .. } => rows
                        .iter()
                        .flat_map(|r| &r.seats)
                        .filter(|&&i| state.seats[i as usize].state.is_available())
                        .count() as u32,
                    SectionIndex::General { id, .. } => state.pools[id].available(),
                };
                let kind = match def.layout {
                    SectionLayout::Seated { .. } => SectionKind::Seated,
                    SectionLayout::GeneralAdmission { .. } => SectionKind::GeneralAdmission,
                };
                SectionSummary {
                    id: def.id.clone(),
                    name: def.name.clone(),
                    kind,
                    capacity: def.capacity(),
                    available,
                }
            })
            .collect();
        let price_tiers = d
            .price_tiers
            .iter()
            .map(|t| PriceTierView {
                id: t.id.clone(),
                name: t.name.clone(),
                price: Money::new(t.price, &d.currency),
            })
            .collect();
        let l = d.limits;
        Self {
            show_id: show.show_id.to_string(),
            name: d.name.clone(),
            venue: Venue {
                name: d.venue.name.clone(),
                city: d.venue.city.clone(),
                country: d.venue.country.clone(),
                timezone: d.venue.timezone.clone(),
            },
            starts_at: d.starts_at,
            currency: d.currency.clone(),
            sales_open_at: d.sales_open_at,
            sales_close_at: d.sales_close_at,
            limits: Limits {
                max_tickets_per_user: l.max_tickets_per_user,
                hold_ttl_seconds: l.hold_ttl_seconds,
                payment_timeout_seconds: l.payment_timeout_seconds,
                waitlist_claim_seconds: l.waitlist_claim_seconds,
                max_active_holds_per_user: l.max_active_holds_per_user,
            },
            price_tiers,
            sections,
            status: show.status(now, state.anything_available()).into(),
            organizer_id: show.organizer_id.to_string(),
            version: show.version,
        }
    }
}

/// A show as a JSON value, for a handler that adds members of its own.
pub fn show(state: &ShowState, show: &Show, now: DateTime<Utc>) -> Value {
    serde_json::to_value(ShowView::new(state, show, now)).expect("a show serializes")
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShowPage {
    pub data: Vec<ShowView>,
    /// Pass as `?cursor=` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A seat's status on the seat map. Whose hold it is is never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeatStatus {
    Available,
    Held,
    Sold,
    Blocked,
}

impl From<&SeatState> for SeatStatus {
    fn from(s: &SeatState) -> Self {
        match s {
            SeatState::Available => Self::Available,
            SeatState::Held { .. } => Self::Held,
            SeatState::Sold { .. } => Self::Sold,
            SeatState::Blocked => Self::Blocked,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeatView {
    #[schema(example = "101-A-1")]
    pub id: String,
    pub status: SeatStatus,
    #[schema(example = "A")]
    pub tier: String,
    pub price: Money,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RowView {
    #[schema(example = "A")]
    pub row: String,
    pub seats: Vec<SeatView>,
}

/// A section of the seat map: every seat of a seated section, or the counts of a
/// general-admission one.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SeatmapSection {
    Seated {
        id: String,
        rows: Vec<RowView>,
    },
    GeneralAdmission {
        id: String,
        capacity: u32,
        available: u32,
        tier: String,
        price: Money,
    },
}

/// The seat map of a show at a position of the event log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeatmapView {
    #[schema(example = "shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub show_id: String,
    /// The event-log position the map reflects (also its `ETag`).
    pub position: u64,
    pub sections: Vec<SeatmapSection>,
}

impl SeatmapView {
    /// Every seat with its status, tier and price; GA sections with counts.
    pub fn new(state: &ShowState, show: &Show, position: u64) -> Self {
        let d = &show.definition;
        let prices: Vec<Money> = d
            .price_tiers
            .iter()
            .map(|t| Money::new(t.price, &d.currency))
            .collect();
        let sections = state
            .sections
            .iter()
            .map(|index| match index {
                SectionIndex::Seated { id, rows } => SeatmapSection::Seated {
                    id: id.clone(),
                    rows: rows
                        .iter()
                        .map(|row| RowView {
                            row: row.label.clone(),
                            seats: row
                                .seats
                                .iter()
                                .map(|&i| {
                                    let slot = &state.seats[i as usize];
                                    SeatView {
                                        id: slot.id.clone(),
                                        status: (&slot.state).into(),
                                        tier: d.price_tiers[slot.tier].id.clone(),
                                        price: prices[slot.tier].clone(),
                                    }
                                })
                                .collect(),
                        })
                        .collect(),
                },
                SectionIndex::General { id, tier } => {
                    let pool = &state.pools[id];
                    SeatmapSection::GeneralAdmission {
                        id: id.clone(),
                        capacity: pool.capacity,
                        available: pool.available(),
                        tier: d.price_tiers[*tier].id.clone(),
                        price: prices[*tier].clone(),
                    }
                }
            })
            .collect();
        Self {
            show_id: show.show_id.to_string(),
            position,
            sections,
        }
    }
}

/// The seat map as a JSON value.
pub fn seatmap(state: &ShowState, show: &Show, position: u64) -> Value {
    serde_json::to_value(SeatmapView::new(state, show, position)).expect("a seat map serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seat map reports the same status names the live stream sends (which come
    /// from the domain's `status_name`), so a client can apply one to the other.
    #[test]
    fn seat_statuses_match_the_domain_names() {
        let id = boxoffice_domain::ReservationId(uuid::Uuid::now_v7());
        let until = Utc::now();
        for state in [
            SeatState::Available,
            SeatState::Held {
                reservation_id: id,
                until,
            },
            SeatState::Sold {
                reservation_id: id,
                order_id: boxoffice_domain::OrderId(uuid::Uuid::now_v7()),
            },
            SeatState::Blocked,
        ] {
            let ours = serde_json::to_value(SeatStatus::from(&state)).unwrap();
            assert_eq!(ours, state.status_name(), "{state:?}");
        }
    }
}

/// Whether an order is paid or was refunded.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Paid,
    Refunded,
}

/// One ticket of an order: a seat, or a place in a general-admission section.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TicketView {
    #[schema(example = "tkt_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub ticket_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "101-A-1")]
    pub seat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    /// The ticket's secret: unguessable, what a scanner verifies (show it as a QR code).
    pub code: String,
}

/// A paid (or refunded) reservation and its tickets.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    #[schema(example = "ord_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub order_id: String,
    pub reservation_id: String,
    pub show_id: String,
    pub status: OrderStatus,
    pub total: Money,
    pub paid_at: DateTime<Utc>,
    #[schema(required = true)]
    pub refunded_at: Option<DateTime<Utc>>,
    pub tickets: Vec<TicketView>,
}

impl OrderView {
    pub fn new(order: &boxoffice_projections::Order) -> Self {
        Self {
            order_id: order.order_id.to_string(),
            reservation_id: order.reservation_id.to_string(),
            show_id: order.show_id.to_string(),
            status: match order.status {
                boxoffice_projections::OrderStatus::Paid => OrderStatus::Paid,
                boxoffice_projections::OrderStatus::Refunded => OrderStatus::Refunded,
            },
            total: Money::new(order.total, &order.currency),
            paid_at: order.paid_at,
            refunded_at: order.refunded_at,
            tickets: order
                .tickets
                .iter()
                .map(|t| TicketView {
                    ticket_id: t.ticket_id.to_string(),
                    seat: t.seat.clone(),
                    section: t.section.clone(),
                    code: t.code.clone(),
                })
                .collect(),
        }
    }
}

/// One page of orders.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderPage {
    pub data: Vec<OrderView>,
    /// Pass as `?cursor=` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Something that happened to the caller: `waitlist_offer`, `order_confirmed`,
/// `order_refunded`, `hold_expired`, `payment_failed`, `payment_timed_out`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationView {
    #[schema(example = "ntf_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub id: String,
    #[schema(example = "waitlist_offer")]
    pub kind: String,
    pub created_at: DateTime<Utc>,
    /// What the notification is about (ids, seats, deadlines), by kind.
    pub data: Value,
}

/// One page of notifications, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationPage {
    pub data: Vec<NotificationView>,
    /// Pass as `?cursor=` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}
