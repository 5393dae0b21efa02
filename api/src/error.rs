//! One API error type: every failure becomes `application/problem+json` with a stable
//! `code` and the request's id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use boxoffice_commands::EngineError;
use boxoffice_domain::booking::BookingError;
use boxoffice_domain::reservation::ReservationError;
use boxoffice_domain::show::FieldError;
use serde::Serialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Extension members (`errors`, `unavailable`, …).
    pub extra: Map<String, Value>,
    pub retry_after_seconds: Option<u32>,
    /// The show's owner, when another node owns the show the request is about: the
    /// forwarding layer sends the request there (`crate::cluster`).
    pub forward_to: Option<crate::cluster::ForwardTo>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extra: Map::new(),
            retry_after_seconds: None,
            forward_to: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extra.insert(
            key.to_string(),
            serde_json::to_value(value).expect("extension serializes"),
        );
        self
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "the request is not valid",
        )
        .with("errors", errors)
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    pub fn not_found(code: &'static str, what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
    }

    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

/// The request id of the request being answered, set by the request-id layer and read
/// back when the problem body is written.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            json!(format!(
                "https://boxoffice.dev/problems/{}",
                self.code.replace('_', "-")
            )),
        );
        body.insert("title".into(), json!(self.title()));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.insert("code".into(), json!(self.code));
        // Filled in by the problem layer, which knows the request id.
        body.insert("request_id".into(), Value::Null);
        body.extend(self.extra);
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(forward) = self.forward_to {
            response.extensions_mut().insert(forward);
        }
        response
    }
}

impl From<BookingError> for ApiError {
    fn from(e: BookingError) -> Self {
        use StatusCode as S;
        let detail = e.to_string();
        match e {
            BookingError::ShowNotFound => ApiError::not_found("show_not_found", "show"),
            BookingError::ShowAlreadyExists => ApiError::new(S::CONFLICT, "show_exists", detail),
            BookingError::ShowCancelled | BookingError::SalesClosed => {
                ApiError::new(S::CONFLICT, "sales_closed", detail)
            }
            BookingError::Invalid(errors) => ApiError::validation(errors),
            BookingError::SeatsUnavailable { seats } => {
                ApiError::new(S::CONFLICT, "seats_unavailable", detail).with("unavailable", seats)
            }
            BookingError::SoldOut { available } => {
                ApiError::new(S::CONFLICT, "sold_out", detail).with("available", available)
            }
            BookingError::TicketLimitExceeded {
                limit,
                current,
                requested,
            } => ApiError::new(S::FORBIDDEN, "ticket_limit_exceeded", detail)
                .with("limit", limit)
                .with("current", current)
                .with("requested", requested),
            BookingError::TooManyActiveHolds { limit } => {
                ApiError::new(S::FORBIDDEN, "hold_limit_exceeded", detail).with("limit", limit)
            }
            BookingError::IdempotencyKeyReused => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "idempotency_key_reused", detail)
            }
            BookingError::ReservationNotFound => {
                ApiError::not_found("reservation_not_found", "reservation")
            }
            BookingError::ReservationNotHeld => {
                ApiError::new(S::CONFLICT, "reservation_not_held", detail)
            }
            BookingError::HoldExpired => ApiError::new(S::GONE, "hold_expired", detail),
            BookingError::NotDue => ApiError::new(S::CONFLICT, "not_due", detail),
            BookingError::Payment(
                ReservationError::NoSuchPayment
                | ReservationError::NotCaptured
                | ReservationError::NotConfirmed,
            ) => ApiError::new(S::CONFLICT, "reservation_not_held", detail),
            BookingError::Payment(_) => ApiError::new(S::CONFLICT, "payment_conflict", detail),
            BookingError::WaitlistEntryNotFound => {
                ApiError::not_found("waitlist_entry_not_found", "waitlist entry")
            }
            BookingError::AlreadyWaiting => ApiError::new(S::CONFLICT, "already_waiting", detail),
            BookingError::SeatsAvailable => ApiError::new(S::CONFLICT, "seats_available", detail),
            BookingError::WaitlistEntryClosed => {
                ApiError::new(S::CONFLICT, "waitlist_entry_closed", detail)
            }
            BookingError::VersionMismatch { current } => {
                ApiError::new(S::PRECONDITION_FAILED, "precondition_failed", detail)
                    .with("version", current)
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let detail = e.to_string();
        match e {
            EngineError::Domain(d) => d.into(),
            EngineError::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
            EngineError::Unavailable(_) | EngineError::ShuttingDown => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    detail,
                );
                e.retry_after_seconds = Some(1);
                e
            }
            EngineError::Overloaded => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail);
                e.retry_after_seconds = Some(1);
                e
            }
            EngineError::ShowStopped(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "show_unavailable", detail)
            }
            EngineError::NotOwner { show, owner_url } => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_owner",
                    "another node owns this show and could not be reached; try again",
                );
                e.retry_after_seconds = Some(1);
                e.forward_to = Some(crate::cluster::ForwardTo { show, owner_url });
                e
            }
            EngineError::TooLarge(events) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "command_too_large",
                detail,
            )
            .with("events", events),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
