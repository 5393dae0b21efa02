//! Reservations: read and cancel.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use boxoffice_commands::CommandMeta;
use boxoffice_domain::{Command, ReservationId, ShowId};

use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/reservations/{reservation_id}",
        get(get_reservation).delete(cancel_reservation),
    )
}

/// Finds the reservation's show; another user's reservation is "not found" (no leak).
async fn locate(app: &AppState, caller: &Caller, raw: &str) -> ApiResult<(ShowId, ReservationId)> {
    let not_found = || ApiError::not_found("reservation_not_found", "reservation");
    let id: ReservationId = raw.parse().map_err(|_| not_found())?;
    let show = app.engine.show_of(id).ok_or_else(not_found)?;
    let owner = app
        .engine
        .query(show, move |s| s.reservation(id).map(|r| r.user_id))
        .await?;
    // Support staff (and admins) see any reservation; a buyer only their own, and
    // another buyer's is "not found" rather than "forbidden" so that ids do not leak.
    if owner.is_none() || (owner != Some(caller.user_id) && !caller.has(Role::Support)) {
        return Err(not_found());
    }
    Ok((show, id))
}

async fn get_reservation(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (show, id) = locate(&app, &caller, &id).await?;
    let body = app
        .engine
        .query(show, move |s| {
            s.reservation(id)
                .map(|r| views::reservation(r, &show.to_string()))
        })
        .await?
        .ok_or_else(|| ApiError::not_found("reservation_not_found", "reservation"))?;
    Ok(axum::Json(body).into_response())
}

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
    Ok(axum::Json(views::reservation(reservation, &show.to_string())).into_response())
}
