//! The simulator's HTTP API: create, retrieve and cancel payment intents, create and list
//! refunds, with Stripe-style JSON errors, an optional API key and injected 500s.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::Shared;
use super::behaviour::{self, Behaviour};
use super::store::{CancelOutcome, CreateOutcome, RefundOutcome};
use crate::provider::{
    CreateIntent, CreateRefund, ErrorBody, ErrorDetail, Intent, IntentStatus, List, Refund,
};

/// Request bodies are a few hundred bytes; metadata limits keep them far below this.
pub(crate) const BODY_BYTES_MAX: usize = 64 * 1024;
/// Stripe's limit on idempotency keys.
pub(crate) const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// The largest amount accepted, in minor units.
pub(crate) const AMOUNT_MAX: i64 = 99_999_999;
pub(crate) const PAYMENT_TOKEN_BYTES_MAX: usize = 64;
/// Stripe's metadata limits.
pub(crate) const METADATA_ENTRIES_MAX: usize = 50;
pub(crate) const METADATA_KEY_BYTES_MAX: usize = 40;
pub(crate) const METADATA_VALUE_BYTES_MAX: usize = 500;

const _: () = assert!(
    METADATA_ENTRIES_MAX * (METADATA_KEY_BYTES_MAX + METADATA_VALUE_BYTES_MAX) * 2 < BODY_BYTES_MAX
);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/v1/payment_intents", post(create_intent))
        .route("/v1/payment_intents/{id}", get(retrieve_intent))
        .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
        .route("/v1/refunds", post(create_refund).get(list_refunds))
        // Faults sit inside the key check: a refused key never reaches the provider.
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            inject_faults,
        ))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            check_api_key,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .fallback(|| async { ApiError::UnknownRoute })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(shared)
}

/// An error answer, Stripe style.
#[derive(Debug)]
pub(crate) enum ApiError {
    NotFound(String),
    UnknownRoute,
    Invalid {
        code: &'static str,
        message: String,
        /// Boxed to keep `Result<_, ApiError>` small.
        intent: Option<Box<Intent>>,
    },
    Unauthorized,
    /// A failure injected by `api_error_rate`.
    Simulated,
    Internal(anyhow::Error),
}

impl ApiError {
    fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            code,
            message: message.into(),
            intent: None,
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code, message, intent) = match self {
            ApiError::NotFound(message) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                crate::provider::RESOURCE_MISSING,
                message,
                None,
            ),
            ApiError::UnknownRoute => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unrecognized_request_url",
                "Unrecognized request URL.".to_owned(),
                None,
            ),
            ApiError::Invalid {
                code,
                message,
                intent,
            } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                code,
                message,
                intent,
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "Invalid API key provided.".to_owned(),
                None,
            ),
            ApiError::Simulated => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "simulated_failure",
                "Simulated provider failure (api_error_rate).".to_owned(),
                None,
            ),
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "paysim request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "internal_error",
                    "An internal error occurred.".to_owned(),
                    None,
                )
            }
        };
        let body = ErrorBody {
            error: ErrorDetail {
                r#type: kind.to_owned(),
                code: code.to_owned(),
                message,
                payment_intent: intent.map(|intent| *intent),
            },
        };
        (status, Json(body)).into_response()
    }
}

async fn check_api_key(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &shared.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        // Comparing digests keeps the comparison's timing independent of the key.
        if Sha256::digest(given.as_bytes()) != Sha256::digest(expected.as_bytes()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Answers a fraction `api_error_rate` of calls with a 500: half before doing anything,
/// half after doing the work, like a provider whose response is lost on the way back.
async fn inject_faults(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let rate = shared.config.api_error_rate;
    if rate > 0.0 {
        let roll: f64 = rand::random();
        if roll < rate / 2.0 {
            return ApiError::Simulated.into_response();
        }
        if roll < rate {
            let lost = next.run(request).await;
            tracing::debug!(status = %lost.status(), "paysim dropped a response (api_error_rate)");
            return ApiError::Simulated.into_response();
        }
    }
    next.run(request).await
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("parameter_invalid", format!("Invalid request body: {e}")))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX)
        .ok_or_else(|| {
            ApiError::invalid(
                "idempotency_key_invalid",
                format!("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters."),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// What makes two requests "the same" for an idempotency key: their parsed content, so
/// that whitespace or field order do not matter.
fn fingerprint<T: serde::Serialize>(request: &T) -> anyhow::Result<String> {
    Ok(hex::encode(Sha256::digest(serde_json::to_vec(request)?)))
}

fn validate(request: &CreateIntent) -> Result<(), ApiError> {
    if !(1..=AMOUNT_MAX).contains(&request.amount) {
        return Err(ApiError::invalid(
            "parameter_invalid",
            format!("amount must be between 1 and {AMOUNT_MAX} (minor units)."),
        ));
    }
    if request.currency.len() != 3 || !request.currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(ApiError::invalid(
            "parameter_invalid",
            "currency must be a lower-case three-letter ISO code.",
        ));
    }
    if request.payment_token.is_empty()
        || request.payment_token.len() > PAYMENT_TOKEN_BYTES_MAX
        || !request.payment_token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::invalid(
            "parameter_invalid",
            format!(
                "payment_token must be 1 to {PAYMENT_TOKEN_BYTES_MAX} visible ASCII characters."
            ),
        ));
    }
    if request.metadata.len() > METADATA_ENTRIES_MAX
        || request.metadata.iter().any(|(key, value)| {
            key.is_empty()
                || key.len() > METADATA_KEY_BYTES_MAX
                || value.len() > METADATA_VALUE_BYTES_MAX
        })
    {
        return Err(ApiError::invalid(
            "parameter_invalid",
            format!(
                "metadata takes up to {METADATA_ENTRIES_MAX} keys of up to \
                 {METADATA_KEY_BYTES_MAX} characters with values of up to \
                 {METADATA_VALUE_BYTES_MAX}."
            ),
        ));
    }
    Ok(())
}

async fn create_intent(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Intent>, ApiError> {
    let key = idempotency_key(&headers)?;
    let request: CreateIntent = parse_json(&body)?;
    validate(&request)?;
    let fingerprint = fingerprint(&request)?;
    let now_ms = super::now_ms();
    let intent = Intent {
        id: super::new_id("pi"),
        status: IntentStatus::Processing,
        amount: request.amount,
        currency: request.currency,
        payment_token: request.payment_token,
        metadata: request.metadata,
        created: now_ms.div_euclid(1_000),
        last_payment_error: None,
    };
    let settle_at_ms = behaviour::settle_at_ms(
        Behaviour::of(&intent.payment_token),
        shared.config.latency_with_jitter_ms(),
        request
            .capture_deadline
            .map(|deadline| deadline.timestamp_millis()),
        now_ms,
    );
    let outcome = shared
        .store
        .create_intent(key.as_deref(), &fingerprint, &intent, settle_at_ms, now_ms)
        .await?;
    match outcome {
        CreateOutcome::Created(intent) => {
            tracing::debug!(intent = %intent.id, token = %intent.payment_token, "paysim created an intent");
            shared.settle_wake.notify_one();
            Ok(Json(intent))
        }
        CreateOutcome::Replayed(intent) => Ok(Json(intent)),
        CreateOutcome::KeyReused => Err(ApiError::invalid(
            "idempotency_key_reused",
            "Keys for idempotent requests can only be used with the same parameters they \
             were first used with.",
        )),
    }
}

fn no_such_intent(id: &str) -> ApiError {
    ApiError::NotFound(format!("No such payment_intent: '{id}'"))
}

async fn retrieve_intent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Intent>, ApiError> {
    match shared.store.intent(&id).await? {
        Some(intent) => Ok(Json(intent)),
        None => Err(no_such_intent(&id)),
    }
}

async fn cancel_intent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Intent>, ApiError> {
    match shared.store.cancel_intent(&id, super::now_ms()).await? {
        CancelOutcome::Canceled(intent) => {
            shared.deliver_wake.notify_one();
            Ok(Json(intent))
        }
        CancelOutcome::AlreadyCanceled(intent) => Ok(Json(intent)),
        CancelOutcome::Refused(intent) => Err(ApiError::Invalid {
            code: "payment_intent_unexpected_state",
            // Both refusals mean the money was captured, even when tok_late_visa still
            // reads `processing`.
            message: "You cannot cancel this PaymentIntent: its payment was already captured."
                .to_owned(),
            intent: Some(Box::new(intent)),
        }),
        CancelOutcome::NotFound => Err(no_such_intent(&id)),
    }
}

async fn create_refund(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Refund>, ApiError> {
    let key = idempotency_key(&headers)?;
    let request: CreateRefund = parse_json(&body)?;
    if let Some(amount) = request.amount
        && !(1..=AMOUNT_MAX).contains(&amount)
    {
        return Err(ApiError::invalid(
            "parameter_invalid",
            format!("amount must be between 1 and {AMOUNT_MAX} (minor units)."),
        ));
    }
    let fingerprint = fingerprint(&request)?;
    let outcome = shared
        .store
        .refund(
            key.as_deref(),
            &fingerprint,
            &request.payment_intent,
            request.amount,
            super::now_ms(),
        )
        .await?;
    match outcome {
        RefundOutcome::Created(refund) | RefundOutcome::Replayed(refund) => Ok(Json(refund)),
        RefundOutcome::KeyReused => Err(ApiError::invalid(
            "idempotency_key_reused",
            "Keys for idempotent requests can only be used with the same parameters they \
             were first used with.",
        )),
        RefundOutcome::NotFound => Err(no_such_intent(&request.payment_intent)),
        RefundOutcome::NotCaptured(intent) => Err(ApiError::Invalid {
            code: "payment_intent_unexpected_state",
            message: format!(
                "This PaymentIntent has a status of {} and has no charge to refund.",
                intent.status
            ),
            intent: Some(Box::new(intent)),
        }),
        RefundOutcome::AlreadyRefunded => Err(ApiError::invalid(
            "charge_already_refunded",
            format!(
                "The charge of {} has already been refunded.",
                request.payment_intent
            ),
        )),
        RefundOutcome::AmountTooLarge { captured } => Err(ApiError::invalid(
            "amount_too_large",
            format!("Refund amount is greater than the captured amount ({captured})."),
        )),
    }
}

/// The query of `GET /v1/refunds`. Stripe also lists every refund when no intent is
/// given, paginated; the simulator only lists one intent's, all on one page.
#[derive(Debug, Deserialize)]
struct ListRefunds {
    payment_intent: Option<String>,
}

async fn list_refunds(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ListRefunds>, QueryRejection>,
) -> Result<Json<List<Refund>>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::invalid("parameter_invalid", format!("Invalid query string: {e}"))
    })?;
    let Some(intent_id) = query.payment_intent.filter(|id| !id.is_empty()) else {
        return Err(ApiError::invalid(
            "parameter_missing",
            "Missing required param: payment_intent.",
        ));
    };
    match shared.store.refunds_of(&intent_id).await? {
        Some(refunds) => Ok(Json(List::complete(refunds))),
        None => Err(no_such_intent(&intent_id)),
    }
}
