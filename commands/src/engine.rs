//! The engine: a registry of show actors, and the API the server and tools call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use boxoffice_domain::booking::BookingError;
use boxoffice_domain::reservation::Reservation;
use boxoffice_domain::{Clock, Command, IdSource, ReservationId, ShowId, ShowState};
use boxoffice_store::EventStore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::actor::{Actor, Message, Read};
use crate::cluster::Cluster;

/// Bounds of the engine. Every queue and batch has one.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Commands a show's mailbox holds before callers are told the show is overloaded.
    pub mailbox_capacity: usize,
    /// Commands decided and appended together in one batch.
    pub batch_commands_max: usize,
    /// How often a batch is decided again after a version conflict before giving up.
    pub conflict_retries_max: u32,
    /// Events read per page when loading a show.
    pub load_page_events: usize,
    /// Longest a timer sleeps before looking at the clock again, so that a clock jump
    /// (or a clock in a test) is noticed.
    pub timer_sleep_ms_max: u64,
    /// Closed reservations (expired, cancelled, failed, refunded) a show keeps in memory,
    /// the most recently closed; older ones are read back from the log when a command or
    /// a read names them, so memory stays flat over a long on-sale.
    pub closed_reservations_kept: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 16_384,
            batch_commands_max: 2_048,
            conflict_retries_max: 16,
            load_page_events: 10_000,
            timer_sleep_ms_max: 1_000,
            closed_reservations_kept: 1_000,
        }
    }
}

// A batch gathers at most half an append's events (see `EVENTS_PER_APPEND_BUDGET`), and
// one decision larger than that is refused on its own (`EngineError::TooLarge`).
const _: () = assert!(
    boxoffice_store::APPEND_EVENTS_MAX >= 4 * 1_000,
    "a block of the most seats fits"
);

/// Who sent a command and why: copied into every event's metadata.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: String,
}

impl CommandMeta {
    pub fn new(actor: impl Into<String>) -> Self {
        Self {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: actor.into(),
        }
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Events appended for this command (0 for an idempotent repeat).
    pub events: usize,
    /// The log position the show's state reflects after this command: the last
    /// position of the batch that carried it.
    pub position: u64,
    /// The reservation the command was about, as the command left it.
    pub reservation: Option<Reservation>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Domain(#[from] BookingError),
    #[error("the show's streams kept changing under this engine; try again")]
    Conflict,
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    #[error("the show is overloaded; try again")]
    Overloaded,
    #[error("the show's actor stopped: {0}")]
    ShowStopped(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// One decision would write more events ({0}) than one append may carry.
    #[error("the command would write {0} events, more than one append may carry")]
    TooLarge(usize),
    /// Another node runs this show's writer (its URL, if known): send the command there.
    #[error("show {show} is owned by another node")]
    NotOwner {
        show: ShowId,
        owner_url: Option<String>,
    },
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub events_appended: AtomicU64,
    pub conflicts: AtomicU64,
    pub reloads: AtomicU64,
    pub expiries: AtomicU64,
    pub append_failures: AtomicU64,
    /// Time spent deciding batches (and encoding their events), in microseconds.
    pub decide_micros: AtomicU64,
    /// Time spent in the store's append, in microseconds.
    pub append_micros: AtomicU64,
}

impl EngineStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

struct ActorHandle {
    mailbox: mpsc::Sender<Message>,
    task: JoinHandle<()>,
}

pub(crate) struct Shared {
    pub store: Arc<dyn EventStore>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    pub config: EngineConfig,
    pub stats: EngineStats,
    /// Which show each known waitlist entry and each open, paid or recently closed
    /// reservation (by UUID) belongs to; older closed ones are found in the log
    /// ([`Engine::locate`]).
    pub object_shows: RwLock<HashMap<Uuid, ShowId>>,
    /// Show ownership across nodes; `None`: this engine owns every show it touches.
    pub cluster: Option<Arc<Cluster>>,
    /// Why each show whose log does not load stopped its last actor, for a caller whose
    /// message found that actor gone and its successor stopped too.
    pub stopped: Mutex<HashMap<ShowId, String>>,
}

/// A reservation as its stream in the log tells it, if the stream is there and in
/// `show`'s partition.
pub(crate) async fn closed_reservation(
    store: &dyn EventStore,
    show: ShowId,
    id: ReservationId,
) -> Result<Option<Reservation>, EngineError> {
    let stream = boxoffice_domain::event::reservation_stream(id);
    let recorded = store
        .read_stream(&stream, 0)
        .await
        .map_err(|e| EngineError::Unavailable(e.to_string()))?;
    if recorded
        .first()
        .is_none_or(|first| first.partition_key != show.to_string())
    {
        return Ok(None);
    }
    let mut events = Vec::with_capacity(recorded.len());
    for r in &recorded {
        match boxoffice_domain::DomainEvent::decode(&r.event_type, r.schema_version, &r.payload) {
            Ok(boxoffice_domain::DomainEvent::Reservation(e)) => events.push(e),
            Ok(other) => {
                return Err(EngineError::ShowStopped(format!(
                    "event at position {} in {stream} is a {}",
                    r.position,
                    other.event_type()
                )));
            }
            Err(e) => {
                return Err(EngineError::ShowStopped(format!(
                    "event at position {} in {stream}: {e}",
                    r.position
                )));
            }
        }
    }
    Ok(boxoffice_domain::reservation::replay(&events))
}

impl Shared {
    /// Takes reservations out of the object index ([`Engine::locate`] then finds their
    /// show in the log).
    pub(crate) fn unindex(&self, reservations: &[ReservationId]) {
        if reservations.is_empty() {
            return;
        }
        let mut index = self.object_shows.write().expect("index lock");
        for r in reservations {
            index.remove(&r.0);
        }
    }
}

/// The write engine. Cheap to share behind an `Arc`.
pub struct Engine {
    shared: Arc<Shared>,
    actors: Mutex<HashMap<ShowId, ActorHandle>>,
    shutting_down: std::sync::atomic::AtomicBool,
    /// The last log position [`Engine::follow_objects`] has indexed.
    indexed: tokio::sync::watch::Sender<u64>,
    /// Whether [`Engine::follow_objects`] runs.
    following: tokio::sync::watch::Sender<bool>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdSource>,
        config: EngineConfig,
    ) -> Arc<Self> {
        Self::with_cluster(store, clock, ids, config, None)
    }

    /// An engine that runs a show's actor only while it holds the show's lease.
    pub fn with_cluster(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdSource>,
        config: EngineConfig,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(Shared {
                store,
                clock,
                ids,
                config,
                stats: EngineStats::default(),
                object_shows: RwLock::new(HashMap::new()),
                stopped: Mutex::new(HashMap::new()),
                cluster,
            }),
            actors: Mutex::new(HashMap::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            indexed: tokio::sync::watch::channel(0).0,
            following: tokio::sync::watch::channel(false).0,
        })
    }

    /// Show ownership, when this engine is one node of several.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.cluster.as_ref()
    }

    pub fn stats(&self) -> &EngineStats {
        &self.shared.stats
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.shared.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// A fresh id from the engine's id source.
    pub fn next_uuid(&self) -> Uuid {
        self.shared.ids.next_uuid()
    }

    /// Loads every show in the store, so their holds' timers run (rule 4 across
    /// restarts) and their reservations can be found by id. A show whose log is corrupt
    /// is skipped (and stays stopped); a store that cannot be read fails the load.
    pub async fn load_all(&self) -> Result<usize, EngineError> {
        let partitions = self
            .shared
            .store
            .partitions()
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let mut loaded = 0;
        for partition in partitions {
            let Ok(show) = partition.parse::<ShowId>() else {
                tracing::warn!(partition, "partition key is not a show id; skipped");
                continue;
            };
            match self.query(show, |_| ()).await {
                Ok(()) => loaded += 1,
                // One show with a corrupt log must not keep every other show from
                // serving; it stays stopped, with the reason logged and answered.
                Err(EngineError::ShowStopped(reason)) => {
                    tracing::error!(%show, %reason, "show not loaded")
                }
                // Another node writes it.
                Err(EngineError::NotOwner { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(loaded)
    }

    /// Sends a command to its show's actor and waits for the outcome.
    pub async fn execute(
        &self,
        show: ShowId,
        command: Command,
        meta: CommandMeta,
    ) -> Result<Outcome, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send(
            show,
            Message::Command {
                command,
                meta,
                reply,
            },
        )
        .await?;
        answer
            .await
            .map_err(|_| EngineError::ShowStopped("the actor ended before answering".into()))?
    }

    /// Runs `read` against the show's current, committed state inside its actor.
    pub async fn query<R: Send + 'static>(
        &self,
        show: ShowId,
        read: impl FnOnce(&ShowState) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        self.query_at(show, move |state, _| read(state)).await
    }

    /// Like [`Engine::query`], with the log position the state reflects (the last
    /// position of the show's events the actor has committed or loaded).
    pub async fn query_at<R: Send + 'static>(
        &self,
        show: ShowId,
        read: impl FnOnce(&ShowState, u64) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        let (reply, answer) = oneshot::channel();
        let read: Read = Box::new(move |state: Result<(&ShowState, u64), EngineError>| {
            let _ = reply.send(state.map(|(state, position)| read(state, position)));
        });
        self.send(show, Message::Query(read)).await?;
        answer
            .await
            .map_err(|_| EngineError::ShowStopped("the actor ended before answering".into()))?
    }

    /// A reservation of the show, as committed: from the show's state, or, for a closed
    /// reservation the state no longer keeps (`EngineConfig::closed_reservations_kept`),
    /// read back from its stream. `None` if the show has no such reservation.
    pub async fn reservation(
        &self,
        show: ShowId,
        id: ReservationId,
    ) -> Result<Option<Reservation>, EngineError> {
        if let Some(r) = self
            .query(show, move |s| s.reservation(id).cloned())
            .await?
        {
            return Ok(Some(r));
        }
        closed_reservation(self.shared.store.as_ref(), show, id).await
    }

    /// The show a reservation belongs to, if this engine has it indexed (it has seen it,
    /// and it is not closed and forgotten; [`Engine::locate`] also reads the log).
    pub fn show_of(&self, reservation: ReservationId) -> Option<ShowId> {
        self.shared
            .object_shows
            .read()
            .expect("index lock")
            .get(&reservation.0)
            .copied()
    }

    /// The show a waitlist entry belongs to, if this engine has seen it.
    pub fn show_of_entry(&self, entry: boxoffice_domain::EntryId) -> Option<ShowId> {
        self.shared
            .object_shows
            .read()
            .expect("index lock")
            .get(&entry.0)
            .copied()
    }

    /// The show a reservation belongs to, waiting (up to `wait`) for the object index to
    /// catch up with the log when this engine has not seen it: on a node that does not
    /// own the show, the reservation is known only from the log ([`Engine::follow_objects`]).
    ///
    /// The index keeps open, paid and recently closed reservations (and every waitlist
    /// entry); for a reservation closed longer ago, the show is its stream's partition.
    pub async fn locate(&self, object: Uuid, wait: Duration) -> Option<ShowId> {
        let known = || {
            self.shared
                .object_shows
                .read()
                .expect("index lock")
                .get(&object)
                .copied()
        };
        if let Some(show) = known() {
            return Some(show);
        }
        let mut indexed = self.indexed.subscribe();
        if *self.following.borrow() {
            let head = self.shared.store.head_position().await.ok()?;
            let _ = tokio::time::timeout(wait, indexed.wait_for(|at| *at >= head)).await;
            if let Some(show) = known() {
                return Some(show);
            }
        }
        let stream = boxoffice_domain::event::reservation_stream(ReservationId(object));
        let first = self.shared.store.read_stream(&stream, 0).await.ok()?;
        first.first()?.partition_key.parse().ok()
    }

    /// Indexes every reservation and waitlist entry in the log by its show, from the start
    /// and then as the log grows, so that a node finds the show of an object it never
    /// loaded (to forward a checkout to the show's owner). Runs until `stop`.
    pub async fn follow_objects(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        const PAGE: usize = 10_000;
        let store = Arc::clone(&self.shared.store);
        let mut head = store.subscribe_head();
        self.following.send_replace(true);
        let mut after = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            match store.read_all(after, PAGE).await {
                Ok(events) => {
                    // In log order: an id placed (with its show) or closed (`None`).
                    let mut changes: Vec<(Uuid, Option<ShowId>)> = Vec::new();
                    for recorded in &events {
                        if matches!(
                            recorded.event_type.as_str(),
                            "HoldExpired"
                                | "ReservationCancelled"
                                | "PaymentFailed"
                                | "PaymentTimedOut"
                                | "RefundIssued"
                        ) {
                            // Closed: it leaves the index (ADR 0014).
                            if let Some(Ok(id)) = recorded
                                .stream_id
                                .strip_prefix("reservation-")
                                .map(str::parse::<ReservationId>)
                            {
                                changes.push((id.0, None));
                            }
                            continue;
                        }
                        if !matches!(
                            recorded.event_type.as_str(),
                            "ReservationPlaced" | "WaitlistJoined"
                        ) {
                            continue;
                        }
                        let Ok(show) = recorded.partition_key.parse::<ShowId>() else {
                            continue;
                        };
                        if let Ok(event) = boxoffice_domain::DomainEvent::decode(
                            &recorded.event_type,
                            recorded.schema_version,
                            &recorded.payload,
                        ) && let Some(id) = crate::actor::indexed_id(&event)
                        {
                            changes.push((id, Some(show)));
                        }
                    }
                    if !changes.is_empty() {
                        let mut index = self.shared.object_shows.write().expect("index lock");
                        for (id, show) in changes {
                            match show {
                                Some(show) => index.insert(id, show),
                                None => index.remove(&id),
                            };
                        }
                    }
                    if let Some(last) = events.last() {
                        after = last.position;
                    }
                    let full = events.len() == PAGE;
                    self.indexed.send_replace(after);
                    if full {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "object index: cannot read the log"),
            }
            tokio::select! {
                _ = head.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Keeps this node's leases: renews them every `renew`, stops the actors of shows
    /// whose lease another node took, and takes over (loads) shows whose lease expired.
    /// Runs until `stop`; does nothing without a cluster.
    pub async fn run_leases(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(cluster) = self.shared.cluster.clone() else {
            return;
        };
        let every = cluster.config().renew;
        loop {
            match cluster.renew().await {
                Ok(lost) => {
                    for (show, epoch) in lost {
                        if cluster.lost(show, epoch) {
                            self.evict(show);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "show leases not renewed"),
            }
            match cluster.expired().await {
                Ok(shows) => {
                    for show in shows {
                        if *stop.borrow() || self.shutting_down.load(Ordering::Acquire) {
                            break;
                        }
                        // Loading the show claims its lease (one node wins each) and
                        // starts its timers; the saga hears of it and resumes payments.
                        match self.query(show, |_| ()).await {
                            Ok(()) | Err(EngineError::NotOwner { .. }) => {}
                            Err(e) => tracing::warn!(%show, error = %e, "takeover failed"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for expired show leases"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Stops a show's actor (its lease was lost): it finishes the batch it is in, whose
    /// append the fence refuses.
    fn evict(&self, show: ShowId) {
        let handle = self.actors.lock().expect("actors lock").remove(&show);
        if let Some(handle) = handle {
            drop(handle.mailbox);
            tracing::info!(%show, "show actor stopped: its lease went to another node");
        }
    }

    /// Wakes a show's actor to look at its timers now (tests with a manual clock).
    pub async fn tick(&self, show: ShowId) -> Result<(), EngineError> {
        self.query(show, |_| ()).await
    }

    async fn send(&self, show: ShowId, message: Message) -> Result<(), EngineError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let mut message = message;
        // An actor may have just stopped (its show did not exist); one retry spawns a new one.
        for _ in 0..2 {
            let Some(mailbox) = self.mailbox(show) else {
                return Err(EngineError::ShuttingDown);
            };
            match mailbox.try_send(message) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(EngineError::Overloaded),
                Err(mpsc::error::TrySendError::Closed(m)) => {
                    message = m;
                    let mut actors = self.actors.lock().expect("actors lock");
                    if actors.get(&show).is_some_and(|a| a.mailbox.is_closed()) {
                        actors.remove(&show);
                    }
                }
            }
        }
        // Both actors stopped before taking the message: the log does not load, and the
        // reason is the one they gave (a new actor would give it again).
        let reason = self
            .shared
            .stopped
            .lock()
            .expect("stopped lock")
            .get(&show)
            .cloned();
        Err(EngineError::ShowStopped(reason.unwrap_or_else(|| {
            "the show's actor is not running".into()
        })))
    }

    /// The show's mailbox, spawning its actor if none runs; `None` once shutting down
    /// (checked under the lock that `shutdown` drains, so no actor starts untracked).
    fn mailbox(&self, show: ShowId) -> Option<mpsc::Sender<Message>> {
        let mut actors = self.actors.lock().expect("actors lock");
        if self.shutting_down.load(Ordering::Acquire) {
            return None;
        }
        if let Some(handle) = actors.get(&show)
            && !handle.mailbox.is_closed()
        {
            return Some(handle.mailbox.clone());
        }
        let (tx, rx) = mpsc::channel(self.shared.config.mailbox_capacity);
        let actor = Actor::new(show, Arc::clone(&self.shared), rx);
        let task = tokio::spawn(actor.run());
        actors.insert(
            show,
            ActorHandle {
                mailbox: tx.clone(),
                task,
            },
        );
        Some(tx)
    }

    /// Stops taking commands, lets every actor finish the batch it is in, and waits.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let handles: Vec<ActorHandle> = self
            .actors
            .lock()
            .expect("actors lock")
            .drain()
            .map(|(_, h)| h)
            .collect();
        for handle in handles {
            drop(handle.mailbox);
            let _ = handle.task.await;
        }
        // Every actor has stopped writing: the shows go to other nodes at once.
        if let Some(cluster) = &self.shared.cluster {
            cluster.release_all().await;
        }
    }
}
