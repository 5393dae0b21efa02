//! A show's whole partition as one decision-making state: the show, its seats, GA pools,
//! reservations and waitlist. Commands that span aggregates (a hold writes seat streams
//! and a reservation stream together; a release offers seats to the waitlist in the same
//! append) are decided here by asking each aggregate's `decide`, and every event is
//! applied through each aggregate's `apply`. Pure: time and ids come in with the command.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};

use crate::event::DomainEvent;
use crate::ids::{EntryId, OrderId, PaymentId, ReservationId, ShowId, UserId};
use crate::money::Minor;
use crate::policy::{self, CapExceeded};
use crate::pool::{self, PoolCommand, PoolError, PoolEvent, PoolState};
use crate::reservation::{
    self, Items, Origin, Reservation, ReservationCommand, ReservationError, ReservationEvent,
    ReservationStatus, Ticket,
};
use crate::seat::{self, ReleaseReason, SeatCommand, SeatState};
use crate::show::{
    FieldError, SectionLayout, Show, ShowCommand, ShowDefinition, ShowError, ShowEvent, ShowStatus,
};
use crate::waitlist::{
    self, EntryStatus, WaitlistCommand, WaitlistError, WaitlistEvent, WaitlistState,
};

/// Seats one block or unblock request may name.
pub const SEATS_PER_BLOCK_MAX: usize = 1_000;

/// What a hold asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Exactly these seats, all or nothing.
    Seats(Vec<String>),
    /// Places in a general-admission section.
    General { section: String, quantity: u32 },
    /// The best adjacent seats in one row of a seated section.
    BestAvailable { section: String, quantity: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    /// The id the reservation gets if this hold is new.
    pub reservation_id: ReservationId,
    pub user_id: UserId,
    pub idempotency_key: Option<String>,
    pub selection: Selection,
}

/// Most holds one show cancellation ends in its own decision (each with up to ten seat
/// releases); the rest are cancelled in the engine's following batches.
pub const SHOW_CANCEL_HOLDS_PER_DECISION: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(ShowCommand),
    /// Changes any of a show's name, start and sales window at once, all or nothing,
    /// if the show is still at `expected_version` (when given).
    UpdateShow(ShowUpdate),
    Hold(HoldRequest),
    Cancel {
        reservation_id: ReservationId,
        by: String,
    },
    Expire {
        reservation_id: ReservationId,
    },
    StartPayment {
        reservation_id: ReservationId,
        payment_id: PaymentId,
        payment_token: Option<String>,
    },
    CapturePayment {
        reservation_id: ReservationId,
        payment_id: PaymentId,
        amount: Minor,
        provider_ref: Option<String>,
    },
    FailPayment {
        reservation_id: ReservationId,
        payment_id: PaymentId,
        reason: String,
    },
    TimeOutPayment {
        reservation_id: ReservationId,
        payment_id: PaymentId,
    },
    IssueTickets {
        reservation_id: ReservationId,
        order_id: OrderId,
        tickets: Vec<Ticket>,
    },
    Refund {
        reservation_id: ReservationId,
    },
    BlockSeats {
        seats: Vec<String>,
        reason: String,
    },
    UnblockSeats {
        seats: Vec<String>,
    },
    JoinWaitlist {
        entry_id: EntryId,
        user_id: UserId,
        quantity: u32,
        section: Option<String>,
    },
    LeaveWaitlist {
        entry_id: EntryId,
    },
    /// Offers whatever is on sale to waiting entries that fit. The engine sends it when
    /// sales open by the clock (`sales_open_at` passing) and after a load, since seats
    /// freed while sales were closed were not offered then (rule 5).
    OfferToWaitlist,
}

impl Command {
    /// The existing reservation the command is about (`Hold` places a new one: `None`).
    pub fn reservation_id(&self) -> Option<ReservationId> {
        match self {
            Command::Cancel { reservation_id, .. }
            | Command::Expire { reservation_id }
            | Command::StartPayment { reservation_id, .. }
            | Command::CapturePayment { reservation_id, .. }
            | Command::FailPayment { reservation_id, .. }
            | Command::TimeOutPayment { reservation_id, .. }
            | Command::IssueTickets { reservation_id, .. }
            | Command::Refund { reservation_id } => Some(*reservation_id),
            Command::Show(_)
            | Command::UpdateShow(_)
            | Command::Hold(_)
            | Command::BlockSeats { .. }
            | Command::UnblockSeats { .. }
            | Command::JoinWaitlist { .. }
            | Command::LeaveWaitlist { .. }
            | Command::OfferToWaitlist => None,
        }
    }
}

/// The fields of a show an organizer may change after scheduling it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShowUpdate {
    pub expected_version: Option<u64>,
    pub name: Option<String>,
    pub starts_at: Option<DateTime<Utc>>,
    /// The whole new window (`None` members: open from now / until the show starts).
    pub sales_window: Option<SalesWindow>,
}

/// When sales open and close; `None`: from scheduling / until the show starts.
pub type SalesWindow = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Every way a command can be refused. Closed, so a test can assert the exact rejection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookingError {
    #[error("the show does not exist")]
    ShowNotFound,
    #[error("the show already exists")]
    ShowAlreadyExists,
    #[error("the show is cancelled")]
    ShowCancelled,
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("sales are closed")]
    SalesClosed,
    #[error("seats are unavailable: {seats:?}")]
    SeatsUnavailable { seats: Vec<String> },
    #[error("sold out: {available} left")]
    SoldOut { available: u32 },
    #[error("ticket limit of {limit} exceeded (has {current}, asked for {requested})")]
    TicketLimitExceeded {
        limit: u32,
        current: u32,
        requested: u32,
    },
    #[error("at most {limit} active holds per user")]
    TooManyActiveHolds { limit: u32 },
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    #[error("the reservation does not exist")]
    ReservationNotFound,
    #[error("the reservation is not held")]
    ReservationNotHeld,
    #[error("the hold has expired")]
    HoldExpired,
    #[error("the hold is not due to expire")]
    NotDue,
    #[error("payment: {0}")]
    Payment(ReservationError),
    #[error("the waitlist entry does not exist")]
    WaitlistEntryNotFound,
    #[error("the user is already on the waitlist")]
    AlreadyWaiting,
    #[error("seats are available now; hold them instead")]
    SeatsAvailable,
    #[error("the waitlist entry is closed")]
    WaitlistEntryClosed,
    #[error("the show is at version {current}, not the one expected")]
    VersionMismatch { current: u64 },
}

impl From<CapExceeded> for BookingError {
    fn from(c: CapExceeded) -> Self {
        BookingError::TicketLimitExceeded {
            limit: c.limit,
            current: c.current,
            requested: c.requested,
        }
    }
}

impl From<ShowError> for BookingError {
    fn from(e: ShowError) -> Self {
        match e {
            ShowError::AlreadyScheduled => BookingError::ShowAlreadyExists,
            ShowError::NotScheduled => BookingError::ShowNotFound,
            ShowError::Cancelled => BookingError::ShowCancelled,
            ShowError::Invalid(errors) => BookingError::Invalid(errors),
        }
    }
}

impl From<ReservationError> for BookingError {
    fn from(e: ReservationError) -> Self {
        match e {
            ReservationError::NotHeld => BookingError::ReservationNotHeld,
            ReservationError::HoldExpired => BookingError::HoldExpired,
            ReservationError::NotDue => BookingError::NotDue,
            other => BookingError::Payment(other),
        }
    }
}

impl From<WaitlistError> for BookingError {
    fn from(e: WaitlistError) -> Self {
        match e {
            WaitlistError::EntryNotFound => BookingError::WaitlistEntryNotFound,
            WaitlistError::AlreadyWaiting => BookingError::AlreadyWaiting,
            WaitlistError::NotWaiting | WaitlistError::NoOpenOffer | WaitlistError::Closed => {
                BookingError::WaitlistEntryClosed
            }
        }
    }
}

/// One seat of the layout with its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatSlot {
    pub id: String,
    pub section: usize,
    pub tier: usize,
    pub state: SeatState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowIndex {
    pub label: String,
    /// Indexes into `ShowState::seats`, in seat-number order.
    pub seats: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionIndex {
    Seated { id: String, rows: Vec<RowIndex> },
    General { id: String, tier: usize },
}

impl SectionIndex {
    pub fn id(&self) -> &str {
        match self {
            SectionIndex::Seated { id, .. } | SectionIndex::General { id, .. } => id,
        }
    }
}

/// The whole state of one show's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowState {
    pub show_id: ShowId,
    pub show: Option<Show>,
    pub seats: Vec<SeatSlot>,
    seat_index: HashMap<String, u32>,
    pub sections: Vec<SectionIndex>,
    pub pools: BTreeMap<String, PoolState>,
    pub reservations: HashMap<ReservationId, Reservation>,
    pub waitlist: WaitlistState,
    idempotency: HashMap<(UserId, String), ReservationId>,
    /// Seats or places each user has held, being paid for or bought.
    user_tickets: HashMap<UserId, u32>,
    /// Reservations each user has held or being paid for.
    user_active: HashMap<UserId, u32>,
    /// Held reservations by expiry, for the timers (rule 4).
    hold_deadlines: BTreeSet<(DateTime<Utc>, ReservationId)>,
    seats_available: u32,
    /// Closed reservations still kept, in the order they closed, each with its number
    /// among all closes (see [`ShowState::evict_closed`]).
    closed: VecDeque<(u64, ReservationId)>,
    /// How many reservations have closed, kept or not.
    closes: u64,
}

/// Seats and places freed or taken by the events decided so far in one command, so
/// that waitlist offers see the state those events will leave behind.
struct Pending<'a> {
    state: &'a ShowState,
    freed: HashSet<u32>,
    taken: HashSet<u32>,
    pool_delta: HashMap<String, i64>,
    user_delta: HashMap<UserId, i64>,
}

impl<'a> Pending<'a> {
    fn new(state: &'a ShowState) -> Self {
        Self {
            state,
            freed: HashSet::new(),
            taken: HashSet::new(),
            pool_delta: HashMap::new(),
            user_delta: HashMap::new(),
        }
    }

    fn seat_free(&self, idx: u32) -> bool {
        !self.taken.contains(&idx)
            && (self.freed.contains(&idx) || self.state.seats[idx as usize].state.is_available())
    }

    fn pool_available(&self, section: &str) -> i64 {
        let base = self
            .state
            .pools
            .get(section)
            .map_or(0, |p| i64::from(p.available()));
        base + self.pool_delta.get(section).copied().unwrap_or(0)
    }

    fn user_tickets(&self, user: UserId) -> u32 {
        let base = i64::from(self.state.tickets_of(user));
        (base + self.user_delta.get(&user).copied().unwrap_or(0)) as u32
    }

    fn release(&mut self, r: &Reservation) {
        match &r.items {
            Items::Seats(seats) => {
                for s in seats {
                    let idx = self.state.seat_index[s.as_str()];
                    self.taken.remove(&idx);
                    self.freed.insert(idx);
                }
            }
            Items::General { section, quantity } => {
                *self.pool_delta.entry(section.clone()).or_default() += i64::from(*quantity);
            }
        }
        *self.user_delta.entry(r.user_id).or_default() -= i64::from(r.items.quantity());
    }
}

/// Seats or places picked for a request.
enum Allocation {
    Seats(Vec<u32>),
    General { section: String, quantity: u32 },
}

impl ShowState {
    pub fn new(show_id: ShowId) -> Self {
        Self {
            show_id,
            show: None,
            seats: Vec::new(),
            seat_index: HashMap::new(),
            sections: Vec::new(),
            pools: BTreeMap::new(),
            reservations: HashMap::new(),
            waitlist: WaitlistState::default(),
            idempotency: HashMap::new(),
            user_tickets: HashMap::new(),
            user_active: HashMap::new(),
            hold_deadlines: BTreeSet::new(),
            seats_available: 0,
            closed: VecDeque::new(),
            closes: 0,
        }
    }

    /// Builds the state from a partition's events, in order.
    pub fn replay<'e>(show_id: ShowId, events: impl IntoIterator<Item = &'e DomainEvent>) -> Self {
        let mut state = Self::new(show_id);
        for e in events {
            state.apply(e);
        }
        state
    }

    pub fn definition(&self) -> Option<&ShowDefinition> {
        self.show.as_ref().map(|s| &s.definition)
    }

    pub fn seat(&self, seat_id: &str) -> Option<&SeatSlot> {
        self.seat_index
            .get(seat_id)
            .map(|&i| &self.seats[i as usize])
    }

    pub fn reservation(&self, id: ReservationId) -> Option<&Reservation> {
        self.reservations.get(&id)
    }

    pub fn tickets_of(&self, user: UserId) -> u32 {
        self.user_tickets.get(&user).copied().unwrap_or(0)
    }

    pub fn active_holds_of(&self, user: UserId) -> u32 {
        self.user_active.get(&user).copied().unwrap_or(0)
    }

    /// The reservation an earlier hold with this user's idempotency key created.
    pub fn reservation_for_key(&self, user: UserId, key: &str) -> Option<ReservationId> {
        self.idempotency.get(&(user, key.to_string())).copied()
    }

    /// How many reservations have closed so far (the number the next close gets).
    pub fn closes(&self) -> u64 {
        self.closes
    }

    /// Forgets the oldest closed reservations, so that at most `keep` stay, taking only
    /// those among the first `before` closes (a writer passes the closes it has
    /// committed). Returns the ids forgotten.
    ///
    /// A closed reservation takes no command again: every one about it is refused, the
    /// same way whatever else happens, and [`refusal_for_closed`] gives that refusal from
    /// the reservation read back from its stream. So the write side can keep only its
    /// open and its `keep` most recently closed reservations in memory and stay flat over
    /// a long on-sale. What changes: a hold repeating an idempotency key of a forgotten
    /// reservation is a new hold (the API's own key store answers repeats first, for 24
    /// hours). The result does not depend on when this is called: it always keeps the
    /// last `keep` of the closes it may take.
    pub fn evict_closed(&mut self, keep: usize, before: u64) -> Vec<ReservationId> {
        let mut evicted = Vec::new();
        while self.closed.len() > keep {
            let Some(&(number, id)) = self.closed.front() else {
                break;
            };
            if number >= before {
                break;
            }
            self.closed.pop_front();
            if let Some(r) = self.reservations.remove(&id)
                && let Some(key) = r.idempotency_key
            {
                let key = (r.user_id, key);
                if self.idempotency.get(&key) == Some(&id) {
                    self.idempotency.remove(&key);
                }
            }
            evicted.push(id);
        }
        evicted
    }

    pub fn seats_available(&self) -> u32 {
        self.seats_available
    }

    pub fn anything_available(&self) -> bool {
        self.seats_available > 0 || self.pools.values().any(|p| p.available() > 0)
    }

    pub fn status(&self, now: DateTime<Utc>) -> Option<ShowStatus> {
        self.show
            .as_ref()
            .map(|s| s.status(now, self.anything_available()))
    }

    /// When sales open by the clock with entries waiting: the moment the engine must
    /// send [`Command::OfferToWaitlist`].
    pub fn next_sales_opening(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let show = self.show.as_ref()?;
        let open_at = show.definition.sales_open_at?;
        (open_at > now && !show.cancelled && self.waitlist.waiting_count() > 0).then_some(open_at)
    }

    /// The earliest expiry among held reservations.
    pub fn next_hold_deadline(&self) -> Option<DateTime<Utc>> {
        self.hold_deadlines.first().map(|(at, _)| *at)
    }

    /// Held reservations whose time is up at `now`, earliest first.
    /// Whether a cancelled show still has open holds (the engine cancels them next).
    pub fn cancelled_show_has_holds(&self) -> bool {
        self.show.as_ref().is_some_and(|s| s.cancelled)
            && self
                .reservations
                .values()
                .any(|r| r.status == ReservationStatus::Held)
    }

    /// Holds still open on a cancelled show (more than one decision cancels at once):
    /// the engine cancels them next, in order of id.
    pub fn holds_of_cancelled_show(&self) -> Vec<ReservationId> {
        if !self.cancelled_show_has_holds() {
            return Vec::new();
        }
        let mut held: Vec<ReservationId> = self
            .reservations
            .values()
            .filter(|r| r.status == ReservationStatus::Held)
            .map(|r| r.reservation_id)
            .collect();
        held.sort();
        held
    }

    pub fn due_holds(&self, now: DateTime<Utc>) -> impl Iterator<Item = ReservationId> + '_ {
        self.hold_deadlines
            .iter()
            .take_while(move |(at, _)| *at <= now)
            .map(|(_, id)| *id)
    }

    fn show_or_err(&self) -> Result<&Show, BookingError> {
        self.show.as_ref().ok_or(BookingError::ShowNotFound)
    }

    fn reservation_or_err(&self, id: ReservationId) -> Result<&Reservation, BookingError> {
        self.reservations
            .get(&id)
            .ok_or(BookingError::ReservationNotFound)
    }

    fn section(&self, id: &str) -> Option<&SectionIndex> {
        self.sections.iter().find(|s| s.id() == id)
    }

    fn tier_price(&self, tier: usize) -> Minor {
        self.definition().expect("show exists").price_tiers[tier].price
    }

    /// Decides a command at `now`: the events to append, in order, or why not. An
    /// idempotent repeat decides no events.
    pub fn decide(
        &self,
        command: Command,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainEvent>, BookingError> {
        match command {
            Command::Show(ShowCommand::Cancel { reason }) => self.decide_cancel_show(reason),
            Command::Show(c) => {
                Ok(self.with_reopening_offers(vec![Show::decide(self.show.as_ref(), c)?], now))
            }
            Command::UpdateShow(update) => self.decide_update_show(update, now),
            Command::Hold(request) => self.decide_hold(request, now),
            Command::Cancel { reservation_id, by } => {
                self.show_or_err()?;
                let r = self.reservation_or_err(reservation_id)?;
                let event = reservation::decide(r, ReservationCommand::Cancel { by }, now)?;
                self.close_with_release(r, event, ReleaseReason::Cancelled, now)
            }
            Command::Expire { reservation_id } => {
                let r = self.reservation_or_err(reservation_id)?;
                let event = reservation::decide(r, ReservationCommand::Expire, now)?;
                self.close_with_release(r, event, ReleaseReason::Expired, now)
            }
            Command::StartPayment {
                reservation_id,
                payment_id,
                payment_token,
            } => {
                let show = self.show_or_err()?;
                let r = self.reservation_or_err(reservation_id)?;
                let deadline = policy::payment_deadline(&show.definition.limits, now);
                let event = reservation::decide(
                    r,
                    ReservationCommand::StartPayment {
                        payment_id,
                        deadline,
                        payment_token,
                    },
                    now,
                )?;
                let mut events = vec![DomainEvent::Reservation(event)];
                if let (Origin::Waitlist, Some(entry_id)) = (r.origin, r.entry_id) {
                    let claim = waitlist::decide(
                        &self.waitlist,
                        WaitlistCommand::Claim {
                            entry_id,
                            reservation_id,
                        },
                    )?;
                    events.push(DomainEvent::Waitlist(claim));
                }
                Ok(events)
            }
            Command::CapturePayment {
                reservation_id,
                payment_id,
                amount,
                provider_ref,
            } => {
                let r = self.reservation_or_err(reservation_id)?;
                let event = reservation::decide(
                    r,
                    ReservationCommand::CapturePayment {
                        payment_id,
                        amount,
                        provider_ref,
                    },
                    now,
                )?;
                Ok(vec![DomainEvent::Reservation(event)])
            }
            Command::FailPayment {
                reservation_id,
                payment_id,
                reason,
            } => {
                let r = self.reservation_or_err(reservation_id)?;
                let event = reservation::decide(
                    r,
                    ReservationCommand::FailPayment { payment_id, reason },
                    now,
                )?;
                self.close_with_release(r, event, ReleaseReason::PaymentFailed, now)
            }
            Command::TimeOutPayment {
                reservation_id,
                payment_id,
            } => {
                let r = self.reservation_or_err(reservation_id)?;
                let event =
                    reservation::decide(r, ReservationCommand::TimeOutPayment { payment_id }, now)?;
                self.close_with_release(r, event, ReleaseReason::PaymentTimedOut, now)
            }
            Command::IssueTickets {
                reservation_id,
                order_id,
                tickets,
            } => self.decide_issue(reservation_id, order_id, tickets, now),
            Command::Refund { reservation_id } => {
                let r = self.reservation_or_err(reservation_id)?;
                let event =
                    reservation::decide(r, ReservationCommand::Refund { amount: r.total }, now)?;
                self.close_with_release(r, event, ReleaseReason::Refunded, now)
            }
            Command::BlockSeats { seats, reason } => self.decide_block(seats, reason),
            Command::UnblockSeats { seats } => self.decide_unblock(seats, now),
            Command::JoinWaitlist {
                entry_id,
                user_id,
                quantity,
                section,
            } => self.decide_join(entry_id, user_id, quantity, section, now),
            Command::LeaveWaitlist { entry_id } => self.decide_leave(entry_id, now),
            Command::OfferToWaitlist => {
                self.show_or_err()?;
                Ok(self.offer_to_waitlist(&mut Pending::new(self), now, &[]))
            }
        }
    }

    fn validate_selection(&self, selection: &Selection) -> Result<(), BookingError> {
        let mut errors = Vec::new();
        match selection {
            Selection::Seats(seats) => {
                if seats.is_empty() {
                    errors.push(FieldError::new("seats", "must name at least one seat"));
                }
                if seats.len() > policy::SEATS_PER_HOLD_MAX as usize {
                    errors.push(FieldError::new(
                        "seats",
                        format!("at most {} seats per hold", policy::SEATS_PER_HOLD_MAX),
                    ));
                }
                let mut seen = HashSet::new();
                for (i, s) in seats.iter().enumerate() {
                    if !self.seat_index.contains_key(s.as_str()) {
                        errors.push(FieldError::new(
                            format!("seats[{i}]"),
                            format!("unknown seat {s}"),
                        ));
                    } else if !seen.insert(s.as_str()) {
                        errors.push(FieldError::new(
                            format!("seats[{i}]"),
                            format!("duplicate seat {s}"),
                        ));
                    }
                }
            }
            Selection::General { section, quantity }
            | Selection::BestAvailable { section, quantity } => {
                let want_general = matches!(selection, Selection::General { .. });
                match self.section(section) {
                    None => errors.push(FieldError::new(
                        "section",
                        format!("unknown section {section}"),
                    )),
                    Some(SectionIndex::General { .. }) if !want_general => errors.push(
                        FieldError::new("section", "best_available needs a seated section"),
                    ),
                    Some(SectionIndex::Seated { .. }) if want_general => {
                        errors.push(FieldError::new(
                            "section",
                            "a seated section needs seats or best_available",
                        ))
                    }
                    Some(_) => {}
                }
                if !policy::quantity_in_range(*quantity) {
                    errors.push(FieldError::new(
                        "quantity",
                        format!(
                            "must be between {} and {}",
                            policy::SEATS_PER_HOLD_MIN,
                            policy::SEATS_PER_HOLD_MAX
                        ),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BookingError::Invalid(errors))
        }
    }

    /// Whether an earlier reservation answers the same request as `selection`.
    fn same_request(&self, r: &Reservation, selection: &Selection) -> bool {
        match (selection, &r.items) {
            (Selection::Seats(want), Items::Seats(have)) => {
                want.len() == have.len()
                    && want.iter().collect::<HashSet<_>>() == have.iter().collect::<HashSet<_>>()
            }
            (
                Selection::General { section, quantity },
                Items::General {
                    section: s,
                    quantity: q,
                },
            ) => section == s && quantity == q,
            (Selection::BestAvailable { section, quantity }, Items::Seats(have)) => {
                have.len() == *quantity as usize
                    && have.iter().all(|s| {
                        self.seat(s)
                            .is_some_and(|slot| self.sections[slot.section].id() == section)
                    })
            }
            _ => false,
        }
    }

    fn decide_hold(
        &self,
        request: HoldRequest,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainEvent>, BookingError> {
        let show = self.show_or_err()?;
        let HoldRequest {
            reservation_id,
            user_id,
            idempotency_key,
            selection,
        } = request;
        if let Some(key) = &idempotency_key
            && let Some(existing) = self.reservation_for_key(user_id, key)
        {
            let r = &self.reservations[&existing];
            return if self.same_request(r, &selection) {
                Ok(Vec::new())
            } else {
                Err(BookingError::IdempotencyKeyReused)
            };
        }
        assert!(
            !self.reservations.contains_key(&reservation_id),
            "reservation id reused"
        );
        self.validate_selection(&selection)?;
        if !show.sales_open(now) {
            return Err(BookingError::SalesClosed);
        }
        let limits = &show.definition.limits;
        if self.active_holds_of(user_id) >= limits.max_active_holds_per_user {
            return Err(BookingError::TooManyActiveHolds {
                limit: limits.max_active_holds_per_user,
            });
        }
        let quantity = match &selection {
            Selection::Seats(seats) => seats.len() as u32,
            Selection::General { quantity, .. } | Selection::BestAvailable { quantity, .. } => {
                *quantity
            }
        };
        policy::check_ticket_cap(limits, self.tickets_of(user_id), quantity)?;

        let allocation = match selection {
            Selection::Seats(seats) => {
                let unavailable: Vec<String> = seats
                    .iter()
                    .filter(|s| {
                        !self.seats[self.seat_index[s.as_str()] as usize]
                            .state
                            .is_available()
                    })
                    .cloned()
                    .collect();
                if !unavailable.is_empty() {
                    return Err(BookingError::SeatsUnavailable { seats: unavailable });
                }
                Allocation::Seats(seats.iter().map(|s| self.seat_index[s.as_str()]).collect())
            }
            Selection::BestAvailable { section, quantity } => {
                let pending = Pending::new(self);
                match self.best_in_section(&pending, &section, quantity) {
                    Some(seats) => Allocation::Seats(seats),
                    None => return Err(BookingError::SeatsUnavailable { seats: Vec::new() }),
                }
            }
            Selection::General { section, quantity } => {
                let hold = PoolCommand::Hold {
                    reservation_id,
                    quantity,
                };
                match pool::decide(&section, &self.pools[&section], hold) {
                    Ok(_) => Allocation::General { section, quantity },
                    Err(PoolError::SoldOut { available }) => {
                        return Err(BookingError::SoldOut { available });
                    }
                    Err(e) => unreachable!("a new reservation holds nothing yet: {e}"),
                }
            }
        };
        let expires_at = policy::hold_expires_at(limits, now);
        Ok(self.place(
            reservation_id,
            user_id,
            allocation,
            now,
            expires_at,
            Origin::Direct,
            None,
            idempotency_key,
        ))
    }

    /// The events of a new reservation: `ReservationPlaced`, then the seats or places.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        reservation_id: ReservationId,
        user_id: UserId,
        allocation: Allocation,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        origin: Origin,
        entry_id: Option<EntryId>,
        idempotency_key: Option<String>,
    ) -> Vec<DomainEvent> {
        let (seats, section, quantity, total) = match &allocation {
            Allocation::Seats(idxs) => {
                let mut total = Minor(0);
                let mut ids = Vec::with_capacity(idxs.len());
                for &i in idxs {
                    let slot = &self.seats[i as usize];
                    total = total
                        .checked_add(self.tier_price(slot.tier))
                        .expect("total overflow");
                    ids.push(slot.id.clone());
                }
                (ids, None, idxs.len() as u32, total)
            }
            Allocation::General { section, quantity } => {
                let tier = match self.section(section) {
                    Some(SectionIndex::General { tier, .. }) => *tier,
                    _ => unreachable!("validated as a GA section"),
                };
                let total = self
                    .tier_price(tier)
                    .checked_mul(i64::from(*quantity))
                    .expect("total overflow");
                (Vec::new(), Some(section.clone()), *quantity, total)
            }
        };
        let mut events = vec![DomainEvent::Reservation(
            ReservationEvent::ReservationPlaced {
                reservation_id,
                user_id,
                seats: seats.clone(),
                section: section.clone(),
                quantity,
                placed_at: now,
                expires_at,
                total,
                currency: self.definition().expect("show exists").currency.clone(),
                origin,
                entry_id,
                idempotency_key,
            },
        )];
        match allocation {
            Allocation::Seats(idxs) => {
                for i in idxs {
                    let slot = &self.seats[i as usize];
                    // Seats were checked free against the pending view; the seat's own
                    // decide is asked anyway so rule 1 has one owner.
                    let hold = SeatCommand::Hold {
                        reservation_id,
                        until: expires_at,
                    };
                    let event = seat::decide(&slot.id, &SeatState::Available, hold)
                        .expect("a free seat can be held");
                    events.push(DomainEvent::Seat(event));
                }
            }
            Allocation::General { section, quantity } => {
                events.push(DomainEvent::Pool(PoolEvent::PoolSeatsHeld {
                    section,
                    reservation_id,
                    quantity,
                }));
            }
        }
        events
    }

    fn best_in_section(
        &self,
        pending: &Pending<'_>,
        section: &str,
        quantity: u32,
    ) -> Option<Vec<u32>> {
        match self.section(section)? {
            SectionIndex::Seated { rows, .. } => {
                let rows: Vec<&[u32]> = rows.iter().map(|r| r.seats.as_slice()).collect();
                policy::best_available(&rows, quantity as usize, |i| pending.seat_free(i))
            }
            SectionIndex::General { .. } => None,
        }
    }

    /// Where a waitlist request for `quantity` in `section` (any section if `None`) fits.
    fn fit(
        &self,
        pending: &Pending<'_>,
        section: Option<&str>,
        quantity: u32,
    ) -> Option<Allocation> {
        let fit_one = |s: &SectionIndex| match s {
            SectionIndex::Seated { id, .. } => self
                .best_in_section(pending, id, quantity)
                .map(Allocation::Seats),
            SectionIndex::General { id, .. } => (pending.pool_available(id) >= i64::from(quantity))
                .then(|| Allocation::General {
                    section: id.clone(),
                    quantity,
                }),
        };
        match section {
            Some(id) => self.section(id).and_then(fit_one),
            None => self.sections.iter().find_map(fit_one),
        }
    }

    /// The release events for a reservation's seats or places.
    fn release_events(&self, r: &Reservation, reason: ReleaseReason) -> Vec<DomainEvent> {
        let reservation_id = r.reservation_id;
        match &r.items {
            Items::Seats(seats) => seats
                .iter()
                .map(|s| {
                    let state = &self.seats[self.seat_index[s.as_str()] as usize].state;
                    let event = seat::decide(
                        s,
                        state,
                        SeatCommand::Release {
                            reservation_id,
                            reason,
                        },
                    )
                    .expect("a reservation's seats are held or sold by it");
                    DomainEvent::Seat(event)
                })
                .collect(),
            Items::General { section, .. } => {
                let event = pool::decide(
                    section,
                    &self.pools[section],
                    PoolCommand::Release {
                        reservation_id,
                        reason,
                    },
                )
                .expect("a reservation's places are in its pool");
                vec![DomainEvent::Pool(event)]
            }
        }
    }

    /// Closes a reservation with `event`, releases its seats and offers them to the
    /// waitlist, all as one decision (rule 5: nobody can take them in between).
    fn close_with_release(
        &self,
        r: &Reservation,
        event: ReservationEvent,
        reason: ReleaseReason,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainEvent>, BookingError> {
        let mut events = vec![DomainEvent::Reservation(event)];
        // A waitlist offer that ends unclaimed closes its entry, so it is never offered twice.
        if let (Origin::Waitlist, Some(entry_id), ReservationStatus::Held) =
            (r.origin, r.entry_id, r.status)
            && self
                .waitlist
                .entry(entry_id)
                .is_some_and(|e| e.status == EntryStatus::Offered)
        {
            let reservation_id = r.reservation_id;
            let command = if reason == ReleaseReason::Expired {
                WaitlistCommand::ExpireOffer {
                    entry_id,
                    reservation_id,
                }
            } else {
                WaitlistCommand::Leave { entry_id }
            };
            events.push(DomainEvent::Waitlist(waitlist::decide(
                &self.waitlist,
                command,
            )?));
        }
        events.extend(self.release_events(r, reason));
        let mut pending = Pending::new(self);
        pending.release(r);
        events.extend(self.offer_to_waitlist(&mut pending, now, &[]));
        Ok(events)
    }

    /// A show event and, when it opens sales that are closed at `now` (a new sales window,
    /// a later start), offers of what is free to the waitlist in the same decision. Seats
    /// released while sales were closed were not offered then; without this they would go
    /// back on public sale ahead of a waiting entry they fit (rule 5).
    fn with_reopening_offers(
        &self,
        changes: Vec<ShowEvent>,
        now: DateTime<Utc>,
    ) -> Vec<DomainEvent> {
        let was_open = self.show.as_ref().is_some_and(|s| s.sales_open(now));
        let reopens = !was_open && self.waitlist.waiting_count() > 0 && {
            let mut show = self.show.clone();
            for change in &changes {
                Show::apply(&mut show, change);
            }
            show.is_some_and(|s| s.sales_open(now))
        };
        let mut events: Vec<DomainEvent> = changes.into_iter().map(DomainEvent::Show).collect();
        if !reopens {
            return events;
        }
        // Rare (sales reopen while entries wait), so a copy to decide against is fine.
        let mut after = self.clone();
        for event in &events {
            after.apply(event);
        }
        let offers = after.offer_to_waitlist(&mut Pending::new(&after), now, &[]);
        events.extend(offers);
        events
    }

    /// All of an update's changes or none: the show they leave must be valid as a
    /// whole (a later start and a later close of sales may only be valid together).
    fn decide_update_show(
        &self,
        update: ShowUpdate,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainEvent>, BookingError> {
        let show = self.show_or_err()?;
        if show.cancelled {
            return Err(BookingError::ShowCancelled);
        }
        if let Some(expected) = update.expected_version
            && expected != show.version
        {
            return Err(BookingError::VersionMismatch {
                current: show.version,
            });
        }
        let mut definition = show.definition.clone();
        let mut changes = Vec::new();
        if let Some(name) = update.name
            && name != definition.name
        {
            definition.name = name.clone();
            changes.push(ShowEvent::ShowRenamed { name });
        }
        if let Some(starts_at) = update.starts_at
            && starts_at != definition.starts_at
        {
            definition.starts_at = starts_at;
            changes.push(ShowEvent::ShowRescheduled { starts_at });
        }
        if let Some((sales_open_at, sales_close_at)) = update.sales_window
            && (sales_open_at, sales_close_at)
                != (definition.sales_open_at, definition.sales_close_at)
        {
            definition.sales_open_at = sales_open_at;
            definition.sales_close_at = sales_close_at;
            changes.push(ShowEvent::SalesWindowChanged {
                sales_open_at,
                sales_close_at,
            });
        }
        definition.validate().map_err(BookingError::Invalid)?;
        Ok(self.with_reopening_offers(changes, now))
    }

    /// Offers what `pending` freed to waiting entries, first fit in order of joining.
    /// Entries in `skip` are closing in this same decision.
    fn offer_to_waitlist(
        &self,
        pending: &mut Pending<'_>,
        now: DateTime<Utc>,
        skip: &[EntryId],
    ) -> Vec<DomainEvent> {
        let Some(show) = &self.show else {
            return Vec::new();
        };
        if !show.sales_open(now) {
            return Vec::new();
        }
        let limits = show.definition.limits;
        let mut events = Vec::new();
        for entry in self.waitlist.waiting() {
            if skip.contains(&entry.entry_id) {
                continue;
            }
            // A user who reached the cap meanwhile is passed over, not offered over it.
            if policy::check_ticket_cap(
                &limits,
                pending.user_tickets(entry.user_id),
                entry.quantity,
            )
            .is_err()
            {
                continue;
            }
            let Some(allocation) = self.fit(pending, entry.section.as_deref(), entry.quantity)
            else {
                continue;
            };
            // Each entry gets at most one offer ever, so its reservation can take its id.
            let reservation_id = ReservationId(entry.entry_id.0);
            let expires_at = policy::offer_expires_at(&limits, now);
            let (seat_ids, section) = match &allocation {
                Allocation::Seats(idxs) => {
                    for &i in idxs {
                        pending.taken.insert(i);
                    }
                    (
                        idxs.iter()
                            .map(|&i| self.seats[i as usize].id.clone())
                            .collect(),
                        None,
                    )
                }
                Allocation::General { section, quantity } => {
                    *pending.pool_delta.entry(section.clone()).or_default() -= i64::from(*quantity);
                    (Vec::new(), Some(section.clone()))
                }
            };
            *pending.user_delta.entry(entry.user_id).or_default() += i64::from(entry.quantity);
            events.extend(self.place(
                reservation_id,
                entry.user_id,
                allocation,
                now,
                expires_at,
                Origin::Waitlist,
                Some(entry.entry_id),
                None,
            ));
            let offer = WaitlistCommand::Offer {
                entry_id: entry.entry_id,
                reservation_id,
                seats: seat_ids,
                section,
                expires_at,
            };
            events.push(DomainEvent::Waitlist(
                waitlist::decide(&self.waitlist, offer).expect("a waiting entry can be offered"),
            ));
        }
        events
    }

    fn decide_issue(
        &self,
        reservation_id: ReservationId,
        order_id: OrderId,
        tickets: Vec<Ticket>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainEvent>, BookingError> {
        let r = self.reservation_or_err(reservation_id)?;
        let event = reservation::decide(
            r,
            ReservationCommand::IssueTickets { order_id, tickets },
            now,
        )?;
        let mut events = vec![DomainEvent::Reservation(event)];
        match &r.items {
            Items::Seats(seats) => {
                for s in seats {
                    let state = &self.seats[self.seat_index[s.as_str()] as usize].state;
                    let sold = seat::decide(
                        s,
                        state,
                        SeatCommand::Sell {
                            reservation_id,
                            order_id,
                        },
                    )
                    .expect("a paying reservation's seats are held by it");
                    events.push(DomainEvent::Seat(sold));
                }
            }
            Items::General { section, .. } => {
                let sold = pool::decide(
                    section,
                    &self.pools[section],
                    PoolCommand::Sell { reservation_id },
                )
                .expect("a paying reservation's places are held");
                events.push(DomainEvent::Pool(sold));
            }
        }
        Ok(events)
    }

    fn decide_cancel_show(&self, reason: String) -> Result<Vec<DomainEvent>, BookingError> {
        let event = Show::decide(self.show.as_ref(), ShowCommand::Cancel { reason })?;
        let mut events = vec![DomainEvent::Show(event)];
        // Holds end now; payments in flight and paid orders are the payment saga's to
        // settle and refund, since their money is at the provider.
        let mut held: Vec<&Reservation> = self
            .reservations
            .values()
            .filter(|r| r.status == ReservationStatus::Held)
            .collect();
        held.sort_by_key(|r| r.reservation_id);
        // A show with very many holds cancels the first of them here; the rest end in
        // the engine's next batches ([`ShowState::holds_of_cancelled_show`]), so that no
        // single append grows past what one may carry.
        held.truncate(SHOW_CANCEL_HOLDS_PER_DECISION);
        for r in held {
            let by = "system:show-cancelled".to_string();
            events.push(DomainEvent::Reservation(
                ReservationEvent::ReservationCancelled {
                    reservation_id: r.reservation_id,
                    by,
                },
            ));
            if let (Origin::Waitlist, Some(entry_id)) = (r.origin, r.entry_id) {
                events.push(DomainEvent::Waitlist(WaitlistEvent::WaitlistLeft {
                    entry_id,
                }));
            }
            events.extend(self.release_events(r, ReleaseReason::Cancelled));
        }
        Ok(events)
    }

    fn seat_list(&self, seats: &[String]) -> Result<Vec<u32>, BookingError> {
        let mut errors = Vec::new();
        if seats.is_empty() || seats.len() > SEATS_PER_BLOCK_MAX {
            errors.push(FieldError::new(
                "seats",
                format!("must name 1 to {SEATS_PER_BLOCK_MAX} seats"),
            ));
        }
        let mut seen = HashSet::new();
        let mut idxs = Vec::with_capacity(seats.len());
        for (i, s) in seats.iter().enumerate() {
            match self.seat_index.get(s.as_str()) {
                None => errors.push(FieldError::new(
                    format!("seats[{i}]"),
                    format!("unknown seat {s}"),
                )),
                Some(&idx) if !seen.insert(idx) => errors.push(FieldError::new(
                    format!("seats[{i}]"),
                    format!("duplicate seat {s}"),
                )),
                Some(&idx) => idxs.push(idx),
            }
        }
        if errors.is_empty() {
            Ok(idxs)
        } else {
            Err(BookingError::Invalid(errors))
        }
    }

    fn decide_block(
        &self,
        seats: Vec<String>,
        reason: String,
    ) -> Result<Vec<DomainEvent>, BookingError> {
        let show = self.show_or_err()?;
        if show.cancelled {
            return Err(BookingError::ShowCancelled);
        }
        let idxs = self.seat_list(&seats)?;
        let mut events = Vec::with_capacity(idxs.len());
        let mut unavailable = Vec::new();
        for idx in idxs {
            let slot = &self.seats[idx as usize];
            match seat::decide(
                &slot.id,
                &slot.state,
                SeatCommand::Block {
                    reason: reason.clone(),
                },
            ) {
                Ok(e) => events.push(DomainEvent::Seat(e)),
                Err(_) => unavailable.push(slot.id.clone()),
            }
        }
        if unavailable.is_empty() {
            Ok(events)
        } else {
            Err(BookingError::SeatsUnavailable { seats: unavailable })
        }
    }

    fn decide_unblock(
        &self,
        seats: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainEvent>, BookingError> {
        let show = self.show_or_err()?;
        if show.cancelled {
            return Err(BookingError::ShowCancelled);
        }
        let idxs = self.seat_list(&seats)?;
        let mut events = Vec::with_capacity(idxs.len());
        let mut errors = Vec::new();
        let mut pending = Pending::new(self);
        for (i, idx) in idxs.into_iter().enumerate() {
            let slot = &self.seats[idx as usize];
            match seat::decide(&slot.id, &slot.state, SeatCommand::Unblock) {
                Ok(e) => {
                    events.push(DomainEvent::Seat(e));
                    pending.freed.insert(idx);
                }
                Err(_) => errors.push(FieldError::new(
                    format!("seats[{i}]"),
                    format!("seat {} is not blocked", slot.id),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(BookingError::Invalid(errors));
        }
        // Unblocked seats are released seats: the waitlist comes first.
        events.extend(self.offer_to_waitlist(&mut pending, now, &[]));
        Ok(events)
    }

    fn decide_join(
        &self,
        entry_id: EntryId,
        user_id: UserId,
        quantity: u32,
        section: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainEvent>, BookingError> {
        let show = self.show_or_err()?;
        let mut errors = Vec::new();
        if !policy::quantity_in_range(quantity) {
            errors.push(FieldError::new(
                "quantity",
                format!(
                    "must be between {} and {}",
                    policy::SEATS_PER_HOLD_MIN,
                    policy::SEATS_PER_HOLD_MAX
                ),
            ));
        }
        if let Some(s) = &section
            && self.section(s).is_none()
        {
            errors.push(FieldError::new("section", format!("unknown section {s}")));
        }
        if !errors.is_empty() {
            return Err(BookingError::Invalid(errors));
        }
        if !show.sales_open(now) {
            return Err(BookingError::SalesClosed);
        }
        if self.waitlist.open_entry_of(user_id).is_some() {
            return Err(BookingError::AlreadyWaiting);
        }
        policy::check_ticket_cap(&show.definition.limits, self.tickets_of(user_id), quantity)?;
        if self
            .fit(&Pending::new(self), section.as_deref(), quantity)
            .is_some()
        {
            return Err(BookingError::SeatsAvailable);
        }
        let event = waitlist::decide(
            &self.waitlist,
            WaitlistCommand::Join {
                entry_id,
                user_id,
                quantity,
                section,
            },
        )?;
        Ok(vec![DomainEvent::Waitlist(event)])
    }

    fn decide_leave(
        &self,
        entry_id: EntryId,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainEvent>, BookingError> {
        self.show_or_err()?;
        let entry = self
            .waitlist
            .entry(entry_id)
            .ok_or(BookingError::WaitlistEntryNotFound)?;
        let left = waitlist::decide(&self.waitlist, WaitlistCommand::Leave { entry_id })?;
        let mut events = vec![DomainEvent::Waitlist(left)];
        // Leaving with an open offer gives the offered seats back, to the next in line.
        if entry.status == EntryStatus::Offered
            && let Some(offer) = &entry.offer
            && let Some(r) = self.reservations.get(&offer.reservation_id)
            && r.status == ReservationStatus::Held
        {
            let by = format!("{}", entry.user_id);
            events.push(DomainEvent::Reservation(
                ReservationEvent::ReservationCancelled {
                    reservation_id: r.reservation_id,
                    by,
                },
            ));
            events.extend(self.release_events(r, ReleaseReason::Cancelled));
            let mut pending = Pending::new(self);
            pending.release(r);
            events.extend(self.offer_to_waitlist(&mut pending, now, &[entry_id]));
        }
        Ok(events)
    }

    /// Applies one event. Cannot fail: an event that does not fit means the log is
    /// wrong, and the aggregates assert it.
    pub fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::Show(e) => {
                if let ShowEvent::ShowScheduled { definition, .. } = e {
                    self.build_layout(definition);
                }
                Show::apply(&mut self.show, e);
            }
            DomainEvent::Seat(e) => {
                let idx = *self.seat_index.get(e.seat_id()).unwrap_or_else(|| {
                    panic!("{} for unknown seat {}", e.event_type(), e.seat_id())
                });
                let slot = &mut self.seats[idx as usize];
                let was_available = slot.state.is_available();
                seat::apply(&mut slot.state, e);
                match (was_available, slot.state.is_available()) {
                    (true, false) => self.seats_available -= 1,
                    (false, true) => self.seats_available += 1,
                    _ => {}
                }
            }
            DomainEvent::Pool(e) => {
                let pool = self.pools.get_mut(e.section()).unwrap_or_else(|| {
                    panic!("{} for unknown pool {}", e.event_type(), e.section())
                });
                pool::apply(pool, e);
            }
            DomainEvent::Reservation(e) => self.apply_reservation(e),
            DomainEvent::Waitlist(e) => waitlist::apply(&mut self.waitlist, e),
        }
    }

    fn apply_reservation(&mut self, e: &ReservationEvent) {
        if let ReservationEvent::ReservationPlaced { .. } = e {
            let r = reservation::place(e);
            assert!(
                !self.reservations.contains_key(&r.reservation_id),
                "ReservationPlaced twice"
            );
            *self.user_tickets.entry(r.user_id).or_default() += r.items.quantity();
            *self.user_active.entry(r.user_id).or_default() += 1;
            self.hold_deadlines.insert((r.expires_at, r.reservation_id));
            if let Some(key) = &r.idempotency_key {
                self.idempotency
                    .insert((r.user_id, key.clone()), r.reservation_id);
            }
            self.reservations.insert(r.reservation_id, r);
            return;
        }
        let r = self
            .reservations
            .get_mut(&e.reservation_id())
            .unwrap_or_else(|| panic!("{} for unknown reservation", e.event_type()));
        let before = r.status;
        reservation::apply(r, e);
        let after = r.status;
        if before == ReservationStatus::Held && after != ReservationStatus::Held {
            self.hold_deadlines
                .remove(&(r.expires_at, r.reservation_id));
        }
        let active = |s: ReservationStatus| {
            matches!(
                s,
                ReservationStatus::Held | ReservationStatus::PaymentPending
            )
        };
        if active(before) && !active(after) {
            *self.user_active.get_mut(&r.user_id).expect("active count") -= 1;
        }
        if before.has_seats() && !after.has_seats() {
            *self.user_tickets.get_mut(&r.user_id).expect("ticket count") -= r.items.quantity();
        }
        if !before.is_closed() && after.is_closed() {
            self.closed.push_back((self.closes, r.reservation_id));
            self.closes += 1;
        }
    }

    fn build_layout(&mut self, definition: &ShowDefinition) {
        assert!(
            self.seats.is_empty() && self.sections.is_empty(),
            "layout built twice"
        );
        let tier_of = |id: &str| {
            definition
                .price_tiers
                .iter()
                .position(|t| t.id == id)
                .expect("validated tier")
        };
        for (section_idx, section) in definition.sections.iter().enumerate() {
            match &section.layout {
                SectionLayout::Seated { rows } => {
                    let mut row_index = Vec::with_capacity(rows.len());
                    for row in rows {
                        let tier = tier_of(&row.tier);
                        let mut idxs = Vec::with_capacity(row.seats as usize);
                        for number in 1..=row.seats {
                            let id = format!("{}-{}-{}", section.id, row.row, number);
                            let idx = self.seats.len() as u32;
                            self.seat_index.insert(id.clone(), idx);
                            self.seats.push(SeatSlot {
                                id,
                                section: section_idx,
                                tier,
                                state: SeatState::Available,
                            });
                            idxs.push(idx);
                        }
                        row_index.push(RowIndex {
                            label: row.row.clone(),
                            seats: idxs,
                        });
                    }
                    self.sections.push(SectionIndex::Seated {
                        id: section.id.clone(),
                        rows: row_index,
                    });
                }
                SectionLayout::GeneralAdmission { capacity, tier } => {
                    self.pools
                        .insert(section.id.clone(), PoolState::new(*capacity));
                    self.sections.push(SectionIndex::General {
                        id: section.id.clone(),
                        tier: tier_of(tier),
                    });
                }
            }
        }
        self.seats_available = self.seats.len() as u32;
    }

    /// Checks the rules that must hold in any state (rules 1 and 4's bookkeeping); used
    /// by tests and after loading. Returns the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut holders: HashMap<ReservationId, u32> = HashMap::new();
        let mut available = 0;
        for slot in &self.seats {
            match slot.state.reservation() {
                Some(r) => {
                    let res = self
                        .reservations
                        .get(&r)
                        .ok_or_else(|| format!("seat {} held by unknown {r}", slot.id))?;
                    if !res.status.has_seats() {
                        return Err(format!(
                            "seat {} still held by {} reservation {r}",
                            slot.id,
                            format!("{:?}", res.status).to_lowercase()
                        ));
                    }
                    *holders.entry(r).or_default() += 1;
                }
                None if slot.state.is_available() => available += 1,
                None => {}
            }
        }
        if available != self.seats_available {
            return Err(format!(
                "available count {} but {} seats free",
                self.seats_available, available
            ));
        }
        for (section, pool) in &self.pools {
            if pool.held + pool.sold > pool.capacity {
                return Err(format!("pool {section} over capacity"));
            }
        }
        for r in self.reservations.values() {
            if let Items::Seats(seats) = &r.items
                && r.status.has_seats()
            {
                for s in seats {
                    if self.seat(s).and_then(|slot| slot.state.reservation())
                        != Some(r.reservation_id)
                    {
                        return Err(format!("reservation {} lost seat {s}", r.reservation_id));
                    }
                }
            }
            if let Items::Seats(seats) = &r.items
                && !r.status.has_seats()
                && holders.contains_key(&r.reservation_id)
            {
                return Err(format!(
                    "closed reservation {} still holds {seats:?}",
                    r.reservation_id
                ));
            }
        }
        Ok(())
    }
}

/// What [`ShowState::decide`] answers `command` about `r`, a closed reservation the state
/// no longer keeps ([`ShowState::evict_closed`]): the refusal it gave while it kept it.
/// `None` when `r` is not closed or the command is not about a reservation.
///
/// A closed reservation refuses every command at its first check, on its status alone,
/// and the show-level checks before it (the show exists) pass for any reservation's
/// show, so the reservation as its stream tells it is all the answer needs.
pub fn refusal_for_closed(
    r: &Reservation,
    command: &Command,
    now: DateTime<Utc>,
) -> Option<BookingError> {
    if !r.status.is_closed() {
        return None;
    }
    let command = match command.clone() {
        Command::Cancel { by, .. } => ReservationCommand::Cancel { by },
        Command::Expire { .. } => ReservationCommand::Expire,
        Command::StartPayment {
            payment_id,
            payment_token,
            ..
        } => ReservationCommand::StartPayment {
            payment_id,
            // Never reached: the status is checked first.
            deadline: now,
            payment_token,
        },
        Command::CapturePayment {
            payment_id,
            amount,
            provider_ref,
            ..
        } => ReservationCommand::CapturePayment {
            payment_id,
            amount,
            provider_ref,
        },
        Command::FailPayment {
            payment_id, reason, ..
        } => ReservationCommand::FailPayment { payment_id, reason },
        Command::TimeOutPayment { payment_id, .. } => {
            ReservationCommand::TimeOutPayment { payment_id }
        }
        Command::IssueTickets {
            order_id, tickets, ..
        } => ReservationCommand::IssueTickets { order_id, tickets },
        Command::Refund { .. } => ReservationCommand::Refund { amount: r.total },
        _ => return None,
    };
    let refusal = reservation::decide(r, command, now)
        .expect_err("a closed reservation refuses every command");
    Some(refusal.into())
}

#[cfg(test)]
#[path = "booking_tests.rs"]
mod tests;
