//! Idempotency keys on every POST, with Stripe's semantics: the first response to a
//! user's key is stored and replayed (same status, same body) to later requests with that
//! key and the same method, path and body; the same key with a different request is 422
//! `idempotency_key_reused`; a request that arrives while the first is still being
//! handled is 409 `idempotency_key_in_use`. Keys are kept at least 24 hours. A response
//! in the 5xx range is not stored, so that a retry with the key can succeed.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use boxoffice_store::idempotency::{Claim, IdempotencyKeys};
use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::context::idempotency_key;
use crate::error::ApiError;
use crate::state::AppState;

/// How long a key is remembered (the contract's minimum is 24 hours).
pub const KEY_TTL_HOURS: i64 = 24;
/// A first request unanswered for this long is taken to have died with its process;
/// longer than the request timeout, so a live request is never taken over.
pub const KEY_ABANDONED_AFTER_SECONDS: i64 = 120;
const _: () = assert!(KEY_ABANDONED_AFTER_SECONDS * 1000 > crate::REQUEST_TIMEOUT_MS as i64);
/// Largest response stored for replay; the API's bodies are far smaller.
const STORED_RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// Header set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

pub async fn layer(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let key = match idempotency_key(request.headers()) {
        Ok(Some(key)) => key,
        Ok(None) => return next.run(request).await,
        Err(e) => return e.into_response(),
    };
    // Keys are per user; a request without a valid token goes on to be refused 401.
    let (mut parts, body) = request.into_parts();
    let Ok(caller) = Caller::from_request_parts(&mut parts, &app).await else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let bytes = match axum::body::to_bytes(body, crate::BODY_BYTES_MAX).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is too large",
            )
            .into_response();
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b" ");
    hasher.update(parts.uri.path().as_bytes());
    hasher.update(b"?");
    hasher.update(parts.uri.query().unwrap_or_default().as_bytes());
    hasher.update(b"\n");
    hasher.update(&bytes);
    let fingerprint: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let user = caller.user_id.to_string();
    let keys: &Arc<IdempotencyKeys> = &app.idempotency;
    let claim = keys
        .claim(
            &user,
            &key,
            &fingerprint,
            Utc::now(),
            Duration::seconds(KEY_ABANDONED_AFTER_SECONDS),
            Duration::hours(KEY_TTL_HOURS),
        )
        .await;
    match claim {
        Err(e) => {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                e.to_string(),
            );
            error.retry_after_seconds = Some(1);
            error.into_response()
        }
        Ok(Claim::Mismatch) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this idempotency key was used for a different request",
        )
        .into_response(),
        Ok(Claim::InFlight) => ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "a request with this idempotency key is still being handled",
        )
        .into_response(),
        Ok(Claim::Replay {
            status,
            body,
            location,
        }) => replay(status, body, location),
        Ok(Claim::Started) => {
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            let (parts, body) = response.into_parts();
            let Ok(body) = axum::body::to_bytes(body, STORED_RESPONSE_BYTES_MAX).await else {
                let _ = keys.release(&user, &key).await;
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "response too large",
                )
                .into_response();
            };
            let status = parts.status;
            if status.is_server_error() {
                // Not stored: the same key may be retried once the problem is gone.
                if let Err(e) = keys.release(&user, &key).await {
                    tracing::warn!(error = %e, "could not release an idempotency key");
                }
            } else {
                let location = parts
                    .headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok());
                if let Err(e) = keys
                    .complete(&user, &key, status.as_u16(), &body, location)
                    .await
                {
                    // The effect happened; only the replay is lost. A retry with the key
                    // will find it in flight until it is taken over as abandoned.
                    tracing::warn!(error = %e, "could not store an idempotent response");
                }
            }
            Response::from_parts(parts, Body::from(body))
        }
    }
}

fn replay(status: u16, body: Vec<u8>, location: Option<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_client_error() || status.is_server_error() {
        "application/problem+json"
    } else {
        "application/json"
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    response
}
