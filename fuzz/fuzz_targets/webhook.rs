//! The payment webhook as the server receives it (`api/src/webhooks.rs`): a
//! `Boxoffice-Signature` header and a raw body, both from outside.
//!
//! Input: the header on the first line, the body after the first `\n`. Checks that
//! `signature::verify` and `WebhookEvent::parse` never panic, that a verified header's
//! timestamp is within the tolerance, that a parsed body survives a serialize/parse round
//! trip, and that a body signed for the header's timestamp verifies at that timestamp.

#![no_main]

use boxoffice_sagas::provider::WebhookEvent;
use boxoffice_sagas::signature::{self, SignatureError, TOLERANCE_SECONDS};
use libfuzzer_sys::fuzz_target;

/// The secret the seed corpus is signed with (`fuzz/corpus/webhook/seed-*`).
const SECRET: &[u8] = b"whsec_fuzz";
/// The verifier's clock; the seeds are signed at this time so they verify.
const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // axum hands the handler `HeaderValue::to_str`, which is ASCII only.
    let header = std::str::from_utf8(header).ok();

    match signature::verify(SECRET, header, body, NOW) {
        Ok(timestamp) => assert!(
            NOW.abs_diff(timestamp) <= TOLERANCE_SECONDS.unsigned_abs(),
            "verified a timestamp outside the tolerance: {timestamp}"
        ),
        Err(SignatureError::Missing) => assert!(header.is_none()),
        Err(_) => {}
    }

    // The server parses only a verified body, but the parser must not depend on that.
    if let Ok(event) = WebhookEvent::parse(body) {
        let text = serde_json::to_vec(&event).expect("a parsed event serializes");
        let again = WebhookEvent::parse(&text).expect("a serialized event parses");
        assert_eq!(again, event, "the webhook body does not round-trip");
    }

    // Signing round trip, for the timestamp the header names (unix seconds are not
    // negative; `verify` accepts plain digits only).
    let timestamp = header
        .and_then(|h| h.split(',').find_map(|part| part.trim().strip_prefix("t=")))
        .and_then(|t| t.trim().parse::<i64>().ok())
        .filter(|t| *t >= 0)
        .unwrap_or(NOW);
    let signed = signature::sign(SECRET, timestamp, body);
    assert_eq!(
        signature::verify(SECRET, Some(&signed), body, timestamp),
        Ok(timestamp),
        "a freshly signed body does not verify: {signed}"
    );
    if let Some(late) = timestamp.checked_add(TOLERANCE_SECONDS + 1) {
        assert_eq!(
            signature::verify(SECRET, Some(&signed), body, late),
            Err(SignatureError::Stale)
        );
    }
    assert_eq!(
        signature::verify(b"another secret", Some(&signed), body, timestamp),
        Err(SignatureError::Mismatch)
    );
});
