//! Managing a show: seat blocks, tier prices, cancellation. Only the show's organizer
//! (or an admin) may; another organizer gets 403, and a show that does not exist 404.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use boxoffice_commands::CommandMeta;
use boxoffice_domain::show::ShowCommand;
use boxoffice_domain::{Command, Minor, ShowId};
use serde::Deserialize;
use serde_json::json;
use validator::Validate;

use crate::auth::{Caller, Role, validation_error};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::state::AppState;
use crate::views;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/shows/{show_id}/seats/block", post(block_seats))
        .route("/v1/shows/{show_id}/seats/unblock", post(unblock_seats))
        .route("/v1/shows/{show_id}/tiers/{tier_id}", put(set_tier_price))
        .route("/v1/shows/{show_id}/cancel", post(cancel_show))
}

/// The show, if the caller may manage it: its organizer, or an admin.
async fn managed_show(app: &AppState, caller: &Caller, raw: &str) -> ApiResult<ShowId> {
    caller.require(&[Role::Organizer])?;
    let not_found = || ApiError::not_found("show_not_found", "show");
    let show: ShowId = raw.parse().map_err(|_| not_found())?;
    let organizer = app
        .engine
        .query(show, |s| s.show.as_ref().map(|s| s.organizer_id))
        .await;
    let organizer = match organizer {
        Ok(Some(organizer)) => organizer,
        Ok(None) | Err(boxoffice_commands::EngineError::ShowStopped(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if organizer != caller.user_id && !caller.roles.contains(&Role::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the show's organizer manages it",
        ));
    }
    Ok(show)
}

#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct SeatsBody {
    #[validate(length(min = 1, max = 1000, message = "must name 1 to 1000 seats"))]
    seats: Vec<String>,
    #[validate(length(max = 500, message = "at most 500 characters"))]
    #[serde(default)]
    reason: Option<String>,
}

async fn block_seats(
    State(app): State<AppState>,
    caller: Caller,
    Path(show): Path<String>,
    Json(body): Json<SeatsBody>,
) -> ApiResult<Response> {
    body.validate().map_err(validation_error)?;
    let show = managed_show(&app, &caller, &show).await?;
    let command = Command::BlockSeats {
        seats: body.seats.clone(),
        reason: body.reason.unwrap_or_default(),
    };
    let outcome = app
        .engine
        .execute(show, command, CommandMeta::new(caller.user_id.to_string()))
        .await?;
    Ok(axum::Json(json!({"show_id": show.to_string(), "seats": body.seats, "status": "blocked", "position": outcome.position})).into_response())
}

async fn unblock_seats(
    State(app): State<AppState>,
    caller: Caller,
    Path(show): Path<String>,
    Json(body): Json<SeatsBody>,
) -> ApiResult<Response> {
    body.validate().map_err(validation_error)?;
    let show = managed_show(&app, &caller, &show).await?;
    let command = Command::UnblockSeats {
        seats: body.seats.clone(),
    };
    let outcome = app
        .engine
        .execute(show, command, CommandMeta::new(caller.user_id.to_string()))
        .await?;
    Ok(axum::Json(json!({"show_id": show.to_string(), "seats": body.seats, "status": "available", "position": outcome.position})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierBody {
    price: String,
}

async fn set_tier_price(
    State(app): State<AppState>,
    caller: Caller,
    Path((show, tier_id)): Path<(String, String)>,
    Json(body): Json<TierBody>,
) -> ApiResult<Response> {
    let price = Minor::parse_decimal(&body.price)
        .map_err(|e| ApiError::invalid_field("price", e.to_string()))?;
    let show = managed_show(&app, &caller, &show).await?;
    let command = Command::Show(ShowCommand::ChangeTierPrice { tier_id, price });
    app.engine
        .execute(show, command, CommandMeta::new(caller.user_id.to_string()))
        .await?;
    let body = app
        .engine
        .query(show, |state| {
            state
                .show
                .as_ref()
                .map(|s| views::show(state, s, chrono::Utc::now()))
        })
        .await?
        .ok_or_else(|| ApiError::not_found("show_not_found", "show"))?;
    Ok(axum::Json(body).into_response())
}

#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[validate(length(min = 1, max = 500, message = "must be 1 to 500 characters"))]
    reason: String,
}

async fn cancel_show(
    State(app): State<AppState>,
    caller: Caller,
    Path(show): Path<String>,
    Json(body): Json<CancelBody>,
) -> ApiResult<Response> {
    body.validate().map_err(validation_error)?;
    let show = managed_show(&app, &caller, &show).await?;
    let command = Command::Show(ShowCommand::Cancel {
        reason: body.reason,
    });
    let outcome = app
        .engine
        .execute(show, command, CommandMeta::new(caller.user_id.to_string()))
        .await?;
    // Holds end in the same append; paid orders are refunded by the payment saga.
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"show_id": show.to_string(), "status": "cancelled", "position": outcome.position}))).into_response())
}
