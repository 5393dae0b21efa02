//! `GET /v1/shows/{show_id}/sales`: a show's sales report (tickets and revenue by tier
//! and section, what became of its holds, its waiting list), from the sales, reservations
//! and waitlist read models. The show's organizer, auditors and admins.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use boxoffice_domain::{Minor, ShowId};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::openapi::Problem;
use crate::orders::{catch_up, view_error};
use crate::shows::ShowPath;
use crate::state::AppState;
use crate::views::Money;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show_sales))
}

/// Tickets and money of one tier or one section.
#[derive(Debug, Serialize, ToSchema)]
pub struct SalesLineView {
    /// The tier id (in `by_tier`) or the section id (in `by_section`).
    pub id: String,
    pub tickets_sold: i64,
    pub tickets_refunded: i64,
    pub revenue: Money,
    pub refunds: Money,
}

/// What became of the show's holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldsView {
    pub created: i64,
    /// Still held, or waiting for their payment.
    pub open: i64,
    pub expired: i64,
    pub cancelled: i64,
    pub payment_failed: i64,
    pub payment_timed_out: i64,
    /// Paid and ticketed.
    pub converted: i64,
    /// Mean seconds from hold to paid, over converted holds.
    #[schema(required = true)]
    pub avg_seconds_to_checkout: Option<i64>,
}

/// The show's waiting list.
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitlistView {
    pub joined: i64,
    /// Entries waiting now.
    pub size: i64,
    pub offered_now: i64,
    pub offers: i64,
    pub claims: i64,
    pub offer_expiries: i64,
    pub left: i64,
}

/// A show's sales report.
#[derive(Debug, Serialize, ToSchema)]
pub struct SalesReport {
    pub show_id: String,
    pub tickets_sold: i64,
    pub tickets_refunded: i64,
    /// What was paid for the tickets sold.
    pub revenue: Money,
    pub refunds: Money,
    pub net_revenue: Money,
    pub by_tier: Vec<SalesLineView>,
    pub by_section: Vec<SalesLineView>,
    pub holds: HoldsView,
    pub waitlist: WaitlistView,
}

/// A show's sales
///
/// Tickets and revenue by tier and section, holds created, expired and converted, and the
/// waiting list, as the read models have them (after catching up with the log). The
/// show's organizer, auditors and admins.
#[utoipa::path(
    get,
    path = "/v1/shows/{show_id}/sales",
    tag = "audit",
    params(ShowPath),
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["organizer", "auditor"]))),
    responses(
        (status = 200, description = "The report.", body = SalesReport),
        (status = 403, description = "`forbidden`: not an auditor, or an organizer of another show.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn show_sales(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    caller.require(&[Role::Organizer, Role::Auditor])?;
    let not_found = || ApiError::not_found("show_not_found", "show");
    // Auditors (and admins) read any show's report; an organizer only its own.
    let show: ShowId = if caller.has(Role::Auditor) {
        raw.parse().map_err(|_| not_found())?
    } else {
        crate::manage::managed_show(&app, &caller, &raw).await?
    };
    catch_up(&app, &app.reads.sales_at).await;
    let sales = app
        .reads
        .sales
        .for_show(show)
        .await
        .map_err(view_error)?
        .ok_or_else(not_found)?;
    let money = |minor: i64| Money::new(Minor(minor), &sales.currency);
    let line = |l: &boxoffice_projections::SalesLine| SalesLineView {
        id: l.key.clone(),
        tickets_sold: l.tickets_sold,
        tickets_refunded: l.tickets_refunded,
        revenue: money(l.revenue_minor),
        refunds: money(l.refunds_minor),
    };
    let report = SalesReport {
        show_id: show.to_string(),
        tickets_sold: sales.tickets_sold,
        tickets_refunded: sales.tickets_refunded,
        revenue: money(sales.revenue_minor),
        refunds: money(sales.refunds_minor),
        net_revenue: money(sales.net_revenue_minor),
        by_tier: sales.by_tier.iter().map(line).collect(),
        by_section: sales.by_section.iter().map(line).collect(),
        holds: HoldsView {
            created: sales.holds.created,
            open: sales.holds.open,
            expired: sales.holds.expired,
            cancelled: sales.holds.cancelled,
            payment_failed: sales.holds.payment_failed,
            payment_timed_out: sales.holds.payment_timed_out,
            converted: sales.holds.converted,
            avg_seconds_to_checkout: sales.holds.avg_seconds_to_checkout,
        },
        waitlist: WaitlistView {
            joined: sales.waitlist.joined,
            size: sales.waitlist.size,
            offered_now: sales.waitlist.offered_now,
            offers: sales.waitlist.offers,
            claims: sales.waitlist.claims,
            offer_expiries: sales.waitlist.offer_expiries,
            left: sales.waitlist.left,
        },
    };
    Ok(axum::Json(report).into_response())
}
