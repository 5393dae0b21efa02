//! `GET /v1/audit`: the raw event log, in order, for auditors and admins: every event
//! with its stream, version, type, schema version, time, actor and correlation, read
//! straight from the store (the source of truth, not a read model).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use boxoffice_domain::ShowId;
use boxoffice_store::{RecordedEvent, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Role};
use crate::catalog::page_limit;
use crate::error::{ApiError, ApiResult};
use crate::openapi::Problem;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(audit_log))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Only this show's events (its partition).
    show_id: Option<String>,
    /// Only this stream's events (`seat-…`, `reservation-…`, `show-…`, `pool-…`,
    /// `waitlist-…`).
    #[param(max_length = 200)]
    stream: Option<String>,
    /// Events after this log position.
    #[param(minimum = 0)]
    after: Option<u64>,
    /// Events per page.
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page (takes the place of `after`).
    cursor: Option<String>,
}

/// One event of the log, as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    /// The global log position: strictly increasing, gap-free order of commits.
    pub position: u64,
    #[schema(example = "seat-shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3-101-A-1")]
    pub stream: String,
    /// The event's version in its stream, from 1 without gaps.
    pub version: u64,
    #[serde(rename = "type")]
    #[schema(example = "SeatHeld")]
    pub event_type: String,
    pub schema_version: i32,
    pub recorded_at: DateTime<Utc>,
    /// A user id, or a system actor (`system:expiry`, `system:payment-saga`, …).
    pub actor: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub event_id: String,
    /// The event's payload.
    pub data: serde_json::Value,
}

impl From<RecordedEvent> for AuditEvent {
    fn from(e: RecordedEvent) -> Self {
        Self {
            position: e.position,
            stream: e.stream_id,
            version: e.version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            recorded_at: e.recorded_at,
            actor: e.metadata.actor,
            correlation_id: e.metadata.correlation_id.to_string(),
            causation_id: e.metadata.causation_id.map(|c| c.to_string()),
            event_id: e.metadata.event_id.to_string(),
            data: e.payload,
        }
    }
}

/// One page of the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub data: Vec<AuditEvent>,
    /// Pass as `?cursor=` for the next page; null when the page reached the end of the
    /// log as it was (later events come with later positions).
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

fn unavailable(e: StoreError) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

/// Read the event log
///
/// The raw event log in order, all of it or one show's or one stream's, paginated by
/// position. Auditors and admins.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(AuditParams),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["auditor"]))),
    responses(
        (status = 200, description = "A page of events, in log order.", body = AuditPage),
        (status = 422, description = "`validation_failed`: a bad `limit`, `cursor`, `show_id` or `stream`.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn audit_log(
    State(app): State<AppState>,
    caller: Caller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(&[Role::Auditor])?;
    let Query(params) = params.map_err(|e| ApiError::invalid_field("query", e.body_text()))?;
    let limit = page_limit(params.limit)?;
    let after = match &params.cursor {
        Some(cursor) => cursor
            .parse::<u64>()
            .map_err(|_| ApiError::invalid_field("cursor", "is not a cursor from this API"))?,
        None => params.after.unwrap_or(0),
    };
    let show = match &params.show_id {
        Some(raw) => Some(
            raw.parse::<ShowId>()
                .map_err(|_| ApiError::invalid_field("show_id", "is not a show id"))?,
        ),
        None => None,
    };
    let store = app.engine.store();
    // One more than asked shows whether another page follows.
    let mut events = match (&params.stream, show) {
        (Some(stream), show) => {
            if stream.is_empty() || stream.len() > 200 {
                return Err(ApiError::invalid_field(
                    "stream",
                    "must be 1 to 200 characters",
                ));
            }
            store
                .read_stream(stream, 0)
                .await
                .map_err(unavailable)?
                .into_iter()
                .filter(|e| e.position > after)
                .filter(|e| show.is_none_or(|s| e.partition_key == s.to_string()))
                .take(limit + 1)
                .collect::<Vec<_>>()
        }
        (None, Some(show)) => store
            .read_partition(&show.to_string(), after, limit + 1)
            .await
            .map_err(unavailable)?,
        (None, None) => store
            .read_all(after, limit + 1)
            .await
            .map_err(unavailable)?,
    };
    let more = events.len() > limit;
    events.truncate(limit);
    let next_cursor = if more {
        events.last().map(|e| e.position.to_string())
    } else {
        None
    };
    Ok(axum::Json(AuditPage {
        data: events.into_iter().map(AuditEvent::from).collect(),
        next_cursor,
    })
    .into_response())
}
