//! Reservations: read and cancel.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use boxoffice_commands::CommandMeta;
use boxoffice_domain::{Command, ReservationId, ShowId};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::openapi::Problem;
use crate::state::AppState;
use crate::views::ReservationView;

pub fn router() -> OpenApiRouter<AppState> {
    // One `routes!` per path: it routes every handler it is given on each of their paths.
    OpenApiRouter::new().routes(routes!(get_reservation, cancel_reservation))
}

/// The path parameter naming a reservation.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ReservationPath {
    /// The reservation's id.
    #[param(example = "rsv_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub reservation_id: String,
}

/// Finds the reservation's show; another user's reservation is "not found" (no leak).
async fn locate(app: &AppState, caller: &Caller, raw: &str) -> ApiResult<(ShowId, ReservationId)> {
    let not_found = || ApiError::not_found("reservation_not_found", "reservation");
    let id: ReservationId = raw.parse().map_err(|_| not_found())?;
    let show = crate::cluster::show_of(app, id.0)
        .await
        .ok_or_else(not_found)?;
    let owner = app.engine.reservation(show, id).await?.map(|r| r.user_id);
    // Support staff (and admins) see any reservation; a buyer only their own, and
    // another buyer's is "not found" rather than "forbidden" so that ids do not leak.
    if owner.is_none() || (owner != Some(caller.user_id) && !caller.has(Role::Support)) {
        return Err(not_found());
    }
    Ok((show, id))
}

/// Get a reservation
///
/// The caller's own reservation; support staff and admins read any. Another buyer's
/// reservation is 404, as if it did not exist.
#[utoipa::path(
    get,
    path = "/v1/reservations/{reservation_id}",
    tag = "reservations",
    params(ReservationPath),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "The reservation.", body = ReservationView),
        (status = 404, description = "`reservation_not_found`: no such reservation, or another buyer's.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_reservation(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (show, id) = locate(&app, &caller, &id).await?;
    let body = app
        .engine
        .reservation(show, id)
        .await?
        .map(|r| ReservationView::new(&r, &show.to_string()))
        .ok_or_else(|| ApiError::not_found("reservation_not_found", "reservation"))?;
    Ok(axum::Json(body).into_response())
}

/// Cancel a reservation
///
/// Releases a held reservation's seats (to the waitlist first). The owner may; so may
/// support staff and admins. Another buyer's reservation is 404.
#[utoipa::path(
    delete,
    path = "/v1/reservations/{reservation_id}",
    tag = "reservations",
    params(ReservationPath),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "Cancelled.", body = ReservationView),
        (status = 404, description = "`reservation_not_found`: no such reservation, or another buyer's.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`reservation_not_held`: payment is pending or done, or it is already closed.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn cancel_reservation(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (show, id) = locate(&app, &caller, &id).await?;
    let command = Command::Cancel {
        reservation_id: id,
        by: caller.user_id.to_string(),
    };
    let outcome = app
        .engine
        .execute(show, command, CommandMeta::new(caller.user_id.to_string()))
        .await?;
    let reservation = outcome
        .reservation
        .as_ref()
        .expect("a cancel answers with its reservation");
    Ok(axum::Json(ReservationView::new(reservation, &show.to_string())).into_response())
}
