//! Several nodes on one PostgreSQL (`docs/adr/0009-show-ownership.md`): this node's
//! identity, and the layer that forwards a request about a show another node owns.
//!
//! A request is first handled here as usual. If the engine answers that another node
//! owns the show ([`EngineError::NotOwner`](boxoffice_commands::EngineError::NotOwner),
//! which becomes an [`ApiError`] carrying [`ForwardTo`]), nothing was written and the
//! idempotency key was let go (the answer is a 503), so the layer sends the original
//! request (method, path, headers, body) to the owner and returns its answer unchanged.
//! A forwarded request carries [`FORWARDED_HEADER`] and is never forwarded again: a node
//! that has lost the show meanwhile answers 503 `not_owner` with `Retry-After`.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use boxoffice_domain::ShowId;

use crate::error::{ApiError, REQUEST_ID_HEADER};
use crate::state::AppState;

/// Marks a request one node forwarded to another.
pub const FORWARDED_HEADER: &str = "x-boxoffice-forwarded";
/// Names the node that answered a request (the owner's, for a forwarded one).
pub const NODE_HEADER: &str = "x-boxoffice-node";
/// Longest wait for the owner's answer: inside the request timeout of this node, and
/// longer than the longest checkout wait (30 s).
const FORWARD_TIMEOUT_MS: u64 = crate::REQUEST_TIMEOUT_MS - 1_000;
/// How long a request waits for this node's index of the log to find an object (a
/// reservation, a waitlist entry) of a show it does not own.
const LOCATE_WAIT_MS: u64 = 2_000;

/// The owner of the show a request was about, set on the local answer by [`ApiError`].
#[derive(Debug, Clone)]
pub struct ForwardTo {
    pub show: ShowId,
    /// `None`: the owner is not known right now (the answer stays a 503 to retry).
    pub owner_url: Option<String>,
}

/// The HTTP client requests are forwarded with (one connection pool per node).
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
}

impl Forwarder {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
                .connect_timeout(Duration::from_millis(1_000))
                .pool_max_idle_per_host(256)
                .build()?,
        })
    }
}

/// The show of a reservation or waitlist entry: from the engine's index, or, for a show
/// this node does not own, from its index of the whole log (waiting briefly for it to
/// catch up, so a client that just held through another node finds its hold).
pub async fn show_of(app: &AppState, object: uuid::Uuid) -> Option<ShowId> {
    app.engine
        .locate(object, Duration::from_millis(LOCATE_WAIT_MS))
        .await
}

/// This node's id when none is configured: generated once into `<data dir>/node-id`, so
/// that a restarted node is the same node (and takes its own leases back at once).
pub fn default_node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    std::fs::write(&path, &id)?;
    Ok(id)
}

/// Headers that belong to one connection, not to the request or response.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Runs the request here; if another node owns its show, sends it there instead.
pub async fn layer(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Some(cluster) = app.engine.cluster().cloned() else {
        return next.run(request).await;
    };
    let node = HeaderValue::from_str(cluster.node_id()).ok();
    let answered_here = |mut response: Response| {
        if let Some(node) = node.clone() {
            response.headers_mut().insert(NODE_HEADER, node);
        }
        response
    };
    if request.headers().contains_key(FORWARDED_HEADER) {
        return answered_here(next.run(request).await);
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, crate::BODY_BYTES_MAX).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is too large",
        )
        .into_response();
    };
    let method = parts.method.clone();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    let headers = parts.headers.clone();
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes.clone())))
        .await;
    let Some(forward) = response.extensions().get::<ForwardTo>().cloned() else {
        return answered_here(response);
    };
    // An actor that found itself fenced off does not know who took the show: ask.
    let owner_url = match forward.owner_url {
        Some(url) => Some(url),
        None => cluster.current_owner(forward.show).await,
    };
    let Some(owner) = owner_url.filter(|u| *u != cluster.config().advertise_url) else {
        return answered_here(response);
    };
    let Some(forwarder) = app.forwarder.as_ref() else {
        return answered_here(response);
    };
    match send(forwarder, &owner, method, &path, &headers, bytes).await {
        Ok(answer) => {
            if answer.status() == StatusCode::SERVICE_UNAVAILABLE {
                // The owner is stopping or has lost the show: ask the database next time.
                cluster.forget_owner(forward.show);
            }
            answer
        }
        Err(e) => {
            tracing::warn!(show = %forward.show, %owner, error = %e, "forwarding to the show's owner failed");
            // The owner may be dead: the next request asks the database again and takes
            // the show over once its lease has expired.
            cluster.forget_owner(forward.show);
            answered_here(response)
        }
    }
}

async fn send(
    forwarder: &Forwarder,
    owner: &str,
    method: axum::http::Method,
    path: &str,
    headers: &HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, reqwest::Error> {
    let mut request = forwarder
        .client
        .request(method, format!("{}{path}", owner.trim_end_matches('/')));
    for (name, value) in headers {
        if !hop_by_hop(name) && name != REQUEST_ID_HEADER {
            request = request.header(name, value);
        }
    }
    let answer = request
        .header(FORWARDED_HEADER, HeaderValue::from_static("1"))
        .header(REQUEST_ID_HEADER, crate::context::request_id())
        .body(body)
        .send()
        .await?;
    let status = answer.status();
    let mut response_headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response_headers.append(name.clone(), value.clone());
        }
    }
    let body = answer.bytes().await?;
    let mut response = (status, body).into_response();
    *response.headers_mut() = response_headers;
    Ok(response)
}
