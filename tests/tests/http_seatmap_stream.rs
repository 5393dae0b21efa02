//! The live seat map over real HTTP (both backends): a client opens
//! `GET /v1/shows/{id}/seatmap/stream`, starts from the `snapshot` event, and sees holds
//! and cancellations arrive as `seats` events, each at or past the log position the write
//! answered with. A client resuming with `Last-Event-ID` at the current position gets no
//! snapshot, an unknown show is a 404 problem, and shutting the server down ends the
//! stream instead of hanging. Every wait is bounded; nothing sleeps. Below HTTP, the read
//! model publishes per page only what the page changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use boxoffice_api::auth::Role;
use boxoffice_api::seatmap::{SeatChange, SeatMaps};
use boxoffice_commands::{CommandMeta, Engine, EngineConfig};
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::show::{Limits, ShowCommand};
use boxoffice_domain::{Command, RandomIds, ReservationId, ShowId, SystemClock, UserId};
use boxoffice_tests::http::Server;
use boxoffice_tests::{backends, open, show_definition};
use reqwest::Method as M;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::Instant;

/// Longest any expected event or end of stream may take to arrive.
const EVENT_WAIT_MS_MAX: u64 = 5_000;
/// Longest the server may take to shut down with streams open.
const SHUTDOWN_WAIT_MS_MAX: u64 = 10_000;

/// One server-sent event.
#[derive(Debug)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }

    /// The event id as a position; every event here carries one.
    fn position(&self) -> u64 {
        self.id
            .as_deref()
            .unwrap_or_else(|| panic!("event without an id: {self:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("event id is not a position ({e}): {self:?}"))
    }
}

/// A small `text/event-stream` parser over a response body, read chunk by chunk.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ends, waiting until `deadline` at most.
    async fn next(&mut self, deadline: Instant) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse(&block) {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("no event within the time limit")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => {
                    let text = std::str::from_utf8(&bytes).expect("the stream is UTF-8");
                    self.buffer.push_str(&text.replace('\r', ""));
                }
                None => {
                    assert!(
                        self.buffer.trim().is_empty(),
                        "the stream ended inside an event: {:?}",
                        self.buffer
                    );
                    return None;
                }
            }
        }
    }

    /// One block of lines; `None` for a block without data (a keep-alive comment).
    fn parse(&self, block: &str) -> Option<SseEvent> {
        let mut event = None;
        let mut id = None;
        let mut data: Option<String> = None;
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = Some(value.to_string()),
                "id" => id = Some(value.to_string()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                "retry" | "" => {}
                other => panic!("unknown SSE field {other:?} in {block:?}"),
            }
        }
        Some(SseEvent {
            event: event.unwrap_or_else(|| "message".into()),
            id,
            data: data?,
        })
    }
}

/// Seat statuses and GA counts a client keeps, as a stream's events update them.
#[derive(Default)]
struct ClientMap {
    seats: HashMap<String, String>,
    pools: HashMap<String, u64>,
    position: u64,
}

impl ClientMap {
    fn apply(&mut self, event: &SseEvent) {
        let data = event.json();
        let position = event.position();
        assert_eq!(
            data["position"], position,
            "the id is the position: {event:?}"
        );
        assert!(position >= self.position, "the stream went backwards");
        self.position = position;
        match event.event.as_str() {
            "snapshot" => {
                self.seats.clear();
                self.pools.clear();
                for section in data["sections"].as_array().unwrap() {
                    let id = section["id"].as_str().unwrap().to_string();
                    match section["kind"].as_str().unwrap() {
                        "seated" => {
                            for row in section["rows"].as_array().unwrap() {
                                for seat in row["seats"].as_array().unwrap() {
                                    self.seats.insert(
                                        seat["id"].as_str().unwrap().to_string(),
                                        seat["status"].as_str().unwrap().to_string(),
                                    );
                                }
                            }
                        }
                        _ => {
                            self.pools
                                .insert(id, section["available"].as_u64().unwrap());
                        }
                    }
                }
            }
            "seats" => {
                let changes = data["changes"].as_array().unwrap();
                assert!(!changes.is_empty(), "an empty change: {event:?}");
                for change in changes {
                    if let Some(id) = change["id"].as_str() {
                        assert!(self.seats.contains_key(id), "unknown seat {id}");
                        self.seats.insert(
                            id.to_string(),
                            change["status"].as_str().unwrap().to_string(),
                        );
                    } else {
                        let section = change["section"].as_str().unwrap();
                        assert!(self.pools.contains_key(section), "unknown pool {section}");
                        self.pools
                            .insert(section.to_string(), change["available"].as_u64().unwrap());
                    }
                }
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    fn seat(&self, id: &str) -> &str {
        self.seats.get(id).map_or("missing", String::as_str)
    }
}

/// Reads `seats` events into `map` until `done` holds at a position of at least
/// `position`, within the time limit. A snapshot here would mean the stream lost track.
async fn follow_until(
    reader: &mut SseReader,
    map: &mut ClientMap,
    position: u64,
    done: impl Fn(&ClientMap) -> bool,
) {
    let deadline = Instant::now() + Duration::from_millis(EVENT_WAIT_MS_MAX);
    while !(done(map) && map.position >= position) {
        let event = reader.next(deadline).await.expect("the stream ended early");
        assert_eq!(event.event, "seats", "{event:?}");
        map.apply(&event);
    }
}

fn log_position(response: &reqwest::Response) -> u64 {
    response.headers()["x-log-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn open_stream(server: &Server, show_id: &str, last_event_id: Option<u64>) -> SseReader {
    // No token: the stream is for anyone.
    let mut request = server
        .client
        .get(format!("{}/v1/shows/{show_id}/seatmap/stream", server.base));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    SseReader::new(request.send().await.unwrap())
}

async fn problem(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seat_map_stream_follows_holds_and_cancels() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let buyer = server.user(&[]).await.token;

        let created = server
            .req(M::POST, "/v1/shows", &organizer)
            .json(&boxoffice_tests::fixtures::contract_show())
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", backend.name);
        let created_at = log_position(&created);
        let show: Value = created.json().await.unwrap();
        let show_id = show["show_id"].as_str().unwrap().to_string();

        // Wait (bounded, by the server) until the read side has the show.
        let seatmap: Value = server
            .client
            .get(format!(
                "{}/v1/shows/{show_id}/seatmap?min_position={created_at}",
                server.base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let start = seatmap["position"].as_u64().unwrap();
        assert!(start >= created_at);

        // A new client starts from a snapshot of the whole map.
        let mut fresh = open_stream(&server, &show_id, None).await;
        let deadline = Instant::now() + Duration::from_millis(EVENT_WAIT_MS_MAX);
        let snapshot = fresh.next(deadline).await.expect("a snapshot");
        assert_eq!(snapshot.event, "snapshot", "{}", backend.name);
        assert_eq!(snapshot.position(), start);
        assert_eq!(snapshot.json(), seatmap, "the snapshot is the seat map");
        let mut map = ClientMap::default();
        map.apply(&snapshot);
        assert_eq!(map.seats.len(), 60);
        assert_eq!(map.seat("101-A-1"), "available");
        assert_eq!(map.pools["floor"], 5);

        // A client resuming at the current position gets no snapshot: its first event is
        // the next change.
        let mut resumed = open_stream(&server, &show_id, Some(start)).await;
        // A client resuming from an older position gets one: changes are not replayed.
        let mut stale = open_stream(&server, &show_id, Some(start - 1)).await;

        let held = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .header("idempotency-key", "stream-hold-1")
            .json(&json!({"seats": ["101-A-1", "101-A-2"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), 201, "{}", backend.name);
        let held_at = log_position(&held);
        let hold: Value = held.json().await.unwrap();
        let reservation = hold["reservation_id"].as_str().unwrap().to_string();

        let both_held = |m: &ClientMap| m.seat("101-A-1") == "held" && m.seat("101-A-2") == "held";
        follow_until(&mut fresh, &mut map, held_at, both_held).await;
        assert_eq!(map.seat("101-A-3"), "available");

        let deadline = Instant::now() + Duration::from_millis(EVENT_WAIT_MS_MAX);
        let first = resumed.next(deadline).await.expect("an event");
        assert_eq!(first.event, "seats", "{first:?}");
        assert!(first.position() >= held_at);
        let changes = &first.json()["changes"];
        for seat in ["101-A-1", "101-A-2"] {
            assert!(
                changes
                    .as_array()
                    .unwrap()
                    .contains(&json!({"id": seat, "status": "held"})),
                "{changes}"
            );
        }

        let first = stale.next(deadline).await.expect("an event");
        assert_eq!(first.event, "snapshot", "{first:?}");
        drop(stale);

        // General admission: the section's count.
        let ga = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer)
            .header("idempotency-key", "stream-hold-2")
            .json(&json!({"section": "floor", "quantity": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(ga.status(), 201, "{}", backend.name);
        let ga_at = log_position(&ga);
        follow_until(&mut fresh, &mut map, ga_at, |m| m.pools["floor"] == 3).await;

        // Cancelling the seated hold frees both seats.
        let cancelled = server
            .req(
                M::DELETE,
                &format!("/v1/reservations/{reservation}"),
                &buyer,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 200, "{}", backend.name);
        follow_until(&mut fresh, &mut map, ga_at + 1, |m| {
            m.seat("101-A-1") == "available" && m.seat("101-A-2") == "available"
        })
        .await;
        assert_eq!(map.pools["floor"], 3);

        // What the client kept equals the seat map now.
        let now: Value = server
            .client
            .get(format!(
                "{}/v1/shows/{show_id}/seatmap?min_position={}",
                server.base, map.position
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut check = ClientMap::default();
        check.apply(&SseEvent {
            event: "snapshot".into(),
            id: Some(now["position"].to_string()),
            data: now.to_string(),
        });
        assert_eq!(check.seats, map.seats, "{}", backend.name);
        assert_eq!(check.pools, map.pools, "{}", backend.name);

        // An unknown show, or no show id at all, is a 404 problem.
        let unknown = server
            .client
            .get(format!(
                "{}/v1/shows/{}/seatmap/stream",
                server.base,
                uuid::Uuid::now_v7()
            ))
            .send()
            .await
            .unwrap();
        problem(unknown, 404, "show_not_found").await;
        let malformed = server
            .client
            .get(format!(
                "{}/v1/shows/not-a-show/seatmap/stream",
                server.base
            ))
            .send()
            .await
            .unwrap();
        problem(malformed, 404, "show_not_found").await;

        // Shutting down ends the open streams rather than waiting on them forever.
        tokio::time::timeout(Duration::from_millis(SHUTDOWN_WAIT_MS_MAX), server.stop())
            .await
            .expect("the server stops with streams open");
        let deadline = Instant::now() + Duration::from_millis(EVENT_WAIT_MS_MAX);
        assert!(fresh.next(deadline).await.is_none(), "{}", backend.name);
        // The other client had not read the later changes yet; they come before the end.
        while let Some(event) = resumed.next(deadline).await {
            assert_eq!(event.event, "seats", "{event:?}");
        }
    }
}

fn hold(user: UserId, selection: Selection) -> (ReservationId, Command) {
    let reservation_id = ReservationId(uuid::Uuid::now_v7());
    let command = Command::Hold(HoldRequest {
        reservation_id,
        user_id: user,
        idempotency_key: None,
        selection,
    });
    (reservation_id, command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_publishes_only_what_it_changed() {
    for backend in backends().await {
        let store = open(&backend.url).await;
        let engine = Engine::new(
            Arc::clone(&store),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
            EngineConfig::default(),
        );
        let show = ShowId(uuid::Uuid::now_v7());
        let schedule = ShowCommand::Schedule {
            show_id: show,
            organizer_id: UserId(uuid::Uuid::now_v7()),
            definition: show_definition(2, 10, 5, Limits::default()).into(),
        };
        let meta = || CommandMeta::new("test");
        engine
            .execute(show, Command::Show(schedule), meta())
            .await
            .unwrap();
        let seatmaps = SeatMaps::new(Arc::clone(&store));
        seatmaps.catch_up().await.unwrap();
        let view = seatmaps.show(show).expect("the show is read");
        let before = seatmaps.position();
        let mut changes = view.read().unwrap().subscribe();

        // One page: a seat held and released again, another held, two GA places held.
        let user = UserId(uuid::Uuid::now_v7());
        let (back_and_forth, command) = hold(user, Selection::Seats(vec!["S-R0-1".into()]));
        engine.execute(show, command, meta()).await.unwrap();
        let cancel = Command::Cancel {
            reservation_id: back_and_forth,
            by: user.to_string(),
        };
        engine.execute(show, cancel, meta()).await.unwrap();
        let (_, command) = hold(user, Selection::Seats(vec!["S-R0-2".into()]));
        engine.execute(show, command, meta()).await.unwrap();
        let (_, command) = hold(
            user,
            Selection::General {
                section: "floor".into(),
                quantity: 2,
            },
        );
        let last = engine
            .execute(show, command, meta())
            .await
            .unwrap()
            .position;
        seatmaps.catch_up().await.unwrap();
        assert_eq!(seatmaps.position(), last, "{}", backend.name);

        let message = changes.try_recv().expect("the page is published");
        assert_eq!(message.position, last, "{}", backend.name);
        assert_eq!(message.after, before);
        assert_eq!(
            message.changes,
            vec![
                SeatChange::Seat {
                    id: "S-R0-2".into(),
                    status: "held"
                },
                SeatChange::Pool {
                    section: "floor".into(),
                    available: 3
                },
            ],
            "{}",
            backend.name
        );
        assert_eq!(changes.try_recv().unwrap_err(), TryRecvError::Empty);
        // The seat map keeps no closed reservation (ADR 0014): the cancelled one left its
        // copy of the show's state, the two open ones are there.
        let state = &view.read().unwrap().state;
        assert!(
            state.reservation(back_and_forth).is_none(),
            "{}",
            backend.name
        );
        assert_eq!(state.reservations.len(), 2, "{}", backend.name);
        assert_eq!(state.closes(), 1);
    }
}
