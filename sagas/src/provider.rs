//! The HTTP client the payment saga uses to talk to a Stripe-PaymentIntents-like
//! provider, and the wire types shared with the simulator ([`crate::paysim`]).
//!
//! Errors are split by what the caller may do next: a [`ProviderError::Transport`]
//! error means the outcome is unknown (the request may or may not have taken effect), so
//! the caller retries with the same idempotency key or asks, with
//! [`ProviderClient::retrieve`] or [`ProviderClient::list_refunds`]; a
//! [`ProviderError::Rejected`] error is the provider's final answer to that request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The whole-request timeout; a provider that has not answered by then is treated as a
/// lost response.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The TCP connect timeout.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Calls in flight to the provider at most, across every clone of a client; more wait
/// their turn (at most the request timeout). In an on-sale, thousands of payments wait on
/// the provider at once, and the client opened a connection for each call that found the
/// pooled ones busy: connects, accepts and a provider serving them all at once took a
/// tenth of the server's CPU (ADR 0015's profile). A few dozen connections, kept and
/// reused, carry the same calls.
pub const CALLS_IN_FLIGHT_MAX: usize = 64;
/// The largest response body read from the provider.
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024;

/// The error code of a 404 for an object that does not exist.
pub const RESOURCE_MISSING: &str = "resource_missing";

/// The status of a refund whose money went back (the only one the simulator uses;
/// Stripe also has `pending`, `requires_action`, `failed` and `canceled`).
pub const REFUND_SUCCEEDED: &str = "succeeded";

/// The webhook event type of an intent that settled successfully.
pub const EVENT_SUCCEEDED: &str = "payment_intent.succeeded";
/// The webhook event type of an intent whose payment was declined.
pub const EVENT_PAYMENT_FAILED: &str = "payment_intent.payment_failed";
/// The webhook event type of an intent that was cancelled (voided).
pub const EVENT_CANCELED: &str = "payment_intent.canceled";

/// Where a payment intent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    /// Accepted, not settled yet.
    Processing,
    /// Captured: the money moved.
    Succeeded,
    /// The payment failed (declined); nothing was captured.
    RequiresPaymentMethod,
    /// Voided; nothing was or will be captured.
    Canceled,
}

impl IntentStatus {
    /// The wire name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            IntentStatus::Processing => "processing",
            IntentStatus::Succeeded => "succeeded",
            IntentStatus::RequiresPaymentMethod => "requires_payment_method",
            IntentStatus::Canceled => "canceled",
        }
    }

    /// The status named `name` on the wire, if any.
    pub fn parse(name: &str) -> Option<Self> {
        [
            IntentStatus::Processing,
            IntentStatus::Succeeded,
            IntentStatus::RequiresPaymentMethod,
            IntentStatus::Canceled,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }
}

impl std::fmt::Display for IntentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the last payment attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentError {
    pub code: String,
    pub message: String,
}

/// A payment intent as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// `pi_…`
    pub id: String,
    pub status: IntentStatus,
    /// Minor units (cents).
    pub amount: i64,
    /// Lower-case ISO 4217 code.
    pub currency: String,
    pub payment_token: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Unix seconds.
    pub created: i64,
    #[serde(default)]
    pub last_payment_error: Option<PaymentError>,
}

/// The body of a create request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateIntent {
    /// Minor units (cents), positive.
    pub amount: i64,
    /// Lower-case ISO 4217 code.
    pub currency: String,
    pub payment_token: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The merchant's payment deadline. The simulator captures `tok_late_visa` just after
    /// it, to reproduce a provider that settles after the merchant gave up.
    #[serde(default)]
    pub capture_deadline: Option<DateTime<Utc>>,
}

/// The body of a refund request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRefund {
    pub payment_intent: String,
    /// Minor units; the whole intent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
}

/// A refund as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// `re_…`
    pub id: String,
    pub payment_intent: String,
    /// Minor units.
    pub amount: i64,
    /// [`REFUND_SUCCEEDED`], or another of Stripe's refund statuses.
    pub status: String,
}

/// A page of a list, Stripe style: `{"object": "list", "data": [...], "has_more": false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct List<T> {
    /// Always `"list"`.
    pub object: String,
    pub data: Vec<T>,
    /// More items follow this page.
    pub has_more: bool,
}

impl<T> List<T> {
    /// A complete list of `data`.
    pub fn complete(data: Vec<T>) -> Self {
        List {
            object: "list".to_owned(),
            data,
            has_more: false,
        }
    }
}

/// The body the provider POSTs to the webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// `evt_…`; redeliveries of one event carry the same id.
    pub id: String,
    /// One of [`EVENT_SUCCEEDED`], [`EVENT_PAYMENT_FAILED`], [`EVENT_CANCELED`].
    #[serde(rename = "type")]
    pub r#type: String,
    /// Unix seconds at which the event happened (not when it was delivered).
    pub created: i64,
    pub data: WebhookData,
}

/// The object a webhook event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookData {
    /// The intent as it was when the event happened.
    pub object: Intent,
}

impl WebhookEvent {
    /// Parses a delivery's raw body. Any bytes are safe to pass: serde_json refuses
    /// invalid input (and nesting deeper than 128) with an error, never a panic.
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// The error body the provider answers with, Stripe style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `invalid_request_error` or `api_error`.
    #[serde(rename = "type")]
    pub r#type: String,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_intent: Option<Intent>,
}

/// What went wrong talking to the provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// No answer, a timeout or a 5xx: the outcome is unknown and the caller may retry
    /// with the same idempotency key.
    #[error("payment provider unreachable or failing: {0}")]
    Transport(String),
    /// A 4xx: the provider refused the request and nothing changed. `intent` is the
    /// intent's current state when the provider includes it (a refused cancellation).
    /// It is boxed to keep `Result<_, ProviderError>` small.
    #[error("payment provider refused the request ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
        intent: Option<Box<Intent>>,
    },
    /// The intent (or the intent to refund) does not exist: a 404 with code
    /// [`RESOURCE_MISSING`].
    #[error("payment intent not found")]
    NotFound,
}

/// A client for one provider, cheap to clone.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl ProviderClient {
    /// A client for the provider at `base_url` (`http://host:port`, no trailing path).
    pub fn new(base_url: &str, api_key: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .pool_max_idle_per_host(CALLS_IN_FLIGHT_MAX)
            .build()
            // Building only fails when a TLS backend cannot initialise; this crate
            // builds reqwest without TLS, so a failure is a build misconfiguration.
            .expect("the HTTP client builds without TLS");
        ProviderClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            in_flight: Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT_MAX)),
        }
    }

    /// The provider's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Creates an intent. Repeating the call with the same key and the same request
    /// returns the same intent, so a [`ProviderError::Transport`] error is safe to retry.
    pub async fn create_intent(
        &self,
        req: &CreateIntent,
        idempotency_key: &str,
    ) -> Result<Intent, ProviderError> {
        let request = self
            .http
            .post(format!("{}/v1/payment_intents", self.base_url))
            .header("Idempotency-Key", idempotency_key)
            .json(req);
        self.send(request).await
    }

    /// The intent's current state.
    pub async fn retrieve(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        if !is_plain_id(intent_id) {
            return Err(ProviderError::NotFound);
        }
        let request = self
            .http
            .get(format!("{}/v1/payment_intents/{intent_id}", self.base_url));
        self.send(request).await
    }

    /// Voids the intent. Cancelling a cancelled intent succeeds again; cancelling a
    /// captured one is `Rejected { status: 400, code: "payment_intent_unexpected_state",
    /// intent: Some(current) }`.
    pub async fn cancel(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        if !is_plain_id(intent_id) {
            return Err(ProviderError::NotFound);
        }
        let request = self.http.post(format!(
            "{}/v1/payment_intents/{intent_id}/cancel",
            self.base_url
        ));
        self.send(request).await
    }

    /// Refunds a captured intent, in full when `amount` is `None`.
    pub async fn refund(
        &self,
        intent_id: &str,
        amount: Option<i64>,
        idempotency_key: &str,
    ) -> Result<Refund, ProviderError> {
        let body = CreateRefund {
            payment_intent: intent_id.to_owned(),
            amount,
        };
        let request = self
            .http
            .post(format!("{}/v1/refunds", self.base_url))
            .header("Idempotency-Key", idempotency_key)
            .json(&body);
        self.send(request).await
    }

    /// Every refund of the intent, in any status, oldest first: a read, which changes
    /// nothing at the provider. An intent the provider does not know is
    /// [`ProviderError::NotFound`].
    pub async fn list_refunds(&self, intent_id: &str) -> Result<Vec<Refund>, ProviderError> {
        if !is_plain_id(intent_id) {
            return Err(ProviderError::NotFound);
        }
        let request = self
            .http
            .get(format!("{}/v1/refunds", self.base_url))
            .query(&[("payment_intent", intent_id)]);
        let list: List<Refund> = self.send(request).await?;
        if list.has_more {
            // Pages are not followed: a partial list must not pass for the whole one.
            return Err(ProviderError::Transport(format!(
                "the provider paginated the refunds of {intent_id}, which this client does not follow"
            )));
        }
        Ok(list.data)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ProviderError> {
        let request = match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        // Nothing was sent when the wait runs out, so the caller may retry either way.
        let wait = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let _turn = tokio::time::timeout(wait, self.in_flight.acquire())
            .await
            .map_err(|_| {
                ProviderError::Transport(format!(
                    "{CALLS_IN_FLIGHT_MAX} provider calls in flight for {REQUEST_TIMEOUT_MS} ms"
                ))
            })?
            .expect("the provider call semaphore is never closed");
        let mut response = request
            .send()
            .await
            .map_err(|e| ProviderError::Transport(error_chain(&e)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ProviderError::Transport(error_chain(&e)))?
        {
            if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
                return Err(ProviderError::Transport(format!(
                    "response body over {RESPONSE_BYTES_MAX} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            // A 2xx we cannot read leaves us not knowing what the provider did, which is
            // what Transport means.
            return serde_json::from_slice(&body).map_err(|e| {
                ProviderError::Transport(format!("unreadable {status} response: {e}"))
            });
        }
        if status.is_server_error() {
            return Err(ProviderError::Transport(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        if status.is_client_error() {
            let rejected = match serde_json::from_slice::<ErrorBody>(&body) {
                // Only the provider's own "no such object" is NotFound: a 404 for a wrong
                // base URL must not read as "the intent does not exist".
                Ok(ErrorBody { error })
                    if status == reqwest::StatusCode::NOT_FOUND
                        && error.code == RESOURCE_MISSING =>
                {
                    ProviderError::NotFound
                }
                Ok(ErrorBody { error }) => ProviderError::Rejected {
                    status: status.as_u16(),
                    code: error.code,
                    message: error.message,
                    intent: error.payment_intent.map(Box::new),
                },
                Err(_) => ProviderError::Rejected {
                    status: status.as_u16(),
                    code: "unknown".to_owned(),
                    message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                    intent: None,
                },
            };
            return Err(rejected);
        }
        Err(ProviderError::Transport(format!(
            "unexpected status {status}"
        )))
    }
}

/// The longest intent id the client will put in a URL.
pub const INTENT_ID_BYTES_MAX: usize = 255;

/// Provider ids are `[A-Za-z0-9_-]+`. Anything else (a corrupt stored id, `..`) would
/// leave its path segment, and cannot name an intent anyway, so it is `NotFound` without
/// asking.
pub fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= INTENT_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_by_their_wire_names() {
        for status in [
            IntentStatus::Processing,
            IntentStatus::Succeeded,
            IntentStatus::RequiresPaymentMethod,
            IntentStatus::Canceled,
        ] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(IntentStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(IntentStatus::parse("requires_capture"), None);
    }

    #[test]
    fn a_webhook_event_uses_type_on_the_wire() {
        let event = WebhookEvent {
            id: "evt_1".into(),
            r#type: EVENT_SUCCEEDED.into(),
            created: 5,
            data: WebhookData {
                object: Intent {
                    id: "pi_1".into(),
                    status: IntentStatus::Succeeded,
                    amount: 1250,
                    currency: "eur".into(),
                    payment_token: "tok_visa".into(),
                    metadata: BTreeMap::from([("reservation_id".into(), "r1".into())]),
                    created: 4,
                    last_payment_error: None,
                },
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "payment_intent.succeeded");
        assert_eq!(json["data"]["object"]["status"], "succeeded");
        assert_eq!(
            WebhookEvent::parse(json.to_string().as_bytes()).unwrap(),
            event
        );
    }

    #[test]
    fn parsing_odd_bytes_is_an_error_not_a_panic() {
        let deep = "[".repeat(10_000);
        let inputs: [&[u8]; 8] = [
            b"",
            b"\xff\xfe",
            b"null",
            b"{}",
            br#"{"id":1}"#,
            br#"{"id":"evt","type":"x","created":1,"data":{"object":{"status":"nope"}}}"#,
            br#"{"id":"evt","type":"x","created":1e400,"data":null}"#,
            deep.as_bytes(),
        ];
        for input in inputs {
            assert!(WebhookEvent::parse(input).is_err());
        }
    }

    #[test]
    fn only_plain_ids_go_into_a_path() {
        assert!(is_plain_id("pi_0a1B-2"));
        for id in ["", "..", "pi/1", "pi?x", "pi 1", "pi%2F", "π"] {
            assert!(!is_plain_id(id), "{id}");
        }
        assert!(!is_plain_id(&"a".repeat(INTENT_ID_BYTES_MAX + 1)));
    }

    #[test]
    fn a_list_reads_stripes_shape() {
        let json = r#"{"object":"list","data":[{"id":"re_1","payment_intent":"pi_1",
            "amount":5,"status":"succeeded"}],"has_more":false,"url":"/v1/refunds"}"#;
        let list: List<Refund> = serde_json::from_str(json).unwrap();
        assert_eq!(
            list,
            List::complete(vec![Refund {
                id: "re_1".into(),
                payment_intent: "pi_1".into(),
                amount: 5,
                status: REFUND_SUCCEEDED.into(),
            }])
        );
    }

    #[tokio::test]
    async fn an_unreachable_provider_is_a_transport_error() {
        // Port 9 on loopback (discard) is closed on any sane test machine, so the
        // connection is refused at once.
        let client = ProviderClient::new("http://127.0.0.1:9/", None);
        assert_eq!(client.base_url(), "http://127.0.0.1:9");
        assert!(matches!(
            client.retrieve("pi_1").await,
            Err(ProviderError::Transport(_))
        ));
        assert_eq!(client.retrieve("../x").await, Err(ProviderError::NotFound));
        assert!(matches!(
            client.list_refunds("pi_1").await,
            Err(ProviderError::Transport(_))
        ));
        assert_eq!(
            client.list_refunds("pi_1&x=y").await,
            Err(ProviderError::NotFound)
        );
    }
}
