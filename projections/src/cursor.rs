//! Opaque list cursors. A cursor names the last row of a page by the read model's sort
//! key, `(position, id)`: the log position that created the row and the row's id. The
//! position of a row never changes (a refund updates an order in place), so keyset
//! pagination over it returns every row once, and rows created while a client pages
//! appear at the top (newest first) without shifting the pages after it.
//!
//! The text is hex of `v1:{position}:{id}`: opaque to clients (the API contract says so),
//! trivially decodable for us, and versioned so the format can change.

const PREFIX: &str = "v1:";
/// Longest cursor text accepted; a cursor is a position and an id, far below this.
const CURSOR_CHARS_MAX: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub position: u64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        hex::encode(format!("{PREFIX}{}:{}", self.position, self.id))
    }

    /// `None` for text that is not a cursor this module made.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() > CURSOR_CHARS_MAX {
            return None;
        }
        let bytes = hex::decode(text).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (position, id) = text.strip_prefix(PREFIX)?.split_once(':')?;
        let position: u64 = position.parse().ok()?;
        if id.is_empty() || i64::try_from(position).is_err() {
            return None;
        }
        Some(Self {
            position,
            id: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let cursor = Cursor {
            position: 42,
            id: "ord_0123".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "zz",
            "00",
            &hex::encode("v2:1:x"),
            &hex::encode("v1:x:y"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
        assert_eq!(Cursor::decode(&hex::encode("v1:1:")), None);
        assert_eq!(Cursor::decode(&"0".repeat(CURSOR_CHARS_MAX + 2)), None);
    }
}
