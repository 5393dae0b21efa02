//! Shows: create, read, seat map, and holds on a show.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use boxoffice_commands::CommandMeta;
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::show::{
    FieldError, Limits, PriceTier, RowDef, SectionDef, SectionLayout, ShowCommand, ShowDefinition,
    Venue,
};
use boxoffice_domain::{Command, Minor, ReservationId, ShowId};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Role};
use crate::context::idempotency_key;
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::openapi::Problem;
use crate::state::AppState;
use crate::views::{ReservationView, SeatmapView, SectionKind, ShowView};

/// Longest `?min_position=` waits for the seat map to catch up.
const MIN_POSITION_WAIT_MS_MAX: u64 = 5_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_show))
        .routes(routes!(get_show, update_show))
        .routes(routes!(get_seatmap))
        .routes(routes!(crate::stream::seatmap_stream))
        .routes(routes!(create_hold))
}

/// The path parameter naming a show, shared by every route under `/v1/shows/{show_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ShowPath {
    /// The show's id.
    #[param(example = "shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub show_id: String,
}

/// A show's limits; every member is optional (the defaults are shown).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    #[schema(example = 8)]
    max_tickets_per_user: Option<u32>,
    #[schema(example = 300)]
    hold_ttl_seconds: Option<u32>,
    #[schema(example = 120)]
    payment_timeout_seconds: Option<u32>,
    #[schema(example = 600)]
    waitlist_claim_seconds: Option<u32>,
    max_active_holds_per_user: Option<u32>,
}

/// A price tier.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TierInput {
    #[schema(example = "A")]
    id: String,
    #[schema(example = "Front")]
    name: String,
    /// A decimal string, not negative.
    #[schema(example = "120.00")]
    price: String,
}

/// Where a show takes place.
#[derive(Debug, Deserialize, ToSchema)]
pub struct VenueInput {
    name: String,
    city: String,
    /// An ISO 3166 country code.
    country: String,
    /// An IANA time zone.
    timezone: String,
}

/// A row of a seated section: `seats` seats numbered from 1, all at `tier`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RowInput {
    #[schema(example = "A")]
    row: String,
    #[schema(example = 30)]
    seats: u32,
    #[schema(example = "A")]
    tier: String,
}

/// A section: `seated` with `rows`, or `general_admission` with `capacity` and `tier`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SectionInput {
    #[schema(example = "101")]
    id: String,
    #[schema(example = "Section 101")]
    name: String,
    kind: SectionKind,
    /// The rows of a seated section.
    #[serde(default)]
    rows: Option<Vec<RowInput>>,
    /// The places of a general-admission section.
    capacity: Option<u32>,
    /// The price tier of a general-admission section.
    tier: Option<String>,
}

/// A new show.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "name": "Night 1",
    "venue": {"name": "Arena", "city": "Lisbon", "country": "PT", "timezone": "Europe/Lisbon"},
    "starts_at": "2030-05-01T20:00:00Z",
    "currency": "EUR",
    "sales_open_at": null, "sales_close_at": null,
    "limits": {"max_tickets_per_user": 8, "hold_ttl_seconds": 300,
               "payment_timeout_seconds": 120, "waitlist_claim_seconds": 600},
    "price_tiers": [{"id": "A", "name": "Front", "price": "120.00"},
                    {"id": "B", "name": "Back", "price": "60.00"}],
    "sections": [
        {"id": "101", "name": "Section 101", "kind": "seated",
         "rows": [{"row": "A", "seats": 30, "tier": "A"}, {"row": "B", "seats": 30, "tier": "B"}]},
        {"id": "floor", "name": "Floor", "kind": "general_admission", "capacity": 5000, "tier": "B"}
    ]
}))]
pub struct CreateShow {
    name: String,
    venue: VenueInput,
    starts_at: DateTime<Utc>,
    currency: String,
    #[serde(default)]
    sales_open_at: Option<DateTime<Utc>>,
    #[serde(default)]
    sales_close_at: Option<DateTime<Utc>>,
    #[serde(default)]
    limits: Option<LimitsInput>,
    price_tiers: Vec<TierInput>,
    sections: Vec<SectionInput>,
}

impl CreateShow {
    /// The domain definition, or every field that cannot become one.
    fn into_definition(self) -> Result<ShowDefinition, ApiError> {
        let mut errors = Vec::new();
        let defaults = Limits::default();
        let limits = match self.limits {
            None => defaults,
            Some(l) => Limits {
                max_tickets_per_user: l
                    .max_tickets_per_user
                    .unwrap_or(defaults.max_tickets_per_user),
                hold_ttl_seconds: l.hold_ttl_seconds.unwrap_or(defaults.hold_ttl_seconds),
                payment_timeout_seconds: l
                    .payment_timeout_seconds
                    .unwrap_or(defaults.payment_timeout_seconds),
                waitlist_claim_seconds: l
                    .waitlist_claim_seconds
                    .unwrap_or(defaults.waitlist_claim_seconds),
                max_active_holds_per_user: l
                    .max_active_holds_per_user
                    .unwrap_or(defaults.max_active_holds_per_user),
            },
        };
        let price_tiers = self
            .price_tiers
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let price = Minor::parse_decimal(&t.price).unwrap_or_else(|e| {
                    errors.push(FieldError::new(
                        format!("price_tiers[{i}].price"),
                        e.to_string(),
                    ));
                    Minor(0)
                });
                PriceTier {
                    id: t.id,
                    name: t.name,
                    price,
                }
            })
            .collect();
        let sections = self
            .sections
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let layout = match s.kind {
                    SectionKind::Seated => {
                        if s.rows.is_none() {
                            errors.push(FieldError::new(
                                format!("sections[{i}].rows"),
                                "a seated section lists its rows",
                            ));
                        }
                        SectionLayout::Seated {
                            rows: s
                                .rows
                                .unwrap_or_default()
                                .into_iter()
                                .map(|r| RowDef {
                                    row: r.row,
                                    seats: r.seats,
                                    tier: r.tier,
                                })
                                .collect(),
                        }
                    }
                    SectionKind::GeneralAdmission => {
                        if s.capacity.is_none() {
                            errors.push(FieldError::new(
                                format!("sections[{i}].capacity"),
                                "a general-admission section has a capacity",
                            ));
                        }
                        if s.tier.is_none() {
                            errors.push(FieldError::new(
                                format!("sections[{i}].tier"),
                                "a general-admission section has a tier",
                            ));
                        }
                        SectionLayout::GeneralAdmission {
                            capacity: s.capacity.unwrap_or(0),
                            tier: s.tier.unwrap_or_default(),
                        }
                    }
                };
                SectionDef {
                    id: s.id,
                    name: s.name,
                    layout,
                }
            })
            .collect();
        let definition = ShowDefinition {
            name: self.name,
            venue: Venue {
                name: self.venue.name,
                city: self.venue.city,
                country: self.venue.country,
                timezone: self.venue.timezone,
            },
            starts_at: self.starts_at,
            currency: self.currency,
            sales_open_at: self.sales_open_at,
            sales_close_at: self.sales_close_at,
            limits,
            price_tiers,
            sections,
        };
        if let Err(more) = definition.validate() {
            // Keep the parse errors first; the domain may report a field again.
            for e in more {
                if !errors.iter().any(|x| x.field == e.field) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(definition)
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

fn parse_show_id(raw: &str) -> ApiResult<ShowId> {
    raw.parse()
        .map_err(|_| ApiError::not_found("show_not_found", "show"))
}

/// Create a show
///
/// Schedules a show with its venue, price tiers and sections. Seat ids are
/// `{section}-{row}-{number}`, numbers from 1.
#[utoipa::path(
    post,
    path = "/v1/shows",
    tag = "shows",
    request_body = CreateShow,
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["organizer"]))),
    responses(
        (status = 201, description = "Scheduled.", body = ShowView, headers(
            ("Location" = String, description = "The show's URL."),
            ("x-log-position" = u64, description = "The event-log position of the write."),
        )),
        (status = 403, description = "`forbidden`: not an organizer.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown tier, a duplicate section or row, zero seats, more than 200,000 seats, a negative price…; `errors` names each field.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_show(
    State(app): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateShow>,
) -> ApiResult<Response> {
    caller.require(&[Role::Organizer])?;
    let definition = body.into_definition()?;
    let show_id = ShowId(app.engine.next_uuid());
    let command = Command::Show(ShowCommand::Schedule {
        show_id,
        organizer_id: caller.user_id,
        definition: definition.into(),
    });
    let outcome = app
        .engine
        .execute(
            show_id,
            command,
            CommandMeta::new(caller.user_id.to_string()),
        )
        .await?;
    let body = app
        .engine
        .query(show_id, move |state| {
            let show = state.show.as_ref().expect("just scheduled");
            ShowView::new(state, show, Utc::now())
        })
        .await?;
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/shows/{show_id}")).expect("ascii"),
    );
    headers.insert("x-log-position", HeaderValue::from(outcome.position));
    Ok(response)
}

/// Get a show
///
/// The show with its section summaries (capacity and seats available now) and status.
#[utoipa::path(
    get,
    path = "/v1/shows/{show_id}",
    tag = "shows",
    params(ShowPath),
    responses(
        (status = 200, description = "The show; `ETag` is its version.", body = ShowView),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_show(State(app): State<AppState>, Path(show_id): Path<String>) -> ApiResult<Response> {
    let show_id = parse_show_id(&show_id)?;
    let view = app
        .seatmaps
        .show(show_id)
        .ok_or_else(|| ApiError::not_found("show_not_found", "show"))?;
    let view = view.read().expect("show lock");
    let show = view
        .state
        .show
        .as_ref()
        .ok_or_else(|| ApiError::not_found("show_not_found", "show"))?;
    let body = ShowView::new(&view.state, show, app.engine.clock().now());
    Ok(with_version_etag(
        axum::Json(body).into_response(),
        show.version,
    ))
}

/// The show's version as its `ETag` (a strong validator: `"4"`).
fn with_version_etag(mut response: Response, version: u64) -> Response {
    response.headers_mut().insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{version}\"")).expect("digits"),
    );
    response
}

/// The version an `If-Match` header names: `"4"` (or `4`); `*` matches any. A weak or
/// malformed validator matches nothing (412), as RFC 9110 has it for `If-Match`.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_matches('"')
        .parse::<u64>()
        .map(Some)
        .map_err(|_| {
            ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "If-Match must be the show's version as its ETag gives it, like \"3\"",
            )
        })
}

/// Absent stays `None`; `null` becomes `Some(None)`: "clear this field".
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The fields of a show its organizer may change; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Night 1 (late show)", "starts_at": "2027-05-01T22:00:00Z"}))]
pub struct ShowPatch {
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    pub starts_at: Option<DateTime<Utc>>,
    /// `null` opens sales from now on.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub sales_open_at: Option<Option<DateTime<Utc>>>,
    /// `null` keeps sales open until the show starts.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub sales_close_at: Option<Option<DateTime<Utc>>>,
}

/// Change a show
///
/// Changes any of `name`, `starts_at`, `sales_open_at` and `sales_close_at`, all or
/// nothing. With `If-Match: "<version>"` (the show's `ETag`) the change is made only if
/// the show is still at that version; otherwise 412 with the current `version`. The
/// show's organizer or an admin.
#[utoipa::path(
    patch,
    path = "/v1/shows/{show_id}",
    tag = "manage",
    params(
        ShowPath,
        ("If-Match" = Option<String>, Header, pattern = "^[!-~]+( [!-~]+)*$",
            description = "The show's version as its `ETag` gives it (`\"3\"`), or `*`."),
    ),
    request_body = ShowPatch,
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["organizer"]))),
    responses(
        (status = 200, description = "The changed show; `ETag` is its new version.", body = ShowView),
        (status = 403, description = "`forbidden`: not an organizer, or not this show's.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sales_closed`: the show is cancelled.", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`precondition_failed`: the show changed since the `If-Match` version (with `version`).", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: the show the change would leave is not valid.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_show(
    State(app): State<AppState>,
    caller: Caller,
    Path(show): Path<String>,
    headers: HeaderMap,
    Json(patch): Json<ShowPatch>,
) -> ApiResult<Response> {
    let show = crate::manage::managed_show(&app, &caller, &show).await?;
    let expected_version = if_match(&headers)?;
    // The window is changed as a whole: a field left out keeps its current value.
    let sales_window = if patch.sales_open_at.is_some() || patch.sales_close_at.is_some() {
        let (open, close) = app
            .engine
            .query(show, |s| {
                s.definition()
                    .map(|d| (d.sales_open_at, d.sales_close_at))
                    .unwrap_or_default()
            })
            .await?;
        Some((
            patch.sales_open_at.unwrap_or(open),
            patch.sales_close_at.unwrap_or(close),
        ))
    } else {
        None
    };
    let update = boxoffice_domain::booking::ShowUpdate {
        expected_version,
        name: patch.name,
        starts_at: patch.starts_at,
        sales_window,
    };
    app.engine
        .execute(
            show,
            Command::UpdateShow(update),
            CommandMeta::new(caller.user_id.to_string()),
        )
        .await?;
    let (body, version) = app
        .engine
        .query(show, |state| {
            let s = state.show.as_ref().expect("the show exists");
            (ShowView::new(state, s, Utc::now()), s.version)
        })
        .await?;
    Ok(with_version_etag(axum::Json(body).into_response(), version))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SeatmapParams {
    /// Wait (up to 5 s) until the map reflects at least this event-log position (the
    /// `x-log-position` of a write), to read one's own writes. A position past the end
    /// of the log is answered at once.
    min_position: Option<u64>,
}

/// Get a show's seat map
///
/// Every seat with its status, tier and price; general-admission sections with counts.
/// The `ETag` is the log position the map reflects; `If-None-Match` with it gives 304.
#[utoipa::path(
    get,
    path = "/v1/shows/{show_id}/seatmap",
    tag = "shows",
    params(
        ShowPath,
        SeatmapParams,
        ("If-None-Match" = Option<String>, Header, pattern = "^[!-~]+( [!-~]+)*$",
         description = "An `ETag` from an earlier answer."),
    ),
    responses(
        (status = 200, description = "The seat map.", body = SeatmapView, headers(
            ("ETag" = String, description = "The quoted log position the map reflects."),
        )),
        (status = 304, description = "Not modified since the `If-None-Match` position.", headers(
            ("ETag" = String, description = "The quoted log position the map reflects."),
        )),
        (status = 400, description = "`bad_request`: `min_position` is not a number.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_seatmap(
    State(app): State<AppState>,
    Path(show_id): Path<String>,
    Query(params): Query<SeatmapParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let show_id = parse_show_id(&show_id)?;
    if let Some(min) = params.min_position
        && app.seatmaps.position() < min
    {
        // Read-your-writes: wait (bounded) until the model has seen the client's write.
        // A position past the log's end was never handed to any client, and waiting for
        // it would only hold the request for the whole bound.
        let head = app.engine.store().head_position().await.map_err(|e| {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                e.to_string(),
            );
            error.retry_after_seconds = Some(1);
            error
        })?;
        if min <= head {
            app.seatmaps
                .wait_for(min, Duration::from_millis(MIN_POSITION_WAIT_MS_MAX))
                .await;
        }
    }
    let view = app
        .seatmaps
        .show(show_id)
        .ok_or_else(|| ApiError::not_found("show_not_found", "show"))?;
    let (etag, body) = {
        let view = view.read().expect("show lock");
        let show = view
            .state
            .show
            .as_ref()
            .ok_or_else(|| ApiError::not_found("show_not_found", "show"))?;
        let etag = format!("\"{}\"", view.position);
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if matches {
            (etag, None)
        } else {
            (
                etag.clone(),
                Some(SeatmapView::new(&view.state, show, view.position)),
            )
        }
    };
    let mut response = match body {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some(body) => axum::Json(body).into_response(),
    };
    response
        .headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
    Ok(response)
}

/// What to hold: exactly `seats` (all or nothing); or `quantity` places of the
/// general-admission `section`; or, with `best_available`, the best `quantity` adjacent
/// seats in one row of the seated `section` (lowest row, nearest the row's middle).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"seats": ["101-A-1", "101-A-2"]}))]
struct HoldBody {
    /// Seat ids, 1 to 10 of them, no duplicates.
    #[schema(min_items = 1, max_items = 10)]
    seats: Option<Vec<String>>,
    section: Option<String>,
    /// 1 to 10, with `section`.
    #[schema(minimum = 1, maximum = 10)]
    quantity: Option<u32>,
    #[serde(default)]
    best_available: bool,
}

impl HoldBody {
    fn selection(self) -> ApiResult<Selection> {
        match (self.seats, self.section, self.quantity, self.best_available) {
            (Some(seats), None, None, false) => Ok(Selection::Seats(seats)),
            (None, Some(section), Some(quantity), false) => {
                Ok(Selection::General { section, quantity })
            }
            (None, Some(section), Some(quantity), true) => {
                Ok(Selection::BestAvailable { section, quantity })
            }
            (None, Some(_), None, _) => {
                Err(ApiError::invalid_field("quantity", "required with section"))
            }
            _ => Err(ApiError::invalid_field(
                "body",
                "give either seats, or section and quantity (with best_available for a seated section)",
            )),
        }
    }
}

/// Hold seats
///
/// Holds seats for the caller until `expires_at`; check out the reservation to buy them.
#[utoipa::path(
    post,
    path = "/v1/shows/{show_id}/holds",
    tag = "reservations",
    params(ShowPath),
    request_body = HoldBody,
    security(("bearer_auth" = [])),
    extensions(("x-roles" = json!(["buyer"]))),
    responses(
        (status = 201, description = "Held.", body = ReservationView, headers(
            ("Location" = String, description = "The reservation's URL."),
            ("x-log-position" = u64, description = "The event-log position of the write."),
        )),
        (status = 403, description = "`ticket_limit_exceeded` (held plus bought would pass the show's `max_tickets_per_user`) or `hold_limit_exceeded` (too many active holds).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`seats_unavailable` (with `unavailable`), `sold_out` (with `available`), `sales_closed`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown seat, an empty list, a duplicate seat, more than 10 seats, a quantity out of range.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_hold(
    State(app): State<AppState>,
    caller: Caller,
    Path(show_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<HoldBody>,
) -> ApiResult<Response> {
    caller.require(&[Role::Buyer])?;
    let show_id = parse_show_id(&show_id)?;
    let key = idempotency_key(&headers)?;
    let selection = body.selection()?;
    let request = HoldRequest {
        reservation_id: ReservationId(app.engine.next_uuid()),
        user_id: caller.user_id,
        idempotency_key: key,
        selection,
    };
    let outcome = app
        .engine
        .execute(
            show_id,
            Command::Hold(request),
            CommandMeta::new(caller.user_id.to_string()),
        )
        .await?;
    let reservation = outcome
        .reservation
        .as_ref()
        .expect("a hold answers with its reservation");
    let body = ReservationView::new(reservation, &show_id.to_string());
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/reservations/{}", reservation.reservation_id))
            .expect("ascii"),
    );
    headers.insert("x-log-position", HeaderValue::from(outcome.position));
    Ok(response)
}
