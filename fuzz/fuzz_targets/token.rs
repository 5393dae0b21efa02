//! The strings a caller hands us to say who it is: the bearer token the `Caller`
//! extractor checks (`Auth::caller_of_token`, `api/src/auth.rs`) and the typed ids of
//! `domain/src/ids.rs` that arrive in paths and bodies.
//!
//! Input: any bytes, read as (lossy) UTF-8. Checks that neither parser panics, that no
//! fuzzed string is accepted as a token (it would be a forgery: the fuzzer does not know
//! the secret), that an id parses only in its one canonical spelling, that a token we
//! issue is accepted for exactly the user and roles it names, and that changing any one
//! character of it makes it invalid.

#![no_main]

use std::sync::LazyLock;

use boxoffice_api::auth::{Auth, Role};
use boxoffice_domain::{EntryId, OrderId, PaymentId, ReservationId, ShowId, TicketId, UserId};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// Built once: `Auth::new` hashes a dummy password with argon2 (tens of milliseconds).
static AUTH: LazyLock<Auth> = LazyLock::new(|| {
    Auth::new(b"fuzz-secret-fuzz-secret-fuzz-secret!").expect("a 36-byte secret is accepted")
});

const ROLES: [Role; 5] = [
    Role::Buyer,
    Role::Organizer,
    Role::Support,
    Role::Auditor,
    Role::Admin,
];

/// The characters a token is made of: base64url and the dots between its parts.
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

/// `s` parses as an `Id` only if displaying the id gives `s` back.
fn check_id<Id>(s: &str)
where
    Id: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    if let Ok(id) = s.parse::<Id>() {
        let shown = id.to_string();
        assert_eq!(shown, s, "an id parsed from a non-canonical spelling");
        assert_eq!(
            shown.parse::<Id>().ok(),
            Some(id),
            "an id does not round-trip"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // The extractor trims the header value after `Bearer `.
    assert!(
        AUTH.caller_of_token(text.trim()).is_none(),
        "a fuzzed string was accepted as a token: {text:?}"
    );

    check_id::<ShowId>(&text);
    check_id::<ReservationId>(&text);
    check_id::<UserId>(&text);
    check_id::<OrderId>(&text);
    check_id::<TicketId>(&text);
    check_id::<EntryId>(&text);
    check_id::<PaymentId>(&text);

    // Issue, check, tamper. Roles from the first byte's bits; the subject is the input
    // itself (accepted only if it is a user id) and a user id made of the input's bytes.
    let roles: Vec<Role> = ROLES
        .iter()
        .enumerate()
        .filter(|(i, _)| data.first().is_some_and(|b| b & (1 << i) != 0))
        .map(|(_, r)| *r)
        .collect();
    let token = AUTH.issue(&text, &roles).expect("a token can be issued");
    let caller = AUTH.caller_of_token(&token);
    match text.parse::<UserId>() {
        Ok(user_id) => {
            let caller = caller.expect("a token issued for a user id is accepted");
            assert_eq!(caller.user_id, user_id);
            assert_eq!(caller.roles, roles);
        }
        Err(_) => assert!(
            caller.is_none(),
            "a token for a non-user subject is accepted"
        ),
    }

    let mut bytes = [0u8; 16];
    for (to, from) in bytes.iter_mut().zip(data) {
        *to = *from;
    }
    let user_id = UserId(Uuid::from_bytes(bytes));
    let token = AUTH
        .issue(&user_id.to_string(), &roles)
        .expect("a token can be issued");
    let caller = AUTH
        .caller_of_token(&token)
        .expect("a freshly issued token is accepted");
    assert_eq!(caller.user_id, user_id);
    assert_eq!(caller.roles, roles);

    let at = data
        .get(16..18)
        .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let at = at % token.len();
    let with = TOKEN_CHARS[usize::from(data.get(18).copied().unwrap_or(0)) % TOKEN_CHARS.len()];
    if token.as_bytes()[at] != with {
        let mut tampered = token.clone().into_bytes();
        tampered[at] = with;
        let tampered = String::from_utf8(tampered).expect("still ASCII");
        assert!(
            AUTH.caller_of_token(&tampered).is_none(),
            "a token with byte {at} changed to {:?} is still accepted",
            char::from(with)
        );
    }
});
