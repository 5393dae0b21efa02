//! The Seat aggregate (`seat-{show_id}-{seat_id}`): one seat's state. A seat is
//! available, held by exactly one reservation, sold to exactly one reservation, or
//! blocked by the organizer (rule 1 lives here).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{OrderId, ReservationId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    Expired,
    Cancelled,
    PaymentFailed,
    PaymentTimedOut,
    Refunded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeatState {
    #[default]
    Available,
    Held {
        reservation_id: ReservationId,
        until: DateTime<Utc>,
    },
    Sold {
        reservation_id: ReservationId,
        order_id: OrderId,
    },
    Blocked,
}

impl SeatState {
    pub fn is_available(&self) -> bool {
        matches!(self, SeatState::Available)
    }

    /// The reservation holding or owning the seat, if any.
    pub fn reservation(&self) -> Option<ReservationId> {
        match self {
            SeatState::Held { reservation_id, .. } | SeatState::Sold { reservation_id, .. } => {
                Some(*reservation_id)
            }
            SeatState::Available | SeatState::Blocked => None,
        }
    }

    /// The status name the seat map shows.
    pub fn status_name(&self) -> &'static str {
        match self {
            SeatState::Available => "available",
            SeatState::Held { .. } => "held",
            SeatState::Sold { .. } => "sold",
            SeatState::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SeatEvent {
    SeatHeld {
        seat_id: String,
        reservation_id: ReservationId,
        until: DateTime<Utc>,
    },
    SeatReleased {
        seat_id: String,
        reservation_id: ReservationId,
        reason: ReleaseReason,
    },
    SeatSold {
        seat_id: String,
        reservation_id: ReservationId,
        order_id: OrderId,
    },
    SeatBlocked {
        seat_id: String,
        reason: String,
    },
    SeatUnblocked {
        seat_id: String,
    },
}

impl SeatEvent {
    pub const TYPES: [&'static str; 5] = [
        "SeatHeld",
        "SeatReleased",
        "SeatSold",
        "SeatBlocked",
        "SeatUnblocked",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            SeatEvent::SeatHeld { .. } => "SeatHeld",
            SeatEvent::SeatReleased { .. } => "SeatReleased",
            SeatEvent::SeatSold { .. } => "SeatSold",
            SeatEvent::SeatBlocked { .. } => "SeatBlocked",
            SeatEvent::SeatUnblocked { .. } => "SeatUnblocked",
        }
    }

    pub fn seat_id(&self) -> &str {
        match self {
            SeatEvent::SeatHeld { seat_id, .. }
            | SeatEvent::SeatReleased { seat_id, .. }
            | SeatEvent::SeatSold { seat_id, .. }
            | SeatEvent::SeatBlocked { seat_id, .. }
            | SeatEvent::SeatUnblocked { seat_id } => seat_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatCommand {
    Hold {
        reservation_id: ReservationId,
        until: DateTime<Utc>,
    },
    Release {
        reservation_id: ReservationId,
        reason: ReleaseReason,
    },
    Sell {
        reservation_id: ReservationId,
        order_id: OrderId,
    },
    Block {
        reason: String,
    },
    Unblock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SeatError {
    #[error("the seat is not available")]
    NotAvailable,
    #[error("the seat is not held or sold by this reservation")]
    NotHeldByReservation,
    #[error("the seat is not blocked")]
    NotBlocked,
}

/// Decides a command for one seat.
pub fn decide(
    seat_id: &str,
    state: &SeatState,
    command: SeatCommand,
) -> Result<SeatEvent, SeatError> {
    let seat_id = seat_id.to_string();
    match command {
        SeatCommand::Hold {
            reservation_id,
            until,
        } => match state {
            SeatState::Available => Ok(SeatEvent::SeatHeld {
                seat_id,
                reservation_id,
                until,
            }),
            _ => Err(SeatError::NotAvailable),
        },
        SeatCommand::Release {
            reservation_id,
            reason,
        } => match state.reservation() {
            Some(holder) if holder == reservation_id => Ok(SeatEvent::SeatReleased {
                seat_id,
                reservation_id,
                reason,
            }),
            _ => Err(SeatError::NotHeldByReservation),
        },
        SeatCommand::Sell {
            reservation_id,
            order_id,
        } => match state {
            SeatState::Held {
                reservation_id: holder,
                ..
            } if *holder == reservation_id => Ok(SeatEvent::SeatSold {
                seat_id,
                reservation_id,
                order_id,
            }),
            _ => Err(SeatError::NotHeldByReservation),
        },
        SeatCommand::Block { reason } => match state {
            SeatState::Available => Ok(SeatEvent::SeatBlocked { seat_id, reason }),
            _ => Err(SeatError::NotAvailable),
        },
        SeatCommand::Unblock => match state {
            SeatState::Blocked => Ok(SeatEvent::SeatUnblocked { seat_id }),
            _ => Err(SeatError::NotBlocked),
        },
    }
}

/// Applies a seat event. An event that does not fit the state means the log breaks
/// rule 1; that is asserted, never silently accepted.
pub fn apply(state: &mut SeatState, event: &SeatEvent) {
    *state = match event {
        SeatEvent::SeatHeld {
            seat_id,
            reservation_id,
            until,
        } => {
            assert!(
                state.is_available(),
                "SeatHeld on seat {seat_id} that is {}",
                state.status_name()
            );
            SeatState::Held {
                reservation_id: *reservation_id,
                until: *until,
            }
        }
        SeatEvent::SeatReleased {
            seat_id,
            reservation_id,
            ..
        } => {
            assert_eq!(
                state.reservation(),
                Some(*reservation_id),
                "SeatReleased on seat {seat_id} by a non-holder"
            );
            SeatState::Available
        }
        SeatEvent::SeatSold {
            seat_id,
            reservation_id,
            order_id,
        } => {
            assert!(
                matches!(state, SeatState::Held { reservation_id: holder, .. } if holder == reservation_id),
                "SeatSold on seat {seat_id} not held by the reservation"
            );
            SeatState::Sold {
                reservation_id: *reservation_id,
                order_id: *order_id,
            }
        }
        SeatEvent::SeatBlocked { seat_id, .. } => {
            assert!(
                state.is_available(),
                "SeatBlocked on seat {seat_id} that is {}",
                state.status_name()
            );
            SeatState::Blocked
        }
        SeatEvent::SeatUnblocked { seat_id } => {
            assert_eq!(
                *state,
                SeatState::Blocked,
                "SeatUnblocked on seat {seat_id} that is not blocked"
            );
            SeatState::Available
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn rsv(n: u128) -> ReservationId {
        ReservationId(Uuid::from_u128(n))
    }

    fn until() -> DateTime<Utc> {
        "2027-01-01T00:05:00Z".parse().unwrap()
    }

    /// Given a history, when a command, then an outcome.
    fn given(events: &[SeatEvent]) -> SeatState {
        let mut state = SeatState::default();
        for e in events {
            apply(&mut state, e);
        }
        state
    }

    fn held_by(n: u128) -> SeatEvent {
        SeatEvent::SeatHeld {
            seat_id: "101-A-1".into(),
            reservation_id: rsv(n),
            until: until(),
        }
    }

    #[test]
    fn an_available_seat_can_be_held() {
        let state = given(&[]);
        let event = decide(
            "101-A-1",
            &state,
            SeatCommand::Hold {
                reservation_id: rsv(1),
                until: until(),
            },
        );
        assert_eq!(event, Ok(held_by(1)));
    }

    #[test]
    fn a_held_seat_cannot_be_held_again() {
        let state = given(&[held_by(1)]);
        let err = decide(
            "101-A-1",
            &state,
            SeatCommand::Hold {
                reservation_id: rsv(2),
                until: until(),
            },
        );
        assert_eq!(err, Err(SeatError::NotAvailable));
    }

    #[test]
    fn only_the_holder_releases_or_buys() {
        let state = given(&[held_by(1)]);
        let release = SeatCommand::Release {
            reservation_id: rsv(2),
            reason: ReleaseReason::Cancelled,
        };
        assert_eq!(
            decide("101-A-1", &state, release),
            Err(SeatError::NotHeldByReservation)
        );
        let sell = SeatCommand::Sell {
            reservation_id: rsv(2),
            order_id: OrderId(Uuid::from_u128(9)),
        };
        assert_eq!(
            decide("101-A-1", &state, sell),
            Err(SeatError::NotHeldByReservation)
        );
        let release = SeatCommand::Release {
            reservation_id: rsv(1),
            reason: ReleaseReason::Expired,
        };
        assert!(decide("101-A-1", &state, release).is_ok());
    }

    #[test]
    fn a_sold_seat_is_released_only_by_its_owner_and_cannot_be_sold_again() {
        let order = OrderId(Uuid::from_u128(9));
        let state = given(&[
            held_by(1),
            SeatEvent::SeatSold {
                seat_id: "101-A-1".into(),
                reservation_id: rsv(1),
                order_id: order,
            },
        ]);
        assert_eq!(
            state,
            SeatState::Sold {
                reservation_id: rsv(1),
                order_id: order
            }
        );
        let sell = SeatCommand::Sell {
            reservation_id: rsv(1),
            order_id: order,
        };
        assert_eq!(
            decide("101-A-1", &state, sell),
            Err(SeatError::NotHeldByReservation)
        );
        let refund = SeatCommand::Release {
            reservation_id: rsv(1),
            reason: ReleaseReason::Refunded,
        };
        assert!(decide("101-A-1", &state, refund).is_ok());
    }

    #[test]
    fn blocking_needs_an_available_seat_and_unblocking_a_blocked_one() {
        let held = given(&[held_by(1)]);
        assert_eq!(
            decide(
                "101-A-1",
                &held,
                SeatCommand::Block {
                    reason: "camera".into()
                }
            ),
            Err(SeatError::NotAvailable)
        );
        let free = given(&[]);
        assert_eq!(
            decide("101-A-1", &free, SeatCommand::Unblock),
            Err(SeatError::NotBlocked)
        );
        let blocked = given(&[SeatEvent::SeatBlocked {
            seat_id: "101-A-1".into(),
            reason: "camera".into(),
        }]);
        assert_eq!(
            decide("101-A-1", &blocked, SeatCommand::Unblock),
            Ok(SeatEvent::SeatUnblocked {
                seat_id: "101-A-1".into()
            })
        );
        let hold = SeatCommand::Hold {
            reservation_id: rsv(1),
            until: until(),
        };
        assert_eq!(
            decide("101-A-1", &blocked, hold),
            Err(SeatError::NotAvailable)
        );
    }

    #[test]
    #[should_panic(expected = "SeatHeld on seat 101-A-1 that is held")]
    fn replaying_a_double_hold_is_refused() {
        given(&[held_by(1), held_by(2)]);
    }
}
