//! Checkout: start the payment of a held reservation and wait a little for it to settle.
//!
//! `PaymentStarted` is appended first; the payment saga then talks to the provider. The
//! answer is 200 when the payment settled within `wait_seconds` (tickets issued), 402
//! when it was declined (the seats are released), and 202 while it is still pending: the
//! client follows `GET /v1/reservations/{id}`.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use boxoffice_commands::CommandMeta;
use boxoffice_domain::reservation::ReservationStatus;
use boxoffice_domain::{Command, PaymentId, ReservationId, ShowId};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use validator::Validate;

use crate::auth::{Caller, Role, validation_error};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::openapi::Problem;
use crate::reservations::ReservationPath;
use crate::state::AppState;
use crate::views::ReservationView;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(checkout))
}

/// Default and longest wait for the payment to settle.
pub const WAIT_SECONDS_DEFAULT: u64 = 5;
pub const WAIT_SECONDS_MAX: u64 = 30;

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[schema(example = json!({"payment_token": "tok_visa"}))]
pub struct CheckoutBody {
    /// A payment method token from the provider (test tokens: `tok_visa`,
    /// `tok_declined`, `tok_timeout`, `tok_late_visa`, `tok_dup_visa`).
    #[validate(length(min = 1, max = 200))]
    pub payment_token: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckoutParams {
    /// How long to wait for the payment to settle (default 5, at most 30 seconds).
    #[param(minimum = 0, maximum = 30, default = 5)]
    pub wait_seconds: Option<u64>,
}

/// The caller's own reservation; another buyer's is "not found", and staff who may read
/// it may still not pay for it.
async fn own_reservation(
    app: &AppState,
    caller: &Caller,
    raw: &str,
) -> ApiResult<(ShowId, ReservationId)> {
    let not_found = || ApiError::not_found("reservation_not_found", "reservation");
    let id: ReservationId = raw.parse().map_err(|_| not_found())?;
    let show = crate::cluster::show_of(app, id.0)
        .await
        .ok_or_else(not_found)?;
    let owner = app
        .engine
        .reservation(show, id)
        .await?
        .map(|r| r.user_id)
        .ok_or_else(not_found)?;
    if owner != caller.user_id {
        if caller.has(Role::Support) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the buyer who holds a reservation can pay for it",
            ));
        }
        return Err(not_found());
    }
    Ok((show, id))
}

/// Check out a reservation
///
/// Pays for the caller's held reservation with a payment token. 200 when the payment
/// settled within `wait_seconds` (tickets issued, `order_id` set), 202 while it is still
/// pending (follow the reservation), 402 when it was declined or could not complete
/// before its deadline (the seats are released).
#[utoipa::path(
    post,
    path = "/v1/reservations/{reservation_id}/checkout",
    tag = "reservations",
    params(ReservationPath, CheckoutParams),
    request_body = CheckoutBody,
    security(("bearer_auth" = [])),
    extensions(
        ("x-roles" = json!(["buyer"])),
        ("x-forbidden-roles" = json!(["support", "admin"]))
    ),
    responses(
        (status = 200, description = "Paid: the reservation is confirmed.", body = ReservationView),
        (status = 202, description = "The payment is pending.", body = ReservationView),
        (status = 402, description = "`payment_declined`: declined or voided; the seats were released.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: staff may read but not pay for another user's reservation.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`reservation_not_found`: no such reservation, or another buyer's.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`reservation_not_held`: cancelled, already paying or paid.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`hold_expired`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn checkout(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<CheckoutParams>,
    Json(body): Json<CheckoutBody>,
) -> ApiResult<Response> {
    body.validate().map_err(validation_error)?;
    let wait = Duration::from_secs(
        params
            .wait_seconds
            .unwrap_or(WAIT_SECONDS_DEFAULT)
            .min(WAIT_SECONDS_MAX),
    );
    let (show, id) = own_reservation(&app, &caller, &id).await?;
    let status = app.engine.reservation(show, id).await?.map(|r| r.status);
    if status == Some(ReservationStatus::Expired) {
        return Err(ApiError::new(
            StatusCode::GONE,
            "hold_expired",
            "the hold expired before checkout",
        ));
    }
    let payment_id = PaymentId::from_uuid(app.engine.next_uuid());
    let command = Command::StartPayment {
        reservation_id: id,
        payment_id,
        payment_token: Some(body.payment_token),
    };
    let meta = CommandMeta {
        correlation_id: payment_id.uuid(),
        causation_id: None,
        actor: caller.user_id.to_string(),
    };
    app.engine.execute(show, command, meta).await?;
    let mut done = app.payments.saga.begin(show, id);
    let _ = tokio::time::timeout(wait, done.wait_for(|finished| *finished)).await;
    let reservation = app
        .engine
        .reservation(show, id)
        .await?
        .ok_or_else(|| ApiError::not_found("reservation_not_found", "reservation"))?;
    let body = ReservationView::new(&reservation, &show.to_string());
    match reservation.status {
        ReservationStatus::Confirmed => Ok((StatusCode::OK, axum::Json(body)).into_response()),
        ReservationStatus::PaymentFailed => Err(ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "payment_declined",
            "the payment was declined; the seats were released",
        )),
        ReservationStatus::Expired => Err(ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "payment_declined",
            "the payment did not complete before its deadline and was voided; the seats were released",
        )),
        _ => Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response()),
    }
}
