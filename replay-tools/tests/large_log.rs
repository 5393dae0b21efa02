//! Writes a large log with the real engine for measuring `boxctl verify`'s speed; run on
//! demand: `BOXCTL_LARGE_LOG_URL=sqlite:///tmp/big.db BOXCTL_LARGE_LOG_EVENTS=200000
//! cargo test -p boxoffice-replay-tools --test large_log -- --ignored --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use boxoffice_commands::{CommandMeta, Engine, EngineConfig};
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::reservation::{Items, Ticket};
use boxoffice_domain::show::{
    Limits, PriceTier, RowDef, SectionDef, SectionLayout, ShowCommand, ShowDefinition, Venue,
};
use boxoffice_domain::{
    Clock, Command, ManualClock, Minor, OrderId, PaymentId, RandomIds, ReservationId, ShowId,
    TicketId, UserId,
};
use chrono::{Duration, Utc};
use uuid::Uuid;

/// Shows written concurrently, so the engine's group commit has company.
const SHOWS: usize = 16;

fn definition() -> ShowDefinition {
    ShowDefinition {
        name: "Load night".into(),
        venue: Venue {
            name: "Arena".into(),
            city: "Lisbon".into(),
            country: "PT".into(),
            timezone: "Europe/Lisbon".into(),
        },
        starts_at: Utc::now() + Duration::days(30),
        currency: "EUR".into(),
        sales_open_at: None,
        sales_close_at: None,
        limits: Limits {
            max_tickets_per_user: 10,
            ..Limits::default()
        },
        price_tiers: vec![PriceTier {
            id: "A".into(),
            name: "All".into(),
            price: Minor(5_000),
        }],
        sections: vec![SectionDef {
            id: "S".into(),
            name: "Stalls".into(),
            layout: SectionLayout::Seated {
                rows: (0..40)
                    .map(|r| RowDef {
                        row: format!("R{r}"),
                        seats: 50,
                        tier: "A".into(),
                    })
                    .collect(),
            },
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a large log on demand for measuring boxctl verify"]
async fn write_a_large_log() {
    let url = std::env::var("BOXCTL_LARGE_LOG_URL").expect("BOXCTL_LARGE_LOG_URL");
    let target: u64 = std::env::var("BOXCTL_LARGE_LOG_EVENTS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(200_000);
    let store = boxoffice_store::connect(&url, Some(boxoffice_store::chain::ChainKey::generate()))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::new(RandomIds),
        EngineConfig::default(),
    );
    let written = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..SHOWS {
        let engine = Arc::clone(&engine);
        let written = Arc::clone(&written);
        tasks.push(tokio::spawn(async move {
            let show = ShowId(Uuid::now_v7());
            let meta = || CommandMeta::new("usr_load");
            let schedule = Command::Show(ShowCommand::Schedule {
                show_id: show,
                organizer_id: UserId(Uuid::now_v7()),
                definition: definition().into(),
            });
            engine.execute(show, schedule, meta()).await.unwrap();
            let mut round = 0u64;
            while written.load(Ordering::Relaxed) < target {
                round += 1;
                let hold = Command::Hold(HoldRequest {
                    reservation_id: ReservationId(Uuid::now_v7()),
                    user_id: UserId(Uuid::now_v7()),
                    idempotency_key: None,
                    selection: Selection::BestAvailable {
                        section: "S".into(),
                        quantity: 4,
                    },
                });
                let Ok(outcome) = engine.execute(show, hold, meta()).await else {
                    break; // sold out
                };
                let mut events = outcome.events as u64;
                let r = outcome.reservation.unwrap();
                let id = r.reservation_id;
                let follow_ups = if round.is_multiple_of(20) {
                    let payment_id = PaymentId(Uuid::now_v7());
                    let Items::Seats(seats) = &r.items else {
                        unreachable!()
                    };
                    vec![
                        Command::StartPayment {
                            reservation_id: id,
                            payment_id,
                            payment_token: None,
                        },
                        Command::CapturePayment {
                            reservation_id: id,
                            payment_id,
                            amount: r.total,
                            provider_ref: None,
                        },
                        Command::IssueTickets {
                            reservation_id: id,
                            order_id: OrderId(Uuid::now_v7()),
                            tickets: seats
                                .iter()
                                .map(|s| Ticket {
                                    ticket_id: TicketId(Uuid::now_v7()),
                                    seat: Some(s.clone()),
                                    section: None,
                                    code: "x".into(),
                                })
                                .collect(),
                        },
                    ]
                } else {
                    vec![Command::Cancel {
                        reservation_id: id,
                        by: "usr_load".into(),
                    }]
                };
                for command in follow_ups {
                    events += engine.execute(show, command, meta()).await.unwrap().events as u64;
                }
                written.fetch_add(events, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    engine.shutdown().await;
    let n = store.head_position().await.unwrap();
    println!(
        "wrote {n} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
