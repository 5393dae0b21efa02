//! Webhook signatures, shared by the payment simulator (which signs) and the server
//! (which verifies).
//!
//! The header is `Boxoffice-Signature: t=<unix seconds>,v1=<hex hmac-sha256>`, where the
//! MAC covers `"<t>.<raw body>"`. As with Stripe, several `v1=` entries may be present so
//! that a secret can be rotated without a window of refused deliveries, and the timestamp
//! is part of the signed text so a captured delivery cannot be replayed after
//! [`TOLERANCE_SECONDS`]. The header comes from outside, so parsing never panics and
//! refuses oversized input before doing any work.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The HTTP header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Boxoffice-Signature";

/// How far a signature's timestamp may be from the verifier's clock, either way.
pub const TOLERANCE_SECONDS: i64 = 300;

/// The longest header accepted; a real one is about 80 bytes per `v1` entry.
pub const HEADER_BYTES_MAX: usize = 1024;

/// How many `v1=` entries one header may carry (one per secret during a rotation).
pub const SIGNATURES_PER_HEADER_MAX: usize = 8;

/// The length of an HMAC-SHA256 tag in bytes.
const MAC_BYTES: usize = 32;

const _: () = assert!(SIGNATURES_PER_HEADER_MAX * (MAC_BYTES * 2 + 4) < HEADER_BYTES_MAX);

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("no signature in the header matches the body")]
    Mismatch,
    #[error("the signature timestamp is more than {TOLERANCE_SECONDS} s from now")]
    Stale,
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of any length (long keys are hashed first), so this
    // constructor cannot fail for HMAC-SHA256.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value signing `body` at `timestamp` (unix seconds) with `secret`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Checks `header` against `body` and returns the signed timestamp.
///
/// The MAC is checked before the timestamp so that an unsigned request learns nothing
/// about the tolerance window. Unknown schemes (`v0=` and the like) are ignored, as
/// Stripe does, so a signer may add schemes without breaking verifiers.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let (timestamp, tags) = parse(header)?;
    let verified = tags
        .iter()
        .any(|tag| mac(secret, timestamp, body).verify_slice(tag).is_ok());
    if !verified {
        return Err(SignatureError::Mismatch);
    }
    // abs_diff cannot overflow, whatever timestamp an attacker writes.
    if now_unix.abs_diff(timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    Ok(timestamp)
}

fn parse(header: &str) -> Result<(i64, Vec<[u8; MAC_BYTES]>), SignatureError> {
    if header.len() > HEADER_BYTES_MAX {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.split_once('=').ok_or(SignatureError::Malformed)?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed);
                }
                // Only plain decimal digits: `+5` or ` 5` would sign a different text.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::Malformed);
                }
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                );
            }
            "v1" => {
                if tags.len() == SIGNATURES_PER_HEADER_MAX {
                    return Err(SignatureError::Malformed);
                }
                let mut tag = [0u8; MAC_BYTES];
                hex::decode_to_slice(value, &mut tag).map_err(|_| SignatureError::Malformed)?;
                tags.push(tag);
            }
            _ => {}
        }
    }
    match timestamp {
        Some(timestamp) if !tags.is_empty() => Ok((timestamp, tags)),
        _ => Err(SignatureError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_fresh_signature_verifies_and_returns_its_timestamp() {
        let header = sign(SECRET, NOW - 10, BODY);
        assert!(header.starts_with(&format!("t={},v1=", NOW - 10)));
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW), Ok(NOW - 10));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1.{}' | openssl dgst -sha256 -hmac key
        let header = sign(b"key", 1, b"{}");
        assert_eq!(
            header,
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }

    #[test]
    fn a_tampered_body_is_a_mismatch() {
        let header = sign(SECRET, NOW, BODY);
        let mut tampered = BODY.to_vec();
        tampered[5] ^= 1;
        assert_eq!(
            verify(SECRET, Some(&header), &tampered, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_wrong_secret_is_a_mismatch() {
        let header = sign(b"another secret", NOW, BODY);
        assert_eq!(
            verify(SECRET, Some(&header), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_changed_timestamp_is_a_mismatch() {
        let header = sign(SECRET, NOW, BODY).replacen(&NOW.to_string(), &(NOW + 1).to_string(), 1);
        assert_eq!(
            verify(SECRET, Some(&header), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_tolerance_is_inclusive_and_applies_both_ways() {
        let at = |t: i64| verify(SECRET, Some(&sign(SECRET, t, BODY)), BODY, NOW);
        assert_eq!(at(NOW - TOLERANCE_SECONDS), Ok(NOW - TOLERANCE_SECONDS));
        assert_eq!(at(NOW + TOLERANCE_SECONDS), Ok(NOW + TOLERANCE_SECONDS));
        assert_eq!(at(NOW - TOLERANCE_SECONDS - 1), Err(SignatureError::Stale));
        assert_eq!(at(NOW + TOLERANCE_SECONDS + 1), Err(SignatureError::Stale));
        assert_eq!(at(0), Err(SignatureError::Stale));
    }

    #[test]
    fn a_missing_header_is_missing() {
        assert_eq!(
            verify(SECRET, None, BODY, NOW),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = sign(SECRET, NOW, BODY);
        let tag = good.split_once("v1=").unwrap().1.to_owned();
        for header in [
            String::new(),
            ",".into(),
            "t=".into(),
            format!("t={NOW}"),
            format!("v1={tag}"),
            format!("t={NOW},v1="),
            format!("t={NOW},v1=zz{}", &tag[2..]),
            format!("t={NOW},v1={}", &tag[1..]),
            format!("t={NOW},v1={tag}00"),
            format!("t=-{NOW},v1={tag}"),
            format!("t=+{NOW},v1={tag}"),
            format!("t=1e9,v1={tag}"),
            format!("t=99999999999999999999,v1={tag}"),
            format!("t={NOW},t={NOW},v1={tag}"),
            format!("t={NOW};v1={tag}"),
            format!("t={NOW},v1={tag},garbage"),
            format!(
                "t={NOW}{}",
                format!(",v1={tag}").repeat(SIGNATURES_PER_HEADER_MAX + 1)
            ),
            format!("{good},{}", "x".repeat(HEADER_BYTES_MAX)),
        ] {
            assert_eq!(
                verify(SECRET, Some(&header), BODY, NOW),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }

    #[test]
    fn any_of_several_v1_entries_may_match() {
        let old = sign(b"old secret", NOW, BODY);
        let new = sign(SECRET, NOW, BODY);
        let old_tag = old.split_once("v1=").unwrap().1;
        let new_tag = new.split_once("v1=").unwrap().1;
        for header in [
            format!("t={NOW},v1={old_tag},v1={new_tag}"),
            format!("t={NOW},v1={new_tag},v1={old_tag}"),
            format!("v1={old_tag}, t={NOW} ,v0=ignored, v1={new_tag}"),
        ] {
            assert_eq!(
                verify(SECRET, Some(&header), BODY, NOW),
                Ok(NOW),
                "{header}"
            );
            assert_eq!(
                verify(b"old secret", Some(&header), BODY, NOW),
                Ok(NOW),
                "{header}"
            );
            assert_eq!(
                verify(b"third", Some(&header), BODY, NOW),
                Err(SignatureError::Mismatch),
                "{header}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic_and_never_verify(header in ".{0,300}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Random text cannot carry a valid MAC, so the only acceptable answers are
            // refusals.
            prop_assert!(verify(SECRET, Some(&header), &body, NOW).is_err());
        }

        #[test]
        fn header_shaped_noise_never_panics(
            t in prop_oneof![Just(String::new()), "[0-9]{1,25}", "-?[0-9a-f+ ]{0,12}"],
            tags in proptest::collection::vec("[0-9a-fA-F]{0,70}", 0..10),
            extra in "[a-z0-9=, ]{0,20}",
        ) {
            let mut header = format!("t={t}");
            for tag in &tags {
                header.push_str(",v1=");
                header.push_str(tag);
            }
            header.push_str(&extra);
            prop_assert!(verify(SECRET, Some(&header), BODY, NOW).is_err());
        }

        #[test]
        fn signing_then_verifying_round_trips(
            secret in proptest::collection::vec(any::<u8>(), 0..100),
            body in proptest::collection::vec(any::<u8>(), 0..200),
            skew in -TOLERANCE_SECONDS..=TOLERANCE_SECONDS,
        ) {
            let header = sign(&secret, NOW + skew, &body);
            prop_assert_eq!(verify(&secret, Some(&header), &body, NOW), Ok(NOW + skew));
        }
    }
}
