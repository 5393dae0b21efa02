//! The engine: a registry of show actors, and the API the server and tools call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use boxoffice_domain::booking::BookingError;
use boxoffice_domain::reservation::Reservation;
use boxoffice_domain::{Clock, Command, IdSource, ReservationId, ShowId, ShowState};
use boxoffice_store::EventStore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::actor::{Actor, Message, Read};

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 16_384,
            batch_commands_max: 2_048,
            conflict_retries_max: 16,
            load_page_events: 10_000,
            timer_sleep_ms_max: 1_000,
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
    /// Which show each known reservation and waitlist entry (by UUID) belongs to.
    pub object_shows: RwLock<HashMap<Uuid, ShowId>>,
}

/// The write engine. Cheap to share behind an `Arc`.
pub struct Engine {
    shared: Arc<Shared>,
    actors: Mutex<HashMap<ShowId, ActorHandle>>,
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Engine {
    pub fn new(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdSource>,
        config: EngineConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(Shared {
                store,
                clock,
                ids,
                config,
                stats: EngineStats::default(),
                object_shows: RwLock::new(HashMap::new()),
            }),
            actors: Mutex::new(HashMap::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        })
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

    /// The show a reservation belongs to, if this engine has seen it.
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
        Err(EngineError::ShowStopped(
            "the show's actor is not running".into(),
        ))
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
    }
}
