//! The newest events this store appended, kept in memory so that the readers following
//! the log in the same process (the projection runners, the payment saga, the seat map,
//! the engine's index of other nodes' shows) get them without a database round trip and a
//! second JSON decode each. In an on-sale a dozen such readers each read every event just
//! written; before this cache that was a dozen queries per commit (ADR 0015).
//!
//! A read is answered from here only when every event it would return is here: the
//! events after `after`, without a gap, up to the limit or the head. Anything else (an
//! older position, another process's append) goes to the database as before. One gap is
//! waited out instead: an append of this instance that has committed but not landed here
//! yet. On PostgreSQL the NOTIFY of a commit often reaches the head (and wakes the
//! readers) before the appending task has put its events here, and two appends finishing
//! at once land in either order; a reader that meets such an append waits for it to land
//! (`LANDING_WAIT_MS_MAX` at most) rather than read and decode it from the database.
//! Events enter only once their append has committed, so a cached event is always one the
//! database holds, with the same position, and the database's commit order is position
//! order on both backends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SubsecRound, Utc};

use tokio::sync::{Notify, watch};

use crate::chain::Link;
use crate::common::{advance_head, planned_events};
use crate::{AppendBatch, RecordedEvent};

/// Events kept: about 1.5 KiB each with their JSON, so a few MiB; at an on-sale's rate
/// a fraction of a second, which is as far as the in-process followers lag. A reader
/// further behind reads the database. (8,192 cost 10–17 MiB of RSS in the soak.)
pub(crate) const RECENT_EVENTS_MAX: usize = 4_096;

/// How long a reader waits for an append of this instance that is committing to land
/// here, before it reads the database instead. The appending task puts its events here
/// right after its COMMIT returns, so this is only reached when that task is starved.
pub(crate) const LANDING_WAIT_MS_MAX: u64 = 50;

#[derive(Default)]
pub(crate) struct RecentEvents {
    inner: Mutex<Batches>,
    /// Woken when a landing append lands or is given up.
    landed: Notify,
}

/// What the memory holds of a read.
pub(crate) enum Lookup {
    /// Every event the read returns.
    Found(Vec<RecordedEvent>),
    /// Not all of them: the database has to answer.
    Missing,
    /// The first one missing belongs to an append of this instance that is committing.
    Landing,
}

/// An append of this instance whose positions are known and whose COMMIT is under way:
/// readers that need those positions wait for it. Registered before the COMMIT (which
/// may be the moment the head moves, through NOTIFY), it ends when the events land here
/// (`committed`) or when this guard is dropped without that (a failed commit, a cancelled
/// append), and then readers go to the database.
pub(crate) struct Landing {
    recent: Arc<RecentEvents>,
    first: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let given_up = self
            .recent
            .inner
            .lock()
            .expect("recent events lock")
            .landing
            .remove(&self.first)
            .is_some();
        if given_up {
            self.recent.landed.notify_waiters();
        }
    }
}

#[derive(Default)]
struct Batches {
    /// Each committed append's events, by their first position. Appends may land here
    /// out of order (two writers finishing at once), so this is a map, not a queue.
    by_first: BTreeMap<u64, Arc<[RecordedEvent]>>,
    events: usize,
    /// Appends committing (first position to last) that have not landed yet.
    landing: BTreeMap<u64, u64>,
}

impl Batches {
    /// Whether `position` belongs to an append that is landing.
    fn is_landing(&self, position: u64) -> bool {
        self.landing
            .range(..=position)
            .next_back()
            .is_some_and(|(_, &last)| last >= position)
    }
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

    /// Announces an append of positions `first..=last` about to commit; see `Landing`.
    pub(crate) fn landing(self: &Arc<Self>, first: u64, last: u64) -> Landing {
        self.inner
            .lock()
            .expect("recent events lock")
            .landing
            .insert(first, last);
        Landing {
            recent: Arc::clone(self),
            first,
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
        batches.landing.remove(&first);
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
        drop(batches);
        self.landed.notify_waiters();
    }

    /// The events after `after`, at most `limit`, if every one of them up to the limit or
    /// to the head (whichever comes first) is here or lands within `LANDING_WAIT_MS_MAX`;
    /// `None` sends the reader to the database.
    pub(crate) async fn read_landed(
        &self,
        after: u64,
        limit: usize,
        head: &watch::Sender<u64>,
    ) -> Option<Vec<RecordedEvent>> {
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(LANDING_WAIT_MS_MAX);
        loop {
            // Registered before looking, so that a landing in between is not missed.
            let landed = self.landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            let known_head = *head.borrow();
            match self.lookup(after, limit, known_head) {
                Lookup::Found(events) => return Some(events),
                Lookup::Missing => return None,
                Lookup::Landing => {
                    if tokio::time::timeout_at(deadline, landed).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// `lookup` without waiting: the events, or `None` for anything not all here.
    #[cfg(test)]
    pub(crate) fn read(&self, after: u64, limit: usize, head: u64) -> Option<Vec<RecordedEvent>> {
        match self.lookup(after, limit, head) {
            Lookup::Found(events) => Some(events),
            Lookup::Missing | Lookup::Landing => None,
        }
    }

    /// What the memory holds of the events after `after`, at most `limit`, up to the
    /// limit or to `head` (whichever comes first).
    pub(crate) fn lookup(&self, after: u64, limit: usize, head: u64) -> Lookup {
        let wanted_end = head.min(after.saturating_add(limit as u64));
        if wanted_end <= after {
            return Lookup::Missing;
        }
        let mut pieces: Vec<Arc<[RecordedEvent]>> = Vec::new();
        {
            let batches = self.inner.lock().expect("recent events lock");
            let missing = |position: u64| {
                if batches.is_landing(position) {
                    Lookup::Landing
                } else {
                    Lookup::Missing
                }
            };
            // The batch holding `after + 1`, then each one starting where the last ended.
            // (`insert` keeps no empty batch.)
            let mut next = after + 1;
            let mut batch = batches.by_first.range(..=next).next_back().map(|(_, b)| b);
            while next <= wanted_end {
                let Some(held) = batch.filter(|b| b.last().is_some_and(|e| e.position >= next))
                else {
                    return missing(next);
                };
                pieces.push(Arc::clone(held));
                next = held.last().map_or(next, |e| e.position) + 1;
                batch = batches.by_first.get(&next);
            }
        }
        let newer = pieces.iter().flat_map(|piece| piece.iter());
        let held = pieces.iter().map(|piece| piece.len()).sum::<usize>();
        let mut events = Vec::with_capacity(held.min(limit));
        events.extend(newer.filter(|e| e.position > after).take(limit).cloned());
        Lookup::Found(events)
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_waits_for_an_append_of_its_own_that_is_landing() {
        let recent = Arc::new(RecentEvents::default());
        let head = watch::channel(0u64).0;
        recent.insert(events(1, 3));
        // 4..=6 committed (the head moved, as a NOTIFY moves it) but not landed yet.
        let landing = recent.landing(4, 6);
        advance_head(&head, 6);
        let reader = {
            let (recent, head) = (Arc::clone(&recent), head.clone());
            tokio::spawn(async move { positions(recent.read_landed(2, 10, &head).await) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(!reader.is_finished(), "the reader waits for 4..=6");
        recent.insert(events(4, 3));
        drop(landing);
        assert_eq!(reader.await.unwrap(), Some(vec![3, 4, 5, 6]));
        assert!(recent.inner.lock().unwrap().landing.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_landing_given_up_or_a_gap_of_another_process_sends_the_reader_to_the_database() {
        let recent = Arc::new(RecentEvents::default());
        let head = watch::channel(0u64).0;
        recent.insert(events(1, 3));
        advance_head(&head, 9);
        // 4..=6 are not this instance's: no wait at all.
        let started = std::time::Instant::now();
        assert_eq!(
            recent.read_landed(0, 10, &head).await.map(|e| e.len()),
            None
        );
        // 4..=6 are landing, and their commit fails: the reader goes as soon as the
        // landing is given up, not after the longest wait.
        let landing = recent.landing(4, 6);
        let reader = {
            let (recent, head) = (Arc::clone(&recent), head.clone());
            tokio::spawn(async move { recent.read_landed(0, 10, &head).await.map(|e| e.len()) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        drop(landing);
        assert_eq!(reader.await.unwrap(), None);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(LANDING_WAIT_MS_MAX),
            "took {:?}",
            started.elapsed()
        );
        // A landing that never ends is waited out for at most LANDING_WAIT_MS_MAX.
        let _stuck = recent.landing(4, 6);
        let started = std::time::Instant::now();
        assert_eq!(
            recent.read_landed(0, 10, &head).await.map(|e| e.len()),
            None
        );
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(LANDING_WAIT_MS_MAX),
            "{waited:?}"
        );
        // Events up to the head minus the landing append's are still answered when the
        // read stops before it.
        assert_eq!(
            positions(recent.read_landed(0, 3, &head).await),
            Some(vec![1, 2, 3])
        );
    }
}
