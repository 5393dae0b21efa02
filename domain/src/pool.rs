//! The GA pool aggregate (`pool-{show_id}-{section_id}`): a general-admission section's
//! counts. `held + sold <= capacity` always (rule 1 for GA).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::ReservationId;
use crate::seat::ReleaseReason;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolState {
    pub capacity: u32,
    pub held: u32,
    pub sold: u32,
    /// What each reservation has in the pool: (held, sold).
    pub by_reservation: HashMap<ReservationId, (u32, u32)>,
}

impl PoolState {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    pub fn available(&self) -> u32 {
        self.capacity - self.held - self.sold
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PoolEvent {
    PoolSeatsHeld {
        section: String,
        reservation_id: ReservationId,
        quantity: u32,
    },
    PoolSeatsReleased {
        section: String,
        reservation_id: ReservationId,
        quantity: u32,
        reason: ReleaseReason,
    },
    PoolSeatsSold {
        section: String,
        reservation_id: ReservationId,
        quantity: u32,
    },
}

impl PoolEvent {
    pub const TYPES: [&'static str; 3] = ["PoolSeatsHeld", "PoolSeatsReleased", "PoolSeatsSold"];

    pub fn event_type(&self) -> &'static str {
        match self {
            PoolEvent::PoolSeatsHeld { .. } => "PoolSeatsHeld",
            PoolEvent::PoolSeatsReleased { .. } => "PoolSeatsReleased",
            PoolEvent::PoolSeatsSold { .. } => "PoolSeatsSold",
        }
    }

    pub fn section(&self) -> &str {
        match self {
            PoolEvent::PoolSeatsHeld { section, .. }
            | PoolEvent::PoolSeatsReleased { section, .. }
            | PoolEvent::PoolSeatsSold { section, .. } => section,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolCommand {
    Hold {
        reservation_id: ReservationId,
        quantity: u32,
    },
    Release {
        reservation_id: ReservationId,
        reason: ReleaseReason,
    },
    Sell {
        reservation_id: ReservationId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("only {available} left")]
    SoldOut { available: u32 },
    #[error("the reservation already has places in this pool")]
    AlreadyHolding,
    #[error("the reservation holds nothing in this pool")]
    NothingHeld,
}

pub fn decide(
    section: &str,
    state: &PoolState,
    command: PoolCommand,
) -> Result<PoolEvent, PoolError> {
    let section = section.to_string();
    match command {
        PoolCommand::Hold {
            reservation_id,
            quantity,
        } => {
            assert!(quantity > 0, "a pool hold of zero places");
            if state.by_reservation.contains_key(&reservation_id) {
                return Err(PoolError::AlreadyHolding);
            }
            if quantity > state.available() {
                return Err(PoolError::SoldOut {
                    available: state.available(),
                });
            }
            Ok(PoolEvent::PoolSeatsHeld {
                section,
                reservation_id,
                quantity,
            })
        }
        PoolCommand::Release {
            reservation_id,
            reason,
        } => match state.by_reservation.get(&reservation_id) {
            Some(&(held, sold)) if held + sold > 0 => Ok(PoolEvent::PoolSeatsReleased {
                section,
                reservation_id,
                quantity: held + sold,
                reason,
            }),
            _ => Err(PoolError::NothingHeld),
        },
        PoolCommand::Sell { reservation_id } => match state.by_reservation.get(&reservation_id) {
            Some(&(held, _)) if held > 0 => Ok(PoolEvent::PoolSeatsSold {
                section,
                reservation_id,
                quantity: held,
            }),
            _ => Err(PoolError::NothingHeld),
        },
    }
}

pub fn apply(state: &mut PoolState, event: &PoolEvent) {
    match event {
        PoolEvent::PoolSeatsHeld {
            section,
            reservation_id,
            quantity,
        } => {
            assert!(
                *quantity <= state.available(),
                "PoolSeatsHeld over capacity in {section}"
            );
            let previous = state.by_reservation.insert(*reservation_id, (*quantity, 0));
            assert!(
                previous.is_none(),
                "PoolSeatsHeld twice for one reservation in {section}"
            );
            state.held += quantity;
        }
        PoolEvent::PoolSeatsReleased {
            section,
            reservation_id,
            quantity,
            ..
        } => {
            let (held, sold) = state
                .by_reservation
                .remove(reservation_id)
                .unwrap_or_else(|| {
                    panic!("PoolSeatsReleased in {section} for a reservation holding nothing")
                });
            assert_eq!(
                held + sold,
                *quantity,
                "PoolSeatsReleased quantity mismatch in {section}"
            );
            state.held -= held;
            state.sold -= sold;
        }
        PoolEvent::PoolSeatsSold {
            section,
            reservation_id,
            quantity,
        } => {
            let entry = state
                .by_reservation
                .get_mut(reservation_id)
                .unwrap_or_else(|| {
                    panic!("PoolSeatsSold in {section} for a reservation holding nothing")
                });
            assert_eq!(
                entry.0, *quantity,
                "PoolSeatsSold quantity mismatch in {section}"
            );
            *entry = (0, entry.1 + quantity);
            state.held -= quantity;
            state.sold += quantity;
        }
    }
    assert!(
        state.held + state.sold <= state.capacity,
        "pool over capacity"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn rsv(n: u128) -> ReservationId {
        ReservationId(Uuid::from_u128(n))
    }

    fn given(capacity: u32, events: &[PoolEvent]) -> PoolState {
        let mut state = PoolState::new(capacity);
        for e in events {
            apply(&mut state, e);
        }
        state
    }

    fn held(n: u128, quantity: u32) -> PoolEvent {
        PoolEvent::PoolSeatsHeld {
            section: "floor".into(),
            reservation_id: rsv(n),
            quantity,
        }
    }

    #[test]
    fn holds_up_to_capacity_and_no_further() {
        let state = given(5, &[held(1, 3)]);
        assert_eq!(state.available(), 2);
        assert_eq!(
            decide(
                "floor",
                &state,
                PoolCommand::Hold {
                    reservation_id: rsv(2),
                    quantity: 3
                }
            ),
            Err(PoolError::SoldOut { available: 2 })
        );
        assert_eq!(
            decide(
                "floor",
                &state,
                PoolCommand::Hold {
                    reservation_id: rsv(2),
                    quantity: 2
                }
            ),
            Ok(held(2, 2))
        );
    }

    #[test]
    fn a_reservation_holds_once() {
        let state = given(5, &[held(1, 1)]);
        assert_eq!(
            decide(
                "floor",
                &state,
                PoolCommand::Hold {
                    reservation_id: rsv(1),
                    quantity: 1
                }
            ),
            Err(PoolError::AlreadyHolding)
        );
    }

    #[test]
    fn sell_then_release_returns_the_places() {
        let mut state = given(5, &[held(1, 2)]);
        let sold = decide(
            "floor",
            &state,
            PoolCommand::Sell {
                reservation_id: rsv(1),
            },
        )
        .unwrap();
        apply(&mut state, &sold);
        assert_eq!((state.held, state.sold), (0, 2));
        let release = PoolCommand::Release {
            reservation_id: rsv(1),
            reason: ReleaseReason::Refunded,
        };
        let released = decide("floor", &state, release).unwrap();
        apply(&mut state, &released);
        assert_eq!(state.available(), 5);
        let again = PoolCommand::Release {
            reservation_id: rsv(1),
            reason: ReleaseReason::Refunded,
        };
        assert_eq!(decide("floor", &state, again), Err(PoolError::NothingHeld));
    }

    #[test]
    #[should_panic(expected = "over capacity")]
    fn replaying_an_oversold_pool_is_refused() {
        given(2, &[held(1, 2), held(2, 1)]);
    }
}
