//! Shadow tables: an empty copy of a projection's tables that only the rebuild's
//! connections see, for building a read model beside the one readers use, and the swap
//! that moves the copy's rows into the real tables in one transaction.
//!
//! The copies are TEMP tables with the same names as the projection's tables, made on a
//! [`Session`] (a connection of its own). A temporary table shadows a permanent one of the
//! same name for unqualified names on its connection, on PostgreSQL (`pg_temp` is searched
//! first) and on SQLite (the `temp` schema is searched before `main`), so a projection's
//! unchanged `apply` writes into the copies there while every other connection keeps
//! reading and writing the real tables. The copies keep the real tables' columns, primary
//! keys, unique constraints, checks and indexes (the projections' `ON CONFLICT` upserts
//! need them); PostgreSQL's `LIKE … INCLUDING ALL` leaves foreign keys out, SQLite's copy
//! of the table's own DDL keeps them (they then point at the other copies) and leaves out
//! the non-unique indexes, which only readers of the real tables use. Triggers are not
//! copied; the read-model tables have none.
//!
//! The swap empties each real table and refills it from its copy (`DELETE` then
//! `INSERT … SELECT`, every name qualified), so the real tables are never replaced and the
//! views over them keep working; readers see the old rows until the swap commits (MVCC on
//! PostgreSQL, WAL on SQLite) and the new ones after. The copies vanish with the
//! connection: a rebuild that is cancelled or crashes leaves nothing behind.
//!
//! On PostgreSQL a rebuild builds ordinary tables in a schema of its own instead, and moves
//! them into place at the swap, where the tables allow it ([`schema`], ADR 0016).

use crate::db::{Backend, Session, Tx, placeholders};
use crate::runtime::ProjectionError;

use boxoffice_store::tables::TablePool;

mod schema;

/// The most local buffer memory (PostgreSQL's `temp_buffers`) a rebuild's session may use
/// for its shadow tables.
const SHADOW_TEMP_BUFFERS_MB: u32 = 1024;

/// One table of a projection whose rows differ from a replay of the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableDrift {
    pub table: &'static str,
    /// Rows the live table has that the replay does not (changed rows count on both
    /// sides).
    pub live_only: u64,
    /// Rows the replay has that the live table lacks.
    pub replay_only: u64,
}

/// What a shadow is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A rebuild, swapped in at the end: on PostgreSQL the copies are moved into place
    /// where the tables allow it ([`schema`]).
    Swap,
    /// A comparison with the live tables, which are left as they are: TEMP copies.
    Compare,
}

/// Where the copies are.
enum Place {
    /// TEMP tables on the session, copied over the real tables at the swap.
    Temp,
    /// Ordinary tables in a schema of their own, moved into place at the swap. `key` names
    /// the database and tables, for [`move_failed`].
    Schema { moved: schema::Moved, key: String },
}

/// Another connection on a [`Shadow`]'s copies ([`Shadow::helper`]).
pub(crate) struct Helper<'a> {
    shadow: &'a Shadow,
    session: Session,
}

impl Helper<'_> {
    /// Begins a transaction on the helper's connection, checked to reach the copies.
    pub(crate) async fn begin(&self) -> Result<Tx, ProjectionError> {
        let mut tx = self.session.begin().await?;
        self.shadow.check(&mut tx).await?;
        Ok(tx)
    }

    pub(crate) async fn close(self) {
        self.session.close().await;
    }
}

/// A projection's tables copied on a session of their own.
pub(crate) struct Shadow {
    session: Session,
    /// The projection's tables, children before parents.
    tables: &'static [&'static str],
    /// Each table's real name, qualified with its schema (`main` on SQLite).
    homes: Vec<String>,
    place: Place,
    /// Each real table's schema (PostgreSQL copies moved into place).
    home_schemas: Vec<schema::Home>,
    /// The DDL of the SQLite copies' non-unique indexes, left out while the log is
    /// replayed; [`Shadow::finish`] makes them and empties this. Until it is empty the
    /// copies lack indexes their tables have (a rebuild's TEMP copies only).
    deferred_indexes: Vec<String>,
    /// Set by [`Shadow::discard`]; a shadow dropped without it (a cancelled rebuild) drops
    /// its copies from a task of its own.
    discarded: bool,
}

impl Drop for Shadow {
    fn drop(&mut self) {
        let Place::Schema { moved, .. } = &self.place else {
            // TEMP copies go with the connection, which closes when the session is dropped.
            return;
        };
        if self.discarded {
            return;
        }
        // Unlike TEMP tables, the schema outlives the connection. Without a runtime to
        // drop it now, the next rebuild sweeps it (its lock went with the connection).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (session, schema) = (self.session.clone(), moved.schema.clone());
            runtime.spawn(async move {
                if let Err(e) = schema::drop_copies(&session, &schema).await {
                    tracing::warn!(schema, error = %e, "dropping a cancelled rebuild's copies failed");
                }
                session.close().await;
            });
        }
    }
}

/// Whether moving the tables `key` names into place failed before in this process;
/// `record` says it did now. The next rebuild of those tables then copies them into place,
/// so that a failure the checks did not foresee (a dependency the swap cannot carry over,
/// a lock it could not get in time, a table changed during the rebuild) costs one retry,
/// not every one.
fn move_failed(key: &str, record: bool) -> bool {
    static FAILED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut failed = FAILED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if record && !failed.iter().any(|k| k == key) {
        tracing::warn!(
            key,
            "moving rebuilt tables into place failed; the next rebuild copies them"
        );
        failed.push(key.to_owned());
    }
    failed.iter().any(|k| k == key)
}

/// The schema that holds a connection's TEMP tables, as SQL can name it.
fn temp_schema(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "pg_temp",
        Backend::Sqlite => "temp",
    }
}

/// A table's or index's DDL, as SQLite keeps it in `sqlite_master`, rewritten to create the
/// same object in the schema `schema` (`temp` or `main`); `None` for anything else (a
/// trigger, a view, DDL of an unexpected shape). SQLite stores the DDL with its first
/// keywords normalized (`CREATE TABLE name …`, no `IF NOT EXISTS`, no schema), which is
/// all this relies on, and stores it that way again whatever schema the DDL names.
fn sqlite_ddl_in(schema: &str, kind: &str, sql: &str) -> Option<String> {
    fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
        let text = text.trim_start();
        let head = text.get(..keyword.len())?;
        let rest = &text[keyword.len()..];
        (head.eq_ignore_ascii_case(keyword) && rest.starts_with(char::is_whitespace))
            .then(|| rest.trim_start())
    }
    let rest = strip_keyword(sql, "CREATE")?;
    match kind {
        "table" => {
            let rest = strip_keyword(rest, "TABLE")?;
            Some(format!("CREATE TABLE {schema}.{rest}"))
        }
        "index" => {
            let (unique, rest) = match strip_keyword(rest, "UNIQUE") {
                Some(rest) => ("UNIQUE ", rest),
                None => ("", rest),
            };
            let rest = strip_keyword(rest, "INDEX")?;
            Some(format!("CREATE {unique}INDEX {schema}.{rest}"))
        }
        _ => None,
    }
}

impl Shadow {
    /// Opens a session and makes an empty copy of each of `tables` on it: TEMP tables, or
    /// for a PostgreSQL rebuild whose tables allow it, tables in a schema of their own.
    pub(crate) async fn create(
        pool: &TablePool,
        tables: &'static [&'static str],
        purpose: Purpose,
    ) -> Result<Self, ProjectionError> {
        let session = Session::open(pool).await?;
        if session.backend() == Backend::Postgres && purpose == Purpose::Swap {
            match Self::create_moved(&session, tables).await {
                Ok(Some(shadow)) => return Ok(shadow),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    tables = ?tables,
                    error = %e,
                    "making the rebuild's tables in a schema of their own failed; copying instead"
                ),
            }
        }
        if session.backend() == Backend::Postgres {
            // TEMP tables live in the session's local buffers, 8 MB by default: beyond that
            // every page goes through a temporary file, which made a rebuild of a
            // million-event log mostly file I/O. Allocated as used, and only before the
            // session's first TEMP table is touched, which is now.
            session
                .execute(
                    &format!("SET temp_buffers = '{SHADOW_TEMP_BUFFERS_MB}MB'"),
                    &[],
                )
                .await?;
        }
        let mut homes = Vec::with_capacity(tables.len());
        let mut deferred_indexes = Vec::new();
        for table in tables {
            let home = match session.backend() {
                Backend::Postgres => create_postgres(&session, table).await?,
                Backend::Sqlite => {
                    let (home, deferred) = create_sqlite(&session, table).await?;
                    if purpose == Purpose::Swap {
                        deferred_indexes.extend(deferred);
                    }
                    home
                }
            };
            homes.push(home);
        }
        Ok(Self {
            session,
            tables,
            homes,
            place: Place::Temp,
            home_schemas: Vec::new(),
            deferred_indexes,
            discarded: false,
        })
    }

    /// The copies in a schema of their own (PostgreSQL), or `None` when the tables cannot
    /// be moved into place or a move of them failed before in this process.
    async fn create_moved(
        session: &Session,
        tables: &'static [&'static str],
    ) -> Result<Option<Self>, ProjectionError> {
        let key = schema::text_of(session, "SELECT current_database()::text AS value").await?
            + "/"
            + &tables.join(",");
        if move_failed(&key, false) {
            tracing::info!(
                tables = ?tables,
                "a move of these tables failed before: copying them into place instead"
            );
            return Ok(None);
        }
        if let Some(why) = schema::movable(session, tables).await? {
            tracing::info!(
                tables = ?tables,
                why,
                "the rebuild's tables will be copied into place, not moved"
            );
            return Ok(None);
        }
        let swept = schema::sweep(session).await?;
        let (home_schemas, moved) = schema::create(session, tables).await?;
        tracing::debug!(
            schema = moved.schema,
            swept,
            "rebuilding into a schema of its own, to be moved into place"
        );
        Ok(Some(Self {
            session: session.clone(),
            tables,
            homes: home_schemas.iter().map(|h| h.qualified.clone()).collect(),
            place: Place::Schema { moved, key },
            home_schemas,
            deferred_indexes: Vec::new(),
            discarded: false,
        }))
    }

    /// A second connection writing to the same copies, so that two ranges of the log can
    /// be applied at once; `None` for TEMP copies, which exist on the shadow's own
    /// connection alone. Closed when dropped.
    pub(crate) async fn helper(
        &self,
        pool: &TablePool,
    ) -> Result<Option<Helper<'_>>, ProjectionError> {
        let Place::Schema { moved, .. } = &self.place else {
            return Ok(None);
        };
        let session = Session::open(pool).await?;
        if let Err(e) = schema::join(&session, moved).await {
            session.close().await;
            return Err(e.into());
        }
        Ok(Some(Helper {
            shadow: self,
            session,
        }))
    }

    /// Begins a transaction on the shadow's connection, checked to still hold the copies.
    pub(crate) async fn begin(&self) -> Result<Tx, ProjectionError> {
        let mut tx = self.session.begin().await?;
        self.check(&mut tx).await?;
        Ok(tx)
    }

    /// Like [`Shadow::begin`], for a transaction that writes nothing but the copies: on
    /// SQLite it takes no lock on the live database ([`Tx::begin_deferred`]), so appends
    /// are not held up while it runs.
    pub(crate) async fn begin_copies_only(&self) -> Result<Tx, ProjectionError> {
        let mut tx = self.session.begin_deferred().await?;
        self.check(&mut tx).await?;
        Ok(tx)
    }

    /// Fails unless every copy is on the transaction's connection. A broken connection is
    /// replaced by a fresh one that has none, and there the projection's unqualified
    /// statements would write into the real tables: this check stops that.
    async fn check(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        if self.tables.is_empty() {
            return Ok(());
        }
        if let Place::Schema { moved, .. } = &self.place {
            if !schema::check(tx, moved, self.tables).await? {
                return Err(ProjectionError::Failed(format!(
                    "the rebuild's connection no longer reaches its copies in {}",
                    moved.schema
                )));
            }
            return Ok(());
        }
        let names = placeholders(1, self.tables.len());
        let sql = match tx.backend() {
            Backend::Postgres => format!(
                "SELECT count(*) AS n FROM pg_class
                 WHERE relnamespace = pg_my_temp_schema() AND relkind = 'r'
                   AND relname::text IN ({names})"
            ),
            Backend::Sqlite => format!(
                "SELECT count(*) AS n FROM temp.sqlite_master
                 WHERE type = 'table' AND name IN ({names})"
            ),
        };
        let params: Vec<_> = self.tables.iter().map(|t| (*t).into()).collect();
        let found = tx
            .fetch_optional(&sql, &params)
            .await?
            .map(|row| row.int("n"))
            .transpose()?
            .unwrap_or(0);
        if usize::try_from(found).ok() != Some(self.tables.len()) {
            return Err(ProjectionError::Failed(format!(
                "the rebuild's connection lost its shadow tables ({found} of {} left)",
                self.tables.len()
            )));
        }
        Ok(())
    }

    /// Once the log has been replayed into the copies, before the swap's transaction:
    /// makes what was left out of copies that will be moved into place (secondary indexes,
    /// foreign keys, statistics), or on SQLite the TEMP copies' non-unique indexes, so that
    /// the swap can transfer rows and index entries as they are.
    ///
    /// If that fails (a copy that did not come out like its table, say), the copies are
    /// complete all the same: the swap then copies their rows into place instead of moving
    /// them, or (SQLite) remakes the real tables' indexes after copying the rows.
    pub(crate) async fn finish(&mut self) -> Result<(), ProjectionError> {
        match &mut self.place {
            Place::Schema { moved, key } => {
                if let Err(e) =
                    schema::finish(&self.session, moved, self.tables, &self.home_schemas).await
                {
                    tracing::warn!(error = %e, "the rebuilt tables will be copied into place, not moved");
                    move_failed(key, true);
                }
            }
            Place::Temp => {
                for ddl in &self.deferred_indexes {
                    if let Err(e) = self.session.execute(ddl, &[]).await {
                        tracing::warn!(ddl, error = %e, "indexing a rebuilt copy failed; the swap remakes the indexes");
                        return Ok(());
                    }
                }
                self.deferred_indexes.clear();
            }
        }
        Ok(())
    }

    /// Inside `tx` (begun with [`Self::begin`]): puts the copies' rows in place of the real
    /// tables' rows, by moving the copies into place ([`schema`]) or by copying them.
    ///
    /// A move that fails (a lock not granted in time, a deadlock with a reader, a table
    /// changed during the rebuild, a dependency the checks did not foresee) is rolled back
    /// to a savepoint and the copies' rows are copied into place instead, as with TEMP
    /// copies: the rebuild is not lost, and readers are not locked out.
    pub(crate) async fn put_in_place(&self, tx: &mut Tx) -> Result<(), ProjectionError> {
        match &self.place {
            Place::Schema { moved, key } => {
                tx.execute("SAVEPOINT move_into_place", &[]).await?;
                match schema::move_into_place(tx, moved, self.tables, &self.home_schemas).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        tx.execute("ROLLBACK TO SAVEPOINT move_into_place", &[])
                            .await?;
                        tracing::warn!(
                            tables = ?self.tables,
                            error = %e,
                            "moving the rebuilt tables into place failed; copying their rows instead"
                        );
                        move_failed(key, true);
                        Ok(self
                            .copy_into_place(tx, &schema::quote(&moved.schema))
                            .await?)
                    }
                }
            }
            Place::Temp => Ok(self.copy_into_place(tx, temp_schema(tx.backend())).await?),
        }
    }

    /// Inside `tx` (begun with [`Self::begin`]): replaces every real table's rows with its
    /// copy's (in `copies`, the schema that holds them). Parents are refilled before
    /// children, after children were emptied first, so foreign keys between the tables hold
    /// at every statement.
    ///
    /// On SQLite, once [`Shadow::finish`] has indexed the copies like their tables,
    /// `INSERT … SELECT *` into an emptied table transfers the copy's rows and index
    /// entries as they are, in order (SQLite's transfer optimization), instead of
    /// inserting each row into every index (ADR 0021). Otherwise the real tables' own
    /// indexes (those made by `CREATE INDEX`, not the primary keys and UNIQUE constraints)
    /// are dropped first and made again, with their stored DDL, once the rows are in: in
    /// the same transaction, so readers see the old tables and indexes until the commit
    /// and the schema ends up as it was. Keeping them up to date row by row, in the log's
    /// order, scatters the inserts over an index on `stream_id` (`audit_log`'s swap took
    /// 4.9 s of its 10.1 s rebuild that way).
    async fn copy_into_place(&self, tx: &mut Tx, copies: &str) -> Result<(), sqlx::Error> {
        let mut indexes = Vec::new();
        if tx.backend() == Backend::Sqlite && !self.deferred_indexes.is_empty() {
            for table in self.tables {
                for index in tx
                    .fetch_all(
                        "SELECT name, sql FROM main.sqlite_master
                         WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL
                         ORDER BY name",
                        &[(*table).into()],
                    )
                    .await?
                {
                    let (name, sql) = (index.text("name")?, index.text("sql")?);
                    // Unqualified, the DDL would find the session's TEMP copy first.
                    let ddl = sqlite_ddl_in("main", "index", &sql).ok_or_else(|| {
                        sqlx::Error::Protocol(format!("the DDL of the index {name}: {sql}"))
                    })?;
                    tx.execute(&format!("DROP INDEX main.{}", schema::quote(&name)), &[])
                        .await?;
                    indexes.push(ddl);
                }
            }
        }
        for home in &self.homes {
            tx.execute(&format!("DELETE FROM {home}"), &[]).await?;
        }
        for (table, home) in self.tables.iter().zip(&self.homes).rev() {
            tx.execute(
                &format!("INSERT INTO {home} SELECT * FROM {copies}.{table}"),
                &[],
            )
            .await?;
        }
        for ddl in &indexes {
            tx.execute(ddl, &[]).await?;
        }
        Ok(())
    }

    /// Inside `tx` (begun with [`Self::begin`]): for each table, the rows only the real
    /// table has and the rows only the copy has (as multisets of whole rows would differ
    /// only in duplicates, which primary keys rule out).
    pub(crate) async fn differences(&self, tx: &mut Tx) -> Result<Vec<TableDrift>, sqlx::Error> {
        assert!(
            matches!(self.place, Place::Temp),
            "comparisons are made with TEMP copies (Purpose::Compare)"
        );
        let temp = temp_schema(tx.backend());
        let mut drift = Vec::new();
        for (table, home) in self.tables.iter().zip(&self.homes) {
            let count = |from: &str, minus: &str| {
                format!(
                    "SELECT count(*) AS n FROM (SELECT * FROM {from} EXCEPT SELECT * FROM {minus}) d"
                )
            };
            let live_only = tx
                .fetch_optional(&count(home, &format!("{temp}.{table}")), &[])
                .await?
                .map(|r| r.int("n"))
                .transpose()?
                .unwrap_or(0);
            let replay_only = tx
                .fetch_optional(&count(&format!("{temp}.{table}"), home), &[])
                .await?
                .map(|r| r.int("n"))
                .transpose()?
                .unwrap_or(0);
            if live_only != 0 || replay_only != 0 {
                drift.push(TableDrift {
                    table,
                    live_only: live_only as u64,
                    replay_only: replay_only as u64,
                });
            }
        }
        Ok(drift)
    }

    /// Drops the copies and closes the session. A failure here is only logged: closing
    /// the connection drops the copies anyway.
    pub(crate) async fn discard(mut self) {
        self.discarded = true;
        if let Place::Schema { moved, .. } = &self.place {
            // After a swap the schema is gone already; otherwise its copies go with it. If
            // this fails, the next rebuild sweeps the schema once the connection is closed.
            if let Err(e) = schema::drop_copies(&self.session, &moved.schema).await {
                tracing::warn!(schema = moved.schema, error = %e, "dropping a rebuild's copies failed");
            }
            self.session.clone().close().await;
            return;
        }
        let temp = temp_schema(self.session.backend());
        for table in self.tables {
            if let Err(e) = self
                .session
                .execute(&format!("DROP TABLE IF EXISTS {temp}.{table}"), &[])
                .await
            {
                tracing::warn!(table, error = %e, "dropping a shadow table failed");
                break;
            }
        }
        self.session.clone().close().await;
    }
}

/// Makes `pg_temp.table` like the real table and returns the real table's qualified name.
async fn create_postgres(session: &Session, table: &str) -> Result<String, ProjectionError> {
    // Before the copy exists, the name resolves to the real table, wherever the search
    // path finds it.
    let schema = session
        .fetch_optional(
            "SELECT n.nspname AS schema FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass($1)",
            &[table.into()],
        )
        .await?
        .ok_or_else(|| ProjectionError::Failed(format!("no table {table} to shadow")))?
        .text("schema")?;
    let home = format!("{}.{table}", schema::quote(&schema));
    session
        .execute(
            &format!("CREATE TEMP TABLE {table} (LIKE {home} INCLUDING ALL)"),
            &[],
        )
        .await?;
    // A search path that names pg_temp after the real schema would send the projection's
    // statements to the real table.
    let shadowed = session
        .fetch_optional(
            "SELECT CASE WHEN c.relnamespace = pg_my_temp_schema() THEN 1::bigint ELSE 0::bigint END AS shadowed
             FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[table.into()],
        )
        .await?
        .map(|row| row.int("shadowed"))
        .transpose()?
        == Some(1);
    if !shadowed {
        return Err(ProjectionError::Failed(format!(
            "the TEMP copy of {table} does not shadow {home} (is pg_temp late in search_path?)"
        )));
    }
    Ok(home)
}

/// Makes `temp.table` and its unique indexes from the real table's DDL; returns the real
/// table's qualified name and the DDL of the copy's other indexes, left for later.
async fn create_sqlite(
    session: &Session,
    table: &str,
) -> Result<(String, Vec<String>), ProjectionError> {
    // Automatic indexes (primary keys, UNIQUE) have no DDL: they come with the table's.
    let objects = session
        .fetch_all(
            "SELECT type, name, sql FROM main.sqlite_master
             WHERE tbl_name = $1 AND sql IS NOT NULL
             ORDER BY type <> 'table', name",
            &[table.into()],
        )
        .await?;
    if objects
        .first()
        .map(|o| o.text("type"))
        .transpose()?
        .as_deref()
        != Some("table")
    {
        return Err(ProjectionError::Failed(format!(
            "no table {table} to shadow"
        )));
    }
    let mut deferred = Vec::new();
    for object in &objects {
        let (kind, name, sql) = (
            object.text("type")?,
            object.text("name")?,
            object.text("sql")?,
        );
        let ddl = sqlite_ddl_in("temp", &kind, &sql).ok_or_else(|| {
            ProjectionError::Failed(format!(
                "cannot shadow the {kind} {name} of {table}: only tables and indexes are copied"
            ))
        })?;
        // Only the unique indexes now: the upserts need them, and `apply` looks rows up by
        // key. The others serve readers of the real tables; keeping them up to date row
        // by row made the copies slower to fill than building them once filled.
        if kind == "index" && !ddl.starts_with("CREATE UNIQUE INDEX") {
            deferred.push(ddl);
            continue;
        }
        session.execute(&ddl, &[]).await?;
    }
    Ok((format!("main.{table}"), deferred))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_ddl_is_moved_to_the_temp_schema() {
        let sqlite_temp_ddl = |kind, sql| sqlite_ddl_in("temp", kind, sql);
        assert_eq!(
            sqlite_temp_ddl("table", "CREATE TABLE orders (id TEXT PRIMARY KEY) STRICT").unwrap(),
            "CREATE TABLE temp.orders (id TEXT PRIMARY KEY) STRICT"
        );
        assert_eq!(
            sqlite_ddl_in("main", "index", "CREATE INDEX orders_idx ON orders (id)").unwrap(),
            "CREATE INDEX main.orders_idx ON orders (id)"
        );
        assert_eq!(
            sqlite_temp_ddl("index", "CREATE INDEX orders_idx ON orders (position, id)").unwrap(),
            "CREATE INDEX temp.orders_idx ON orders (position, id)"
        );
        assert_eq!(
            sqlite_temp_ddl("index", "create unique  index k ON orders (reservation_id)").unwrap(),
            "CREATE UNIQUE INDEX temp.k ON orders (reservation_id)"
        );
        assert_eq!(
            sqlite_temp_ddl(
                "index",
                "CREATE INDEX due ON outbox (next_attempt_at) WHERE delivered_at IS NULL"
            )
            .unwrap(),
            "CREATE INDEX temp.due ON outbox (next_attempt_at) WHERE delivered_at IS NULL"
        );
        assert_eq!(
            sqlite_temp_ddl(
                "trigger",
                "CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; END"
            ),
            None
        );
        assert_eq!(sqlite_temp_ddl("table", "CREATE TABLEX y (a)"), None);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(schema::quote("public"), "\"public\"");
        assert_eq!(schema::quote("a\"b"), "\"a\"\"b\"");
    }
}
