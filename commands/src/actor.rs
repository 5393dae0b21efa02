//! One show's single-writer actor: its state, its mailbox, group commit and timers.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration as StdDuration;

use boxoffice_domain::booking::BookingError;
use boxoffice_domain::{Command, DomainEvent, ReservationId, ShowId, ShowState};
use boxoffice_store::{AppendBatch, EventMetadata, NewEvent, StoreError, StreamAppend};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::engine::{CommandMeta, EngineError, Outcome, Shared};

pub(crate) type Reply = oneshot::Sender<Result<Outcome, EngineError>>;
pub(crate) type Read = Box<dyn FnOnce(Result<&ShowState, EngineError>) + Send>;

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
        }
    }

    pub(crate) async fn run(mut self) {
        if let Err(LoadError::Corrupt(reason)) = self.reload().await {
            self.stop(reason).await;
            return;
        }
        loop {
            let timer = self.next_timer();
            let first = tokio::select! {
                message = self.mailbox.recv() => match message {
                    Some(m) => Some(m),
                    None => break,
                },
                () = sleep_or_forever(timer) => None,
            };
            let mut messages: Vec<Message> = first.into_iter().collect();
            while messages.len() < self.shared.config.batch_commands_max {
                match self.mailbox.try_recv() {
                    Ok(m) => messages.push(m),
                    Err(_) => break,
                }
            }
            if let Err(reason) = self.process(messages).await {
                self.stop(reason).await;
                return;
            }
            if self.loaded && self.state.show.is_none() {
                // No such show: stop rather than keep an actor per unknown id. Anything
                // that arrived meanwhile (a ShowScheduled, say) is still decided.
                self.mailbox.close();
                let mut rest = Vec::new();
                while let Some(m) = self.mailbox.recv().await {
                    rest.push(m);
                }
                if let Err(reason) = self.process(rest).await {
                    tracing::error!(show = %self.show, %reason, "show actor stopped");
                }
                return;
            }
        }
    }

    /// How long until the earliest hold is due (bounded, to notice clock jumps).
    fn next_timer(&self) -> Option<StdDuration> {
        if !self.loaded {
            return None;
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

    /// The show cannot go on (a corrupt log): every caller is told why, and it stops.
    async fn stop(&mut self, reason: String) {
        tracing::error!(show = %self.show, %reason, "show actor stopped");
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
                if let DomainEvent::Reservation(
                    boxoffice_domain::reservation::ReservationEvent::ReservationPlaced {
                        reservation_id,
                        ..
                    },
                ) = &event
                {
                    placed.push(*reservation_id);
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
        self.index_reservations(&placed);
        self.state = state;
        self.versions = versions;
        self.position = position;
        self.loaded = true;
        self.sales_were_open = false;
        Ok(())
    }

    fn index_reservations(&self, ids: &[ReservationId]) {
        if ids.is_empty() {
            return;
        }
        let mut index = self.shared.reservation_shows.write().expect("index lock");
        for id in ids {
            index.insert(*id, self.show);
        }
    }

    /// Decides, appends and answers one batch. Errors only when the show must stop.
    async fn process(&mut self, messages: Vec<Message>) -> Result<(), String> {
        let mut pending = Vec::new();
        let mut reads = Vec::new();
        for message in messages {
            match message {
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
        }
        let result = self.commit(&mut pending).await;
        match result {
            Ok(()) => {
                for read in reads {
                    read(Ok(&self.state));
                }
                Ok(())
            }
            Err(error) => {
                let stop = match &error {
                    EngineError::ShowStopped(reason) => Some(reason.clone()),
                    _ => None,
                };
                for p in pending {
                    let _ = p.reply.send(Err(error.clone()));
                }
                for read in reads {
                    read(Err(error.clone()));
                }
                stop.map_or(Ok(()), Err)
            }
        }
    }

    /// Decides every pending command (and due expiries) and appends their events in one
    /// append, retrying after conflicts. Answers the commands it settles; on `Err` the
    /// caller answers the rest with the error.
    async fn commit(&mut self, pending: &mut Vec<Pending>) -> Result<(), EngineError> {
        let mut conflicts = 0;
        loop {
            if !self.loaded {
                match self.reload().await {
                    Ok(()) => {}
                    Err(LoadError::Unavailable(e)) => return Err(EngineError::Unavailable(e)),
                    Err(LoadError::Corrupt(e)) => return Err(EngineError::ShowStopped(e)),
                }
            }
            let now = self.shared.clock.now();
            let decide_started = std::time::Instant::now();
            let mut decided = Vec::with_capacity(pending.len());
            let mut events: Vec<(DomainEvent, usize)> = Vec::new();
            let mut metas: Vec<CommandMeta> = Vec::with_capacity(pending.len() + 1);
            for p in pending.iter() {
                let target = target_reservation(&self.state, &p.command);
                let result = self.state.decide(p.command.clone(), now);
                let result = result.map(|decided_events| {
                    let n = decided_events.len();
                    for e in decided_events {
                        self.state.apply(&e);
                        events.push((e, metas.len()));
                    }
                    (n, target)
                });
                let view = match &result {
                    Ok((_, Some(id))) => self.state.reservation(*id).cloned(),
                    _ => None,
                };
                decided.push(Decided { result, view });
                metas.push(p.meta.clone());
            }
            let expired = self.decide_expiries(now, &mut events, &mut metas);
            self.decide_sales_opening(now, &mut events, &mut metas);

            if events.is_empty() {
                self.answer(pending, decided, self.position);
                return Ok(());
            }
            let batch = self.build_batch(&events, &metas, now);
            let appended = batch.event_count() as u64;
            let started = std::time::Instant::now();
            self.shared.stats.decide_micros.fetch_add(decide_started.elapsed().as_micros() as u64, Ordering::Relaxed);
            let appended_result = self.shared.store.append(batch).await;
            self.shared.stats.append_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            match appended_result {
                Ok(result) => {
                    tracing::trace!(show = %self.show, events = appended, micros = started.elapsed().as_micros() as u64, "batch appended");
                    for (event, _) in &events {
                        *self.versions.entry(event.stream_id(self.show)).or_default() += 1;
                    }
                    let placed: Vec<ReservationId> = events
                        .iter()
                        .filter_map(|(e, _)| match e {
                            DomainEvent::Reservation(boxoffice_domain::reservation::ReservationEvent::ReservationPlaced { reservation_id, .. }) => {
                                Some(*reservation_id)
                            }
                            _ => None,
                        })
                        .collect();
                    self.index_reservations(&placed);
                    assert!(result.last_position >= self.position, "positions only grow");
                    self.position = result.last_position;
                    let stats = &self.shared.stats;
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats
                        .commands
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                    stats.events_appended.fetch_add(appended, Ordering::Relaxed);
                    stats.expiries.fetch_add(expired, Ordering::Relaxed);
                    self.answer(pending, decided, result.last_position);
                    return Ok(());
                }
                Err(StoreError::Conflict { stream_id }) => {
                    // Another writer changed one of our streams: our state is stale.
                    self.shared.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(show = %self.show, stream_id, "version conflict; reloading");
                    self.loaded = false;
                    conflicts += 1;
                    if conflicts > self.shared.config.conflict_retries_max {
                        return Err(EngineError::Conflict);
                    }
                }
                Err(e) => {
                    // The events may or may not be in the store; only a reload can tell.
                    self.shared
                        .stats
                        .append_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(show = %self.show, error = %e, "append failed");
                    self.loaded = false;
                    return Err(match e {
                        StoreError::InvalidAppend(reason) => EngineError::ShowStopped(format!(
                            "engine built an invalid append: {reason}"
                        )),
                        other => EngineError::Unavailable(other.to_string()),
                    });
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

    /// One append for the batch: each stream once, in the order it was first written,
    /// with its events in decision order and the version this actor believes it is at.
    fn build_batch(
        &self,
        events: &[(DomainEvent, usize)],
        metas: &[CommandMeta],
        now: chrono::DateTime<chrono::Utc>,
    ) -> AppendBatch {
        let mut streams: Vec<StreamAppend> = Vec::new();
        let mut stream_index: HashMap<String, usize> = HashMap::new();
        for (event, meta_index) in events {
            let stream_id = event.stream_id(self.show);
            let index = *stream_index.entry(stream_id.clone()).or_insert_with(|| {
                let expected_version = self.versions.get(&stream_id).copied().unwrap_or(0);
                streams.push(StreamAppend {
                    stream_id,
                    expected_version,
                    events: Vec::new(),
                });
                streams.len() - 1
            });
            let (event_type, schema_version, payload) = event.encode();
            let meta = &metas[*meta_index];
            streams[index].events.push(NewEvent {
                event_type: event_type.to_string(),
                schema_version,
                payload,
                metadata: EventMetadata {
                    event_id: self.shared.ids.next_uuid(),
                    correlation_id: meta.correlation_id,
                    causation_id: meta.causation_id,
                    actor: meta.actor.clone(),
                },
            });
        }
        AppendBatch {
            partition_key: self.partition_key.clone(),
            streams,
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
        Command::Cancel { reservation_id, .. }
        | Command::Expire { reservation_id }
        | Command::StartPayment { reservation_id, .. }
        | Command::CapturePayment { reservation_id, .. }
        | Command::FailPayment { reservation_id, .. }
        | Command::TimeOutPayment { reservation_id, .. }
        | Command::IssueTickets { reservation_id, .. }
        | Command::Refund { reservation_id } => Some(*reservation_id),
        Command::Show(_)
        | Command::BlockSeats { .. }
        | Command::UnblockSeats { .. }
        | Command::JoinWaitlist { .. }
        | Command::LeaveWaitlist { .. }
        | Command::OfferToWaitlist => None,
    }
}
