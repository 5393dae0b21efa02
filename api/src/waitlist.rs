//! The waitlist: join a sold-out show's queue, look up an entry (its place and any
//! offer), leave it. An offer is a reservation held for the entry's user, made by the
//! write engine in the same append that released its seats.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use boxoffice_commands::CommandMeta;
use boxoffice_domain::waitlist::{Entry, EntryStatus};
use boxoffice_domain::{Command, EntryId, ShowId, ShowState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::openapi::Problem;
use crate::shows::ShowPath;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(join))
        // One `routes!` per path: it routes every handler it is given on each of their paths.
        .routes(routes!(get_entry, leave))
}

/// Where a waitlist entry stands.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitlistStatus {
    Waiting,
    Offered,
    Claimed,
    Expired,
    Left,
}

impl From<EntryStatus> for WaitlistStatus {
    fn from(s: EntryStatus) -> Self {
        match s {
            EntryStatus::Waiting => Self::Waiting,
            EntryStatus::Offered => Self::Offered,
            EntryStatus::Claimed => Self::Claimed,
            EntryStatus::Expired => Self::Expired,
            EntryStatus::Left => Self::Left,
        }
    }
}

/// Seats held for a waitlist entry's user: check the reservation out before it expires.
#[derive(Debug, Serialize, ToSchema)]
pub struct Offer {
    #[schema(example = "rsv_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub reservation_id: String,
    pub expires_at: DateTime<Utc>,
}

/// A place in a show's waitlist.
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitlistEntryView {
    #[schema(example = "wle_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub entry_id: String,
    #[schema(example = "shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub show_id: String,
    pub status: WaitlistStatus,
    /// Place in the queue from 1, while waiting.
    #[schema(required = true)]
    pub position: Option<u32>,
    pub quantity: u32,
    /// The section waited for; null for any.
    #[schema(required = true)]
    pub section: Option<String>,
    /// The offer, while one is open.
    #[schema(required = true)]
    pub offer: Option<Offer>,
}

fn view(state: &ShowState, entry: &Entry) -> WaitlistEntryView {
    let offer = match (&entry.offer, entry.status) {
        (Some(o), EntryStatus::Offered) => Some(Offer {
            reservation_id: o.reservation_id.to_string(),
            expires_at: o.expires_at,
        }),
        _ => None,
    };
    WaitlistEntryView {
        entry_id: entry.entry_id.to_string(),
        show_id: state.show_id.to_string(),
        status: entry.status.into(),
        position: state.waitlist.position(entry.entry_id),
        quantity: entry.quantity,
        section: entry.section.clone(),
        offer,
    }
}

/// How many seats to wait for, and in which section (any if none).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"quantity": 2, "section": "floor"}))]
struct JoinBody {
    #[schema(minimum = 1, maximum = 10)]
    quantity: u32,
    section: Option<String>,
}

/// The path parameter naming a waitlist entry.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EntryPath {
    /// The waitlist entry's id.
    #[param(example = "wle_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub entry_id: String,
}

/// The entry after leaving.
#[derive(Debug, Serialize, ToSchema)]
struct Left {
    entry_id: String,
    #[schema(example = "left")]
    status: String,
}

/// Join a show's waitlist
///
/// Waits for seats of a sold-out show; when some are released, they are held for the
/// entry's user as an offer (a reservation with `origin: waitlist`).
#[utoipa::path(
    post,
    path = "/v1/shows/{show_id}/waitlist",
    tag = "waitlist",
    operation_id = "join_waitlist",
    params(ShowPath),
    request_body = JoinBody,
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 201, description = "Waiting.", body = WaitlistEntryView, headers(
            ("Location" = String, description = "The entry's URL."),
        )),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`seats_available` (the request could be held now), `already_waiting`, `sales_closed`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a quantity out of range or an unknown section.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn join(
    State(app): State<AppState>,
    caller: Caller,
    Path(show): Path<String>,
    Json(body): Json<JoinBody>,
) -> ApiResult<Response> {
    caller.require(&[Role::Buyer])?;
    let show: ShowId = show
        .parse()
        .map_err(|_| ApiError::not_found("show_not_found", "show"))?;
    let entry_id = EntryId(app.engine.next_uuid());
    let command = Command::JoinWaitlist {
        entry_id,
        user_id: caller.user_id,
        quantity: body.quantity,
        section: body.section,
    };
    app.engine
        .execute(show, command, CommandMeta::new(caller.user_id.to_string()))
        .await?;
    let body = app
        .engine
        .query(show, move |s| {
            s.waitlist.entry(entry_id).map(|e| view(s, e))
        })
        .await?
        .ok_or_else(|| ApiError::not_found("waitlist_entry_not_found", "waitlist entry"))?;
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/waitlist/{entry_id}")).expect("ascii"),
    );
    Ok(response)
}

/// The entry's show, if the caller owns the entry; otherwise "not found" (no leak).
async fn locate(app: &AppState, caller: &Caller, raw: &str) -> ApiResult<(ShowId, EntryId)> {
    let not_found = || ApiError::not_found("waitlist_entry_not_found", "waitlist entry");
    let entry: EntryId = raw.parse().map_err(|_| not_found())?;
    let show = crate::cluster::show_of(app, entry.0)
        .await
        .ok_or_else(not_found)?;
    let owner = app
        .engine
        .query(show, move |s| s.waitlist.entry(entry).map(|e| e.user_id))
        .await?;
    if owner != Some(caller.user_id) {
        return Err(not_found());
    }
    Ok((show, entry))
}

/// Get a waitlist entry
///
/// The caller's own entry: its place in the queue and any open offer. Another user's
/// entry is 404.
#[utoipa::path(
    get,
    path = "/v1/waitlist/{entry_id}",
    tag = "waitlist",
    operation_id = "get_waitlist_entry",
    params(EntryPath),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "The entry.", body = WaitlistEntryView),
        (status = 404, description = "`waitlist_entry_not_found`: no such entry, or another user's.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_entry(
    State(app): State<AppState>,
    caller: Caller,
    Path(entry): Path<String>,
) -> ApiResult<Response> {
    let (show, entry) = locate(&app, &caller, &entry).await?;
    let body = app
        .engine
        .query(show, move |s| s.waitlist.entry(entry).map(|e| view(s, e)))
        .await?
        .ok_or_else(|| ApiError::not_found("waitlist_entry_not_found", "waitlist entry"))?;
    Ok(axum::Json(body).into_response())
}

/// Leave a waitlist
///
/// Gives up the caller's place in the queue.
#[utoipa::path(
    delete,
    path = "/v1/waitlist/{entry_id}",
    tag = "waitlist",
    operation_id = "leave_waitlist",
    params(EntryPath),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "Left.", body = Left),
        (status = 404, description = "`waitlist_entry_not_found`: no such entry, or another user's.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`waitlist_entry_closed`: the entry was already claimed, expired or left.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn leave(
    State(app): State<AppState>,
    caller: Caller,
    Path(entry): Path<String>,
) -> ApiResult<Response> {
    let (show, entry) = locate(&app, &caller, &entry).await?;
    app.engine
        .execute(
            show,
            Command::LeaveWaitlist { entry_id: entry },
            CommandMeta::new(caller.user_id.to_string()),
        )
        .await?;
    Ok(axum::Json(Left {
        entry_id: entry.to_string(),
        status: "left".into(),
    })
    .into_response())
}
