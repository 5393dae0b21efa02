//! Orders: list, read and refund. Read from the orders projection, which the handlers
//! let catch up with the log first, so a client reads its own writes (an order is
//! visible as soon as its checkout answered).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use boxoffice_domain::{OrderId, ShowId};
use boxoffice_projections::{Order, OrderFilter, ProjectorHandle, ViewError};
use boxoffice_sagas::saga::RefundError;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Role};
use crate::catalog::page_limit;
use crate::error::{ApiError, ApiResult};
use crate::openapi::Problem;
use crate::state::AppState;
use crate::views::{OrderPage, OrderView};

/// Longest a read waits for the read model to reach the log's head.
pub const READ_YOUR_WRITES_WAIT_MS: u64 = 2_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(refund_order))
        .routes(routes!(ticket_qr))
}

/// The path parameters naming one ticket of an order.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TicketPath {
    /// The order's id.
    #[param(example = "ord_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub order_id: String,
    /// The ticket's id.
    #[param(example = "tkt_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub ticket_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only this show's orders (support, admin, or the show's organizer).
    show_id: Option<String>,
    /// Orders per page.
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The path parameter naming an order.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrderPath {
    /// The order's id.
    #[param(example = "ord_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub order_id: String,
}

pub(crate) fn view_error(e: ViewError) -> ApiError {
    match e {
        ViewError::InvalidCursor => {
            ApiError::invalid_field("cursor", "is not a cursor from this API")
        }
        ViewError::Invalid(detail) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            detail,
        ),
        ViewError::Unavailable(detail) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
        ViewError::Corrupt(detail) => {
            tracing::error!(%detail, "read model row does not decode");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "a stored order does not decode",
            )
        }
    }
}

/// Lets the projections a view reads catch up with everything the log had when the
/// request came in (bounded: a lagging projection answers what it has), so a client reads
/// its writes.
pub(crate) async fn catch_up(app: &AppState, projectors: &[ProjectorHandle]) {
    let Ok(head) = app.engine.store().head_position().await else {
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(READ_YOUR_WRITES_WAIT_MS);
    for projector in projectors {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !projector.wait_for(head, left).await {
            return;
        }
    }
}

/// Whether `caller` organizes `show`.
async fn organizes(app: &AppState, caller: &Caller, show: ShowId) -> bool {
    caller.has(Role::Organizer)
        && app
            .engine
            .query(show, |s| s.show.as_ref().map(|s| s.organizer_id))
            .await
            .ok()
            .flatten()
            == Some(caller.user_id)
}

/// The order, if the caller may see it: its buyer, support and admins; another buyer's
/// order is "not found".
async fn visible_order(app: &AppState, caller: &Caller, raw: &str) -> ApiResult<Order> {
    let not_found = || ApiError::not_found("order_not_found", "order");
    let id: OrderId = raw.parse().map_err(|_| not_found())?;
    catch_up(app, &app.reads.orders_at).await;
    let order = app
        .reads
        .orders
        .get(id)
        .await
        .map_err(view_error)?
        .ok_or_else(not_found)?;
    if order.user_id == caller.user_id
        || caller.has(Role::Support)
        || organizes(app, caller, order.show_id).await
    {
        Ok(order)
    } else {
        Err(not_found())
    }
}

/// List orders
///
/// A buyer's own orders, newest first. Support and admins list every order, or one
/// show's with `?show_id=`; an organizer lists the orders of a show it created.
#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "orders",
    params(ListParams),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "A page of orders.", body = OrderPage),
        (status = 403, description = "`forbidden`: `show_id` of a show the caller does not organize.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad `limit`, `cursor` or `show_id`.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_orders(
    State(app): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| ApiError::invalid_field("query", e.body_text()))?;
    let limit = page_limit(params.limit)?;
    let show = match &params.show_id {
        Some(raw) => Some(
            raw.parse::<ShowId>()
                .map_err(|_| ApiError::invalid_field("show_id", "is not a show id"))?,
        ),
        None => None,
    };
    let filter = if caller.has(Role::Support) {
        OrderFilter {
            user_id: None,
            show_id: show,
        }
    } else if let Some(show) = show
        && caller.has(Role::Organizer)
    {
        if !organizes(&app, &caller, show).await {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the show's organizer, support and admins list its orders",
            ));
        }
        OrderFilter {
            user_id: None,
            show_id: Some(show),
        }
    } else {
        OrderFilter {
            user_id: Some(caller.user_id),
            show_id: show,
        }
    };
    catch_up(&app, &app.reads.orders_at).await;
    let (orders, next_cursor) = app
        .reads
        .orders
        .list(&filter, params.cursor.as_deref(), limit)
        .await
        .map_err(view_error)?;
    Ok(axum::Json(OrderPage {
        data: orders.iter().map(OrderView::new).collect(),
        next_cursor,
    })
    .into_response())
}

/// Get an order
///
/// An order with its tickets: the buyer's own; support, admins and the show's organizer
/// read any. Another buyer's order is 404.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}",
    tag = "orders",
    params(OrderPath),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "The order.", body = OrderView),
        (status = 404, description = "`order_not_found`: no such order, or another buyer's.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_order(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let order = visible_order(&app, &caller, &id).await?;
    Ok(axum::Json(OrderView::new(&order)).into_response())
}

/// Refund an order
///
/// Refunds the payment at the provider, then records `RefundIssued`; the seats return to
/// sale, to the waitlist first. Support, admins and the show's organizer. Refunding a
/// refunded order answers it as it is.
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/refund",
    tag = "orders",
    params(OrderPath),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["support", "organizer"]))),
    responses(
        (status = 200, description = "The refunded order.", body = OrderView),
        (status = 403, description = "`forbidden`: not support, an admin or an organizer (the buyer who paid cannot refund it).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`order_not_found`: no such order, or one of another organizer's show.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`order_not_refundable`: the order's reservation is not paid.", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "`payment_provider_error`: the provider refused the refund.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn refund_order(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    // Refunds are for staff: every other caller is refused alike, whether or not the
    // order exists or is theirs, so the answer reveals nothing.
    caller.require(&[Role::Support, Role::Organizer])?;
    let order = visible_order(&app, &caller, &id).await?;
    let outcome = app
        .payments
        .saga
        .refund(
            order.show_id,
            order.reservation_id,
            &caller.user_id.to_string(),
        )
        .await;
    match outcome {
        Ok(_) => {}
        Err(RefundError::NotPaid) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "order_not_refundable",
                "the order's reservation is not paid",
            ));
        }
        Err(RefundError::ProviderUnavailable(detail)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "payment_provider_unavailable",
                detail,
            ));
        }
        Err(RefundError::ProviderRefused { code, message }) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "payment_provider_error",
                format!("{code}: {message}"),
            ));
        }
        Err(RefundError::Engine(e)) => return Err(e.into()),
    }
    let refreshed = visible_order(&app, &caller, &id).await?;
    Ok(axum::Json(OrderView::new(&refreshed)).into_response())
}

/// A ticket's QR code
///
/// The ticket's `code` as a QR code (SVG), for a scanner at the door; whoever may read
/// the order may read it. The seat-map page shows it with the order.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}/tickets/{ticket_id}/qr.svg",
    tag = "orders",
    operation_id = "ticket_qr",
    params(TicketPath),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 200, description = "The QR code of the ticket's code.", body = String, content_type = "image/svg+xml"),
        (status = 404, description = "`order_not_found`: no such order, or another buyer's; `ticket_not_found`: the order has no such ticket.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn ticket_qr(
    State(app): State<AppState>,
    caller: Caller,
    Path(path): Path<TicketPath>,
) -> ApiResult<Response> {
    let order = visible_order(&app, &caller, &path.order_id).await?;
    let ticket = order
        .tickets
        .iter()
        .find(|t| t.ticket_id.to_string() == path.ticket_id)
        .ok_or_else(|| ApiError::not_found("ticket_not_found", "ticket"))?;
    let code = qrcode::QrCode::with_error_correction_level(&ticket.code, qrcode::EcLevel::M)
        .map_err(|e| {
            tracing::error!(error = %e, "a ticket code does not fit a QR code");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the ticket code cannot be drawn",
            )
        })?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(160, 160)
        .quiet_zone(true)
        .build();
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "image/svg+xml"),
            // The code is a secret: no shared cache may keep it.
            (axum::http::header::CACHE_CONTROL, "private, no-store"),
        ],
        svg,
    )
        .into_response())
}
