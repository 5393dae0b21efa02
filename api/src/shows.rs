//! Shows: create, read, seat map, and holds on a show.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use boxoffice_commands::CommandMeta;
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::show::{
    FieldError, Limits, PriceTier, RowDef, SectionDef, SectionLayout, ShowCommand, ShowDefinition,
    Venue,
};
use boxoffice_domain::{Command, Minor, ReservationId, ShowId};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Caller, Role};
use crate::context::idempotency_key;
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::state::AppState;
use crate::views;

/// Longest `?min_position=` waits for the seat map to catch up.
const MIN_POSITION_WAIT_MS_MAX: u64 = 5_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/shows", post(create_show))
        .route("/v1/shows/{show_id}", get(get_show))
        .route("/v1/shows/{show_id}/seatmap", get(get_seatmap))
        .route(
            "/v1/shows/{show_id}/seatmap/stream",
            get(crate::stream::seatmap_stream),
        )
        .route("/v1/shows/{show_id}/holds", post(create_hold))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    max_tickets_per_user: Option<u32>,
    hold_ttl_seconds: Option<u32>,
    payment_timeout_seconds: Option<u32>,
    waitlist_claim_seconds: Option<u32>,
    max_active_holds_per_user: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct TierInput {
    id: String,
    name: String,
    price: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SectionKind {
    Seated,
    GeneralAdmission,
}

#[derive(Debug, Deserialize)]
pub struct SectionInput {
    id: String,
    name: String,
    kind: SectionKind,
    #[serde(default)]
    rows: Option<Vec<RowDef>>,
    capacity: Option<u32>,
    tier: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CreateShow {
    name: String,
    venue: Venue,
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
                            rows: s.rows.unwrap_or_default(),
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
            venue: self.venue,
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
            views::show(state, show, Utc::now())
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
    Ok(axum::Json(views::show(&view.state, show, app.engine.clock().now())).into_response())
}

#[derive(Debug, Deserialize)]
struct SeatmapParams {
    min_position: Option<u64>,
}

async fn get_seatmap(
    State(app): State<AppState>,
    Path(show_id): Path<String>,
    Query(params): Query<SeatmapParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let show_id = parse_show_id(&show_id)?;
    if let Some(min) = params.min_position {
        // Read-your-writes: wait (bounded) until the model has seen the client's write.
        app.seatmaps
            .wait_for(min, Duration::from_millis(MIN_POSITION_WAIT_MS_MAX))
            .await;
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
                Some(views::seatmap(&view.state, show, view.position)),
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    seats: Option<Vec<String>>,
    section: Option<String>,
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
    let body: Value = views::reservation(reservation, &show_id.to_string());
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
