//! Request rate limits against abuse (OWASP API's "unrestricted access to sensitive
//! business flows": scalping bots, hold-hoarding): per user (by the token's subject) and
//! per client IP, each a token bucket. Over a limit the answer is 429 `rate_limited`
//! with `Retry-After`. Holds have their own limits in the domain (seats per hold,
//! tickets per user, active holds per user), enforced atomically by the write engine.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// How often forgotten keys are dropped from the limiters' tables.
pub const LIMITER_SWEEP_INTERVAL_MS: u64 = 60_000;

/// Limits, in requests per second with a burst of twice that; 0 turns one off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub per_user_per_second: u32,
    pub per_ip_per_second: u32,
}

pub struct Limiters {
    per_user: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Made once: making one calibrates it (cpuid and a timing loop), measured at about
    /// 4% of the server's CPU when it was made per request.
    clock: DefaultClock,
}

fn quota(per_second: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(2)).expect("non-zero");
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl Limiters {
    pub fn new(limits: RateLimits) -> Arc<Self> {
        Arc::new(Self {
            per_user: quota(limits.per_user_per_second).map(RateLimiter::keyed),
            per_ip: quota(limits.per_ip_per_second).map(RateLimiter::keyed),
            clock: DefaultClock::default(),
        })
    }

    /// Drops idle keys now and then so the tables stay small.
    pub async fn sweep(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(LIMITER_SWEEP_INTERVAL_MS)) => {}
                _ = stop.changed() => return,
            }
            if let Some(l) = &self.per_user {
                l.retain_recent();
            }
            if let Some(l) = &self.per_ip {
                l.retain_recent();
            }
        }
    }
}

fn limited(wait: Duration) -> Response {
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; slow down",
    );
    error.retry_after_seconds = Some(wait.as_secs_f64().ceil().max(1.0) as u32);
    error.into_response()
}

/// Checks the client's IP, then (for a request with a valid token) its user.
pub async fn layer(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let limiters = &app.limiters;
    let clock = &limiters.clock;
    if let Some(per_ip) = &limiters.per_ip
        && let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>()
        && let Err(not_until) = per_ip.check_key(&addr.ip())
    {
        return limited(not_until.wait_time_from(clock.now()));
    }
    let Some(per_user) = &limiters.per_user else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    if let Ok(caller) = Caller::from_request_parts(&mut parts, &app).await
        && let Err(not_until) = per_user.check_key(&caller.user_id.to_string())
    {
        return limited(not_until.wait_time_from(clock.now()));
    }
    next.run(Request::from_parts(parts, body)).await
}
