//! The live seat map: `GET /v1/shows/{show_id}/seatmap/stream`, server-sent events a
//! client follows to stay in sync without polling. It owns the stream's protocol: a
//! `snapshot` event with the whole seat map first, then a `seats` event per change, each
//! with the show's log position as its event id. A client that falls behind, or whose
//! snapshot cannot be brought forward by the next change, gets a fresh `snapshot`
//! rather than a gap; it never misses a change.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use boxoffice_domain::ShowId;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, broadcast, watch};

use crate::error::{ApiError, ApiResult};
use crate::openapi::Problem;
use crate::seatmap::{SeatChanges, ShowView};
use crate::shows::ShowPath;
use crate::state::AppState;
use crate::views;

/// How often an idle stream sends a comment, so that proxies and clients can tell a
/// quiet show from a dead connection.
const KEEP_ALIVE_INTERVAL_MS: u64 = 15_000;
/// How long a client waits before reconnecting after the stream ends.
const RECONNECT_AFTER_MS: u64 = 1_000;
/// Seconds a client is asked to wait when every stream is taken.
const RETRY_AFTER_FULL_SECONDS: u32 = 5;

/// Follow a show's seat map
///
/// Server-sent events: first a `snapshot` event with the whole seat map (as
/// `GET /v1/shows/{show_id}/seatmap` answers it), then a `seats` event per change,
/// `{position, changes: [{id, status} | {section, available}]}`, each with the show's
/// log position as its event id, and keep-alive comments. A client that reconnects with
/// `Last-Event-ID` gets no snapshot if nothing changed since.
#[utoipa::path(
    get,
    path = "/v1/shows/{show_id}/seatmap/stream",
    tag = "shows",
    operation_id = "seatmap_stream",
    params(
        ShowPath,
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[!-~]+( [!-~]+)*$",
         description = "The id of the last event received, when reconnecting."),
    ),
    responses(
        (status = 200, description = "The event stream.", body = String, content_type = "text/event-stream"),
        (status = 404, description = "`show_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn seatmap_stream(
    State(app): State<AppState>,
    Path(show_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let not_found = || ApiError::not_found("show_not_found", "show");
    let show_id: ShowId = show_id.parse().map_err(|_| not_found())?;
    let view = app.seatmaps.show(show_id).ok_or_else(not_found)?;
    let Some(permit) = app.seatmaps.stream_permit() else {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "too many seat-map streams are open; try again later",
        );
        e.retry_after_seconds = Some(RETRY_AFTER_FULL_SECONDS);
        return Err(e);
    };
    // A client reconnecting with the id of the last event it saw needs no snapshot if
    // nothing changed since; otherwise it gets one (changes are not kept to replay).
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (changes, position, first) = {
        let view = view.read().expect("show lock");
        if view.state.show.is_none() {
            return Err(not_found());
        }
        // Subscribe first: a change the snapshot does not reflect then still arrives.
        let changes = view.subscribe();
        let first = if last_event_id == Some(view.position) {
            None
        } else {
            Some(snapshot(&view).ok_or_else(not_found)?.0)
        };
        (changes, view.position, first)
    };
    let follower = Follower {
        view,
        changes,
        closing: app.seatmaps.streams_closing(),
        position,
        pending: first,
        _permit: permit,
    };
    let events = futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next_event().await?;
        Some((Ok::<_, Infallible>(event), follower))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)))
        .into_response())
}

/// One open stream: the show it follows and how far the client is.
struct Follower {
    view: Arc<RwLock<ShowView>>,
    changes: broadcast::Receiver<Arc<SeatChanges>>,
    closing: watch::Receiver<bool>,
    /// The show position the client's seat map reflects.
    position: u64,
    /// An event to send before waiting for changes.
    pending: Option<Event>,
    /// Counts this stream against the limit until it is dropped.
    _permit: OwnedSemaphorePermit,
}

impl Follower {
    /// The next event to send, or `None` when the stream ends: the server shuts down,
    /// or the show stopped being served.
    async fn next_event(&mut self) -> Option<Event> {
        if let Some(event) = self.pending.take() {
            return Some(event);
        }
        loop {
            let received = tokio::select! {
                biased;
                _ = self.closing.wait_for(|closing| *closing) => return None,
                received = self.changes.recv() => received,
            };
            match received {
                Ok(changes) => {
                    if changes.position <= self.position {
                        // Already in what the client has.
                        continue;
                    }
                    if changes.after < self.position {
                        // The client's snapshot was read in the middle of this page, so
                        // the page's changes are counted from a state the client never
                        // saw; only a new snapshot is sure to be right.
                        return self.resync();
                    }
                    self.position = changes.position;
                    return Some(seats_event(&changes));
                }
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "seat-map stream fell behind; sending a snapshot");
                    return self.resync();
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// A fresh snapshot, from which the client continues.
    fn resync(&mut self) -> Option<Event> {
        let view = self.view.read().expect("show lock");
        let (event, position) = snapshot(&view)?;
        self.position = position;
        Some(event)
    }
}

/// The whole seat map as a `snapshot` event, and the position it reflects.
fn snapshot(view: &ShowView) -> Option<(Event, u64)> {
    let show = view.state.show.as_ref()?;
    let body = views::SeatmapView::new(&view.state, show, view.position);
    let event = Event::default()
        .event("snapshot")
        .id(view.position.to_string())
        .retry(Duration::from_millis(RECONNECT_AFTER_MS))
        .data(serde_json::to_string(&body).expect("a seat map serializes"));
    Some((event, view.position))
}

fn seats_event(changes: &SeatChanges) -> Event {
    Event::default()
        .event("seats")
        .id(changes.position.to_string())
        .data(serde_json::to_string(changes).expect("seat changes serialize"))
}
