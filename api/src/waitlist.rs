//! The waitlist: join a sold-out show's queue, look up an entry (its place and any
//! offer), leave it. An offer is a reservation held for the entry's user, made by the
//! write engine in the same append that released its seats.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use boxoffice_commands::CommandMeta;
use boxoffice_domain::waitlist::{Entry, EntryStatus};
use boxoffice_domain::{Command, EntryId, ShowId, ShowState};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/shows/{show_id}/waitlist", post(join))
        .route("/v1/waitlist/{entry_id}", get(get_entry).delete(leave))
}

fn view(state: &ShowState, entry: &Entry) -> Value {
    let status = match entry.status {
        EntryStatus::Waiting => "waiting",
        EntryStatus::Offered => "offered",
        EntryStatus::Claimed => "claimed",
        EntryStatus::Expired => "expired",
        EntryStatus::Left => "left",
    };
    let offer = match (&entry.offer, entry.status) {
        (Some(o), EntryStatus::Offered) => {
            json!({"reservation_id": o.reservation_id.to_string(), "expires_at": o.expires_at})
        }
        _ => Value::Null,
    };
    json!({
        "entry_id": entry.entry_id.to_string(),
        "show_id": state.show_id.to_string(),
        "status": status,
        "position": state.waitlist.position(entry.entry_id),
        "quantity": entry.quantity,
        "section": entry.section,
        "offer": offer,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    quantity: u32,
    section: Option<String>,
}

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
    let show = app.engine.show_of_entry(entry).ok_or_else(not_found)?;
    let owner = app
        .engine
        .query(show, move |s| s.waitlist.entry(entry).map(|e| e.user_id))
        .await?;
    if owner != Some(caller.user_id) {
        return Err(not_found());
    }
    Ok((show, entry))
}

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
    Ok(axum::Json(json!({"entry_id": entry.to_string(), "status": "left"})).into_response())
}
