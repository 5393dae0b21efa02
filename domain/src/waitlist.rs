//! The Waitlist aggregate (`waitlist-{show_id}`): a show's queue of buyers waiting for
//! released seats, in order of joining. Each entry has at most one open offer, and an
//! offer, once claimed or expired, is never reused.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{EntryId, ReservationId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    Waiting,
    Offered,
    Claimed,
    Expired,
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub reservation_id: ReservationId,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub entry_id: EntryId,
    pub user_id: UserId,
    pub quantity: u32,
    pub section: Option<String>,
    pub status: EntryStatus,
    pub offer: Option<Offer>,
}

impl Entry {
    pub fn is_open(&self) -> bool {
        matches!(self.status, EntryStatus::Waiting | EntryStatus::Offered)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaitlistState {
    /// Entries in order of joining; never removed, so order is the log's order.
    pub entries: Vec<Entry>,
}

impl WaitlistState {
    pub fn entry(&self, entry_id: EntryId) -> Option<&Entry> {
        self.entries.iter().find(|e| e.entry_id == entry_id)
    }

    fn entry_mut(&mut self, entry_id: EntryId) -> &mut Entry {
        self.entries
            .iter_mut()
            .find(|e| e.entry_id == entry_id)
            .expect("waitlist event for an unknown entry")
    }

    /// 1-based place among the open entries (waiting or offered), or `None` if closed.
    pub fn position(&self, entry_id: EntryId) -> Option<u32> {
        let mut position = 0;
        for e in &self.entries {
            if e.is_open() {
                position += 1;
            }
            if e.entry_id == entry_id {
                return e.is_open().then_some(position);
            }
        }
        None
    }

    /// Entries still waiting for an offer, in order of joining (first-fit order).
    pub fn waiting(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| e.status == EntryStatus::Waiting)
    }

    pub fn open_entry_of(&self, user_id: UserId) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.user_id == user_id && e.is_open())
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting().count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WaitlistEvent {
    WaitlistJoined {
        entry_id: EntryId,
        user_id: UserId,
        quantity: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        section: Option<String>,
    },
    WaitlistOffered {
        entry_id: EntryId,
        reservation_id: ReservationId,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        seats: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        section: Option<String>,
        quantity: u32,
        expires_at: DateTime<Utc>,
    },
    WaitlistOfferClaimed {
        entry_id: EntryId,
        reservation_id: ReservationId,
    },
    WaitlistOfferExpired {
        entry_id: EntryId,
        reservation_id: ReservationId,
    },
    WaitlistLeft {
        entry_id: EntryId,
    },
}

impl WaitlistEvent {
    pub const TYPES: [&'static str; 5] = [
        "WaitlistJoined",
        "WaitlistOffered",
        "WaitlistOfferClaimed",
        "WaitlistOfferExpired",
        "WaitlistLeft",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            WaitlistEvent::WaitlistJoined { .. } => "WaitlistJoined",
            WaitlistEvent::WaitlistOffered { .. } => "WaitlistOffered",
            WaitlistEvent::WaitlistOfferClaimed { .. } => "WaitlistOfferClaimed",
            WaitlistEvent::WaitlistOfferExpired { .. } => "WaitlistOfferExpired",
            WaitlistEvent::WaitlistLeft { .. } => "WaitlistLeft",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitlistError {
    #[error("the waitlist entry does not exist")]
    EntryNotFound,
    #[error("the user already has an open entry on this waitlist")]
    AlreadyWaiting,
    #[error("the entry is not waiting")]
    NotWaiting,
    #[error("the entry has no open offer for this reservation")]
    NoOpenOffer,
    #[error("the entry is already closed")]
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitlistCommand {
    Join {
        entry_id: EntryId,
        user_id: UserId,
        quantity: u32,
        section: Option<String>,
    },
    Offer {
        entry_id: EntryId,
        reservation_id: ReservationId,
        seats: Vec<String>,
        section: Option<String>,
        expires_at: DateTime<Utc>,
    },
    Claim {
        entry_id: EntryId,
        reservation_id: ReservationId,
    },
    ExpireOffer {
        entry_id: EntryId,
        reservation_id: ReservationId,
    },
    Leave {
        entry_id: EntryId,
    },
}

pub fn decide(
    state: &WaitlistState,
    command: WaitlistCommand,
) -> Result<WaitlistEvent, WaitlistError> {
    match command {
        WaitlistCommand::Join {
            entry_id,
            user_id,
            quantity,
            section,
        } => {
            if state.open_entry_of(user_id).is_some() {
                return Err(WaitlistError::AlreadyWaiting);
            }
            assert!(state.entry(entry_id).is_none(), "entry id reused");
            Ok(WaitlistEvent::WaitlistJoined {
                entry_id,
                user_id,
                quantity,
                section,
            })
        }
        WaitlistCommand::Offer {
            entry_id,
            reservation_id,
            seats,
            section,
            expires_at,
        } => {
            let entry = state.entry(entry_id).ok_or(WaitlistError::EntryNotFound)?;
            if entry.status != EntryStatus::Waiting {
                return Err(WaitlistError::NotWaiting);
            }
            let quantity = entry.quantity;
            assert!(
                seats.is_empty() || seats.len() == quantity as usize,
                "offer does not match the entry's quantity"
            );
            Ok(WaitlistEvent::WaitlistOffered {
                entry_id,
                reservation_id,
                seats,
                section,
                quantity,
                expires_at,
            })
        }
        WaitlistCommand::Claim {
            entry_id,
            reservation_id,
        }
        | WaitlistCommand::ExpireOffer {
            entry_id,
            reservation_id,
        } => {
            let entry = state.entry(entry_id).ok_or(WaitlistError::EntryNotFound)?;
            let open = entry.status == EntryStatus::Offered
                && entry
                    .offer
                    .as_ref()
                    .is_some_and(|o| o.reservation_id == reservation_id);
            if !open {
                return Err(WaitlistError::NoOpenOffer);
            }
            Ok(match command {
                WaitlistCommand::Claim { .. } => WaitlistEvent::WaitlistOfferClaimed {
                    entry_id,
                    reservation_id,
                },
                _ => WaitlistEvent::WaitlistOfferExpired {
                    entry_id,
                    reservation_id,
                },
            })
        }
        WaitlistCommand::Leave { entry_id } => {
            let entry = state.entry(entry_id).ok_or(WaitlistError::EntryNotFound)?;
            if !entry.is_open() {
                return Err(WaitlistError::Closed);
            }
            Ok(WaitlistEvent::WaitlistLeft { entry_id })
        }
    }
}

pub fn apply(state: &mut WaitlistState, event: &WaitlistEvent) {
    match event {
        WaitlistEvent::WaitlistJoined {
            entry_id,
            user_id,
            quantity,
            section,
        } => {
            assert!(
                state.entry(*entry_id).is_none(),
                "WaitlistJoined twice for {entry_id}"
            );
            state.entries.push(Entry {
                entry_id: *entry_id,
                user_id: *user_id,
                quantity: *quantity,
                section: section.clone(),
                status: EntryStatus::Waiting,
                offer: None,
            });
        }
        WaitlistEvent::WaitlistOffered {
            entry_id,
            reservation_id,
            expires_at,
            ..
        } => {
            let entry = state.entry_mut(*entry_id);
            assert_eq!(
                entry.status,
                EntryStatus::Waiting,
                "WaitlistOffered to an entry that is not waiting"
            );
            entry.status = EntryStatus::Offered;
            entry.offer = Some(Offer {
                reservation_id: *reservation_id,
                expires_at: *expires_at,
            });
        }
        WaitlistEvent::WaitlistOfferClaimed { entry_id, .. } => {
            let entry = state.entry_mut(*entry_id);
            assert_eq!(
                entry.status,
                EntryStatus::Offered,
                "WaitlistOfferClaimed without an open offer"
            );
            entry.status = EntryStatus::Claimed;
        }
        WaitlistEvent::WaitlistOfferExpired { entry_id, .. } => {
            let entry = state.entry_mut(*entry_id);
            assert_eq!(
                entry.status,
                EntryStatus::Offered,
                "WaitlistOfferExpired without an open offer"
            );
            entry.status = EntryStatus::Expired;
        }
        WaitlistEvent::WaitlistLeft { entry_id } => {
            let entry = state.entry_mut(*entry_id);
            assert!(entry.is_open(), "WaitlistLeft on a closed entry");
            entry.status = EntryStatus::Left;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn entry(n: u128) -> EntryId {
        EntryId(Uuid::from_u128(n))
    }
    fn user(n: u128) -> UserId {
        UserId(Uuid::from_u128(n))
    }
    fn rsv(n: u128) -> ReservationId {
        ReservationId(Uuid::from_u128(n))
    }
    fn at() -> DateTime<Utc> {
        "2027-01-01T00:10:00Z".parse().unwrap()
    }
    fn joined(n: u128, u: u128) -> WaitlistEvent {
        WaitlistEvent::WaitlistJoined {
            entry_id: entry(n),
            user_id: user(u),
            quantity: 2,
            section: None,
        }
    }
    fn offered(n: u128, r: u128) -> WaitlistEvent {
        WaitlistEvent::WaitlistOffered {
            entry_id: entry(n),
            reservation_id: rsv(r),
            seats: vec!["1-A-1".into(), "1-A-2".into()],
            section: Some("1".into()),
            quantity: 2,
            expires_at: at(),
        }
    }
    fn given(events: &[WaitlistEvent]) -> WaitlistState {
        let mut s = WaitlistState::default();
        for e in events {
            apply(&mut s, e);
        }
        s
    }

    #[test]
    fn a_user_has_one_open_entry() {
        let s = given(&[joined(1, 1)]);
        let again = WaitlistCommand::Join {
            entry_id: entry(2),
            user_id: user(1),
            quantity: 1,
            section: None,
        };
        assert_eq!(decide(&s, again), Err(WaitlistError::AlreadyWaiting));
        let other = WaitlistCommand::Join {
            entry_id: entry(2),
            user_id: user(2),
            quantity: 1,
            section: None,
        };
        assert!(decide(&s, other).is_ok());
    }

    #[test]
    fn positions_count_open_entries_in_join_order() {
        let s = given(&[
            joined(1, 1),
            joined(2, 2),
            joined(3, 3),
            WaitlistEvent::WaitlistLeft { entry_id: entry(1) },
        ]);
        assert_eq!(s.position(entry(1)), None);
        assert_eq!(s.position(entry(2)), Some(1));
        assert_eq!(s.position(entry(3)), Some(2));
    }

    #[test]
    fn an_entry_gets_one_offer_and_it_cannot_be_reused() {
        let s = given(&[joined(1, 1), offered(1, 10)]);
        let second = WaitlistCommand::Offer {
            entry_id: entry(1),
            reservation_id: rsv(11),
            seats: vec![],
            section: None,
            expires_at: at(),
        };
        assert_eq!(decide(&s, second), Err(WaitlistError::NotWaiting));
        let claim_other = WaitlistCommand::Claim {
            entry_id: entry(1),
            reservation_id: rsv(11),
        };
        assert_eq!(decide(&s, claim_other), Err(WaitlistError::NoOpenOffer));
        let s = given(&[
            joined(1, 1),
            offered(1, 10),
            WaitlistEvent::WaitlistOfferClaimed {
                entry_id: entry(1),
                reservation_id: rsv(10),
            },
        ]);
        let claim_again = WaitlistCommand::Claim {
            entry_id: entry(1),
            reservation_id: rsv(10),
        };
        assert_eq!(decide(&s, claim_again), Err(WaitlistError::NoOpenOffer));
        let expire = WaitlistCommand::ExpireOffer {
            entry_id: entry(1),
            reservation_id: rsv(10),
        };
        assert_eq!(decide(&s, expire), Err(WaitlistError::NoOpenOffer));
    }

    #[test]
    fn leaving_closes_the_entry_once() {
        let s = given(&[
            joined(1, 1),
            WaitlistEvent::WaitlistLeft { entry_id: entry(1) },
        ]);
        assert_eq!(
            decide(&s, WaitlistCommand::Leave { entry_id: entry(1) }),
            Err(WaitlistError::Closed)
        );
        assert_eq!(
            decide(&s, WaitlistCommand::Leave { entry_id: entry(9) }),
            Err(WaitlistError::EntryNotFound)
        );
    }
}
