//! `GET /v1/me/notifications`: what happened to the caller (waitlist offers, confirmed
//! and refunded orders, expiries, failed payments), newest first, from the
//! notifications projection.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use boxoffice_projections::ViewError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use validator::Validate;

use crate::auth::{Caller, validation_error};
use crate::catalog::page_limit;
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::openapi::Problem;
use crate::orders::{catch_up, view_error};
use crate::state::AppState;
use crate::views::{NotificationPage, NotificationView};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_notifications))
        .routes(routes!(set_webhook, get_webhook, remove_webhook))
}

/// Where the caller's notifications are POSTed, signed with the caller's secret.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://example.com/boxoffice-hooks", "secret": "a-secret-of-16-or-more"}))]
struct WebhookBody {
    /// An `http(s)` URL.
    #[validate(length(min = 8, max = 2000, message = "must be 8 to 2000 characters"))]
    #[schema(min_length = 8, max_length = 2000)]
    url: String,
    /// The key of the `Boxoffice-Signature` HMAC on each delivery (never shown again).
    #[validate(length(min = 16, max = 256, message = "must be 16 to 256 characters"))]
    #[schema(min_length = 16, max_length = 256)]
    secret: String,
}

/// The caller's notification webhook (its secret is not shown).
#[derive(Debug, Serialize, ToSchema)]
struct WebhookView {
    url: String,
}

/// What removing the webhook did.
#[derive(Debug, Serialize, ToSchema)]
struct WebhookRemoved {
    #[schema(example = "removed")]
    status: String,
}

/// Set my notification webhook
///
/// From now on, each new notification of the caller is also POSTed to `url` as JSON,
/// signed like the payment webhooks (`Boxoffice-Signature: t=…,v1=hex(hmac_sha256(secret,
/// "t.body"))`), with its id in `Boxoffice-Notification-Id` (deliveries are retried, so a
/// receiver deduplicates on it). Replaces the global notification webhook for the
/// caller.
#[utoipa::path(
    put,
    path = "/v1/me/webhook",
    tag = "notifications",
    request_body = WebhookBody,
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "Set.", body = WebhookView),
        (status = 422, description = "`validation_failed`: not an http(s) URL, or a secret of the wrong length.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn set_webhook(
    State(app): State<AppState>,
    caller: Caller,
    Json(body): Json<WebhookBody>,
) -> ApiResult<Response> {
    body.validate().map_err(validation_error)?;
    app.reads
        .notifications
        .set_user_webhook(caller.user_id, &body.url, body.secret.as_bytes())
        .await
        .map_err(|e| match e {
            ViewError::Invalid(detail) => ApiError::invalid_field("url", detail),
            other => view_error(other),
        })?;
    Ok(axum::Json(WebhookView { url: body.url }).into_response())
}

/// Get my notification webhook
#[utoipa::path(
    get,
    path = "/v1/me/webhook",
    tag = "notifications",
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "The caller's webhook.", body = WebhookView),
        (status = 404, description = "`webhook_not_found`: none is set.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_webhook(State(app): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let hook = app
        .reads
        .notifications
        .user_webhook(caller.user_id)
        .await
        .map_err(view_error)?
        .ok_or_else(|| ApiError::not_found("webhook_not_found", "webhook"))?;
    Ok(axum::Json(WebhookView { url: hook.url }).into_response())
}

/// Remove my notification webhook
#[utoipa::path(
    delete,
    path = "/v1/me/webhook",
    tag = "notifications",
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "Removed: `{\"status\": \"removed\"}`.", body = WebhookRemoved),
        (status = 404, description = "`webhook_not_found`: none was set.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn remove_webhook(State(app): State<AppState>, caller: Caller) -> ApiResult<Response> {
    if app
        .reads
        .notifications
        .remove_user_webhook(caller.user_id)
        .await
        .map_err(view_error)?
    {
        Ok(axum::Json(WebhookRemoved {
            status: "removed".into(),
        })
        .into_response())
    } else {
        Err(ApiError::not_found("webhook_not_found", "webhook"))
    }
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
    let limit = page_limit(params.limit)?;
    catch_up(&app, &app.reads.notifications_at).await;
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
