//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use boxoffice_commands::Engine;
use boxoffice_store::idempotency::IdempotencyKeys;
use boxoffice_store::users::UserDirectory;

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::seatmap::SeatMaps;

#[derive(Clone)]
pub struct AppState {
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
}
