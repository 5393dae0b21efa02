//! The audit log read model: every event of the log, one row each, with the show, stream,
//! version, type, time, actor and correlation id from its envelope and a short readable
//! sentence saying what happened.
//!
//! The rows are computed by the database, from the log's own table in the same database:
//! one `INSERT … SELECT … FROM events` per range of positions (ADR 0022). Nothing is
//! decoded in the process, so a rebuild reads no event at all: it hands the projection
//! ranges of positions ([`Projection::apply_range`]). The sentences are SQL, one
//! expression per event type, written once here for both backends (they differ only in
//! how a JSON array is walked); `projections/tests/read_side/audit.rs` checks every event
//! type against sentences made in Rust from the decoded event. An event whose sentence
//! cannot be made (an unknown type, another schema version, a field missing) stops the
//! projection at its position, as an event that does not decode stops the others.

use std::sync::LazyLock;

use async_trait::async_trait;
use boxoffice_domain::event::SCHEMA_VERSION_CURRENT;
use boxoffice_domain::money::MINOR_DIGITS;
use boxoffice_store::RecordedEvent;

use crate::db::{Backend, Tx, position_param};
use crate::runtime::{Projection, ProjectionError};

pub const NAME: &str = "audit_log";
pub const VERSION: u32 = 1;

/// Keeps `audit_log`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditLogProjection;

#[async_trait]
impl Projection for AuditLogProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_log"]
    }

    fn applies_in_sql(&self) -> bool {
        true
    }

    /// A live batch holds every event of the log in its range, so the range from just
    /// before its first event to its last is exactly the batch.
    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let written = self
            .apply_range(tx, first.position - 1, last.position)
            .await?;
        if written != events.len() as u64 {
            return Err(ProjectionError::Failed(format!(
                "audit_log: the log holds {written} events at positions {}..={}, the batch {}",
                first.position,
                last.position,
                events.len()
            )));
        }
        Ok(())
    }

    async fn apply_range(
        &self,
        tx: &mut Tx,
        after: u64,
        until: u64,
    ) -> Result<u64, ProjectionError> {
        let backend = tx.backend();
        let range = [position_param(after), position_param(until)];
        if backend == Backend::Postgres {
            // The planner's cost for a range of 100,000 events is far above `jit_above_cost`,
            // and compiling the statement took 0.57 s of the 1.35 s it ran.
            tx.execute("SET LOCAL jit = off", &[]).await?;
        }
        // A savepoint, so that after a failed insert the transaction can still name the
        // event at fault (PostgreSQL refuses every statement of a failed transaction).
        tx.execute("SAVEPOINT audit_rows", &[]).await?;
        match tx.execute(insert_sql(backend), &range).await {
            Ok(written) => {
                tx.execute("RELEASE SAVEPOINT audit_rows", &[]).await?;
                Ok(written)
            }
            Err(error) if !is_not_null_violation(&error) => Err(error.into()),
            Err(error) => {
                if tx
                    .execute("ROLLBACK TO SAVEPOINT audit_rows", &[])
                    .await
                    .is_err()
                {
                    return Err(error.into());
                }
                let culprit = tx.fetch_optional(culprit_sql(backend), &range).await?;
                match culprit {
                    Some(row) => Err(ProjectionError::Decode {
                        position: row.position("position")?,
                        reason: format!(
                            "no audit row for {} of schema version {}: the type or version \
                             is unknown, or a field of its payload or metadata is missing \
                             or has another shape",
                            row.text("event_type")?,
                            row.int("schema_version")?
                        ),
                    }),
                    None => Err(error.into()),
                }
            }
        }
    }
}

/// A row without its sentence, actor or correlation id: the one way an event the
/// statement reads can fail it (anything else is the database's failure, retried).
fn is_not_null_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.kind() == sqlx::error::ErrorKind::NotNullViolation)
}

/// The statement that writes the rows of the events at positions in `($1, $2]`.
fn insert_sql(backend: Backend) -> &'static str {
    static SQL: LazyLock<[String; 2]> = LazyLock::new(|| {
        [Backend::Postgres, Backend::Sqlite].map(|backend| {
            format!(
                "INSERT INTO audit_log (position, show_id, stream_id, version, event_type,
                                        recorded_at, actor, correlation_id, summary)
                 SELECT e.position, e.partition_key, e.stream_id, e.version, e.event_type,
                        e.recorded_at, e.metadata->>'actor', e.metadata->>'correlation_id',
                        {}
                 FROM events AS e
                 WHERE e.position > $1 AND e.position <= $2
                 ORDER BY e.position",
                summary_sql(backend)
            )
        })
    });
    &SQL[index(backend)]
}

/// The first event at a position in `($1, $2]` that gets no row: no sentence, or no actor
/// or correlation id in its metadata.
fn culprit_sql(backend: Backend) -> &'static str {
    static SQL: LazyLock<[String; 2]> = LazyLock::new(|| {
        [Backend::Postgres, Backend::Sqlite].map(|backend| {
            format!(
                "SELECT e.position, e.event_type, CAST(e.schema_version AS BIGINT) AS schema_version
                 FROM events AS e
                 WHERE e.position > $1 AND e.position <= $2
                   AND (({}) IS NULL OR e.metadata->>'actor' IS NULL
                        OR e.metadata->>'correlation_id' IS NULL)
                 ORDER BY e.position
                 LIMIT 1",
                summary_sql(backend)
            )
        })
    });
    &SQL[index(backend)]
}

fn index(backend: Backend) -> usize {
    match backend {
        Backend::Postgres => 0,
        Backend::Sqlite => 1,
    }
}

/// A piece of an audit sentence.
enum Part {
    /// Text as it is.
    Text(&'static str),
    /// A payload field, as text.
    Field(&'static str),
    /// A payload timestamp as `DateTime::to_rfc3339` prints it (`…+00:00`; the payload
    /// holds `…Z`, with the same digits).
    Time(&'static str),
    /// An optional payload timestamp, or `open` when it is null.
    TimeOrOpen(&'static str),
    /// An amount in minor units, as `Minor` displays it (`60.00`).
    Money(&'static str),
    /// A release reason, in words.
    Reason(&'static str),
    /// An expression of its own.
    Sql(fn(Backend) -> String),
}

use Part::{Field, Money, Reason, Sql, Text, Time, TimeOrOpen};

/// The sentence of each event type. Every type of the log is here; a type missing would
/// stop the projection at its first event.
const SENTENCES: &[(&str, &[Part])] = &[
    // Shows.
    (
        "ShowScheduled",
        &[
            Text("Show \""),
            Field("name"),
            Text("\" scheduled for "),
            Time("starts_at"),
            Text(" with "),
            Sql(section_count),
            Text(" sections and "),
            Sql(places),
            Text(" places."),
        ],
    ),
    (
        "ShowRescheduled",
        &[Text("Show moved to "), Time("starts_at"), Text(".")],
    ),
    (
        "ShowRenamed",
        &[Text("Show renamed to \""), Field("name"), Text("\".")],
    ),
    (
        "SalesWindowChanged",
        &[
            Text("Sales window set to "),
            TimeOrOpen("sales_open_at"),
            Text(" – "),
            TimeOrOpen("sales_close_at"),
            Text("."),
        ],
    ),
    (
        "TierPriceChanged",
        &[
            Text("Price of tier "),
            Field("tier_id"),
            Text(" set to "),
            Money("price"),
            Text("."),
        ],
    ),
    (
        "ShowCancelled",
        &[Text("Show cancelled: "), Field("reason"), Text(".")],
    ),
    // Seats.
    (
        "SeatHeld",
        &[
            Text("Seat "),
            Field("seat_id"),
            Text(" held for reservation "),
            Field("reservation_id"),
            Text(" until "),
            Time("until"),
            Text("."),
        ],
    ),
    (
        "SeatReleased",
        &[
            Text("Seat "),
            Field("seat_id"),
            Text(" released from reservation "),
            Field("reservation_id"),
            Text(": "),
            Reason("reason"),
            Text("."),
        ],
    ),
    (
        "SeatSold",
        &[
            Text("Seat "),
            Field("seat_id"),
            Text(" sold in order "),
            Field("order_id"),
            Text("."),
        ],
    ),
    (
        "SeatBlocked",
        &[
            Text("Seat "),
            Field("seat_id"),
            Text(" blocked: "),
            Field("reason"),
            Text("."),
        ],
    ),
    (
        "SeatUnblocked",
        &[Text("Seat "), Field("seat_id"), Text(" unblocked.")],
    ),
    // General-admission pools.
    (
        "PoolSeatsHeld",
        &[
            Field("quantity"),
            Text(" places in "),
            Field("section"),
            Text(" held for reservation "),
            Field("reservation_id"),
            Text("."),
        ],
    ),
    (
        "PoolSeatsReleased",
        &[
            Field("quantity"),
            Text(" places in "),
            Field("section"),
            Text(" released from reservation "),
            Field("reservation_id"),
            Text(": "),
            Reason("reason"),
            Text("."),
        ],
    ),
    (
        "PoolSeatsSold",
        &[
            Field("quantity"),
            Text(" places in "),
            Field("section"),
            Text(" sold to reservation "),
            Field("reservation_id"),
            Text("."),
        ],
    ),
    // Reservations.
    (
        "ReservationPlaced",
        &[
            Text("User "),
            Field("user_id"),
            Text(" placed reservation "),
            Field("reservation_id"),
            Text(" for "),
            Sql(what_was_placed),
            Text(", "),
            Money("total"),
            Text(" "),
            Field("currency"),
            Text("."),
        ],
    ),
    (
        "PaymentStarted",
        &[
            Text("Payment "),
            Field("payment_id"),
            Text(" started for reservation "),
            Field("reservation_id"),
            Text("."),
        ],
    ),
    (
        "PaymentCaptured",
        &[
            Text("Payment of "),
            Money("amount"),
            Text(" captured for reservation "),
            Field("reservation_id"),
            Text("."),
        ],
    ),
    (
        "PaymentFailed",
        &[
            Text("Payment for reservation "),
            Field("reservation_id"),
            Text(" failed: "),
            Field("reason"),
            Text("."),
        ],
    ),
    (
        "PaymentTimedOut",
        &[
            Text("Payment for reservation "),
            Field("reservation_id"),
            Text(" timed out and was voided."),
        ],
    ),
    (
        "TicketsIssued",
        &[
            Sql(ticket_count),
            Text(" tickets issued in order "),
            Field("order_id"),
            Text(" for reservation "),
            Field("reservation_id"),
            Text("."),
        ],
    ),
    (
        "HoldExpired",
        &[
            Text("Reservation "),
            Field("reservation_id"),
            Text(" expired unpaid."),
        ],
    ),
    (
        "ReservationCancelled",
        &[
            Text("Reservation "),
            Field("reservation_id"),
            Text(" cancelled by "),
            Field("by"),
            Text("."),
        ],
    ),
    (
        "RefundIssued",
        &[
            Text("Refund of "),
            Money("amount"),
            Text(" issued for order "),
            Field("order_id"),
            Text(" (reservation "),
            Field("reservation_id"),
            Text(")."),
        ],
    ),
    // The waiting list.
    (
        "WaitlistJoined",
        &[
            Text("User "),
            Field("user_id"),
            Text(" joined the waiting list for "),
            Field("quantity"),
            Text(" ("),
            Field("entry_id"),
            Text(")."),
        ],
    ),
    (
        "WaitlistOffered",
        &[
            Text("Waiting-list entry "),
            Field("entry_id"),
            Text(" offered "),
            Field("quantity"),
            Text(" places as reservation "),
            Field("reservation_id"),
            Text("."),
        ],
    ),
    (
        "WaitlistOfferClaimed",
        &[
            Text("Waiting-list entry "),
            Field("entry_id"),
            Text(" claimed its offer."),
        ],
    ),
    (
        "WaitlistOfferExpired",
        &[
            Text("Offer to waiting-list entry "),
            Field("entry_id"),
            Text(" expired."),
        ],
    ),
    (
        "WaitlistLeft",
        &[
            Text("Waiting-list entry "),
            Field("entry_id"),
            Text(" left the list."),
        ],
    ),
];

/// The words for each `ReleaseReason` (its stored name).
const REASONS: [(&str, &str); 5] = [
    ("expired", "the hold expired"),
    ("cancelled", "the hold was cancelled"),
    ("payment_failed", "the payment failed"),
    ("payment_timed_out", "the payment timed out"),
    ("refunded", "the order was refunded"),
];

/// The sentence of the event in row `e` of `events`, or NULL if it has none: a `CASE` on
/// the type, in which any missing piece (`||` with NULL) makes the whole sentence NULL.
fn summary_sql(backend: Backend) -> String {
    let mut sql =
        format!("CASE WHEN e.schema_version = {SCHEMA_VERSION_CURRENT} THEN CASE e.event_type");
    for (event_type, parts) in SENTENCES {
        let pieces: Vec<String> = parts.iter().map(|part| piece(backend, part)).collect();
        sql.push_str(&format!(
            "\n WHEN {} THEN {}",
            literal(event_type),
            pieces.join(" || ")
        ));
    }
    sql.push_str(" END END");
    sql
}

fn piece(backend: Backend, part: &Part) -> String {
    match part {
        Text(text) => literal(text),
        Field(name) => format!("CAST({} AS TEXT)", field(name)),
        Time(name) => time(&field(name)),
        TimeOrOpen(name) => {
            let value = field(name);
            format!(
                "CASE WHEN {value} IS NULL THEN 'open' ELSE {} END",
                time(&value)
            )
        }
        Money(name) => money(&format!("CAST({} AS BIGINT)", field(name))),
        Reason(name) => {
            let mut sql = format!("CASE {}", field(name));
            for (stored, words) in REASONS {
                sql.push_str(&format!(
                    " WHEN {} THEN {}",
                    literal(stored),
                    literal(words)
                ));
            }
            sql.push_str(" END");
            sql
        }
        Sql(expression) => format!("({})", expression(backend)),
    }
}

/// A field of the payload as a scalar (text on PostgreSQL; text or a number on SQLite).
fn field(name: &str) -> String {
    format!("(e.payload->>{})", literal(name))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `…Z` as `…+00:00`; NULL for anything else.
fn time(value: &str) -> String {
    format!(
        "CASE WHEN {value} LIKE '%Z' THEN substr({value}, 1, length({value}) - 1) || '+00:00' END"
    )
}

/// Minor units as a decimal with `MINOR_DIGITS` decimals and a `-` if negative.
fn money(value: &str) -> String {
    let per = 10_i64.pow(MINOR_DIGITS);
    let zeros = "0".repeat(MINOR_DIGITS as usize);
    let fraction = format!("CAST(abs({value}) % {per} AS TEXT)");
    format!(
        "CASE WHEN {value} < 0 THEN '-' ELSE '' END || CAST(abs({value}) / {per} AS TEXT) || '.' \
         || substr('{zeros}' || {fraction}, length({fraction}) + 1)"
    )
}

/// The elements of the JSON array `json -> key`, as rows with a `value` column (JSON).
fn elements(backend: Backend, json: &str, key: &str) -> String {
    match backend {
        Backend::Postgres => format!("jsonb_array_elements({json}->{})", literal(key)),
        Backend::Sqlite => format!("json_each({json}, {})", literal(&format!("$.{key}"))),
    }
}

fn array_length(backend: Backend, key: &str) -> String {
    match backend {
        Backend::Postgres => format!(
            "CAST(jsonb_array_length(e.payload->{}) AS TEXT)",
            literal(key)
        ),
        Backend::Sqlite => format!(
            "CAST(json_array_length(e.payload, {}) AS TEXT)",
            literal(&format!("$.{key}"))
        ),
    }
}

fn section_count(backend: Backend) -> String {
    array_length(backend, "sections")
}

fn ticket_count(backend: Backend) -> String {
    array_length(backend, "tickets")
}

/// A show's places: the seats of its seated sections' rows and the capacity of its GA
/// sections (`SectionDef::capacity`), NULL if a section is of neither kind.
fn places(backend: Backend) -> String {
    format!(
        "SELECT CAST(CASE WHEN count(*) = count(c) THEN coalesce(sum(c), 0) END AS TEXT)
         FROM (SELECT CASE s.value->>'kind'
                        WHEN 'seated' THEN (SELECT coalesce(sum(CAST(r.value->>'seats' AS BIGINT)), 0)
                                            FROM {} AS r)
                        WHEN 'general_admission' THEN CAST(s.value->>'capacity' AS BIGINT)
                      END AS c
               FROM {} AS s) AS capacities",
        elements(backend, "s.value", "rows"),
        elements(backend, "e.payload", "sections")
    )
}

/// What a reservation holds: `N places in SECTION`, or `seats A, B` (its seats in order).
fn what_was_placed(backend: Backend) -> String {
    let seats = match backend {
        Backend::Postgres => "SELECT string_agg(s.value, ', ' ORDER BY s.n)
             FROM jsonb_array_elements_text(e.payload->'seats') WITH ORDINALITY AS s(value, n)"
            .to_owned(),
        Backend::Sqlite => {
            "SELECT group_concat(s.value, ', ' ORDER BY s.key) FROM json_each(e.payload, '$.seats') AS s"
                .to_owned()
        }
    };
    format!(
        "CASE WHEN {section} IS NOT NULL
              THEN CAST({quantity} AS TEXT) || ' places in ' || CAST({section} AS TEXT)
              ELSE 'seats ' || coalesce(({seats}), '')
         END",
        section = field("section"),
        quantity = field("quantity"),
    )
}
