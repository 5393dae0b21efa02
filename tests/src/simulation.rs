//! Deterministic simulation of one show's write side: the real engine on a real store,
//! driven by a seeded random mix of buyer and organizer commands, clock jumps, payment
//! outcomes and crash-restarts.
//!
//! The simulation plays the world around the engine. It owns the clock (a
//! [`ManualClock`]), the id source, and the payment provider: every payment started gets
//! a fate drawn from the seed (captured, declined, never answered so it is voided at its
//! deadline, or captured although the first look timed out), and the saga's commands that
//! follow from it reach the engine late, twice, or out of order, as webhooks do. A
//! crash-restart shuts the engine down and starts a new one on a newly opened store, which
//! must rebuild exactly the state the old one had from the log.
//!
//! After every step the log is read back and checked by the independent checkers of this
//! crate (EVENTS.md rules 1 and 6 and the hash chain in [`crate::check_log`], rules 2 and 3
//! in [`crate::payments::check_payments`]), and the engine's state must equal a replay of
//! the log. At the end the world settles (every deadline passes, every payment is
//! answered) and rules 2 to 4 must hold in full.
//!
//! A run is a pure function of its seed: the same seed makes the same commands in the same
//! order, so a failure names its seed and step and `SIM_SEED=<seed>` replays it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use boxoffice_commands::{CommandMeta, Engine, EngineConfig, EngineError};
use boxoffice_domain::booking::{HoldRequest, Selection, ShowState, refusal_for_closed};
use boxoffice_domain::reservation::{Items, PaymentStatus, ReservationStatus, Ticket};
use boxoffice_domain::show::{Limits, ShowCommand};
use boxoffice_domain::{
    Clock, Command, EntryId, ManualClock, OrderId, PaymentId, ReservationId, SequentialIds, ShowId,
    TicketId, UserId,
};
use boxoffice_store::{EventStore, RecordedEvent};
use chrono::Duration;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::payments::check_payments;
use crate::{check_log, open, show_definition};

/// Rows of the seated section (half tier A, half tier B), seats per row, GA places.
const ROWS: u32 = 2;
const SEATS_PER_ROW: u32 = 5;
const GA_CAPACITY: u32 = 6;
const USERS: usize = 6;
const HOLD_TTL_SECONDS: u32 = 300;
const PAYMENT_TIMEOUT_SECONDS: u32 = 120;
const WAITLIST_CLAIM_SECONDS: u32 = 240;
/// Idempotency keys a user reuses, so repeats of the same hold happen.
const KEYS_PER_USER: u32 = 2;
/// Operations shown in a failure message, the last ones before it.
const TRACE_TAIL: usize = 25;

/// How long one seed runs.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub steps: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self { steps: 60 }
    }
}

/// What one seed did, for the summary of a run of many.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimStats {
    pub steps: usize,
    pub events: usize,
    pub accepted: usize,
    pub refused: usize,
    pub restarts: usize,
    pub tickets_issued: usize,
    pub payments: usize,
    /// Holds of named seats accepted (the mix must reach that path).
    pub named_holds: usize,
    /// Commands about a closed reservation the engine no longer kept in memory, refused
    /// from the reservation read back from the log.
    pub refused_from_log: usize,
}

impl SimStats {
    pub fn add(&mut self, other: &SimStats) {
        self.steps += other.steps;
        self.events += other.events;
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.restarts += other.restarts;
        self.tickets_issued += other.tickets_issued;
        self.payments += other.payments;
        self.named_holds += other.named_holds;
        self.refused_from_log += other.refused_from_log;
    }
}

/// A seed that broke a rule: where, how, and what led there.
#[derive(Debug)]
pub struct SimFailure {
    pub seed: u64,
    /// The run's steps per seed (a seed's run depends on it).
    pub steps: usize,
    pub step: usize,
    pub message: String,
    pub trace: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {}: {}",
            self.seed, self.step, self.message
        )?;
        writeln!(
            f,
            "reproduce: SIM_SEED={} SIM_STEPS={} cargo test --release -p boxoffice-tests --test simulation",
            self.seed, self.steps
        )?;
        writeln!(f, "last operations:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What the provider will have done with a payment, drawn when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Charged; the saga captures, then issues the tickets.
    Captured,
    /// Declined; the saga records the failure.
    Declined,
    /// No answer ever; at the deadline the saga voids it (the provider confirms).
    Unanswered,
    /// Charged, but the saga's first look timed out; it learns of the charge only when
    /// it tries to void at the deadline and the provider refuses.
    CapturedAfterTimeout,
}

/// One step of the world.
#[derive(Debug, Clone)]
enum Op {
    Hold {
        user: usize,
        key: Option<u32>,
        selection: Selection,
    },
    Cancel {
        pick: u64,
    },
    StartPayment {
        pick: u64,
        fate: Fate,
        token: bool,
    },
    /// The saga's next pass over one payment in flight (`duplicate`: its command twice).
    SagaPass {
        pick: u64,
        duplicate: bool,
    },
    /// A command the saga or a webhook sent earlier, delivered again now.
    Redeliver {
        pick: u64,
    },
    /// A timer of an earlier life of the engine firing late.
    StrayExpire {
        pick: u64,
    },
    Refund {
        pick: u64,
    },
    JoinWaitlist {
        user: usize,
        quantity: u32,
        floor: bool,
    },
    LeaveWaitlist {
        pick: u64,
    },
    Block {
        seat: u32,
    },
    Unblock {
        seat: u32,
    },
    ChangePrice {
        tier_a: bool,
        price: i64,
    },
    ClockJump {
        seconds: i64,
    },
    CrashRestart,
}

fn seat_name(index: u32) -> String {
    format!("S-R{}-{}", index / SEATS_PER_ROW, index % SEATS_PER_ROW + 1)
}

fn draw_op(rng: &mut StdRng) -> Op {
    let pick = rng.r#gen::<u64>();
    match rng.gen_range(0..100) {
        0..=24 => {
            let user = rng.gen_range(0..USERS);
            let key = rng.gen_bool(0.3).then(|| rng.gen_range(0..KEYS_PER_USER));
            let quantity = rng.gen_range(1..=3);
            let selection = match rng.gen_range(0..3) {
                0 => {
                    // Named seats, mostly in the front row so that buyers collide.
                    let row = u32::from(rng.gen_bool(0.3));
                    let mut seats: Vec<String> = (0..quantity)
                        .map(|_| seat_name(row * SEATS_PER_ROW + rng.gen_range(0..SEATS_PER_ROW)))
                        .collect();
                    seats.sort();
                    seats.dedup();
                    Selection::Seats(seats)
                }
                1 => Selection::BestAvailable {
                    section: "S".into(),
                    quantity,
                },
                _ => Selection::General {
                    section: "floor".into(),
                    quantity,
                },
            };
            Op::Hold {
                user,
                key,
                selection,
            }
        }
        25..=29 => Op::Cancel { pick },
        30..=41 => {
            let fate = match rng.gen_range(0..10) {
                0..=4 => Fate::Captured,
                5..=6 => Fate::Declined,
                7..=8 => Fate::Unanswered,
                _ => Fate::CapturedAfterTimeout,
            };
            Op::StartPayment {
                pick,
                fate,
                token: rng.gen_bool(0.95),
            }
        }
        42..=57 => Op::SagaPass {
            pick,
            duplicate: rng.gen_bool(0.2),
        },
        58..=62 => Op::Redeliver { pick },
        63..=64 => Op::StrayExpire { pick },
        65..=67 => Op::Refund { pick },
        68..=74 => Op::JoinWaitlist {
            user: rng.gen_range(0..USERS),
            quantity: rng.gen_range(1..=2),
            floor: rng.gen_bool(0.4),
        },
        75..=77 => Op::LeaveWaitlist { pick },
        78..=79 => Op::Block {
            seat: rng.gen_range(0..ROWS * SEATS_PER_ROW),
        },
        80..=81 => Op::Unblock {
            seat: rng.gen_range(0..ROWS * SEATS_PER_ROW),
        },
        82 => Op::ChangePrice {
            tier_a: rng.gen_bool(0.5),
            price: rng.gen_range(1..200) * 500,
        },
        83..=95 => Op::ClockJump {
            // Mostly short; sometimes past a hold's or a payment's deadline.
            seconds: if rng.gen_bool(0.6) {
                rng.gen_range(1..60)
            } else {
                rng.gen_range(60..i64::from(2 * HOLD_TTL_SECONDS))
            },
        },
        _ => Op::CrashRestart,
    }
}

/// The simulated world around one engine.
struct World {
    seed: u64,
    url: String,
    show: ShowId,
    users: Vec<UserId>,
    clock: Arc<ManualClock>,
    ids: Arc<SequentialIds>,
    store: Arc<dyn EventStore>,
    engine: Arc<Engine>,
    /// Closed reservations the engine keeps (`EngineConfig::closed_reservations_kept`):
    /// most seeds keep 0 to 3, so that commands keep meeting forgotten ones.
    closed_kept: usize,
    /// A replay of the whole log as of the last check, forgetting nothing.
    full: ShowState,
    /// Sim-made ids come from here (the engine's own from `ids`), both deterministic.
    next_id: u64,
    /// The provider's side: each payment's fate.
    fates: BTreeMap<PaymentId, Fate>,
    /// Every payment command sent so far, for redelivery.
    sent: Vec<Command>,
    /// The log read so far, extended after every step.
    log: Vec<RecordedEvent>,
    trace: Vec<String>,
    stats: SimStats,
}

/// Picks one of `items` with `pick`, or `None` when there are none.
fn choose<T: Clone>(items: &[T], pick: u64) -> Option<T> {
    (!items.is_empty()).then(|| items[(pick % items.len() as u64) as usize].clone())
}

impl World {
    async fn start(seed: u64, url: String) -> Result<Self, String> {
        let clock = Arc::new(ManualClock::new(
            "2030-01-01T09:00:00Z".parse().expect("a time"),
        ));
        let ids = Arc::new(SequentialIds::starting_at(1 << 40));
        let store = open(&url).await;
        let closed_kept = match seed % 5 {
            4 => EngineConfig::default().closed_reservations_kept,
            kept => kept as usize,
        };
        let engine = Self::engine(&store, &clock, &ids, closed_kept);
        let mut world = Self {
            seed,
            url,
            show: ShowId(Uuid::from_u64_pair(seed, 0x5eed)),
            users: (0..USERS as u64)
                .map(|u| UserId(Uuid::from_u64_pair(seed, u + 1)))
                .collect(),
            clock,
            ids,
            store,
            engine,
            closed_kept,
            full: ShowState::new(ShowId(Uuid::from_u64_pair(seed, 0x5eed))),
            next_id: 1,
            fates: BTreeMap::new(),
            sent: Vec::new(),
            log: Vec::new(),
            trace: Vec::new(),
            stats: SimStats::default(),
        };
        let mut definition = show_definition(
            ROWS,
            SEATS_PER_ROW,
            GA_CAPACITY,
            Limits {
                max_tickets_per_user: 4,
                hold_ttl_seconds: HOLD_TTL_SECONDS,
                payment_timeout_seconds: PAYMENT_TIMEOUT_SECONDS,
                waitlist_claim_seconds: WAITLIST_CLAIM_SECONDS,
                max_active_holds_per_user: 2,
            },
        );
        // Far beyond what the jumps of one run reach, so sales never close.
        definition.starts_at = world.clock.now() + Duration::days(365);
        let schedule = Command::Show(ShowCommand::Schedule {
            show_id: world.show,
            organizer_id: UserId(Uuid::from_u64_pair(seed, 0)),
            definition: definition.into(),
        });
        world
            .engine
            .execute(world.show, schedule, CommandMeta::new("organizer"))
            .await
            .map_err(|e| format!("scheduling the show failed: {e}"))?;
        world.check().await?;
        Ok(world)
    }

    fn engine(
        store: &Arc<dyn EventStore>,
        clock: &Arc<ManualClock>,
        ids: &Arc<SequentialIds>,
        closed_kept: usize,
    ) -> Arc<Engine> {
        Engine::new(
            Arc::clone(store),
            Arc::clone(clock) as Arc<dyn Clock>,
            Arc::clone(ids) as Arc<dyn boxoffice_domain::IdSource>,
            EngineConfig {
                closed_reservations_kept: closed_kept,
                ..EngineConfig::default()
            },
        )
    }

    fn fresh(&mut self) -> Uuid {
        self.next_id += 1;
        Uuid::from_u64_pair(self.seed, 0x1_0000_0000 + self.next_id)
    }

    async fn state(&self) -> Result<ShowState, String> {
        self.engine
            .query(self.show, ShowState::clone)
            .await
            .map_err(|e| format!("the engine cannot answer a query: {e}"))
    }

    /// Sends a command; a domain refusal is an answer, anything else breaks the run.
    async fn send(&mut self, command: Command, actor: &str) -> Result<bool, String> {
        let described = describe(&command);
        // A closed reservation changes no more: whatever happened since the last check,
        // the engine must refuse a command about it as a state that kept it does,
        // whether it still keeps it or reads it back from the log.
        let closed = command
            .reservation_id()
            .and_then(|id| self.full.reservation(id))
            .filter(|r| r.status.is_closed())
            .cloned();
        let kept = match &closed {
            Some(r) => {
                let id = r.reservation_id;
                self.engine
                    .query(self.show, move |s| s.reservation(id).is_some())
                    .await
                    .map_err(|e| format!("query failed: {e}"))?
            }
            None => true,
        };
        let answer = self
            .engine
            .execute(self.show, command.clone(), CommandMeta::new(actor))
            .await;
        if let Some(r) = &closed {
            let expected = refusal_for_closed(r, &command, self.clock.now())
                .ok_or("a closed reservation's refusal is known")?;
            match &answer {
                Err(EngineError::Domain(refusal)) if *refusal == expected => {
                    if !kept {
                        self.stats.refused_from_log += 1;
                    }
                }
                other => {
                    return Err(format!(
                        "{described} about closed {} (kept in memory: {kept}) answered \
                         {other:?}, not {expected:?}",
                        r.reservation_id
                    ));
                }
            }
        }
        match answer {
            Ok(outcome) => {
                self.stats.accepted += 1;
                self.trace
                    .push(format!("  -> accepted, {} events", outcome.events));
                Ok(true)
            }
            Err(EngineError::Domain(e)) => {
                self.stats.refused += 1;
                self.trace.push(format!("  -> refused: {e}"));
                Ok(false)
            }
            Err(e) => Err(format!("{described} failed outside the domain: {e}")),
        }
    }

    async fn payment_command(&mut self, command: Command) -> Result<bool, String> {
        self.sent.push(command.clone());
        self.send(command, "payment-saga").await
    }

    /// Reservations of the current state that `keep` selects, in a stable order.
    async fn reservations(
        &self,
        keep: impl Fn(&boxoffice_domain::reservation::Reservation) -> bool + Send + 'static,
    ) -> Result<Vec<ReservationId>, String> {
        let mut ids = self
            .engine
            .query(self.show, move |s| {
                s.reservations
                    .values()
                    .filter(|r| keep(r))
                    .map(|r| r.reservation_id)
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| format!("query failed: {e}"))?;
        ids.sort();
        Ok(ids)
    }

    async fn apply(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Hold {
                user,
                key,
                selection,
            } => {
                let named = matches!(selection, Selection::Seats(_));
                let request = HoldRequest {
                    reservation_id: ReservationId(self.fresh()),
                    user_id: self.users[user],
                    idempotency_key: key.map(|k| format!("key-{k}")),
                    selection,
                };
                if self.send(Command::Hold(request), "buyer").await? && named {
                    self.stats.named_holds += 1;
                }
            }
            Op::Cancel { pick } => {
                let held = self
                    .reservations(|r| r.status == ReservationStatus::Held)
                    .await?;
                if let Some(id) = choose(&held, pick) {
                    let command = Command::Cancel {
                        reservation_id: id,
                        by: "buyer".into(),
                    };
                    self.send(command, "buyer").await?;
                }
            }
            Op::StartPayment { pick, fate, token } => {
                let held = self
                    .reservations(|r| r.status == ReservationStatus::Held)
                    .await?;
                if let Some(id) = choose(&held, pick) {
                    let payment_id = PaymentId(self.fresh());
                    let command = Command::StartPayment {
                        reservation_id: id,
                        payment_id,
                        payment_token: token.then(|| "tok_sim".into()),
                    };
                    if self.send(command, "buyer").await? {
                        self.stats.payments += 1;
                        // A payment without a token never reaches the provider.
                        let fate = if token { fate } else { Fate::Declined };
                        self.fates.insert(payment_id, fate);
                    }
                }
            }
            Op::SagaPass { pick, duplicate } => {
                let paying = self
                    .reservations(|r| r.status == ReservationStatus::PaymentPending)
                    .await?;
                if let Some(id) = choose(&paying, pick) {
                    self.saga_pass(id, duplicate).await?;
                }
            }
            Op::Redeliver { pick } => {
                if let Some(command) = choose(&self.sent, pick) {
                    self.trace
                        .push(format!("  redelivers {}", describe(&command)));
                    self.send(command, "payment-saga").await?;
                }
            }
            Op::StrayExpire { pick } => {
                // Any reservation ever placed, kept in memory or not.
                let mut any: Vec<ReservationId> = self.full.reservations.keys().copied().collect();
                any.sort();
                if let Some(id) = choose(&any, pick) {
                    self.send(Command::Expire { reservation_id: id }, "timer")
                        .await?;
                }
            }
            Op::Refund { pick } => {
                let confirmed = self
                    .reservations(|r| r.status == ReservationStatus::Confirmed)
                    .await?;
                if let Some(id) = choose(&confirmed, pick) {
                    self.send(Command::Refund { reservation_id: id }, "support")
                        .await?;
                }
            }
            Op::JoinWaitlist {
                user,
                quantity,
                floor,
            } => {
                let command = Command::JoinWaitlist {
                    entry_id: EntryId(self.fresh()),
                    user_id: self.users[user],
                    quantity,
                    section: floor.then(|| "floor".into()),
                };
                self.send(command, "buyer").await?;
            }
            Op::LeaveWaitlist { pick } => {
                let mut open = self
                    .engine
                    .query(self.show, |s| {
                        s.waitlist
                            .entries
                            .iter()
                            .filter(|e| e.is_open())
                            .map(|e| e.entry_id)
                            .collect::<Vec<_>>()
                    })
                    .await
                    .map_err(|e| format!("query failed: {e}"))?;
                open.sort();
                if let Some(entry_id) = choose(&open, pick) {
                    self.send(Command::LeaveWaitlist { entry_id }, "buyer")
                        .await?;
                }
            }
            Op::Block { seat } => {
                let command = Command::BlockSeats {
                    seats: vec![seat_name(seat)],
                    reason: "sim".into(),
                };
                self.send(command, "organizer").await?;
            }
            Op::Unblock { seat } => {
                let command = Command::UnblockSeats {
                    seats: vec![seat_name(seat)],
                };
                self.send(command, "organizer").await?;
            }
            Op::ChangePrice { tier_a, price } => {
                let command = Command::Show(ShowCommand::ChangeTierPrice {
                    tier_id: if tier_a { "A" } else { "B" }.into(),
                    price: boxoffice_domain::money::Minor(price),
                });
                self.send(command, "organizer").await?;
            }
            Op::ClockJump { seconds } => {
                self.clock.advance(Duration::seconds(seconds));
                // The actor looks at its timers now (its own sleep would too, later).
                self.engine
                    .tick(self.show)
                    .await
                    .map_err(|e| format!("tick failed: {e}"))?;
            }
            Op::CrashRestart => self.crash_restart().await?,
        }
        Ok(())
    }

    /// What the saga does next for one payment in flight, given what the provider did.
    async fn saga_pass(
        &mut self,
        reservation: ReservationId,
        duplicate: bool,
    ) -> Result<(), String> {
        let r = self
            .engine
            .reservation(self.show, reservation)
            .await
            .map_err(|e| format!("query failed: {e}"))?
            .ok_or("a reservation in payment vanished")?;
        let Some(payment) = r.payment.clone() else {
            return Err(format!("{reservation} is paying without a payment"));
        };
        let fate = *self
            .fates
            .get(&payment.payment_id)
            .ok_or_else(|| format!("{} has no fate", payment.payment_id))?;
        let now = self.clock.now();
        let capture = Command::CapturePayment {
            reservation_id: reservation,
            payment_id: payment.payment_id,
            amount: r.total,
            provider_ref: Some(format!("pi_{}", payment.payment_id.0.simple())),
        };
        let command = match (payment.status, fate) {
            (PaymentStatus::Captured, _) => {
                let order_id = OrderId(self.fresh());
                let places: Vec<(Option<String>, Option<String>)> = match &r.items {
                    Items::Seats(seats) => seats.iter().map(|s| (Some(s.clone()), None)).collect(),
                    Items::General { section, quantity } => (0..*quantity)
                        .map(|_| (None, Some(section.clone())))
                        .collect(),
                };
                let tickets = places
                    .into_iter()
                    .map(|(seat, section)| Ticket {
                        ticket_id: TicketId(self.fresh()),
                        seat,
                        section,
                        code: format!("T{}", self.next_id),
                    })
                    .collect();
                Command::IssueTickets {
                    reservation_id: reservation,
                    order_id,
                    tickets,
                }
            }
            (_, Fate::Captured) => capture,
            (_, Fate::Declined) => Command::FailPayment {
                reservation_id: reservation,
                payment_id: payment.payment_id,
                reason: "card_declined".into(),
            },
            (_, Fate::Unanswered | Fate::CapturedAfterTimeout) if now < payment.deadline => {
                self.trace
                    .push("  -> provider has not answered; wait".into());
                return Ok(());
            }
            (_, Fate::Unanswered) => Command::TimeOutPayment {
                reservation_id: reservation,
                payment_id: payment.payment_id,
            },
            (_, Fate::CapturedAfterTimeout) => capture,
        };
        let issued = matches!(command, Command::IssueTickets { .. });
        let first = self.payment_command(command.clone()).await?;
        if first && issued {
            self.stats.tickets_issued += 1;
        }
        if duplicate {
            self.trace.push("  duplicate delivery".into());
            self.payment_command(command).await?;
        }
        Ok(())
    }

    /// The engine goes away; a new one on a newly opened store must find the same state.
    async fn crash_restart(&mut self) -> Result<(), String> {
        let before = self.state().await?;
        self.engine.shutdown().await;
        self.stats.restarts += 1;
        self.store = open(&self.url).await;
        self.engine = Self::engine(&self.store, &self.clock, &self.ids, self.closed_kept);
        self.engine
            .load_all()
            .await
            .map_err(|e| format!("the new engine cannot load the log: {e}"))?;
        let after = self.state().await?;
        if before != after {
            return Err(
                "the restarted engine's state differs from the one before the crash".into(),
            );
        }
        Ok(())
    }

    /// The rules, over the whole log, and the engine against a replay.
    async fn check(&mut self) -> Result<(), String> {
        let after = self.log.last().map_or(0, |e| e.position);
        let page = self
            .store
            .read_partition(&self.show.to_string(), after, 100_000)
            .await
            .map_err(|e| format!("reading the log failed: {e}"))?;
        self.log.extend(page);
        let (_, replayed) = check_log(self.show, &self.log)?;
        check_payments(&self.log, None)?;
        let live = self.state().await?;
        self.full = replayed.clone();
        // The engine forgets all but the last closed reservations; a replay forgetting
        // the same must equal it.
        let mut replayed = replayed;
        replayed.evict_closed(self.closed_kept, u64::MAX);
        if live != replayed {
            return Err(format!(
                "the engine's state differs from a replay of the log ({} events)",
                self.log.len()
            ));
        }
        Ok(())
    }

    /// Every deadline passes and the saga answers every payment; then nothing may be in
    /// flight, captured without tickets, or held past its deadline.
    async fn settle(&mut self) -> Result<(), String> {
        self.trace.push("settle".into());
        for _ in 0..20 {
            self.clock.advance(Duration::seconds(i64::from(
                HOLD_TTL_SECONDS + PAYMENT_TIMEOUT_SECONDS + WAITLIST_CLAIM_SECONDS,
            )));
            self.engine
                .tick(self.show)
                .await
                .map_err(|e| format!("tick failed: {e}"))?;
            let mut open = self
                .reservations(|r| r.status == ReservationStatus::PaymentPending)
                .await?;
            if open.is_empty() {
                break;
            }
            while let Some(id) = open.pop() {
                // A pass per step of the payment: capture, then tickets.
                for _ in 0..2 {
                    self.saga_pass(id, false).await?;
                }
            }
            self.check().await?;
        }
        self.engine
            .tick(self.show)
            .await
            .map_err(|e| format!("tick failed: {e}"))?;
        self.check().await?;
        check_payments(&self.log, Some(self.clock.now()))?;
        Ok(())
    }
}

/// A short readable form of a command for the trace.
fn describe(command: &Command) -> String {
    let text = format!("{command:?}");
    if text.len() > 160 {
        format!("{}…", &text[..160])
    } else {
        text
    }
}

/// Runs one seed on the store at `url` (which must be fresh and empty).
pub async fn run_seed(seed: u64, url: String, config: SimConfig) -> Result<SimStats, SimFailure> {
    let fail = |step: usize, message: String, trace: &[String]| SimFailure {
        seed,
        steps: config.steps,
        step,
        message,
        trace: trace[trace.len().saturating_sub(TRACE_TAIL)..].to_vec(),
    };
    let mut world = World::start(seed, url).await.map_err(|m| fail(0, m, &[]))?;
    let mut rng = StdRng::seed_from_u64(seed);
    for step in 1..=config.steps {
        let op = draw_op(&mut rng);
        world.trace.push(format!("step {step}: {op:?}"));
        let result = match world.apply(op).await {
            Ok(()) => world.check().await,
            Err(e) => Err(e),
        };
        if let Err(message) = result {
            return Err(fail(step, message, &world.trace));
        }
        world.stats.steps += 1;
    }
    if let Err(message) = world.settle().await {
        return Err(fail(config.steps + 1, message, &world.trace));
    }
    world.stats.events = world.log.len();
    world.engine.shutdown().await;
    Ok(world.stats)
}

/// A fresh SQLite store for one seed, on a RAM-backed directory where there is one.
pub fn sim_sqlite_url(seed: u64) -> String {
    let base = std::path::Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "boxoffice-sim-{}-{seed}-{}",
        std::process::id(),
        Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("a directory for the simulation's store");
    format!("sqlite://{}", dir.join("events.db").display())
}

/// Removes what [`sim_sqlite_url`] made.
pub fn remove_sqlite(url: &str) {
    if let Some(path) = url.strip_prefix("sqlite://")
        && let Some(dir) = std::path::Path::new(path).parent()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs `seeds` on SQLite, `parallel` at a time; returns the summed stats or the
/// failure of the lowest failing seed.
pub async fn run_seeds(
    seeds: impl IntoIterator<Item = u64>,
    config: SimConfig,
    parallel: usize,
) -> Result<SimStats, SimFailure> {
    use futures::StreamExt;
    let results: Vec<Result<SimStats, SimFailure>> = futures::stream::iter(seeds)
        .map(|seed| async move {
            let url = sim_sqlite_url(seed);
            // Each seed on a runtime of its own thread: seeds run in parallel, a panic
            // stays with its seed, and the run need not be `Send`.
            let thread_url = url.clone();
            let result = tokio::task::spawn_blocking(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for one seed")
                    .block_on(run_seed(seed, thread_url, config))
            })
            .await
            .unwrap_or_else(|panic| {
                Err(SimFailure {
                    seed,
                    steps: config.steps,
                    step: 0,
                    message: format!("panicked: {panic}"),
                    trace: Vec::new(),
                })
            });
            remove_sqlite(&url);
            result
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut total = SimStats::default();
    let mut first: Option<SimFailure> = None;
    for result in results {
        match result {
            Ok(stats) => total.add(&stats),
            Err(f) if first.as_ref().is_none_or(|g| f.seed < g.seed) => first = Some(f),
            Err(_) => {}
        }
    }
    match first {
        Some(f) => Err(f),
        None => Ok(total),
    }
}
