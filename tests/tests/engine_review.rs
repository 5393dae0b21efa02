//! Engine edge cases found in review: what the clock decides (expiries, sales opening)
//! comes before a batch's commands; a batch never outgrows one append, and an oversized
//! decision is refused on its own without stopping the show or its timers.

use std::sync::Arc;

use boxoffice_commands::{CommandMeta, Engine, EngineConfig, EngineError, Outcome};
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::show::{Limits, ShowCommand};
use boxoffice_domain::{Clock, Command, ManualClock, RandomIds, ReservationId, ShowId, UserId};
use boxoffice_store::EventStore;
use boxoffice_tests::{check_log, fresh_sqlite_url, open, partition, show_definition};
use chrono::{Duration, Utc};

fn engine(store: &Arc<dyn EventStore>, clock: &Arc<ManualClock>) -> Arc<Engine> {
    Engine::new(
        Arc::clone(store),
        Arc::clone(clock) as Arc<dyn Clock>,
        Arc::new(RandomIds),
        EngineConfig::default(),
    )
}

fn hold(user: UserId, seats: &[String]) -> Command {
    Command::Hold(HoldRequest {
        reservation_id: ReservationId(uuid::Uuid::now_v7()),
        user_id: user,
        idempotency_key: None,
        selection: Selection::Seats(seats.to_vec()),
    })
}

async fn schedule(engine: &Engine, rows: u32, per_row: u32, limits: Limits) -> ShowId {
    let show = ShowId(uuid::Uuid::now_v7());
    let definition = show_definition(rows, per_row, 0, limits);
    engine
        .execute(
            show,
            Command::Show(ShowCommand::Schedule {
                show_id: show,
                organizer_id: UserId(uuid::Uuid::now_v7()),
                definition: definition.into(),
            }),
            CommandMeta::new("t"),
        )
        .await
        .unwrap();
    show
}

/// Rule 5: when sales open by the clock, waiting entries get freed seats before a buyer
/// whose hold arrives in the same instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_right_after_sales_open_beats_the_waitlist() {
    let store = open(&fresh_sqlite_url()).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let engine = engine(&store, &clock);
    let show = schedule(&engine, 1, 2, Limits::default()).await;
    let holder = UserId(uuid::Uuid::now_v7());
    let seats = vec!["S-R0-1".to_string(), "S-R0-2".to_string()];
    let held = engine
        .execute(show, hold(holder, &seats), CommandMeta::new("t"))
        .await
        .unwrap()
        .reservation
        .unwrap();
    let entry = boxoffice_domain::EntryId(uuid::Uuid::now_v7());
    engine
        .execute(
            show,
            Command::JoinWaitlist {
                entry_id: entry,
                user_id: UserId(uuid::Uuid::now_v7()),
                quantity: 2,
                section: None,
            },
            CommandMeta::new("t"),
        )
        .await
        .unwrap();
    let reopen = clock.now() + Duration::seconds(60);
    engine
        .execute(
            show,
            Command::Show(ShowCommand::ChangeSalesWindow {
                sales_open_at: Some(reopen),
                sales_close_at: None,
            }),
            CommandMeta::new("t"),
        )
        .await
        .unwrap();
    engine
        .execute(
            show,
            Command::Cancel {
                reservation_id: held.reservation_id,
                by: holder.to_string(),
            },
            CommandMeta::new("t"),
        )
        .await
        .unwrap();
    // Sales open by the clock; a buyer's hold arrives before the timer batch (no tick).
    clock.advance(Duration::seconds(61));
    let other = engine
        .execute(
            show,
            hold(UserId(uuid::Uuid::now_v7()), &seats[..1]),
            CommandMeta::new("t"),
        )
        .await;
    let status = engine
        .query(show, move |s| s.waitlist.entry(entry).unwrap().status)
        .await
        .unwrap();
    engine.shutdown().await;
    assert!(
        other.is_err(),
        "rule 5: a freed seat went to public sale ahead of the waiting entry (entry is {status:?})"
    );
}

/// 70 blocks of 1,000 seats each arrive at once, more events than one append may carry:
/// the batch stops growing at its event budget, the rest go in later batches, and an
/// unrelated hold among them goes through.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_large_commands_is_split_across_appends_and_the_show_keeps_running() {
    let store = open(&fresh_sqlite_url()).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let engine = engine(&store, &clock);
    let limits = Limits {
        hold_ttl_seconds: 60,
        ..Limits::default()
    };
    let show = schedule(&engine, 40, 2000, limits).await;
    let buyer = UserId(uuid::Uuid::now_v7());
    let held = engine
        .execute(
            show,
            hold(buyer, &["S-R39-1".to_string()]),
            CommandMeta::new("t"),
        )
        .await
        .unwrap()
        .reservation
        .unwrap();
    let mut futs = Vec::new();
    for b in 0..70u32 {
        let row = b / 2;
        let first = (b % 2) * 1000 + 1;
        let seats: Vec<String> = (first..first + 1000)
            .map(|n| format!("S-R{row}-{n}"))
            .collect();
        futs.push(engine.execute(
            show,
            Command::BlockSeats {
                seats,
                reason: "house".into(),
            },
            CommandMeta::new("org"),
        ));
    }
    // An unrelated buyer's hold that happens to share the batch.
    futs.push(engine.execute(
        show,
        hold(UserId(uuid::Uuid::now_v7()), &["S-R39-2".to_string()]),
        CommandMeta::new("t"),
    ));
    let results: Vec<Result<Outcome, EngineError>> = futures::future::join_all(futs).await;
    let failed: Vec<&EngineError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    println!(
        "{} of {} failed; first: {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );

    // Only decisions too large for one append are refused, each on its own.
    assert!(
        failed.iter().all(|e| matches!(e, EngineError::TooLarge(_))),
        "unexpected failures: {failed:?}"
    );
    assert!(
        results.last().unwrap().is_ok(),
        "an unrelated hold in the same batch failed"
    );
    assert!(
        results.iter().filter(|r| r.is_ok()).count() > 60,
        "too few blocks went through"
    );

    // The show's actor still runs its timers: the due hold expires by itself (the actor
    // looks at the clock at least every second; wait for it with a bound).
    clock.advance(Duration::seconds(61));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut expired = false;
    while !expired && std::time::Instant::now() < deadline {
        let log = partition(&store, show).await;
        expired = log.iter().any(|e| e.event_type == "HoldExpired");
        if !expired {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    engine.shutdown().await;
    assert!(
        expired,
        "rule 4: the due hold {:?} did not expire",
        held.reservation_id
    );
    check_log(show, &partition(&store, show).await).unwrap();
}

/// A hold already past its expiry is expired before the commands of the batch that
/// notices it, so its seat can be held again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_decided_before_due_expiries() {
    let store = open(&fresh_sqlite_url()).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let engine = engine(&store, &clock);
    let limits = Limits {
        hold_ttl_seconds: 60,
        ..Limits::default()
    };
    let show = schedule(&engine, 1, 4, limits).await;
    let a = UserId(uuid::Uuid::now_v7());
    let seat = vec!["S-R0-1".to_string()];
    let r = engine
        .execute(show, hold(a, &seat), CommandMeta::new("t"))
        .await
        .unwrap()
        .reservation
        .unwrap();
    clock.advance(Duration::seconds(61));
    let b = engine
        .execute(
            show,
            hold(UserId(uuid::Uuid::now_v7()), &seat),
            CommandMeta::new("t"),
        )
        .await;
    let log = partition(&store, show).await;
    engine.shutdown().await;
    assert!(
        b.is_ok(),
        "a hold was refused because of a hold already past its expiry: {b:?}"
    );
    let expired = log
        .iter()
        .position(|e| e.event_type == "HoldExpired")
        .expect("the overdue hold expired");
    let placed_again = log
        .iter()
        .rposition(|e| e.event_type == "ReservationPlaced")
        .unwrap();
    assert!(
        expired < placed_again,
        "the expiry is logged before the new hold"
    );
    assert_ne!(
        r.reservation_id,
        b.unwrap().reservation.unwrap().reservation_id
    );
}

/// Cancelling a show with more holds than one append may carry: the cancellation and
/// the first holds go in one decision, the rest are cancelled in the next batches by
/// the engine itself, and every seat is free in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_show_with_very_many_holds_ends_them_all() {
    let store = open(&fresh_sqlite_url()).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let engine = engine(&store, &clock);
    let show = schedule(&engine, 30, 1_000, Limits::default()).await;
    // 15,000 holds of two seats: 45,000 release events, more than one append carries.
    let mut futs = Vec::new();
    for n in 0..15_000u32 {
        let (row, first) = (n / 500, (n % 500) * 2 + 1);
        let seats = [
            format!("S-R{row}-{first}"),
            format!("S-R{row}-{}", first + 1),
        ];
        futs.push(engine.execute(
            show,
            hold(UserId(uuid::Uuid::now_v7()), &seats),
            CommandMeta::new("buyer"),
        ));
        if futs.len() == 2_000 {
            for r in futures::future::join_all(std::mem::take(&mut futs)).await {
                r.unwrap();
            }
        }
    }
    for r in futures::future::join_all(futs).await {
        r.unwrap();
    }
    engine
        .execute(
            show,
            Command::Show(ShowCommand::Cancel {
                reason: "storm".into(),
            }),
            CommandMeta::new("org"),
        )
        .await
        .expect("the cancellation is not refused as too large");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let held = engine
            .query(show, |s| {
                s.reservations
                    .values()
                    .filter(|r| r.status == boxoffice_domain::reservation::ReservationStatus::Held)
                    .count()
            })
            .await
            .unwrap();
        if held == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{held} holds still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = partition(&store, show).await;
    let (_, state) = check_log(show, &log).unwrap();
    let cancelled = log
        .iter()
        .filter(|e| e.event_type == "ReservationCancelled")
        .count();
    let released = log
        .iter()
        .filter(|e| e.event_type == "SeatReleased")
        .count();
    assert_eq!((cancelled, released), (15_000, 30_000));
    assert_eq!(state.seats_available(), 30_000, "every seat is free again");
}
