//! Boxoffice's read side: the projector runtime and the read models it keeps in the side
//! tables next to the event log, and the delivery of notifications.
//!
//! - [`runtime`]: runs each [`Projection`] as a task that follows the global log and
//!   commits its rows and its checkpoint together.
//! - [`orders`]: orders and tickets, for `/v1/orders`.
//! - [`analytics`]: the analysts' read models (seat map, reservations, sales, waiting
//!   list, audit log) and [`SalesView`], the per-show sales report.
//! - [`rebuild`]: rebuilding a projection from the start of the log beside its tables and
//!   swapping the result in (on a version change, or on demand).
//! - [`notifications`]: per-user notifications and their outbox, for
//!   `/v1/me/notifications`; [`delivery`] sends them by email file and webhook.
//!
//! A server starts everything with [`ReadSide::start`] and reads through
//! [`ReadSide::orders`] and [`ReadSide::notifications`]; after a command it can wait for
//! the read model to reach the command's log position with
//! [`ProjectorHandle::wait_for`].

use std::sync::Arc;

use boxoffice_domain::Clock;
use boxoffice_store::EventStore;
use boxoffice_store::tables::TablePool;

pub mod analytics;
mod cursor;
pub mod db;
pub mod delivery;
pub mod notifications;
pub mod orders;
pub mod rebuild;
mod rows;
pub mod runtime;
mod shadow;

pub use analytics::audit::AuditLogProjection;
pub use analytics::reservations::ReservationsProjection;
pub use analytics::sales::SalesProjection;
pub use analytics::seat_map::SeatMapProjection;
pub use analytics::waitlist::WaitlistProjection;
pub use analytics::{HoldStats, SalesLine, SalesView, ShowSales, WaitlistStats};
pub use rebuild::{DriftReport, RebuildReport, compare_with_replay, rebuild_projection};
pub use shadow::TableDrift;

pub use delivery::{DeliveryConfig, DeliveryWorker, NotifyConfig, NotifyConfigError};
pub use notifications::{
    Notification, NotificationKind, NotificationsProjection, NotificationsView, UserWebhook,
};
pub use orders::{Order, OrderFilter, OrderStatus, OrdersProjection, OrdersView, TicketRow};
pub use runtime::{
    Checkpoint, Projection, ProjectionError, Projections, ProjectorHandle, RuntimeConfig,
    load_checkpoint,
};

/// Why a read-model query failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The cursor was not made by this list (the API answers 400/422).
    #[error("invalid cursor")]
    InvalidCursor,
    /// An argument was refused (a malformed webhook URL, …).
    #[error("{0}")]
    Invalid(String),
    /// The database could not be reached or failed; the query may be retried.
    #[error("read model unavailable: {0}")]
    Unavailable(String),
    /// A stored row does not decode.
    #[error("corrupt read-model row: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for ViewError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                ViewError::Corrupt(e.to_string())
            }
            other => ViewError::Unavailable(other.to_string()),
        }
    }
}

/// Everything the read side needs to run.
#[derive(Debug, Clone, Default)]
pub struct ReadSideConfig {
    pub runtime: RuntimeConfig,
    pub notify: NotifyConfig,
    pub delivery: DeliveryConfig,
}

/// The running read side: the orders and notifications projections, the delivery
/// worker, and the views over their tables.
pub struct ReadSide {
    projections: Projections,
    delivery: DeliveryWorker,
    orders: OrdersView,
    notifications: NotificationsView,
    sales: SalesView,
}

/// Every projection the server runs, in start order: what [`ReadSide::start`] starts and
/// what `boxctl rebuild` can rebuild by name.
pub fn all_projections(notify: &NotifyConfig) -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(OrdersProjection),
        Arc::new(NotificationsProjection::new(notify)),
        Arc::new(SeatMapProjection),
        Arc::new(ReservationsProjection),
        Arc::new(SalesProjection),
        Arc::new(WaitlistProjection),
        Arc::new(AuditLogProjection),
    ]
}

impl ReadSide {
    /// Starts the projections (each catches up from its checkpoint, then follows the
    /// log) and the delivery worker. `pool` must be on the store's database, whose
    /// connect has applied the migrations. Fails only on a bad notification config.
    pub fn start(
        store: Arc<dyn EventStore>,
        pool: TablePool,
        config: ReadSideConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NotifyConfigError> {
        config.notify.validate()?;
        let projections = all_projections(&config.notify);
        let projections = Projections::start(store, pool.clone(), projections, config.runtime);
        let wake = projections
            .get(notifications::NAME)
            .expect("started above")
            .subscribe();
        let delivery = DeliveryWorker::start(
            pool.clone(),
            config.notify,
            config.delivery,
            clock,
            Some(wake),
        )?;
        Ok(Self {
            projections,
            delivery,
            orders: OrdersView::new(pool.clone()),
            notifications: NotificationsView::new(pool.clone()),
            sales: SalesView::new(pool),
        })
    }

    pub fn orders(&self) -> &OrdersView {
        &self.orders
    }

    pub fn notifications(&self) -> &NotificationsView {
        &self.notifications
    }

    /// The per-show sales report (`GET /v1/shows/{show_id}/sales`).
    pub fn sales(&self) -> &SalesView {
        &self.sales
    }

    /// The projections the sales report reads: sales, and the reservations and waitlist
    /// projections for its hold funnel and waitlist figures. A client reading its writes
    /// waits for all three.
    pub fn sales_projectors(&self) -> Vec<ProjectorHandle> {
        [
            analytics::sales::NAME,
            analytics::reservations::NAME,
            analytics::waitlist::NAME,
        ]
        .into_iter()
        .map(|name| {
            self.projections
                .get(name)
                .expect("the sales report's projections run")
                .clone()
        })
        .collect()
    }

    /// The orders projection's position, for reading one's own writes.
    pub fn orders_projector(&self) -> &ProjectorHandle {
        self.projections
            .get(orders::NAME)
            .expect("the orders projection runs")
    }

    /// The notifications projection's position.
    pub fn notifications_projector(&self) -> &ProjectorHandle {
        self.projections
            .get(notifications::NAME)
            .expect("the notifications projection runs")
    }

    pub fn projections(&self) -> &Projections {
        &self.projections
    }

    /// Stops the projections and the delivery worker and waits for them.
    pub async fn shutdown(self) {
        self.delivery.shutdown().await;
        self.projections.shutdown().await;
    }
}
