//! The newest events this store appended, kept in memory so that the readers following
//! the log in the same process (the projection runners, the payment saga, the seat map,
//! the engine's index of other nodes' shows) get them without a database round trip and a
//! second JSON decode each. In an on-sale a dozen such readers each read every event just
//! written; before this cache that was a dozen queries per commit (ADR 0015).
//!
//! A read is answered from here only when every event it would return is here: the
//! events after `after`, without a gap, up to the limit or the head. Anything else (an
//! older position, another process's append, a batch whose entry has not landed yet)
//! goes to the database as before. Events enter only once their append has committed, so
//! a cached event is always one the database holds, with the same position, and the
//! database's commit order is position order on both backends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SubsecRound, Utc};

use tokio::sync::watch;

use crate::chain::Link;
use crate::common::{advance_head, planned_events};
use crate::{AppendBatch, RecordedEvent};

/// Events kept: about 1.5 KiB each with their JSON, so a few MiB; at an on-sale's rate
/// a fraction of a second, which is as far as the in-process followers lag. A reader
/// further behind reads the database. (8,192 cost 10–17 MiB of RSS in the soak.)
pub(crate) const RECENT_EVENTS_MAX: usize = 4_096;

#[derive(Default)]
pub(crate) struct RecentEvents {
    inner: Mutex<Batches>,
}

#[derive(Default)]
struct Batches {
    /// Each committed append's events, by their first position. Appends may land here
    /// out of order (two writers finishing at once), so this is a map, not a queue.
    by_first: BTreeMap<u64, Arc<[RecordedEvent]>>,
    events: usize,
}

impl RecentEvents {
    /// Remembers a committed append, then moves the head past it: in that order, so that
    /// a reader woken by the head finds the events here. Both backends call this once their
    /// append has committed.
    pub(crate) fn committed(
        &self,
        batch: AppendBatch,
        first_position: u64,
        links: &[Link],
        head: &watch::Sender<u64>,
    ) {
        let events = recorded_events(batch, first_position, links);
        let last = events.last().map(|e| e.position);
        self.insert(events);
        if let Some(last) = last {
            advance_head(head, last);
        }
    }

    /// Remembers a committed append; `events` are contiguous positions.
    pub(crate) fn insert(&self, events: Vec<RecordedEvent>) {
        let Some(first) = events.first().map(|e| e.position) else {
            return;
        };
        debug_assert!(
            events
                .windows(2)
                .all(|w| w[1].position == w[0].position + 1),
            "an append's positions are contiguous"
        );
        let mut batches = self.inner.lock().expect("recent events lock");
        batches.events += events.len();
        if let Some(replaced) = batches.by_first.insert(first, events.into()) {
            batches.events -= replaced.len();
        }
        while batches.events > RECENT_EVENTS_MAX {
            let Some((_, oldest)) = batches.by_first.pop_first() else {
                break;
            };
            batches.events -= oldest.len();
        }
    }

    /// The events after `after`, at most `limit`, if every one of them up to the limit or
    /// to `head` (whichever comes first) is here; `None` sends the reader to the database.
    pub(crate) fn read(&self, after: u64, limit: usize, head: u64) -> Option<Vec<RecordedEvent>> {
        let wanted_end = head.min(after.saturating_add(limit as u64));
        if wanted_end <= after {
            return None;
        }
        let mut pieces: Vec<Arc<[RecordedEvent]>> = Vec::new();
        {
            let batches = self.inner.lock().expect("recent events lock");
            let mut next = after + 1;
            let (_, first) = batches.by_first.range(..=next).next_back()?;
            if first.last()?.position < next {
                return None;
            }
            pieces.push(Arc::clone(first));
            next = first.last()?.position + 1;
            while next <= wanted_end {
                let batch = batches.by_first.get(&next)?;
                pieces.push(Arc::clone(batch));
                next = batch.last()?.position + 1;
            }
        }
        let newer = pieces.iter().flat_map(|piece| piece.iter());
        let held = pieces.iter().map(|piece| piece.len()).sum::<usize>();
        let mut events = Vec::with_capacity(held.min(limit));
        events.extend(newer.filter(|e| e.position > after).take(limit).cloned());
        Some(events)
    }
}

/// The events of a committed append as the log returns them: with their positions from
/// `first_position`, their versions, their links, and the recorded time as stored (to
/// the microsecond on both backends).
fn recorded_events(batch: AppendBatch, first_position: u64, links: &[Link]) -> Vec<RecordedEvent> {
    let recorded_at: DateTime<Utc> = batch.recorded_at.trunc_subsecs(6);
    // `validate` bounded the versions by i64::MAX.
    let versions: Vec<u64> = planned_events(&batch).map(|p| p.version as u64).collect();
    let streams: Vec<String> = batch.streams.into_iter().map(|s| s.stream_id).collect();
    batch
        .events
        .into_iter()
        .zip(versions)
        .zip(links)
        .enumerate()
        .map(|(index, ((pending, version), link))| RecordedEvent {
            position: first_position + index as u64,
            partition_key: batch.partition_key.clone(),
            stream_id: streams[pending.stream].clone(),
            version,
            event_type: pending.event.event_type,
            schema_version: pending.event.schema_version,
            payload: pending.event.payload,
            metadata: pending.event.metadata,
            recorded_at,
            chain: Some(*link),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventMetadata;

    fn events(first: u64, count: u64) -> Vec<RecordedEvent> {
        (first..first + count)
            .map(|position| RecordedEvent {
                position,
                partition_key: "show".to_owned(),
                stream_id: format!("s-{position}"),
                version: 1,
                event_type: "SeatHeld".to_owned(),
                schema_version: 1,
                payload: serde_json::json!({ "p": position }),
                metadata: EventMetadata {
                    event_id: uuid::Uuid::nil(),
                    correlation_id: uuid::Uuid::nil(),
                    causation_id: None,
                    actor: "test".to_owned(),
                },
                recorded_at: DateTime::UNIX_EPOCH,
                chain: None,
            })
            .collect()
    }

    fn positions(read: Option<Vec<RecordedEvent>>) -> Option<Vec<u64>> {
        read.map(|events| events.iter().map(|e| e.position).collect())
    }

    #[test]
    fn answers_only_reads_it_holds_every_event_of() {
        let recent = RecentEvents::default();
        // Appends 4..=6 and 10..=11 landed, 7..=9 (another process's) did not; 12..=13
        // landed before 10..=11, as two writers finishing at once can.
        recent.insert(events(4, 3));
        recent.insert(events(12, 2));
        recent.insert(events(10, 2));
        let read = |after, limit, head| positions(recent.read(after, limit, head));
        assert_eq!(read(3, 10, 6), Some(vec![4, 5, 6]));
        assert_eq!(read(4, 1, 13), Some(vec![5]), "the limit");
        assert_eq!(read(5, 10, 6), Some(vec![6]), "from inside an append");
        assert_eq!(
            read(9, 10, 13),
            Some(vec![10, 11, 12, 13]),
            "across appends"
        );
        assert_eq!(read(9, 3, 13), Some(vec![10, 11, 12]));
        assert_eq!(read(3, 10, 13), None, "7..=9 are not here");
        assert_eq!(read(6, 10, 13), None, "7 is not here");
        assert_eq!(read(2, 10, 6), None, "3 is not here");
        assert_eq!(read(13, 10, 13), None, "nothing to read");
        assert_eq!(read(11, 10, 15), None, "14..=15 are not here yet");
        // Committed events past the head the reader saw may be returned, as the
        // database would.
        assert_eq!(read(9, 10, 11), Some(vec![10, 11]));
    }

    #[test]
    fn forgets_the_oldest_appends_beyond_its_size() {
        let recent = RecentEvents::default();
        let batch = 1_000u64;
        let appends = RECENT_EVENTS_MAX as u64 / batch + 2;
        for k in 0..appends {
            recent.insert(events(1 + k * batch, batch));
        }
        let head = appends * batch;
        let kept = recent.inner.lock().unwrap().events;
        assert!(kept <= RECENT_EVENTS_MAX, "{kept} kept");
        assert!(kept > RECENT_EVENTS_MAX - batch as usize, "{kept} kept");
        assert_eq!(recent.read(0, 10, head).map(|e| e.len()), None);
        let newest = positions(recent.read(head - 5, 10, head));
        assert_eq!(newest, Some((head - 4..=head).collect()));
    }
}
