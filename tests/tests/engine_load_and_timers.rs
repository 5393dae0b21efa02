//! The engine across restarts: holds expire on time (rule 4), also for holds found on
//! load; a log with an unknown, malformed or rule-breaking event stops that show with the
//! position named, never a silent skip; idempotent holds survive a restart.

use std::sync::Arc;

use boxoffice_commands::{CommandMeta, Engine, EngineConfig, EngineError};
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::reservation::ReservationStatus;
use boxoffice_domain::show::{Limits, ShowCommand};
use boxoffice_domain::{Clock, Command, ManualClock, RandomIds, ReservationId, ShowId, UserId};
use boxoffice_store::{AppendBatch, EventMetadata, EventStore, NewEvent, StreamAppend};
use boxoffice_tests::{backends, check_log, open, partition, show_definition};
use chrono::{Duration, Utc};
use serde_json::json;

fn engine(store: &Arc<dyn EventStore>, clock: &Arc<ManualClock>) -> Arc<Engine> {
    Engine::new(
        Arc::clone(store),
        Arc::clone(clock) as Arc<dyn Clock>,
        Arc::new(RandomIds),
        EngineConfig::default(),
    )
}

async fn schedule(engine: &Engine, ttl: u32) -> ShowId {
    let show = ShowId(uuid::Uuid::now_v7());
    let definition = show_definition(
        2,
        10,
        5,
        Limits {
            hold_ttl_seconds: ttl,
            ..Limits::default()
        },
    );
    let command = ShowCommand::Schedule {
        show_id: show,
        organizer_id: UserId(uuid::Uuid::now_v7()),
        definition: definition.into(),
    };
    engine
        .execute(show, Command::Show(command), CommandMeta::new("test"))
        .await
        .unwrap();
    show
}

fn hold(user: UserId, seats: &[&str], key: Option<&str>) -> Command {
    Command::Hold(HoldRequest {
        reservation_id: ReservationId(uuid::Uuid::now_v7()),
        user_id: user,
        idempotency_key: key.map(String::from),
        selection: Selection::Seats(seats.iter().map(|s| s.to_string()).collect()),
    })
}

async fn status(engine: &Engine, show: ShowId, id: ReservationId) -> ReservationStatus {
    engine
        .query(show, move |s| s.reservation(id).unwrap().status)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_expire_on_time_and_after_a_restart() {
    for backend in backends().await {
        let store = open(&backend.url).await;
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let engine_1 = engine(&store, &clock);
        let show = schedule(&engine_1, 60).await;
        let user = UserId(uuid::Uuid::now_v7());
        let early = engine_1
            .execute(show, hold(user, &["S-R0-1"], None), CommandMeta::new("t"))
            .await
            .unwrap()
            .reservation
            .unwrap();
        clock.advance(Duration::seconds(30));
        let late = engine_1
            .execute(show, hold(user, &["S-R0-2"], None), CommandMeta::new("t"))
            .await
            .unwrap()
            .reservation
            .unwrap();

        // Not yet due: nothing expires.
        clock.advance(Duration::seconds(29));
        engine_1.tick(show).await.unwrap();
        assert_eq!(
            status(&engine_1, show, early.reservation_id).await,
            ReservationStatus::Held,
            "{}",
            backend.name
        );

        // The first hold is due: the actor's next batch expires it and releases its seat.
        clock.advance(Duration::seconds(1));
        engine_1.tick(show).await.unwrap();
        engine_1.tick(show).await.unwrap();
        assert_eq!(
            status(&engine_1, show, early.reservation_id).await,
            ReservationStatus::Expired,
            "{}",
            backend.name
        );
        assert_eq!(
            status(&engine_1, show, late.reservation_id).await,
            ReservationStatus::Held
        );

        // The process stops; while it is down the second hold falls due.
        engine_1.shutdown().await;
        clock.advance(Duration::seconds(120));
        let engine_2 = engine(&store, &clock);
        assert_eq!(engine_2.load_all().await.unwrap(), 1);
        engine_2.tick(show).await.unwrap();
        assert_eq!(
            status(&engine_2, show, late.reservation_id).await,
            ReservationStatus::Expired,
            "{}",
            backend.name
        );

        let log = partition(&store, show).await;
        let (_, replayed) = check_log(show, &log).unwrap();
        let expired: Vec<_> = log
            .iter()
            .filter(|e| e.event_type == "HoldExpired")
            .collect();
        assert_eq!(expired.len(), 2, "each hold expires exactly once");
        assert!(expired.iter().all(|e| e.metadata.actor == "system:expiry"));
        assert!(replayed.seat("S-R0-1").unwrap().state.is_available());
        assert_eq!(replayed, engine_2.query(show, |s| s.clone()).await.unwrap());
        engine_2.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_hold_returns_the_same_reservation_across_a_restart() {
    for backend in backends().await {
        let store = open(&backend.url).await;
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let first = engine(&store, &clock);
        let show = schedule(&first, 300).await;
        let user = UserId(uuid::Uuid::now_v7());
        let a = first
            .execute(
                show,
                hold(user, &["S-R1-1", "S-R1-2"], Some("k")),
                CommandMeta::new("t"),
            )
            .await
            .unwrap();
        first.shutdown().await;
        let second = engine(&store, &clock);
        let b = second
            .execute(
                show,
                hold(user, &["S-R1-1", "S-R1-2"], Some("k")),
                CommandMeta::new("t"),
            )
            .await
            .unwrap();
        assert_eq!(
            a.reservation.unwrap().reservation_id,
            b.reservation.unwrap().reservation_id,
            "{}",
            backend.name
        );
        assert_eq!(b.events, 0, "a repeat appends nothing");
        second.shutdown().await;
    }
}

/// Appends a raw event to a show's partition, bypassing the domain.
async fn append_raw(
    store: &Arc<dyn EventStore>,
    show: ShowId,
    stream_id: String,
    expected_version: u64,
    event_type: &str,
    payload: serde_json::Value,
) -> u64 {
    let metadata = EventMetadata {
        event_id: uuid::Uuid::now_v7(),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: None,
        actor: "test:raw".into(),
    };
    let event = NewEvent {
        event_type: event_type.into(),
        schema_version: 1,
        payload,
        metadata,
    };
    let batch = AppendBatch::grouped(
        show.to_string(),
        vec![StreamAppend {
            stream_id,
            expected_version,
            events: vec![event],
        }],
        Utc::now(),
    );
    store.append(batch).await.unwrap().last_position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_stops_the_show_and_names_the_position() {
    for backend in backends().await {
        let store = open(&backend.url).await;
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let setup = engine(&store, &clock);
        let unknown_show = schedule(&setup, 300).await;
        let malformed_show = schedule(&setup, 300).await;
        let oversold_show = schedule(&setup, 300).await;
        let healthy_show = schedule(&setup, 300).await;
        let user = UserId(uuid::Uuid::now_v7());
        let held = setup
            .execute(
                oversold_show,
                hold(user, &["S-R0-1"], None),
                CommandMeta::new("t"),
            )
            .await
            .unwrap()
            .reservation
            .unwrap();
        setup.shutdown().await;

        let unknown_at = append_raw(
            &store,
            unknown_show,
            format!("seat-{unknown_show}-S-R0-1"),
            0,
            "SeatTeleported",
            json!({"seat_id": "S-R0-1"}),
        )
        .await;
        let malformed_at = append_raw(
            &store,
            malformed_show,
            format!("seat-{malformed_show}-S-R0-1"),
            0,
            "SeatHeld",
            json!({"seat_id": 7}),
        )
        .await;
        // A second hold of a held seat, with a correct version: only the domain can see it breaks rule 1.
        let other = ReservationId(uuid::Uuid::now_v7());
        let until = (Utc::now() + Duration::seconds(300)).to_rfc3339();
        let oversold_at = append_raw(
            &store,
            oversold_show,
            format!("seat-{oversold_show}-S-R0-1"),
            1,
            "SeatHeld",
            json!({"seat_id": "S-R0-1", "reservation_id": other.to_string(), "until": until}),
        )
        .await;
        assert_ne!(held.reservation_id, other);

        let engine = engine(&store, &clock);
        // Loading everything skips the broken shows rather than failing (the healthy
        // show and the three broken ones: only the healthy one loads).
        assert_eq!(engine.load_all().await.unwrap(), 1, "{}", backend.name);
        for (show, position, what) in [
            (unknown_show, unknown_at, "unknown event type"),
            (malformed_show, malformed_at, "malformed"),
            (oversold_show, oversold_at, "does not apply"),
        ] {
            let err = engine.query(show, |_| ()).await.unwrap_err();
            let EngineError::ShowStopped(reason) = &err else {
                panic!("{}: expected ShowStopped, got {err:?}", backend.name)
            };
            assert!(
                reason.contains(&format!("position {position}")),
                "{}: {reason}",
                backend.name
            );
            assert!(reason.contains(what), "{}: {reason}", backend.name);
            // Commands are refused too, with the same reason, and nothing is appended.
            let err = engine
                .execute(show, hold(user, &["S-R1-1"], None), CommandMeta::new("t"))
                .await
                .unwrap_err();
            assert!(matches!(err, EngineError::ShowStopped(_)), "{err:?}");
        }
        // Other shows are unaffected.
        assert!(
            engine
                .execute(
                    healthy_show,
                    hold(user, &["S-R1-1"], None),
                    CommandMeta::new("t")
                )
                .await
                .is_ok()
        );
        engine.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_freed_while_sales_are_closed_go_to_the_waitlist_when_sales_open_by_the_clock() {
    for backend in backends().await {
        let store = open(&backend.url).await;
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let engine = engine(&store, &clock);
        let show = ShowId(uuid::Uuid::now_v7());
        let definition = show_definition(1, 2, 0, Limits::default());
        let command = ShowCommand::Schedule {
            show_id: show,
            organizer_id: UserId(uuid::Uuid::now_v7()),
            definition: definition.into(),
        };
        engine
            .execute(show, Command::Show(command), CommandMeta::new("t"))
            .await
            .unwrap();
        let holder = UserId(uuid::Uuid::now_v7());
        let held = engine
            .execute(
                show,
                hold(holder, &["S-R0-1", "S-R0-2"], None),
                CommandMeta::new("t"),
            )
            .await
            .unwrap()
            .reservation
            .unwrap();
        let waiting = UserId(uuid::Uuid::now_v7());
        let entry = boxoffice_domain::EntryId(uuid::Uuid::now_v7());
        let join = Command::JoinWaitlist {
            entry_id: entry,
            user_id: waiting,
            quantity: 2,
            section: None,
        };
        engine
            .execute(show, join, CommandMeta::new("t"))
            .await
            .unwrap();
        // Sales pause until a minute from now; meanwhile the hold is cancelled.
        let reopen = clock.now() + Duration::seconds(60);
        let pause = ShowCommand::ChangeSalesWindow {
            sales_open_at: Some(reopen),
            sales_close_at: None,
        };
        engine
            .execute(show, Command::Show(pause), CommandMeta::new("t"))
            .await
            .unwrap();
        let cancel = Command::Cancel {
            reservation_id: held.reservation_id,
            by: holder.to_string(),
        };
        engine
            .execute(show, cancel, CommandMeta::new("t"))
            .await
            .unwrap();
        let offered =
            move |s: &boxoffice_domain::ShowState| s.waitlist.entry(entry).unwrap().status;
        assert_eq!(
            engine.query(show, offered).await.unwrap(),
            boxoffice_domain::waitlist::EntryStatus::Waiting
        );
        // Sales open by the clock: the waiting entry gets the seats before anyone else.
        clock.advance(Duration::seconds(61));
        engine.tick(show).await.unwrap();
        assert_eq!(
            engine.query(show, offered).await.unwrap(),
            boxoffice_domain::waitlist::EntryStatus::Offered,
            "{}",
            backend.name
        );
        let other = engine
            .execute(
                show,
                hold(UserId(uuid::Uuid::now_v7()), &["S-R0-1"], None),
                CommandMeta::new("t"),
            )
            .await;
        assert!(
            other.is_err(),
            "{}: the freed seats reached public sale before the waitlist",
            backend.name
        );
        let log = partition(&store, show).await;
        check_log(show, &log).unwrap();
        assert!(log.iter().any(|e| e.event_type == "WaitlistOffered" && e.metadata.actor == "system:waitlist"));
        engine.shutdown().await;
    }
}

/// A show keeps only its open and its most recently closed reservations in memory; an
/// older closed one is read back from the log, by reads and by commands, which it refuses
/// exactly as before. A restart keeps the same ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_reservations_leave_memory_and_are_read_back_from_the_log() {
    use boxoffice_domain::PaymentId;
    use boxoffice_domain::booking::BookingError;
    use boxoffice_domain::reservation::ReservationError;

    const KEPT: usize = 2;
    for backend in backends().await {
        let store = open(&backend.url).await;
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let keeping = |store: &Arc<dyn EventStore>| {
            Engine::new(
                Arc::clone(store),
                Arc::clone(&clock) as Arc<dyn Clock>,
                Arc::new(RandomIds),
                EngineConfig {
                    closed_reservations_kept: KEPT,
                    ..EngineConfig::default()
                },
            )
        };
        let engine_1 = keeping(&store);
        let show = schedule(&engine_1, 60).await;
        let other_show = schedule(&engine_1, 60).await;
        let mut closed = Vec::new();
        let place = |n: u32| {
            let engine = Arc::clone(&engine_1);
            async move {
                let user = UserId(uuid::Uuid::now_v7());
                let seat = format!("S-R0-{n}");
                let placed = engine
                    .execute(show, hold(user, &[&seat], Some("k")), CommandMeta::new("t"))
                    .await
                    .unwrap()
                    .reservation
                    .unwrap();
                (user, placed.reservation_id)
            }
        };
        // Five holds: four are cancelled, then the first expires; a sixth stays open.
        let mut ids = Vec::new();
        for n in 1..=5 {
            ids.push(place(n).await);
        }
        clock.advance(Duration::seconds(30));
        for &(user, id) in &ids[1..] {
            let cancelled = engine_1
                .execute(
                    show,
                    Command::Cancel {
                        reservation_id: id,
                        by: user.to_string(),
                    },
                    CommandMeta::new("t"),
                )
                .await
                .unwrap()
                .reservation
                .unwrap();
            closed.push(cancelled);
        }
        let (_, open_id) = place(6).await;
        clock.advance(Duration::seconds(35));
        engine_1.tick(show).await.unwrap();
        closed.push(engine_1.reservation(show, ids[0].1).await.unwrap().unwrap());
        assert_eq!(closed[4].status, ReservationStatus::Expired);
        let (kept, open_count) = engine_1
            .query(show, |s| {
                (
                    s.reservations.len(),
                    s.reservations
                        .values()
                        .filter(|r| !r.status.is_closed())
                        .count(),
                )
            })
            .await
            .unwrap();
        assert_eq!((kept, open_count), (KEPT + 1, 1), "{}", backend.name);
        assert_eq!(
            status(&engine_1, show, open_id).await,
            ReservationStatus::Held
        );

        // Every closed reservation reads as it was when it closed, kept or not.
        for r in &closed {
            let read = engine_1.reservation(show, r.reservation_id).await.unwrap();
            assert_eq!(read.as_ref(), Some(r), "{}", backend.name);
        }
        let forgotten = closed[0].reservation_id;
        assert!(
            engine_1
                .query(show, move |s| s.reservation(forgotten).is_none())
                .await
                .unwrap()
        );
        // It left the id index too, and is still located, from the log.
        assert_eq!(engine_1.show_of(forgotten), None, "{}", backend.name);
        assert_eq!(
            engine_1
                .locate(forgotten.0, std::time::Duration::ZERO)
                .await,
            Some(show),
            "{}",
            backend.name
        );
        assert_eq!(engine_1.show_of(open_id), Some(show));
        assert_eq!(
            engine_1
                .locate(uuid::Uuid::now_v7(), std::time::Duration::ZERO)
                .await,
            None
        );
        // Commands about a forgotten one are refused as a kept one's are.
        let refusals = [
            (
                Command::Cancel {
                    reservation_id: forgotten,
                    by: "again".into(),
                },
                BookingError::ReservationNotHeld,
            ),
            (
                Command::StartPayment {
                    reservation_id: forgotten,
                    payment_id: PaymentId(uuid::Uuid::now_v7()),
                    payment_token: None,
                },
                BookingError::ReservationNotHeld,
            ),
            (
                Command::Refund {
                    reservation_id: forgotten,
                },
                BookingError::Payment(ReservationError::NotConfirmed),
            ),
            (
                Command::Expire {
                    reservation_id: forgotten,
                },
                BookingError::ReservationNotHeld,
            ),
        ];
        for (command, refusal) in refusals {
            match engine_1
                .execute(show, command.clone(), CommandMeta::new("t"))
                .await
            {
                Err(EngineError::Domain(e)) => assert_eq!(e, refusal, "{command:?}"),
                other => panic!("{command:?} on {}: {other:?}", backend.name),
            }
        }
        // Ids the show never had, or another show has, are not found.
        let stranger = engine_1
            .execute(
                other_show,
                hold(UserId(uuid::Uuid::now_v7()), &["S-R0-1"], None),
                CommandMeta::new("t"),
            )
            .await
            .unwrap()
            .reservation
            .unwrap()
            .reservation_id;
        for id in [stranger, ReservationId(uuid::Uuid::now_v7())] {
            assert_eq!(engine_1.reservation(show, id).await.unwrap(), None);
            match engine_1
                .execute(
                    show,
                    Command::Cancel {
                        reservation_id: id,
                        by: "t".into(),
                    },
                    CommandMeta::new("t"),
                )
                .await
            {
                Err(EngineError::Domain(BookingError::ReservationNotFound)) => {}
                other => panic!("cancelling {id} of another show: {other:?}"),
            }
        }
        // A forgotten reservation's key is free again; a kept one's still answers.
        let (user, _) = ids[1];
        let again = engine_1
            .execute(
                show,
                hold(user, &["S-R1-1"], Some("k")),
                CommandMeta::new("t"),
            )
            .await
            .unwrap();
        assert_eq!(again.events, 2, "{}", backend.name);

        // A node that follows the log (with several nodes) indexes the open ones only,
        // and locates closed ones from the log.
        let follower = keeping(&store);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let following = tokio::spawn(Arc::clone(&follower).follow_objects(stopped));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The last event of the log is that hold's placement: once it is indexed, every
        // close before it has been seen.
        let last = again.reservation.as_ref().unwrap().reservation_id;
        while follower.show_of(last).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the follower never indexed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(follower.show_of(open_id), Some(show));
        for r in &closed {
            assert_eq!(follower.show_of(r.reservation_id), None, "{}", backend.name);
            assert_eq!(
                follower
                    .locate(r.reservation_id.0, std::time::Duration::ZERO)
                    .await,
                Some(show)
            );
        }
        stop.send_replace(true);
        following.await.unwrap();
        follower.shutdown().await;

        // A restart keeps the same reservations in memory.
        let before = engine_1.query(show, |s| s.clone()).await.unwrap();
        engine_1.shutdown().await;
        let engine_2 = keeping(&open(&backend.url).await);
        engine_2.load_all().await.unwrap();
        let after = engine_2.query(show, |s| s.clone()).await.unwrap();
        assert!(
            before == after,
            "{}: the state differs after a restart",
            backend.name
        );
        let log = partition(&store, show).await;
        check_log(show, &log).unwrap();
        engine_2.shutdown().await;
    }
}
