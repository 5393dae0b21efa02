//! Typed identifiers. Outside the process an id is an opaque string with a prefix per
//! kind (`shw_…`, `rsv_…`); inside it is a UUID, v7 when freshly made so ids sort by
//! creation time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// An id string that does not parse as the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {kind} id: {value:?}")]
pub struct IdParseError {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub fn uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || IdParseError { kind: stringify!($name), value: s.to_string() };
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or_else(err)?;
                // Only the canonical form `Display` writes, 32 lower-case hex digits, so
                // one id has one spelling (`Uuid::try_parse` alone takes upper case too).
                if rest.len() != 32
                    || !rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return Err(err());
                }
                Uuid::try_parse(rest).map(Self).map_err(|_| err())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

typed_id!(
    /// A show: one ticketed event (a concert night, a match, a screening).
    ShowId,
    "shw"
);
typed_id!(
    /// A reservation: one hold and what becomes of it.
    ReservationId,
    "rsv"
);
typed_id!(
    /// A registered user.
    UserId,
    "usr"
);
typed_id!(
    /// An order, created when tickets are issued.
    OrderId,
    "ord"
);
typed_id!(
    /// A ticket inside an order.
    TicketId,
    "tkt"
);
typed_id!(
    /// An entry in a show's waiting list.
    EntryId,
    "wle"
);
typed_id!(
    /// A payment attempt at the provider.
    PaymentId,
    "pay"
);

/// A source of fresh ids, injected so tests and simulations are deterministic.
pub trait IdSource: Send + Sync {
    fn next_uuid(&self) -> Uuid;
}

/// Fresh UUID v7 ids from the system clock and randomness.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn next_uuid(&self) -> Uuid {
        Uuid::now_v7()
    }
}

/// Ids from a counter: `00000000-0000-7000-8000-<counter>`; for tests and simulations.
#[derive(Debug, Default)]
pub struct SequentialIds {
    next: std::sync::atomic::AtomicU64,
}

impl SequentialIds {
    pub fn starting_at(first: u64) -> Self {
        Self {
            next: std::sync::atomic::AtomicU64::new(first),
        }
    }
}

impl IdSource for SequentialIds {
    fn next_uuid(&self) -> Uuid {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < 1 << 62, "sequential id space exhausted");
        // Version 7 and the RFC 4122 variant bits set, so it is a well-formed v7 UUID.
        Uuid::from_u64_pair(0x0000_0000_0000_7000, 0x8000_0000_0000_0000 | n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_string_form() {
        let id = ShowId(Uuid::now_v7());
        let s = id.to_string();
        assert!(s.starts_with("shw_"));
        assert_eq!(s.parse::<ShowId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ShowId>(&json).unwrap(), id);
    }

    #[test]
    fn ids_of_another_kind_or_malformed_do_not_parse() {
        let id = ShowId(Uuid::now_v7()).to_string();
        assert!(id.replace("shw_", "rsv_").parse::<ShowId>().is_err());
        assert!("shw_".parse::<ShowId>().is_err());
        assert!("shw_zz".parse::<ShowId>().is_err());
        assert!(id.to_uppercase().parse::<ShowId>().is_err());
    }

    #[test]
    fn an_id_has_one_spelling() {
        // Found by `fuzz/fuzz_targets/token.rs`: upper-case hex parsed to the same id.
        let id = "shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3";
        assert_eq!(id.parse::<ShowId>().unwrap().to_string(), id);
        for upper in [
            "shw_0192F0C4A3B27E61A0C3D0E5B0A1C2D3",
            "shw_0192f0c4a3b27e61a0c3d0e5b0a1c2D3",
        ] {
            assert!(upper.parse::<ShowId>().is_err(), "{upper}");
        }
    }

    #[test]
    fn sequential_ids_are_distinct() {
        let ids = SequentialIds::default();
        let a = ids.next_uuid();
        let b = ids.next_uuid();
        assert_ne!(a, b);
    }
}
