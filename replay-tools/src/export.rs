//! `boxctl export`: orders and tickets from their read models, events from the log, as
//! CSV. Amounts are decimal strings, times RFC 3339. Ticket codes are secrets a scanner
//! verifies, so they are never exported.

use std::io::Write;

use anyhow::Context;
use boxoffice_domain::Minor;
use boxoffice_store::EventStore;
use boxoffice_store::tables::TablePool;
use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{READ_PAGE_EVENTS, progress};

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    Orders,
    Tickets,
    Events,
}

const ORDERS_SQL: &str = "SELECT order_id, reservation_id, show_id, user_id, status, total_minor, currency, paid_at, refunded_at, position FROM orders ORDER BY position, order_id";
const TICKETS_SQL: &str = "SELECT ticket_id, order_id, show_id, reservation_id, seat, section, ordinal FROM tickets ORDER BY order_id, ordinal";

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_default()
}

/// Writes one read-model row for either backend's row type.
macro_rules! order_record {
    ($row:expr) => {{
        let row = $row;
        let total: i64 = row.try_get("total_minor")?;
        let position: i64 = row.try_get("position")?;
        vec![
            row.try_get::<String, _>("order_id")?,
            row.try_get::<String, _>("reservation_id")?,
            row.try_get::<String, _>("show_id")?,
            row.try_get::<String, _>("user_id")?,
            row.try_get::<String, _>("status")?,
            Minor(total).to_string(),
            row.try_get::<String, _>("currency")?,
            time(Some(row.try_get::<DateTime<Utc>, _>("paid_at")?)),
            time(row.try_get::<Option<DateTime<Utc>>, _>("refunded_at")?),
            position.to_string(),
        ]
    }};
}

macro_rules! ticket_record {
    ($row:expr) => {{
        let row = $row;
        let ordinal: i64 = row.try_get("ordinal")?;
        vec![
            row.try_get::<String, _>("ticket_id")?,
            row.try_get::<String, _>("order_id")?,
            row.try_get::<String, _>("show_id")?,
            row.try_get::<String, _>("reservation_id")?,
            row.try_get::<Option<String>, _>("seat")?
                .unwrap_or_default(),
            row.try_get::<Option<String>, _>("section")?
                .unwrap_or_default(),
            ordinal.to_string(),
        ]
    }};
}

/// Writes the export as CSV; returns the number of data rows.
pub async fn run(
    url: &str,
    store: &dyn EventStore,
    what: What,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let mut csv = csv::Writer::from_writer(out);
    let mut rows = 0u64;
    match what {
        What::Orders | What::Tickets => {
            let pool = TablePool::connect(url).await?;
            let (header, sql): (&[&str], &str) = if what == What::Orders {
                (
                    &[
                        "order_id",
                        "reservation_id",
                        "show_id",
                        "user_id",
                        "status",
                        "total",
                        "currency",
                        "paid_at",
                        "refunded_at",
                        "position",
                    ],
                    ORDERS_SQL,
                )
            } else {
                (
                    &[
                        "ticket_id",
                        "order_id",
                        "show_id",
                        "reservation_id",
                        "seat",
                        "section",
                        "ordinal",
                    ],
                    TICKETS_SQL,
                )
            };
            csv.write_record(header)?;
            use futures::TryStreamExt as _;
            match &pool {
                TablePool::Postgres(pg) => {
                    let mut stream = sqlx::query(sql).fetch(pg);
                    while let Some(row) =
                        stream.try_next().await.context("reading the read model")?
                    {
                        let record = if what == What::Orders {
                            order_record!(&row)
                        } else {
                            ticket_record!(&row)
                        };
                        csv.write_record(&record)?;
                        rows += 1;
                    }
                }
                TablePool::Sqlite(lite) => {
                    let mut stream = sqlx::query(sql).fetch(lite);
                    while let Some(row) =
                        stream.try_next().await.context("reading the read model")?
                    {
                        let record = if what == What::Orders {
                            order_record!(&row)
                        } else {
                            ticket_record!(&row)
                        };
                        csv.write_record(&record)?;
                        rows += 1;
                    }
                }
            }
        }
        What::Events => {
            csv.write_record([
                "position",
                "recorded_at",
                "partition_key",
                "stream_id",
                "version",
                "event_type",
                "schema_version",
                "event_id",
                "correlation_id",
                "causation_id",
                "actor",
                "payload",
            ])?;
            let head = store.head_position().await?;
            let bar = progress::bar(Some(head), json, "exporting");
            let mut after = 0;
            loop {
                let page = store.read_all(after, READ_PAGE_EVENTS).await?;
                let Some(last) = page.last() else { break };
                after = last.position;
                for e in &page {
                    csv.write_record([
                        e.position.to_string(),
                        e.recorded_at.to_rfc3339(),
                        e.partition_key.clone(),
                        e.stream_id.clone(),
                        e.version.to_string(),
                        e.event_type.clone(),
                        e.schema_version.to_string(),
                        e.metadata.event_id.to_string(),
                        e.metadata.correlation_id.to_string(),
                        e.metadata
                            .causation_id
                            .map(|c| c.to_string())
                            .unwrap_or_default(),
                        e.metadata.actor.clone(),
                        e.payload.to_string(),
                    ])?;
                    rows += 1;
                }
                bar.set_position(after.min(head));
            }
            bar.finish_and_clear();
        }
    }
    csv.flush()?;
    Ok(rows)
}
