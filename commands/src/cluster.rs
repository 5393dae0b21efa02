//! Show ownership across nodes (`docs/adr/0009-show-ownership.md`): which node runs a
//! show's write actor, decided through the lease table in PostgreSQL.
//!
//! An actor claims its show's lease before it loads the show and writes every batch
//! under the lease's epoch (the fence), so a node that lost the lease cannot append. A
//! node that finds the lease held by another answers [`EngineError::NotOwner`] with the
//! owner's URL, which the API turns into a forwarded request. [`Engine::run_leases`]
//! renews the leases this node holds, stops the actors of leases it lost, and takes over
//! shows whose leases expired (their owner died, was cut off or shut down).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use boxoffice_domain::ShowId;
use boxoffice_store::leases::{Acquired, ShowLeases};
use tokio::sync::broadcast;

use crate::engine::EngineError;

/// Who this node is and how long its leases last.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's name in the lease table; stable across restarts, unique per node.
    pub node_id: String,
    /// The base URL other nodes forward this node's shows' commands to.
    pub advertise_url: String,
    /// How long a lease lasts without renewal: the longest a dead owner's shows wait.
    pub lease: Duration,
    /// How often leases are renewed and expired leases looked for.
    pub renew: Duration,
    /// Runs no write actors: every command goes to the show's owner.
    pub read_only: bool,
}

impl ClusterConfig {
    /// A renewal must come well inside the lease, or a slow round trip loses it.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew.is_zero() || self.renew * 2 > self.lease {
            return Err(format!(
                "the renew interval ({:?}) must be positive and at most half the lease ({:?})",
                self.renew, self.lease
            ));
        }
        Ok(())
    }
}

/// Shows taken over per scan: a node does not grab every expired show at once, so that
/// the shows of a dead node spread over the survivors.
pub const TAKEOVERS_PER_SCAN_MAX: usize = 64;
/// Most shows whose owner a node remembers.
const KNOWN_OWNERS_MAX: usize = 100_000;

/// This node's view of show ownership.
pub struct Cluster {
    leases: ShowLeases,
    config: ClusterConfig,
    /// The leases this node holds, with their epochs.
    held: Mutex<HashMap<ShowId, u64>>,
    /// Shows another node owns: its URL and until when (by our clock) we believe it.
    others: Mutex<HashMap<ShowId, (String, Instant)>>,
    /// Each show this node has just taken over and loaded (the saga resumes its payments).
    acquired: broadcast::Sender<ShowId>,
}

impl Cluster {
    pub fn new(leases: ShowLeases, config: ClusterConfig) -> Self {
        Self {
            leases,
            config,
            held: Mutex::new(HashMap::new()),
            others: Mutex::new(HashMap::new()),
            acquired: broadcast::channel(1_024).0,
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The shows this node holds leases on.
    pub fn held(&self) -> Vec<(ShowId, u64)> {
        let held = self.held.lock().expect("held lock");
        held.iter().map(|(s, e)| (*s, *e)).collect()
    }

    /// Whether this node holds `show`'s lease.
    pub fn owns(&self, show: ShowId) -> bool {
        self.held.lock().expect("held lock").contains_key(&show)
    }

    /// Shows this node takes over and loads, one message each.
    pub fn subscribe_acquired(&self) -> broadcast::Receiver<ShowId> {
        self.acquired.subscribe()
    }

    pub(crate) fn announce(&self, show: ShowId) {
        let _ = self.acquired.send(show);
    }

    /// Makes this node the show's writer, or says who is: the epoch to fence appends
    /// with, or [`EngineError::NotOwner`] with the owner's URL.
    pub async fn claim(&self, show: ShowId) -> Result<u64, EngineError> {
        if let Some(epoch) = self.held.lock().expect("held lock").get(&show) {
            return Ok(*epoch);
        }
        if let Some(url) = self.believed_owner(show) {
            return Err(EngineError::NotOwner {
                show,
                owner_url: Some(url),
            });
        }
        if self.config.read_only {
            return Err(self.owner_elsewhere(show).await);
        }
        let acquired = self
            .leases
            .acquire(
                &show.to_string(),
                &self.config.node_id,
                &self.config.advertise_url,
                self.config.lease,
            )
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        match acquired {
            Acquired::Taken { epoch } => {
                self.others.lock().expect("others lock").remove(&show);
                self.held.lock().expect("held lock").insert(show, epoch);
                tracing::info!(%show, epoch, node = %self.config.node_id, "show lease taken");
                Ok(epoch)
            }
            Acquired::Held(holder) => {
                let owner_url = holder.map(|h| {
                    self.remember(show, &h.url, h.remaining.min(self.config.lease));
                    h.url
                });
                Err(EngineError::NotOwner { show, owner_url })
            }
        }
    }

    /// Where a read-only node sends a show's command: its owner, or (a show nobody holds)
    /// any node that writes.
    async fn owner_elsewhere(&self, show: ShowId) -> EngineError {
        let key = show.to_string();
        let owner_url = match self.leases.holder(&key).await {
            Ok(Some(h)) if !h.remaining.is_zero() => {
                self.remember(show, &h.url, h.remaining.min(self.config.lease));
                Some(h.url)
            }
            Ok(_) => self
                .leases
                .live_node(&self.config.node_id)
                .await
                .ok()
                .flatten(),
            Err(e) => return EngineError::Unavailable(e.to_string()),
        };
        EngineError::NotOwner { show, owner_url }
    }

    fn believed_owner(&self, show: ShowId) -> Option<String> {
        let mut others = self.others.lock().expect("others lock");
        match others.get(&show) {
            Some((url, until)) if *until > Instant::now() => Some(url.clone()),
            Some(_) => {
                others.remove(&show);
                None
            }
            None => None,
        }
    }

    fn remember(&self, show: ShowId, url: &str, for_at_most: Duration) {
        let mut others = self.others.lock().expect("others lock");
        if others.len() >= KNOWN_OWNERS_MAX {
            let now = Instant::now();
            others.retain(|_, (_, until)| *until > now);
            if others.len() >= KNOWN_OWNERS_MAX {
                return;
            }
        }
        others.insert(show, (url.to_owned(), Instant::now() + for_at_most));
    }

    /// The URL of the node that holds `show`'s live lease now, from the database (`None`:
    /// nobody, this node, or the database cannot say).
    pub async fn current_owner(&self, show: ShowId) -> Option<String> {
        let holder = self.leases.holder(&show.to_string()).await.ok()??;
        if holder.remaining.is_zero() || holder.node == self.config.node_id {
            return None;
        }
        self.remember(show, &holder.url, holder.remaining.min(self.config.lease));
        Some(holder.url)
    }

    /// Forgets who owns `show` (a forward to it failed), so the next command asks the
    /// database again and takes the show over if its lease has expired.
    pub fn forget_owner(&self, show: ShowId) {
        self.others.lock().expect("others lock").remove(&show);
    }

    /// This node no longer holds `show` at `epoch` (fenced, or a renewal found it taken).
    pub(crate) fn lost(&self, show: ShowId, epoch: u64) -> bool {
        let mut held = self.held.lock().expect("held lock");
        if held.get(&show) == Some(&epoch) {
            held.remove(&show);
            tracing::warn!(%show, epoch, node = %self.config.node_id, "show lease lost");
            true
        } else {
            false
        }
    }

    /// The id was no show: its lease row goes.
    pub(crate) async fn abandon(&self, show: ShowId, epoch: u64) {
        let had = {
            let mut held = self.held.lock().expect("held lock");
            if held.get(&show) == Some(&epoch) {
                held.remove(&show);
                true
            } else {
                false
            }
        };
        if had
            && let Err(e) = self
                .leases
                .abandon(&show.to_string(), &self.config.node_id, epoch)
                .await
        {
            tracing::debug!(%show, error = %e, "could not drop the lease of a non-show");
        }
    }

    /// Renews every lease held; returns the shows whose lease was lost.
    pub(crate) async fn renew(&self) -> Result<Vec<(ShowId, u64)>, EngineError> {
        let held = self.held();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut lost = Vec::new();
        for chunk in held.chunks(boxoffice_store::leases::RENEW_SHOWS_MAX) {
            let keys: Vec<(String, u64)> = chunk.iter().map(|(s, e)| (s.to_string(), *e)).collect();
            let renewed = self
                .leases
                .renew(&self.config.node_id, &keys, self.config.lease)
                .await
                .map_err(|e| EngineError::Unavailable(e.to_string()))?;
            let renewed: std::collections::HashSet<String> = renewed.into_iter().collect();
            lost.extend(
                chunk
                    .iter()
                    .filter(|(s, _)| !renewed.contains(&s.to_string()))
                    .copied(),
            );
        }
        Ok(lost)
    }

    /// Shows whose leases have expired, for this node to take over.
    pub(crate) async fn expired(&self) -> Result<Vec<ShowId>, EngineError> {
        if self.config.read_only {
            return Ok(Vec::new());
        }
        let expired = self
            .leases
            .expired(TAKEOVERS_PER_SCAN_MAX)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        Ok(expired.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// Lets every lease held go at once (graceful shutdown, after the actors stopped).
    pub async fn release_all(&self) {
        let held: Vec<(String, u64)> = self
            .held
            .lock()
            .expect("held lock")
            .drain()
            .map(|(s, e)| (s.to_string(), e))
            .collect();
        if held.is_empty() {
            return;
        }
        match self.leases.release(&self.config.node_id, &held).await {
            Ok(()) => tracing::info!(shows = held.len(), "show leases released"),
            Err(e) => tracing::warn!(error = %e, "could not release show leases; they expire"),
        }
    }
}
