//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use boxoffice_commands::Engine;
use boxoffice_projections::{NotificationsView, OrdersView, ProjectorHandle, SalesView};
use boxoffice_sagas::inbox::WebhookInbox;
use boxoffice_sagas::saga::PaymentSaga;
use boxoffice_store::idempotency::IdempotencyKeys;
use boxoffice_store::users::UserDirectory;

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::seatmap::SeatMaps;

/// What every handler shares, behind one `Arc`: axum clones the state for each
/// extractor and layer of every request, and one reference count is cheaper than a
/// dozen, and than the read views' vectors the fields would copy.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    pub engine: Arc<Engine>,
    pub seatmaps: Arc<SeatMaps>,
    pub users: Arc<UserDirectory>,
    pub auth: Arc<Auth>,
    pub idempotency: Arc<IdempotencyKeys>,
    pub limiters: Arc<crate::limits::Limiters>,
    /// True once the write side has loaded and the read model caught up; false again
    /// while shutting down.
    pub ready: Arc<AtomicBool>,
    /// This server's own metrics recorder (see `metrics` for why it is not global).
    pub metrics: Metrics,
    pub payments: Payments,
    pub reads: Reads,
    /// The seat-map page's files.
    pub web: crate::web::SharedAssets,
    /// Sends requests about shows other nodes own to them; `None` on a single node.
    pub forwarder: Option<crate::cluster::Forwarder>,
}

/// The payment side: the saga, the webhook inbox and the webhook signing secret.
#[derive(Clone)]
pub struct Payments {
    pub saga: Arc<PaymentSaga>,
    pub inbox: WebhookInbox,
    pub webhook_secret: Arc<[u8]>,
}

/// The read models the API serves from, with their projectors' positions so a handler
/// can wait until they reflect a write.
#[derive(Clone)]
pub struct Reads {
    pub orders: OrdersView,
    pub notifications: NotificationsView,
    /// The projections each view reads (a view may join several read models).
    pub orders_at: Vec<ProjectorHandle>,
    pub notifications_at: Vec<ProjectorHandle>,
    pub sales: SalesView,
    pub sales_at: Vec<ProjectorHandle>,
}
