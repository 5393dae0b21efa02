//! Per-batch row sets: how a projection applies a whole batch of events with a handful of
//! statements instead of one or more per event.
//!
//! A projection first reads every row its batch will touch ([`Rows::load`]: one `SELECT …
//! WHERE key IN (…)` per few hundred keys), then applies the events in log order to those
//! rows in memory, with the same checks it would make against the table (a seat is held
//! only if it is available, …), and at the end writes each changed row once
//! ([`Rows::flush`]: multi-row `INSERT … ON CONFLICT (key) DO UPDATE`). A seat held, sold
//! and released within one batch costs one read and one write of its row, not three
//! statements.
//!
//! This is safe because a projection's tables have one writer: its runner, which holds the
//! checkpoint row's lock for the whole transaction (a rebuild writes shadow tables of its
//! own). Nothing else changes the rows between the read and the write.
//!
//! Rows are untyped (a [`Record`] is the table's columns as [`Param`]s) and described by a
//! [`Table`]: one implementation serves every table, and the statements it writes name
//! the table unqualified, so a rebuild's statements reach its shadow copies.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::db::{DbRow, Param, Tx, placeholders_for};

/// The most bound parameters one statement gets; below SQLite's (32,766) and
/// PostgreSQL's (65,535) limits.
pub(crate) const PARAMS_MAX: usize = 16_000;
/// The most rows one multi-row statement writes (or keys one `IN` list holds).
const ROWS_MAX: usize = 1_000;

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    OptText,
    Int,
    OptInt,
    Time,
    OptTime,
}

/// A read-model table: its name, its columns (the primary key's first) and how many
/// columns the primary key has. Key columns are text.
#[derive(Debug)]
pub(crate) struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
    pub key: usize,
}

impl Table {
    fn index(&self, column: &str) -> usize {
        self.columns
            .iter()
            .position(|(name, _)| *name == column)
            .unwrap_or_else(|| panic!("table {} has no column {column}", self.name))
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn check(&self) {
        assert!(
            0 < self.key && self.key <= self.columns.len(),
            "table {}: bad key width",
            self.name
        );
        for (name, kind) in &self.columns[..self.key] {
            assert_eq!(
                *kind,
                Kind::Text,
                "table {}: key column {name} is not text",
                self.name
            );
        }
    }
}

/// One row of a [`Table`], as the values of its columns in order.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    table: &'static Table,
    values: Vec<Param>,
}

fn kind_of(param: &Param) -> Option<Kind> {
    Some(match param {
        Param::Text(_) => Kind::Text,
        Param::OptText(_) => Kind::OptText,
        Param::Int(_) => Kind::Int,
        Param::OptInt(_) => Kind::OptInt,
        Param::Time(_) => Kind::Time,
        Param::OptTime(_) => Kind::OptTime,
        Param::Json(_) | Param::Bytes(_) => return None,
    })
}

/// Whether `param` may be stored in a column of `kind` (a plain value in an optional
/// column is fine; it is stored as the optional one).
/// Times are kept to the microsecond, as both backends store them: a row read back from
/// the table and the same row still in memory then hold the same value, so what a batch
/// computes from them does not depend on where the batches were cut.
fn fits(kind: Kind, param: &Param) -> Option<Param> {
    match (kind, param) {
        (Kind::OptText, Param::Text(v)) => Some(Param::OptText(Some(v.clone()))),
        (Kind::OptInt, Param::Int(v)) => Some(Param::OptInt(Some(*v))),
        (Kind::Time, Param::Time(v)) => Some(Param::Time(micros(*v))),
        (Kind::OptTime, Param::Time(v)) => Some(Param::OptTime(Some(micros(*v)))),
        (Kind::OptTime, Param::OptTime(v)) => Some(Param::OptTime(v.map(micros))),
        _ if kind_of(param) == Some(kind) => Some(param.clone()),
        _ => None,
    }
}

/// `t` truncated to the microsecond.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{SubsecRound, Timelike};
    if t.nanosecond().is_multiple_of(1_000) {
        t
    } else {
        t.trunc_subsecs(6)
    }
}

impl Record {
    /// A row from its values in column order. Panics if a value does not fit its column
    /// (a programming error).
    pub fn new(table: &'static Table, values: Vec<Param>) -> Self {
        assert_eq!(
            values.len(),
            table.columns.len(),
            "a row of {} has the wrong width",
            table.name
        );
        let values = values
            .iter()
            .zip(table.columns)
            .map(|(value, (name, kind))| {
                fits(*kind, value).unwrap_or_else(|| {
                    panic!("column {}.{name} is {kind:?}, given {value:?}", table.name)
                })
            })
            .collect();
        Self { table, values }
    }

    fn decode(table: &'static Table, row: &DbRow) -> Result<Self, sqlx::Error> {
        let values = table
            .columns
            .iter()
            .map(|(name, kind)| {
                Ok(match kind {
                    Kind::Text => Param::Text(row.text(name)?),
                    Kind::OptText => Param::OptText(row.opt_text(name)?),
                    Kind::Int => Param::Int(row.int(name)?),
                    Kind::OptInt => Param::OptInt(row.opt_int(name)?),
                    Kind::Time => Param::Time(row.time(name)?),
                    Kind::OptTime => Param::OptTime(row.opt_time(name)?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Self { table, values })
    }

    fn key(&self) -> Vec<String> {
        self.values[..self.table.key]
            .iter()
            .map(|v| match v {
                Param::Text(t) => t.clone(),
                other => unreachable!("key columns are text, found {other:?}"),
            })
            .collect()
    }

    fn value(&self, column: &str) -> &Param {
        &self.values[self.table.index(column)]
    }

    fn wrong(&self, column: &str) -> ! {
        panic!(
            "column {}.{column} holds {:?}",
            self.table.name,
            self.value(column)
        )
    }

    pub fn text(&self, column: &str) -> &str {
        match self.value(column) {
            Param::Text(v) => v,
            _ => self.wrong(column),
        }
    }

    pub fn opt_text(&self, column: &str) -> Option<&str> {
        match self.value(column) {
            Param::OptText(v) => v.as_deref(),
            _ => self.wrong(column),
        }
    }

    pub fn int(&self, column: &str) -> i64 {
        match self.value(column) {
            Param::Int(v) => *v,
            _ => self.wrong(column),
        }
    }

    pub fn opt_int(&self, column: &str) -> Option<i64> {
        match self.value(column) {
            Param::OptInt(v) => *v,
            _ => self.wrong(column),
        }
    }

    pub fn time(&self, column: &str) -> DateTime<Utc> {
        match self.value(column) {
            Param::Time(v) => *v,
            _ => self.wrong(column),
        }
    }

    pub fn opt_time(&self, column: &str) -> Option<DateTime<Utc>> {
        match self.value(column) {
            Param::OptTime(v) => *v,
            _ => self.wrong(column),
        }
    }

    /// Sets a column that is not part of the key. Panics if the value does not fit.
    pub fn set(&mut self, column: &str, value: impl Into<Param>) {
        let index = self.table.index(column);
        assert!(
            index >= self.table.key,
            "{}.{column} is part of the key",
            self.table.name
        );
        let (_, kind) = self.table.columns[index];
        let value = value.into();
        self.values[index] = fits(kind, &value).unwrap_or_else(|| {
            panic!(
                "column {}.{column} is {kind:?}, given {value:?}",
                self.table.name
            )
        });
    }
}

#[derive(Debug)]
enum Slot {
    /// Looked up: the table has no such row.
    Absent,
    /// As the table holds it.
    Clean(Record),
    /// Changed: written by the next flush.
    Dirty(Record),
    /// New, where a load found no row: the next flush inserts it without `ON CONFLICT`
    /// (with COPY on PostgreSQL), as nothing else writes the table.
    Added(Record),
}

/// The rows of one table that a batch reads and writes; see the module documentation.
#[derive(Debug)]
pub(crate) struct Rows {
    table: &'static Table,
    slots: HashMap<Vec<String>, Slot>,
}

impl Rows {
    pub fn new(table: &'static Table) -> Self {
        table.check();
        Self {
            table,
            slots: HashMap::new(),
        }
    }

    /// Reads the rows of `keys` that are not known yet (each key is the primary key's
    /// values in column order). Keys whose row does not exist are remembered as absent.
    pub async fn load(
        &mut self,
        tx: &mut Tx,
        keys: impl IntoIterator<Item = Vec<String>>,
    ) -> Result<(), sqlx::Error> {
        let width = self.table.key;
        // Grouped by all key columns but the last, which goes into the `IN` list.
        let mut groups: HashMap<Vec<String>, Vec<String>> = HashMap::new();
        for key in keys {
            assert_eq!(
                key.len(),
                width,
                "a key of {} has the wrong width",
                self.table.name
            );
            if self.slots.contains_key(&key) {
                continue;
            }
            let mut prefix = key.clone();
            let last = prefix.pop().expect("keys are not empty");
            self.slots.insert(key, Slot::Absent);
            groups.entry(prefix).or_default().push(last);
        }
        let columns = self.table.column_list();
        let names: Vec<&str> = self.table.columns[..width]
            .iter()
            .map(|(n, _)| *n)
            .collect();
        for (prefix, lasts) in groups {
            for chunk in lasts.chunks(ROWS_MAX) {
                let backend = tx.backend();
                let mut sql = format!("SELECT {columns} FROM {} WHERE ", self.table.name);
                let mut params: Vec<Param> = Vec::with_capacity(prefix.len() + chunk.len());
                for (i, value) in prefix.iter().enumerate() {
                    let mark = placeholders_for(backend, i + 1, 1);
                    sql.push_str(&format!("{} = {mark} AND ", names[i]));
                    params.push(value.clone().into());
                }
                sql.push_str(&format!(
                    "{} IN ({})",
                    names[width - 1],
                    placeholders_for(backend, params.len() + 1, chunk.len())
                ));
                params.extend(chunk.iter().map(|v| Param::Text(v.clone())));
                for row in tx.fetch_all(&sql, &params).await? {
                    let record = Record::decode(self.table, &row)?;
                    self.slots.insert(record.key(), Slot::Clean(record));
                }
            }
        }
        Ok(())
    }

    fn slot(&self, key: &[String]) -> &Slot {
        self.slots.get(key).unwrap_or_else(|| {
            panic!(
                "row {key:?} of {} was used without being loaded",
                self.table.name
            )
        })
    }

    /// The row of a loaded key, if the table has it. Panics for a key never loaded or
    /// inserted (a programming error: the batch's keys are loaded first).
    pub fn get(&self, key: &[String]) -> Option<&Record> {
        match self.slot(key) {
            Slot::Absent => None,
            Slot::Clean(r) | Slot::Dirty(r) | Slot::Added(r) => Some(r),
        }
    }

    /// Like [`Self::get`], but a key never loaded or inserted counts as absent: for keys
    /// the table cannot hold (a row of a show scheduled in this batch).
    pub fn get_if_known(&self, key: &[String]) -> Option<&Record> {
        match self.slots.get(key) {
            Some(Slot::Clean(r) | Slot::Dirty(r) | Slot::Added(r)) => Some(r),
            Some(Slot::Absent) | None => None,
        }
    }

    /// The row of a loaded key, to change; the next flush writes it.
    pub fn get_mut(&mut self, key: &[String]) -> Option<&mut Record> {
        let _ = self.slot(key);
        let slot = self.slots.get_mut(key).expect("checked above");
        if let Slot::Clean(_) = slot {
            let Slot::Clean(record) = std::mem::replace(slot, Slot::Absent) else {
                unreachable!()
            };
            *slot = Slot::Dirty(record);
        }
        match slot {
            Slot::Absent => None,
            Slot::Dirty(r) | Slot::Added(r) => Some(r),
            Slot::Clean(_) => unreachable!("made dirty above"),
        }
    }

    /// Adds a new row; `false` (and nothing changes) if a row with its key is known to
    /// exist. A key never loaded is not looked up: the caller loads the keys that may
    /// exist already, or knows they cannot (the seats of a show scheduled in this batch).
    pub fn insert(&mut self, record: Record) -> bool {
        assert!(
            std::ptr::eq(record.table, self.table),
            "row of another table"
        );
        let key = record.key();
        match self.slots.get(&key) {
            Some(Slot::Clean(_) | Slot::Dirty(_) | Slot::Added(_)) => false,
            Some(Slot::Absent) => {
                self.slots.insert(key, Slot::Added(record));
                true
            }
            // Not looked up: written as an upsert, in case the caller's belief is wrong.
            None => {
                self.slots.insert(key, Slot::Dirty(record));
                true
            }
        }
    }

    /// Writes every changed or new row, with as few statements as the parameter limits
    /// allow (rows added where a load found none with plain inserts, the others with
    /// upserts); they are then as the table holds them.
    pub async fn flush(&mut self, tx: &mut Tx) -> Result<(), sqlx::Error> {
        let (mut added, mut changed) = (Vec::new(), Vec::new());
        for slot in self.slots.values() {
            match slot {
                Slot::Added(r) => added.push(r.values.clone()),
                Slot::Dirty(r) => changed.push(r.values.clone()),
                Slot::Absent | Slot::Clean(_) => {}
            }
        }
        if added.is_empty() && changed.is_empty() {
            return Ok(());
        }
        let table = self.table;
        let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
        if !added.is_empty() {
            write_rows(tx, table.name, &names, added, "").await?;
        }
        if !changed.is_empty() {
            let keys = names[..table.key].join(", ");
            let updates = names[table.key..]
                .iter()
                .map(|n| format!("{n} = excluded.{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let conflict = if updates.is_empty() {
                format!("ON CONFLICT ({keys}) DO NOTHING")
            } else {
                format!("ON CONFLICT ({keys}) DO UPDATE SET {updates}")
            };
            write_rows(tx, table.name, &names, changed, &conflict).await?;
        }
        for slot in self.slots.values_mut() {
            if let Slot::Dirty(_) | Slot::Added(_) = slot {
                let (Slot::Dirty(record) | Slot::Added(record)) =
                    std::mem::replace(slot, Slot::Absent)
                else {
                    unreachable!()
                };
                *slot = Slot::Clean(record);
            }
        }
        Ok(())
    }
}

/// Rows per statement for a table of `width` columns.
pub(crate) fn rows_per_statement(width: usize) -> usize {
    assert!(width > 0 && width <= PARAMS_MAX);
    (PARAMS_MAX / width).min(ROWS_MAX)
}

/// Writes `rows` into `table (columns)` with multi-row `INSERT … VALUES` statements ending
/// in `tail` (an `ON CONFLICT` clause, or nothing), as few as the limits allow.
pub(crate) async fn write_rows(
    tx: &mut Tx,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Param>>,
    tail: &str,
) -> Result<(), sqlx::Error> {
    // Plain inserts of more than a few rows go through COPY where the backend has it.
    const COPY_ROWS_MIN: usize = 64;
    if tail.is_empty() && rows.len() >= COPY_ROWS_MIN && tx.copy_in(table, columns, &rows).await? {
        return Ok(());
    }
    let width = columns.len();
    let per_statement = rows_per_statement(width);
    let head = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Param>> = rows.by_ref().take(per_statement).collect();
        let mut sql = String::with_capacity(head.len() + chunk.len() * width * 7 + tail.len());
        sql.push_str(&head);
        let mut params = Vec::with_capacity(chunk.len() * width);
        for (i, row) in chunk.into_iter().enumerate() {
            assert_eq!(row.len(), width, "a row of {table} has the wrong width");
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            sql.push_str(&placeholders_for(tx.backend(), params.len() + 1, width));
            sql.push(')');
            params.extend(row);
        }
        if !tail.is_empty() {
            sql.push(' ');
            sql.push_str(tail);
        }
        tx.execute(&sql, &params).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    static T: Table = Table {
        name: "t",
        columns: &[
            ("a", Kind::Text),
            ("b", Kind::Text),
            ("n", Kind::Int),
            ("o", Kind::OptText),
        ],
        key: 2,
    };

    #[test]
    fn records_read_and_set_by_column() {
        let mut r = Record::new(&T, vec!["x".into(), "y".into(), 3i64.into(), "z".into()]);
        assert_eq!(r.key(), vec!["x".to_owned(), "y".to_owned()]);
        assert_eq!(r.int("n"), 3);
        assert_eq!(r.opt_text("o"), Some("z"));
        r.set("o", Param::OptText(None));
        assert_eq!(r.opt_text("o"), None);
        r.set("n", 4i64);
        assert_eq!(r.int("n"), 4);
    }

    #[test]
    #[should_panic(expected = "part of the key")]
    fn keys_do_not_change() {
        let mut r = Record::new(&T, vec!["x".into(), "y".into(), 3i64.into(), "z".into()]);
        r.set("a", "w");
    }

    #[test]
    #[should_panic(expected = "is Int")]
    fn values_fit_their_columns() {
        Record::new(&T, vec!["x".into(), "y".into(), "3".into(), "z".into()]);
    }

    #[test]
    fn inserts_refuse_known_rows() {
        let mut rows = Rows::new(&T);
        let r = Record::new(&T, vec!["x".into(), "y".into(), 3i64.into(), "z".into()]);
        assert!(rows.insert(r.clone()));
        assert!(!rows.insert(r));
        assert_eq!(rows.get(&["x".into(), "y".into()]).unwrap().int("n"), 3);
    }

    #[test]
    fn statements_stay_under_the_parameter_limit() {
        assert_eq!(rows_per_statement(9), 1_000);
        assert_eq!(rows_per_statement(20), 800);
        assert!(rows_per_statement(19) * 19 <= PARAMS_MAX);
    }
}
