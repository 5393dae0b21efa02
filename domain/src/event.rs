//! Every domain event, its stream and its stored form. Type names are binding
//! (`../shared/contract/EVENTS.md`); a payload is the event's fields as JSON without the
//! `type` tag, which is stored in its own column.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ReservationId, ShowId};
use crate::pool::PoolEvent;
use crate::reservation::ReservationEvent;
use crate::seat::SeatEvent;
use crate::show::ShowEvent;
use crate::waitlist::WaitlistEvent;

/// The payload schema version every event is written with today.
pub const SCHEMA_VERSION_CURRENT: i32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DomainEvent {
    Show(ShowEvent),
    Seat(SeatEvent),
    Pool(PoolEvent),
    Reservation(ReservationEvent),
    Waitlist(WaitlistEvent),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("event type {event_type} has no schema version {schema_version}")]
    UnknownSchemaVersion {
        event_type: String,
        schema_version: i32,
    },
    #[error("malformed {event_type} payload: {reason}")]
    Malformed { event_type: String, reason: String },
}

pub fn show_stream(show: ShowId) -> String {
    format!("show-{show}")
}

pub fn seat_stream(show: ShowId, seat_id: &str) -> String {
    format!("seat-{show}-{seat_id}")
}

pub fn pool_stream(show: ShowId, section: &str) -> String {
    format!("pool-{show}-{section}")
}

pub fn reservation_stream(reservation: ReservationId) -> String {
    format!("reservation-{reservation}")
}

pub fn waitlist_stream(show: ShowId) -> String {
    format!("waitlist-{show}")
}

impl DomainEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            DomainEvent::Show(e) => e.event_type(),
            DomainEvent::Seat(e) => e.event_type(),
            DomainEvent::Pool(e) => e.event_type(),
            DomainEvent::Reservation(e) => e.event_type(),
            DomainEvent::Waitlist(e) => e.event_type(),
        }
    }

    /// The stream this event belongs to, in the partition of `show`.
    pub fn stream_id(&self, show: ShowId) -> String {
        match self {
            DomainEvent::Show(_) => show_stream(show),
            DomainEvent::Seat(e) => seat_stream(show, e.seat_id()),
            DomainEvent::Pool(e) => pool_stream(show, e.section()),
            DomainEvent::Reservation(e) => reservation_stream(e.reservation_id()),
            DomainEvent::Waitlist(_) => waitlist_stream(show),
        }
    }

    /// The stored form: `(type, schema_version, payload)`.
    pub fn encode(&self) -> (&'static str, i32, Value) {
        let mut value = serde_json::to_value(self).expect("domain events always serialize");
        if let Value::Object(map) = &mut value {
            map.remove("type");
        }
        (self.event_type(), SCHEMA_VERSION_CURRENT, value)
    }

    /// Reads a stored event back, upcasting older schema versions first.
    ///
    /// The payload is read where it is, with its `type` presented as the payload's first
    /// field (a `type` field of the payload itself is ignored, as the column says what
    /// the event is): no copy of the payload is made to put the tag in.
    pub fn decode(
        event_type: &str,
        schema_version: i32,
        payload: &Value,
    ) -> Result<Self, DecodeError> {
        let payload = upcast(event_type, schema_version, payload)?;
        let Value::Object(map) = payload.as_ref() else {
            return Err(DecodeError::Malformed {
                event_type: event_type.to_string(),
                reason: "payload is not an object".into(),
            });
        };
        let tagged = || tagged::Tagged {
            tag: event_type,
            map,
        };
        let malformed = |e: serde_json::Error| DecodeError::Malformed {
            event_type: event_type.to_string(),
            reason: e.to_string(),
        };
        let event = if ShowEvent::TYPES.contains(&event_type) {
            DomainEvent::Show(ShowEvent::deserialize(tagged()).map_err(malformed)?)
        } else if SeatEvent::TYPES.contains(&event_type) {
            DomainEvent::Seat(SeatEvent::deserialize(tagged()).map_err(malformed)?)
        } else if PoolEvent::TYPES.contains(&event_type) {
            DomainEvent::Pool(PoolEvent::deserialize(tagged()).map_err(malformed)?)
        } else if ReservationEvent::TYPES.contains(&event_type) {
            DomainEvent::Reservation(ReservationEvent::deserialize(tagged()).map_err(malformed)?)
        } else if WaitlistEvent::TYPES.contains(&event_type) {
            DomainEvent::Waitlist(WaitlistEvent::deserialize(tagged()).map_err(malformed)?)
        } else {
            return Err(DecodeError::UnknownType(event_type.to_string()));
        };
        Ok(event)
    }
}

/// Brings a payload written with an older schema version to the current one. Version 1 is
/// the only one so far; a later change of a payload adds its step here, so old events
/// stay readable forever (rule 7: they are never rewritten). A current payload is
/// borrowed as it is.
fn upcast<'a>(
    event_type: &str,
    schema_version: i32,
    payload: &'a Value,
) -> Result<Cow<'a, Value>, DecodeError> {
    match schema_version {
        SCHEMA_VERSION_CURRENT => Ok(Cow::Borrowed(payload)),
        _ => Err(DecodeError::UnknownSchemaVersion {
            event_type: event_type.to_string(),
            schema_version,
        }),
    }
}

/// A stored payload and its type read as one internally tagged object (`{"type": …,
/// …fields}`), which is what the event enums deserialize from, without building that
/// object.
mod tagged {
    use serde::de::value::BorrowedStrDeserializer;
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
    use serde_json::{Map, Value};

    pub(super) struct Tagged<'a> {
        pub(super) tag: &'a str,
        pub(super) map: &'a Map<String, Value>,
    }

    impl<'de> Deserializer<'de> for Tagged<'de> {
        type Error = serde_json::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.visit_map(Fields {
                tag: Some(self.tag),
                fields: self.map.iter(),
                next: Next::Nothing,
            })
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            struct enum identifier ignored_any
        }
    }

    /// What `next_value_seed` reads: the tag's value or a field's.
    enum Next<'de> {
        Nothing,
        Tag(&'de str),
        Field(&'de Value),
    }

    struct Fields<'de> {
        /// The tag, until it has been read (first).
        tag: Option<&'de str>,
        fields: serde_json::map::Iter<'de>,
        next: Next<'de>,
    }

    impl<'de> MapAccess<'de> for Fields<'de> {
        type Error = serde_json::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Self::Error> {
            let key = if let Some(tag) = self.tag.take() {
                self.next = Next::Tag(tag);
                "type"
            } else {
                // The column is the event's type: a `type` inside the payload is not read.
                let Some((key, value)) = self.fields.find(|(key, _)| key.as_str() != "type") else {
                    return Ok(None);
                };
                self.next = Next::Field(value);
                key.as_str()
            };
            seed.deserialize(BorrowedStrDeserializer::new(key))
                .map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, Self::Error> {
            match std::mem::replace(&mut self.next, Next::Nothing) {
                Next::Tag(tag) => seed.deserialize(BorrowedStrDeserializer::new(tag)),
                Next::Field(value) => seed.deserialize(value),
                Next::Nothing => Err(serde::de::Error::custom(
                    "a value was asked for before its key",
                )),
            }
        }

        /// At most: a `type` field of the payload is counted but not read.
        fn size_hint(&self) -> Option<usize> {
            Some(usize::from(self.tag.is_some()) + self.fields.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;
    use crate::reservation::Origin;
    use crate::seat::ReleaseReason;
    use serde_json::json;
    use uuid::Uuid;

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let rsv = ReservationId(Uuid::from_u128(7));
        let events = vec![
            DomainEvent::Seat(SeatEvent::SeatReleased {
                seat_id: "1-A-1".into(),
                reservation_id: rsv,
                reason: ReleaseReason::Expired,
            }),
            DomainEvent::Reservation(ReservationEvent::ReservationPlaced {
                reservation_id: rsv,
                user_id: UserId(Uuid::from_u128(1)),
                seats: vec!["1-A-1".into()],
                section: None,
                quantity: 1,
                placed_at: "2027-01-01T00:00:00Z".parse().unwrap(),
                expires_at: "2027-01-01T00:05:00Z".parse().unwrap(),
                total: crate::money::Minor(1200),
                currency: "EUR".into(),
                origin: Origin::Direct,
                entry_id: None,
                idempotency_key: Some("k1".into()),
            }),
            DomainEvent::Reservation(ReservationEvent::HoldExpired {
                reservation_id: rsv,
            }),
        ];
        for event in events {
            let (event_type, version, payload) = event.encode();
            assert!(payload.get("type").is_none());
            assert_eq!(
                DomainEvent::decode(event_type, version, &payload).unwrap(),
                event
            );
        }
    }

    #[test]
    fn the_payload_uses_the_contract_field_names() {
        let rsv = ReservationId(Uuid::from_u128(7));
        let event = DomainEvent::Seat(SeatEvent::SeatReleased {
            seat_id: "1-A-1".into(),
            reservation_id: rsv,
            reason: ReleaseReason::PaymentTimedOut,
        });
        let (t, _, payload) = event.encode();
        assert_eq!(t, "SeatReleased");
        assert_eq!(
            payload,
            json!({"seat_id": "1-A-1", "reservation_id": rsv.to_string(), "reason": "payment_timed_out"})
        );
    }

    #[test]
    fn unknown_types_versions_and_malformed_payloads_are_errors() {
        assert_eq!(
            DomainEvent::decode("SeatTeleported", 1, &json!({})),
            Err(DecodeError::UnknownType("SeatTeleported".into()))
        );
        assert!(matches!(
            DomainEvent::decode("SeatHeld", 9, &json!({})),
            Err(DecodeError::UnknownSchemaVersion { .. })
        ));
        assert!(matches!(
            DomainEvent::decode("SeatHeld", 1, &json!({"seat_id": 3})),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            DomainEvent::decode("SeatHeld", 1, &json!([1, 2])),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn the_type_column_decides_over_a_type_field_in_the_payload() {
        let rsv = ReservationId(Uuid::from_u128(7));
        let payload = json!({"reservation_id": rsv, "type": "ReservationCancelled"});
        assert_eq!(
            DomainEvent::decode("HoldExpired", 1, &payload),
            Ok(DomainEvent::Reservation(ReservationEvent::HoldExpired {
                reservation_id: rsv
            }))
        );
        // A field the event does not have is ignored; a missing one is an error that
        // names it.
        let with_extra = json!({"reservation_id": rsv, "note": "x"});
        assert!(DomainEvent::decode("HoldExpired", 1, &with_extra).is_ok());
        let Err(DecodeError::Malformed { reason, .. }) =
            DomainEvent::decode("SeatHeld", 1, &json!({"reservation_id": rsv}))
        else {
            panic!("a SeatHeld without its seat decoded");
        };
        assert!(reason.contains("seat_id"), "{reason}");
    }
}
