//! The seat-map read model: every show's seats and GA counts, kept in memory and fed by
//! following the event log (the store's subscription), never by the write engine. It
//! knows the log position it reflects, so a client can wait to read its own writes.
//!
//! It also publishes, per show, the seat and GA changes of every page of events it
//! applies, for the live seat-map stream (`crate::stream`). Changes are only worked out
//! for a show somebody follows, so following the log costs nothing extra otherwise.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use boxoffice_domain::{DomainEvent, ShowId, ShowState};
use boxoffice_store::EventStore;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

/// Events read from the log per page.
const READ_PAGE_EVENTS: usize = 10_000;
/// How often the follower looks at the log even without a wake-up.
const POLL_INTERVAL_MS: u64 = 500;
const RETRY_AFTER_ERROR_MS: u64 = 500;
/// Change messages a show's channel keeps for its slowest follower; one that falls
/// further behind is sent a fresh snapshot instead.
const CHANGES_CHANNEL_MESSAGES_MAX: usize = 1024;
/// Seat-map streams open at once in this process.
pub const STREAMS_OPEN_MAX: usize = 10_000;

const _: () = assert!(STREAMS_OPEN_MAX <= Semaphore::MAX_PERMITS);
const _: () = assert!(CHANGES_CHANNEL_MESSAGES_MAX > 0);

/// One show as the read side sees it.
pub struct ShowView {
    pub state: ShowState,
    /// The position of the last event of this show applied.
    pub position: u64,
    /// Where this show's changes are published, made when the first follower comes, so
    /// that shows nobody follows hold no channel.
    changes: OnceLock<broadcast::Sender<Arc<SeatChanges>>>,
}

impl ShowView {
    fn new(show_id: ShowId) -> Self {
        Self {
            state: ShowState::new(show_id),
            position: 0,
            changes: OnceLock::new(),
        }
    }

    /// Follows this show's changes from now on. Subscribe before reading the view (both
    /// under its lock, or subscribe first): every change the read does not reflect then
    /// arrives as a message.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SeatChanges>> {
        self.changes
            .get_or_init(|| broadcast::channel(CHANGES_CHANNEL_MESSAGES_MAX).0)
            .subscribe()
    }

    fn followed(&self) -> bool {
        self.changes.get().is_some_and(|s| s.receiver_count() > 0)
    }
}

/// The seat and GA changes one page of events made to one show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeatChanges {
    /// The show's position after the page.
    pub position: u64,
    /// The global log position the page started after: every event of the page is
    /// later. A view read at a show position above this was read in the middle of the
    /// page, and this message may not carry all that changed since that read.
    #[serde(skip)]
    pub after: u64,
    pub changes: Vec<SeatChange>,
}

/// One seat's new status, or one GA section's new count of available places.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SeatChange {
    Seat { id: String, status: &'static str },
    Pool { section: String, available: u32 },
}

/// What a page touched in one followed show, with each seat's status and each pool's
/// available count from before the page, to publish only what really changed.
#[derive(Default)]
struct PageChanges {
    seats: BTreeMap<String, Option<&'static str>>,
    pools: BTreeMap<String, Option<u32>>,
}

impl PageChanges {
    /// Called before `event` is applied to `state`.
    fn touch(&mut self, state: &ShowState, event: &DomainEvent) {
        match event {
            DomainEvent::Seat(e) => {
                let id = e.seat_id();
                if !self.seats.contains_key(id) {
                    let before = state.seat(id).map(|s| s.state.status_name());
                    self.seats.insert(id.to_string(), before);
                }
            }
            DomainEvent::Pool(e) => {
                let section = e.section();
                if !self.pools.contains_key(section) {
                    let before = state.pools.get(section).map(|p| p.available());
                    self.pools.insert(section.to_string(), before);
                }
            }
            DomainEvent::Show(_) | DomainEvent::Reservation(_) | DomainEvent::Waitlist(_) => {}
        }
    }

    /// What differs in `state` (after the page) from before it.
    fn changes(self, state: &ShowState) -> Vec<SeatChange> {
        let mut changes = Vec::new();
        for (id, before) in self.seats {
            let Some(now) = state.seat(&id).map(|s| s.state.status_name()) else {
                continue;
            };
            if before != Some(now) {
                changes.push(SeatChange::Seat { id, status: now });
            }
        }
        for (section, before) in self.pools {
            let Some(now) = state.pools.get(&section).map(|p| p.available()) else {
                continue;
            };
            if before != Some(now) {
                changes.push(SeatChange::Pool {
                    section,
                    available: now,
                });
            }
        }
        changes
    }
}

pub struct SeatMaps {
    store: Arc<dyn EventStore>,
    shows: RwLock<HashMap<ShowId, Arc<RwLock<ShowView>>>>,
    /// Shows whose log could not be applied, with why; they are not served.
    broken: RwLock<HashMap<ShowId, String>>,
    position: watch::Sender<u64>,
    /// One permit per open seat-map stream.
    streams: Arc<Semaphore>,
    /// Turns true when the server shuts down, to end every stream.
    streams_closing: watch::Sender<bool>,
}

impl SeatMaps {
    pub fn new(store: Arc<dyn EventStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            shows: RwLock::new(HashMap::new()),
            broken: RwLock::new(HashMap::new()),
            position: watch::channel(0).0,
            streams: Arc::new(Semaphore::new(STREAMS_OPEN_MAX)),
            streams_closing: watch::channel(false).0,
        })
    }

    /// A place for one more open stream, held while it is open; none if all are taken.
    pub fn stream_permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.streams).try_acquire_owned().ok()
    }

    /// Turns true when the streams should end.
    pub fn streams_closing(&self) -> watch::Receiver<bool> {
        self.streams_closing.subscribe()
    }

    /// Ends every open stream (at shutdown, so that a graceful shutdown does not wait
    /// on connections that never finish by themselves).
    pub fn close_streams(&self) {
        self.streams_closing.send_replace(true);
    }

    /// The global log position everything here reflects.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    pub fn show(&self, id: ShowId) -> Option<Arc<RwLock<ShowView>>> {
        self.shows.read().expect("shows lock").get(&id).cloned()
    }

    pub fn shows(&self) -> Vec<Arc<RwLock<ShowView>>> {
        self.shows
            .read()
            .expect("shows lock")
            .values()
            .cloned()
            .collect()
    }

    /// Waits until the model reflects at least `position`, up to `timeout`. True if it does.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.position.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Reads everything up to the current head (used at start-up before serving).
    pub async fn catch_up(&self) -> Result<(), boxoffice_store::StoreError> {
        let head = self.store.head_position().await?;
        while self.position() < head {
            if !self.step().await? {
                break;
            }
        }
        Ok(())
    }

    /// Follows the log until `shutdown` turns true.
    pub async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut head = self.store.subscribe_head();
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.step().await {
                Ok(true) => continue,
                Ok(false) => {
                    tokio::select! {
                        _ = head.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "seat-map follower cannot read the log; retrying");
                    tokio::time::sleep(Duration::from_millis(RETRY_AFTER_ERROR_MS)).await;
                }
            }
        }
    }

    /// Applies one page of new events. True if there were any.
    async fn step(&self) -> Result<bool, boxoffice_store::StoreError> {
        let after = self.position();
        let page = self.store.read_all(after, READ_PAGE_EVENTS).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok(false);
        };
        // Filled only for shows somebody follows; an empty map does not allocate.
        let mut followed: HashMap<ShowId, PageChanges> = HashMap::new();
        let mut views: HashMap<ShowId, Arc<RwLock<ShowView>>> = HashMap::new();
        for recorded in &page {
            assert!(recorded.position > after, "the log went backwards");
            let Ok(show_id) = recorded.partition_key.parse::<ShowId>() else {
                tracing::error!(
                    position = recorded.position,
                    partition = recorded.partition_key,
                    "event outside any show"
                );
                continue;
            };
            if self
                .broken
                .read()
                .expect("broken lock")
                .contains_key(&show_id)
            {
                continue;
            }
            let event = match DomainEvent::decode(
                &recorded.event_type,
                recorded.schema_version,
                &recorded.payload,
            ) {
                Ok(e) => e,
                Err(e) => {
                    self.mark_broken(
                        show_id,
                        format!(
                            "event at position {} does not decode: {e}",
                            recorded.position
                        ),
                    );
                    continue;
                }
            };
            // Looked up once per show per page, and under the shared map's write lock
            // only when the show is new, so readers of other shows are not held up.
            let view = match views.get(&show_id) {
                Some(view) => Arc::clone(view),
                None => {
                    let found = self
                        .shows
                        .read()
                        .expect("shows lock")
                        .get(&show_id)
                        .cloned();
                    let view = found.unwrap_or_else(|| {
                        let mut shows = self.shows.write().expect("shows lock");
                        Arc::clone(
                            shows
                                .entry(show_id)
                                .or_insert_with(|| Arc::new(RwLock::new(ShowView::new(show_id)))),
                        )
                    });
                    views.insert(show_id, Arc::clone(&view));
                    view
                }
            };
            let mut view = view.write().expect("show lock");
            // Asked under the write lock: a follower that subscribes after this reads
            // the view after this event is applied, so it misses nothing.
            if matches!(event, DomainEvent::Seat(_) | DomainEvent::Pool(_)) && view.followed() {
                followed
                    .entry(show_id)
                    .or_default()
                    .touch(&view.state, &event);
            }
            let applied = std::panic::catch_unwind(AssertUnwindSafe(|| view.state.apply(&event)));
            if applied.is_err() {
                drop(view);
                self.mark_broken(
                    show_id,
                    format!(
                        "event at position {} ({}) does not apply",
                        recorded.position, recorded.event_type
                    ),
                );
                continue;
            }
            view.position = recorded.position;
        }
        // The seat map needs no closed reservation: none takes an event again, so they
        // leave, and a long on-sale keeps this copy as flat as the engine's (ADR 0014).
        for view in views.values() {
            view.write()
                .expect("show lock")
                .state
                .evict_closed(0, u64::MAX);
        }
        self.publish(after, followed);
        self.position.send_replace(last);
        Ok(true)
    }

    /// Sends each followed show what the page changed in it.
    fn publish(&self, after: u64, followed: HashMap<ShowId, PageChanges>) {
        for (show_id, page) in followed {
            // A show that broke during the page is gone, and so is its channel.
            let Some(view) = self.show(show_id) else {
                continue;
            };
            let view = view.read().expect("show lock");
            let Some(sender) = view.changes.get() else {
                continue;
            };
            let changes = page.changes(&view.state);
            if changes.is_empty() {
                continue;
            }
            assert!(view.position > after, "a changed show did not move");
            // No receiver left is not an error: nobody needs this message any more.
            let _ = sender.send(Arc::new(SeatChanges {
                position: view.position,
                after,
                changes,
            }));
        }
    }

    fn mark_broken(&self, show: ShowId, reason: String) {
        tracing::error!(%show, %reason, "seat map of show stopped");
        let removed = self.shows.write().expect("shows lock").remove(&show);
        // Dropping the channel ends the show's streams: it is not served any more.
        if let Some(view) = removed
            && let Ok(mut view) = view.write()
        {
            view.changes.take();
        }
        self.broken
            .write()
            .expect("broken lock")
            .insert(show, reason);
    }
}
