//! `boxctl` run for real against logs written by the real engine, on SQLite and (with
//! `DATABASE_URL` set) on a fresh PostgreSQL database: replay lists the events in order,
//! seatmap travels back in time, verify passes a clean log and names the position and
//! rule of a broken one, export writes one CSV row per order.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use boxoffice_commands::{CommandMeta, Engine, EngineConfig};
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::reservation::{Reservation, Ticket};
use boxoffice_domain::show::{
    Limits, PriceTier, RowDef, SectionDef, SectionLayout, ShowCommand, ShowDefinition, Venue,
};
use boxoffice_domain::{
    Clock, Command, EntryId, ManualClock, Minor, OrderId, PaymentId, RandomIds, ReservationId,
    ShowId, TicketId, UserId,
};
use boxoffice_projections::{OrdersProjection, Projection};
use boxoffice_store::chain::ChainKey;
use boxoffice_store::{AppendBatch, EventMetadata, EventStore, NewEvent, StreamAppend};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

struct Backend {
    name: &'static str,
    url: String,
}

async fn backends() -> Vec<Backend> {
    let dir = std::env::temp_dir().join(format!("boxctl-test-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut all = vec![Backend {
        name: "sqlite",
        url: format!("sqlite://{}", dir.join("events.db").display()),
    }];
    match std::env::var("DATABASE_URL") {
        Ok(base) if base.starts_with("postgres") => {
            let url = boxoffice_tests::fresh_postgres_url(&base).await;
            all.push(Backend {
                name: "postgres",
                url,
            });
        }
        _ => println!("skipped: PostgreSQL (DATABASE_URL not set); running on SQLite only"),
    }
    all
}

fn definition(now: DateTime<Utc>) -> ShowDefinition {
    ShowDefinition {
        name: "Replay night".into(),
        venue: Venue {
            name: "Arena".into(),
            city: "Lisbon".into(),
            country: "PT".into(),
            timezone: "Europe/Lisbon".into(),
        },
        starts_at: now + Duration::days(30),
        currency: "EUR".into(),
        sales_open_at: None,
        sales_close_at: None,
        limits: Limits {
            hold_ttl_seconds: 60,
            ..Limits::default()
        },
        price_tiers: vec![PriceTier {
            id: "A".into(),
            name: "All".into(),
            price: Minor(5_000),
        }],
        sections: vec![
            SectionDef {
                id: "S".into(),
                name: "Stalls".into(),
                layout: SectionLayout::Seated {
                    rows: vec![RowDef {
                        row: "R0".into(),
                        seats: 10,
                        tier: "A".into(),
                    }],
                },
            },
            SectionDef {
                id: "floor".into(),
                name: "Floor".into(),
                layout: SectionLayout::GeneralAdmission {
                    capacity: 5,
                    tier: "A".into(),
                },
            },
        ],
    }
}

fn user() -> UserId {
    UserId(Uuid::now_v7())
}

fn hold(user: UserId, selection: Selection) -> Command {
    Command::Hold(HoldRequest {
        reservation_id: ReservationId(Uuid::now_v7()),
        user_id: user,
        idempotency_key: None,
        selection,
    })
}

fn seats(ids: &[&str]) -> Selection {
    Selection::Seats(ids.iter().map(|s| s.to_string()).collect())
}

fn floor(quantity: u32) -> Selection {
    Selection::General {
        section: "floor".into(),
        quantity,
    }
}

/// What the scenario left in the log, for the assertions.
struct Scenario {
    show: ShowId,
    /// Holds S-R0-1 and S-R0-2, then pays and gets tickets.
    paid: ReservationId,
    /// The position right after `paid`'s seats were held.
    held_at: u64,
    /// Holds S-R0-3 and lets it expire.
    expired: ReservationId,
    /// Holds S-R0-6 at the end and is still held.
    open: Reservation,
    /// The clock when the scenario ended.
    now: DateTime<Utc>,
}

async fn execute(engine: &Engine, show: ShowId, command: Command) -> boxoffice_commands::Outcome {
    engine
        .execute(show, command, CommandMeta::new("usr_test"))
        .await
        .unwrap()
}

/// Start, capture and issue tickets for a reservation, as the payment saga would.
async fn pay(engine: &Engine, show: ShowId, r: &Reservation) -> u64 {
    let payment_id = PaymentId(Uuid::now_v7());
    let id = r.reservation_id;
    execute(
        engine,
        show,
        Command::StartPayment {
            reservation_id: id,
            payment_id,
            payment_token: None,
        },
    )
    .await;
    execute(
        engine,
        show,
        Command::CapturePayment {
            reservation_id: id,
            payment_id,
            amount: r.total,
            provider_ref: Some("psp_1".into()),
        },
    )
    .await;
    let tickets = match &r.items {
        boxoffice_domain::reservation::Items::Seats(seats) => seats
            .iter()
            .map(|s| Ticket {
                ticket_id: TicketId(Uuid::now_v7()),
                seat: Some(s.clone()),
                section: None,
                code: Uuid::new_v4().simple().to_string(),
            })
            .collect(),
        boxoffice_domain::reservation::Items::General { section, quantity } => (0..*quantity)
            .map(|_| Ticket {
                ticket_id: TicketId(Uuid::now_v7()),
                seat: None,
                section: Some(section.clone()),
                code: Uuid::new_v4().simple().to_string(),
            })
            .collect(),
    };
    execute(
        engine,
        show,
        Command::IssueTickets {
            reservation_id: id,
            order_id: OrderId(Uuid::now_v7()),
            tickets,
        },
    )
    .await
    .position
}

async fn scenario(store: &Arc<dyn EventStore>) -> Scenario {
    let start = Utc::now();
    let clock = Arc::new(ManualClock::new(start));
    let engine = Engine::new(
        Arc::clone(store),
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::new(RandomIds),
        EngineConfig::default(),
    );
    let show = ShowId(Uuid::now_v7());
    execute(
        &engine,
        show,
        Command::Show(ShowCommand::Schedule {
            show_id: show,
            organizer_id: user(),
            definition: definition(start).into(),
        }),
    )
    .await;
    let paid = execute(&engine, show, hold(user(), seats(&["S-R0-1", "S-R0-2"]))).await;
    let held_at = paid.position;
    let paid = paid.reservation.unwrap();
    let expired = execute(&engine, show, hold(user(), seats(&["S-R0-3"])))
        .await
        .reservation
        .unwrap();
    let refunded = execute(&engine, show, hold(user(), floor(2)))
        .await
        .reservation
        .unwrap();
    // The floor is full: a waiting entry for two places has to wait.
    let lapsing = execute(&engine, show, hold(user(), floor(3)))
        .await
        .reservation
        .unwrap();
    let entry = EntryId(Uuid::now_v7());
    execute(
        &engine,
        show,
        Command::JoinWaitlist {
            entry_id: entry,
            user_id: user(),
            quantity: 2,
            section: Some("floor".into()),
        },
    )
    .await;
    clock.advance(Duration::seconds(20));
    pay(&engine, show, &paid).await;
    pay(&engine, show, &refunded).await;
    // Both remaining holds fall due: the floor's places go to the waiting entry.
    clock.advance(Duration::seconds(45));
    engine.tick(show).await.unwrap();
    engine.tick(show).await.unwrap();
    let offer = engine
        .query(show, move |s| {
            s.reservation(ReservationId(entry.0)).cloned()
        })
        .await
        .unwrap()
        .expect("the released places were offered to the waiting entry");
    assert_eq!(
        engine
            .query(show, move |s| s
                .reservation(expired.reservation_id)
                .unwrap()
                .status)
            .await
            .unwrap(),
        boxoffice_domain::reservation::ReservationStatus::Expired
    );
    let _ = lapsing;
    pay(&engine, show, &offer).await;
    clock.advance(Duration::seconds(5));
    execute(
        &engine,
        show,
        Command::Refund {
            reservation_id: refunded.reservation_id,
        },
    )
    .await;
    let open = execute(&engine, show, hold(user(), seats(&["S-R0-6"])))
        .await
        .reservation
        .unwrap();
    engine.shutdown().await;
    Scenario {
        show,
        paid: paid.reservation_id,
        held_at,
        expired: expired.reservation_id,
        open,
        now: clock.now(),
    }
}

/// The hash-chain key file this test's stores append with and boxctl verifies with.
fn key_file() -> &'static std::path::Path {
    static FILE: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| {
        let path =
            std::env::temp_dir().join(format!("boxctl-chain-{}.key", Uuid::new_v4().simple()));
        ChainKey::load_or_create(&path).unwrap();
        path
    });
    &FILE
}

fn boxctl(url: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_boxctl"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("EVENT_CHAIN_KEY_FILE", key_file())
        .output()
        .expect("boxctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {:?}\n{}\n{}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boxctl_replays_travels_verifies_and_exports_a_real_log() {
    for backend in backends().await {
        let url = backend.url.as_str();
        let name = backend.name;
        let key = ChainKey::load(key_file()).unwrap();
        let store = boxoffice_store::connect(url, Some(key)).await.unwrap();
        let s = scenario(&store).await;
        let show = s.show.to_string();
        let now = s.now.to_rfc3339();

        // replay --stream: the paid reservation's life, in order.
        let stream = format!("reservation-{}", s.paid);
        let lines = ok(boxctl(url, &["replay", "--stream", &stream]), name);
        let types: Vec<&str> = lines
            .lines()
            .map(|l| l.split_whitespace().nth(5).unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "ReservationPlaced",
                "PaymentStarted",
                "PaymentCaptured",
                "TicketsIssued"
            ],
            "{name}: {lines}"
        );
        // replay --show --json: the whole partition in position order, versions from 1.
        let events = json_lines(&ok(
            boxctl(url, &["--json", "replay", "--show", &show]),
            name,
        ));
        let log = {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let page = store.read_partition(&show, after, 1_000).await.unwrap();
                let Some(last) = page.last() else { break };
                after = last.position;
                all.extend(page);
            }
            all
        };
        assert_eq!(events.len(), log.len(), "{name}");
        for (line, stored) in events.iter().zip(&log) {
            assert_eq!(line["position"], json!(stored.position), "{name}");
            assert_eq!(line["event_type"], json!(stored.event_type), "{name}");
            assert_eq!(line["payload"], stored.payload, "{name}");
        }
        let seat_1 = format!("seat-{show}-S-R0-1");
        let seat_lines = ok(boxctl(url, &["replay", "--stream", &seat_1]), name);
        assert!(
            seat_lines
                .lines()
                .next()
                .unwrap()
                .contains(&format!("SeatHeld  [usr_test]  S-R0-1 by {}", s.paid))
        );
        assert!(
            seat_lines.lines().nth(1).unwrap().contains("SeatSold"),
            "{seat_lines}"
        );
        // --until stops at the position given.
        let until = json_lines(&ok(
            boxctl(
                url,
                &[
                    "--json",
                    "replay",
                    "--show",
                    &show,
                    "--until",
                    &s.held_at.to_string(),
                ],
            ),
            name,
        ));
        assert_eq!(
            until.last().unwrap()["position"],
            json!(s.held_at),
            "{name}"
        );
        assert!(until.len() < events.len());

        // seatmap --at: held then, sold now.
        let then: Value = serde_json::from_str(&ok(
            boxctl(
                url,
                &[
                    "--json",
                    "seatmap",
                    "--show",
                    &show,
                    "--at",
                    &s.held_at.to_string(),
                ],
            ),
            name,
        ))
        .unwrap();
        let seat = |map: &Value, id: &str| -> String {
            map["sections"][0]["rows"][0]["seats"]
                .as_array()
                .unwrap()
                .iter()
                .find(|seat| seat["id"] == id)
                .unwrap()["status"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(seat(&then, "S-R0-1"), "held", "{name}");
        assert_eq!(then["position"], json!(s.held_at));
        let latest: Value = serde_json::from_str(&ok(
            boxctl(url, &["--json", "seatmap", "--show", &show]),
            name,
        ))
        .unwrap();
        assert_eq!(seat(&latest, "S-R0-1"), "sold", "{name}");
        assert_eq!(seat(&latest, "S-R0-3"), "available", "{name}: expired");
        assert_eq!(seat(&latest, "S-R0-6"), "held", "{name}");
        // The floor: 2 sold to the waitlist's claim, 2 refunded, 3 expired.
        assert_eq!(latest["sections"][1]["sold"], json!(2), "{name}");
        assert_eq!(latest["sections"][1]["available"], json!(3), "{name}");
        let text = ok(
            boxctl(
                url,
                &["seatmap", "--show", &show, "--at", &s.held_at.to_string()],
            ),
            name,
        );
        assert!(text.contains("R0  HHAAAAAAAA"), "{name}: {text}");
        let text = ok(boxctl(url, &["seatmap", "--show", &show]), name);
        assert!(text.contains("R0  SSAAAHAAAA"), "{name}: {text}");

        // verify: clean at the scenario's time, on the whole log and on the show.
        let anchors =
            std::env::temp_dir().join(format!("boxctl-anchors-{}.json", Uuid::new_v4().simple()));
        let anchors_arg = anchors.to_str().unwrap();
        let clean = ok(
            boxctl(url, &["verify", "--now", &now, "--anchors", anchors_arg]),
            name,
        );
        assert!(clean.contains("clean"), "{name}: {clean}");
        assert!(
            clean.contains(&format!("hash chain checked over {} events", log.len())),
            "{name}: {clean}"
        );
        let recorded: Value = serde_json::from_slice(&std::fs::read(&anchors).unwrap()).unwrap();
        let anchored_head = recorded[&show]["position"].as_u64().unwrap();
        assert_eq!(
            anchored_head,
            log.last().unwrap().position,
            "{name}: {recorded}"
        );
        // Without the key, verify refuses unless told to skip the chain.
        let keyless = std::process::Command::new(env!("CARGO_BIN_EXE_boxctl"))
            .args(["verify", "--now", &now])
            .env("DATABASE_URL", url)
            .env_remove("EVENT_CHAIN_KEY_FILE")
            .output()
            .unwrap();
        assert_eq!(keyless.status.code(), Some(2), "{name}");
        let report: Value = serde_json::from_str(&ok(
            boxctl(url, &["--json", "verify", "--show", &show, "--now", &now]),
            name,
        ))
        .unwrap();
        assert_eq!(report["ok"], json!(true), "{name}: {report}");
        assert_eq!(report["events"], json!(log.len()), "{name}");

        // An hour later the last hold is past its deadline with no HoldExpired: rule 4,
        // named at the hold's placement.
        let later = (s.now + Duration::hours(1)).to_rfc3339();
        let late = boxctl(url, &["--json", "verify", "--now", &later]);
        assert_eq!(late.status.code(), Some(1), "{name}: {}", stdout(&late));
        let report: Value = serde_json::from_str(&stdout(&late)).unwrap();
        let placed_at = log
            .iter()
            .find(|e| {
                e.event_type == "ReservationPlaced"
                    && e.stream_id == format!("reservation-{}", s.open.reservation_id)
            })
            .unwrap()
            .position;
        assert_eq!(
            report["violations"][0]["rule"],
            json!("4"),
            "{name}: {report}"
        );
        assert_eq!(
            report["violations"][0]["position"],
            json!(placed_at),
            "{name}"
        );
        assert_eq!(
            report["violations"].as_array().unwrap().len(),
            1,
            "{report}"
        );

        // export orders: a header and one row per order (three were paid for).
        let read_side = run_orders_projection(&store, url).await;
        let csv = ok(
            boxctl(url, &["export", "--what", "orders", "--format", "csv"]),
            name,
        );
        let mut rows = csv.lines();
        assert_eq!(
            rows.next().unwrap(),
            "order_id,reservation_id,show_id,user_id,status,total,currency,paid_at,refunded_at,position",
            "{name}"
        );
        let rows: Vec<&str> = rows.collect();
        assert_eq!(rows.len(), 3, "{name}: {csv}");
        assert_eq!(rows.iter().filter(|r| r.contains(",refunded,")).count(), 1);
        assert!(
            rows.iter()
                .any(|r| r.contains(&s.paid.to_string()) && r.contains(",100.00,EUR,"))
        );
        let file = std::env::temp_dir().join(format!("boxctl-{}.csv", Uuid::new_v4().simple()));
        ok(
            boxctl(
                url,
                &[
                    "export",
                    "--what",
                    "tickets",
                    "--out",
                    file.to_str().unwrap(),
                ],
            ),
            name,
        );
        let tickets = std::fs::read_to_string(&file).unwrap();
        assert_eq!(tickets.lines().count(), 1 + 2 + 2 + 2, "{name}: {tickets}");
        assert!(!tickets.contains("code"), "ticket codes are secrets");
        let exported = ok(boxctl(url, &["export", "--what", "events"]), name);
        assert_eq!(exported.lines().count(), 1 + log.len(), "{name}");

        // verify replays every projection up to its checkpoint and compares it with the
        // live tables: clean now; a stray UPDATE of one order drifts the orders read model,
        // named with its checkpoint; `boxctl rebuild orders` puts it right.
        let checkpoint = read_side.handles()[0].position();
        let clean = ok(boxctl(url, &["verify", "--now", &now]), name);
        assert!(!clean.contains("rule projection"), "{name}: {clean}");
        raw_sql(
            url,
            &format!(
                "UPDATE orders SET total_minor = total_minor + 1 WHERE reservation_id = '{}'",
                s.paid
            ),
        )
        .await;
        let drifted = boxctl(url, &["verify", "--now", &now]);
        assert_eq!(
            drifted.status.code(),
            Some(1),
            "{name}: {}{}",
            stdout(&drifted),
            String::from_utf8_lossy(&drifted.stderr)
        );
        let text = stdout(&drifted);
        assert!(
            text.contains(&format!(
                "rule projection at position {checkpoint}: projection orders differs from a replay of the log up to its checkpoint: orders (1 live rows not in the replay, 1 replayed rows missing)"
            )),
            "{name}: {text}"
        );
        let rebuilt = ok(boxctl(url, &["--json", "rebuild", "orders"]), name);
        let rebuilt: Value = serde_json::from_str(rebuilt.trim()).unwrap();
        assert_eq!(rebuilt["projection"], json!("orders"), "{name}");
        assert_eq!(
            rebuilt["position"],
            json!(log.last().unwrap().position),
            "{name}"
        );
        // Every event of the log counts; only those of the types orders acts on are read.
        let everything = store.read_all(0, 100_000).await.unwrap();
        assert_eq!(rebuilt["events"], json!(everything.len()), "{name}");
        let types = OrdersProjection.event_types().expect("orders filters");
        let of_its_types = everything
            .iter()
            .filter(|e| types.contains(&e.event_type.as_str()))
            .count();
        assert!(
            0 < of_its_types && of_its_types < everything.len(),
            "{name}"
        );
        assert_eq!(rebuilt["applied"], json!(of_its_types), "{name}");
        let clean = ok(boxctl(url, &["verify", "--now", &now]), name);
        assert!(!clean.contains("rule projection"), "{name}: {clean}");
        read_side.shutdown().await;

        // A second SeatHeld for the held seat by another reservation, with correct
        // stream versions: rule 1, at that event's position.
        let seat_6 = format!("seat-{show}-S-R0-6");
        let version = store.read_stream(&seat_6, 0).await.unwrap().len() as u64;
        let bad = append_raw(
            &store,
            s.show,
            seat_6,
            version,
            "SeatHeld",
            json!({"seat_id": "S-R0-6", "reservation_id": s.expired.to_string(), "until": s.now + Duration::minutes(1)}),
        )
        .await;
        let broken = boxctl(url, &["verify", "--now", &now]);
        assert_eq!(broken.status.code(), Some(1), "{name}");
        let text = stdout(&broken);
        assert!(
            text.contains(&format!(
                "rule 1 at position {bad}: seat S-R0-6 held by {}",
                s.expired
            )),
            "{name}: {text}"
        );
        let one_show = boxctl(url, &["verify", "--show", &show, "--now", &now]);
        assert_eq!(one_show.status.code(), Some(1), "{name}");
        assert!(stdout(&one_show).contains(&format!("rule 1 at position {bad}")));

        // Tampering by someone with write access to the tables but not the key: one
        // event's actor is rewritten, and the partition's newest events (the anchored
        // head among them) are removed. The chain names the edited event; the anchors name
        // the truncation, which leaves a valid but shorter chain.
        let edited = log
            .iter()
            .find(|e| e.stream_id == stream && e.event_type == "ReservationPlaced")
            .unwrap()
            .position;
        tamper(url, edited, anchored_head).await;
        let tampered = boxctl(url, &["verify", "--now", &now, "--anchors", anchors_arg]);
        assert_eq!(tampered.status.code(), Some(1), "{name}");
        let text = stdout(&tampered);
        assert!(
            text.contains(&format!(
                "rule chain at position {edited}: event at position {edited} of {show} does not chain"
            )),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!(
                "rule chain at position {anchored_head}: event at position {anchored_head} of {show}, recorded in the anchors, is gone"
            )),
            "{name}: {text}"
        );
        // The failed run leaves the anchors as they were.
        let kept: Value = serde_json::from_slice(&std::fs::read(&anchors).unwrap()).unwrap();
        assert_eq!(kept, recorded, "{name}");
        std::fs::remove_file(&anchors).ok();
        println!("{name}: ok ({} events)", log.len());
    }
}

/// Runs SQL straight against the database, as an analyst with write access could.
async fn raw_sql(url: &str, sql: &str) {
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.ok();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.ok();
    }
}

/// Rewrites the actor of the event at `edited` and deletes every event from `from` on,
/// turning the immutability triggers off first, as a database superuser could.
async fn tamper(url: &str, edited: u64, from: u64) {
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(&format!(
            "ALTER TABLE events DISABLE TRIGGER USER;
             UPDATE events SET metadata = jsonb_set(metadata, '{{actor}}', '\"usr_mallory\"') WHERE position = {edited};
             DELETE FROM events WHERE position >= {from};
             ALTER TABLE events ENABLE TRIGGER USER;"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(&format!(
            "DROP TRIGGER events_reject_update; DROP TRIGGER events_reject_delete;
             UPDATE events SET metadata = json_set(metadata, '$.actor', 'usr_mallory') WHERE position = {edited};
             DELETE FROM events WHERE position >= {from};"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
    }
}

/// Runs the real orders projection until it has caught up with the log.
async fn run_orders_projection(
    store: &Arc<dyn EventStore>,
    url: &str,
) -> boxoffice_projections::Projections {
    let pool = boxoffice_store::tables::TablePool::connect(url)
        .await
        .unwrap();
    let projections = boxoffice_projections::Projections::start(
        Arc::clone(store),
        pool,
        vec![Arc::new(boxoffice_projections::OrdersProjection)],
        boxoffice_projections::RuntimeConfig::default(),
    );
    let head = store.head_position().await.unwrap();
    let handle = projections.handles()[0].clone();
    assert!(
        handle.wait_for(head, StdDuration::from_secs(30)).await,
        "the orders projection caught up"
    );
    projections
}

/// Appends one event to a show's partition, bypassing the domain.
async fn append_raw(
    store: &Arc<dyn EventStore>,
    show: ShowId,
    stream_id: String,
    expected_version: u64,
    event_type: &str,
    payload: Value,
) -> u64 {
    let event = NewEvent {
        event_type: event_type.into(),
        schema_version: 1,
        payload,
        metadata: EventMetadata {
            event_id: Uuid::now_v7(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: "test:raw".into(),
        },
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
