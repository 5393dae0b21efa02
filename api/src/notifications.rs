//! `GET /v1/me/notifications`: what happened to the caller (waitlist offers, confirmed
//! and refunded orders, expiries, failed payments), newest first, from the
//! notifications projection.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::catalog::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::error::{ApiError, ApiResult};
use crate::openapi::Problem;
use crate::orders::{READ_YOUR_WRITES_WAIT_MS, view_error};
use crate::state::AppState;
use crate::views::{NotificationPage, NotificationView};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_notifications))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Notifications per page.
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List my notifications
///
/// The caller's notifications, newest first. A waitlist offer is kind `waitlist_offer`
/// with the offered reservation and its deadline in `data`.
#[utoipa::path(
    get,
    path = "/v1/me/notifications",
    tag = "notifications",
    params(ListParams),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "A page of notifications.", body = NotificationPage),
        (status = 422, description = "`validation_failed`: a bad `limit` or `cursor`.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_notifications(
    State(app): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| ApiError::invalid_field("query", e.body_text()))?;
    let limit = params.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be between 1 and {PAGE_LIMIT_MAX}"),
        ));
    }
    if let Ok(head) = app.engine.store().head_position().await {
        app.reads
            .notifications_at
            .wait_for(head, Duration::from_millis(READ_YOUR_WRITES_WAIT_MS))
            .await;
    }
    let (notifications, next_cursor) = app
        .reads
        .notifications
        .list(caller.user_id, params.cursor.as_deref(), limit)
        .await
        .map_err(view_error)?;
    Ok(axum::Json(NotificationPage {
        data: notifications
            .into_iter()
            .map(|n| NotificationView {
                id: n.id,
                kind: n.kind.as_str().to_string(),
                created_at: n.created_at,
                data: n.data,
            })
            .collect(),
        next_cursor,
    })
    .into_response())
}
