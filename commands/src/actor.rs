//! One show's single-writer actor: its state, its mailbox, group commit and timers.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration as StdDuration;

use boxoffice_domain::booking::{BookingError, refusal_for_closed};
use boxoffice_domain::event::reservation_stream;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::{Command, DomainEvent, ReservationId, ShowId, ShowState};
use boxoffice_store::{
    AppendBatch, AppendResult, EventMetadata, Fence, NewEvent, PendingEvent, StoreError,
    StoreResult, StreamExpectation,
};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::engine::{CommandMeta, EngineError, Outcome, Shared};

pub(crate) type Reply = oneshot::Sender<Result<Outcome, EngineError>>;
/// A read of the show's committed state, with the log position that state reflects.
pub(crate) type Read = Box<dyn FnOnce(Result<(&ShowState, u64), EngineError>) + Send>;

pub(crate) enum Message {
    Command {
        command: Command,
        meta: CommandMeta,
        reply: Reply,
    },
    Query(Read),
}

/// A command waiting in the current batch.
struct Pending {
    command: Command,
    meta: CommandMeta,
    reply: Reply,
}

/// Most events one batch gathers: half the store's limit, so that the clock's own
/// decisions (expiries, bounded by the batch size) always fit beside the commands'.
pub(crate) const EVENTS_PER_APPEND_BUDGET: usize = boxoffice_store::APPEND_EVENTS_MAX / 2;

/// Commands decided and applied to the state, waiting to be appended together.
#[derive(Default)]
struct Prepared {
    pending: Vec<Pending>,
    decided: Vec<Decided>,
    /// Events decided, with the index of the command (its metadata) that caused each.
    events: Vec<(DomainEvent, usize)>,
    metas: Vec<CommandMeta>,
    /// Reservations placed and waitlist entries joined by the batch, indexed once it
    /// commits.
    placed: Vec<Uuid>,
    expired: u64,
}

impl Prepared {
    /// Whether the batch has commands to answer or events to append: events already
    /// applied to the state must reach the store, or the state would run ahead of it.
    fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.events.is_empty()
    }
}

/// A batch whose append is under way in its own task.
struct InFlight {
    prepared: Prepared,
    events: u64,
    task: JoinHandle<StoreResult<AppendResult>>,
    started: Instant,
    /// The reservations closed up to and by this batch ([`ShowState::closes`]): once it
    /// commits, they may be forgotten.
    closes: u64,
}

/// How an append ended.
enum Settled {
    /// Committed; its commands are answered.
    Committed,
    /// A version conflict: the state reloads and these commands are decided again.
    Redo(Vec<Pending>),
    /// The store failed; its commands were answered 503 and the state reloads.
    Failed,
}

/// What deciding one command produced, before the append.
struct Decided {
    result: Result<(usize, Option<ReservationId>), BookingError>,
    view: Option<boxoffice_domain::reservation::Reservation>,
}

pub(crate) struct Actor {
    show: ShowId,
    partition_key: String,
    shared: Arc<Shared>,
    mailbox: mpsc::Receiver<Message>,
    state: ShowState,
    /// Each stream's current version; a stream not here has none (version 0).
    versions: HashMap<String, u64>,
    /// The last log position the state reflects.
    position: u64,
    /// Whether `state` is known to equal the store. False after a failed append, whose
    /// events were applied in memory but may or may not have been committed.
    loaded: bool,
    /// Whether sales were open at the last batch; when they open by the clock (or after
    /// a load) waiting entries get what is on sale first.
    sales_were_open: bool,
    /// Commands taken from the mailbox that did not fit the batch they arrived in; they
    /// go first into the next one.
    deferred: Vec<Pending>,
    /// The show lease's epoch every append is fenced with (`None`: no cluster).
    fence: Option<Fence>,
    /// An append was refused by the fence: another node owns the show now, and this
    /// actor only answers "not the owner" until it stops.
    fenced: bool,
}

/// Why a show could not be loaded.
enum LoadError {
    Unavailable(String),
    Corrupt(String),
}

impl Actor {
    pub(crate) fn new(show: ShowId, shared: Arc<Shared>, mailbox: mpsc::Receiver<Message>) -> Self {
        Self {
            show,
            partition_key: show.to_string(),
            shared,
            mailbox,
            state: ShowState::new(show),
            versions: HashMap::new(),
            position: 0,
            loaded: false,
            sales_were_open: false,
            deferred: Vec::new(),
            fence: None,
            fenced: false,
        }
    }

    /// The error every caller gets once the fence refused this actor's append.
    fn not_owner(&self) -> EngineError {
        EngineError::NotOwner {
            show: self.show,
            owner_url: None,
        }
    }

    pub(crate) async fn run(mut self) {
        // With several nodes, only the holder of the show's lease runs its actor; the
        // lease is taken before the load, so the load sees every append of an earlier
        // owner (a takeover waits for an append in flight under the old epoch).
        if let Some(cluster) = self.shared.cluster.clone() {
            match cluster.claim(self.show).await {
                Ok(epoch) => self.fence = Some(Fence { epoch }),
                Err(error) => return self.refuse_all(error).await,
            }
        }
        if let Err(LoadError::Corrupt(reason)) = self.reload().await {
            self.stop(reason).await;
            return;
        }
        if let Some(cluster) = &self.shared.cluster
            && self.loaded
            && self.state.show.is_some()
        {
            cluster.announce(self.show);
        }
        // Group commit, pipelined: while one batch is being appended, the commands that
        // arrive are decided against the state it leaves and gathered into the next
        // batch, which is appended once the first has committed (or decided again if it
        // did not). Reads wait until nothing uncommitted is in the state.
        let mut in_flight: Option<InFlight> = None;
        let mut next = Prepared::default();
        let mut reads: Vec<Read> = Vec::new();
        loop {
            if self.fenced && in_flight.is_none() {
                for read in reads.drain(..) {
                    read(Err(self.not_owner()));
                }
                let error = self.not_owner();
                return self.refuse_all(error).await;
            }
            if !self.deferred.is_empty() && self.loaded && reads.is_empty() {
                let deferred = std::mem::take(&mut self.deferred);
                if in_flight.is_some() {
                    if next.events.len() < EVENTS_PER_APPEND_BUDGET / 2 {
                        self.decide_into(&mut next, deferred);
                    } else {
                        self.deferred = deferred;
                    }
                } else {
                    let mut batch = Prepared::default();
                    self.decide_into(&mut batch, deferred);
                    in_flight = self.launch(batch);
                    continue;
                }
            }
            if let Some(flight) = in_flight.as_mut() {
                let gathering = reads.is_empty()
                    && next.pending.len() < self.shared.config.batch_commands_max
                    && next.events.len() < EVENTS_PER_APPEND_BUDGET / 2;
                tokio::select! {
                    biased;
                    result = &mut flight.task => {
                        let flight = in_flight.take().expect("in flight");
                        let after = next.has_work().then(|| std::mem::take(&mut next));
                        match self.settle(flight, result, after).await {
                            Ok(launched) => in_flight = launched,
                            Err(reason) => return self.stop(reason).await,
                        }
                        if in_flight.is_none() {
                            for read in reads.drain(..) {
                                self.answer_read(read);
                            }
                        }
                    }
                    message = self.mailbox.recv(), if gathering => match message {
                        Some(first) => {
                            let room = self.shared.config.batch_commands_max.saturating_sub(next.pending.len()).max(1);
                            let (pending, new_reads) = self.gather(first, room);
                            reads.extend(new_reads);
                            // A batch is in flight only on a loaded state (`launch` asserts it).
                            // Only commands are decided here: a read alone must not make the
                            // clock decide events that no batch would then carry.
                            if !pending.is_empty() {
                                self.decide_into(&mut next, pending);
                            }
                        }
                        None => {
                            // Shutting down: finish the batch in flight (and what was
                            // decided after it), answer everyone, then stop.
                            let mut flight = in_flight.take().expect("in flight");
                            let result = (&mut flight.task).await;
                            let after = next.has_work().then(|| std::mem::take(&mut next));
                            match self.settle(flight, result, after).await {
                                Ok(Some(mut last)) => {
                                    let result = (&mut last.task).await;
                                    let _ = self.settle(last, result, None).await;
                                }
                                Ok(None) => {}
                                Err(reason) => tracing::error!(show = %self.show, %reason, "show actor stopped"),
                            }
                            self.finish_deferred().await;
                            for read in reads.drain(..) {
                                self.answer_read(read);
                            }
                            return;
                        }
                    },
                }
                continue;
            }

            // Nothing in flight: the state is the store's (or must be reloaded).
            debug_assert!(next.pending.is_empty() && reads.is_empty());
            let timer = self.next_timer();
            let first = tokio::select! {
                message = self.mailbox.recv() => match message {
                    Some(m) => Some(m),
                    None => return self.finish_deferred().await,
                },
                () = sleep_or_forever(timer) => None,
            };
            let (pending, new_reads) = match first {
                Some(first) => self.gather(first, self.shared.config.batch_commands_max),
                None => (Vec::new(), Vec::new()),
            };
            if self.loaded && new_reads.is_empty() {
                let mut batch = Prepared::default();
                self.decide_into(&mut batch, pending);
                in_flight = self.launch(batch);
            } else {
                // Reads, or a state that must reload first: no pipelining.
                if let Err(reason) = self.commit(pending).await {
                    return self.stop(reason).await;
                }
                for read in new_reads {
                    self.answer_read(read);
                }
            }
            if in_flight.is_none() && self.loaded && self.state.show.is_none() {
                // No such show: stop rather than keep an actor per unknown id. Anything
                // that arrived meanwhile (a ShowScheduled, say) is still decided.
                self.mailbox.close();
                let mut rest = Vec::new();
                let mut late_reads = Vec::new();
                while let Some(m) = self.mailbox.recv().await {
                    match m {
                        Message::Command {
                            command,
                            meta,
                            reply,
                        } => rest.push(Pending {
                            command,
                            meta,
                            reply,
                        }),
                        Message::Query(read) => late_reads.push(read),
                    }
                }
                if let Err(reason) = self.commit(rest).await {
                    tracing::error!(show = %self.show, %reason, "show actor stopped");
                }
                for read in late_reads {
                    self.answer_read(read);
                }
                if let (Some(cluster), Some(fence)) = (&self.shared.cluster, self.fence)
                    && self.state.show.is_none()
                {
                    cluster.abandon(self.show, fence.epoch).await;
                }
                return;
            }
        }
    }

    /// Decides and appends the commands still deferred (when stopping), so each is
    /// answered. Every round makes progress: a deferred command fits an empty batch.
    async fn finish_deferred(&mut self) {
        while !self.deferred.is_empty() {
            let deferred = std::mem::take(&mut self.deferred);
            if let Err(reason) = self.commit(deferred).await {
                tracing::error!(show = %self.show, %reason, "show actor stopped");
                for p in self.deferred.drain(..) {
                    let _ = p.reply.send(Err(EngineError::ShowStopped(reason.clone())));
                }
            }
        }
    }

    /// Takes `first` and whatever else is waiting, up to the batch bound.
    fn gather(&mut self, first: Message, room: usize) -> (Vec<Pending>, Vec<Read>) {
        let mut pending = Vec::new();
        let mut reads = Vec::new();
        let mut message = Some(first);
        while let Some(m) = message {
            match m {
                Message::Command {
                    command,
                    meta,
                    reply,
                } => pending.push(Pending {
                    command,
                    meta,
                    reply,
                }),
                Message::Query(read) => reads.push(read),
            }
            message = if pending.len() < room {
                self.mailbox.try_recv().ok()
            } else {
                None
            };
        }
        (pending, reads)
    }

    /// Answers a read with the committed state, or why there is none.
    fn answer_read(&self, read: Read) {
        if self.fenced {
            read(Err(self.not_owner()));
        } else if self.loaded {
            read(Ok((&self.state, self.position)));
        } else {
            read(Err(EngineError::Unavailable(
                "the show's state could not be loaded from the store".into(),
            )));
        }
    }

    /// How long until the earliest hold is due (bounded, to notice clock jumps).
    fn next_timer(&self) -> Option<StdDuration> {
        if !self.loaded {
            // The store failed: try to reload soon, so timers keep firing (rule 4) even
            // when no command arrives to trigger it.
            return Some(StdDuration::from_millis(
                self.shared.config.timer_sleep_ms_max,
            ));
        }
        if self.state.cancelled_show_has_holds() {
            // A cancelled show's remaining holds are cancelled in the next batch, now.
            return Some(StdDuration::ZERO);
        }
        let now = self.shared.clock.now();
        let at = match (
            self.state.next_hold_deadline(),
            self.state.next_sales_opening(now),
        ) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let wait = (at - now).to_std().unwrap_or(StdDuration::ZERO);
        // A small slack so the clock has surely passed the deadline when we wake.
        Some(
            wait.min(StdDuration::from_millis(
                self.shared.config.timer_sleep_ms_max,
            )) + StdDuration::from_millis(1),
        )
    }

    /// This node does not (or no longer) own the show: every caller is told so, with
    /// the owner if known, and the actor stops. Commands deferred are refused too.
    async fn refuse_all(&mut self, error: EngineError) {
        if self.fenced
            && let (Some(cluster), Some(fence)) = (&self.shared.cluster, self.fence)
        {
            cluster.lost(self.show, fence.epoch);
        }
        self.mailbox.close();
        for p in self.deferred.drain(..) {
            let _ = p.reply.send(Err(error.clone()));
        }
        while let Some(message) = self.mailbox.recv().await {
            match message {
                Message::Command { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Message::Query(read) => read(Err(error.clone())),
            }
        }
    }

    /// The show cannot go on (a corrupt log): every caller is told why, and it stops.
    async fn stop(&mut self, reason: String) {
        if self.fenced {
            let error = self.not_owner();
            return self.refuse_all(error).await;
        }
        tracing::error!(show = %self.show, %reason, "show actor stopped");
        self.shared
            .stopped
            .lock()
            .expect("stopped lock")
            .insert(self.show, reason.clone());
        self.mailbox.close();
        while let Some(message) = self.mailbox.recv().await {
            match message {
                Message::Command { reply, .. } => {
                    let _ = reply.send(Err(EngineError::ShowStopped(reason.clone())));
                }
                Message::Query(read) => read(Err(EngineError::ShowStopped(reason.clone()))),
            }
        }
    }

    /// Rebuilds the state from the show's partition.
    async fn reload(&mut self) -> Result<(), LoadError> {
        self.shared.stats.reloads.fetch_add(1, Ordering::Relaxed);
        self.loaded = false;
        let mut state = ShowState::new(self.show);
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut position = 0;
        let mut placed = Vec::new();
        loop {
            let page = self
                .shared
                .store
                .read_partition(
                    &self.partition_key,
                    position,
                    self.shared.config.load_page_events,
                )
                .await
                .map_err(|e| match e {
                    StoreError::Corrupt { .. } => LoadError::Corrupt(e.to_string()),
                    other => LoadError::Unavailable(other.to_string()),
                })?;
            if page.is_empty() {
                break;
            }
            for recorded in &page {
                let at = recorded.position;
                let event = DomainEvent::decode(
                    &recorded.event_type,
                    recorded.schema_version,
                    &recorded.payload,
                )
                .map_err(|e| LoadError::Corrupt(format!("event at position {at}: {e}")))?;
                if event.stream_id(self.show) != recorded.stream_id {
                    return Err(LoadError::Corrupt(format!(
                        "event at position {at} is in stream {} but belongs to {}",
                        recorded.stream_id,
                        event.stream_id(self.show)
                    )));
                }
                let version = versions.entry(recorded.stream_id.clone()).or_default();
                if recorded.version != *version + 1 {
                    return Err(LoadError::Corrupt(format!(
                        "event at position {at}: stream {} jumps from version {} to {}",
                        recorded.stream_id, version, recorded.version
                    )));
                }
                *version = recorded.version;
                if let Some(id) = indexed_id(&event) {
                    placed.push(id);
                }
                // `apply` asserts that each event fits the state; one that does not means
                // the log breaks a rule, and the show stops with its position named.
                std::panic::catch_unwind(AssertUnwindSafe(|| state.apply(&event))).map_err(
                    |panic| {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        LoadError::Corrupt(format!(
                            "event at position {at} ({}) does not apply: {why}",
                            recorded.event_type
                        ))
                    },
                )?;
                position = at;
            }
        }
        state
            .check_invariants()
            .map_err(|e| LoadError::Corrupt(format!("loaded state breaks an invariant: {e}")))?;
        self.index_objects(&placed);
        self.state = state;
        self.versions = versions;
        self.position = position;
        self.loaded = true;
        self.sales_were_open = false;
        self.forget_closed(u64::MAX);
        Ok(())
    }

    /// Forgets the closed reservations beyond the ones the engine keeps, among the first
    /// `committed` closes (those the store has): their streams take no event again, and
    /// a command or a read about one reads it back from the log.
    fn forget_closed(&mut self, committed: u64) {
        let keep = self.shared.config.closed_reservations_kept;
        let forgotten = self.state.evict_closed(keep, committed);
        for id in &forgotten {
            self.versions.remove(&reservation_stream(*id));
        }
        self.shared.unindex(&forgotten);
    }

    /// Answers a command about a reservation the state does not have. A closed one it no
    /// longer keeps is read back from its stream and refused as the state refused it
    /// while it kept it (a closed reservation changes no more, so the answer may come
    /// after later commands'); one the log does not have under this show is not found.
    fn answer_from_log(
        &self,
        p: Pending,
        reservation: ReservationId,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let store = Arc::clone(&self.shared.store);
        let show = self.show;
        tokio::spawn(async move {
            let answer =
                match crate::engine::closed_reservation(store.as_ref(), show, reservation).await {
                    Ok(Some(r)) => match refusal_for_closed(&r, &p.command, now) {
                        Some(refusal) => Err(EngineError::Domain(refusal)),
                        // Not closed, yet not in the state: it cannot be decided here.
                        None => Err(EngineError::Unavailable(format!(
                            "reservation {reservation} is in the log but not in the show's state"
                        ))),
                    },
                    Ok(None) => Err(EngineError::Domain(BookingError::ReservationNotFound)),
                    Err(e) => Err(e),
                };
            let _ = p.reply.send(answer);
        });
    }

    fn index_objects(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let mut index = self.shared.object_shows.write().expect("index lock");
        for id in ids {
            index.insert(*id, self.show);
        }
    }

    /// Decides `pending` against the state the commands before them left (including
    /// a batch still being appended) and applies their events; they join `next`.
    fn decide_into(&mut self, next: &mut Prepared, pending: Vec<Pending>) {
        assert!(
            self.loaded,
            "deciding on a state that may differ from the store"
        );
        let now = self.shared.clock.now();
        let started = Instant::now();
        // What the clock decides comes first: holds already due expire (rule 4) and
        // sales that have just opened go to the waitlist (rule 5) before any command of
        // this batch can take those seats.
        next.expired += self.decide_expiries(now, &mut next.events, &mut next.metas);
        self.decide_cancellation_sweep(now, &mut next.events, &mut next.metas);
        self.decide_sales_opening(now, &mut next.events, &mut next.metas);
        let mut pending = pending.into_iter();
        while let Some(p) = pending.next() {
            let target = target_reservation(&self.state, &p.command);
            // `decide` and `apply` assert what must hold; a failed assertion is a bug,
            // and it must not take the show's actor (and its timers) down with it.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let decided = self.state.decide(p.command.clone(), now);
                if let Ok(events) = &decided
                    && next.events.len() + events.len() > EVENTS_PER_APPEND_BUDGET
                {
                    return Err(events.len());
                }
                Ok(decided.map(|decided_events| {
                    let n = decided_events.len();
                    for e in decided_events {
                        self.state.apply(&e);
                        next.events.push((e, next.metas.len()));
                    }
                    (n, target)
                }))
            }));
            let result = match outcome {
                Ok(Ok(result)) => result,
                Ok(Err(size)) if size > EVENTS_PER_APPEND_BUDGET => {
                    // Larger than any append may be: refused on its own.
                    let _ = p.reply.send(Err(EngineError::TooLarge(size)));
                    continue;
                }
                Ok(Err(_)) => {
                    // It fits an append, just not this one: it and the commands after it
                    // wait for the next batch, in order. Nothing of it was applied.
                    self.deferred.push(p);
                    self.deferred.extend(pending.by_ref());
                    break;
                }
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    tracing::error!(show = %self.show, command = ?p.command, %why, "deciding a command panicked; reloading");
                    // The state may be half-changed: everything decided on it is
                    // answered 503 and the state reloads before the next batch.
                    self.loaded = false;
                    let error = EngineError::Unavailable(format!("internal error: {why}"));
                    for q in std::iter::once(p)
                        .chain(pending.by_ref())
                        .chain(next.pending.drain(..))
                    {
                        let _ = q.reply.send(Err(error.clone()));
                    }
                    *next = Prepared::default();
                    break;
                }
            };
            if let Err(BookingError::ReservationNotFound) = &result
                && let Some(id) = p.command.reservation_id()
            {
                self.answer_from_log(p, id, now);
                continue;
            }
            let view = match &result {
                Ok((_, Some(id))) => self.state.reservation(*id).cloned(),
                _ => None,
            };
            next.decided.push(Decided { result, view });
            next.metas.push(p.meta.clone());
            next.pending.push(p);
        }
        self.shared
            .stats
            .decide_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Adds what the clock decides (expiries, sales opening), then starts the batch's
    /// append in its own task, or answers at once if it wrote nothing. Only called when
    /// nothing else is in flight, so the batch's expected versions are the store's.
    fn launch(&mut self, mut next: Prepared) -> Option<InFlight> {
        if !self.loaded {
            // A decision panicked and the state is reloading: nothing here is appended.
            for p in next.pending.drain(..) {
                let _ = p.reply.send(Err(EngineError::Unavailable(
                    "the show is reloading".into(),
                )));
            }
            return None;
        }
        let now = self.shared.clock.now();
        let started = Instant::now();
        next.expired = self.decide_expiries(now, &mut next.events, &mut next.metas);
        self.decide_cancellation_sweep(now, &mut next.events, &mut next.metas);
        self.decide_sales_opening(now, &mut next.events, &mut next.metas);
        if next.events.is_empty() {
            self.answer(
                &mut next.pending,
                std::mem::take(&mut next.decided),
                self.position,
            );
            return None;
        }
        let batch = self.build_batch(&next.events, &next.metas, now);
        // Commands decided while this batch appends must expect the versions it leaves.
        // If it fails, a reload resets them.
        let mut written = vec![0u64; batch.streams.len()];
        for event in &batch.events {
            written[event.stream] += 1;
        }
        for (stream, count) in batch.streams.iter().zip(written) {
            self.versions
                .insert(stream.stream_id.clone(), stream.expected_version + count);
        }
        next.placed = next
            .events
            .iter()
            .filter_map(|(e, _)| indexed_id(e))
            .collect();
        next.events = Vec::new();
        next.metas = Vec::new();
        self.shared
            .stats
            .decide_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let events = batch.event_count() as u64;
        let store = Arc::clone(&self.shared.store);
        let fence = self.fence;
        let task = tokio::spawn(async move { store.append_fenced(batch, fence).await });
        Some(InFlight {
            prepared: next,
            events,
            task,
            started: Instant::now(),
            closes: self.state.closes(),
        })
    }

    /// Takes the result of an append: answers its commands, or says what to do instead.
    fn finalize(
        &mut self,
        flight: InFlight,
        result: Result<StoreResult<AppendResult>, tokio::task::JoinError>,
    ) -> Settled {
        let InFlight {
            mut prepared,
            events,
            started,
            closes,
            ..
        } = flight;
        self.shared
            .stats
            .append_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let result = result
            .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("append task failed: {e}"))));
        match result {
            Ok(result) => {
                self.index_objects(&prepared.placed);
                assert!(result.last_position >= self.position, "positions only grow");
                self.position = result.last_position;
                let stats = &self.shared.stats;
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .commands
                    .fetch_add(prepared.pending.len() as u64, Ordering::Relaxed);
                stats.events_appended.fetch_add(events, Ordering::Relaxed);
                stats
                    .expiries
                    .fetch_add(prepared.expired, Ordering::Relaxed);
                self.answer(
                    &mut prepared.pending,
                    prepared.decided,
                    result.last_position,
                );
                self.forget_closed(closes);
                Settled::Committed
            }
            Err(StoreError::Fenced { epoch, .. }) => {
                // Another node took the show over: nothing of this batch was written, and
                // this actor must not write again. Its callers go to the new owner.
                tracing::warn!(show = %self.show, epoch, "append fenced off; the show has a new owner");
                self.fenced = true;
                self.loaded = false;
                let error = self.not_owner();
                for p in prepared.pending.drain(..) {
                    let _ = p.reply.send(Err(error.clone()));
                }
                Settled::Failed
            }
            Err(StoreError::Conflict { stream_id }) => {
                // Another writer changed one of our streams: our state is stale.
                self.shared.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(show = %self.show, stream_id, "version conflict; reloading");
                self.loaded = false;
                Settled::Redo(prepared.pending)
            }
            Err(e) => {
                // The events may or may not be in the store; only a reload can tell.
                self.shared
                    .stats
                    .append_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(show = %self.show, error = %e, "append failed");
                self.loaded = false;
                // An append the store refuses as malformed is a bug here, but it must not
                // take the show down: its commands fail, the state reloads, timers go on.
                let error = match e {
                    StoreError::InvalidAppend(reason) => {
                        tracing::error!(show = %self.show, %reason, "the store refused an append as invalid");
                        EngineError::Unavailable(format!("the append was refused: {reason}"))
                    }
                    other => EngineError::Unavailable(other.to_string()),
                };
                for p in prepared.pending.drain(..) {
                    let _ = p.reply.send(Err(error.clone()));
                }
                Settled::Failed
            }
        }
    }

    /// Settles the batch that was in flight with its append's `result`. Commands
    /// decided on top of it (`after`) are launched if it committed, and decided again
    /// (with its own commands, after a reload) if it did not. Errs only when the show
    /// must stop.
    async fn settle(
        &mut self,
        flight: InFlight,
        result: Result<StoreResult<AppendResult>, tokio::task::JoinError>,
        after: Option<Prepared>,
    ) -> Result<Option<InFlight>, String> {
        match self.finalize(flight, result) {
            Settled::Committed => Ok(after.and_then(|p| self.launch(p))),
            Settled::Redo(mut redo) => {
                redo.extend(after.map(|p| p.pending).unwrap_or_default());
                self.commit(redo).await.map(|()| None)
            }
            Settled::Failed => {
                // Anything decided on top of the failed batch is decided again, after a reload.
                let redo = after.map(|p| p.pending).unwrap_or_default();
                self.commit(redo).await.map(|()| None)
            }
        }
    }

    /// Decides and appends `pending` without pipelining, reloading first if the state
    /// may be stale and retrying after conflicts; answers every command. Errs only when
    /// the show must stop.
    async fn commit(&mut self, mut pending: Vec<Pending>) -> Result<(), String> {
        let mut conflicts = 0;
        loop {
            if self.fenced {
                let error = self.not_owner();
                for p in pending {
                    let _ = p.reply.send(Err(error.clone()));
                }
                return Ok(());
            }
            if !self.loaded {
                let error = match self.reload().await {
                    Ok(()) => None,
                    Err(LoadError::Unavailable(e)) => Some(EngineError::Unavailable(e)),
                    Err(LoadError::Corrupt(e)) => Some(EngineError::ShowStopped(e)),
                };
                if let Some(error) = error {
                    for p in pending {
                        let _ = p.reply.send(Err(error.clone()));
                    }
                    return match error {
                        EngineError::ShowStopped(reason) => Err(reason),
                        _ => Ok(()),
                    };
                }
            }
            let mut batch = Prepared::default();
            self.decide_into(&mut batch, pending);
            let Some(mut flight) = self.launch(batch) else {
                return Ok(());
            };
            let result = (&mut flight.task).await;
            match self.finalize(flight, result) {
                Settled::Committed | Settled::Failed => return Ok(()),
                Settled::Redo(redo) => {
                    conflicts += 1;
                    if conflicts > self.shared.config.conflict_retries_max {
                        for p in redo {
                            let _ = p.reply.send(Err(EngineError::Conflict));
                        }
                        return Ok(());
                    }
                    pending = redo;
                }
            }
        }
    }

    /// When sales have just opened (by the clock, or this is the first batch after a
    /// load), offers what is on sale to waiting entries first (rule 5).
    fn decide_sales_opening(
        &mut self,
        now: chrono::DateTime<chrono::Utc>,
        events: &mut Vec<(DomainEvent, usize)>,
        metas: &mut Vec<CommandMeta>,
    ) {
        let open = self.state.show.as_ref().is_some_and(|s| s.sales_open(now));
        let opened = open && !self.sales_were_open;
        self.sales_were_open = open;
        if !opened || self.state.waitlist.waiting_count() == 0 {
            return;
        }
        let decided = self
            .state
            .decide(Command::OfferToWaitlist, now)
            .expect("the show exists");
        if decided.is_empty() {
            return;
        }
        let meta_index = metas.len();
        metas.push(CommandMeta {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: "system:waitlist".into(),
        });
        for e in decided {
            self.state.apply(&e);
            events.push((e, meta_index));
        }
    }

    /// Cancels the holds a show's cancellation left open (it ends at most
    /// `SHOW_CANCEL_HOLDS_PER_DECISION` itself), within the batch bound.
    fn decide_cancellation_sweep(
        &mut self,
        now: chrono::DateTime<chrono::Utc>,
        events: &mut Vec<(DomainEvent, usize)>,
        metas: &mut Vec<CommandMeta>,
    ) {
        let left = self.state.holds_of_cancelled_show();
        if left.is_empty() {
            return;
        }
        let meta_index = metas.len();
        metas.push(CommandMeta {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: "system:show-cancelled".into(),
        });
        for reservation_id in left.into_iter().take(self.shared.config.batch_commands_max) {
            if events.len() >= EVENTS_PER_APPEND_BUDGET / 2 {
                break;
            }
            let command = Command::Cancel {
                reservation_id,
                by: "system:show-cancelled".into(),
            };
            match self.state.decide(command, now) {
                Ok(decided) => {
                    for e in decided {
                        self.state.apply(&e);
                        events.push((e, meta_index));
                    }
                }
                Err(e) => unreachable!("a hold of a cancelled show can be cancelled: {e}"),
            }
        }
    }

    /// Expires every hold that is due (rule 4), within the batch bound.
    fn decide_expiries(
        &mut self,
        now: chrono::DateTime<chrono::Utc>,
        events: &mut Vec<(DomainEvent, usize)>,
        metas: &mut Vec<CommandMeta>,
    ) -> u64 {
        let due: Vec<ReservationId> = self
            .state
            .due_holds(now)
            .take(self.shared.config.batch_commands_max)
            .collect();
        if due.is_empty() {
            return 0;
        }
        let meta_index = metas.len();
        metas.push(CommandMeta {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: "system:expiry".into(),
        });
        let mut expired = 0;
        for reservation_id in due {
            // Bounded by events too (a hold's release can carry waitlist offers); what
            // does not fit expires in the next batch, a moment later.
            if events.len() >= EVENTS_PER_APPEND_BUDGET / 2 {
                break;
            }
            match self.state.decide(Command::Expire { reservation_id }, now) {
                Ok(decided) => {
                    for e in decided {
                        self.state.apply(&e);
                        events.push((e, meta_index));
                    }
                    expired += 1;
                }
                Err(e) => unreachable!("a due hold can expire: {e}"),
            }
        }
        expired
    }

    /// One append for the batch: its events in decision order, so the log reads as
    /// things happened; each stream named once, with the version this actor believes
    /// it is at.
    fn build_batch(
        &self,
        events: &[(DomainEvent, usize)],
        metas: &[CommandMeta],
        now: chrono::DateTime<chrono::Utc>,
    ) -> AppendBatch {
        let mut streams: Vec<StreamExpectation> = Vec::new();
        let mut stream_index: HashMap<String, usize> = HashMap::new();
        let mut pending = Vec::with_capacity(events.len());
        for (event, meta_index) in events {
            let stream_id = event.stream_id(self.show);
            let stream = *stream_index
                .entry(stream_id)
                .or_insert_with_key(|stream_id| {
                    let expected_version = self.versions.get(stream_id).copied().unwrap_or(0);
                    streams.push(StreamExpectation {
                        stream_id: stream_id.clone(),
                        expected_version,
                    });
                    streams.len() - 1
                });
            let (event_type, schema_version, payload) = event.encode();
            let meta = &metas[*meta_index];
            pending.push(PendingEvent {
                stream,
                event: NewEvent {
                    event_type: event_type.to_string(),
                    schema_version,
                    payload,
                    metadata: EventMetadata {
                        event_id: self.shared.ids.next_uuid(),
                        correlation_id: meta.correlation_id,
                        causation_id: meta.causation_id,
                        actor: meta.actor.clone(),
                    },
                },
            });
        }
        AppendBatch {
            partition_key: self.partition_key.clone(),
            streams,
            events: pending,
            recorded_at: now,
        }
    }

    fn answer(&self, pending: &mut Vec<Pending>, decided: Vec<Decided>, position: u64) {
        assert_eq!(pending.len(), decided.len());
        for (p, d) in pending.drain(..).zip(decided) {
            let answer = d
                .result
                .map(|(events, _)| Outcome {
                    events,
                    position,
                    reservation: d.view,
                })
                .map_err(EngineError::Domain);
            let _ = p.reply.send(answer);
        }
    }
}

async fn sleep_or_forever(wait: Option<StdDuration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// The id under which an event's new object (a reservation, a waitlist entry) is
/// found by id alone.
pub(crate) fn indexed_id(event: &DomainEvent) -> Option<Uuid> {
    match event {
        DomainEvent::Reservation(ReservationEvent::ReservationPlaced {
            reservation_id, ..
        }) => Some(reservation_id.0),
        DomainEvent::Waitlist(boxoffice_domain::waitlist::WaitlistEvent::WaitlistJoined {
            entry_id,
            ..
        }) => Some(entry_id.0),
        _ => None,
    }
}

/// The reservation a command is about, as seen before it is decided.
fn target_reservation(state: &ShowState, command: &Command) -> Option<ReservationId> {
    match command {
        Command::Hold(request) => Some(
            request
                .idempotency_key
                .as_deref()
                .and_then(|key| state.reservation_for_key(request.user_id, key))
                .unwrap_or(request.reservation_id),
        ),
        other => other.reservation_id(),
    }
}
