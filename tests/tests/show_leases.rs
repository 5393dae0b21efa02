//! Show ownership through PostgreSQL leases, in process (docs/adr/0009-show-ownership.md):
//! two engines, each a node with its own lease identity on one database.
//!
//! - The first node to touch a show owns it; the other is told who does.
//! - A node whose lease was taken over cannot append, even when its expected versions
//!   match the store (it writes a stream nobody else wrote): the append is fenced off by
//!   the lease epoch, the caller is told the show has another owner, and nothing is
//!   written.
//! - A released lease (graceful shutdown) is taken over at once.
//!
//! PostgreSQL only; skipped with a message without `DATABASE_URL`.

use std::sync::Arc;
use std::time::Duration;

use boxoffice_commands::{Cluster, ClusterConfig, CommandMeta, Engine, EngineConfig, EngineError};
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::show::{Limits, ShowCommand};
use boxoffice_domain::{Command, RandomIds, ReservationId, ShowId, SystemClock, UserId};
use boxoffice_store::leases::ShowLeases;
use boxoffice_store::{AppendBatch, EventMetadata, Fence, NewEvent, StoreError, StreamAppend};
use boxoffice_tests::{check_log, open, partition, show_definition};

async fn postgres() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            Some(boxoffice_tests::fresh_postgres_url(&url).await)
        }
        _ => {
            println!("skipped: show leases need PostgreSQL (DATABASE_URL not set)");
            None
        }
    }
}

async fn node(url: &str, name: &str, lease: Duration) -> Arc<Engine> {
    node_with(url, name, lease, false).await
}

async fn node_with(url: &str, name: &str, lease: Duration, read_only: bool) -> Arc<Engine> {
    let store = open(url).await;
    let leases = ShowLeases::connect(url).await.unwrap();
    let cluster = Cluster::new(
        leases,
        ClusterConfig {
            node_id: name.into(),
            advertise_url: format!("http://{name}.invalid"),
            lease,
            renew: lease / 3,
            read_only,
        },
    );
    Engine::with_cluster(
        store,
        Arc::new(SystemClock),
        Arc::new(RandomIds),
        EngineConfig::default(),
        Some(Arc::new(cluster)),
    )
}

async fn schedule(engine: &Engine) -> ShowId {
    let show = ShowId(uuid::Uuid::now_v7());
    let definition = show_definition(1, 10, 0, Limits::default());
    engine
        .execute(
            show,
            Command::Show(ShowCommand::Schedule {
                show_id: show,
                organizer_id: UserId(uuid::Uuid::now_v7()),
                definition: definition.into(),
            }),
            CommandMeta::new("test"),
        )
        .await
        .unwrap();
    show
}

fn hold(seat: u32) -> Command {
    Command::Hold(HoldRequest {
        reservation_id: ReservationId(uuid::Uuid::now_v7()),
        user_id: UserId(uuid::Uuid::now_v7()),
        idempotency_key: None,
        selection: Selection::Seats(vec![format!("S-R0-{seat}")]),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_lease_is_fenced_off_even_with_matching_versions() {
    let Some(url) = postgres().await else {
        return;
    };
    // Long leases: only what the test does moves them.
    let a = node(&url, "a", Duration::from_secs(60)).await;
    let b = node(&url, "b", Duration::from_secs(60)).await;
    let show = schedule(&a).await;
    a.execute(show, hold(1), CommandMeta::new("test"))
        .await
        .unwrap();
    assert!(a.cluster().unwrap().owns(show));

    // b is told that a owns the show, and where to send the command.
    match b.execute(show, hold(2), CommandMeta::new("test")).await {
        Err(EngineError::NotOwner { owner_url, .. }) => {
            assert_eq!(owner_url.as_deref(), Some("http://a.invalid"))
        }
        other => panic!("b wrote a show a owns: {other:?}"),
    }

    // a is "paused" past its lease: the lease expires (by the database's clock) and b
    // takes the show over, and sells seat 2.
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE show_leases SET expires_at = now() WHERE show_id = $1")
        .bind(show.to_string())
        .execute(&db)
        .await
        .unwrap();
    b.cluster().unwrap().forget_owner(show);
    b.execute(show, hold(2), CommandMeta::new("test"))
        .await
        .unwrap();
    assert!(b.cluster().unwrap().owns(show));

    // a wakes with its actor and state as they were. Seat 3 was never written, so its
    // expected version (0) is right, and the reservation is new: only the fence can
    // refuse this hold, and it does.
    let before = partition(&open(&url).await, show).await.len();
    match a.execute(show, hold(3), CommandMeta::new("test")).await {
        Err(EngineError::NotOwner { show: s, .. }) => assert_eq!(s, show),
        other => panic!("a stale owner wrote: {other:?}"),
    }
    let log = partition(&open(&url).await, show).await;
    assert_eq!(log.len(), before, "the fenced append wrote nothing");
    assert!(!a.cluster().unwrap().owns(show), "a knows it lost the show");
    // a's next command goes to b (the owner), and b still sells.
    match a.execute(show, hold(3), CommandMeta::new("test")).await {
        Err(EngineError::NotOwner { owner_url, .. }) => {
            assert_eq!(owner_url.as_deref(), Some("http://b.invalid"))
        }
        other => panic!("a wrote after losing the show: {other:?}"),
    }
    b.execute(show, hold(3), CommandMeta::new("test"))
        .await
        .unwrap();
    check_log(show, &partition(&open(&url).await, show).await).unwrap();

    // The same at the store: an append with a stale epoch writes nothing.
    let store = open(&url).await;
    let count = partition(&store, show).await.len();
    let stale = AppendBatch::grouped(
        show.to_string(),
        vec![StreamAppend {
            stream_id: format!("seat-{show}-S-R0-9"),
            expected_version: 0,
            events: vec![NewEvent {
                event_type: "SeatBlocked".into(),
                schema_version: 1,
                payload: serde_json::json!({"seat_id": "S-R0-9", "reason": "stale"}),
                metadata: EventMetadata {
                    event_id: uuid::Uuid::now_v7(),
                    correlation_id: uuid::Uuid::now_v7(),
                    causation_id: None,
                    actor: "test".into(),
                },
            }],
        }],
        chrono::Utc::now(),
    );
    let refused = store.append_fenced(stale, Some(Fence { epoch: 1 })).await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { epoch: 1, .. })),
        "{refused:?}"
    );
    assert_eq!(partition(&store, show).await.len(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_node_never_writes_and_names_a_writer() {
    let Some(url) = postgres().await else {
        return;
    };
    let a = node(&url, "a", Duration::from_secs(60)).await;
    let reader = node_with(&url, "reader", Duration::from_secs(60), true).await;
    // A show nobody holds yet: the read-only node sends its creation to a node that
    // writes (one holding a live lease).
    let other = schedule(&a).await;
    let show = ShowId(uuid::Uuid::now_v7());
    let definition = show_definition(1, 10, 0, Limits::default());
    match reader
        .execute(
            show,
            Command::Show(ShowCommand::Schedule {
                show_id: show,
                organizer_id: UserId(uuid::Uuid::now_v7()),
                definition: definition.into(),
            }),
            CommandMeta::new("test"),
        )
        .await
    {
        Err(EngineError::NotOwner { owner_url, .. }) => {
            assert_eq!(owner_url.as_deref(), Some("http://a.invalid"))
        }
        other => panic!("a read-only node wrote: {other:?}"),
    }
    // A show a holds: the read-only node names a, and never takes the lease, not even
    // once it has expired.
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE show_leases SET expires_at = now() WHERE show_id = $1")
        .bind(other.to_string())
        .execute(&db)
        .await
        .unwrap();
    assert!(matches!(
        reader
            .execute(other, hold(1), CommandMeta::new("test"))
            .await,
        Err(EngineError::NotOwner { .. })
    ));
    assert!(reader.cluster().unwrap().held().is_empty());
    assert_eq!(partition(&open(&url).await, show).await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_over_at_once() {
    let Some(url) = postgres().await else {
        return;
    };
    let a = node(&url, "a", Duration::from_secs(60)).await;
    let b = node(&url, "b", Duration::from_secs(60)).await;
    let show = schedule(&a).await;
    a.execute(show, hold(1), CommandMeta::new("test"))
        .await
        .unwrap();
    // Graceful shutdown lets the leases go: b does not wait out the 60 s lease.
    a.shutdown().await;
    b.execute(show, hold(2), CommandMeta::new("test"))
        .await
        .unwrap();
    assert!(b.cluster().unwrap().owns(show));
    check_log(show, &partition(&open(&url).await, show).await).unwrap();
}
