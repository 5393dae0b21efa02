//! The payment saga: "payment implies ticket issuance" (EVENTS.md rules 2 and 3).
//!
//! Checkout appends `PaymentStarted` (with the buyer's payment token) before anything is
//! sent to the provider. From then on one run per reservation drives the payment to an
//! end, always from the reservation's current state in the write engine, never from
//! what a webhook said:
//!
//! - **pending**: create the provider's payment intent with the payment id as the
//!   idempotency key (a retry or a restart never charges twice), then re-read it when a
//!   webhook pokes the run or a poll comes due. `succeeded` → `PaymentCaptured`;
//!   `requires_payment_method` → `PaymentFailed` (seats released); `canceled` →
//!   `PaymentTimedOut` (released).
//! - **deadline passed, still processing**: cancel at the provider. Only a confirmed
//!   cancellation releases the seats (`PaymentTimedOut`); a provider that refuses because
//!   it captured gets `PaymentCaptured`; one that cannot be reached is asked again.
//!   Seats are never released before the payment is known not to have been captured.
//! - **captured**: `TicketsIssued` with fresh, unguessable ticket codes and an order.
//!
//! The decisions themselves live in [`PaymentSettler`], which `boxctl reconcile --fix`
//! also uses to settle a payment left in flight, so the two cannot disagree.
//!
//! Durability comes from the log: a run keeps nothing that the log does not have, so
//! after a crash at any point [`PaymentSaga::start`] finds every reservation with a
//! payment in flight (from the engine's state, loaded from the log) and drives it on. The
//! saga also follows the log from a checkpoint, so a `PaymentStarted` appended by any
//! path (or a `ShowCancelled`, whose paid orders it refunds) starts a run without being
//! told.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boxoffice_commands::{CommandMeta, Engine, EngineError};
use boxoffice_domain::booking::{BookingError, Command};
use boxoffice_domain::ids::{OrderId, TicketId};
use boxoffice_domain::reservation::{
    Items, Payment, PaymentStatus, Reservation, ReservationError, ReservationStatus, Ticket,
};
use boxoffice_domain::{ReservationId, ShowId};
use rand::RngCore;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::provider::{CreateIntent, Intent, IntentStatus, ProviderClient, ProviderError};

/// The name of the saga's checkpoint in the store.
pub const CHECKPOINT: &str = "payment-saga";
/// The actor recorded on the saga's events.
pub const ACTOR: &str = "system:payment-saga";
const FOLLOW_BATCH: usize = 1_000;
/// Bytes of randomness in a ticket code (160 bits).
const TICKET_CODE_BYTES: usize = 20;
/// First and longest pause between [`PaymentSettler::settle_now`]'s passes after a failure.
const SETTLE_NOW_PAUSE_MIN: Duration = Duration::from_millis(100);
const SETTLE_NOW_PAUSE_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// First wait before re-reading a processing payment when no webhook came.
    pub poll_initial: Duration,
    /// Longest wait between polls.
    pub poll_max: Duration,
    /// Longest wait before retrying after the provider or the store failed.
    pub retry_max: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            poll_initial: Duration::from_millis(300),
            poll_max: Duration::from_secs(3),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Why a refund was not made.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("the reservation has no paid order")]
    NotPaid,
    #[error("the payment provider is unavailable: {0}")]
    ProviderUnavailable(String),
    #[error("the payment provider refused the refund: {code}: {message}")]
    ProviderRefused { code: String, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

struct Run {
    poke: Arc<Notify>,
    done: watch::Receiver<bool>,
}

/// How one pass over a payment ([`PaymentSettler::advance`]) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Something changed: look at the reservation again at once.
    Again,
    /// Nothing to do until a webhook or this much time.
    Wait(Duration),
    /// A dependency failed: back off and try again.
    Retry,
    /// The run is over (the reservation left `payment_pending`, or the engine stopped).
    Stop,
}

pub struct PaymentSaga {
    engine: Arc<Engine>,
    settler: PaymentSettler,
    config: SagaConfig,
    runs: Mutex<HashMap<ReservationId, Run>>,
    stop: watch::Sender<bool>,
    follower: Mutex<Option<JoinHandle<()>>>,
}

impl PaymentSaga {
    pub fn new(engine: Arc<Engine>, provider: ProviderClient, config: SagaConfig) -> Arc<Self> {
        let settler = PaymentSettler::new(Arc::clone(&engine), provider, ACTOR, config.poll_max);
        Arc::new(Self {
            engine,
            settler,
            config,
            runs: Mutex::new(HashMap::new()),
            stop: watch::channel(false).0,
            follower: Mutex::new(None),
        })
    }

    /// Resumes every payment in flight and every refund a cancelled show still owes,
    /// then follows the log. Call after the engine has loaded.
    pub async fn start(self: &Arc<Self>) {
        // Subscribed before the resume, so that no show taken over meanwhile is missed.
        let acquired = self.engine.cluster().map(|c| c.subscribe_acquired());
        let resumed = self.resume().await;
        tracing::info!(resumed, "payment saga started");
        let saga = Arc::clone(self);
        let task = tokio::spawn(async move { saga.follow().await });
        *self.follower.lock().expect("follower lock") = Some(task);
        if let Some(acquired) = acquired {
            tokio::spawn(Arc::clone(self).resume_taken_over(acquired));
        }
    }

    /// With several nodes: a show this node takes over (its owner died, was cut off or
    /// shut down) has its payments in flight resumed here, as at a restart.
    async fn resume_taken_over(
        self: Arc<Self>,
        mut acquired: tokio::sync::broadcast::Receiver<ShowId>,
    ) {
        let mut stop = self.stop.subscribe();
        loop {
            let show = tokio::select! {
                show = acquired.recv() => show,
                _ = stop.wait_for(|s| *s) => return,
            };
            match show {
                Ok(show) => {
                    let resumed = self.resume_show(show).await;
                    if resumed > 0 {
                        tracing::info!(%show, resumed, "payment saga: payments of a show taken over resumed");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.resume().await;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Stops following and tells every run to stop; whatever is in flight resumes on
    /// the next start.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let task = self.follower.lock().expect("follower lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Drives the payment of `reservation` (if one is in flight) to its end; returns a
    /// receiver that turns `true` when the run is over. Starting a run that is already
    /// going returns the same run.
    pub fn begin(
        self: &Arc<Self>,
        show: ShowId,
        reservation: ReservationId,
    ) -> watch::Receiver<bool> {
        let mut runs = self.runs.lock().expect("runs lock");
        if let Some(run) = runs.get(&reservation) {
            return run.done.clone();
        }
        let poke = Arc::new(Notify::new());
        let (done_tx, done_rx) = watch::channel(false);
        runs.insert(
            reservation,
            Run {
                poke: Arc::clone(&poke),
                done: done_rx.clone(),
            },
        );
        drop(runs);
        let saga = Arc::clone(self);
        tokio::spawn(async move {
            saga.drive(show, reservation, &poke).await;
            saga.runs.lock().expect("runs lock").remove(&reservation);
            done_tx.send_replace(true);
        });
        done_rx
    }

    /// A webhook said something happened to this reservation's payment: re-read it now.
    pub fn poke(self: &Arc<Self>, reservation: ReservationId) {
        let running = self
            .runs
            .lock()
            .expect("runs lock")
            .get(&reservation)
            .map(|run| Arc::clone(&run.poke));
        match running {
            Some(poke) => poke.notify_one(),
            None => {
                if let Some(show) = self.engine.show_of(reservation) {
                    self.begin(show, reservation);
                }
            }
        }
    }

    /// How many payment runs are going.
    pub fn running(&self) -> usize {
        self.runs.lock().expect("runs lock").len()
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Starts a run for every reservation with a payment in flight, and the refunds of
    /// every cancelled show; returns how many payment runs started.
    async fn resume(self: &Arc<Self>) -> usize {
        let partitions = loop {
            match self.engine.store().partitions().await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, "payment saga: cannot list shows; retrying");
                    if self.pause(self.config.retry_max).await {
                        return 0;
                    }
                }
            }
        };
        let mut resumed = 0;
        for partition in partitions {
            let Ok(show) = partition.parse::<ShowId>() else {
                continue;
            };
            resumed += self.resume_show(show).await;
        }
        resumed
    }

    /// Starts a run for every payment in flight of one show (and its refunds if it was
    /// cancelled); returns how many payment runs started. Nothing for a show this node
    /// does not own.
    async fn resume_show(self: &Arc<Self>, show: ShowId) -> usize {
        let mut resumed = 0;
        {
            let found = self
                .engine
                .query(show, |state| {
                    let cancelled = state.show.as_ref().is_some_and(|s| s.cancelled);
                    let paying: Vec<ReservationId> = state
                        .reservations
                        .values()
                        .filter(|r| r.status == ReservationStatus::PaymentPending)
                        .map(|r| r.reservation_id)
                        .collect();
                    (cancelled, paying)
                })
                .await;
            let Ok((cancelled, paying)) = found else {
                return 0;
            };
            for reservation in paying {
                self.begin(show, reservation);
                resumed += 1;
            }
            if cancelled {
                self.spawn_show_refunds(show);
            }
        }
        resumed
    }

    /// Follows the log from the saga's checkpoint: a `PaymentStarted` or
    /// `PaymentCaptured` starts (or pokes) a run, a `ShowCancelled` refunds the show's
    /// paid orders.
    async fn follow(self: Arc<Self>) {
        let store = Arc::clone(self.engine.store());
        let mut head = store.subscribe_head();
        let mut after = loop {
            match store.load_checkpoint(CHECKPOINT).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, "payment saga: cannot read its checkpoint");
                    if self.pause(self.config.retry_max).await {
                        return;
                    }
                }
            }
        };
        loop {
            if self.stopping() {
                return;
            }
            let events = match store.read_all(after, FOLLOW_BATCH).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "payment saga: cannot read the log");
                    if self.pause(self.config.retry_max).await {
                        return;
                    }
                    continue;
                }
            };
            for event in &events {
                let Ok(show) = event.partition_key.parse::<ShowId>() else {
                    continue;
                };
                match event.event_type.as_str() {
                    "PaymentStarted" | "PaymentCaptured" => {
                        if let Some(reservation) = event
                            .stream_id
                            .strip_prefix("reservation-")
                            .and_then(|id| id.parse::<ReservationId>().ok())
                        {
                            self.begin(show, reservation);
                        }
                    }
                    "ShowCancelled" => self.spawn_show_refunds(show),
                    _ => {}
                }
            }
            if let Some(last) = events.last() {
                after = last.position;
                if let Err(e) = store.save_checkpoint(CHECKPOINT, after).await {
                    tracing::warn!(error = %e, "payment saga: cannot save its checkpoint");
                }
            }
            if events.len() < FOLLOW_BATCH {
                let mut stop = self.stop.subscribe();
                tokio::select! {
                    _ = head.changed() => {}
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// Sleeps `d` unless stopping; `true` when the saga is stopping.
    async fn pause(&self, d: Duration) -> bool {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            _ = tokio::time::sleep(d) => self.stopping(),
        }
    }

    async fn drive(self: &Arc<Self>, show: ShowId, reservation: ReservationId, poke: &Notify) {
        let mut intent_id: Option<String> = None;
        let mut retry = self.config.poll_initial;
        let mut poll = self.config.poll_initial;
        loop {
            if self.stopping() {
                return;
            }
            let current = self
                .engine
                .query(show, move |state| {
                    let cancelled = state.show.as_ref().is_some_and(|s| s.cancelled);
                    (state.reservation(reservation).cloned(), cancelled)
                })
                .await;
            let step = match current {
                Ok((Some(r), cancelled)) => match (&r.status, r.payment.clone()) {
                    (ReservationStatus::PaymentPending, Some(payment)) => {
                        self.settler
                            .advance(show, &r, &payment, &mut intent_id)
                            .await
                    }
                    (ReservationStatus::Confirmed, _) if cancelled => {
                        self.refund_logged(show, reservation, "system:show-cancelled")
                            .await;
                        Step::Stop
                    }
                    _ => Step::Stop,
                },
                Ok((None, _)) => Step::Stop,
                // Another node owns the show: its saga drives the payment.
                Err(
                    EngineError::ShuttingDown
                    | EngineError::ShowStopped(_)
                    | EngineError::NotOwner { .. },
                ) => Step::Stop,
                Err(e) => {
                    tracing::warn!(%reservation, error = %e, "payment saga: cannot read the reservation");
                    Step::Retry
                }
            };
            match step {
                Step::Again => {
                    retry = self.config.poll_initial;
                }
                Step::Wait(at_most) => {
                    retry = self.config.poll_initial;
                    let wait = poll.min(at_most).max(Duration::from_millis(10));
                    poll = (poll * 3 / 2).min(self.config.poll_max);
                    let mut stop = self.stop.subscribe();
                    tokio::select! {
                        _ = poke.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                Step::Retry => {
                    let wait = retry;
                    retry = (retry * 2).min(self.config.retry_max);
                    let mut stop = self.stop.subscribe();
                    tokio::select! {
                        _ = poke.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                Step::Stop => return,
            }
        }
    }

    /// Refunds a paid reservation at the provider, then appends `RefundIssued` (its
    /// seats go back on sale, to the waitlist first); see [`PaymentSettler::refund`].
    pub async fn refund(
        &self,
        show: ShowId,
        reservation: ReservationId,
        actor: &str,
    ) -> Result<Reservation, RefundError> {
        self.settler.refund(show, reservation, actor).await
    }

    async fn refund_logged(&self, show: ShowId, reservation: ReservationId, actor: &str) {
        let mut wait = self.config.poll_initial;
        loop {
            match self.refund(show, reservation, actor).await {
                Ok(_) | Err(RefundError::NotPaid) => return,
                Err(RefundError::ProviderRefused { code, message }) => {
                    tracing::error!(%reservation, %code, %message, "refund refused; left for reconciliation");
                    return;
                }
                Err(RefundError::Engine(
                    EngineError::ShuttingDown
                    | EngineError::ShowStopped(_)
                    | EngineError::NotOwner { .. },
                )) => {
                    return;
                }
                Err(e) => {
                    tracing::warn!(%reservation, error = %e, "refund failed; retrying");
                    if self.pause(wait).await {
                        return;
                    }
                    wait = (wait * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Refunds every paid order of a cancelled show (payments still in flight are
    /// refunded by their own run once their tickets are issued).
    fn spawn_show_refunds(self: &Arc<Self>, show: ShowId) {
        let saga = Arc::clone(self);
        tokio::spawn(async move {
            let paid = saga
                .engine
                .query(show, |state| {
                    state
                        .reservations
                        .values()
                        .filter(|r| r.status == ReservationStatus::Confirmed)
                        .map(|r| r.reservation_id)
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
            for reservation in paid {
                saga.refund_logged(show, reservation, "system:show-cancelled")
                    .await;
            }
        });
    }
}

/// What [`PaymentSettler::settle_now`] left behind.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The reservation after the last pass (`None` if it does not exist).
    pub reservation: Option<Reservation>,
    /// How the last pass ended: [`Step::Stop`] once the payment left `payment_pending`
    /// (or cannot go on), [`Step::Wait`] while the provider has not decided,
    /// [`Step::Retry`] when the passes ran out on failures.
    pub last: Step,
}

/// The saga's decisions about one payment, shared by the saga's runs and by tools that
/// settle a payment on request (`boxctl reconcile --fix`), so both act on what the
/// provider says in exactly the same way: capture what succeeded and issue its tickets,
/// fail what was declined, void at the deadline and release only on a confirmed void,
/// refund with the order as the provider's idempotency key.
#[derive(Clone)]
pub struct PaymentSettler {
    engine: Arc<Engine>,
    provider: ProviderClient,
    /// The actor recorded on the events this settler's commands append.
    actor: String,
    /// How long to wait before looking again at a payment whose cancellation the
    /// provider has not confirmed.
    poll_max: Duration,
}

impl PaymentSettler {
    pub fn new(
        engine: Arc<Engine>,
        provider: ProviderClient,
        actor: impl Into<String>,
        poll_max: Duration,
    ) -> Self {
        Self {
            engine,
            provider,
            actor: actor.into(),
            poll_max,
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn provider(&self) -> &ProviderClient {
        &self.provider
    }

    /// One pass over a payment in flight (`r` is in `payment_pending` with `payment`):
    /// a captured payment gets its tickets; any other is looked up at the provider (and
    /// created there under the payment id as idempotency key when `intent_id` is not
    /// known yet, which finds the same intent again after a crash) and what the provider
    /// says is appended. `intent_id` carries the provider's id from pass to pass.
    pub async fn advance(
        &self,
        show: ShowId,
        r: &Reservation,
        payment: &Payment,
        intent_id: &mut Option<String>,
    ) -> Step {
        match payment.status {
            PaymentStatus::Captured => self.issue(show, r, payment).await,
            _ => self.settle(show, r, payment, intent_id).await,
        }
    }

    /// Drives `reservation`'s payment as far as it goes now, without waiting for the
    /// provider: passes of [`PaymentSettler::advance`] until the reservation leaves
    /// `payment_pending` (or was not in it), the provider has not decided yet, or
    /// `passes_max` passes were made. A failing provider or store is retried after a
    /// short pause within the same bound. For tools that settle one payment on request;
    /// the saga's runs call `advance` and wait between passes themselves.
    pub async fn settle_now(
        &self,
        show: ShowId,
        reservation: ReservationId,
        passes_max: u32,
    ) -> Result<Settled, EngineError> {
        let mut intent_id = None;
        let mut pause = SETTLE_NOW_PAUSE_MIN;
        let mut last = Step::Retry;
        for _ in 0..passes_max {
            let current = self.engine.reservation(show, reservation).await?;
            let Some(r) = current else {
                last = Step::Stop;
                break;
            };
            let payment = match (&r.status, r.payment.clone()) {
                (ReservationStatus::PaymentPending, Some(payment)) => payment,
                _ => {
                    last = Step::Stop;
                    break;
                }
            };
            last = self.advance(show, &r, &payment, &mut intent_id).await;
            match last {
                Step::Again => {}
                Step::Retry => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(SETTLE_NOW_PAUSE_MAX);
                }
                Step::Wait(_) | Step::Stop => break,
            }
        }
        let reservation = self.engine.reservation(show, reservation).await?;
        Ok(Settled { reservation, last })
    }

    fn create_request(show: ShowId, r: &Reservation, payment: &Payment) -> CreateIntent {
        let metadata = BTreeMap::from([
            ("reservation_id".to_owned(), r.reservation_id.to_string()),
            ("show_id".to_owned(), show.to_string()),
            ("payment_id".to_owned(), payment.payment_id.to_string()),
        ]);
        CreateIntent {
            amount: r.total.0,
            // ISO 4217 codes are lowercase on the wire, as at Stripe.
            currency: r.currency.to_ascii_lowercase(),
            payment_token: payment.payment_token.clone().unwrap_or_default(),
            metadata,
            capture_deadline: Some(payment.deadline),
        }
    }

    /// One look at a pending payment at the provider, and what follows from it.
    async fn settle(
        &self,
        show: ShowId,
        r: &Reservation,
        payment: &Payment,
        intent_id: &mut Option<String>,
    ) -> Step {
        let reservation = r.reservation_id;
        if payment.payment_token.as_deref().is_none_or(str::is_empty) {
            // Nothing was ever sent to a provider, so nothing can have been charged.
            return self
                .resolve_failed(show, reservation, payment, "no_payment_method".into())
                .await;
        }
        if r.total.0 == 0 {
            // A free reservation has nothing to charge: it is paid as it stands.
            let command = Command::CapturePayment {
                reservation_id: reservation,
                payment_id: payment.payment_id,
                amount: r.total,
                provider_ref: None,
            };
            return self.execute(show, payment, command).await;
        }
        let looked_up = match intent_id.as_deref() {
            Some(id) => self.provider.retrieve(id).await,
            None => {
                let request = Self::create_request(show, r, payment);
                self.provider
                    .create_intent(&request, &payment.payment_id.to_string())
                    .await
            }
        };
        let intent = match looked_up {
            Ok(intent) => intent,
            Err(ProviderError::Transport(e)) => {
                tracing::warn!(%reservation, error = %e, "payment provider unreachable");
                return Step::Retry;
            }
            Err(ProviderError::NotFound) => {
                // The provider lost or never had it: create again under the same key.
                *intent_id = None;
                return Step::Retry;
            }
            Err(ProviderError::Rejected { code, message, .. }) if intent_id.is_none() => {
                // The provider refused to create the payment: nothing was charged.
                tracing::info!(%reservation, %code, %message, "payment refused at creation");
                return self.resolve_failed(show, reservation, payment, code).await;
            }
            Err(e) => {
                tracing::warn!(%reservation, error = %e, "payment provider refused a read");
                return Step::Retry;
            }
        };
        *intent_id = Some(intent.id.clone());
        self.act_on(show, r, payment, intent).await
    }

    async fn act_on(
        &self,
        show: ShowId,
        r: &Reservation,
        payment: &Payment,
        intent: Intent,
    ) -> Step {
        let reservation = r.reservation_id;
        match intent.status {
            IntentStatus::Succeeded => self.capture(show, r, payment, &intent).await,
            IntentStatus::RequiresPaymentMethod => {
                let reason = intent
                    .last_payment_error
                    .as_ref()
                    .map(|e| e.code.clone())
                    .unwrap_or_else(|| "declined".into());
                self.resolve_failed(show, reservation, payment, reason)
                    .await
            }
            IntentStatus::Canceled => self.resolve_timed_out(show, reservation, payment).await,
            IntentStatus::Processing => {
                let now = self.engine.clock().now();
                if now < payment.deadline {
                    let left = (payment.deadline - now).to_std().unwrap_or_default();
                    return Step::Wait(left);
                }
                // The deadline passed with no answer: void it. Only a confirmed
                // cancellation may release the seats.
                match self.provider.cancel(&intent.id).await {
                    Ok(after) if after.status == IntentStatus::Processing => {
                        Step::Wait(self.poll_max)
                    }
                    Ok(after) => Box::pin(self.act_on(show, r, payment, after)).await,
                    Err(ProviderError::Rejected {
                        intent: Some(after),
                        code,
                        ..
                    }) => {
                        tracing::info!(%reservation, %code, status = ?after.status, "provider refused to cancel");
                        if after.status == IntentStatus::Processing {
                            Step::Wait(self.poll_max)
                        } else {
                            Box::pin(self.act_on(show, r, payment, *after)).await
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%reservation, error = %e, "cannot cancel the payment");
                        Step::Retry
                    }
                }
            }
        }
    }

    async fn capture(
        &self,
        show: ShowId,
        r: &Reservation,
        payment: &Payment,
        intent: &Intent,
    ) -> Step {
        if intent.amount != r.total.0 || !intent.currency.eq_ignore_ascii_case(&r.currency) {
            // A provider that charged another amount is for a human; the run stops
            // with the payment in flight so `reconcile` lists it and no seat is released.
            tracing::error!(
                reservation = %r.reservation_id,
                charged = intent.amount,
                total = r.total.0,
                "payment captured with a different amount; left for reconciliation"
            );
            return Step::Stop;
        }
        let command = Command::CapturePayment {
            reservation_id: r.reservation_id,
            payment_id: payment.payment_id,
            amount: r.total,
            provider_ref: Some(intent.id.clone()),
        };
        self.execute(show, payment, command).await
    }

    async fn issue(&self, show: ShowId, r: &Reservation, payment: &Payment) -> Step {
        let order_id = OrderId::from_uuid(self.engine.next_uuid());
        let ticket = |seat: Option<String>, section: Option<String>| Ticket {
            ticket_id: TicketId::from_uuid(self.engine.next_uuid()),
            seat,
            section,
            code: ticket_code(),
        };
        let tickets = match &r.items {
            Items::Seats(seats) => seats
                .iter()
                .map(|s| ticket(Some(s.clone()), None))
                .collect(),
            Items::General { section, quantity } => (0..*quantity)
                .map(|_| ticket(None, Some(section.clone())))
                .collect(),
        };
        let command = Command::IssueTickets {
            reservation_id: r.reservation_id,
            order_id,
            tickets,
        };
        self.execute(show, payment, command).await
    }

    async fn resolve_failed(
        &self,
        show: ShowId,
        reservation: ReservationId,
        payment: &Payment,
        reason: String,
    ) -> Step {
        let command = Command::FailPayment {
            reservation_id: reservation,
            payment_id: payment.payment_id,
            reason,
        };
        self.execute(show, payment, command).await
    }

    async fn resolve_timed_out(
        &self,
        show: ShowId,
        reservation: ReservationId,
        payment: &Payment,
    ) -> Step {
        let command = Command::TimeOutPayment {
            reservation_id: reservation,
            payment_id: payment.payment_id,
        };
        self.execute(show, payment, command).await
    }

    /// Sends one of the saga's commands; every outcome but a failing store leads to a
    /// fresh look at the reservation.
    async fn execute(&self, show: ShowId, payment: &Payment, command: Command) -> Step {
        let meta = CommandMeta {
            // Every event of one payment carries the payment as its correlation.
            correlation_id: payment.payment_id.uuid(),
            causation_id: None,
            actor: self.actor.clone(),
        };
        match self.engine.execute(show, command, meta).await {
            Ok(_) => Step::Again,
            // Someone (a duplicate run, a restart) got there first: look again.
            Err(EngineError::Domain(BookingError::Payment(
                ReservationError::AlreadyCaptured
                | ReservationError::AlreadyIssued
                | ReservationError::NoSuchPayment
                | ReservationError::NotCaptured,
            ))) => Step::Again,
            Err(EngineError::Domain(e)) => {
                tracing::error!(%show, error = %e, "payment saga command refused");
                Step::Stop
            }
            Err(
                EngineError::ShuttingDown
                | EngineError::ShowStopped(_)
                | EngineError::NotOwner { .. },
            ) => Step::Stop,
            Err(e) => {
                tracing::warn!(%show, error = %e, "payment saga command failed; retrying");
                Step::Retry
            }
        }
    }

    /// Refunds a paid reservation at the provider, then appends `RefundIssued` (its
    /// seats go back on sale, to the waitlist first). Repeating a refund is harmless: the
    /// provider's idempotency key is the order, and a refunded reservation answers as is.
    pub async fn refund(
        &self,
        show: ShowId,
        reservation: ReservationId,
        actor: &str,
    ) -> Result<Reservation, RefundError> {
        let r = self
            .engine
            .reservation(show, reservation)
            .await?
            .ok_or(RefundError::NotPaid)?;
        match r.status {
            ReservationStatus::Refunded => return Ok(r),
            ReservationStatus::Confirmed => {}
            _ => return Err(RefundError::NotPaid),
        }
        let (Some(payment), Some(order_id)) = (r.payment.clone(), r.order_id) else {
            return Err(RefundError::NotPaid);
        };
        if r.total.0 == 0 {
            // Nothing was charged for a free reservation, so nothing goes back.
            return self
                .append_refund(show, reservation, &payment, r, actor)
                .await;
        }
        let intent_id = match payment.provider_ref.clone() {
            Some(id) => id,
            // Captured before the provider's id was recorded: the creation key finds it.
            None => {
                self.provider
                    .create_intent(
                        &Self::create_request(show, &r, &payment),
                        &payment.payment_id.to_string(),
                    )
                    .await
                    .map_err(provider_refund_error)?
                    .id
            }
        };
        match self
            .provider
            .refund(&intent_id, Some(r.total.0), &format!("refund-{order_id}"))
            .await
        {
            Ok(_) => {}
            Err(ProviderError::Rejected { code, .. }) if code == "charge_already_refunded" => {}
            Err(e) => return Err(provider_refund_error(e)),
        }
        self.append_refund(show, reservation, &payment, r, actor)
            .await
    }

    async fn append_refund(
        &self,
        show: ShowId,
        reservation: ReservationId,
        payment: &Payment,
        r: Reservation,
        actor: &str,
    ) -> Result<Reservation, RefundError> {
        let meta = CommandMeta {
            correlation_id: payment.payment_id.uuid(),
            causation_id: None,
            actor: actor.to_owned(),
        };
        match self
            .engine
            .execute(
                show,
                Command::Refund {
                    reservation_id: reservation,
                },
                meta,
            )
            .await
        {
            Ok(outcome) => Ok(outcome.reservation.unwrap_or(r)),
            Err(EngineError::Domain(BookingError::Payment(ReservationError::NotConfirmed))) => {
                // Refunded by a concurrent request in between.
                let now = self
                    .engine
                    .reservation(show, reservation)
                    .await?
                    .ok_or(RefundError::NotPaid)?;
                if now.status == ReservationStatus::Refunded {
                    Ok(now)
                } else {
                    Err(RefundError::NotPaid)
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn provider_refund_error(e: ProviderError) -> RefundError {
    match e {
        ProviderError::Transport(e) => RefundError::ProviderUnavailable(e),
        ProviderError::NotFound => RefundError::ProviderRefused {
            code: "resource_missing".into(),
            message: "the provider does not know the payment".into(),
        },
        ProviderError::Rejected { code, message, .. } => {
            RefundError::ProviderRefused { code, message }
        }
    }
}

/// A ticket's secret: 160 random bits from the OS, hex. A scanner verifies it against
/// the orders read model; nobody can guess one.
pub fn ticket_code() -> String {
    let mut bytes = [0u8; TICKET_CODE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}
