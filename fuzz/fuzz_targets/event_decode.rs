//! Reading a stored event back (`DomainEvent::decode`, with its upcasting of old schema
//! versions): the type, version and payload columns come from the database, which other
//! tools and older versions of the server wrote.
//!
//! Input: `<event type> <schema version>` on the first line, the JSON payload after it.
//! A type that is not a real one is replaced, for most inputs, by a real one picked from
//! its bytes, so the fuzzer spends its time in the payload parsers rather than on
//! `UnknownType`. Checks that decoding never panics, and that a decoded event has the
//! requested type and survives encode → JSON text → decode unchanged.

#![no_main]

use boxoffice_domain::event::SCHEMA_VERSION_CURRENT;
use boxoffice_domain::pool::PoolEvent;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::seat::SeatEvent;
use boxoffice_domain::show::ShowEvent;
use boxoffice_domain::waitlist::WaitlistEvent;
use boxoffice_domain::{DomainEvent, ShowId};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use uuid::Uuid;

fn real_types() -> impl Iterator<Item = &'static str> {
    ShowEvent::TYPES
        .into_iter()
        .chain(SeatEvent::TYPES)
        .chain(PoolEvent::TYPES)
        .chain(ReservationEvent::TYPES)
        .chain(WaitlistEvent::TYPES)
}

fuzz_target!(|data: &[u8]| {
    let (line, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let requested = words.next().unwrap_or_default();
    let version = match words.next() {
        Some(v) => match v.parse::<i32>() {
            Ok(v) => v,
            Err(_) => return,
        },
        None => SCHEMA_VERSION_CURRENT,
    };
    let event_type = if real_types().any(|t| t == requested) {
        requested
    } else {
        let pick = requested.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        // One in eight unknown names is kept, so UnknownType is exercised too.
        if pick % 8 == 0 {
            requested
        } else {
            real_types()
                .nth(pick % real_types().count())
                .expect("the index is in range")
        }
    };
    let Ok(payload) = serde_json::from_slice::<Value>(payload) else {
        return;
    };

    let Ok(event) = DomainEvent::decode(event_type, version, &payload) else {
        return;
    };
    assert_eq!(event.event_type(), event_type, "decoded as another type");
    let _ = event.stream_id(ShowId(Uuid::from_u128(
        0x0192_f0c4_a3b2_7e61_a0c3_d0e5_b0a1_c2d3,
    )));

    let (stored_type, stored_version, stored) = event.encode();
    assert_eq!(stored_type, event_type);
    assert_eq!(stored_version, SCHEMA_VERSION_CURRENT);
    assert!(
        stored.get("type").is_none(),
        "the type tag leaked into the payload"
    );
    // Through text, as the store keeps it (`jsonb` / `TEXT`).
    let text = serde_json::to_vec(&stored).expect("a payload serializes");
    let stored: Value = serde_json::from_slice(&text).expect("a payload parses back");
    let again = DomainEvent::decode(stored_type, stored_version, &stored);
    assert_eq!(
        again.as_ref(),
        Ok(&event),
        "the event does not round-trip: {stored}"
    );
});
