//! One suite of event store tests, run against both backends.
//!
//! Every case is a function of an opened `Arc<dyn EventStore>` (and the database it came
//! from, for the cases that open a second instance or corrupt a row on purpose). The
//! `both_backends!` macro runs each case on a fresh SQLite file and, when `DATABASE_URL`
//! is set, on a fresh PostgreSQL database created for that test alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use boxoffice_store::chain::{ChainBreakReason, ChainKey, ChainVerifier};
use boxoffice_store::transactions;
use boxoffice_store::{
    APPEND_EVENTS_MAX, AppendBatch, AppendResult, EventMetadata, EventStore, NewEvent,
    RecordedEvent, StoreError, StreamAppend,
};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use sqlx::{Connection, Executor};
use uuid::Uuid;

/// A database made for one test, removed again when the test passes.
enum TestDb {
    Sqlite {
        dir: PathBuf,
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

impl TestDb {
    fn sqlite() -> Self {
        let dir =
            std::env::temp_dir().join(format!("boxoffice-store-test-{}", Uuid::new_v4().simple()));
        // The store creates the missing directory itself; the test relies on that.
        let url = format!(
            "sqlite://{}",
            dir.join("nested").join("events.db").display()
        );
        TestDb::Sqlite { dir, url }
    }

    async fn postgres() -> Option<Self> {
        let admin_url = std::env::var("DATABASE_URL").ok()?;
        let name = format!("boxoffice_test_{}", Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to DATABASE_URL");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");
        let url = with_database(&admin_url, &name);
        Some(TestDb::Postgres {
            admin_url,
            name,
            url,
        })
    }

    fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    async fn open(&self) -> Arc<dyn EventStore> {
        boxoffice_store::connect(self.url(), Some(key().clone()))
            .await
            .expect("open store")
    }

    /// Runs SQL straight against the database, for the cases that tamper with it.
    async fn execute_raw(&self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await?;
                conn.execute(sql).await?;
                conn.close().await
            }
            TestDb::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                conn.execute(sql).await?;
                conn.close().await
            }
        }
    }

    async fn cleanup(self) {
        match self {
            TestDb::Sqlite { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            TestDb::Postgres {
                admin_url, name, ..
            } => {
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .expect("connect to DATABASE_URL");
                // FORCE ends open connections, but a pool that reconnects in the same
                // moment makes the drop fail; a few bounded attempts get past that.
                let drop_sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                for attempt in 1..=5 {
                    match admin.execute(drop_sql.as_str()).await {
                        Ok(_) => break,
                        Err(e) if attempt == 5 => panic!("drop test database {name}: {e}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                let _ = admin.close().await;
            }
        }
    }
}

/// Runs a case to its end or its first failed assertion, so the database can be removed
/// either way and failed runs do not leave databases behind.
async fn catch_failure(case: impl std::future::Future<Output = ()>) -> std::thread::Result<()> {
    futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(case)).await
}

/// The same server URL with another database name.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = super::TestDb::sqlite();
                    let store = db.open().await;
                    assert_eq!(store.backend(), "sqlite");
                    // Remove the database even when the case fails, then pass the failure on.
                    let outcome = super::catch_failure(super::$case(store, &db)).await;
                    db.cleanup().await;
                    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(db) = super::TestDb::postgres().await else {
                        println!("skipped: DATABASE_URL not set");
                        return;
                    };
                    let store = db.open().await;
                    assert_eq!(store.backend(), "postgres");
                    // Remove the database even when the case fails, then pass the failure on.
                    let outcome = super::catch_failure(super::$case(store, &db)).await;
                    db.cleanup().await;
                    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                }
            )*
        }
    };
}

both_backends!(
    append_and_read_round_trip,
    multi_stream_append_is_atomic,
    conflict_when_expected_version_too_low_or_too_high,
    conflict_when_new_stream_already_exists,
    invalid_batches_are_rejected,
    read_partition_and_read_all_order_and_limits,
    read_range_slices_and_filters_by_type,
    checkpoints_save_load_overwrite,
    head_watch_advances_after_append,
    other_instances_appends_are_seen,
    concurrent_appends_tailer_sees_every_event_once,
    two_writers_same_stream_exactly_one_wins,
    corrupt_rows_are_reported,
    events_are_immutable,
    hash_chain_links_every_partition_across_instances,
    tampering_is_caught_and_named_by_position,
    recent_reads_equal_the_database,
);

// ---------------------------------------------------------------------------------------
// Builders

fn recorded_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 5, 6, 7).unwrap() + chrono::Duration::microseconds(123_456)
}

fn new_event(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload,
        metadata: EventMetadata {
            event_id: Uuid::now_v7(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: "system:test".to_owned(),
        },
    }
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| new_event("SeatHeld", json!({ "n": i })))
        .collect()
}

fn stream(stream_id: &str, expected_version: u64, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream_id: stream_id.to_owned(),
        expected_version,
        events,
    }
}

fn batch(partition_key: &str, streams: Vec<StreamAppend>) -> AppendBatch {
    AppendBatch::grouped(partition_key, streams, recorded_at())
}

async fn append_one(
    store: &Arc<dyn EventStore>,
    stream_id: &str,
    expected: u64,
    n: usize,
) -> AppendResult {
    store
        .append(batch(
            "show-1",
            vec![stream(stream_id, expected, events(n))],
        ))
        .await
        .expect("append")
}

async fn all_events(store: &Arc<dyn EventStore>) -> Vec<RecordedEvent> {
    store
        .read_all(0, boxoffice_store::READ_LIMIT_MAX)
        .await
        .expect("read_all")
}

fn assert_conflict(result: Result<AppendResult, StoreError>, expected_stream: &str) {
    match result {
        Err(StoreError::Conflict { stream_id }) => assert_eq!(stream_id, expected_stream),
        other => panic!("expected a conflict on {expected_stream}, got {other:?}"),
    }
}

/// Waits (bounded) until the watch shows at least `position`.
async fn wait_for_head(rx: &mut tokio::sync::watch::Receiver<u64>, position: u64) {
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        rx.wait_for(|head| *head >= position).await.map(|_| ())
    })
    .await;
    match reached {
        Ok(result) => result.expect("head watch closed"),
        Err(_) => panic!(
            "head watch did not reach {position}; it is at {}",
            *rx.borrow()
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Cases

async fn append_and_read_round_trip(store: Arc<dyn EventStore>, _db: &TestDb) {
    // Payloads that a JSON round trip through the database could mangle.
    let payloads = [
        json!({ "reservation_id": "res_1", "until": "2026-11-23T05:21:07Z", "seats": ["A1", "A2"] }),
        json!({ "big": 9_007_199_254_740_993_u64, "neg": i64::MIN, "float": 0.1, "exp": 1.5e300, "zero": 0 }),
        json!({ "text": "quote \" backslash \\ newline \n tab \t unicode é 🎟 \u{0001}", "nested": { "a": [1, { "b": null }] } }),
        json!("just a string"),
        json!([1, 2, 3]),
    ];
    let mut a_events: Vec<NewEvent> = payloads[..3]
        .iter()
        .map(|p| new_event("ReservationPlaced", p.clone()))
        .collect();
    a_events[1].schema_version = 7;
    a_events[2].metadata.causation_id = Some(Uuid::now_v7());
    let b_events: Vec<NewEvent> = payloads[3..]
        .iter()
        .map(|p| new_event("SeatHeld", p.clone()))
        .collect();
    // Sub-microsecond digits are dropped by both backends alike.
    let at = recorded_at() + chrono::Duration::nanoseconds(789);
    let appended = AppendBatch::grouped(
        "show-1",
        vec![
            stream("reservation-a", 0, a_events.clone()),
            stream("seat-show-1-b", 0, b_events.clone()),
        ],
        at,
    );

    assert_eq!(store.head_position().await.unwrap(), 0);
    let result = store.append(appended).await.expect("append");
    assert_eq!(
        result.last_position - result.first_position + 1,
        5,
        "positions are contiguous"
    );
    assert_eq!(store.head_position().await.unwrap(), result.last_position);

    let read = all_events(&store).await;
    let expected: Vec<(&str, u64, &NewEvent)> = a_events
        .iter()
        .enumerate()
        .map(|(i, e)| ("reservation-a", i as u64 + 1, e))
        .chain(
            b_events
                .iter()
                .enumerate()
                .map(|(i, e)| ("seat-show-1-b", i as u64 + 1, e)),
        )
        .collect();
    assert_eq!(read.len(), expected.len());
    for (i, (event, (stream_id, version, new))) in read.iter().zip(&expected).enumerate() {
        assert_eq!(
            event.position,
            result.first_position + i as u64,
            "positions follow the given order"
        );
        assert_eq!(event.partition_key, "show-1");
        assert_eq!(event.stream_id, *stream_id);
        assert_eq!(event.version, *version);
        assert_eq!(event.event_type, new.event_type);
        assert_eq!(event.schema_version, new.schema_version);
        assert_eq!(event.payload, new.payload);
        assert_eq!(event.metadata, new.metadata);
        assert_eq!(
            event.recorded_at,
            recorded_at(),
            "recorded_at is kept to the microsecond"
        );
    }

    let stream_a = store.read_stream("reservation-a", 0).await.unwrap();
    assert_eq!(stream_a, read[..3].to_vec());
    let stream_a_tail = store.read_stream("reservation-a", 1).await.unwrap();
    assert_eq!(
        stream_a_tail.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(
        store
            .read_stream("reservation-a", 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_stream("no-such-stream", 0)
            .await
            .unwrap()
            .is_empty()
    );

    // A second append continues the stream's versions and the log's positions.
    let second = append_one(&store, "reservation-a", 3, 2).await;
    assert!(second.first_position > result.last_position);
    assert_eq!(second.last_position, second.first_position + 1);
    let versions: Vec<u64> = store
        .read_stream("reservation-a", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    store.ping().await.expect("ping");
}

async fn multi_stream_append_is_atomic(store: Arc<dyn EventStore>, _db: &TestDb) {
    append_one(&store, "a", 0, 2).await;
    let seeded = append_one(&store, "b", 0, 1).await;
    let before = all_events(&store).await;

    // a is current, b is stale (it is at 1, not 0), c is new: nothing may be written.
    let result = store
        .append(batch(
            "show-1",
            vec![
                stream("a", 2, events(3)),
                stream("b", 0, events(1)),
                stream("c", 0, events(2)),
            ],
        ))
        .await;
    assert_conflict(result, "b");
    assert_eq!(
        all_events(&store).await,
        before,
        "a rejected append writes nothing"
    );
    assert!(store.read_stream("c", 0).await.unwrap().is_empty());
    assert_eq!(store.read_stream("a", 0).await.unwrap().len(), 2);
    assert_eq!(store.head_position().await.unwrap(), seeded.last_position);

    // With several stale streams (a behind, b ahead), one of them is reported.
    let result = store
        .append(batch(
            "show-1",
            vec![
                stream("c", 0, events(1)),
                stream("a", 1, events(1)),
                stream("b", 5, events(1)),
            ],
        ))
        .await;
    match result {
        Err(StoreError::Conflict { stream_id }) => {
            assert!(stream_id == "a" || stream_id == "b", "{stream_id}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(store.read_stream("c", 0).await.unwrap().is_empty());

    // With every version right, all streams are written together.
    let ok = store
        .append(batch(
            "show-1",
            vec![
                stream("a", 2, events(1)),
                stream("b", 1, events(1)),
                stream("c", 0, events(2)),
            ],
        ))
        .await
        .expect("append");
    assert_eq!(ok.last_position - ok.first_position + 1, 4);
    assert_eq!(all_events(&store).await.len(), before.len() + 4);
}

async fn conflict_when_expected_version_too_low_or_too_high(
    store: Arc<dyn EventStore>,
    _db: &TestDb,
) {
    append_one(&store, "s", 0, 3).await;
    assert_conflict(
        store
            .append(batch("show-1", vec![stream("s", 2, events(1))]))
            .await,
        "s",
    );
    assert_conflict(
        store
            .append(batch("show-1", vec![stream("s", 4, events(1))]))
            .await,
        "s",
    );
    assert_conflict(
        store
            .append(batch("show-1", vec![stream("s", 100, events(1))]))
            .await,
        "s",
    );
    assert_conflict(
        store
            .append(batch("show-1", vec![stream("new", 1, events(1))]))
            .await,
        "new",
    );
    append_one(&store, "s", 3, 1).await;
    let versions: Vec<u64> = store
        .read_stream("s", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
}

async fn conflict_when_new_stream_already_exists(store: Arc<dyn EventStore>, _db: &TestDb) {
    append_one(&store, "seat-1", 0, 1).await;
    assert_conflict(
        store
            .append(batch("show-1", vec![stream("seat-1", 0, events(1))]))
            .await,
        "seat-1",
    );
    assert_eq!(store.read_stream("seat-1", 0).await.unwrap().len(), 1);
}

async fn invalid_batches_are_rejected(store: Arc<dyn EventStore>, _db: &TestDb) {
    let cases = vec![
        ("no streams", batch("show-1", vec![])),
        (
            "a stream without events",
            batch(
                "show-1",
                vec![stream("a", 0, events(1)), stream("b", 0, vec![])],
            ),
        ),
        (
            "a stream named twice",
            batch(
                "show-1",
                vec![stream("a", 0, events(1)), stream("a", 1, events(1))],
            ),
        ),
        (
            "an empty stream id",
            batch("show-1", vec![stream("", 0, events(1))]),
        ),
        (
            "an empty partition key",
            batch("", vec![stream("a", 0, events(1))]),
        ),
        (
            "too many events",
            batch(
                "show-1",
                vec![stream("a", 0, events(APPEND_EVENTS_MAX + 1))],
            ),
        ),
        (
            "a version beyond BIGINT",
            batch("show-1", vec![stream("a", i64::MAX as u64, events(1))]),
        ),
    ];
    for (what, case) in cases {
        match store.append(case).await {
            Err(StoreError::InvalidAppend(_)) => {}
            other => panic!("{what}: expected InvalidAppend, got {other:?}"),
        }
    }
    assert!(
        all_events(&store).await.is_empty(),
        "a rejected batch writes nothing"
    );
    assert_eq!(store.head_position().await.unwrap(), 0);

    // The largest allowed batch goes through whole.
    let max = store
        .append(batch(
            "show-1",
            vec![
                stream("a", 0, events(APPEND_EVENTS_MAX - 1)),
                stream("b", 0, events(1)),
            ],
        ))
        .await
        .expect("a batch of APPEND_EVENTS_MAX events");
    assert_eq!(
        max.last_position - max.first_position + 1,
        APPEND_EVENTS_MAX as u64
    );
}

async fn read_partition_and_read_all_order_and_limits(store: Arc<dyn EventStore>, _db: &TestDb) {
    let mut p1 = Vec::new();
    let mut p2 = Vec::new();
    for round in 0..5u64 {
        let r1 = store
            .append(batch(
                "show-1",
                vec![stream("seat-show-1-a", round * 2, events(2))],
            ))
            .await
            .unwrap();
        p1.extend(r1.first_position..=r1.last_position);
        let r2 = store
            .append(batch(
                "show-2",
                vec![stream("seat-show-2-a", round, events(1))],
            ))
            .await
            .unwrap();
        p2.extend(r2.first_position..=r2.last_position);
    }
    let positions =
        |events: &[RecordedEvent]| events.iter().map(|e| e.position).collect::<Vec<_>>();

    let all_p1 = store.read_partition("show-1", 0, 100).await.unwrap();
    assert_eq!(positions(&all_p1), p1);
    assert!(all_p1.iter().all(|e| e.partition_key == "show-1"));
    assert_eq!(
        positions(&store.read_partition("show-2", 0, 100).await.unwrap()),
        p2
    );
    assert_eq!(
        positions(&store.read_partition("show-1", 0, 3).await.unwrap()),
        p1[..3]
    );
    assert_eq!(
        positions(&store.read_partition("show-1", p1[2], 3).await.unwrap()),
        p1[3..6]
    );
    assert_eq!(
        positions(&store.read_partition("show-1", p1[9], 3).await.unwrap()),
        Vec::<u64>::new()
    );
    assert!(
        store
            .read_partition("show-1", 0, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_partition("show-9", 0, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // Paging through the global log in small pages reconstructs it exactly.
    let everything = positions(&all_events(&store).await);
    let mut expected: Vec<u64> = p1.iter().chain(&p2).copied().collect();
    expected.sort_unstable();
    assert_eq!(everything, expected);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = last.position;
        paged.extend(positions(&page));
    }
    assert_eq!(paged, everything);
    assert!(store.read_all(0, 0).await.unwrap().is_empty());
    assert!(store.read_all(u64::MAX, 10).await.unwrap().is_empty());

    assert_eq!(
        store.partitions().await.unwrap(),
        vec!["show-1".to_owned(), "show-2".to_owned()]
    );
}

async fn read_range_slices_and_filters_by_type(store: Arc<dyn EventStore>, _db: &TestDb) {
    // 30 events of three types over two partitions, appended in 10 batches.
    let types = ["SeatHeld", "SeatReleased", "WaitlistJoined"];
    for round in 0..10u64 {
        let partition = if round % 2 == 0 { "show-1" } else { "show-2" };
        let batch_events = (0..3)
            .map(|i| {
                new_event(
                    types[(round as usize + i) % 3],
                    json!({ "round": round, "i": i }),
                )
            })
            .collect();
        store
            .append(batch(
                partition,
                vec![stream(&format!("stream-{round}"), 0, batch_events)],
            ))
            .await
            .unwrap();
    }
    let everything = all_events(&store).await;
    assert_eq!(everything.len(), 30);
    let head = store.head_position().await.unwrap();
    let positions =
        |events: &[RecordedEvent]| events.iter().map(|e| e.position).collect::<Vec<_>>();
    let within = |after: u64, until: u64, wanted: Option<&[&str]>| {
        everything
            .iter()
            .filter(|e| e.position > after && e.position <= until)
            .filter(|e| wanted.is_none_or(|w| w.contains(&e.event_type.as_str())))
            .map(|e| e.position)
            .collect::<Vec<_>>()
    };

    // Unfiltered, a range is the log between its bounds, events whole.
    let all = store.read_range(0, head, None, 100).await.unwrap();
    assert_eq!(all, everything);
    let (a, b) = (everything[4].position, everything[17].position);
    assert_eq!(
        positions(&store.read_range(a, b, None, 100).await.unwrap()),
        within(a, b, None)
    );
    // The limit keeps the first events of the range.
    assert_eq!(
        positions(&store.read_range(a, b, None, 5).await.unwrap()),
        within(a, b, None)[..5]
    );

    // Filtered: only the types asked for, in log order.
    let wanted: &[&str] = &["SeatReleased", "WaitlistJoined"];
    let filtered = store.read_range(0, head, Some(wanted), 100).await.unwrap();
    assert_eq!(positions(&filtered), within(0, head, Some(wanted)));
    assert_eq!(filtered.len(), 20);
    assert!(
        filtered
            .iter()
            .all(|e| wanted.contains(&e.event_type.as_str()))
    );
    // Slices of 7 positions, put together, give the same events as one read.
    let mut sliced = Vec::new();
    let mut after = 0;
    while after < head {
        let until = (after + 7).min(head);
        sliced.extend(
            store
                .read_range(after, until, Some(wanted), 7)
                .await
                .unwrap(),
        );
        after = until;
    }
    assert_eq!(sliced, filtered);

    // Empty ranges, no types, a zero limit.
    assert!(store.read_range(b, a, None, 10).await.unwrap().is_empty());
    assert!(store.read_range(a, a, None, 10).await.unwrap().is_empty());
    assert!(
        store
            .read_range(0, head, Some(&[]), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read_range(0, head, None, 0).await.unwrap().is_empty());
    assert!(
        store
            .read_range(0, head, Some(&["NoSuchType"]), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Counting.
    assert_eq!(store.count_until(head).await.unwrap(), 30);
    assert_eq!(store.count_until(u64::MAX).await.unwrap(), 30);
    assert_eq!(store.count_until(0).await.unwrap(), 0);
    assert_eq!(
        store.count_until(b).await.unwrap(),
        within(0, b, None).len() as u64
    );
}

async fn checkpoints_save_load_overwrite(store: Arc<dyn EventStore>, _db: &TestDb) {
    assert_eq!(store.load_checkpoint("projection:seats").await.unwrap(), 0);
    store.save_checkpoint("projection:seats", 42).await.unwrap();
    assert_eq!(store.load_checkpoint("projection:seats").await.unwrap(), 42);
    store.save_checkpoint("projection:seats", 7).await.unwrap();
    assert_eq!(
        store.load_checkpoint("projection:seats").await.unwrap(),
        7,
        "a checkpoint can be reset"
    );
    store
        .save_checkpoint("saga:payment", 1_000_000)
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("saga:payment").await.unwrap(),
        1_000_000
    );
    assert_eq!(
        store.load_checkpoint("projection:seats").await.unwrap(),
        7,
        "consumers are independent"
    );
    assert!(
        store
            .save_checkpoint("projection:seats", u64::MAX)
            .await
            .is_err()
    );
}

async fn head_watch_advances_after_append(store: Arc<dyn EventStore>, _db: &TestDb) {
    let mut rx = store.subscribe_head();
    assert_eq!(*rx.borrow_and_update(), 0);
    let first = append_one(&store, "a", 0, 3).await;
    assert!(
        rx.has_changed().unwrap(),
        "the local append updates the watch before returning"
    );
    assert_eq!(*rx.borrow_and_update(), first.last_position);
    let second = append_one(&store, "a", 3, 1).await;
    wait_for_head(&mut rx, second.last_position).await;
    assert_eq!(*rx.borrow(), second.last_position);
    // A rejected append does not move it.
    let _ = store
        .append(batch("show-1", vec![stream("a", 0, events(1))]))
        .await;
    assert!(!rx.has_changed().unwrap());
}

/// A second instance on the same database (another process in production): on PostgreSQL
/// its appends reach this instance's watch through NOTIFY; on both, reads see them.
async fn other_instances_appends_are_seen(store: Arc<dyn EventStore>, db: &TestDb) {
    let other = db.open().await;
    let mut rx = store.subscribe_head();
    let appended = append_one(&other, "from-other", 0, 2).await;
    assert_eq!(store.head_position().await.unwrap(), appended.last_position);
    assert_eq!(store.read_stream("from-other", 0).await.unwrap().len(), 2);
    if store.backend() == "postgres" {
        // Head updates arrive without this instance reading anything (head_position above
        // also advances it, so append again and wait on the notification alone).
        let again = append_one(&other, "from-other", 2, 1).await;
        wait_for_head(&mut rx, again.last_position).await;
    }
    // And the other way round, with a fresh stream.
    let mine = append_one(&store, "from-me", 0, 1).await;
    assert_eq!(other.head_position().await.unwrap(), mine.last_position);
}

/// Sixteen writers append small batches concurrently, some of them fighting over shared
/// streams, while a tailer follows the global log with `read_all(checkpoint, 500)`. The
/// tailer must see every committed event exactly once in strictly increasing position
/// order: with positions assigned out of commit order (a bigserial without the append
/// lock), it moves its checkpoint past an event that commits later and never sees it.
async fn concurrent_appends_tailer_sees_every_event_once(store: Arc<dyn EventStore>, _db: &TestDb) {
    const WRITERS: usize = 16;
    const APPENDS_PER_WRITER: usize = 60;
    const SHARED_STREAMS: usize = 3;
    const CONFLICT_RETRIES_MAX: usize = 10_000;

    // Tasks live in JoinSets, which abort them when dropped: if an assertion fails, the
    // tailer and the other writers stop instead of running on against a dropped database.
    let writers_done = Arc::new(AtomicBool::new(false));
    let mut tailer = tokio::task::JoinSet::new();
    {
        let store = Arc::clone(&store);
        let writers_done = Arc::clone(&writers_done);
        tailer.spawn(async move {
            let mut checkpoint = 0u64;
            let mut seen = Vec::new();
            let mut reads = 0usize;
            loop {
                // Read the flag before reading the log: once the writers are done and a read
                // after that comes back empty, nothing is left to see.
                let done = writers_done.load(Ordering::SeqCst);
                let page = store
                    .read_all(checkpoint, 500)
                    .await
                    .expect("tailer read_all");
                reads += 1;
                for event in &page {
                    assert!(
                        event.position > checkpoint,
                        "position {} not above {checkpoint}",
                        event.position
                    );
                    checkpoint = event.position;
                    seen.push((event.position, event.stream_id.clone(), event.version));
                }
                if page.is_empty() {
                    if done {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            (seen, reads)
        });
    }

    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.spawn(async move {
            // A small deterministic generator, so a failure can be replayed.
            let mut rng =
                0x9E37_79B9_7F4A_7C15u64 ^ (writer as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let own: Vec<String> = (0..4).map(|k| format!("own-{writer}-{k}")).collect();
            let mut own_versions = [0u64; 4];
            let mut shared_versions = [0u64; SHARED_STREAMS];
            let mut committed: Vec<AppendResult> = Vec::new();
            let mut conflicts = 0usize;
            for _ in 0..APPENDS_PER_WRITER {
                let k = next(4) as usize;
                let own_count = 1 + next(3) as usize;
                let shared = (next(3) == 0).then(|| next(SHARED_STREAMS as u64) as usize);
                let mut attempts = 0;
                loop {
                    let mut streams = vec![stream(&own[k], own_versions[k], events(own_count))];
                    if let Some(j) = shared {
                        streams.push(stream(
                            &format!("shared-{j}"),
                            shared_versions[j],
                            events(1),
                        ));
                    }
                    match store.append(batch("show-1", streams)).await {
                        Ok(result) => {
                            own_versions[k] += own_count as u64;
                            if let Some(j) = shared {
                                shared_versions[j] += 1;
                            }
                            let expected_events = own_count as u64 + u64::from(shared.is_some());
                            assert_eq!(
                                result.last_position - result.first_position + 1,
                                expected_events
                            );
                            committed.push(result);
                            break;
                        }
                        Err(StoreError::Conflict { stream_id }) => {
                            let j = shared.expect("only shared streams are contended");
                            assert_eq!(stream_id, format!("shared-{j}"));
                            conflicts += 1;
                            attempts += 1;
                            assert!(
                                attempts < CONFLICT_RETRIES_MAX,
                                "writer {writer} starved on shared-{j}"
                            );
                            let current =
                                store.read_stream(&stream_id, 0).await.expect("read_stream");
                            shared_versions[j] = current.last().map_or(0, |e| e.version);
                        }
                        Err(e) => panic!("writer {writer}: {e}"),
                    }
                }
            }
            (committed, conflicts)
        });
    }
    let mut committed = BTreeSet::new();
    let mut conflicts = 0;
    while let Some(task) = writers.join_next().await {
        let (results, task_conflicts) = task.expect("writer task");
        conflicts += task_conflicts;
        for result in results {
            committed.extend(result.first_position..=result.last_position);
        }
    }
    writers_done.store(true, Ordering::SeqCst);
    let (seen, reads) = tailer
        .join_next()
        .await
        .expect("one tailer")
        .expect("tailer task");

    let seen_positions: Vec<u64> = seen.iter().map(|(p, _, _)| *p).collect();
    let seen_set: BTreeSet<u64> = seen_positions.iter().copied().collect();
    assert_eq!(
        seen_set.len(),
        seen_positions.len(),
        "the tailer saw an event twice"
    );
    let missed: Vec<_> = committed.difference(&seen_set).take(20).collect();
    assert!(
        missed.is_empty(),
        "the tailer skipped committed events at positions {missed:?} (after {reads} reads)"
    );
    assert_eq!(
        seen_set, committed,
        "the tailer saw positions no append reported"
    );
    let log: BTreeSet<u64> = all_events(&store)
        .await
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(log, committed);

    // Every stream's versions are gap-free from 1, and increase with position.
    let mut streams: HashMap<&str, Vec<u64>> = HashMap::new();
    for (_, stream_id, version) in &seen {
        streams.entry(stream_id).or_default().push(*version);
    }
    for (stream_id, versions) in &streams {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, &expected, "versions of {stream_id}");
        let stored: Vec<u64> = store
            .read_stream(stream_id, 0)
            .await
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(stored, expected, "read_stream of {stream_id}");
    }
    println!(
        "{}: {} events in {} appends by {WRITERS} writers, {conflicts} conflicts retried, tailer read {reads} times",
        store.backend(),
        committed.len(),
        WRITERS * APPENDS_PER_WRITER
    );
}

/// Two store instances (two pools, or two writer connections) race to extend the same
/// stream from the same version, many times over: exactly one wins each round.
async fn two_writers_same_stream_exactly_one_wins(store: Arc<dyn EventStore>, db: &TestDb) {
    const ROUNDS: u64 = 25;
    let other = db.open().await;
    let mut wins = BTreeMap::new();
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let race = |store: Arc<dyn EventStore>, barrier: Arc<tokio::sync::Barrier>| {
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(batch(
                        "show-1",
                        vec![stream("seat-contended", round, events(1))],
                    ))
                    .await
            })
        };
        let a = race(Arc::clone(&store), Arc::clone(&barrier));
        let b = race(Arc::clone(&other), barrier);
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        match (&a, &b) {
            (Ok(_), Err(StoreError::Conflict { stream_id }))
            | (Err(StoreError::Conflict { stream_id }), Ok(_)) => {
                assert_eq!(stream_id, "seat-contended");
                *wins
                    .entry(if a.is_ok() { "first" } else { "second" })
                    .or_insert(0) += 1;
            }
            _ => panic!("round {round}: expected exactly one winner, got {a:?} and {b:?}"),
        }
    }
    let versions: Vec<u64> = store
        .read_stream("seat-contended", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=ROUNDS).collect::<Vec<_>>());
    println!("{}: winners per instance {wins:?}", store.backend());
}

/// A row that does not decode is reported as corrupt with its position, not skipped and
/// not a panic.
async fn corrupt_rows_are_reported(store: Arc<dyn EventStore>, db: &TestDb) {
    let good = append_one(&store, "good", 0, 1).await;
    let now = match store.backend() {
        "postgres" => "now()",
        _ => "'2026-11-23T05:06:07.000000Z'",
    };
    db.execute_raw(&format!(
        "INSERT INTO events (partition_key, stream_id, version, event_type, schema_version, payload, metadata, recorded_at)
         VALUES ('show-1', 'bad', 1, 'SeatHeld', 1, '{{}}', '{{\"actor\": 5}}', {now})"
    ))
    .await
    .expect("insert a corrupt row");
    // The row came from outside, so this instance's head has not moved (a reader up to
    // its head may be answered from memory); reading the head moves it.
    assert_eq!(store.head_position().await.unwrap(), good.last_position + 1);
    match store.read_all(0, 10).await {
        Err(StoreError::Corrupt { position, reason }) => {
            assert_eq!(position, good.last_position + 1);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.read_stream("bad", 0).await,
        Err(StoreError::Corrupt { .. })
    ));
    // Rows before it still read.
    assert_eq!(store.read_all(0, 1).await.unwrap().len(), 1);
}

/// Rule 7: the schema refuses to change or delete an event.
async fn events_are_immutable(store: Arc<dyn EventStore>, db: &TestDb) {
    append_one(&store, "a", 0, 1).await;
    assert!(
        db.execute_raw("UPDATE events SET event_type = 'Changed'")
            .await
            .is_err()
    );
    assert!(db.execute_raw("DELETE FROM events").await.is_err());
    assert_eq!(all_events(&store).await[0].event_type, "SeatHeld");
}

/// The key every store of this test binary chains with.
fn key() -> &'static ChainKey {
    static KEY: std::sync::LazyLock<ChainKey> = std::sync::LazyLock::new(ChainKey::generate);
    &KEY
}

/// Every break the verifier finds in the whole log, by position.
async fn chain_breaks(store: &Arc<dyn EventStore>) -> Vec<(u64, ChainBreakReason)> {
    let mut verifier = ChainVerifier::new(key().clone());
    all_events(store)
        .await
        .iter()
        .filter_map(|e| verifier.check(e).err())
        .map(|b| (b.position, b.reason))
        .collect()
}

/// Interleaved appends to two partitions, some by a second store instance, with JSON
/// whose key order and characters the backends store their own way: every event carries
/// a link, and the whole log verifies.
async fn hash_chain_links_every_partition_across_instances(
    store: Arc<dyn EventStore>,
    db: &TestDb,
) {
    let other = db.open().await;
    let odd = json!({"zeta": 1, "alpha": {"b": "ü\"\\", "a": [3, 2, 1]}, "n": null, "big": 9_007_199_254_740_993_u64});
    for round in 0..6u64 {
        let writer = if round % 2 == 0 { &store } else { &other };
        for partition in ["show-a", "show-b"] {
            writer
                .append(batch(
                    partition,
                    vec![
                        stream(
                            &format!("{partition}-x"),
                            round,
                            vec![new_event("SeatHeld", odd.clone())],
                        ),
                        stream(&format!("{partition}-{round}"), 0, events(2)),
                    ],
                ))
                .await
                .expect("append");
        }
    }
    let all = all_events(&store).await;
    assert_eq!(all.len(), 36);
    assert!(
        all.iter().all(|e| e.chain.is_some()),
        "an event without a link"
    );
    assert_eq!(chain_breaks(&store).await, vec![]);
    // A different key does not verify a single event.
    let mut stranger = ChainVerifier::new(ChainKey::generate());
    assert!(all.iter().all(|e| stranger.check(e).is_err()));
    // A store opened without the key reads, but cannot append.
    let reader = boxoffice_store::connect(db.url(), None)
        .await
        .expect("open to read");
    assert_eq!(reader.read_all(0, 100).await.unwrap().len(), 36);
    assert!(matches!(
        reader
            .append(batch("show-a", vec![stream("show-a-y", 0, events(1))]))
            .await,
        Err(StoreError::Config(_))
    ));
}

/// `read_all` answers this instance's recent appends from memory (ADR 0015). Every read,
/// whatever its start and limit, must equal what the database returns: the same
/// positions, versions, payloads (JSON the database stores its own way), metadata, links,
/// and times to the microsecond, also where another instance's appends leave gaps in
/// what this one remembers.
async fn recent_reads_equal_the_database(store: Arc<dyn EventStore>, db: &TestDb) {
    let other = db.open().await;
    let odd = json!({"zeta": 1, "alpha": {"b": "ü\"\\\t", "a": [3, 2, 1]}, "n": null,
        "big": 9_007_199_254_740_993_u64, "neg": i64::MIN, "float": 0.1, "exp": 1.5e300});
    // Nanoseconds, which both backends store to the microsecond.
    let at = recorded_at() + chrono::Duration::nanoseconds(789);
    for round in 0..8u64 {
        let writer = if round % 3 == 2 { &other } else { &store };
        for partition in ["show-a", "show-b"] {
            let mut first = vec![new_event("SeatHeld", odd.clone())];
            first[0].metadata.causation_id = Some(Uuid::now_v7());
            let streams = vec![
                stream(&format!("{partition}-x"), round, first),
                stream(
                    &format!("{partition}-{round}"),
                    0,
                    events(1 + round as usize % 3),
                ),
            ];
            writer
                .append(AppendBatch::grouped(partition, streams, at))
                .await
                .expect("append");
        }
    }
    let head = store.head_position().await.unwrap();
    let from_database = |after: u64, limit: usize| {
        let store = Arc::clone(&store);
        async move {
            store
                .read_range(after, u64::MAX, None, limit)
                .await
                .unwrap()
        }
    };
    assert_eq!(from_database(0, 1000).await.len() as u64, head);
    for after in 0..=head {
        for limit in [1, 2, 3, 7, 1000] {
            let read = store.read_all(after, limit).await.unwrap();
            assert_eq!(
                read,
                from_database(after, limit).await,
                "read_all({after}, {limit})"
            );
        }
    }
}

/// Someone with write access to the database but not the key edits one event, removes
/// one and swaps two: each is reported at the first position whose link no longer holds.
async fn tampering_is_caught_and_named_by_position(store: Arc<dyn EventStore>, db: &TestDb) {
    for partition in ["show-edit", "show-remove", "show-swap"] {
        for i in 0..4u64 {
            store
                .append(batch(
                    partition,
                    vec![stream(&format!("{partition}-{i}"), 0, events(1))],
                ))
                .await
                .expect("append");
        }
    }
    let all = all_events(&store).await;
    let position_of = |partition: &str, i: usize| {
        all.iter()
            .filter(|e| e.partition_key == partition)
            .nth(i)
            .expect("event")
            .position
    };
    let (edited, removed, after_removed) = (
        position_of("show-edit", 1),
        position_of("show-remove", 1),
        position_of("show-remove", 2),
    );
    let (swap_a, swap_b) = (position_of("show-swap", 1), position_of("show-swap", 2));
    // The immutability triggers stop the application's role; the tamperer turns them off.
    let (off, on) = match store.backend() {
        "postgres" => (
            "ALTER TABLE events DISABLE TRIGGER USER;",
            "ALTER TABLE events ENABLE TRIGGER USER;",
        ),
        _ => (
            "DROP TRIGGER events_reject_update; DROP TRIGGER events_reject_delete;",
            "",
        ),
    };
    // What a reader would see as the two events in the opposite order; stream and version
    // stay, so the swap passes the schema's own uniqueness.
    let swap_columns = ["payload", "metadata"]
        .iter()
        .map(|c| {
            format!(
                "UPDATE events SET {c} = (SELECT {c} FROM events WHERE position = {swap_b}) WHERE position = {swap_a};
                 UPDATE events SET {c} = (SELECT {c} FROM events WHERE position = {swap_a} + 1000000) WHERE position = {swap_b};"
            )
        })
        .collect::<String>();
    // Swapping in place needs the first row's old values: park them in a copy first.
    let park = format!(
        "INSERT INTO events (position, partition_key, stream_id, version, event_type, schema_version, payload, metadata, recorded_at)
         SELECT position + 1000000, 'parked', stream_id || '-parked', version, event_type, schema_version, payload, metadata, recorded_at
         FROM events WHERE position = {swap_a};"
    );
    let edit = match store.backend() {
        "postgres" => format!(
            "UPDATE events SET payload = jsonb_set(payload, '{{n}}', '7') WHERE position = {edited};"
        ),
        _ => format!(
            "UPDATE events SET payload = json_set(payload, '$.n', 7) WHERE position = {edited};"
        ),
    };
    db.execute_raw(&format!(
        "{off} {edit} DELETE FROM events WHERE position = {removed}; {park} {swap_columns} \
         DELETE FROM events WHERE partition_key = 'parked'; {on}"
    ))
    .await
    .expect("tamper");

    // This instance answers reads of its own recent appends from memory (ADR 0015): it
    // still returns what it appended, which is also the proof that the cache answered.
    assert_eq!(all_events(&store).await, all);
    // An auditor reads the database itself, as `boxctl verify` does with its own store.
    let auditor = db.open().await;
    let breaks = chain_breaks(&auditor).await;
    assert_eq!(
        breaks,
        vec![
            (edited, ChainBreakReason::Mismatch),
            (after_removed, ChainBreakReason::Mismatch),
            (swap_a, ChainBreakReason::Mismatch),
            (swap_b, ChainBreakReason::Mismatch),
        ],
        "edited {edited}, removed {removed}, swapped {swap_a} and {swap_b}"
    );
}

// ---------------------------------------------------------------------------------------
// Backend-specific cases

#[tokio::test]
async fn sqlite_in_memory_round_trip() {
    let store = boxoffice_store::connect("sqlite::memory:", Some(key().clone()))
        .await
        .expect("open in-memory store");
    let result = append_one(&store, "a", 0, 3).await;
    assert_eq!(result.last_position - result.first_position + 1, 3);
    assert_eq!(all_events(&store).await.len(), 3);
    assert_conflict(
        store
            .append(batch("show-1", vec![stream("a", 0, events(1))]))
            .await,
        "a",
    );
}

/// The notification listener survives its connection being killed: it reconnects on its
/// own and the head watch follows another instance's appends again. The pools' connections
/// are killed too, and the store keeps working through new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_listener_reconnects_after_connection_loss() {
    let Some(db) = TestDb::postgres().await else {
        println!("skipped: DATABASE_URL not set");
        return;
    };
    let outcome = catch_failure(async {
        let TestDb::Postgres {
            admin_url, name, ..
        } = &db
        else {
            unreachable!()
        };
        let store = db.open().await;
        let other = db.open().await;
        let mut rx = store.subscribe_head();
        let before = append_one(&other, "s", 0, 1).await;
        wait_for_head(&mut rx, before.last_position).await;

        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .expect("connect to DATABASE_URL");
        let killed: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!killed.is_empty());
        sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
            .bind(&killed)
            .execute(&mut admin)
            .await
            .unwrap();
        // Wait (bounded) until the killed backends are gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alive: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(&killed)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            if alive == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "killed backends still alive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        admin.close().await.unwrap();

        let after = append_one(&other, "s", 1, 1).await;
        wait_for_head(&mut rx, after.last_position).await;
        assert_eq!(store.read_stream("s", 0).await.unwrap().len(), 2);
    })
    .await;
    db.cleanup().await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// The writer never checkpoints (wal_autocheckpoint=0); the background task does. Appended
/// pages reach the database file only through it, so the file growing proves it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_wal_is_checkpointed_in_background() {
    let db = TestDb::sqlite();
    let outcome = catch_failure(async {
        let store = db.open().await;
        let TestDb::Sqlite { url, .. } = &db else {
            unreachable!()
        };
        let file = PathBuf::from(url.trim_start_matches("sqlite://"));
        let size_before = std::fs::metadata(&file).unwrap().len();
        let streams = (0..1000)
            .map(|i| stream(&format!("seat-{i}"), 0, events(3)))
            .collect();
        store.append(batch("show-1", streams)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&file).unwrap().len() < size_before + 256 * 1024 {
            assert!(
                Instant::now() < deadline,
                "the WAL was not checkpointed into {}",
                file.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    db.cleanup().await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// Under appends without a pause the WAL never finds itself fully copied, so it must be
/// started again on purpose: it grows past the journal size limit (64 MiB) and is emptied
/// again while the appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_wal_stays_bounded_under_appends_without_a_pause() {
    const LIMIT: u64 = 64 * 1024 * 1024;
    let db = TestDb::sqlite();
    let outcome = catch_failure(async {
        let store = db.open().await;
        let TestDb::Sqlite { url, .. } = &db else {
            unreachable!()
        };
        let wal = PathBuf::from(format!("{}-wal", url.trim_start_matches("sqlite://")));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let store = Arc::clone(&store);
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let padding = "x".repeat(2_000);
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let streams = (0..200)
                        .map(|i| {
                            stream(
                                &format!("seat-{round}-{i}"),
                                0,
                                vec![new_event("SeatHeld", json!({ "pad": padding }))],
                            )
                        })
                        .collect();
                    store.append(batch("show-1", streams)).await.unwrap();
                    round += 1;
                }
            })
        };
        let size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut grew_past = false;
        let mut peak = 0;
        loop {
            let now = size();
            peak = peak.max(now);
            if now > LIMIT {
                grew_past = true;
            } else if grew_past && now < LIMIT / 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the WAL was not started again under steady appends (now {now} bytes, \
                 peak {peak}, past the limit: {grew_past})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        writer.await.unwrap();
        println!("WAL emptied under steady appends; peak {peak} bytes");
    })
    .await;
    db.cleanup().await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

#[tokio::test]
async fn postgres_down_is_unavailable_quickly() {
    // Nothing listens on port 1.
    let started = Instant::now();
    match boxoffice_store::connect("postgres://postgres@127.0.0.1:1/test", None).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unknown_scheme_is_a_config_error() {
    assert!(matches!(
        boxoffice_store::connect("mysql://localhost/x", None).await,
        Err(StoreError::Config(_))
    ));
}

#[test]
fn database_name_is_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://h/test?sslmode=disable", "x"),
        "postgres://h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}

/// The README's lockdown of the event table on PostgreSQL: a role with only INSERT and
/// SELECT on `events` appends and reads through the store, and is refused UPDATE, DELETE
/// and TRUNCATE by privilege, before any trigger is reached.
#[tokio::test]
async fn postgres_app_role_needs_only_insert_and_select_on_events() {
    let Some(db) = TestDb::postgres().await else {
        println!("skipped: DATABASE_URL not set");
        return;
    };
    let TestDb::Postgres { url, name, .. } = &db else {
        unreachable!()
    };
    // The owner migrates first (`boxoffice migrate`).
    drop(db.open().await);
    let role = format!("boxoffice_app_{}", &name["boxoffice_test_".len()..]);
    db.execute_raw(&format!(
        "CREATE ROLE {role} LOGIN;
         GRANT CONNECT ON DATABASE {name} TO {role};
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
         REVOKE UPDATE, DELETE, TRUNCATE ON events FROM {role};
         GRANT USAGE ON SEQUENCE events_position_seq TO {role};"
    ))
    .await
    .expect("create the application role");
    let scheme_end = url.find("://").unwrap() + 3;
    let host_start = url.find('@').unwrap();
    let app_url = format!("{}{role}{}", &url[..scheme_end], &url[host_start..]);

    let outcome = catch_failure(async {
        let store = boxoffice_store::connect(&app_url, Some(key().clone()))
            .await
            .expect("the application role opens the store");
        append_one(&store, "a", 0, 2).await;
        append_one(&store, "a", 2, 1).await;
        assert_eq!(all_events(&store).await.len(), 3);
        assert_eq!(chain_breaks(&store).await, vec![]);
        store
            .save_checkpoint("c", 3)
            .await
            .expect("checkpoints stay writable");
        let mut conn = sqlx::PgConnection::connect(&app_url).await.unwrap();
        for sql in [
            "UPDATE events SET event_type = 'Changed'",
            "DELETE FROM events",
            "TRUNCATE events",
            "ALTER TABLE events DISABLE TRIGGER USER",
        ] {
            let error = conn.execute(sql).await.expect_err(sql);
            let code = error
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.into_owned());
            // 42501 insufficient_privilege (ALTER TABLE: must be owner, also 42501).
            assert_eq!(code.as_deref(), Some("42501"), "{sql}: {error}");
        }
        conn.close().await.ok();
        drop(store);
    })
    .await;
    // Even the owner's TRUNCATE meets a trigger.
    let truncate = db.execute_raw("TRUNCATE events").await;
    let admin_url = std::env::var("DATABASE_URL").unwrap();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    db.cleanup().await;
    admin
        .execute(format!("DROP ROLE IF EXISTS {role}").as_str())
        .await
        .expect("drop the role");
    admin.close().await.ok();
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let error = truncate.expect_err("TRUNCATE refused");
    assert!(error.to_string().contains("immutable"), "{error}");
}

/// How long a test waits for something that happens in the background.
const BACKGROUND_WAIT: Duration = Duration::from_secs(20);

/// A BEGIN whose caller gives up while it waits for a lock another session holds leaves
/// no transaction open on the pool's connection (`boxoffice_store::transactions`): once
/// the lock is free, the abandoned transaction takes it and gives it back, and the
/// connection's next statement starts a transaction of its own. With sqlx's own
/// `begin_with`, the connection stays in the pool inside that transaction, holding the
/// lock, until someone reuses it (transact-rs/sqlx#4393).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_cancelled_begin_leaves_no_transaction_open() {
    let Some(db) = TestDb::postgres().await else {
        println!("skipped: DATABASE_URL not set");
        return;
    };
    const LOCK: i64 = 1_667_329_635;
    const BEGIN_LOCKED: &str = "BEGIN; SELECT pg_advisory_xact_lock(1667329635)";
    let outcome = catch_failure(async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(db.url())
            .await
            .expect("pool");
        let mut holder = sqlx::PgConnection::connect(db.url()).await.expect("holder");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK)
            .execute(&mut holder)
            .await
            .expect("lock");
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            transactions::begin(&pool, Some(BEGIN_LOCKED)),
        )
        .await;
        assert!(gave_up.is_err(), "the BEGIN did not wait for the lock");
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK)
            .execute(&mut holder)
            .await
            .expect("unlock");

        let deadline = Instant::now() + BACKGROUND_WAIT;
        loop {
            let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK)
                .fetch_one(&mut holder)
                .await
                .expect("try the lock");
            if free {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the abandoned transaction still holds the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let idle_in_transaction: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&mut holder)
        .await
        .expect("sessions");
        assert_eq!(
            idle_in_transaction, 0,
            "a connection was left inside a transaction"
        );
        let mut tx = transactions::begin(&pool, None).await.expect("begin again");
        sqlx::query("SELECT 1")
            .execute(&mut *tx)
            .await
            .expect("use it");
        tx.commit().await.expect("commit");
        holder.close().await.ok();
        pool.close().await;
    })
    .await;
    db.cleanup().await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// The same on SQLite: a `BEGIN IMMEDIATE` abandoned while another connection holds the
/// write lock neither keeps the lock once it gets it nor leaves the pool's connection
/// inside a transaction (the next `BEGIN IMMEDIATE` on it would fail with "begin_with at
/// non-zero transaction depth").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_cancelled_begin_leaves_no_transaction_open() {
    let db = TestDb::sqlite();
    // The store makes the file and its WAL mode.
    drop(db.open().await);
    let outcome = catch_failure(async {
        let options = db
            .url()
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .expect("url")
            .busy_timeout(Duration::from_secs(5));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .expect("pool");
        let mut holder = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("holder");
        holder.execute("BEGIN IMMEDIATE").await.expect("lock");
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            transactions::begin(&pool, Some("BEGIN IMMEDIATE")),
        )
        .await;
        assert!(gave_up.is_err(), "the BEGIN did not wait for the lock");
        holder.execute("COMMIT").await.expect("unlock");

        let deadline = Instant::now() + BACKGROUND_WAIT;
        loop {
            match holder.execute("BEGIN IMMEDIATE").await {
                Ok(_) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the abandoned transaction still holds the write lock: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        holder.execute("COMMIT").await.expect("commit");
        let mut tx = transactions::begin(&pool, Some("BEGIN IMMEDIATE"))
            .await
            .expect("the pool's connection begins again");
        sqlx::query("SELECT 1")
            .execute(&mut *tx)
            .await
            .expect("use it");
        tx.commit().await.expect("commit");
        holder.close().await.ok();
        pool.close().await;
    })
    .await;
    db.cleanup().await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}
