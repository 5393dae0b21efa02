//! Boxoffice's domain: the aggregates of `../shared/contract/EVENTS.md` (show, seat, GA
//! pool, reservation, waitlist), their commands, events and closed error enums, and the
//! policies that decide between them. No I/O and no async: time and ids are injected,
//! so every decision can be replayed exactly.
//!
//! Each aggregate has a `decide` that may fail and an `apply` that cannot; `booking`
//! composes them into the decisions that span a show's partition.

pub mod booking;
pub mod clock;
pub mod event;
pub mod ids;
pub mod money;
pub mod policy;
pub mod pool;
pub mod reservation;
pub mod seat;
pub mod show;
pub mod waitlist;

pub use booking::{BookingError, Command, HoldRequest, Selection, ShowState};
pub use clock::{Clock, ManualClock, SystemClock};
pub use event::{DecodeError, DomainEvent};
pub use ids::{
    EntryId, IdSource, OrderId, PaymentId, RandomIds, ReservationId, SequentialIds, ShowId,
    TicketId, UserId,
};
pub use money::Minor;
