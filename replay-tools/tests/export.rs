//! `boxctl export` over a log written by the real engine, on SQLite and (with
//! `DATABASE_URL` set) on a fresh PostgreSQL database: every kind in CSV and in Parquet,
//! the Parquet file read back with the parquet crate's reader and compared cell by cell
//! with the CSV, its column types checked, and the sales export checked against what the
//! workload sold and refunded, per tier, section and hour. The summary on stderr names
//! the projection's checkpoint, also when the read model lags behind the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use boxoffice_commands::{CommandMeta, Engine, EngineConfig};
use boxoffice_domain::booking::{HoldRequest, Selection};
use boxoffice_domain::reservation::{Items, Reservation, Ticket};
use boxoffice_domain::show::{
    Limits, PriceTier, RowDef, SectionDef, SectionLayout, ShowCommand, ShowDefinition, Venue,
};
use boxoffice_domain::{
    Clock, Command, ManualClock, Minor, OrderId, PaymentId, RandomIds, ReservationId, ShowId,
    TicketId, UserId,
};
use boxoffice_projections::Projection as _;
use boxoffice_replay_tools::export::{self, ColumnType, What};
use boxoffice_store::EventStore;
use boxoffice_store::chain::ChainKey;
use chrono::{DateTime, Duration, DurationRound, SecondsFormat, Utc};
use parquet::basic::{LogicalType, TimeUnit, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Value, json};
use uuid::Uuid;

/// A CSV record by column name.
type Record = HashMap<String, String>;
/// A Parquet file's key-value metadata.
type Metadata = Vec<(String, String)>;

struct Backend {
    name: &'static str,
    url: String,
    dir: PathBuf,
}

async fn backends() -> Vec<Backend> {
    let dir = std::env::temp_dir().join(format!("boxctl-export-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut all = vec![Backend {
        name: "sqlite",
        url: format!("sqlite://{}", dir.join("events.db").display()),
        dir: dir.join("sqlite"),
    }];
    match std::env::var("DATABASE_URL") {
        Ok(base) if base.starts_with("postgres") => {
            let url = boxoffice_tests::fresh_postgres_url(&base).await;
            all.push(Backend {
                name: "postgres",
                url,
                dir: dir.join("postgres"),
            });
        }
        _ => println!("skipped: PostgreSQL (DATABASE_URL not set); running on SQLite only"),
    }
    for b in &all {
        std::fs::create_dir_all(&b.dir).unwrap();
    }
    all
}

/// Tier A "Front" at 50.00 (row R0), tier B "Back" at 20.00 (row R1 and the floor).
fn definition(now: DateTime<Utc>) -> ShowDefinition {
    ShowDefinition {
        name: "Export night".into(),
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
            hold_ttl_seconds: 600,
            ..Limits::default()
        },
        price_tiers: vec![
            PriceTier {
                id: "A".into(),
                name: "Front".into(),
                price: Minor(5_000),
            },
            PriceTier {
                id: "B".into(),
                name: "Back".into(),
                price: Minor(2_000),
            },
        ],
        sections: vec![
            SectionDef {
                id: "S".into(),
                name: "Stalls".into(),
                layout: SectionLayout::Seated {
                    rows: vec![
                        RowDef {
                            row: "R0".into(),
                            seats: 6,
                            tier: "A".into(),
                        },
                        RowDef {
                            row: "R1".into(),
                            seats: 6,
                            tier: "B".into(),
                        },
                    ],
                },
            },
            SectionDef {
                id: "floor".into(),
                name: "Floor".into(),
                layout: SectionLayout::GeneralAdmission {
                    capacity: 10,
                    tier: "B".into(),
                },
            },
        ],
    }
}

async fn execute(engine: &Engine, show: ShowId, command: Command) -> boxoffice_commands::Outcome {
    engine
        .execute(show, command, CommandMeta::new("usr_test"))
        .await
        .unwrap()
}

async fn hold(engine: &Engine, show: ShowId, selection: Selection) -> Reservation {
    execute(
        engine,
        show,
        Command::Hold(HoldRequest {
            reservation_id: ReservationId(Uuid::now_v7()),
            user_id: UserId(Uuid::now_v7()),
            idempotency_key: None,
            selection,
        }),
    )
    .await
    .reservation
    .unwrap()
}

fn seats(ids: &[&str]) -> Selection {
    Selection::Seats(ids.iter().map(|s| s.to_string()).collect())
}

/// Start, capture and issue tickets, as the payment saga would.
async fn pay(engine: &Engine, show: ShowId, r: &Reservation) {
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
    let ticket = |seat: Option<String>, section: Option<String>| Ticket {
        ticket_id: TicketId(Uuid::now_v7()),
        seat,
        section,
        code: Uuid::new_v4().simple().to_string(),
    };
    let tickets = match &r.items {
        Items::Seats(seats) => seats
            .iter()
            .map(|s| ticket(Some(s.clone()), None))
            .collect(),
        Items::General { section, quantity } => (0..*quantity)
            .map(|_| ticket(None, Some(section.clone())))
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
    .await;
}

struct Workload {
    show: ShowId,
    /// The hours (UTC) of the first sales, of the floor sale, and of its refund.
    hours: [DateTime<Utc>; 3],
}

/// In the first hour: 2 front seats (100.00) and a front and a back seat (70.00). An
/// hour later: 3 floor places (60.00), refunded another hour later. One hold stays open.
/// The show is renamed before any of it.
async fn workload(store: &Arc<dyn EventStore>) -> (Workload, Arc<Engine>, Arc<ManualClock>) {
    let start = Utc::now().duration_trunc(Duration::hours(1)).unwrap() + Duration::minutes(5);
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
            organizer_id: UserId(Uuid::now_v7()),
            definition: definition(start).into(),
        }),
    )
    .await;
    execute(
        &engine,
        show,
        Command::Show(ShowCommand::Rename {
            name: "Export night (late show)".into(),
        }),
    )
    .await;
    let front = hold(&engine, show, seats(&["S-R0-1", "S-R0-2"])).await;
    assert_eq!(front.total, Minor(10_000));
    pay(&engine, show, &front).await;
    let mixed = hold(&engine, show, seats(&["S-R0-3", "S-R1-1"])).await;
    assert_eq!(mixed.total, Minor(7_000));
    pay(&engine, show, &mixed).await;
    clock.advance(Duration::hours(1));
    let floor = hold(
        &engine,
        show,
        Selection::General {
            section: "floor".into(),
            quantity: 3,
        },
    )
    .await;
    assert_eq!(floor.total, Minor(6_000));
    pay(&engine, show, &floor).await;
    clock.advance(Duration::hours(1));
    execute(
        &engine,
        show,
        Command::Refund {
            reservation_id: floor.reservation_id,
        },
    )
    .await;
    hold(&engine, show, seats(&["S-R0-6"])).await;
    let hour = start.duration_trunc(Duration::hours(1)).unwrap();
    let hours = [hour, hour + Duration::hours(1), hour + Duration::hours(2)];
    (Workload { show, hours }, engine, clock)
}

/// Runs the orders and sales projections until they have applied the whole log.
async fn project(store: &Arc<dyn EventStore>, url: &str) {
    let pool = boxoffice_store::tables::TablePool::connect(url)
        .await
        .unwrap();
    let projections = boxoffice_projections::Projections::start(
        Arc::clone(store),
        pool,
        vec![
            Arc::new(boxoffice_projections::OrdersProjection),
            Arc::new(boxoffice_projections::SalesProjection),
        ],
        boxoffice_projections::RuntimeConfig::default(),
    );
    let head = store.head_position().await.unwrap();
    assert!(
        projections
            .wait_for_all(head, StdDuration::from_secs(30))
            .await,
        "the projections caught up with position {head}"
    );
    projections.shutdown().await;
}

fn boxctl(url: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_boxctl"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("boxctl runs")
}

/// Runs a successful boxctl and returns its stdout and its JSON summary (stderr).
fn ok(url: &str, args: &[&str], what: &str) -> (String, Value) {
    let output = boxctl(url, args);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "{what}: {args:?}: {:?}\n{stderr}",
        output.status
    );
    let summary = serde_json::from_str(stderr.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{what}: summary on stderr is not JSON ({e}): {stderr}"));
    (String::from_utf8(output.stdout).unwrap(), summary)
}

/// A CSV as its header and records.
fn read_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let records = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, records)
}

/// A Parquet file as its column names, its rows rendered as the CSV renders them, and
/// its key-value metadata. Checks that every column has the type its kind calls for.
fn read_parquet(path: &Path, what: What) -> (Vec<String>, Vec<Vec<String>>, Metadata) {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let meta = reader.metadata().file_metadata();
    let schema = meta.schema_descr();
    let columns = what.columns();
    assert_eq!(schema.num_columns(), columns.len(), "{what:?}");
    for (i, expected) in columns.iter().enumerate() {
        let column = schema.column(i);
        let logical = column.logical_type_ref().cloned();
        let fits = match expected.ty {
            ColumnType::Text => {
                column.physical_type() == PhysicalType::BYTE_ARRAY
                    && logical == Some(LogicalType::String)
            }
            ColumnType::Int => column.physical_type() == PhysicalType::INT64 && logical.is_none(),
            ColumnType::Money => {
                column.physical_type() == PhysicalType::INT64
                    && logical == Some(LogicalType::decimal(2, 18))
            }
            ColumnType::Time => {
                column.physical_type() == PhysicalType::INT64
                    && logical == Some(LogicalType::timestamp(true, TimeUnit::MICROS))
            }
        };
        assert!(fits, "{what:?}: column {} is {column:?}", expected.name);
        assert_eq!(
            column.max_def_level(),
            i16::from(expected.nullable),
            "{what:?}: nullability of {}",
            expected.name
        );
    }
    let names = schema
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let rows = reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            row.unwrap()
                .get_column_iter()
                .map(|(_, field)| field_text(field))
                .collect()
        })
        .collect();
    let metadata = meta
        .key_value_metadata()
        .into_iter()
        .flatten()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect();
    (names, rows, metadata)
}

/// A Parquet value as the CSV writes it.
fn field_text(field: &Field) -> String {
    match field {
        Field::Null => String::new(),
        Field::Str(s) => s.clone(),
        Field::Long(n) => n.to_string(),
        Field::Decimal(d) => {
            assert_eq!(d.scale(), 2);
            Minor(i64::from_be_bytes(d.data().try_into().unwrap())).to_string()
        }
        Field::TimestampMicros(us) => DateTime::from_timestamp_micros(*us)
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Micros, true),
        other => panic!("unexpected Parquet field {other:?}"),
    }
}

/// Exports `what` as CSV (stdout) and Parquet (a file), checks the two agree, and returns
/// the CSV's records (by column name) and the two summaries.
fn export_both(backend: &Backend, what: What) -> (Vec<Record>, Value, Metadata) {
    let name = format!("{} {what:?}", backend.name);
    let kind = what.name();
    let (csv, csv_summary) = ok(
        &backend.url,
        &["--json", "export", "--what", kind, "--format", "csv"],
        &name,
    );
    let file = backend.dir.join(format!("{kind}.parquet"));
    let (stdout, parquet_summary) = ok(
        &backend.url,
        &[
            "--json",
            "export",
            "--what",
            kind,
            "--format",
            "parquet",
            "--output",
            file.to_str().unwrap(),
        ],
        &name,
    );
    assert!(stdout.is_empty(), "{name}: Parquet goes to the file only");
    assert!(
        !backend
            .dir
            .join(format!(".{kind}.parquet.partial"))
            .exists(),
        "{name}: the partial file was renamed"
    );
    assert_eq!(csv_summary, parquet_summary, "{name}");
    let (header, records) = read_csv(&csv);
    let (columns, rows, metadata) = read_parquet(&file, what);
    assert_eq!(header, columns, "{name}: the same columns");
    assert_eq!(
        header,
        what.columns().iter().map(|c| c.name).collect::<Vec<_>>(),
        "{name}"
    );
    assert_eq!(records.len() as u64, csv_summary["rows"], "{name}");
    assert_eq!(
        rows, records,
        "{name}: Parquet and CSV hold the same values"
    );
    let records = records
        .into_iter()
        .map(|r| header.iter().cloned().zip(r).collect())
        .collect();
    (records, csv_summary, metadata)
}

fn int(record: &Record, column: &str) -> i64 {
    record[column].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_every_kind_as_csv_and_parquet_with_the_same_rows() {
    assert_eq!(
        export::ORDERS_PROJECTION,
        boxoffice_projections::OrdersProjection.name()
    );
    assert_eq!(
        export::SALES_PROJECTION,
        boxoffice_projections::SalesProjection.name()
    );
    for backend in backends().await {
        let name = backend.name;
        let url = backend.url.as_str();
        let store = boxoffice_store::connect(url, Some(ChainKey::generate()))
            .await
            .unwrap();

        // Before any projection ran the read models are empty and say so.
        let (records, summary, _) = export_both(&backend, What::Sales);
        assert!(records.is_empty(), "{name}");
        assert_eq!(summary["checkpoint"], Value::Null, "{name}: {summary}");

        let (w, engine, clock) = workload(&store).await;
        project(&store, url).await;
        let head = store.head_position().await.unwrap();
        let show = w.show.to_string();

        // Sales: one row per tier, section and hour, with the names from the log.
        let (sales, summary, metadata) = export_both(&backend, What::Sales);
        assert_eq!(
            summary,
            json!({"what": "sales", "rows": 4, "log_head": head, "projection": "sales", "checkpoint": head}),
            "{name}"
        );
        assert!(metadata.contains(&("boxoffice.checkpoint".into(), head.to_string())));
        let hour = |i: usize| w.hours[i].to_rfc3339_opts(SecondsFormat::Micros, true);
        let key = |r: &Record| (r["tier"].clone(), r["section"].clone(), r["hour"].clone());
        let keys: Vec<_> = sales.iter().map(key).collect();
        let expected_keys = [
            ("A", "S", hour(0)),
            ("B", "S", hour(0)),
            ("B", "floor", hour(1)),
            ("B", "floor", hour(2)),
        ]
        .map(|(t, s, h)| (t.to_string(), s.to_string(), h));
        assert_eq!(keys, expected_keys, "{name}: {sales:?}");
        let counts: Vec<[i64; 5]> = sales
            .iter()
            .map(|r| {
                [
                    "tickets_sold",
                    "revenue_minor",
                    "tickets_refunded",
                    "refunds_minor",
                    "net_revenue_minor",
                ]
                .map(|c| int(r, c))
            })
            .collect();
        assert_eq!(
            counts,
            [
                [3, 15_000, 0, 0, 15_000],
                [1, 2_000, 0, 0, 2_000],
                [3, 6_000, 0, 0, 6_000],
                [0, 0, 3, 6_000, -6_000],
            ],
            "{name}"
        );
        for r in &sales {
            assert_eq!(r["show_id"], show);
            assert_eq!(r["show_name"], "Export night (late show)", "{name}");
            assert_eq!(r["currency"], "EUR");
            let tier_name = if r["tier"] == "A" { "Front" } else { "Back" };
            assert_eq!(r["tier_name"], tier_name, "{name}");
            let section_name = if r["section"] == "S" {
                "Stalls"
            } else {
                "Floor"
            };
            assert_eq!(r["section_name"], section_name, "{name}");
        }
        // The per-tier totals the workload sold.
        for (tier, sold, revenue) in [("A", 3, 15_000), ("B", 4, 8_000)] {
            let of_tier = sales.iter().filter(|r| r["tier"] == tier);
            let (s, rev) = of_tier.fold((0, 0), |(s, rev), r| {
                (s + int(r, "tickets_sold"), rev + int(r, "revenue_minor"))
            });
            assert_eq!((s, rev), (sold, revenue), "{name}: tier {tier}");
        }

        // Orders: three, one refunded; the totals as decimal strings.
        let (orders, summary, _) = export_both(&backend, What::Orders);
        assert_eq!(summary["checkpoint"], json!(head), "{name}");
        assert_eq!(orders.len(), 3, "{name}");
        let mut totals: Vec<_> = orders
            .iter()
            .map(|o| {
                (
                    o["total"].clone(),
                    o["status"].clone(),
                    o["refunded_at"].is_empty(),
                )
            })
            .collect();
        totals.sort();
        assert_eq!(
            totals,
            [
                ("100.00".to_string(), "paid".to_string(), true),
                ("60.00".into(), "refunded".into(), false),
                ("70.00".into(), "paid".into(), true),
            ],
            "{name}"
        );

        // Tickets: 2 + 2 seats and 3 floor places, a seat or a section each, no codes.
        let (tickets, _, _) = export_both(&backend, What::Tickets);
        assert_eq!(tickets.len(), 7, "{name}");
        assert_eq!(tickets.iter().filter(|t| t["seat"].is_empty()).count(), 3);
        assert!(
            tickets
                .iter()
                .all(|t| t["seat"].is_empty() != t["section"].is_empty())
        );

        // Events: the whole log, positions in order.
        let mut logged = 0;
        let mut after = 0;
        loop {
            let page = store.read_all(after, 1_000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            logged += page.len();
        }
        let (events, summary, metadata) = export_both(&backend, What::Events);
        assert_eq!(
            summary,
            json!({"what": "events", "rows": logged, "log_head": head, "position": head}),
            "{name}"
        );
        assert!(metadata.contains(&("boxoffice.log_position".into(), head.to_string())));
        let positions: Vec<i64> = events.iter().map(|e| int(e, "position")).collect();
        assert!(positions.windows(2).all(|p| p[0] < p[1]), "{name}");
        assert_eq!(positions.last().copied(), Some(head as i64));
        assert!(
            events
                .iter()
                .any(|e| e["event_type"] == "ShowRenamed" && e["payload"].contains("late show"))
        );

        // The log moves on without the projection: the export says how far behind it is.
        clock.advance(Duration::minutes(1));
        hold(&engine, w.show, seats(&["S-R1-6"])).await;
        engine.shutdown().await;
        let (behind, summary, _) = export_both(&backend, What::Sales);
        assert_eq!(behind, sales, "{name}: the read model did not move");
        assert_eq!(summary["checkpoint"], json!(head), "{name}");
        let new_head = store.head_position().await.unwrap();
        assert!(new_head > head);
        assert_eq!(summary["log_head"], json!(new_head), "{name}");
        let text = boxctl(url, &["export", "--what", "sales"]);
        let stderr = String::from_utf8_lossy(&text.stderr);
        assert!(
            stderr.contains(&format!(
                "from the sales read model at its checkpoint, log position {head} ({} events behind the log's head {new_head})",
                new_head - head
            )),
            "{name}: {stderr}"
        );

        // Parquet needs a file.
        let refused = boxctl(url, &["export", "--what", "orders", "--format", "parquet"]);
        assert_eq!(refused.status.code(), Some(2), "{name}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("--output <FILE>"),
            "{name}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
        assert!(refused.stdout.is_empty());
        println!("{name}: ok ({head} events)");
    }
}
