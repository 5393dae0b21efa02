//! Rebuilding beside the live tables: a changed version or an on-demand rebuild builds
//! into shadow tables while the old rows keep serving, complete, and swaps them in when
//! caught up; an interrupted rebuild leaves nothing behind; two processes starting the new
//! version at once swap it in once, and a process still on the old version stands by.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use boxoffice_domain::{ShowId, UserId};
use boxoffice_projections::db::{self, Tx};
use boxoffice_projections::{
    Projection, ProjectionError, Projections, load_checkpoint, rebuild_projection,
};
use boxoffice_store::RecordedEvent;
use boxoffice_store::tables::TablePool;
use tokio::sync::{Notify, oneshot, watch};

use crate::support::*;

const NAME: &str = "swap_counter";
const TABLE: &str = "swap_counts";

/// One row of the counter's table: event type, events counted, the version of the code
/// that counted them, the position of the last one.
type Row = (String, i64, i64, i64);

/// Stops one `apply` call, after it wrote its rows, until the test releases it, so the
/// test can look at the tables in the middle of a rebuild.
struct Gate {
    /// The apply call (1-based) that stops.
    at_call: usize,
    calls: AtomicUsize,
    reached: Mutex<Option<oneshot::Sender<()>>>,
    release: Notify,
}

impl Gate {
    fn new(at_call: usize) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (reached, reached_rx) = oneshot::channel();
        let gate = Arc::new(Self {
            at_call,
            calls: AtomicUsize::new(0),
            reached: Mutex::new(Some(reached)),
            release: Notify::new(),
        });
        (gate, reached_rx)
    }
}

/// Counts the log's events by type in a table the test creates, stamping each row with
/// its code version, so a row says which version made it.
struct Counter {
    version: u32,
    gate: Option<Arc<Gate>>,
}

impl Counter {
    fn new(version: u32) -> Arc<Self> {
        Arc::new(Self {
            version,
            gate: None,
        })
    }

    fn gated(version: u32, gate: &Arc<Gate>) -> Arc<Self> {
        Arc::new(Self {
            version,
            gate: Some(Arc::clone(gate)),
        })
    }
}

#[async_trait]
impl Projection for Counter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            // The upsert needs the primary key: a shadow copy without it would fail here.
            tx.execute(
                "INSERT INTO swap_counts (event_type, events, version, last_position)
                 VALUES ($1, 1, $2, $3)
                 ON CONFLICT (event_type) DO UPDATE
                 SET events = swap_counts.events + 1, last_position = excluded.last_position",
                &[
                    event.event_type.clone().into(),
                    i64::from(self.version).into(),
                    db::position_param(event.position),
                ],
            )
            .await?;
        }
        if let Some(gate) = &self.gate
            && gate.calls.fetch_add(1, Ordering::SeqCst) + 1 == gate.at_call
        {
            let reached = gate.reached.lock().unwrap().take();
            if let Some(reached) = reached {
                let _ = reached.send(());
            }
            gate.release.notified().await;
        }
        Ok(())
    }
}

async fn create_table(env: &Env) {
    for sql in [
        "CREATE TABLE swap_counts (
             event_type    TEXT   PRIMARY KEY,
             events        BIGINT NOT NULL CHECK (events > 0),
             version       BIGINT NOT NULL,
             last_position BIGINT NOT NULL
         )",
        "CREATE INDEX swap_counts_version_idx ON swap_counts (version, last_position)",
    ] {
        db::execute(&env.pool, sql, &[])
            .await
            .expect("create the counter's table");
    }
}

async fn dump(pool: &TablePool) -> Vec<Row> {
    db::fetch_all(
        pool,
        "SELECT event_type, events, version, last_position FROM swap_counts ORDER BY event_type",
        &[],
    )
    .await
    .expect("read the counter's table")
    .iter()
    .map(|r| {
        (
            r.text("event_type").unwrap(),
            r.int("events").unwrap(),
            r.int("version").unwrap(),
            r.int("last_position").unwrap(),
        )
    })
    .collect()
}

/// What `version` of the counter makes from the log up to `head`, from scratch.
async fn expected(env: &Env, version: u32, head: u64) -> Vec<Row> {
    let mut counts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut position = 0;
    while position < head {
        let events = env.store.read_all(position, 1_000).await.expect("read log");
        assert!(!events.is_empty(), "the log reaches {head}");
        for event in events.iter().filter(|e| e.position <= head) {
            let entry = counts.entry(event.event_type.clone()).or_default();
            entry.0 += 1;
            entry.1 = i64::try_from(event.position).unwrap();
        }
        position = events.last().unwrap().position;
    }
    counts
        .into_iter()
        .map(|(event_type, (events, last))| (event_type, events, i64::from(version), last))
        .collect()
}

async fn checkpoint(env: &Env) -> (u32, u64) {
    let checkpoint = load_checkpoint(&env.pool, NAME)
        .await
        .unwrap()
        .expect("a checkpoint");
    (checkpoint.version, checkpoint.position)
}

fn start(env: &Env, counter: Arc<Counter>) -> Projections {
    Projections::start(
        Arc::clone(&env.store),
        env.pool.clone(),
        vec![counter as Arc<dyn Projection>],
        fast_runtime(),
    )
}

/// Purchases `range` of two seats each (six events apiece); returns the last position.
async fn buy_many(log: &mut Log, show: ShowId, buyer: UserId, range: std::ops::Range<u32>) -> u64 {
    let mut head = 0;
    for i in range {
        let seats = [format!("S-R0-{}", 2 * i + 1), format!("S-R0-{}", 2 * i + 2)];
        let seats: Vec<&str> = seats.iter().map(String::as_str).collect();
        head = log.buy(show, buyer, &seats).await.position;
    }
    head
}

/// On PostgreSQL, waits until no session holds a TEMP copy of the counter's table (the
/// rebuild's connection closed) and no rebuild schema is left; SQLite's TEMP tables are
/// invisible to other connections.
async fn no_shadow_left(env: &Env) {
    if env.backend != "postgres" {
        return;
    }
    eventually("the shadow tables to be gone", || async {
        let left = env
            .count(
                "SELECT count(*) AS n FROM pg_class
                 WHERE relpersistence = 't' AND relkind = 'r' AND relname = 'swap_counts'",
                &[],
            )
            .await
            + rebuild_schemas(env).await.len() as i64;
        (left == 0).then_some(())
    })
    .await;
}

/// A log of `count` purchases for a new show (six events apiece); returns its last
/// position.
async fn purchases(env: &Env, count: u32) -> u64 {
    let mut log = Log::new(&env.store);
    buy_many(&mut log, show(), user(), 0..count).await
}

/// The PostgreSQL backend's environment, if the tests run with one (any other is cleaned
/// up).
async fn postgres_only() -> Option<Env> {
    let mut found = None;
    for env in backends().await {
        if env.backend == "postgres" {
            found = Some(env);
        } else {
            env.cleanup().await;
        }
    }
    found
}

/// The schemas PostgreSQL rebuilds build their copies in.
async fn rebuild_schemas(env: &Env) -> Vec<String> {
    db::fetch_all(
        &env.pool,
        "SELECT nspname::text AS name FROM pg_namespace
         WHERE nspname LIKE 'boxoffice\\_rebuild\\_%' ORDER BY 1",
        &[],
    )
    .await
    .expect("list the rebuild schemas")
    .iter()
    .map(|r| r.text("name").unwrap())
    .collect()
}

/// The counter table's oid (PostgreSQL).
async fn table_oid(env: &Env) -> i64 {
    env.count("SELECT 'swap_counts'::regclass::oid::bigint AS n", &[])
        .await
}

async fn reached(gate: oneshot::Receiver<()>) {
    tokio::time::timeout(WAIT, gate)
        .await
        .expect("the rebuild reaches its gated batch in time")
        .expect("the gate's sender lives until it is reached");
}

#[tokio::test]
async fn a_changed_version_is_built_beside_the_old_tables_and_swapped_in_when_caught_up() {
    for env in backends().await {
        create_table(&env).await;
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let old_head = buy_many(&mut log, show, buyer, 0..5).await;
        let v1 = start(&env, Counter::new(1));
        assert!(v1.get(NAME).unwrap().wait_for(old_head, WAIT).await);
        v1.shutdown().await;
        let old = dump(&env.pool).await;
        assert_eq!(old, expected(&env, 1, old_head).await, "{}", env.backend);
        // Appended while nothing runs: from here on the old tables are behind the log.
        let head = buy_many(&mut log, show, buyer, 5..10).await;

        // Version 2 stops in its third batch (of 7 events), two batches committed to the
        // shadow and a third written but not committed.
        let (gate, gate_reached) = Gate::new(3);
        let v2 = start(&env, Counter::gated(2, &gate));
        let handle = v2.get(NAME).unwrap().clone();
        reached(gate_reached).await;
        assert_eq!(
            dump(&env.pool).await,
            old,
            "{}: mid-rebuild, readers see the old rows, all of them",
            env.backend
        );
        assert_eq!(checkpoint(&env).await, (1, old_head), "{}", env.backend);
        assert_eq!(
            handle.position(),
            old_head,
            "{}: the handle reports what the served tables hold",
            env.backend
        );

        gate.release.notify_one();
        assert!(handle.wait_for(head, WAIT).await, "{}", env.backend);
        assert_eq!(
            dump(&env.pool).await,
            expected(&env, 2, head).await,
            "{}: after the swap, what version 2 makes from scratch",
            env.backend
        );
        assert_eq!(checkpoint(&env).await, (2, head), "{}", env.backend);
        assert!(gate.calls.load(Ordering::SeqCst) >= 3);

        // Live appends after the swap are applied to the swapped-in tables.
        let later = buy_many(&mut log, show, buyer, 10..12).await;
        assert!(handle.wait_for(later, WAIT).await, "{}", env.backend);
        assert_eq!(
            dump(&env.pool).await,
            expected(&env, 2, later).await,
            "{}",
            env.backend
        );
        assert_eq!(checkpoint(&env).await, (2, later), "{}", env.backend);
        v2.shutdown().await;
        no_shadow_left(&env).await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn rebuild_projection_swaps_while_readers_keep_the_full_old_content() {
    for env in backends().await {
        create_table(&env).await;
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let head = buy_many(&mut log, show, buyer, 0..8).await;
        let live = start(&env, Counter::new(1));
        let live_handle = live.get(NAME).unwrap().clone();
        assert!(live_handle.wait_for(head, WAIT).await);
        let old = dump(&env.pool).await;
        assert_eq!(old, expected(&env, 1, head).await, "{}", env.backend);

        // A reader that reads the table over and over until the rebuild is done: never
        // empty, never less than the old content.
        let (stop, mut stopped) = watch::channel(false);
        let reader = {
            let (pool, old) = (env.pool.clone(), old.clone());
            tokio::spawn(async move {
                let mut reads = 0u32;
                loop {
                    let rows = dump(&pool).await;
                    assert_eq!(rows.len(), old.len(), "every event type has its row");
                    for (row, before) in rows.iter().zip(&old) {
                        assert_eq!(row.0, before.0);
                        assert!(row.1 >= before.1, "{row:?} lost events of {before:?}");
                        assert_eq!(row.2, 1, "{row:?} made by version 1");
                    }
                    reads += 1;
                    if *stopped.borrow_and_update() {
                        return reads;
                    }
                    tokio::select! {
                        _ = stopped.changed() => {}
                        () = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
                    }
                }
            })
        };

        let (gate, gate_reached) = Gate::new(2);
        let rebuild = {
            let (store, pool) = (Arc::clone(&env.store), env.pool.clone());
            let counter = Counter::gated(1, &gate);
            tokio::spawn(async move { rebuild_projection(store, &pool, counter.as_ref(), 7).await })
        };
        reached(gate_reached).await;
        assert_eq!(dump(&env.pool).await, old, "{}: mid-rebuild", env.backend);
        assert_eq!(checkpoint(&env).await, (1, head), "{}", env.backend);
        if env.backend == "postgres" {
            // The live runner keeps the served tables going during the rebuild. (On SQLite
            // the stopped batch holds the database's write lock, which appends wait for.)
            let during = buy_many(&mut log, show, buyer, 8..10).await;
            assert!(live_handle.wait_for(during, WAIT).await);
            assert_eq!(
                dump(&env.pool).await,
                expected(&env, 1, during).await,
                "{}: the live runner applied the appends to the served tables",
                env.backend
            );
        }
        gate.release.notify_one();
        // More appends while the rebuild finishes.
        let last = buy_many(&mut log, show, buyer, 10..12).await;
        let report = rebuild.await.unwrap().expect("rebuild");
        assert_eq!((report.name.as_str(), report.version), (NAME, 1));
        assert!(
            report.position >= head && report.position <= last,
            "{}: {report:?}",
            env.backend
        );
        assert!(live_handle.wait_for(last, WAIT).await, "{}", env.backend);
        stop.send_replace(true);
        let reads = reader
            .await
            .expect("the reader saw the full content every time");
        assert!(reads > 1, "{}: {reads} reads", env.backend);
        assert_eq!(
            dump(&env.pool).await,
            expected(&env, 1, last).await,
            "{}: the rebuilt rows, followed live, equal a build from scratch",
            env.backend
        );
        assert_eq!(checkpoint(&env).await, (1, last), "{}", env.backend);
        live.shutdown().await;
        no_shadow_left(&env).await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn an_interrupted_rebuild_leaves_the_old_tables_and_checkpoint_and_a_new_one_completes() {
    for env in backends().await {
        create_table(&env).await;
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let head = buy_many(&mut log, show, buyer, 0..6).await;
        let v1 = start(&env, Counter::new(1));
        assert!(v1.get(NAME).unwrap().wait_for(head, WAIT).await);
        v1.shutdown().await;
        let old = dump(&env.pool).await;
        assert_eq!(old, expected(&env, 1, head).await, "{}", env.backend);

        // An on-demand rebuild to version 2, aborted in its second batch.
        let (gate, gate_reached) = Gate::new(2);
        let rebuild = {
            let (store, pool) = (Arc::clone(&env.store), env.pool.clone());
            let counter = Counter::gated(2, &gate);
            tokio::spawn(async move { rebuild_projection(store, &pool, counter.as_ref(), 7).await })
        };
        reached(gate_reached).await;
        rebuild.abort();
        assert!(rebuild.await.unwrap_err().is_cancelled());
        assert_eq!(dump(&env.pool).await, old, "{}", env.backend);
        assert_eq!(checkpoint(&env).await, (1, head), "{}", env.backend);
        no_shadow_left(&env).await;

        // A runtime upgrade to version 2, shut down in its third batch.
        let (gate, gate_reached) = Gate::new(3);
        let v2 = start(&env, Counter::gated(2, &gate));
        reached(gate_reached).await;
        v2.shutdown().await;
        assert_eq!(dump(&env.pool).await, old, "{}", env.backend);
        assert_eq!(checkpoint(&env).await, (1, head), "{}", env.backend);
        no_shadow_left(&env).await;

        let report = rebuild_projection(Arc::clone(&env.store), &env.pool, &*Counter::new(2), 7)
            .await
            .expect("rebuild");
        assert_eq!(
            (report.version, report.position, report.events),
            (2, head, head),
            "{}: every event once",
            env.backend
        );
        assert_eq!(
            dump(&env.pool).await,
            expected(&env, 2, head).await,
            "{}",
            env.backend
        );
        assert_eq!(checkpoint(&env).await, (2, head), "{}", env.backend);
        no_shadow_left(&env).await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn two_processes_upgrading_at_once_swap_once_and_an_older_one_stands_by() {
    for env in backends().await {
        create_table(&env).await;
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let head = buy_many(&mut log, show, buyer, 0..6).await;
        let v1 = start(&env, Counter::new(1));
        assert!(v1.get(NAME).unwrap().wait_for(head, WAIT).await);
        v1.shutdown().await;

        // Two "processes" start version 2 at the same time; both rebuild, one swap wins.
        // Their handles report `head` at once (the old tables are complete up to it), so
        // the swap shows in the checkpoint.
        let first = start(&env, Counter::new(2));
        let second = start(&env, Counter::new(2));
        eventually("the swap to version 2", || async {
            (checkpoint(&env).await.0 == 2).then_some(())
        })
        .await;
        assert!(first.wait_for_all(head, WAIT).await, "{}", env.backend);
        assert!(second.wait_for_all(head, WAIT).await, "{}", env.backend);
        assert_eq!(
            dump(&env.pool).await,
            expected(&env, 2, head).await,
            "{}",
            env.backend
        );
        assert_eq!(checkpoint(&env).await, (2, head), "{}", env.backend);

        // Both follow the log without applying anything twice.
        let head = buy_many(&mut log, show, buyer, 6..9).await;
        assert!(first.wait_for_all(head, WAIT).await);
        assert!(second.wait_for_all(head, WAIT).await);
        assert_eq!(
            dump(&env.pool).await,
            expected(&env, 2, head).await,
            "{}",
            env.backend
        );

        // A process still on version 1 neither rebuilds back nor applies: its handle
        // follows the checkpoint the version-2 processes move.
        let older = start(&env, Counter::new(1));
        let head = buy_many(&mut log, show, buyer, 9..11).await;
        assert!(older.wait_for_all(head, WAIT).await, "{}", env.backend);
        assert!(first.wait_for_all(head, WAIT).await);
        assert_eq!(
            dump(&env.pool).await,
            expected(&env, 2, head).await,
            "{}",
            env.backend
        );
        assert_eq!(checkpoint(&env).await, (2, head), "{}", env.backend);
        older.shutdown().await;
        second.shutdown().await;
        first.shutdown().await;
        no_shadow_left(&env).await;
        env.cleanup().await;
    }
}

/// The views over the counter's table and what else a PostgreSQL rebuild must keep: a view,
/// a view over that view, an index's name, a grant, a table comment.
async fn dress_the_table(env: &Env) {
    for sql in [
        "CREATE VIEW swap_totals AS SELECT version, sum(events)::bigint AS events
         FROM swap_counts GROUP BY version",
        "CREATE VIEW swap_total AS SELECT sum(events)::bigint AS events FROM swap_totals",
        "GRANT SELECT ON swap_counts TO PUBLIC",
        "COMMENT ON TABLE swap_counts IS 'events by type'",
    ] {
        db::execute(&env.pool, sql, &[]).await.expect(sql);
    }
}

#[tokio::test]
async fn a_postgres_rebuild_moves_its_tables_into_place_and_keeps_views_indexes_and_grants() {
    let Some(env) = postgres_only().await else {
        return;
    };
    create_table(&env).await;
    dress_the_table(&env).await;
    let mut log = Log::new(&env.store);
    let (show, buyer) = (show(), user());
    let head = buy_many(&mut log, show, buyer, 0..6).await;
    let live = start(&env, Counter::new(1));
    let handle = live.get(NAME).unwrap().clone();
    assert!(handle.wait_for(head, WAIT).await);
    let before = table_oid(&env).await;
    // Read through the view once, so the pool's connections hold prepared statements
    // over the old table.
    let total = "SELECT events AS n FROM swap_total";
    assert_eq!(env.count(total, &[]).await, i64::try_from(head).unwrap());

    // Readers of the views all along: a reader locks a view before its table, and the
    // swap must not deadlock with them (nor may they see anything but the full count).
    let (stop, stopped) = watch::channel(false);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (pool, stopped) = (env.pool.clone(), stopped.clone());
            tokio::spawn(async move {
                let mut reads = 0u32;
                while !*stopped.borrow() {
                    let rows = db::fetch_all(&pool, "SELECT events AS n FROM swap_total", &[])
                        .await
                        .expect("read the view during rebuilds");
                    assert_eq!(rows[0].int("n").unwrap(), i64::try_from(head).unwrap());
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    let mut oids = vec![before];
    for _ in 0..3 {
        let report = rebuild_projection(Arc::clone(&env.store), &env.pool, &*Counter::new(1), 7)
            .await
            .expect("rebuild");
        assert_eq!(report.position, head);
        oids.push(table_oid(&env).await);
    }
    stop.send_replace(true);
    for reader in readers {
        assert!(reader.await.expect("a reader of the views") > 0);
    }
    oids.dedup();
    assert_eq!(
        oids.len(),
        4,
        "each rebuild moved its copy into place, none copied over the old table"
    );
    assert_eq!(dump(&env.pool).await, expected(&env, 1, head).await);
    assert_eq!(env.count(total, &[]).await, i64::try_from(head).unwrap());
    // The tables the view reads (other than itself): the new table, and only that.
    let reads = |only_new: bool| {
        format!(
            "SELECT count(DISTINCT d.refobjid) AS n FROM pg_depend d
             JOIN pg_rewrite r ON r.oid = d.objid
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
               AND r.ev_class = 'swap_totals'::regclass
               AND d.refobjid <> 'swap_totals'::regclass {}",
            if only_new {
                "AND d.refobjid = 'swap_counts'::regclass"
            } else {
                ""
            }
        )
    };
    assert_eq!(env.count(&reads(false), &[]).await, 1);
    assert_eq!(
        env.count(&reads(true), &[]).await,
        1,
        "the view reads the new table"
    );
    for (sql, what) in [
        (
            "SELECT count(*) AS n FROM pg_indexes WHERE tablename = 'swap_counts'
             AND indexname IN ('swap_counts_pkey', 'swap_counts_version_idx')",
            "both indexes, under their names",
        ),
        (
            "SELECT count(*) AS n FROM pg_constraint WHERE conrelid = 'swap_counts'::regclass
             AND contype = 'c'",
            "the check",
        ),
        (
            "SELECT count(*) AS n FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'swap_counts'::regclass AND a.grantee = 0
               AND a.privilege_type = 'SELECT'",
            "the grant to PUBLIC",
        ),
        (
            "SELECT count(*) AS n FROM pg_class WHERE oid = 'swap_counts'::regclass
             AND obj_description(oid, 'pg_class') = 'events by type'
             AND relnamespace = 'public'::regnamespace",
            "the comment, in the old table's schema",
        ),
        (
            "SELECT count(*) AS n FROM pg_stats WHERE tablename = 'swap_counts'",
            "statistics of the new table",
        ),
    ] {
        assert!(env.count(sql, &[]).await >= 1, "{what}");
    }
    assert_eq!(
        env.count(
            "SELECT count(*) AS n FROM pg_indexes WHERE tablename = 'swap_counts'",
            &[]
        )
        .await,
        2,
        "no index twice"
    );

    // The live runner writes into the moved-in table, and the view follows.
    let later = buy_many(&mut log, show, buyer, 6..8).await;
    assert!(handle.wait_for(later, WAIT).await);
    assert_eq!(dump(&env.pool).await, expected(&env, 1, later).await);
    assert_eq!(env.count(total, &[]).await, i64::try_from(later).unwrap());
    live.shutdown().await;
    no_shadow_left(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_postgres_rebuild_copies_into_place_when_other_objects_depend_on_the_tables() {
    let Some(env) = postgres_only().await else {
        return;
    };
    create_table(&env).await;
    // A materialized view cannot be pointed at another table: the old table stays.
    db::execute(
        &env.pool,
        "CREATE MATERIALIZED VIEW swap_snapshot AS SELECT * FROM swap_counts",
        &[],
    )
    .await
    .unwrap();
    let head = purchases(&env, 4).await;
    let before = table_oid(&env).await;
    let report = rebuild_projection(Arc::clone(&env.store), &env.pool, &*Counter::new(2), 7)
        .await
        .expect("rebuild");
    assert_eq!((report.version, report.position), (2, head));
    assert_eq!(table_oid(&env).await, before, "the rows were copied");
    assert_eq!(dump(&env.pool).await, expected(&env, 2, head).await);
    db::execute(&env.pool, "REFRESH MATERIALIZED VIEW swap_snapshot", &[])
        .await
        .expect("the materialized view still reads the table");
    assert_eq!(
        env.count("SELECT count(*) AS n FROM swap_snapshot", &[])
            .await,
        i64::try_from(expected(&env, 2, head).await.len()).unwrap()
    );
    // A view that also reads another table: locking it to re-point it would lock that
    // table too, so it also makes the rebuild copy.
    for sql in [
        "DROP MATERIALIZED VIEW swap_snapshot",
        "CREATE VIEW swap_progress AS SELECT c.event_type, p.position
         FROM swap_counts c CROSS JOIN projection_checkpoints p",
    ] {
        db::execute(&env.pool, sql, &[]).await.expect(sql);
    }
    rebuild_projection(Arc::clone(&env.store), &env.pool, &*Counter::new(3), 7)
        .await
        .expect("rebuild");
    assert_eq!(table_oid(&env).await, before, "the rows were copied");
    assert_eq!(dump(&env.pool).await, expected(&env, 3, head).await);
    assert!(
        env.count("SELECT count(*) AS n FROM swap_progress", &[])
            .await
            > 0
    );
    no_shadow_left(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_crashed_rebuilds_schema_is_swept_by_the_next_rebuild_and_a_live_ones_is_kept() {
    let Some(env) = postgres_only().await else {
        return;
    };
    create_table(&env).await;
    let named = || format!("boxoffice_rebuild_{}", uuid::Uuid::new_v4().simple());
    let (crashed, running) = (named(), named());
    // Named like a rebuild's schema, but not one: never swept.
    let other = "boxoffice_rebuild_archive";
    for schema in [crashed.as_str(), running.as_str(), other] {
        for sql in [
            format!("CREATE SCHEMA {schema}"),
            format!("CREATE TABLE {schema}.swap_counts (LIKE public.swap_counts)"),
        ] {
            db::execute(&env.pool, &sql, &[]).await.unwrap();
        }
    }
    // A rebuild in another process holds its schema's lock on its own connection.
    let holder = boxoffice_projections::db::Session::open(&env.pool)
        .await
        .unwrap();
    holder
        .execute(
            "SELECT pg_advisory_lock(x'626f78'::int, hashtext($1))",
            &[running.as_str().into()],
        )
        .await
        .unwrap();

    let head = purchases(&env, 3).await;
    rebuild_projection(Arc::clone(&env.store), &env.pool, &*Counter::new(1), 7)
        .await
        .expect("rebuild");
    assert_eq!(dump(&env.pool).await, expected(&env, 1, head).await);
    let mut left = vec![other.to_owned(), running.clone()];
    left.sort();
    assert_eq!(rebuild_schemas(&env).await, left);

    // Once that process is gone, the next rebuild sweeps its schema too.
    holder.close().await;
    rebuild_projection(Arc::clone(&env.store), &env.pool, &*Counter::new(1), 7)
        .await
        .expect("rebuild");
    assert_eq!(rebuild_schemas(&env).await, vec![other.to_owned()]);
    db::execute(&env.pool, &format!("DROP SCHEMA {other} CASCADE"), &[])
        .await
        .unwrap();
    no_shadow_left(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_table_changed_during_a_postgres_rebuild_is_copied_into_place_instead() {
    let Some(env) = postgres_only().await else {
        return;
    };
    create_table(&env).await;
    let head = purchases(&env, 6).await;
    let v1 = start(&env, Counter::new(1));
    assert!(v1.get(NAME).unwrap().wait_for(head, WAIT).await);
    v1.shutdown().await;
    let old = dump(&env.pool).await;
    let before = table_oid(&env).await;

    // An index added (say by a migration of a newer deploy) while the rebuild runs: moving
    // the copy in would lose it, so the swap copies the rows into the table instead.
    let (gate, gate_reached) = Gate::new(2);
    let rebuild = {
        let (store, pool) = (Arc::clone(&env.store), env.pool.clone());
        let counter = Counter::gated(2, &gate);
        tokio::spawn(async move { rebuild_projection(store, &pool, counter.as_ref(), 7).await })
    };
    reached(gate_reached).await;
    assert_eq!(dump(&env.pool).await, old, "mid-rebuild");
    db::execute(
        &env.pool,
        "CREATE INDEX swap_counts_added_idx ON swap_counts (last_position)",
        &[],
    )
    .await
    .unwrap();
    gate.release.notify_one();
    let report = rebuild.await.unwrap().expect("the rebuild copies instead");
    assert_eq!((report.version, report.position), (2, head));
    assert_eq!(table_oid(&env).await, before, "copied, not moved");
    assert_eq!(dump(&env.pool).await, expected(&env, 2, head).await);
    assert_eq!(checkpoint(&env).await, (2, head));
    assert_eq!(
        env.count(
            "SELECT count(*) AS n FROM pg_indexes WHERE indexname = 'swap_counts_added_idx'",
            &[]
        )
        .await,
        1,
        "the index added during the rebuild is kept"
    );
    no_shadow_left(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_postgres_rebuild_by_a_member_of_the_read_models_owner_moves_the_tables() {
    let Some(env) = postgres_only().await else {
        return;
    };
    create_table(&env).await;
    dress_the_table(&env).await;
    let head = purchases(&env, 4).await;
    // The README's setup: the read models have an owner role of their own, and the
    // server's role is a member of it.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (models, app) = (format!("bo_models_{tag}"), format!("bo_app_{tag}"));
    let database = db::fetch_all(&env.pool, "SELECT current_database()::text AS db", &[])
        .await
        .unwrap()[0]
        .text("db")
        .unwrap();
    for sql in [
        format!("CREATE ROLE {models} NOLOGIN"),
        format!("CREATE ROLE {app} LOGIN"),
        format!("ALTER TABLE swap_counts OWNER TO {models}"),
        format!("ALTER VIEW swap_totals OWNER TO {models}"),
        format!("GRANT {models} TO {app}"),
        format!("GRANT CREATE ON DATABASE {database} TO {app}"),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {app}"),
        format!("GRANT SELECT, INSERT, UPDATE ON projection_checkpoints TO {app}"),
        format!("GRANT SELECT ON swap_total TO {app}"),
    ] {
        db::execute(&env.pool, &sql, &[]).await.expect(&sql);
    }
    let admin = std::env::var("DATABASE_URL").expect("postgres_only needs DATABASE_URL");
    let (prefix, _) = admin.rsplit_once('/').unwrap();
    let host = prefix.rsplit_once('@').map_or(prefix, |(_, host)| host);
    let host = host
        .trim_start_matches("postgres://")
        .trim_start_matches("postgresql://");
    let as_app = TablePool::connect(&format!("postgres://{app}@{host}/{database}"))
        .await
        .expect("connect as the server's role");
    let before = table_oid(&env).await;
    let report = rebuild_projection(Arc::clone(&env.store), &as_app, &*Counter::new(2), 7)
        .await
        .expect("rebuild as a member of the owner");
    assert_eq!((report.version, report.position), (2, head));
    assert_ne!(table_oid(&env).await, before, "moved into place");
    assert_eq!(dump(&env.pool).await, expected(&env, 2, head).await);
    assert_eq!(
        env.count(
            &format!(
                "SELECT count(*) AS n FROM pg_class WHERE oid = 'swap_counts'::regclass
                 AND pg_get_userbyid(relowner) = '{models}'"
            ),
            &[]
        )
        .await,
        1,
        "the read models' owner still owns the table"
    );
    assert_eq!(
        env.count("SELECT events AS n FROM swap_total", &[]).await,
        i64::try_from(head).unwrap()
    );
    match as_app {
        TablePool::Postgres(p) => p.close().await,
        TablePool::Sqlite(p) => p.close().await,
    }
    no_shadow_left(&env).await;
    env.cleanup().await;
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    for sql in [format!("DROP ROLE {app}"), format!("DROP ROLE {models}")] {
        sqlx::query(&sql).execute(&mut admin).await.expect(&sql);
    }
}
