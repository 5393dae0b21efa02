//! Tamper evidence: every event carries a keyed hash (HMAC-SHA-256) chaining it to the
//! previous event of its partition (show).
//!
//! `chain(e) = HMAC(key, chain(previous event of the partition) ‖ SHA-256(content(e)))`,
//! where the content is every stored field but the position, each length-prefixed, with
//! the JSON documents in a canonical form (object keys sorted, no whitespace), so that
//! PostgreSQL's `jsonb` (which reorders keys) and SQLite's JSON text hash alike. The first
//! event of a partition chains to 32 zero bytes.
//!
//! The key lives outside the database (a file next to the server's other secrets), so
//! someone who can write to the database but does not hold the key cannot forge a chain:
//! editing an event, removing one from the middle of a partition or reordering two breaks
//! the chain at the first event after the change, which [`ChainVerifier`] names by
//! position. Removing the newest events of a partition leaves a shorter but valid chain;
//! catching that needs the partition's head recorded elsewhere (`boxctl verify
//! --anchors`). See docs/adr/0007-tamper-evidence.md.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{EventMetadata, NewEvent, RecordedEvent};

/// Bytes of one link of the chain.
pub const CHAIN_BYTES: usize = 32;
/// What the first event of a partition chains to.
pub const GENESIS: Link = [0; CHAIN_BYTES];
/// Fewest bytes a key may have (HMAC-SHA-256's output size).
pub const KEY_BYTES_MIN: usize = 32;

/// One link of the chain.
pub type Link = [u8; CHAIN_BYTES];

/// The secret the chain is keyed with.
#[derive(Clone)]
pub struct ChainKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(…)")
    }
}

/// Why a key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum ChainKeyError {
    #[error("chain key is {0} bytes; at least {KEY_BYTES_MIN} are needed")]
    TooShort(usize),
    #[error("chain key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl ChainKey {
    /// A key from raw bytes (at least [`KEY_BYTES_MIN`]).
    pub fn new(secret: &[u8]) -> Result<Self, ChainKeyError> {
        if secret.len() < KEY_BYTES_MIN {
            return Err(ChainKeyError::TooShort(secret.len()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
        Ok(Self { mac })
    }

    /// A new random key (two v4 UUIDs' worth of OS randomness, hex encoded, 64 bytes).
    pub fn generate() -> Self {
        Self::new(random_secret().as_bytes()).expect("a generated key is long enough")
    }

    /// The key in `path` (its trimmed text is the secret).
    pub fn load(path: &Path) -> Result<Self, ChainKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChainKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(text.trim().as_bytes())
    }

    /// The key in `path`, generated there (readable by its owner only) if the file does
    /// not exist yet. Returns whether it was generated.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), ChainKeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::new(text.trim().as_bytes())?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let io = |source| ChainKeyError::Io {
                    path: path.display().to_string(),
                    source,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let secret = random_secret();
                write_private(path, secret.as_bytes()).map_err(io)?;
                Ok((Self::new(secret.as_bytes())?, true))
            }
            Err(source) => Err(ChainKeyError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The link of an event whose content digest is `digest`, after `previous`.
    pub fn link(&self, previous: &Link, digest: &[u8; 32]) -> Link {
        let mut mac = self.mac.clone();
        mac.update(previous);
        mac.update(digest);
        mac.finalize().into_bytes().into()
    }
}

fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The fields of an event that its link covers: everything stored but the position.
pub struct Content<'a> {
    pub partition_key: &'a str,
    pub stream_id: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub payload: &'a serde_json::Value,
    pub metadata: &'a EventMetadata,
    pub recorded_at: DateTime<Utc>,
}

impl<'a> Content<'a> {
    /// The content of an event about to be appended.
    pub fn of_new(
        partition_key: &'a str,
        stream_id: &'a str,
        version: u64,
        event: &'a NewEvent,
        recorded_at: DateTime<Utc>,
    ) -> Self {
        Self {
            partition_key,
            stream_id,
            version,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            payload: &event.payload,
            metadata: &event.metadata,
            recorded_at,
        }
    }

    /// The content of a stored event.
    pub fn of_recorded(event: &'a RecordedEvent) -> Self {
        Self {
            partition_key: &event.partition_key,
            stream_id: &event.stream_id,
            version: event.version,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            payload: &event.payload,
            metadata: &event.metadata,
            recorded_at: event.recorded_at,
        }
    }

    /// SHA-256 of the canonical encoding. Timestamps count to the microsecond, the
    /// precision both backends store.
    pub fn digest(&self) -> [u8; 32] {
        let mut buf = Vec::with_capacity(256);
        field(&mut buf, self.partition_key.as_bytes());
        field(&mut buf, self.stream_id.as_bytes());
        field(&mut buf, &self.version.to_be_bytes());
        field(&mut buf, self.event_type.as_bytes());
        field(&mut buf, &self.schema_version.to_be_bytes());
        let mut json = Vec::with_capacity(128);
        canonical_json(&mut json, self.payload);
        field(&mut buf, &json);
        json.clear();
        canonical_metadata(&mut json, self.metadata);
        field(&mut buf, &json);
        field(&mut buf, &self.recorded_at.timestamp_micros().to_be_bytes());
        Sha256::digest(&buf).into()
    }
}

fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn canonical_metadata(out: &mut Vec<u8>, metadata: &EventMetadata) {
    let value = serde_json::to_value(metadata).expect("metadata serializes");
    canonical_json(out, &value);
}

/// JSON with object keys in byte order and no whitespace, whatever order the map kept.
pub fn canonical_json(out: &mut Vec<u8>, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("a string serializes");
                out.push(b':');
                canonical_json(out, value);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(out, item);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar serializes"),
    }
}

/// What is wrong with the chain at one event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainBreak {
    /// The first event whose link does not match.
    pub position: u64,
    pub partition_key: String,
    /// The partition's previous event, whose link this one should extend (None for what
    /// reads as the partition's first event).
    pub previous_position: Option<u64>,
    pub reason: ChainBreakReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainBreakReason {
    /// The event carries no link at all.
    Missing,
    /// The link does not match the event's content after the previous link: this event
    /// was edited, or one before it in the partition was removed or moved.
    Mismatch,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.reason, self.previous_position) {
            (ChainBreakReason::Missing, _) => write!(
                f,
                "event at position {} of {} carries no hash-chain link",
                self.position, self.partition_key
            ),
            (ChainBreakReason::Mismatch, Some(previous)) => write!(
                f,
                "event at position {} of {} does not chain to position {previous}: it was \
                 edited, or events between them were removed or reordered",
                self.position, self.partition_key
            ),
            (ChainBreakReason::Mismatch, None) => write!(
                f,
                "event at position {} of {} does not chain as the partition's first event: \
                 it was edited, or events before it were removed or reordered",
                self.position, self.partition_key
            ),
        }
    }
}

/// Checks the chain over events read in position order (the whole log, or any set of
/// whole partitions from their start).
pub struct ChainVerifier {
    key: ChainKey,
    heads: HashMap<String, (u64, Link)>,
    checked: u64,
}

impl ChainVerifier {
    pub fn new(key: ChainKey) -> Self {
        Self {
            key,
            heads: HashMap::new(),
            checked: 0,
        }
    }

    /// Checks the next event. After a break the verifier continues from the stored link,
    /// so one edited event is reported once, not as a break of everything after it.
    pub fn check(&mut self, event: &RecordedEvent) -> Result<(), ChainBreak> {
        self.checked += 1;
        let (previous_position, previous) = match self.heads.get(&event.partition_key) {
            Some(&(position, link)) => (Some(position), link),
            None => (None, GENESIS),
        };
        let brk = |reason| ChainBreak {
            position: event.position,
            partition_key: event.partition_key.clone(),
            previous_position,
            reason,
        };
        let Some(stored) = event.chain else {
            return Err(brk(ChainBreakReason::Missing));
        };
        let expected = self
            .key
            .link(&previous, &Content::of_recorded(event).digest());
        self.heads
            .insert(event.partition_key.clone(), (event.position, stored));
        if stored == expected {
            Ok(())
        } else {
            Err(brk(ChainBreakReason::Mismatch))
        }
    }

    /// Events checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The newest event and link seen of each partition: what an auditor records
    /// elsewhere to detect a later truncation.
    pub fn heads(&self) -> impl Iterator<Item = (&str, u64, &Link)> {
        self.heads
            .iter()
            .map(|(partition, (position, link))| (partition.as_str(), *position, link))
    }
}

/// Lowercase hex of a link.
pub fn to_hex(link: &Link) -> String {
    link.iter().map(|b| format!("{b:02x}")).collect()
}

/// A link from its hex form.
pub fn from_hex(text: &str) -> Option<Link> {
    if text.len() != CHAIN_BYTES * 2 || !text.is_ascii() {
        return None;
    }
    let mut link = [0; CHAIN_BYTES];
    for (i, byte) in link.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata() -> EventMetadata {
        EventMetadata {
            event_id: uuid::Uuid::nil(),
            correlation_id: uuid::Uuid::nil(),
            causation_id: None,
            actor: "usr_1".into(),
        }
    }

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "é"}], "a": null}"#).unwrap();
        let b = json!({"a": null, "b": [1, {"x": "é", "y": 2}]});
        let (mut ca, mut cb) = (Vec::new(), Vec::new());
        canonical_json(&mut ca, &a);
        canonical_json(&mut cb, &b);
        assert_eq!(ca, cb);
        assert_eq!(
            String::from_utf8(ca).unwrap(),
            r#"{"a":null,"b":[1,{"x":"é","y":2}]}"#
        );
    }

    #[test]
    fn every_field_and_the_previous_link_change_the_link() {
        let key = ChainKey::generate();
        let payload = json!({"reservation_id": "res_1"});
        let meta = metadata();
        let at = Utc::now();
        let base = Content {
            partition_key: "shw_1",
            stream_id: "seat-1",
            version: 1,
            event_type: "SeatHeld",
            schema_version: 1,
            payload: &payload,
            metadata: &meta,
            recorded_at: at,
        };
        let link = key.link(&GENESIS, &base.digest());
        let other_payload = json!({"reservation_id": "res_2"});
        let other_meta = EventMetadata {
            actor: "usr_2".into(),
            ..metadata()
        };
        let variants = [
            Content {
                partition_key: "shw_2",
                ..base
            },
            Content {
                stream_id: "seat-2",
                ..base
            },
            Content { version: 2, ..base },
            Content {
                event_type: "SeatSold",
                ..base
            },
            Content {
                schema_version: 2,
                ..base
            },
            Content {
                payload: &other_payload,
                ..base
            },
            Content {
                metadata: &other_meta,
                ..base
            },
            Content {
                recorded_at: at + chrono::Duration::microseconds(1),
                ..base
            },
        ];
        for variant in variants {
            assert_ne!(key.link(&GENESIS, &variant.digest()), link);
        }
        assert_ne!(key.link(&link, &base.digest()), link);
        assert_ne!(ChainKey::generate().link(&GENESIS, &base.digest()), link);
    }

    #[test]
    fn short_keys_are_refused_and_hex_round_trips() {
        assert!(matches!(
            ChainKey::new(b"short"),
            Err(ChainKeyError::TooShort(5))
        ));
        let link = ChainKey::generate().link(&GENESIS, &[7; 32]);
        assert_eq!(from_hex(&to_hex(&link)), Some(link));
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn a_generated_key_file_is_reused() {
        let dir = std::env::temp_dir().join(format!("chain-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("chain.key");
        let (first, created) = ChainKey::load_or_create(&path).unwrap();
        assert!(created);
        let (second, created) = ChainKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(
            first.link(&GENESIS, &[1; 32]),
            second.link(&GENESIS, &[1; 32])
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
