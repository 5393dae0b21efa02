//! `boxctl export`: orders, tickets and sales from their read models, events from the
//! log, as CSV or Parquet.
//!
//! Each export's columns are described once, as a list of [`Column`]s (a name and a
//! [`ColumnType`]); the CSV writer and the Parquet writer both follow that list, so the
//! two formats always have the same columns, in the same order, with the same values.
//! In CSV, times are RFC 3339 in UTC with microseconds, an order's `total` is a decimal
//! string as the API shows it, and the sales amounts are integers in minor units
//! (`*_minor`, like the `sales` table). In Parquet, text is UTF8, integers and minor-unit
//! amounts are INT64, `total` is an INT64 DECIMAL(18, 2) (the same minor units, read as
//! `100.00`) and times are TIMESTAMP(MICROS, UTC).
//!
//! A read-model export reads its table and its projection's checkpoint in one snapshot,
//! so the checkpoint says exactly which prefix of the log the rows reflect; the
//! [`Summary`] reports it. A file is written beside its destination and renamed into
//! place when complete, so a reader never sees half an export. Ticket codes are secrets
//! a scanner verifies, so they are never exported.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use boxoffice_domain::event::show_stream;
use boxoffice_domain::money::MINOR_DIGITS;
use boxoffice_domain::show::ShowEvent;
use boxoffice_domain::{DomainEvent, Minor, ShowId};
use boxoffice_store::tables::TablePool;
use boxoffice_store::{EventStore, RecordedEvent};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt as _;
use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type as ParquetType;

use crate::{READ_PAGE_EVENTS, progress};

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// One row per order, from the orders read model.
    Orders,
    /// One row per ticket (without its code), from the orders read model.
    Tickets,
    /// Tickets sold and refunded and their money per show, tier, section and UTC hour,
    /// from the sales read model: it reflects the log up to the sales projection's
    /// checkpoint, which the summary on stderr prints.
    Sales,
    /// Every event of the log, in position order.
    Events,
}

/// The file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    /// Typed columns, Snappy-compressed; needs --output FILE.
    Parquet,
}

/// What a column holds, which fixes both its CSV text and its Parquet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// CSV: the text. Parquet: BYTE_ARRAY (STRING).
    Text,
    /// CSV: decimal digits. Parquet: INT64.
    Int,
    /// An amount in minor units. CSV: a decimal string (`"100.00"`). Parquet: INT64
    /// DECIMAL(18, 2), whose stored integer is the minor units.
    Money,
    /// CSV: RFC 3339, UTC, microseconds. Parquet: INT64 TIMESTAMP(MICROS, UTC).
    Time,
}

/// One column of an export. A nullable column is empty in CSV and null in Parquet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub nullable: bool,
}

const fn required(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        nullable: false,
    }
}

const fn nullable(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        nullable: true,
    }
}

use ColumnType::{Int, Money, Text, Time};

pub const ORDER_COLUMNS: &[Column] = &[
    required("order_id", Text),
    required("reservation_id", Text),
    required("show_id", Text),
    required("user_id", Text),
    required("status", Text),
    required("total", Money),
    required("currency", Text),
    required("paid_at", Time),
    nullable("refunded_at", Time),
    required("position", Int),
];

pub const TICKET_COLUMNS: &[Column] = &[
    required("ticket_id", Text),
    required("order_id", Text),
    required("show_id", Text),
    required("reservation_id", Text),
    nullable("seat", Text),
    nullable("section", Text),
    required("ordinal", Int),
];

/// The `sales` table's rows with the show's, tier's and section's names from the log.
/// Revenue is gross; refunds are counted separately and `net_revenue_minor` is the
/// difference, as in the `v_show_sales` view.
pub const SALES_COLUMNS: &[Column] = &[
    required("show_id", Text),
    required("show_name", Text),
    required("tier", Text),
    required("tier_name", Text),
    required("section", Text),
    required("section_name", Text),
    required("hour", Time),
    required("currency", Text),
    required("tickets_sold", Int),
    required("revenue_minor", Int),
    required("tickets_refunded", Int),
    required("refunds_minor", Int),
    required("net_revenue_minor", Int),
];

pub const EVENT_COLUMNS: &[Column] = &[
    required("position", Int),
    required("recorded_at", Time),
    required("partition_key", Text),
    required("stream_id", Text),
    required("version", Int),
    required("event_type", Text),
    required("schema_version", Int),
    required("event_id", Text),
    required("correlation_id", Text),
    nullable("causation_id", Text),
    required("actor", Text),
    required("payload", Text),
];

/// The projections whose read models the exports read: the names of their checkpoints,
/// which must equal `boxoffice-projections`' `orders::NAME` and `analytics::sales::NAME`
/// (the export test checks it).
pub const ORDERS_PROJECTION: &str = "orders";
pub const SALES_PROJECTION: &str = "sales";

// Columns are read by name, so each SELECT names its columns as the export does.
const ORDERS_SQL: &str = "SELECT order_id, reservation_id, show_id, user_id, status,
        total_minor AS total, currency, paid_at, refunded_at, position
    FROM orders ORDER BY position, order_id";
const TICKETS_SQL: &str = "SELECT ticket_id, order_id, show_id, reservation_id, seat, section,
        ordinal
    FROM tickets ORDER BY order_id, ordinal";
// The names are NULL here and filled from the log ([`ShowNames`]).
const SALES_SQL: &str = "SELECT show_id, CAST(NULL AS TEXT) AS show_name, tier,
        CAST(NULL AS TEXT) AS tier_name, section, CAST(NULL AS TEXT) AS section_name, hour,
        currency, tickets_sold, revenue_minor, tickets_refunded, refunds_minor,
        revenue_minor - refunds_minor AS net_revenue_minor
    FROM sales ORDER BY show_id, hour, tier, section";
const SALES_SHOWS_SQL: &str = "SELECT DISTINCT show_id FROM sales ORDER BY show_id";

impl What {
    pub fn name(self) -> &'static str {
        match self {
            What::Orders => "orders",
            What::Tickets => "tickets",
            What::Sales => "sales",
            What::Events => "events",
        }
    }

    /// The export's columns, the same in every format.
    pub fn columns(self) -> &'static [Column] {
        match self {
            What::Orders => ORDER_COLUMNS,
            What::Tickets => TICKET_COLUMNS,
            What::Sales => SALES_COLUMNS,
            What::Events => EVENT_COLUMNS,
        }
    }
}

/// One value of a row. `Int` serves both [`ColumnType::Int`] and [`ColumnType::Money`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    Text(String),
    Int(i64),
    Time(DateTime<Utc>),
}

impl Cell {
    fn fits(&self, column: &Column) -> bool {
        match self {
            Cell::Null => column.nullable,
            Cell::Text(_) => column.ty == Text,
            Cell::Int(_) => matches!(column.ty, Int | Money),
            Cell::Time(_) => column.ty == Time,
        }
    }
}

/// Where an export's rows came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The log up to and including `position`.
    Log { position: u64 },
    /// A read model whose projection had applied the log up to `checkpoint` when it was
    /// read; `None` if the projection has never run on this database.
    ReadModel {
        projection: &'static str,
        checkpoint: Option<u64>,
    },
}

/// What an export wrote, for the line on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub what: What,
    pub rows: u64,
    pub source: Source,
    /// The log's head when the export started.
    pub log_head: u64,
}

impl Summary {
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "what": self.what.name(),
            "rows": self.rows,
            "log_head": self.log_head,
        });
        match &self.source {
            Source::Log { position } => json["position"] = (*position).into(),
            Source::ReadModel {
                projection,
                checkpoint,
            } => {
                json["projection"] = (*projection).into();
                json["checkpoint"] = (*checkpoint).into();
            }
        }
        json
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exported {} {} rows", self.rows, self.what.name())?;
        match &self.source {
            Source::Log { position } => write!(f, ": the log up to position {position}"),
            Source::ReadModel {
                projection,
                checkpoint: None,
            } => write!(
                f,
                ": the {projection} projection has not run on this database yet (log head {})",
                self.log_head
            ),
            Source::ReadModel {
                projection,
                checkpoint: Some(at),
            } => {
                write!(
                    f,
                    " from the {projection} read model at its checkpoint, log position {at}"
                )?;
                match self.log_head.checked_sub(*at) {
                    Some(0) | None => write!(f, " (the log's head)"),
                    Some(behind) => write!(
                        f,
                        " ({behind} events behind the log's head {})",
                        self.log_head
                    ),
                }
            }
        }
    }
}

/// Where the rows go: one implementation per format.
trait RowSink {
    fn write_row(&mut self, row: Vec<Cell>) -> anyhow::Result<()>;
}

fn check_row(columns: &[Column], row: &[Cell]) {
    assert_eq!(row.len(), columns.len(), "a row of the wrong width");
    for (column, cell) in columns.iter().zip(row) {
        assert!(
            cell.fits(column),
            "{cell:?} does not fit column {} ({:?})",
            column.name,
            column.ty
        );
    }
}

struct CsvSink<W: Write> {
    columns: &'static [Column],
    csv: csv::Writer<W>,
}

impl<W: Write> CsvSink<W> {
    fn new(columns: &'static [Column], out: W) -> anyhow::Result<Self> {
        let mut csv = csv::Writer::from_writer(out);
        csv.write_record(columns.iter().map(|c| c.name))?;
        Ok(Self { columns, csv })
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.csv.flush()?;
        Ok(())
    }
}

fn csv_text(column: &Column, cell: Cell) -> String {
    match cell {
        Cell::Null => String::new(),
        Cell::Text(text) => text,
        Cell::Int(minor) if column.ty == Money => Minor(minor).to_string(),
        Cell::Int(n) => n.to_string(),
        Cell::Time(t) => t.to_rfc3339_opts(SecondsFormat::Micros, true),
    }
}

impl<W: Write> RowSink for CsvSink<W> {
    fn write_row(&mut self, row: Vec<Cell>) -> anyhow::Result<()> {
        check_row(self.columns, &row);
        let texts = self
            .columns
            .iter()
            .zip(row)
            .map(|(column, cell)| csv_text(column, cell));
        self.csv.write_record(texts)?;
        Ok(())
    }
}

/// Rows buffered per Parquet row group: bounds the memory of an export (an events row
/// is about a kilobyte) while keeping row groups large enough to compress well.
pub const ROW_GROUP_ROWS_MAX: usize = 65_536;
/// Decimal digits of an INT64 DECIMAL: the most an i64 always holds.
const MONEY_PRECISION: i32 = 18;

/// The Parquet schema of an export's columns.
pub fn parquet_schema(what: What) -> anyhow::Result<Arc<ParquetType>> {
    let fields = what
        .columns()
        .iter()
        .map(|c| {
            let builder = match c.ty {
                Text => ParquetType::primitive_type_builder(c.name, PhysicalType::BYTE_ARRAY)
                    .with_logical_type(Some(LogicalType::String)),
                Int => ParquetType::primitive_type_builder(c.name, PhysicalType::INT64),
                Money => ParquetType::primitive_type_builder(c.name, PhysicalType::INT64)
                    .with_logical_type(Some(LogicalType::decimal(
                        MINOR_DIGITS as i32,
                        MONEY_PRECISION,
                    )))
                    .with_precision(MONEY_PRECISION)
                    .with_scale(MINOR_DIGITS as i32),
                Time => ParquetType::primitive_type_builder(c.name, PhysicalType::INT64)
                    .with_logical_type(Some(LogicalType::timestamp(true, TimeUnit::MICROS))),
            };
            let repetition = if c.nullable {
                Repetition::OPTIONAL
            } else {
                Repetition::REQUIRED
            };
            Ok(Arc::new(builder.with_repetition(repetition).build()?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let schema = ParquetType::group_type_builder(&format!("boxoffice_{}", what.name()))
        .with_fields(fields)
        .build()?;
    Ok(Arc::new(schema))
}

/// One column's values of the row group being built.
enum Values {
    Text(Vec<ByteArray>),
    Int(Vec<i64>),
}

struct ColumnBuffer {
    values: Values,
    /// 1 for a value, 0 for a null; kept for nullable columns only.
    definition_levels: Vec<i16>,
}

struct ParquetSink<W: Write + Send> {
    columns: &'static [Column],
    writer: SerializedFileWriter<W>,
    buffers: Vec<ColumnBuffer>,
    rows: usize,
}

impl<W: Write + Send> ParquetSink<W> {
    fn new(what: What, out: W) -> anyhow::Result<Self> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("boxctl {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(out, parquet_schema(what)?, Arc::new(properties))?;
        let buffers = what
            .columns()
            .iter()
            .map(|c| ColumnBuffer {
                values: match c.ty {
                    Text => Values::Text(Vec::new()),
                    Int | Money | Time => Values::Int(Vec::new()),
                },
                definition_levels: Vec::new(),
            })
            .collect();
        Ok(Self {
            columns: what.columns(),
            writer,
            buffers,
            rows: 0,
        })
    }

    fn flush_row_group(&mut self) -> anyhow::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for (column, buffer) in self.columns.iter().zip(&mut self.buffers) {
            let mut writer = group
                .next_column()?
                .context("the schema has a column writer per export column")?;
            let levels = column.nullable.then_some(&buffer.definition_levels[..]);
            match &mut buffer.values {
                Values::Text(values) => {
                    writer
                        .typed::<ByteArrayType>()
                        .write_batch(values, levels, None)?;
                    values.clear();
                }
                Values::Int(values) => {
                    writer
                        .typed::<Int64Type>()
                        .write_batch(values, levels, None)?;
                    values.clear();
                }
            }
            buffer.definition_levels.clear();
            writer.close()?;
        }
        group.close()?;
        self.rows = 0;
        Ok(())
    }

    /// Writes the last row group and the footer (with `metadata` as key-value pairs) and
    /// returns the output.
    fn finish(mut self, metadata: Vec<(String, String)>) -> anyhow::Result<W> {
        self.flush_row_group()?;
        for (key, value) in metadata {
            self.writer
                .append_key_value_metadata(KeyValue::new(key, value));
        }
        Ok(self.writer.into_inner()?)
    }
}

impl<W: Write + Send> RowSink for ParquetSink<W> {
    fn write_row(&mut self, row: Vec<Cell>) -> anyhow::Result<()> {
        check_row(self.columns, &row);
        for ((column, cell), buffer) in self.columns.iter().zip(row).zip(&mut self.buffers) {
            let present = match (cell, &mut buffer.values) {
                (Cell::Null, _) => false,
                (Cell::Text(text), Values::Text(values)) => {
                    values.push(ByteArray::from(text.into_bytes()));
                    true
                }
                (Cell::Int(n), Values::Int(values)) => {
                    values.push(n);
                    true
                }
                (Cell::Time(t), Values::Int(values)) => {
                    values.push(t.timestamp_micros());
                    true
                }
                (cell, _) => unreachable!("check_row let {cell:?} through"),
            };
            if column.nullable {
                buffer.definition_levels.push(i16::from(present));
            }
        }
        self.rows += 1;
        if self.rows == ROW_GROUP_ROWS_MAX {
            self.flush_row_group()?;
        }
        Ok(())
    }
}

/// Writes the export as CSV.
pub async fn write_csv(
    url: &str,
    store: &dyn EventStore,
    what: What,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Summary> {
    let mut sink = CsvSink::new(what.columns(), out)?;
    let summary = export(url, store, what, json, &mut sink).await?;
    sink.finish()?;
    Ok(summary)
}

/// Writes the export as a Parquet file and returns `out` back. The footer records what
/// was exported and the log position it reflects (`boxoffice.*` keys).
pub async fn write_parquet<W: Write + Send>(
    url: &str,
    store: &dyn EventStore,
    what: What,
    json: bool,
    out: W,
) -> anyhow::Result<(Summary, W)> {
    let mut sink = ParquetSink::new(what, out)?;
    let summary = export(url, store, what, json, &mut sink).await?;
    let mut metadata = vec![
        ("boxoffice.export".to_string(), what.name().to_string()),
        (
            "boxoffice.log_head".to_string(),
            summary.log_head.to_string(),
        ),
    ];
    match summary.source {
        Source::Log { position } => {
            metadata.push(("boxoffice.log_position".into(), position.to_string()));
        }
        Source::ReadModel {
            projection,
            checkpoint,
        } => {
            metadata.push(("boxoffice.projection".into(), projection.to_string()));
            metadata.push((
                "boxoffice.checkpoint".into(),
                checkpoint.map(|c| c.to_string()).unwrap_or_default(),
            ));
        }
    }
    let out = sink.finish(metadata)?;
    Ok((summary, out))
}

/// Writes the export to `path`: first to a hidden file beside it, renamed over `path`
/// once complete, so `path` is never a partial export.
pub async fn to_file(
    url: &str,
    store: &dyn EventStore,
    what: What,
    format: Format,
    json: bool,
    path: &Path,
) -> anyhow::Result<Summary> {
    let partial = partial_path(path)?;
    let written = async {
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let out = std::io::BufWriter::new(file);
        let (summary, out) = match format {
            Format::Csv => {
                let mut out = out;
                let summary = write_csv(url, store, what, json, &mut out).await?;
                (summary, out)
            }
            Format::Parquet => write_parquet(url, store, what, json, out).await?,
        };
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
        anyhow::Ok(summary)
    }
    .await;
    if written.is_err() {
        // Best effort: the error that matters is the export's.
        let _ = std::fs::remove_file(&partial);
    }
    written
}

fn partial_path(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut partial = std::ffi::OsString::from(".");
    partial.push(name);
    partial.push(".partial");
    Ok(path.with_file_name(partial))
}

async fn export(
    url: &str,
    store: &dyn EventStore,
    what: What,
    json: bool,
    sink: &mut dyn RowSink,
) -> anyhow::Result<Summary> {
    let log_head = store.head_position().await?;
    let (rows, source) = match what {
        What::Orders => {
            read_model(url, ORDERS_PROJECTION, "orders", ORDERS_SQL, what, sink).await?
        }
        What::Tickets => {
            read_model(url, ORDERS_PROJECTION, "tickets", TICKETS_SQL, what, sink).await?
        }
        What::Sales => sales(url, store, sink).await?,
        What::Events => events(store, log_head, json, sink).await?,
    };
    Ok(Summary {
        what,
        rows,
        source,
        log_head,
    })
}

/// The log up to `head`, one row per event.
async fn events(
    store: &dyn EventStore,
    head: u64,
    json: bool,
    sink: &mut dyn RowSink,
) -> anyhow::Result<(u64, Source)> {
    let bar = progress::bar(Some(head), json, "exporting");
    let mut rows = 0;
    let mut after = 0;
    while after < head {
        let page = store.read_all(after, READ_PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in page.iter().filter(|e| e.position <= head) {
            sink.write_row(event_row(e))?;
            rows += 1;
        }
        bar.set_position(after.min(head));
    }
    bar.finish_and_clear();
    Ok((rows, Source::Log { position: head }))
}

fn event_row(e: &RecordedEvent) -> Vec<Cell> {
    let int = |n: u64| Cell::Int(i64::try_from(n).expect("log positions and versions fit i64"));
    vec![
        int(e.position),
        Cell::Time(e.recorded_at),
        Cell::Text(e.partition_key.clone()),
        Cell::Text(e.stream_id.clone()),
        int(e.version),
        Cell::Text(e.event_type.clone()),
        Cell::Int(i64::from(e.schema_version)),
        Cell::Text(e.metadata.event_id.to_string()),
        Cell::Text(e.metadata.correlation_id.to_string()),
        e.metadata
            .causation_id
            .map_or(Cell::Null, |c| Cell::Text(c.to_string())),
        Cell::Text(e.metadata.actor.clone()),
        Cell::Text(e.payload.to_string()),
    ]
}

/// Orders or tickets: the rows of `sql` as they are.
async fn read_model(
    url: &str,
    projection: &'static str,
    table: &'static str,
    sql: &str,
    what: What,
    sink: &mut dyn RowSink,
) -> anyhow::Result<(u64, Source)> {
    let pool = TablePool::connect(url).await?;
    let mut snapshot = Snapshot::begin(&pool, &[table]).await?;
    let checkpoint = snapshot.checkpoint(projection).await?;
    let rows = snapshot
        .rows(sql, what.columns(), |row| sink.write_row(row))
        .await?;
    Ok((
        rows,
        Source::ReadModel {
            projection,
            checkpoint,
        },
    ))
}

/// The sales rows with the names of their show, tier and section as the log had them at
/// the projection's checkpoint.
async fn sales(
    url: &str,
    store: &dyn EventStore,
    sink: &mut dyn RowSink,
) -> anyhow::Result<(u64, Source)> {
    let pool = TablePool::connect(url).await?;
    let mut snapshot = Snapshot::begin(&pool, &["sales"]).await?;
    let checkpoint = snapshot.checkpoint(SALES_PROJECTION).await?;
    let mut names = HashMap::new();
    for show in snapshot.texts(SALES_SHOWS_SQL).await? {
        let found = ShowNames::load(store, &show, checkpoint.unwrap_or(0)).await?;
        names.insert(show, found);
    }
    let index = |name: &str| {
        SALES_COLUMNS
            .iter()
            .position(|c| c.name == name)
            .expect("a sales column")
    };
    let [show_id, show_name, tier, tier_name, section, section_name] = [
        "show_id",
        "show_name",
        "tier",
        "tier_name",
        "section",
        "section_name",
    ]
    .map(index);
    let text = |row: &[Cell], i: usize| match &row[i] {
        Cell::Text(text) => text.clone(),
        other => unreachable!("the sales key columns are text, not {other:?}"),
    };
    let rows = snapshot
        .rows(SALES_SQL, SALES_COLUMNS, |mut row| {
            let show = text(&row, show_id);
            let found = names
                .get(&show)
                .with_context(|| format!("show {show} appeared in sales during the export"))?;
            let (t, s) = (text(&row, tier), text(&row, section));
            row[show_name] = Cell::Text(found.name.clone());
            row[tier_name] = Cell::Text(
                found
                    .tiers
                    .get(&t)
                    .with_context(|| format!("show {show} has no tier {t} in the log"))?
                    .clone(),
            );
            row[section_name] = Cell::Text(
                found
                    .sections
                    .get(&s)
                    .with_context(|| format!("show {show} has no section {s} in the log"))?
                    .clone(),
            );
            sink.write_row(row)
        })
        .await?;
    Ok((
        rows,
        Source::ReadModel {
            projection: SALES_PROJECTION,
            checkpoint,
        },
    ))
}

/// A show's name and its tiers' and sections' names (id → name).
struct ShowNames {
    name: String,
    tiers: HashMap<String, String>,
    sections: HashMap<String, String>,
}

impl ShowNames {
    /// Folds the show's stream up to `until` (inclusive): the names as the read model
    /// saw them. A show stream holds a handful of events, so it is read whole.
    async fn load(store: &dyn EventStore, show: &str, until: u64) -> anyhow::Result<Self> {
        let id: ShowId = show
            .parse()
            .map_err(|e| anyhow::anyhow!("show id {show:?} in the sales table: {e:?}"))?;
        let events = store
            .read_stream(&show_stream(id), 0)
            .await
            .with_context(|| format!("reading show {show}"))?;
        let mut names = None;
        for e in events.iter().filter(|e| e.position <= until) {
            let event = DomainEvent::decode(&e.event_type, e.schema_version, &e.payload)
                .with_context(|| format!("event at position {} does not decode", e.position))?;
            match event {
                DomainEvent::Show(ShowEvent::ShowScheduled { definition, .. }) => {
                    names = Some(ShowNames {
                        name: definition.name.clone(),
                        tiers: definition
                            .price_tiers
                            .iter()
                            .map(|t| (t.id.clone(), t.name.clone()))
                            .collect(),
                        sections: definition
                            .sections
                            .iter()
                            .map(|s| (s.id.clone(), s.name.clone()))
                            .collect(),
                    });
                }
                DomainEvent::Show(ShowEvent::ShowRenamed { name }) => {
                    if let Some(names) = &mut names {
                        names.name = name;
                    }
                }
                _ => {}
            }
        }
        names.with_context(|| {
            format!("show {show} is in the sales table but not scheduled in the log up to position {until}")
        })
    }
}

/// A read-only transaction that sees one state of the read models: PostgreSQL's
/// REPEATABLE READ, SQLite's deferred transaction (in WAL mode its first read fixes the
/// snapshot). Rows and checkpoint read in it agree even while a projector commits.
///
/// On PostgreSQL the tables read are locked (ACCESS SHARE) before the snapshot is taken. A
/// rebuild's swap moves new tables into place (ADR 0016), which is not MVCC-safe: a
/// snapshot taken before it would see the new table only as far as its rows were committed
/// by then. The lock makes the swap wait for this transaction, or this transaction for the
/// swap, before the snapshot exists.
enum Snapshot {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

const CHECKPOINT_SQL: &str = "SELECT position FROM projection_checkpoints WHERE name = $1";

impl Snapshot {
    async fn begin(pool: &TablePool, tables: &[&str]) -> anyhow::Result<Self> {
        Ok(match pool {
            TablePool::Postgres(pg) => {
                let mut tx = pg.begin().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await?;
                // LOCK takes no snapshot; the first query after it does.
                sqlx::query(&format!(
                    "LOCK TABLE {}, projection_checkpoints IN ACCESS SHARE MODE",
                    tables.join(", ")
                ))
                .execute(&mut *tx)
                .await?;
                Snapshot::Postgres(tx)
            }
            TablePool::Sqlite(lite) => Snapshot::Sqlite(lite.begin().await?),
        })
    }

    async fn checkpoint(&mut self, projection: &str) -> anyhow::Result<Option<u64>> {
        let position: Option<i64> = match self {
            Snapshot::Postgres(tx) => {
                sqlx::query_scalar(CHECKPOINT_SQL)
                    .bind(projection)
                    .fetch_optional(&mut **tx)
                    .await?
            }
            Snapshot::Sqlite(tx) => {
                sqlx::query_scalar(CHECKPOINT_SQL)
                    .bind(projection)
                    .fetch_optional(&mut **tx)
                    .await?
            }
        };
        position
            .map(|p| u64::try_from(p).context("a negative checkpoint"))
            .transpose()
    }

    async fn texts(&mut self, sql: &str) -> anyhow::Result<Vec<String>> {
        Ok(match self {
            Snapshot::Postgres(tx) => sqlx::query_scalar(sql).fetch_all(&mut **tx).await?,
            Snapshot::Sqlite(tx) => sqlx::query_scalar(sql).fetch_all(&mut **tx).await?,
        })
    }

    /// Streams the rows of `sql`, each decoded by `columns`' names and types, into
    /// `each`; returns how many there were.
    async fn rows(
        &mut self,
        sql: &str,
        columns: &[Column],
        mut each: impl FnMut(Vec<Cell>) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut rows = 0;
        match self {
            Snapshot::Postgres(tx) => {
                let mut stream = sqlx::query(sql).fetch(&mut **tx);
                while let Some(row) = stream.try_next().await.context("reading the read model")? {
                    each(decode_row(&row, columns)?)?;
                    rows += 1;
                }
            }
            Snapshot::Sqlite(tx) => {
                let mut stream = sqlx::query(sql).fetch(&mut **tx);
                while let Some(row) = stream.try_next().await.context("reading the read model")? {
                    each(decode_row(&row, columns)?)?;
                    rows += 1;
                }
            }
        }
        Ok(rows)
    }
}

/// One row of either backend, read by the columns' names and types.
fn decode_row<R>(row: &R, columns: &[Column]) -> Result<Vec<Cell>, sqlx::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database>,
    String: sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database>,
    i64: sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database>,
    DateTime<Utc>: sqlx::Type<R::Database>,
{
    columns
        .iter()
        .map(|c| {
            let cell = match c.ty {
                Text => row.try_get::<Option<String>, _>(c.name)?.map(Cell::Text),
                Int | Money => row.try_get::<Option<i64>, _>(c.name)?.map(Cell::Int),
                Time => row
                    .try_get::<Option<DateTime<Utc>>, _>(c.name)?
                    .map(Cell::Time),
            };
            Ok(cell.unwrap_or(Cell::Null))
        })
        .collect()
}
