//! Managing a show: seat blocks, tier prices, cancellation. Only the show's organizer
//! (or an admin) may; another organizer gets 403, and a show that does not exist 404.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use boxoffice_commands::CommandMeta;
use boxoffice_domain::show::ShowCommand;
use boxoffice_domain::{Command, Minor, ShowId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use validator::Validate;

use crate::auth::{Caller, Role, validation_error};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::openapi::Problem;
use crate::shows::ShowPath;
use crate::state::AppState;
use crate::views::ShowView;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(block_seats))
        .routes(routes!(unblock_seats))
        .routes(routes!(set_tier_price))
        .routes(routes!(cancel_show))
}

/// The show, if the caller may manage it: its organizer, or an admin.
pub(crate) async fn managed_show(app: &AppState, caller: &Caller, raw: &str) -> ApiResult<ShowId> {
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

/// Seats to block or unblock.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"seats": ["101-A-1", "101-A-2"], "reason": "camera position"}))]
struct SeatsBody {
    #[validate(length(min = 1, max = 1000, message = "must name 1 to 1000 seats"))]
    #[schema(min_items = 1, max_items = 1000)]
    seats: Vec<String>,
    #[validate(length(max = 500, message = "at most 500 characters"))]
    #[schema(max_length = 500)]
    #[serde(default)]
    reason: Option<String>,
}

/// What a seat block or unblock did.
#[derive(Debug, Serialize, ToSchema)]
struct SeatsChanged {
    show_id: String,
    seats: Vec<String>,
    /// The seats' status now: `blocked` or `available`.
    #[schema(example = "blocked")]
    status: String,
    /// The event-log position of the write.
    position: u64,
}

/// Block seats
///
/// Takes seats off sale (for a camera, a mixing desk…). Blocking a held or sold seat
/// is refused.
#[utoipa::path(
    post,
    path = "/v1/shows/{show_id}/seats/block",
    tag = "manage",
    params(ShowPath),
    request_body = SeatsBody,
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["organizer"]))),
    responses(
        (status = 200, description = "Blocked.", body = SeatsChanged),
        (status = 403, description = "`forbidden`: not an organizer, or not this show's.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`seats_unavailable`: a seat is held or sold (with `unavailable`).", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown seat, or not 1 to 1000 seats.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn block_seats(
    State(app): State<AppState>,
    caller: Caller,
    Path(show): Path<String>,
    Json(body): Json<SeatsBody>,
) -> ApiResult<Response> {
    let show = managed_show(&app, &caller, &show).await?;
    body.validate().map_err(validation_error)?;
    let command = Command::BlockSeats {
        seats: body.seats.clone(),
        reason: body.reason.unwrap_or_default(),
    };
    let outcome = app
        .engine
        .execute(show, command, CommandMeta::new(caller.user_id.to_string()))
        .await?;
    Ok(axum::Json(SeatsChanged {
        show_id: show.to_string(),
        seats: body.seats,
        status: "blocked".into(),
        position: outcome.position,
    })
    .into_response())
}

/// Unblock seats
///
/// Puts blocked seats back on sale; like any release, they go to the waitlist first.
#[utoipa::path(
    post,
    path = "/v1/shows/{show_id}/seats/unblock",
    tag = "manage",
    params(ShowPath),
    request_body = SeatsBody,
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["organizer"]))),
    responses(
        (status = 200, description = "Unblocked.", body = SeatsChanged),
        (status = 403, description = "`forbidden`: not an organizer, or not this show's.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`seats_unavailable`: a seat is not blocked.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown seat, or not 1 to 1000 seats.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn unblock_seats(
    State(app): State<AppState>,
    caller: Caller,
    Path(show): Path<String>,
    Json(body): Json<SeatsBody>,
) -> ApiResult<Response> {
    let show = managed_show(&app, &caller, &show).await?;
    body.validate().map_err(validation_error)?;
    let command = Command::UnblockSeats {
        seats: body.seats.clone(),
    };
    let outcome = app
        .engine
        .execute(show, command, CommandMeta::new(caller.user_id.to_string()))
        .await?;
    Ok(axum::Json(SeatsChanged {
        show_id: show.to_string(),
        seats: body.seats,
        status: "available".into(),
        position: outcome.position,
    })
    .into_response())
}

/// A tier's new price.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"price": "130.00"}))]
struct TierBody {
    /// A decimal string, not negative.
    price: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TierPath {
    /// The show's id.
    #[param(example = "shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    show_id: String,
    /// The price tier's id.
    #[param(example = "A")]
    tier_id: String,
}

/// Change a tier's price
///
/// Holds already placed keep the price they were quoted.
#[utoipa::path(
    put,
    path = "/v1/shows/{show_id}/tiers/{tier_id}",
    tag = "manage",
    params(TierPath),
    request_body = TierBody,
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["organizer"]))),
    responses(
        (status = 200, description = "The show with the new price.", body = ShowView),
        (status = 403, description = "`forbidden`: not an organizer, or not this show's.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown tier or a bad price.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn set_tier_price(
    State(app): State<AppState>,
    caller: Caller,
    Path(TierPath {
        show_id: show,
        tier_id,
    }): Path<TierPath>,
    Json(body): Json<TierBody>,
) -> ApiResult<Response> {
    let show = managed_show(&app, &caller, &show).await?;
    let price = Minor::parse_decimal(&body.price)
        .map_err(|e| ApiError::invalid_field("price", e.to_string()))?;
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
                .map(|s| ShowView::new(state, s, chrono::Utc::now()))
        })
        .await?
        .ok_or_else(|| ApiError::not_found("show_not_found", "show"))?;
    Ok(axum::Json(body).into_response())
}

/// Why a show is cancelled.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "the artist is ill"}))]
struct CancelBody {
    #[validate(length(min = 1, max = 500, message = "must be 1 to 500 characters"))]
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

/// A show's cancellation, accepted.
#[derive(Debug, Serialize, ToSchema)]
struct Cancelled {
    show_id: String,
    #[schema(example = "cancelled")]
    status: String,
    /// The event-log position of the write.
    position: u64,
}

/// Cancel a show
///
/// Sales stop at once and every hold is cancelled; paid orders are refunded by the
/// payment saga afterwards.
#[utoipa::path(
    post,
    path = "/v1/shows/{show_id}/cancel",
    tag = "manage",
    params(ShowPath),
    request_body = CancelBody,
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["organizer"]))),
    responses(
        (status = 202, description = "Cancelled; refunds follow.", body = Cancelled),
        (status = 403, description = "`forbidden`: not an organizer, or not this show's.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sales_closed`: the show is already cancelled.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: no reason, or one over 500 characters.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn cancel_show(
    State(app): State<AppState>,
    caller: Caller,
    Path(show): Path<String>,
    Json(body): Json<CancelBody>,
) -> ApiResult<Response> {
    let show = managed_show(&app, &caller, &show).await?;
    body.validate().map_err(validation_error)?;
    let command = Command::Show(ShowCommand::Cancel {
        reason: body.reason,
    });
    let outcome = app
        .engine
        .execute(show, command, CommandMeta::new(caller.user_id.to_string()))
        .await?;
    // Holds end in the same append; paid orders are refunded by the payment saga.
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Cancelled {
            show_id: show.to_string(),
            status: "cancelled".into(),
            position: outcome.position,
        }),
    )
        .into_response())
}
