//! `POST /v1/webhooks/payments`: the payment provider's signed notifications.
//!
//! The signature is checked over the raw body (a missing, wrong or stale one is 400
//! `invalid_signature` and changes nothing); the event is stored and deduplicated by its
//! id before the provider gets its 200; then the saga is told to re-read the payment.
//! Nothing in the body is trusted beyond "look at this payment": duplicates and
//! out-of-order deliveries are harmless by construction.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use boxoffice_domain::ReservationId;
use boxoffice_sagas::inbox::Received;
use boxoffice_sagas::provider::WebhookEvent;
use boxoffice_sagas::signature::{self, SIGNATURE_HEADER};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult};
use crate::openapi::Problem;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(payment_webhook))
}

/// A payment provider's webhook event, as the simulator (and Stripe) sends it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "evt_0192f0c4a3b27e61",
    "type": "payment_intent.succeeded",
    "created": 1_800_000_000,
    "data": {"object": {
        "id": "pi_0192f0c4a3b27e61", "status": "succeeded", "amount": 12000,
        "currency": "eur", "payment_token": "tok_visa", "created": 1_800_000_000,
        "metadata": {"reservation_id": "rsv_0192f0c4a3b27e61a0c3d0e5b0a1c2d3"}
    }}
}))]
pub struct WebhookBody {
    /// The provider's event id; a repeated id is acknowledged and ignored.
    pub id: String,
    /// `payment_intent.succeeded`, `payment_intent.payment_failed`,
    /// `payment_intent.canceled`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds.
    pub created: i64,
    /// `{object: PaymentIntent}`; only `object.metadata.reservation_id` is used, to know
    /// which payment to re-read from the provider.
    pub data: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookAck {
    pub received: bool,
    /// The event id was delivered before; nothing more was done.
    pub duplicate: bool,
}

/// Payment provider webhook
///
/// Signed by the provider with `Boxoffice-Signature: t=<unix seconds>,v1=<hex
/// hmac-sha256(secret, "<t>.<raw body>")>`. A missing, wrong or older-than-300-s
/// signature is 400 `invalid_signature` and changes nothing. The event is stored and
/// deduplicated by id; the payment it names is then re-read from the provider, so
/// duplicates and out-of-order deliveries are harmless.
#[utoipa::path(
    post,
    path = "/v1/webhooks/payments",
    tag = "payments",
    request_body = WebhookBody,
    params(("Boxoffice-Signature" = String, Header, pattern = "^[!-~]+( [!-~]+)*$",
        description = "`t=<unix seconds>,v1=<hex hmac-sha256>`")),
    responses(
        (status = 200, description = "Received (or a duplicate, acknowledged).", body = WebhookAck),
        (status = 400, description = "`invalid_signature`, or `invalid_payload` for a signed body that is not a payment event.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: the event could not be stored; the provider retries.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn payment_webhook(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let now = app.engine.clock().now();
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok());
    signature::verify(&app.payments.webhook_secret, header, &body, now.timestamp())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_signature", e.to_string()))?;
    let event = WebhookEvent::parse(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            format!("the webhook body is not a payment event: {e}"),
        )
    })?;
    let intent = &event.data.object;
    let reservation = intent.metadata.get("reservation_id");
    let text = String::from_utf8_lossy(&body);
    let fresh = app
        .payments
        .inbox
        .record(
            &Received {
                event_id: &event.id,
                event_type: &event.r#type,
                intent_id: &intent.id,
                reservation_id: reservation.map(String::as_str),
                body: &text,
            },
            now,
        )
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        })?;
    if fresh {
        if let Some(id) = reservation.and_then(|r| r.parse::<ReservationId>().ok()) {
            app.payments.saga.poke(id);
        }
        if let Err(e) = app.payments.inbox.mark_processed(&event.id, now).await {
            // Stored but not marked: the start-up sweep pokes the saga again, harmlessly.
            tracing::warn!(event = %event.id, error = %e, "webhook not marked processed");
        }
    }
    tracing::info!(event = %event.id, kind = %event.r#type, intent = %intent.id, duplicate = !fresh, "payment webhook");
    Ok(axum::Json(WebhookAck {
        received: true,
        duplicate: !fresh,
    })
    .into_response())
}
