//! PostgreSQL rebuilds into ordinary tables in a schema of their own, moved into place at
//! the swap (ADR 0016).
//!
//! The copies are made like the real tables (columns, defaults, checks, keys and unique
//! constraints with their names, grants, owner, options, comments), in a fresh schema
//! `boxoffice_rebuild_<id>` that the rebuild's connection puts first in its `search_path`, so
//! the projection's unqualified statements write into them. Secondary (non-unique)
//! indexes and foreign keys are left out while the log is replayed and made once the
//! copies are caught up: inserting a million rows into a table with its indexes took
//! 5–6 s here, inserting them bare and building the indexes afterwards 3.3 s.
//!
//! The swap, in the transaction that sets the checkpoint, locks the real tables, moves them
//! into a second fresh schema, moves the copies into the real tables' schema (their indexes
//! and constraints go with them, under the same names), points every view over the tables
//! at the new ones (`CREATE OR REPLACE VIEW` with the definition PostgreSQL prints), and
//! drops the old tables without `CASCADE`, so anything depending on them that was not
//! accounted for makes the swap fail and roll back rather than vanish. Nothing is copied:
//! the swap takes milliseconds where copying a million rows over the live table took
//! 7–15 s, and readers wait only for the moment the locks are held.
//!
//! The move is used only where it gives the same result as the copying swap: the role owns
//! (or is a member of the owner of) each table and each view over them, may create schemas
//! in the database and tables in the tables' schema, and nothing else depends on the tables (no triggers, policies, foreign keys from other
//! tables, owned sequences, materialized views, column privileges, tablespaces). Otherwise
//! [`movable`] says why and the rebuild uses TEMP copies and the copying swap.
//!
//! A rebuild holds a session-level advisory lock named after its schema for as long as its
//! connection lives. A schema whose lock nobody holds was left by a rebuild that crashed
//! or was cancelled; the next rebuild drops it ([`sweep`]).

use crate::db::{Session, Tx, placeholders};
use crate::runtime::ProjectionError;

/// The prefix of every rebuild schema. `_` is a wildcard in `LIKE`, hence the escapes there.
pub(super) const SCHEMA_PREFIX: &str = "boxoffice_rebuild_";
/// The first key of the advisory locks that mark a rebuild schema as in use (`box`); the
/// second is `hashtext` of the schema's name. The two-key space does not overlap with the
/// one-key space the event store's locks use.
const LOCK_CLASS: i32 = 0x0062_6f78;

/// A real table of a projection and where it lives.
pub(super) struct Home {
    /// The table's schema, unquoted.
    pub schema: String,
    /// `schema.table`, quoted where needed.
    pub qualified: String,
}

/// What is left to do to the copies once the log has been replayed into them.
pub(super) struct Moved {
    /// The copies' schema, unquoted.
    pub schema: String,
    /// The connection's `search_path` before the copies' schema was put first.
    pub search_path: String,
    /// Secondary indexes and foreign keys, made after the replay.
    pub deferred: Vec<String>,
}

/// An identifier in double quotes.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `WITH homes AS (…)`: the oids of `tables` as the connection's search path finds them,
/// with the parameters `$1…`.
fn homes_cte(tables: &[&str]) -> String {
    format!(
        "WITH homes AS (SELECT to_regclass(t)::oid AS oid FROM unnest(ARRAY[{}]::text[]) t)",
        placeholders(1, tables.len())
    )
}

fn params(tables: &[&str]) -> Vec<crate::db::Param> {
    tables.iter().map(|t| (*t).into()).collect()
}

/// Why `tables` cannot be moved into place at a swap, or `None` if they can. Run with the
/// connection's own search path (before the copies' schema is put first).
pub(super) async fn movable(
    session: &Session,
    tables: &[&str],
) -> Result<Option<String>, sqlx::Error> {
    let cte = homes_cte(tables);
    let params = params(tables);
    let may_create = session
        .fetch_optional(
            "SELECT CASE WHEN has_database_privilege(current_database(), 'CREATE')
                    THEN 1::bigint ELSE 0::bigint END AS ok",
            &[],
        )
        .await?
        .map(|r| r.int("ok"))
        .transpose()?
        == Some(1);
    if !may_create {
        return Ok(Some(
            "the role may not create schemas in this database".into(),
        ));
    }
    // Each table: an ordinary, permanent table the role owns (or whose owner it is a
    // member of), in a schema it may create tables in (the copy moves there), in the
    // default tablespace, without row security, column privileges or a replica identity
    // other than the default.
    let unusual = session
        .fetch_all(
            &format!(
                "{cte}
                 SELECT c.relname::text AS name FROM homes h JOIN pg_class c ON c.oid = h.oid
                 WHERE c.relkind <> 'r' OR c.relpersistence <> 'p' OR c.reltablespace <> 0
                    OR c.relrowsecurity OR c.relreplident <> 'd'
                    OR NOT pg_has_role(c.relowner, 'USAGE')
                    OR NOT has_schema_privilege(c.relnamespace, 'CREATE')
                    OR EXISTS (SELECT 1 FROM pg_attribute a
                               WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL)
                 UNION ALL
                 SELECT 'a missing table' FROM homes WHERE oid IS NULL"
            ),
            &params,
        )
        .await?;
    if let Some(row) = unusual.first() {
        return Ok(Some(format!(
            "{} is not an ordinary table with default settings that this role owns, in a \
             schema it may create tables in",
            row.text("name")?
        )));
    }
    // Everything that depends on the tables must be theirs (row type, TOAST table,
    // indexes, defaults, their own constraints) or a plain view this role owns.
    let foreign = session
        .fetch_all(
            &format!(
                "{cte}
                 SELECT DISTINCT pg_describe_object(d.classid, d.objid, 0) AS what
                 FROM pg_depend d
                 WHERE d.refclassid = 'pg_class'::regclass
                   AND d.refobjid IN (SELECT oid FROM homes)
                   AND NOT (
                        d.classid = 'pg_type'::regclass
                     OR d.classid = 'pg_attrdef'::regclass
                     OR (d.classid = 'pg_class'::regclass AND EXISTS (
                           SELECT 1 FROM pg_class o
                           WHERE o.oid = d.objid AND o.relkind IN ('i', 't')))
                     OR (d.classid = 'pg_constraint'::regclass AND EXISTS (
                           SELECT 1 FROM pg_constraint k
                           WHERE k.oid = d.objid AND k.conrelid IN (SELECT oid FROM homes)))
                     OR (d.classid = 'pg_rewrite'::regclass AND EXISTS (
                           SELECT 1 FROM pg_rewrite r JOIN pg_class v ON v.oid = r.ev_class
                           WHERE r.oid = d.objid AND v.relkind = 'v'
                             AND v.oid NOT IN (SELECT oid FROM homes)
                             AND pg_has_role(v.relowner, 'USAGE'))))
                 ORDER BY 1"
            ),
            &params,
        )
        .await?;
    if !foreign.is_empty() {
        let names = foreign
            .iter()
            .map(|r| r.text("what"))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Some(format!(
            "other objects depend on the tables: {}",
            names.join(", ")
        )));
    }
    Ok(None)
}

/// Drops the rebuild schemas no live rebuild holds: leftovers of rebuilds that crashed or
/// were cancelled. Returns how many.
pub(super) async fn sweep(session: &Session) -> Result<usize, sqlx::Error> {
    let schemas = session
        .fetch_all(
            &format!(
                "SELECT nspname::text AS name FROM pg_namespace WHERE nspname LIKE {}",
                literal(&format!("{}%", SCHEMA_PREFIX.replace('_', "\\_")))
            ),
            &[],
        )
        .await?;
    let mut swept = 0;
    for schema in schemas {
        let schema = schema.text("name")?;
        let free = session
            .fetch_optional(
                &format!(
                    "SELECT CASE WHEN pg_try_advisory_lock({LOCK_CLASS}, hashtext($1))
                     THEN 1::bigint ELSE 0::bigint END AS free"
                ),
                &[schema.as_str().into()],
            )
            .await?
            .map(|r| r.int("free"))
            .transpose()?
            == Some(1);
        if !free {
            continue;
        }
        let dropped = session
            .execute(
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(&schema)),
                &[],
            )
            .await;
        session
            .execute(
                &format!("SELECT pg_advisory_unlock({LOCK_CLASS}, hashtext($1))"),
                &[schema.as_str().into()],
            )
            .await?;
        dropped?;
        tracing::info!(
            schema,
            "dropped the tables a crashed or cancelled rebuild left"
        );
        swept += 1;
    }
    Ok(swept)
}

/// Makes the copies of `tables` (children before parents) in a fresh schema, takes the
/// schema's advisory lock and puts the schema first in the connection's search path.
/// Returns where each real table lives and what is left for [`finish`].
pub(super) async fn create(
    session: &Session,
    tables: &[&str],
) -> Result<(Vec<Home>, Moved), ProjectionError> {
    let search_path = session
        .fetch_optional("SELECT current_setting('search_path') AS path", &[])
        .await?
        .map(|r| r.text("path"))
        .transpose()?
        .unwrap_or_default();
    // Everything is read before the copies exist, while the names resolve to the real
    // tables and PostgreSQL prints references to them unqualified.
    let mut homes = Vec::with_capacity(tables.len());
    let mut plans = Vec::with_capacity(tables.len());
    for table in tables {
        let (home, plan) = plan(session, table).await?;
        homes.push(home);
        plans.push(plan);
    }
    let schema = format!("{SCHEMA_PREFIX}{}", uuid::Uuid::now_v7().simple());
    session
        .execute(
            &format!("SELECT pg_advisory_lock({LOCK_CLASS}, hashtext($1))"),
            &[schema.as_str().into()],
        )
        .await?;
    session
        .execute(&format!("CREATE SCHEMA {}", quote(&schema)), &[])
        .await?;
    let first = if search_path.trim().is_empty() {
        quote(&schema)
    } else {
        format!("{}, {search_path}", quote(&schema))
    };
    session
        .execute(
            "SELECT set_config('search_path', $1, false)",
            &[first.into()],
        )
        .await?;
    // A slice's commit need not wait for its WAL to reach the disk: a crash loses the
    // copies whatever they hold, and the swap's transaction waits as usual.
    session.execute("SET synchronous_commit = off", &[]).await?;
    let mut deferred = Vec::new();
    // Parents first, so that a foreign key between the copies finds its parent.
    for ((table, home), plan) in tables.iter().zip(&homes).zip(&plans).rev() {
        let copy = format!("{}.{table}", quote(&schema));
        session
            .execute(
                &format!(
                    "CREATE TABLE {copy} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS \
                     INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE \
                     INCLUDING COMMENTS INCLUDING COMPRESSION)",
                    home.qualified
                ),
                &[],
            )
            .await?;
        for statement in &plan.now {
            session
                .execute(&statement.replace(PLACEHOLDER, &copy), &[])
                .await?;
        }
        deferred.extend(plan.later.iter().map(|s| s.replace(PLACEHOLDER, &copy)));
    }
    Ok((
        homes,
        Moved {
            schema,
            search_path,
            deferred,
        },
    ))
}

/// Stands for the copy's qualified name in a planned statement.
const PLACEHOLDER: &str = "\u{0}COPY\u{0}";

/// The statements that make a copy like `table`: `now` (keys and unique indexes, which
/// the projection's upserts need; owner, grants, options, comment) and `later`
/// (secondary indexes and foreign keys).
struct Plan {
    now: Vec<String>,
    later: Vec<String>,
}

async fn plan(session: &Session, table: &str) -> Result<(Home, Plan), ProjectionError> {
    let row = session
        .fetch_optional(
            "SELECT n.nspname::text AS schema, c.oid::bigint AS oid,
                    quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified,
                    pg_get_userbyid(c.relowner)::text AS owner,
                    array_to_string(c.reloptions, ', ') AS options,
                    obj_description(c.oid, 'pg_class') AS comment
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass($1)",
            &[table.into()],
        )
        .await?
        .ok_or_else(|| ProjectionError::Failed(format!("no table {table} to shadow")))?;
    let schema = row.text("schema")?;
    let oid = row.int("oid")?;
    // As PostgreSQL prints it in an index's definition.
    let qualified = row.text("qualified")?;
    let mut now = vec![format!(
        "ALTER TABLE {PLACEHOLDER} OWNER TO {}",
        quote(&row.text("owner")?)
    )];
    if let Some(options) = row.opt_text("options")?.filter(|o| !o.is_empty()) {
        now.push(format!("ALTER TABLE {PLACEHOLDER} SET ({options})"));
    }
    if let Some(comment) = row.opt_text("comment")? {
        now.push(format!(
            "COMMENT ON TABLE {PLACEHOLDER} IS {}",
            literal(&comment)
        ));
    }
    let mut later = Vec::new();
    // Constraints with their names: keys and exclusions now, foreign keys later (checks
    // came with LIKE).
    for constraint in session
        .fetch_all(
            "SELECT conname::text AS name, contype::text AS kind,
                    pg_get_constraintdef(oid) AS def
             FROM pg_constraint WHERE conrelid = $1::bigint::oid AND contype IN ('p', 'u', 'x', 'f')
             ORDER BY contype = 'f', conname",
            &[oid.into()],
        )
        .await?
    {
        let statement = format!(
            "ALTER TABLE {PLACEHOLDER} ADD CONSTRAINT {} {}",
            quote(&constraint.text("name")?),
            constraint.text("def")?
        );
        if constraint.text("kind")? == "f" {
            later.push(statement);
        } else {
            now.push(statement);
        }
    }
    // Indexes that back no constraint: unique ones now, the others later.
    let on = format!(" ON {qualified} USING ");
    for index in session
        .fetch_all(
            "SELECT pg_get_indexdef(i.indexrelid) AS def,
                    CASE WHEN i.indisunique THEN 1::bigint ELSE 0::bigint END AS is_unique
             FROM pg_index i
             WHERE i.indrelid = $1::bigint::oid
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                                                              AND k.conrelid = i.indrelid)
             ORDER BY i.indexrelid",
            &[oid.into()],
        )
        .await?
    {
        let def = index.text("def")?;
        if def.matches(&on).count() != 1 {
            return Err(ProjectionError::Failed(format!(
                "cannot copy the index `{def}` of {qualified}: it does not name the table as expected"
            )));
        }
        let statement = def.replacen(&on, &format!(" ON {PLACEHOLDER} USING "), 1);
        if index.int("is_unique")? == 1 {
            now.push(statement);
        } else {
            later.push(statement);
        }
    }
    // Privileges, as granted on the real table (0 is PUBLIC).
    for grant in session
        .fetch_all(
            "SELECT a.privilege_type AS privilege,
                    CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee,
                    CASE WHEN a.is_grantable THEN 1::bigint ELSE 0::bigint END AS grantable
             FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = $1::bigint::oid AND a.grantee <> c.relowner
             ORDER BY 2, 1",
            &[oid.into()],
        )
        .await?
    {
        now.push(format!(
            "GRANT {} ON {PLACEHOLDER} TO {}{}",
            grant.text("privilege")?,
            grant.text("grantee")?,
            if grant.int("grantable")? == 1 {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        ));
    }
    Ok((Home { schema, qualified }, Plan { now, later }))
}

/// Makes the copies' secondary indexes and foreign keys and gathers their statistics, once
/// the log has been replayed into them (outside the swap's transaction: nobody else uses
/// the copies).
pub(super) async fn finish(
    session: &Session,
    moved: &mut Moved,
    tables: &[&str],
) -> Result<(), sqlx::Error> {
    for statement in std::mem::take(&mut moved.deferred) {
        session.execute(&statement, &[]).await?;
    }
    for table in tables {
        session
            .execute(&format!("ANALYZE {}.{table}", quote(&moved.schema)), &[])
            .await?;
    }
    Ok(())
}

/// Inside the swap's transaction: replaces the real tables with the copies (see the module
/// docs). `tables` are children before parents.
pub(super) async fn move_into_place(
    tx: &mut Tx,
    moved: &Moved,
    tables: &[&str],
    homes: &[Home],
) -> Result<(), ProjectionError> {
    if !moved.deferred.is_empty() {
        return Err(ProjectionError::Failed(
            "the copies' indexes were not made before the swap".into(),
        ));
    }
    // Names resolve as they do everywhere else from here on: to the real tables.
    tx.execute(
        "SELECT set_config('search_path', $1, true), set_config('synchronous_commit', 'on', true)",
        &[moved.search_path.as_str().into()],
    )
    .await?;
    let qualified: Vec<&str> = homes.iter().map(|h| h.qualified.as_str()).collect();
    tx.execute(
        &format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            qualified.join(", ")
        ),
        &[],
    )
    .await?;
    // Under the lock, the views as they are now, printed with the usual search path.
    let cte = homes_cte(tables);
    let views = tx
        .fetch_all(
            &format!(
                "{cte}
                 SELECT DISTINCT v.oid::bigint AS oid,
                        quote_ident(n.nspname) || '.' || quote_ident(v.relname) AS name,
                        pg_get_viewdef(v.oid) AS def,
                        array_to_string(v.reloptions, ', ') AS options
                 FROM pg_depend d
                 JOIN pg_rewrite r ON r.oid = d.objid
                 JOIN pg_class v ON v.oid = r.ev_class
                 JOIN pg_namespace n ON n.oid = v.relnamespace
                 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.refobjid IN (SELECT oid FROM homes)
                   AND v.oid NOT IN (SELECT oid FROM homes)
                 ORDER BY 1"
            ),
            &params(tables),
        )
        .await?;
    let old = format!("{}_old", moved.schema);
    tx.execute(&format!("CREATE SCHEMA {}", quote(&old)), &[])
        .await?;
    for home in homes {
        tx.execute(
            &format!("ALTER TABLE {} SET SCHEMA {}", home.qualified, quote(&old)),
            &[],
        )
        .await?;
    }
    for (table, home) in tables.iter().zip(homes) {
        tx.execute(
            &format!(
                "ALTER TABLE {}.{table} SET SCHEMA {}",
                quote(&moved.schema),
                quote(&home.schema)
            ),
            &[],
        )
        .await?;
    }
    for view in &views {
        let name = view.text("name")?;
        let def = view.text("def")?;
        let def = def.trim_end().trim_end_matches(';');
        let options = view
            .opt_text("options")?
            .filter(|o| !o.is_empty())
            .map(|o| format!(" WITH ({o})"))
            .unwrap_or_default();
        tx.execute(
            &format!("CREATE OR REPLACE VIEW {name}{options} AS {def}"),
            &[],
        )
        .await?;
    }
    // No CASCADE: whatever still depends on the old tables fails the swap.
    let olds: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{t}", quote(&old)))
        .collect();
    tx.execute(&format!("DROP TABLE {}", olds.join(", ")), &[])
        .await?;
    tx.execute(&format!("DROP SCHEMA {}", quote(&old)), &[])
        .await?;
    tx.execute(&format!("DROP SCHEMA {}", quote(&moved.schema)), &[])
        .await?;
    Ok(())
}

/// Drops the copies' schema (whatever is still in it) and lets its lock go.
pub(super) async fn drop_copies(session: &Session, schema: &str) -> Result<(), sqlx::Error> {
    session
        .execute(
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(schema)),
            &[],
        )
        .await?;
    session
        .execute(
            &format!("SELECT pg_advisory_unlock({LOCK_CLASS}, hashtext($1))"),
            &[schema.into()],
        )
        .await?;
    Ok(())
}

/// Fails unless the copies are still what the connection's unqualified names reach: a
/// connection that broke and was replaced has the default search path.
pub(super) async fn check(
    tx: &mut Tx,
    moved: &Moved,
    tables: &[&str],
) -> Result<bool, sqlx::Error> {
    let names = placeholders(2, tables.len());
    let mut params = vec![moved.schema.as_str().into()];
    params.extend(tables.iter().map(|t| (*t).into()));
    let found = tx
        .fetch_optional(
            &format!(
                "SELECT count(*) AS n FROM pg_class
                 WHERE relnamespace = to_regnamespace(quote_ident($1))::oid AND relkind = 'r'
                   AND relname::text IN ({names}) AND current_schema() = $1"
            ),
            &params,
        )
        .await?
        .map(|r| r.int("n"))
        .transpose()?
        .unwrap_or(0);
    Ok(usize::try_from(found).ok() == Some(tables.len()))
}
