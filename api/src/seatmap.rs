//! The seat-map read model: every show's seats and GA counts, kept in memory and fed by
//! following the event log (the store's subscription), never by the write engine. It
//! knows the log position it reflects, so a client can wait to read its own writes.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use boxoffice_domain::{DomainEvent, ShowId, ShowState};
use boxoffice_store::EventStore;
use tokio::sync::watch;

/// Events read from the log per page.
const READ_PAGE_EVENTS: usize = 10_000;
/// How often the follower looks at the log even without a wake-up.
const POLL_INTERVAL_MS: u64 = 500;
const RETRY_AFTER_ERROR_MS: u64 = 500;

/// One show as the read side sees it.
pub struct ShowView {
    pub state: ShowState,
    /// The position of the last event of this show applied.
    pub position: u64,
}

pub struct SeatMaps {
    store: Arc<dyn EventStore>,
    shows: RwLock<HashMap<ShowId, Arc<RwLock<ShowView>>>>,
    /// Shows whose log could not be applied, with why; they are not served.
    broken: RwLock<HashMap<ShowId, String>>,
    position: watch::Sender<u64>,
}

impl SeatMaps {
    pub fn new(store: Arc<dyn EventStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            shows: RwLock::new(HashMap::new()),
            broken: RwLock::new(HashMap::new()),
            position: watch::channel(0).0,
        })
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
            let view = {
                let mut shows = self.shows.write().expect("shows lock");
                Arc::clone(shows.entry(show_id).or_insert_with(|| {
                    Arc::new(RwLock::new(ShowView {
                        state: ShowState::new(show_id),
                        position: 0,
                    }))
                }))
            };
            let mut view = view.write().expect("show lock");
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
        self.position.send_replace(last);
        Ok(true)
    }

    fn mark_broken(&self, show: ShowId, reason: String) {
        tracing::error!(%show, %reason, "seat map of show stopped");
        self.shows.write().expect("shows lock").remove(&show);
        self.broken
            .write()
            .expect("broken lock")
            .insert(show, reason);
    }
}
