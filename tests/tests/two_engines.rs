//! Two engines (two store connections, as two processes would have) contend for the same
//! seats of one show. Correctness rests on the store's expected versions: each seat is
//! held by at most one reservation, the losers reload and decide again, and both
//! engines end with the state a replay gives.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boxoffice_commands::{CommandMeta, Engine, EngineConfig, EngineError};
use boxoffice_domain::booking::{BookingError, HoldRequest, Selection};
use boxoffice_domain::show::{Limits, ShowCommand};
use boxoffice_domain::{Command, RandomIds, ReservationId, ShowId, SystemClock, UserId};
use boxoffice_tests::{backends, check_log, open, partition, show_definition};
use rand::Rng;

const ROWS: u32 = 5;
const SEATS_PER_ROW: u32 = 20;
const CLIENTS_PER_ENGINE: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_never_sell_a_seat_twice() {
    for backend in backends().await {
        let store_a = open(&backend.url).await;
        let store_b = open(&backend.url).await;
        let engine_a = Engine::new(
            Arc::clone(&store_a),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
            EngineConfig::default(),
        );
        let engine_b = Engine::new(
            Arc::clone(&store_b),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
            EngineConfig::default(),
        );
        let show = ShowId(uuid::Uuid::now_v7());
        let limits = Limits {
            max_tickets_per_user: 100,
            max_active_holds_per_user: 20,
            ..Limits::default()
        };
        let definition = show_definition(ROWS, SEATS_PER_ROW, 0, limits);
        engine_a
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

        let deadline = Instant::now() + Duration::from_secs(4);
        let mut tasks = Vec::new();
        for engine in [&engine_a, &engine_b] {
            for _ in 0..CLIENTS_PER_ENGINE {
                let engine = Arc::clone(engine);
                tasks.push(tokio::spawn(async move {
                    let user = UserId(uuid::Uuid::now_v7());
                    let mut won = 0u64;
                    let mut mine = Vec::new();
                    while Instant::now() < deadline {
                        // Mostly the same few seats, so the engines collide.
                        let (row, seat) = {
                            let mut rng = rand::thread_rng();
                            (rng.gen_range(0..ROWS), rng.gen_range(1..=SEATS_PER_ROW))
                        };
                        let request = HoldRequest {
                            reservation_id: ReservationId(uuid::Uuid::now_v7()),
                            user_id: user,
                            idempotency_key: None,
                            selection: Selection::Seats(vec![format!("S-R{row}-{seat}")]),
                        };
                        match engine
                            .execute(
                                show,
                                Command::Hold(request),
                                CommandMeta::new(user.to_string()),
                            )
                            .await
                        {
                            Ok(o) => {
                                won += 1;
                                mine.push(o.reservation.unwrap().reservation_id);
                            }
                            Err(EngineError::Domain(
                                BookingError::SeatsUnavailable { .. }
                                | BookingError::TooManyActiveHolds { .. },
                            )) => {}
                            Err(EngineError::Conflict) => {}
                            Err(e) => panic!("hold failed: {e}"),
                        }
                        if mine.len() >= 2 {
                            let reservation_id = mine.remove(0);
                            match engine
                                .execute(
                                    show,
                                    Command::Cancel {
                                        reservation_id,
                                        by: user.to_string(),
                                    },
                                    CommandMeta::new(user.to_string()),
                                )
                                .await
                            {
                                Ok(_)
                                | Err(EngineError::Domain(BookingError::ReservationNotHeld))
                                | Err(EngineError::Conflict) => {}
                                Err(e) => panic!("cancel failed: {e}"),
                            }
                        }
                    }
                    won
                }));
            }
        }
        let mut won = 0;
        for t in tasks {
            won += t.await.unwrap();
        }
        let log = partition(&store_a, show).await;
        let (report, replayed) =
            check_log(show, &log).unwrap_or_else(|e| panic!("{}: {e}", backend.name));
        let conflicts = engine_a.stats().conflicts.load(Ordering::Relaxed)
            + engine_b.stats().conflicts.load(Ordering::Relaxed);
        println!(
            "{}: {won} holds won, {} events, {conflicts} version conflicts seen",
            backend.name, report.events
        );
        assert!(
            conflicts > 0,
            "{}: the engines never collided, so nothing was tested",
            backend.name
        );
        // A restarted engine loads exactly what the log says.
        let fresh = Engine::new(
            Arc::clone(&store_b),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
            EngineConfig::default(),
        );
        let loaded = fresh.query(show, |s| s.clone()).await.unwrap();
        // The engine keeps only its last closed reservations (ADR 0014); so does this.
        let mut replayed = replayed;
        replayed.evict_closed(EngineConfig::default().closed_reservations_kept, u64::MAX);
        assert_eq!(
            loaded, replayed,
            "{}: a fresh engine's state differs from the log",
            backend.name
        );
        fresh.shutdown().await;
        engine_a.shutdown().await;
        engine_b.shutdown().await;
    }
}
