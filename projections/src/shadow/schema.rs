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

use crate::db::{DbRow, Param, Session, Tx, placeholders};
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
    /// What the table was made of when the rebuild began ([`SHAPE_SQL`]).
    pub shape: Vec<String>,
}

/// What is left to do to the copies once the log has been replayed into them.
pub(super) struct Moved {
    /// The copies' schema, unquoted.
    pub schema: String,
    /// The connection's `search_path` before the copies' schema was put first.
    pub search_path: String,
    /// Secondary indexes and foreign keys, made after the replay.
    pub deferred: Vec<String>,
    /// [`finish`] ran: the copies are complete and checked.
    pub finished: bool,
}

/// An identifier in double quotes.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `WITH homes AS (…)`: the oids of `tables` as the connection's search path finds them,
/// with the parameters `$1…`.
fn homes_cte(tables: &[&str]) -> String {
    format!(
        "WITH homes AS (SELECT to_regclass(t)::oid AS oid FROM unnest(ARRAY[{}]::text[]) t)",
        placeholders(1, tables.len())
    )
}

fn params(tables: &[&str]) -> Vec<Param> {
    tables.iter().map(|t| (*t).into()).collect()
}

/// Why `tables` cannot be moved into place at a swap, or `None` if they can. Run with the
/// connection's own search path (before the copies' schema is put first).
pub(super) async fn movable(
    session: &Session,
    tables: &[&str],
) -> Result<Option<String>, sqlx::Error> {
    movable_on(&mut Conn::Session(session), tables).await
}

/// [`movable`], inside the swap's transaction.
async fn movable_in(tx: &mut Tx, tables: &[&str]) -> Result<Option<String>, sqlx::Error> {
    movable_on(&mut Conn::Tx(tx), tables).await
}

/// A connection to run catalog queries on: the session, or a transaction on it.
enum Conn<'a> {
    Session(&'a Session),
    Tx(&'a mut Tx),
}

impl Conn<'_> {
    async fn fetch_all(&mut self, sql: &str, params: &[Param]) -> Result<Vec<DbRow>, sqlx::Error> {
        match self {
            Conn::Session(session) => session.fetch_all(sql, params).await,
            Conn::Tx(tx) => tx.fetch_all(sql, params).await,
        }
    }

    async fn fetch_optional(
        &mut self,
        sql: &str,
        params: &[Param],
    ) -> Result<Option<DbRow>, sqlx::Error> {
        match self {
            Conn::Session(session) => session.fetch_optional(sql, params).await,
            Conn::Tx(tx) => tx.fetch_optional(sql, params).await,
        }
    }
}

async fn movable_on(conn: &mut Conn<'_>, tables: &[&str]) -> Result<Option<String>, sqlx::Error> {
    let cte = homes_cte(tables);
    let params = params(tables);
    let may_create = conn
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
    let unusual = conn
        .fetch_all(
            &format!(
                "{cte}
                 SELECT c.relname::text AS name FROM homes h JOIN pg_class c ON c.oid = h.oid
                 WHERE c.relkind <> 'r' OR c.relpersistence <> 'p' OR c.reltablespace <> 0
                    OR c.relrowsecurity OR c.relreplident <> 'd'
                    OR c.relispartition OR c.reloftype <> 0
                    OR NOT pg_has_role(c.relowner, 'USAGE')
                    OR NOT has_schema_privilege(c.relnamespace, 'CREATE')
                    OR EXISTS (SELECT 1 FROM pg_attribute a
                               WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL)
                    OR EXISTS (SELECT 1 FROM pg_inherits i
                               WHERE i.inhrelid = c.oid OR i.inhparent = c.oid)
                    OR EXISTS (SELECT 1 FROM pg_depend e
                               WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid
                                 AND e.deptype = 'e')
                    OR EXISTS (SELECT 1 FROM pg_publication p WHERE p.puballtables)
                    OR EXISTS (SELECT 1 FROM pg_publication_namespace p
                               WHERE p.pnnspid = c.relnamespace)
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
    // indexes, defaults, their own constraints) or a plain view this role owns, in a
    // schema it may create in (`CREATE OR REPLACE VIEW` needs both), that reads nothing
    // but these tables (the swap locks it, and locking a view locks what it reads);
    // nothing may depend on their row types but those types' array types.
    let foreign = conn
        .fetch_all(
            &format!(
                "{cte}
                 SELECT DISTINCT pg_describe_object(d.classid, d.objid, 0) AS what
                 FROM pg_depend d
                 WHERE d.refclassid = 'pg_class'::regclass
                   AND d.refobjid IN (SELECT oid FROM homes)
                   AND NOT (
                        (d.classid = 'pg_type'::regclass AND EXISTS (
                           SELECT 1 FROM pg_class o
                           WHERE o.oid = d.refobjid AND o.reltype = d.objid))
                     OR (d.classid = 'pg_attrdef'::regclass AND EXISTS (
                           SELECT 1 FROM pg_attrdef a
                           WHERE a.oid = d.objid AND a.adrelid IN (SELECT oid FROM homes)))
                     OR (d.classid = 'pg_class'::regclass AND EXISTS (
                           SELECT 1 FROM pg_class o
                           WHERE o.oid = d.objid AND o.relkind IN ('i', 't')))
                     OR (d.classid = 'pg_constraint'::regclass AND EXISTS (
                           SELECT 1 FROM pg_constraint k
                           WHERE k.oid = d.objid AND k.conrelid IN (SELECT oid FROM homes)))
                     OR (d.classid = 'pg_rewrite'::regclass AND EXISTS (
                           SELECT 1 FROM pg_rewrite r JOIN pg_class v ON v.oid = r.ev_class
                           WHERE r.oid = d.objid AND r.rulename = '_RETURN' AND v.relkind = 'v'
                             AND v.oid NOT IN (SELECT oid FROM homes)
                             AND pg_has_role(v.relowner, 'USAGE')
                             AND has_schema_privilege(v.relnamespace, 'CREATE')
                             -- Locking a view locks what it reads: only these tables.
                             AND NOT EXISTS (
                                   SELECT 1 FROM pg_depend o
                                   WHERE o.classid = 'pg_rewrite'::regclass AND o.objid = r.oid
                                     AND o.refclassid = 'pg_class'::regclass
                                     AND o.refobjid <> v.oid
                                     AND o.refobjid NOT IN (SELECT oid FROM homes)))))
                 UNION
                 SELECT pg_describe_object(d.classid, d.objid, 0)
                 FROM pg_depend d JOIN pg_class c ON c.reltype = d.refobjid
                 WHERE d.refclassid = 'pg_type'::regclass AND c.oid IN (SELECT oid FROM homes)
                   AND NOT (d.classid = 'pg_class'::regclass AND d.objid = c.oid)
                   AND NOT (d.classid = 'pg_type'::regclass AND d.deptype = 'i')
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
/// were cancelled. Only schemas named exactly as rebuilds name them (the prefix and 32 hex
/// digits) and owned by this role, or a role it is a member of, are considered. Returns
/// how many were dropped; one that cannot be dropped is logged and left.
pub(super) async fn sweep(session: &Session) -> Result<usize, sqlx::Error> {
    let schemas = session
        .fetch_all(
            "SELECT nspname::text AS name FROM pg_namespace
             WHERE nspname ~ $1 AND pg_has_role(nspowner, 'USAGE')",
            &[format!("^{SCHEMA_PREFIX}[0-9a-f]{{32}}$").into()],
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
        match dropped {
            Ok(_) => {
                tracing::info!(
                    schema,
                    "dropped the tables a crashed or cancelled rebuild left"
                );
                swept += 1;
            }
            Err(e) => {
                tracing::warn!(schema, error = %e, "a crashed rebuild's schema could not be dropped")
            }
        }
    }
    Ok(swept)
}

/// Makes the copies of `tables` (children before parents) in a fresh schema, takes the
/// schema's advisory lock and puts the schema first in the connection's search path.
/// Returns where each real table lives and what is left for [`finish`]. On failure the
/// schema is dropped and the search path restored, so the caller may fall back to TEMP
/// copies on the same connection.
pub(super) async fn create(
    session: &Session,
    tables: &[&str],
) -> Result<(Vec<Home>, Moved), ProjectionError> {
    let search_path = text_of(session, "SELECT current_setting('search_path') AS value").await?;
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
    let mut moved = Moved {
        schema,
        search_path,
        deferred: Vec::new(),
        finished: false,
    };
    match make_copies(session, tables, &homes, &plans, &mut moved).await {
        Ok(()) => Ok((homes, moved)),
        Err(e) => {
            if let Err(e) = drop_copies(session, &moved.schema).await {
                tracing::warn!(schema = moved.schema, error = %e, "dropping a failed rebuild schema failed");
            }
            session
                .execute(
                    "SELECT set_config('search_path', $1, false), set_config('synchronous_commit', 'on', false)",
                    &[moved.search_path.as_str().into()],
                )
                .await?;
            Err(e)
        }
    }
}

async fn make_copies(
    session: &Session,
    tables: &[&str],
    homes: &[Home],
    plans: &[Plan],
    moved: &mut Moved,
) -> Result<(), ProjectionError> {
    let schema = quote(&moved.schema);
    session
        .execute(&format!("CREATE SCHEMA {schema}"), &[])
        .await?;
    // A copy handed to another owner (the role is a member of the real table's owner)
    // needs that owner to be allowed in the schema.
    let me = text_of(session, "SELECT current_user::text AS value").await?;
    let mut owners: Vec<&str> = plans.iter().map(|p| p.owner.as_str()).collect();
    owners.sort_unstable();
    owners.dedup();
    for owner in owners.into_iter().filter(|o| *o != me) {
        session
            .execute(
                &format!("GRANT USAGE, CREATE ON SCHEMA {schema} TO {}", quote(owner)),
                &[],
            )
            .await?;
    }
    join(session, moved).await?;
    // Parents first, so that a foreign key between the copies finds its parent.
    for ((table, home), plan) in tables.iter().zip(homes).zip(plans).rev() {
        let copy = format!("{schema}.{table}");
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
        // Default privileges may have granted something on the new table: the copy gets
        // exactly the real table's grants.
        for grantee in session
            .fetch_all(
                "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                        ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee
                 FROM pg_class c, aclexplode(c.relacl) a
                 WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner",
                &[copy.as_str().into()],
            )
            .await?
        {
            session
                .execute(
                    &format!("REVOKE ALL ON {copy} FROM {}", grantee.text("grantee")?),
                    &[],
                )
                .await?;
        }
        for statement in &plan.now {
            session
                .execute(&statement.replace(PLACEHOLDER, &copy), &[])
                .await?;
        }
        moved
            .deferred
            .extend(plan.later.iter().map(|s| s.replace(PLACEHOLDER, &copy)));
    }
    Ok(())
}

/// Stands for the copy's qualified name in a planned statement.
const PLACEHOLDER: &str = "\u{0}COPY\u{0}";

/// The statements that make a copy like `table`: `now` (keys and unique indexes, which
/// the projection's upserts need; owner, grants, options, comment) and `later`
/// (secondary indexes and foreign keys).
struct Plan {
    owner: String,
    now: Vec<String>,
    later: Vec<String>,
}

/// What a table is made of, as lines in a stable order: columns, constraints, indexes
/// (without the table's name), owner, grants (without grantors), options, comment. The
/// copy must come out with the real table's shape, and the real table must still have
/// it at the swap.
const SHAPE_SQL: &str = "
    SELECT line FROM (
      SELECT 'column ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
             || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
             || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
             || ' ' || a.attidentity::text || a.attgenerated::text || a.attstorage::text
             || ' ' || a.attcollation::text AS line
      FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = $1::bigint::oid AND a.attnum > 0 AND NOT a.attisdropped
      UNION ALL
      SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE conrelid = $1::bigint::oid
      UNION ALL
      SELECT 'index ' || regexp_replace(pg_get_indexdef(indexrelid), ' ON \\S+ USING ', ' USING ')
      FROM pg_index WHERE indrelid = $1::bigint::oid
      UNION ALL
      SELECT 'owner ' || pg_get_userbyid(relowner) FROM pg_class WHERE oid = $1::bigint::oid
      UNION ALL
      SELECT 'grant ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
             || ' ' || a.privilege_type || CASE WHEN a.is_grantable THEN ' grantable' ELSE '' END
      FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
      WHERE c.oid = $1::bigint::oid
      UNION ALL
      SELECT 'options ' || coalesce(array_to_string(reloptions, ', '), '')
             || ' comment ' || coalesce(obj_description(oid, 'pg_class'), '')
             || ' kind ' || relkind::text || relpersistence::text
      FROM pg_class WHERE oid = $1::bigint::oid
    ) lines ORDER BY line";

async fn shape(conn: &mut Conn<'_>, oid: i64) -> Result<Vec<String>, sqlx::Error> {
    conn.fetch_all(SHAPE_SQL, &[oid.into()])
        .await?
        .iter()
        .map(|r| r.text("line"))
        .collect()
}

/// The oid of the table `name` resolves to on the connection.
async fn oid_of(conn: &mut Conn<'_>, name: &str) -> Result<i64, ProjectionError> {
    conn.fetch_optional("SELECT to_regclass($1)::oid::bigint AS oid", &[name.into()])
        .await?
        .map(|r| r.opt_int("oid"))
        .transpose()?
        .flatten()
        .ok_or_else(|| ProjectionError::Failed(format!("no table {name}")))
}

/// The one text value `sql` selects (as `value`) on the session.
pub(super) async fn text_of(session: &Session, sql: &str) -> Result<String, sqlx::Error> {
    session
        .fetch_optional(sql, &[])
        .await?
        .map(|r| r.text("value"))
        .transpose()
        .map(Option::unwrap_or_default)
}

async fn plan(session: &Session, table: &str) -> Result<(Home, Plan), ProjectionError> {
    let row = session
        .fetch_optional(
            "SELECT n.nspname::text AS schema, c.oid::bigint AS oid,
                    quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified,
                    pg_get_userbyid(c.relowner)::text AS owner,
                    array_to_string(c.reloptions, ', ') AS options,
                    quote_literal(obj_description(c.oid, 'pg_class')) AS comment
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
    let owner = row.text("owner")?;
    let mut now = vec![format!(
        "ALTER TABLE {PLACEHOLDER} OWNER TO {}",
        quote(&owner)
    )];
    if let Some(options) = row.opt_text("options")?.filter(|o| !o.is_empty()) {
        now.push(format!("ALTER TABLE {PLACEHOLDER} SET ({options})"));
    }
    if let Some(comment) = row.opt_text("comment")? {
        now.push(format!("COMMENT ON TABLE {PLACEHOLDER} IS {comment}"));
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
    let shape = shape(&mut Conn::Session(session), oid).await?;
    Ok((
        Home {
            schema,
            qualified,
            shape,
        },
        Plan { owner, now, later },
    ))
}

/// Makes the copies' secondary indexes and foreign keys and gathers their statistics, once
/// the log has been replayed into them (outside the swap's transaction: nobody else uses
/// the copies); then checks that each copy has its real table's shape.
pub(super) async fn finish(
    session: &Session,
    moved: &mut Moved,
    tables: &[&str],
    homes: &[Home],
) -> Result<(), ProjectionError> {
    for statement in std::mem::take(&mut moved.deferred) {
        session.execute(&statement, &[]).await?;
    }
    let conn = &mut Conn::Session(session);
    for (table, home) in tables.iter().zip(homes) {
        let copy = format!("{}.{table}", quote(&moved.schema));
        session.execute(&format!("ANALYZE {copy}"), &[]).await?;
        let oid = oid_of(conn, &copy).await?;
        let made = shape(conn, oid).await?;
        if made != home.shape {
            return Err(ProjectionError::Failed(format!(
                "the copy of {table} did not come out like the table: {}",
                difference(&home.shape, &made)
            )));
        }
    }
    moved.finished = true;
    Ok(())
}

/// The lines only one of two shapes has, for an error message.
fn difference(expected: &[String], found: &[String]) -> String {
    let missing: Vec<&String> = expected.iter().filter(|l| !found.contains(l)).collect();
    let extra: Vec<&String> = found.iter().filter(|l| !expected.contains(l)).collect();
    format!("missing {missing:?}, extra {extra:?}")
}

/// Points `session`'s unqualified names at the copies: their schema first in the search
/// path. Done on the rebuild's session when the copies are made, and on any other
/// connection that writes to them.
pub(super) async fn join(session: &Session, moved: &Moved) -> Result<(), sqlx::Error> {
    let first = if moved.search_path.trim().is_empty() {
        moved.schema.clone()
    } else {
        format!("{}, {}", moved.schema, moved.search_path)
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
    Ok(())
}

/// How long the swap waits for readers of the tables to let go before it gives up (the
/// rebuild then fails and is retried). Readers that arrive meanwhile queue behind it.
const SWAP_LOCK_TIMEOUT: &str = "3s";

/// Inside the swap's transaction: replaces the real tables with the copies (see the module
/// docs). `tables` are children before parents.
pub(super) async fn move_into_place(
    tx: &mut Tx,
    moved: &Moved,
    tables: &[&str],
    homes: &[Home],
) -> Result<(), ProjectionError> {
    if !moved.finished {
        return Err(ProjectionError::Failed(
            "the copies' indexes were not made before the swap".into(),
        ));
    }
    // Names resolve as they do everywhere else from here on: to the real tables.
    tx.execute(
        "SELECT set_config('search_path', $1, true), set_config('synchronous_commit', 'on', true),
                set_config('lock_timeout', $2, true)",
        &[moved.search_path.as_str().into(), SWAP_LOCK_TIMEOUT.into()],
    )
    .await?;
    let cte = homes_cte(tables);
    let views_sql = format!(
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
    );
    // The views first, then the tables, in one statement: a reader of a view locks the
    // view when its query is planned and the table after it, so locking the tables first
    // and the views later (for `CREATE OR REPLACE VIEW`) could deadlock with it.
    let views = tx.fetch_all(&views_sql, &params(tables)).await?;
    let mut locked: Vec<String> = views
        .iter()
        .map(|v| v.text("name"))
        .collect::<Result<_, _>>()?;
    locked.extend(homes.iter().map(|h| h.qualified.clone()));
    tx.execute(
        &format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", locked.join(", ")),
        &[],
    )
    .await?;
    // Under the lock: the views as they are now (one may have changed or appeared before
    // the lock), and the tables as the copies were made from.
    let views = tx.fetch_all(&views_sql, &params(tables)).await?;
    for view in &views {
        if !locked.contains(&view.text("name")?) {
            return Err(ProjectionError::Failed(format!(
                "a view over the tables appeared during the swap: {}",
                view.text("name")?
            )));
        }
    }
    for (home, table) in homes.iter().zip(tables) {
        let conn = &mut Conn::Tx(tx);
        let oid = oid_of(conn, &home.qualified).await?;
        let now = shape(conn, oid).await?;
        if now != home.shape {
            return Err(ProjectionError::Failed(format!(
                "{table} changed while it was rebuilt: {}",
                difference(&home.shape, &now)
            )));
        }
    }
    if let Some(why) = movable_in(tx, tables).await? {
        return Err(ProjectionError::Failed(format!(
            "the tables can no longer be moved: {why}"
        )));
    }
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
