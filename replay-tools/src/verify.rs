//! `boxctl verify`: checks a log against the rules of `EVENTS.md`, written from the
//! contract rather than from the domain's bookkeeping, and replays every show through
//! the domain's `apply` and `check_invariants` as well.
//!
//! The log is streamed in pages; per show the verifier keeps the domain state, who holds
//! each seat, each GA pool's use and a small trail per reservation. What is checked:
//!
//! - every event decodes and lies in a stream of its own show;
//! - rule 1: a seat is held or sold by one reservation at a time (and sold, released or
//!   blocked only consistently with that); GA pools stay within capacity;
//! - rule 2: a capture comes with a payment in flight and once; tickets only after a
//!   capture, once, for exactly the reserved seats or quantity; a captured reservation's
//!   seats are released only after a refund; a capture older than the grace without
//!   tickets or refund at verification time;
//! - rule 3: no release, expiry or cancellation while a payment is in flight, and no
//!   release before the reservation was closed;
//! - rule 4: no `HoldExpired` before `expires_at`; no hold still open at verification
//!   time past `expires_at` + the grace;
//! - rule 5: at the end of each append that released seats of a show (recognised as a run
//!   of consecutive events of one partition with one `recorded_at`; two appends of the
//!   same instant merge, which only makes the check more lenient), while sales are open,
//!   no waiting entry under its ticket cap fits what is available (the domain's own
//!   best-available search decides "fits");
//! - rule 6: positions strictly increase; each stream's versions go 1, 2, 3, …;
//! - rule 7 (what a reader can see): no event id appears twice;
//! - replay: `ShowState::apply` never panics, and `check_invariants` holds at the end.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;

use boxoffice_domain::booking::SectionIndex;
use boxoffice_domain::pool::PoolEvent;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::seat::SeatEvent;
use boxoffice_domain::show::{SectionLayout, ShowEvent};
use boxoffice_domain::{DomainEvent, ReservationId, ShowId, ShowState, policy};
use boxoffice_store::RecordedEvent;
use boxoffice_store::chain::{self, ChainKey, ChainVerifier};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// Violations collected before the scan stops: enough to see a pattern, bounded so a
/// badly broken log does not fill memory.
pub const VIOLATIONS_MAX: usize = 100;

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// The moment the log is judged at (rule 4: holds still open past their deadline).
    pub now: DateTime<Utc>,
    /// How late an expiry or a ticket issuance may be before it counts as missing.
    pub grace: Duration,
    /// Stop after this many violations.
    pub violations_max: usize,
    /// The key of the log's hash chain; without it the chain is not checked.
    pub chain_key: Option<ChainKey>,
    /// Partition heads recorded by an earlier verify (`--anchors`): each must still be
    /// in the log with the same link, or the partition was truncated or rewritten.
    pub anchors: HashMap<String, Anchor>,
}

/// A partition's newest event as one verify saw it: kept outside the database, it lets
/// a later verify detect the removal of a partition's newest events, which a hash chain
/// alone cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Anchor {
    pub position: u64,
    /// The event's link, hex.
    pub link: String,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            now: Utc::now(),
            grace: Duration::seconds(5),
            violations_max: VIOLATIONS_MAX,
            chain_key: None,
            anchors: HashMap::new(),
        }
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// `"1"` … `"7"` for the rules of EVENTS.md, `"chain"` (the hash chain does not
    /// hold: an event edited, removed or reordered), `"decode"`, or `"replay"` (the
    /// domain's own apply or invariants refused the log).
    pub rule: &'static str,
    /// The offending event's position (the hold's placement for a missing expiry).
    pub position: u64,
    pub message: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub events: u64,
    pub shows: usize,
    pub streams: usize,
    pub last_position: u64,
    /// Sorted by position.
    pub violations: Vec<Violation>,
    /// The scan stopped at `violations_max` before the end of the log.
    pub truncated: bool,
    /// Events whose hash-chain link was checked (None: no key, the chain was not checked).
    pub chain_checked: Option<u64>,
    /// Each partition's newest event and link, for `--anchors`.
    pub heads: std::collections::BTreeMap<String, Anchor>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// One reservation as the log tells it.
#[derive(Debug, Default)]
struct Trail {
    placed: bool,
    placed_position: u64,
    expires_at: Option<DateTime<Utc>>,
    /// The reserved seats (seated) until tickets are issued; the quantity either way.
    seats: Vec<String>,
    quantity: u32,
    /// Placed and neither paying nor closed: the hold rule 4 is about.
    open_hold: bool,
    in_flight: bool,
    captured: u8,
    captured_at: Option<(u64, DateTime<Utc>)>,
    issued: u8,
    refunded: u8,
    /// Expired, cancelled, failed, voided or refunded: its seats may go.
    closed: bool,
}

struct ShowCheck {
    show_id: Option<ShowId>,
    state: ShowState,
    /// The domain's apply panicked: its state is no longer trusted or fed.
    broken: bool,
    seat_holder: HashMap<String, ReservationId>,
    /// Per GA section: places held or sold, capacity.
    pools: HashMap<String, (i64, i64)>,
    trails: HashMap<ReservationId, Trail>,
    last_position: u64,
}

/// The append being read: (partition, recorded_at, position of a release in it).
struct Batch {
    partition: String,
    recorded_at: DateTime<Utc>,
    release_at: Option<u64>,
}

pub struct Verifier {
    config: VerifyConfig,
    last_position: u64,
    event_ids: HashSet<uuid::Uuid>,
    versions: HashMap<String, u64>,
    shows: HashMap<String, ShowCheck>,
    batch: Option<Batch>,
    events: u64,
    violations: Vec<Violation>,
    seen_positions: HashSet<u64>,
    chain: Option<ChainVerifier>,
    anchors_seen: HashSet<String>,
}

thread_local! {
    /// Set while the domain's apply runs under `catch_unwind`, so its expected panics
    /// are reported as violations and not printed by the panic hook.
    static REPLAYING: Cell<bool> = const { Cell::new(false) };
}

/// Installs a panic hook that stays quiet for panics caught while replaying.
pub fn quiet_replay_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !REPLAYING.with(Cell::get) {
            previous(info);
        }
    }));
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Applies one event to the domain state, catching the panic a rule-breaking event causes.
pub fn apply_caught(state: &mut ShowState, event: &DomainEvent) -> Result<(), String> {
    REPLAYING.with(|r| r.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| state.apply(event)));
    REPLAYING.with(|r| r.set(false));
    result.map_err(|p| panic_message(&*p))
}

impl Verifier {
    pub fn new(config: VerifyConfig) -> Self {
        assert!(config.violations_max > 0, "violations_max must be positive");
        let chain = config.chain_key.clone().map(ChainVerifier::new);
        Self {
            config,
            last_position: 0,
            event_ids: HashSet::new(),
            versions: HashMap::new(),
            shows: HashMap::new(),
            batch: None,
            events: 0,
            violations: Vec::new(),
            seen_positions: HashSet::new(),
            chain,
            anchors_seen: HashSet::new(),
        }
    }

    /// Whether the scan should stop (enough violations found).
    pub fn full(&self) -> bool {
        self.violations.len() >= self.config.violations_max
    }

    fn violation(&mut self, rule: &'static str, position: u64, message: String) {
        // One violation per position is enough: the first rule it breaks.
        if self.full() || !self.seen_positions.insert(position) {
            return;
        }
        self.violations.push(Violation {
            rule,
            position,
            message,
        });
    }

    /// Checks one event; events must come in the order the store returns them.
    pub fn feed(&mut self, e: &RecordedEvent) {
        self.events += 1;
        // First the chain: an event that is not what was appended is reported as such,
        // before whatever rule its changed content may also break.
        if let Some(chain) = &mut self.chain
            && let Err(broken) = chain.check(e)
        {
            self.violation("chain", e.position, broken.to_string());
        }
        if let Some(anchor) = self.config.anchors.get(&e.partition_key)
            && anchor.position == e.position
        {
            self.anchors_seen.insert(e.partition_key.clone());
            if e.chain.as_ref().map(chain::to_hex).as_deref() != Some(anchor.link.as_str()) {
                self.violation(
                    "chain",
                    e.position,
                    format!(
                        "event at position {} of {} is not the one recorded in the anchors",
                        e.position, e.partition_key
                    ),
                );
            }
        }
        // Rule 6: strictly increasing positions.
        if e.position <= self.last_position {
            self.violation(
                "6",
                e.position,
                format!("position {} after {}", e.position, self.last_position),
            );
        }
        self.last_position = self.last_position.max(e.position);
        // Rule 7, as far as a reader can tell: no event stored twice.
        if !self.event_ids.insert(e.metadata.event_id) {
            self.violation(
                "7",
                e.position,
                format!("event id {} appears twice", e.metadata.event_id),
            );
        }
        // Rule 6: versions gap-free from 1.
        let version = self.versions.entry(e.stream_id.clone()).or_default();
        let expected = *version + 1;
        *version = e.version.max(*version);
        if e.version != expected {
            self.violation(
                "6",
                e.position,
                format!(
                    "stream {} at version {} where {expected} was next",
                    e.stream_id, e.version
                ),
            );
        }
        self.track_batch(e);
        let show = self
            .shows
            .entry(e.partition_key.clone())
            .or_insert_with(|| {
                let show_id = e.partition_key.parse::<ShowId>().ok();
                ShowCheck {
                    show_id,
                    state: ShowState::new(show_id.unwrap_or(ShowId(uuid::Uuid::nil()))),
                    broken: false,
                    seat_holder: HashMap::new(),
                    pools: HashMap::new(),
                    trails: HashMap::new(),
                    last_position: 0,
                }
            });
        let mut found = Vec::new();
        let released = feed_show(show, e, &mut found);
        if released && let Some(batch) = &mut self.batch {
            batch.release_at = Some(e.position);
        }
        for (rule, message) in found {
            self.violation(rule, e.position, message);
        }
    }

    /// Closes the current append when `e` starts another one, checking rule 5 for it.
    fn track_batch(&mut self, e: &RecordedEvent) {
        let same = self
            .batch
            .as_ref()
            .is_some_and(|b| b.partition == e.partition_key && b.recorded_at == e.recorded_at);
        if same {
            return;
        }
        self.close_batch();
        self.batch = Some(Batch {
            partition: e.partition_key.clone(),
            recorded_at: e.recorded_at,
            release_at: None,
        });
    }

    fn close_batch(&mut self) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        let Some(position) = batch.release_at else {
            return;
        };
        let Some(show) = self.shows.get(&batch.partition) else {
            return;
        };
        if show.broken {
            return;
        }
        if let Some(message) = unoffered_waiting_entry(&show.state, batch.recorded_at) {
            self.violation("5", position, message);
        }
    }

    /// Ends the scan: the checks that need the whole log, then the report.
    pub fn finish(mut self, truncated: bool) -> Report {
        self.close_batch();
        let now = self.config.now;
        let grace = self.config.grace;
        let mut found = Vec::new();
        if !truncated {
            for show in self.shows.values() {
                if show.show_id.is_none() {
                    continue;
                }
                if !show.broken
                    && let Err(message) = show.state.check_invariants()
                {
                    found.push((
                        "replay",
                        show.last_position,
                        format!("invariant broken after replay: {message}"),
                    ));
                }
                for (id, t) in &show.trails {
                    if t.open_hold
                        && let Some(expires_at) = t.expires_at
                        && expires_at + grace < now
                    {
                        found.push((
                            "4",
                            t.placed_position,
                            format!(
                                "hold {id} still open at {}, past its expires_at {}",
                                now.to_rfc3339(),
                                expires_at.to_rfc3339()
                            ),
                        ));
                    }
                    if t.captured == 1
                        && t.issued == 0
                        && t.refunded == 0
                        && let Some((position, at)) = t.captured_at
                        && at + grace < now
                    {
                        found.push((
                            "2",
                            position,
                            format!("{id} captured at {} but no tickets issued", at.to_rfc3339()),
                        ));
                    }
                }
            }
        }
        for (rule, position, message) in found {
            self.violation(rule, position, message);
        }
        if !truncated {
            let mut lost: Vec<_> = self
                .config
                .anchors
                .iter()
                .filter(|(partition, _)| !self.anchors_seen.contains(*partition))
                .map(|(partition, anchor)| (anchor.position, partition.clone()))
                .collect();
            lost.sort();
            for (position, partition) in lost {
                self.violation(
                    "chain",
                    position,
                    format!(
                        "event at position {position} of {partition}, recorded in the anchors, is gone: the partition was truncated"
                    ),
                );
            }
        }
        self.violations.sort_by_key(|v| v.position);
        let heads = self
            .chain
            .as_ref()
            .map(|chain| {
                chain
                    .heads()
                    .map(|(partition, position, link)| {
                        (
                            partition.to_owned(),
                            Anchor {
                                position,
                                link: chain::to_hex(link),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Report {
            chain_checked: self.chain.as_ref().map(ChainVerifier::checked),
            heads,
            events: self.events,
            shows: self.shows.len(),
            streams: self.versions.len(),
            last_position: self.last_position,
            violations: self.violations,
            truncated,
        }
    }
}

/// Checks one event of a show and applies it to the show's domain state; whether it
/// released seats or places (for rule 5).
fn feed_show(
    show: &mut ShowCheck,
    e: &RecordedEvent,
    found: &mut Vec<(&'static str, String)>,
) -> bool {
    show.last_position = e.position;
    let Some(show_id) = show.show_id else {
        found.push((
            "6",
            format!("partition {:?} is not a show id", e.partition_key),
        ));
        return false;
    };
    let event = match DomainEvent::decode(&e.event_type, e.schema_version, &e.payload) {
        Ok(event) => event,
        Err(err) => {
            found.push(("decode", err.to_string()));
            return false;
        }
    };
    if event.stream_id(show_id) != e.stream_id {
        found.push((
            "6",
            format!(
                "a {} of {} stored in stream {}",
                e.event_type,
                event.stream_id(show_id),
                e.stream_id
            ),
        ));
    }
    check_rules(show, e, &event, found);
    if !show.broken
        && let Err(message) = apply_caught(&mut show.state, &event)
    {
        show.broken = true;
        found.push((
            "replay",
            format!("the domain's apply refused it: {message}"),
        ));
    }
    matches!(
        event,
        DomainEvent::Seat(SeatEvent::SeatReleased { .. } | SeatEvent::SeatUnblocked { .. })
            | DomainEvent::Pool(PoolEvent::PoolSeatsReleased { .. })
    )
}

/// Rule 5 at the end of an append that released seats: the first waiting entry (in
/// order of joining, under its ticket cap) that fits what is available, if any.
fn unoffered_waiting_entry(state: &ShowState, at: DateTime<Utc>) -> Option<String> {
    let show = state.show.as_ref()?;
    if !show.sales_open(at) {
        return None;
    }
    let limits = &show.definition.limits;
    for entry in state.waitlist.waiting() {
        if policy::check_ticket_cap(limits, state.tickets_of(entry.user_id), entry.quantity)
            .is_err()
        {
            continue;
        }
        let fits_in = |s: &SectionIndex| match s {
            SectionIndex::Seated { rows, .. } => {
                let rows: Vec<&[u32]> = rows.iter().map(|r| r.seats.as_slice()).collect();
                policy::best_available(&rows, entry.quantity as usize, |i| {
                    state.seats[i as usize].state.is_available()
                })
                .is_some()
            }
            SectionIndex::General { id, .. } => state
                .pools
                .get(id.as_str())
                .is_some_and(|p| p.available() >= entry.quantity),
        };
        let fits = match &entry.section {
            Some(id) => state.sections.iter().filter(|s| s.id() == id).any(fits_in),
            None => state.sections.iter().any(fits_in),
        };
        if fits {
            return Some(format!(
                "seats released back to sale while waiting entry {} ({} in {}) fits and was not offered them",
                entry.entry_id,
                entry.quantity,
                entry.section.as_deref().unwrap_or("any section")
            ));
        }
    }
    None
}

/// The contract's rules 1–4 for one event of a show, independent of the domain's state.
fn check_rules(
    show: &mut ShowCheck,
    e: &RecordedEvent,
    event: &DomainEvent,
    found: &mut Vec<(&'static str, String)>,
) {
    match event {
        DomainEvent::Show(ShowEvent::ShowScheduled { definition, .. }) => {
            for s in &definition.sections {
                if let SectionLayout::GeneralAdmission { capacity, .. } = s.layout {
                    show.pools.insert(s.id.clone(), (0, i64::from(capacity)));
                }
            }
        }
        DomainEvent::Show(_) | DomainEvent::Waitlist(_) => {}
        DomainEvent::Seat(seat) => check_seat(show, seat, found),
        DomainEvent::Pool(pool) => check_pool(show, pool, found),
        DomainEvent::Reservation(r) => check_reservation(show, e, r, found),
    }
}

fn check_seat(show: &mut ShowCheck, event: &SeatEvent, found: &mut Vec<(&'static str, String)>) {
    match event {
        SeatEvent::SeatHeld {
            seat_id,
            reservation_id,
            ..
        } => {
            if !show.trails.get(reservation_id).is_some_and(|t| t.placed) {
                found.push((
                    "1",
                    format!("seat {seat_id} held for {reservation_id}, which was never placed"),
                ));
            }
            if let Some(holder) = show.seat_holder.insert(seat_id.clone(), *reservation_id) {
                found.push((
                    "1",
                    format!("seat {seat_id} held by {reservation_id} while held by {holder}"),
                ));
            }
        }
        SeatEvent::SeatReleased {
            seat_id,
            reservation_id,
            ..
        } => {
            match show.seat_holder.remove(seat_id) {
                Some(holder) if holder == *reservation_id => {}
                Some(holder) => {
                    found.push((
                        "1",
                        format!("seat {seat_id} released by {reservation_id} but held by {holder}"),
                    ));
                    show.seat_holder.insert(seat_id.clone(), holder);
                }
                None => found.push((
                    "1",
                    format!("seat {seat_id} released by {reservation_id}, which did not hold it"),
                )),
            }
            check_release(show, *reservation_id, found);
        }
        SeatEvent::SeatSold {
            seat_id,
            reservation_id,
            ..
        } => {
            if show.seat_holder.get(seat_id) != Some(reservation_id) {
                found.push((
                    "1",
                    format!("seat {seat_id} sold to {reservation_id}, which did not hold it"),
                ));
            }
            if show
                .trails
                .get(reservation_id)
                .is_none_or(|t| t.captured == 0)
            {
                found.push((
                    "2",
                    format!("seat {seat_id} sold to {reservation_id} without a captured payment"),
                ));
            }
        }
        SeatEvent::SeatBlocked { seat_id, .. } => {
            if let Some(holder) = show.seat_holder.get(seat_id) {
                found.push((
                    "1",
                    format!("seat {seat_id} blocked while held by {holder}"),
                ));
            }
        }
        SeatEvent::SeatUnblocked { .. } => {}
    }
}

fn check_pool(show: &mut ShowCheck, event: &PoolEvent, found: &mut Vec<(&'static str, String)>) {
    match event {
        PoolEvent::PoolSeatsHeld {
            section,
            reservation_id,
            quantity,
        } => {
            if !show.trails.get(reservation_id).is_some_and(|t| t.placed) {
                found.push((
                    "1",
                    format!(
                        "places in {section} held for {reservation_id}, which was never placed"
                    ),
                ));
            }
            let Some((used, capacity)) = show.pools.get_mut(section) else {
                found.push(("1", format!("places held in unknown pool {section}")));
                return;
            };
            *used += i64::from(*quantity);
            if *used > *capacity {
                found.push((
                    "1",
                    format!("pool {section} at {used} places held or sold, capacity {capacity}"),
                ));
            }
        }
        PoolEvent::PoolSeatsReleased {
            section,
            reservation_id,
            quantity,
            ..
        } => {
            if let Some((used, _)) = show.pools.get_mut(section) {
                *used -= i64::from(*quantity);
                if *used < 0 {
                    found.push((
                        "1",
                        format!("pool {section} released more places than were held"),
                    ));
                }
            }
            check_release(show, *reservation_id, found);
        }
        PoolEvent::PoolSeatsSold {
            section,
            reservation_id,
            ..
        } => {
            if show
                .trails
                .get(reservation_id)
                .is_none_or(|t| t.captured == 0)
            {
                found.push((
                    "2",
                    format!(
                        "places in {section} sold to {reservation_id} without a captured payment"
                    ),
                ));
            }
        }
    }
}

/// Rules 2 and 3 for a release of a reservation's seats or places.
fn check_release(
    show: &mut ShowCheck,
    reservation_id: ReservationId,
    found: &mut Vec<(&'static str, String)>,
) {
    let t = show.trails.entry(reservation_id).or_default();
    if t.in_flight {
        found.push((
            "3",
            format!("seats of {reservation_id} released with a payment in flight"),
        ));
    } else if t.captured > 0 && t.refunded == 0 {
        found.push((
            "2",
            format!("seats of paid {reservation_id} released before a refund"),
        ));
    } else if !t.closed {
        found.push((
            "3",
            format!("seats of {reservation_id} released before it was closed"),
        ));
    }
}

fn check_reservation(
    show: &mut ShowCheck,
    e: &RecordedEvent,
    event: &ReservationEvent,
    found: &mut Vec<(&'static str, String)>,
) {
    let id = event.reservation_id();
    let t = show.trails.entry(id).or_default();
    if let ReservationEvent::ReservationPlaced {
        seats,
        quantity,
        expires_at,
        ..
    } = event
    {
        if t.placed {
            found.push(("replay", format!("{id} placed twice")));
        }
        *t = Trail {
            placed: true,
            placed_position: e.position,
            expires_at: Some(*expires_at),
            seats: seats.clone(),
            quantity: *quantity,
            open_hold: true,
            ..Trail::default()
        };
        return;
    }
    if !t.placed {
        found.push((
            "replay",
            format!("{} for {id}, which was never placed", event.event_type()),
        ));
    }
    match event {
        ReservationEvent::ReservationPlaced { .. } => unreachable!("handled above"),
        ReservationEvent::PaymentStarted { .. } => {
            t.in_flight = true;
            t.open_hold = false;
        }
        ReservationEvent::PaymentCaptured { .. } => {
            t.captured = t.captured.saturating_add(1);
            if t.captured > 1 {
                found.push(("2", format!("{id} captured twice")));
            } else if !t.in_flight {
                found.push(("2", format!("{id} captured with no payment in flight")));
            }
            t.captured_at = Some((e.position, e.recorded_at));
        }
        ReservationEvent::PaymentFailed { .. } | ReservationEvent::PaymentTimedOut { .. } => {
            if t.captured > 0 {
                found.push(("2", format!("{id} failed or voided after its capture")));
            }
            t.in_flight = false;
            t.closed = true;
        }
        ReservationEvent::TicketsIssued { tickets, .. } => {
            if t.captured != 1 || t.issued > 0 {
                found.push((
                    "2",
                    format!(
                        "{id} issued tickets after {} captures and {} issuances",
                        t.captured, t.issued
                    ),
                ));
            }
            let exact = if t.seats.is_empty() {
                tickets.len() == t.quantity as usize && tickets.iter().all(|k| k.seat.is_none())
            } else {
                let mut issued: Vec<&str> =
                    tickets.iter().filter_map(|k| k.seat.as_deref()).collect();
                let mut held: Vec<&str> = t.seats.iter().map(String::as_str).collect();
                issued.sort_unstable();
                held.sort_unstable();
                issued.len() == tickets.len() && issued == held
            };
            if !exact {
                found.push((
                    "2",
                    format!("{id} issued tickets that are not exactly the seats it held"),
                ));
            }
            t.issued = t.issued.saturating_add(1);
            t.in_flight = false;
            t.seats = Vec::new();
        }
        ReservationEvent::HoldExpired { .. } => {
            if t.in_flight {
                found.push(("3", format!("{id} expired with a payment in flight")));
            }
            // The store keeps `recorded_at` to the microsecond (PostgreSQL's precision)
            // while `expires_at` has nanoseconds: an expiry in the deadline's own
            // microsecond is on time.
            if let Some(expires_at) = t.expires_at
                && e.recorded_at < chrono::SubsecRound::trunc_subsecs(expires_at, 6)
            {
                found.push((
                    "4",
                    format!(
                        "{id} expired at {}, before its expires_at {}",
                        e.recorded_at.to_rfc3339(),
                        expires_at.to_rfc3339()
                    ),
                ));
            }
            t.open_hold = false;
            t.closed = true;
        }
        ReservationEvent::ReservationCancelled { .. } => {
            if t.in_flight {
                found.push(("3", format!("{id} cancelled with a payment in flight")));
            }
            t.open_hold = false;
            t.closed = true;
        }
        ReservationEvent::RefundIssued { .. } => {
            if t.issued != 1 {
                found.push(("2", format!("{id} refunded without tickets")));
            }
            t.refunded = t.refunded.saturating_add(1);
            t.closed = true;
        }
    }
}

/// Pages of the log in flight between the reader and the verifier: reading the next page
/// overlaps with checking this one, and memory stays bounded.
const PAGES_IN_FLIGHT_MAX: usize = 2;

/// Reads the whole log (or one show's partition) in pages and verifies it, with a
/// progress bar over positions.
pub async fn run(
    store: std::sync::Arc<dyn boxoffice_store::EventStore>,
    show: Option<String>,
    mut config: VerifyConfig,
    json: bool,
) -> anyhow::Result<Report> {
    if let Some(show) = &show {
        config.anchors.retain(|partition, _| partition == show);
    }
    let head = store.head_position().await?;
    let bar = crate::progress::bar(Some(head), json, "verifying");
    let (pages_tx, mut pages_rx) =
        tokio::sync::mpsc::channel::<Vec<RecordedEvent>>(PAGES_IN_FLIGHT_MAX);
    let reader = tokio::spawn(async move {
        let mut after = 0;
        loop {
            let page = match &show {
                Some(show) => {
                    store
                        .read_partition(show, after, crate::READ_PAGE_EVENTS)
                        .await?
                }
                None => store.read_all(after, crate::READ_PAGE_EVENTS).await?,
            };
            let Some(last) = page.last() else {
                return Ok::<_, boxoffice_store::StoreError>(());
            };
            after = last.position;
            if pages_tx.send(page).await.is_err() {
                // The verifier stopped early.
                return Ok(());
            }
        }
    });
    let verifier_bar = bar.clone();
    let verifier = tokio::task::spawn_blocking(move || {
        quiet_replay_panics();
        let mut verifier = Verifier::new(config);
        let mut truncated = false;
        'pages: while let Some(page) = pages_rx.blocking_recv() {
            for e in &page {
                verifier.feed(e);
                if verifier.full() {
                    truncated = true;
                    break 'pages;
                }
            }
            if let Some(last) = page.last() {
                verifier_bar.set_position(last.position.min(head));
            }
        }
        verifier.finish(truncated)
    });
    let report = verifier.await?;
    let read = reader.await?;
    bar.finish_and_clear();
    if !report.truncated {
        read?;
    }
    Ok(report)
}

/// Compares every projection's read model with a replay of the log up to its checkpoint
/// (`compare_with_replay`): one `"projection"` violation per projection that drifted, at
/// its checkpoint, naming the tables and how many rows differ. Projections whose tables
/// hold another version than this code's, or that never ran, are listed as skipped.
pub async fn check_projections(
    store: std::sync::Arc<dyn boxoffice_store::EventStore>,
    pool: &boxoffice_store::tables::TablePool,
    json: bool,
) -> anyhow::Result<(Vec<Violation>, Vec<String>)> {
    let projections = boxoffice_projections::all_projections(&Default::default());
    let bar = crate::progress::bar(
        Some(projections.len() as u64),
        json,
        "comparing projections with a replay",
    );
    let (mut violations, mut skipped) = (Vec::new(), Vec::new());
    for projection in projections {
        let compared = boxoffice_projections::compare_with_replay(
            std::sync::Arc::clone(&store),
            pool,
            projection.as_ref(),
            boxoffice_projections::runtime::BATCH_EVENTS_MAX,
        )
        .await;
        bar.inc(1);
        let report = match compared {
            Ok(report) => report,
            // A log that cannot be replayed up to the read model's checkpoint (events
            // removed, an event the projection refuses) is a finding, not a tool failure.
            Err(e) => {
                let checkpoint =
                    boxoffice_projections::load_checkpoint(pool, projection.name()).await?;
                violations.push(Violation {
                    rule: "projection",
                    position: checkpoint.map_or(0, |c| c.position),
                    message: format!(
                        "projection {} cannot be compared with a replay: {e}",
                        projection.name()
                    ),
                });
                continue;
            }
        };
        if let Some(why) = report.skipped {
            skipped.push(format!("{}: {why}", report.name));
        } else if report.drifted() {
            let tables: Vec<String> = report
                .tables
                .iter()
                .map(|t| {
                    format!(
                        "{} ({} live rows not in the replay, {} replayed rows missing)",
                        t.table, t.live_only, t.replay_only
                    )
                })
                .collect();
            violations.push(Violation {
                rule: "projection",
                position: report.position,
                message: format!(
                    "projection {} differs from a replay of the log up to its checkpoint: {}",
                    report.name,
                    tables.join(", ")
                ),
            });
        }
    }
    bar.finish_and_clear();
    Ok((violations, skipped))
}
