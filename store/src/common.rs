//! Rules both backends share: what a valid append looks like, how the versions of an
//! append are planned, how stored metadata and limits are decoded, and how the head watch
//! only ever moves forward.

use std::collections::HashSet;

use tokio::sync::watch;

use crate::chain::{ChainKey, Content, Link};
use crate::{
    APPEND_EVENTS_MAX, AppendBatch, EventMetadata, READ_LIMIT_MAX, StoreError, StoreResult,
};

/// Longest stream id or partition key accepted; ids in the event model are a prefix and
/// one or two UUIDs, so anything near this is a bug in the caller, not a real id.
pub(crate) const ID_BYTES_MAX: usize = 512;

/// Checks a batch before it reaches the database, so that a malformed append is rejected
/// the same way on both backends and never takes the append lock.
pub(crate) fn validate(batch: &AppendBatch) -> StoreResult<()> {
    let invalid = |reason: String| Err(StoreError::InvalidAppend(reason));
    if batch.partition_key.is_empty() || batch.partition_key.len() > ID_BYTES_MAX {
        return invalid(format!("partition key must be 1..={ID_BYTES_MAX} bytes"));
    }
    if batch.streams.is_empty() {
        return invalid("no streams".to_owned());
    }
    let event_count = batch.event_count();
    if event_count > APPEND_EVENTS_MAX {
        return invalid(format!(
            "{event_count} events, at most {APPEND_EVENTS_MAX} per append"
        ));
    }
    let mut seen = HashSet::with_capacity(batch.streams.len());
    for stream in &batch.streams {
        if stream.stream_id.is_empty() || stream.stream_id.len() > ID_BYTES_MAX {
            return invalid(format!("stream id must be 1..={ID_BYTES_MAX} bytes"));
        }
        if !seen.insert(stream.stream_id.as_str()) {
            return invalid(format!("stream {} named twice", stream.stream_id));
        }
    }
    let mut per_stream = vec![0u64; batch.streams.len()];
    for event in &batch.events {
        let Some(count) = per_stream.get_mut(event.stream) else {
            return invalid(format!(
                "an event names stream #{} of {}",
                event.stream,
                batch.streams.len()
            ));
        };
        *count += 1;
        if event.event.event_type.is_empty() {
            return invalid(format!(
                "stream {} has an event without a type",
                batch.streams[event.stream].stream_id
            ));
        }
    }
    for (stream, count) in batch.streams.iter().zip(per_stream) {
        if count == 0 {
            return invalid(format!("stream {} has no events", stream.stream_id));
        }
        // Versions are stored as BIGINT; the last version of this append must fit.
        let last_version = stream.expected_version.checked_add(count);
        if last_version.is_none_or(|v| v > i64::MAX as u64) {
            return invalid(format!("stream {} version overflows", stream.stream_id));
        }
    }
    Ok(())
}

/// One event of a validated batch with the version it will get, in append order.
pub(crate) struct PlannedEvent<'a> {
    pub stream_id: &'a str,
    pub version: i64,
    pub event: &'a crate::NewEvent,
}

/// The events of a validated batch in the order given, with their versions: a stream at
/// expected version E gets E+1, E+2, … in that order, so versions stay gap-free.
pub(crate) fn planned_events(batch: &AppendBatch) -> impl Iterator<Item = PlannedEvent<'_>> {
    // `validate` has bounded every expected_version + count by i64::MAX.
    let mut next_version: Vec<i64> = batch
        .streams
        .iter()
        .map(|s| s.expected_version as i64 + 1)
        .collect();
    batch.events.iter().map(move |pending| {
        let version = next_version[pending.stream];
        next_version[pending.stream] += 1;
        PlannedEvent {
            stream_id: &batch.streams[pending.stream].stream_id,
            version,
            event: &pending.event,
        }
    })
}

/// The chain key of a store that appends, or the error of one opened to read only.
pub(crate) fn require_key(key: &Option<ChainKey>) -> StoreResult<&ChainKey> {
    key.as_ref().ok_or_else(|| {
        StoreError::Config("this store was opened without a chain key and can only read".to_owned())
    })
}

/// The content digest of every event of a validated batch, in append order; computed
/// before the append lock, so that under it only the short keyed links remain to do.
pub(crate) fn content_digests(batch: &AppendBatch, planned: &[PlannedEvent<'_>]) -> Vec<[u8; 32]> {
    planned
        .iter()
        .map(|p| {
            Content::of_new(
                &batch.partition_key,
                p.stream_id,
                p.version as u64,
                p.event,
                batch.recorded_at,
            )
            .digest()
        })
        .collect()
}

/// The links of a batch's events, continuing the partition's chain from `previous`.
pub(crate) fn chain_links(key: &ChainKey, previous: Link, digests: &[[u8; 32]]) -> Vec<Link> {
    let mut link = previous;
    digests
        .iter()
        .map(|digest| {
            link = key.link(&link, digest);
            link
        })
        .collect()
}

/// A stored link: 32 bytes, or absent.
pub(crate) fn decode_link(position: u64, raw: Option<Vec<u8>>) -> StoreResult<Option<Link>> {
    raw.map(|bytes| {
        Link::try_from(bytes.as_slice()).map_err(|_| StoreError::Corrupt {
            position,
            reason: format!("hash-chain link of {} bytes", bytes.len()),
        })
    })
    .transpose()
}

/// The expected version of every stream as the BIGINT the database compares against.
pub(crate) fn expected_version_i64(expected: u64) -> i64 {
    // `validate` has bounded it by i64::MAX.
    i64::try_from(expected).expect("validated expected version fits in i64")
}

/// A position or version bound from the caller as a BIGINT; nothing is stored beyond
/// i64::MAX, so saturating yields the correct (empty) answer.
pub(crate) fn saturating_i64(after: u64) -> i64 {
    i64::try_from(after).unwrap_or(i64::MAX)
}

/// The limit of a read as a SQL LIMIT, capped at `READ_LIMIT_MAX`.
pub(crate) fn read_limit(limit: usize) -> i64 {
    limit.min(READ_LIMIT_MAX) as i64
}

/// Moves the head watch forward, never back: notifications and local appends can arrive
/// in any order, and a reader woken for position N must never see the head drop below N.
pub(crate) fn advance_head(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|current| {
        if position > *current {
            *current = position;
            true
        } else {
            false
        }
    });
}

/// A stored position, which must be positive.
pub(crate) fn decode_position(raw: i64) -> StoreResult<u64> {
    match u64::try_from(raw) {
        Ok(position) if position >= 1 => Ok(position),
        _ => Err(StoreError::Corrupt {
            position: 0,
            reason: format!("position {raw} is not positive"),
        }),
    }
}

/// A stored stream version, which must be at least 1.
pub(crate) fn decode_version(position: u64, raw: i64) -> StoreResult<u64> {
    match u64::try_from(raw) {
        Ok(version) if version >= 1 => Ok(version),
        _ => Err(StoreError::Corrupt {
            position,
            reason: format!("version {raw} is below 1"),
        }),
    }
}

/// Stored metadata JSON.
pub(crate) fn decode_metadata(position: u64, text: &str) -> StoreResult<EventMetadata> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        position,
        reason: format!("metadata: {e}"),
    })
}

/// A stored checkpoint or head position, which may be 0 but never negative.
pub(crate) fn decode_stored_position(what: &str, raw: i64) -> StoreResult<u64> {
    u64::try_from(raw).map_err(|_| StoreError::Corrupt {
        position: 0,
        reason: format!("{what} {raw} is negative"),
    })
}

/// Converts a caller's checkpoint position to BIGINT.
pub(crate) fn checkpoint_position(position: u64) -> StoreResult<i64> {
    i64::try_from(position).map_err(|_| {
        StoreError::InvalidAppend(format!(
            "checkpoint position {position} exceeds the largest position"
        ))
    })
}

/// Asserts what an append promises about the positions it got: one row per event and
/// positions contiguous. Breaking it means the log is not what `AppendResult` claims, so
/// it panics (before commit, which rolls the transaction back) rather than commit.
pub(crate) fn assert_contiguous(first: i64, last: i64, count: i64, expected_count: usize) {
    assert_eq!(
        count, expected_count as i64,
        "append inserted {count} rows for {expected_count} events"
    );
    assert!(
        first >= 1,
        "append got a non-positive first position {first}"
    );
    assert_eq!(
        last - first + 1,
        count,
        "append positions {first}..={last} are not contiguous for {count} events"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppendBatch, NewEvent, StreamAppend};

    fn event() -> NewEvent {
        NewEvent {
            event_type: "SeatHeld".to_owned(),
            schema_version: 1,
            payload: serde_json::json!({}),
            metadata: EventMetadata {
                event_id: uuid::Uuid::nil(),
                correlation_id: uuid::Uuid::nil(),
                causation_id: None,
                actor: "system:test".to_owned(),
            },
        }
    }

    fn batch(streams: Vec<StreamAppend>) -> AppendBatch {
        AppendBatch::grouped("show-1", streams, chrono::Utc::now())
    }

    fn stream(id: &str, expected_version: u64, events: usize) -> StreamAppend {
        StreamAppend {
            stream_id: id.to_owned(),
            expected_version,
            events: vec![event(); events],
        }
    }

    #[test]
    fn versions_continue_from_expected_in_append_order() {
        let batch = batch(vec![stream("a", 0, 2), stream("b", 5, 1)]);
        validate(&batch).unwrap();
        let planned: Vec<_> = planned_events(&batch)
            .map(|p| (p.stream_id, p.version))
            .collect();
        assert_eq!(planned, vec![("a", 1), ("a", 2), ("b", 6)]);
    }

    #[test]
    fn interleaved_events_keep_their_order_and_each_stream_counts_on() {
        let mut batch = batch(vec![stream("a", 0, 2), stream("b", 5, 1)]);
        // a, b, a: the order given is the order stored.
        batch.events.swap(1, 2);
        validate(&batch).unwrap();
        let planned: Vec<_> = planned_events(&batch)
            .map(|p| (p.stream_id, p.version))
            .collect();
        assert_eq!(planned, vec![("a", 1), ("b", 6), ("a", 2)]);
        batch.events[0].stream = 7;
        assert!(validate(&batch).is_err());
    }

    #[test]
    fn rejects_malformed_batches() {
        let cases = [
            batch(vec![]),
            batch(vec![stream("a", 0, 0)]),
            batch(vec![stream("a", 0, 1), stream("a", 1, 1)]),
            batch(vec![stream("", 0, 1)]),
            batch(vec![stream("a", i64::MAX as u64, 1)]),
            batch(vec![stream("a", 0, APPEND_EVENTS_MAX + 1)]),
            AppendBatch {
                partition_key: String::new(),
                ..batch(vec![stream("a", 0, 1)])
            },
            AppendBatch {
                events: Vec::new(),
                ..batch(vec![stream("a", 0, 1)])
            },
        ];
        for case in cases {
            assert!(
                matches!(validate(&case), Err(StoreError::InvalidAppend(_))),
                "accepted {case:?}"
            );
        }
    }

    #[test]
    fn head_only_moves_forward() {
        let (tx, rx) = watch::channel(5);
        advance_head(&tx, 3);
        assert_eq!(*rx.borrow(), 5);
        advance_head(&tx, 9);
        assert_eq!(*rx.borrow(), 9);
    }
}
