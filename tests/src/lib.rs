//! Shared helpers for Boxoffice's end-to-end suites: fresh stores on both backends, show
//! fixtures, and an independent checker of the rules in `EVENTS.md` over a stored log.

use std::collections::HashMap;
use std::sync::Arc;

use boxoffice_domain::event::DomainEvent;
use boxoffice_domain::pool::PoolEvent;
use boxoffice_domain::reservation::ReservationEvent;
use boxoffice_domain::seat::SeatEvent;
use boxoffice_domain::show::{
    Limits, PriceTier, RowDef, SectionDef, SectionLayout, ShowDefinition, Venue,
};
use boxoffice_domain::{Minor, ReservationId, ShowId, ShowState};
use boxoffice_store::chain::{ChainKey, ChainVerifier};
use boxoffice_store::{EventStore, RecordedEvent};
use sqlx::Connection;

pub mod browser;
pub mod payments;
pub mod simulation;

/// A backend to run a suite against: its name and a URL for a fresh, empty store.
pub struct Backend {
    pub name: &'static str,
    pub url: String,
}

/// A fresh SQLite file, and a fresh PostgreSQL database if `DATABASE_URL` is set.
pub async fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend {
        name: "sqlite",
        url: fresh_sqlite_url(),
    }];
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => backends.push(Backend {
            name: "postgres",
            url: fresh_postgres_url(&url).await,
        }),
        _ => println!("skipped: PostgreSQL (DATABASE_URL not set); running on SQLite only"),
    }
    backends
}

pub fn fresh_sqlite_url() -> String {
    let dir =
        std::env::temp_dir().join(format!("boxoffice-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!("sqlite://{}", dir.join("events.db").display())
}

/// Test databases whose name says they were made longer ago than this are dropped by the
/// next test process that makes one.
const TEST_DATABASE_STALE_SECS: u64 = 3 * 60 * 60;
/// The names of the databases the test suites make start with `boxoffice_test_`; earlier
/// versions of the `boxctl` suites used these too.
const TEST_DATABASE_PREFIXES: [&str; 4] = [
    "boxoffice_test_",
    "boxctl_test_",
    "boxctl_export_",
    "boxctl_reconcile_",
];

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Whether `name` is a test database made before `cutoff` (Unix seconds). Names are
/// `boxoffice_test_<seconds>_<hex>`; a name of an earlier form (a prefix and 32 hex digits,
/// no time) is old by now.
fn is_stale_test_database(name: &str, cutoff: u64) -> bool {
    let Some(rest) = TEST_DATABASE_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
    else {
        return false;
    };
    match rest.split_once('_') {
        Some((made, _)) => made.parse::<u64>().is_ok_and(|made| made < cutoff),
        None => rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()),
    }
}

/// Drops the test databases of earlier runs, once per process: a test drops its database
/// only if it gets to its end, and suites that failed or were interrupted left theirs on a
/// server that CI and later runs share. A database still in use is not dropped (no
/// `FORCE`), so a run in progress elsewhere keeps its own.
async fn reap_stale_test_databases(conn: &mut sqlx::PgConnection) {
    static REAPED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    REAPED
        .get_or_init(|| async {
            let cutoff = unix_now().saturating_sub(TEST_DATABASE_STALE_SECS);
            let names: Vec<String> = sqlx::query_scalar("SELECT datname::text FROM pg_database")
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_default();
            for name in names.iter().filter(|n| is_stale_test_database(n, cutoff)) {
                // The name is one of ours (checked above): letters, digits and underscores.
                if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(&mut *conn)
                    .await
                {
                    println!("left the test database {name} of an earlier run: {e}");
                }
            }
        })
        .await;
}

/// Creates a new database on the server of `base_url` and returns its URL. Its name
/// carries the time it was made, so that a later run can tell it is stale if this one
/// never drops it (see `reap_stale_test_databases`).
pub async fn fresh_postgres_url(base_url: &str) -> String {
    let name = format!(
        "boxoffice_test_{}_{}",
        unix_now(),
        uuid::Uuid::new_v4().simple()
    );
    let mut conn = sqlx::PgConnection::connect(base_url)
        .await
        .expect("connect to DATABASE_URL");
    reap_stale_test_databases(&mut conn).await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    let (prefix, _) = base_url
        .rsplit_once('/')
        .expect("a database URL has a path");
    format!("{prefix}/{name}")
}

#[cfg(test)]
mod test_databases {
    use super::is_stale_test_database;

    #[test]
    fn only_old_test_databases_are_stale() {
        let cutoff = 1_800_000_000;
        assert!(is_stale_test_database(
            "boxoffice_test_1799999999_0123456789abcdef0123456789abcdef",
            cutoff
        ));
        assert!(!is_stale_test_database(
            "boxoffice_test_1800000000_0123456789abcdef0123456789abcdef",
            cutoff
        ));
        // The earlier form, without a time.
        assert!(is_stale_test_database(
            "boxctl_reconcile_0123456789abcdef0123456789abcdef",
            cutoff
        ));
        assert!(!is_stale_test_database("boxoffice_test_short", cutoff));
        // Not ours at all.
        for name in [
            "test",
            "postgres",
            "boxoffice",
            "bench",
            "boxoffice_bench_1",
        ] {
            assert!(!is_stale_test_database(name, cutoff), "{name}");
        }
    }
}

pub async fn open(url: &str) -> Arc<dyn EventStore> {
    boxoffice_store::connect(url, Some(chain_key().clone()))
        .await
        .expect("open store")
}

/// The file of this test process's hash-chain key: generated at random (no test depends
/// on a key built into the code) and shared by every store and server the process opens,
/// so they continue the same chains and `check_log` can verify them.
pub fn chain_key_file() -> &'static std::path::Path {
    static FILE: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| {
        let path = std::env::temp_dir().join(format!(
            "boxoffice-test-chain-{}-{}.key",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        ChainKey::load_or_create(&path).expect("create the test chain key");
        path
    });
    &FILE
}

/// The key in [`chain_key_file`].
pub fn chain_key() -> &'static ChainKey {
    static KEY: std::sync::LazyLock<ChainKey> = std::sync::LazyLock::new(|| {
        ChainKey::load(chain_key_file()).expect("read the test chain key")
    });
    &KEY
}

/// A show of `rows × seats_per_row` seats in one seated section plus a GA floor.
pub fn show_definition(
    rows: u32,
    seats_per_row: u32,
    ga_capacity: u32,
    limits: Limits,
) -> ShowDefinition {
    let mut sections = vec![SectionDef {
        id: "S".into(),
        name: "Stalls".into(),
        layout: SectionLayout::Seated {
            rows: (0..rows)
                .map(|r| RowDef {
                    row: format!("R{r}"),
                    seats: seats_per_row,
                    tier: if r < rows / 2 { "A".into() } else { "B".into() },
                })
                .collect(),
        },
    }];
    if ga_capacity > 0 {
        sections.push(SectionDef {
            id: "floor".into(),
            name: "Floor".into(),
            layout: SectionLayout::GeneralAdmission {
                capacity: ga_capacity,
                tier: "B".into(),
            },
        });
    }
    ShowDefinition {
        name: "Hammer night".into(),
        venue: Venue {
            name: "Arena".into(),
            city: "Lisbon".into(),
            country: "PT".into(),
            timezone: "Europe/Lisbon".into(),
        },
        starts_at: chrono::Utc::now() + chrono::Duration::days(30),
        currency: "EUR".into(),
        sales_open_at: None,
        sales_close_at: None,
        limits,
        price_tiers: vec![
            PriceTier {
                id: "A".into(),
                name: "Front".into(),
                price: Minor(12_000),
            },
            PriceTier {
                id: "B".into(),
                name: "Back".into(),
                price: Minor(6_000),
            },
        ],
        sections,
    }
}

/// Every event of a show's partition, in order.
pub async fn partition(store: &Arc<dyn EventStore>, show: ShowId) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .read_partition(&show.to_string(), after, 10_000)
            .await
            .expect("read partition");
        let Some(last) = page.last() else { break };
        after = last.position;
        all.extend(page);
    }
    all
}

/// What an independent check of a show's log found.
#[derive(Debug, Default)]
pub struct LogReport {
    pub events: usize,
    pub holds: usize,
    pub releases: usize,
}

/// Checks a show's log without the domain's own bookkeeping: every event decodes and
/// lies in its stream; versions are gap-free from 1 (rule 6); positions increase; a seat
/// is held or sold by at most one reservation at a time, and GA pools never exceed their
/// capacity (rule 1). Returns the replayed state too.
pub fn check_log(show: ShowId, log: &[RecordedEvent]) -> Result<(LogReport, ShowState), String> {
    let mut report = LogReport::default();
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut seat_holder: HashMap<String, ReservationId> = HashMap::new();
    let mut pool_used: HashMap<String, i64> = HashMap::new();
    let mut pool_capacity: HashMap<String, i64> = HashMap::new();
    let mut last_position = 0;
    // The log reads as things happened: a reservation is placed before its seats are
    // held, and closed before its seats are released.
    let mut placed: std::collections::HashSet<ReservationId> = std::collections::HashSet::new();
    let mut closed: std::collections::HashSet<ReservationId> = std::collections::HashSet::new();
    let mut events = Vec::with_capacity(log.len());
    let mut chain = ChainVerifier::new(chain_key().clone());
    for r in log {
        chain.check(r).map_err(|b| b.to_string())?;
        if r.position <= last_position {
            return Err(format!("position {} after {}", r.position, last_position));
        }
        last_position = r.position;
        let version = versions.entry(r.stream_id.as_str()).or_default();
        if r.version != *version + 1 {
            return Err(format!(
                "stream {} jumps from {} to {} at position {}",
                r.stream_id, version, r.version, r.position
            ));
        }
        *version = r.version;
        let event = DomainEvent::decode(&r.event_type, r.schema_version, &r.payload)
            .map_err(|e| format!("position {}: {e}", r.position))?;
        if event.stream_id(show) != r.stream_id {
            return Err(format!(
                "position {}: event of {} stored in {}",
                r.position,
                event.stream_id(show),
                r.stream_id
            ));
        }
        match &event {
            DomainEvent::Reservation(e) => match e {
                ReservationEvent::ReservationPlaced { reservation_id, .. } => {
                    placed.insert(*reservation_id);
                }
                ReservationEvent::HoldExpired { reservation_id }
                | ReservationEvent::ReservationCancelled { reservation_id, .. }
                | ReservationEvent::PaymentFailed { reservation_id, .. }
                | ReservationEvent::PaymentTimedOut { reservation_id, .. }
                | ReservationEvent::RefundIssued { reservation_id, .. } => {
                    closed.insert(*reservation_id);
                }
                _ => {}
            },
            DomainEvent::Seat(SeatEvent::SeatHeld { reservation_id, .. })
            | DomainEvent::Pool(PoolEvent::PoolSeatsHeld { reservation_id, .. })
                if !placed.contains(reservation_id) =>
            {
                return Err(format!(
                    "position {}: seats held for {reservation_id} before it was placed",
                    r.position
                ));
            }
            DomainEvent::Seat(SeatEvent::SeatReleased { reservation_id, .. })
            | DomainEvent::Pool(PoolEvent::PoolSeatsReleased { reservation_id, .. })
                if !closed.contains(reservation_id) =>
            {
                return Err(format!(
                    "position {}: seats of {reservation_id} released before it was closed",
                    r.position
                ));
            }
            _ => {}
        }
        match &event {
            DomainEvent::Show(boxoffice_domain::show::ShowEvent::ShowScheduled {
                definition,
                ..
            }) => {
                for s in &definition.sections {
                    if let SectionLayout::GeneralAdmission { capacity, .. } = s.layout {
                        pool_capacity.insert(s.id.clone(), i64::from(capacity));
                    }
                }
            }
            DomainEvent::Seat(SeatEvent::SeatHeld {
                seat_id,
                reservation_id,
                ..
            }) => {
                report.holds += 1;
                if let Some(holder) = seat_holder.insert(seat_id.clone(), *reservation_id) {
                    return Err(format!(
                        "seat {seat_id} held by {reservation_id} while held by {holder} (position {})",
                        r.position
                    ));
                }
            }
            DomainEvent::Seat(SeatEvent::SeatReleased {
                seat_id,
                reservation_id,
                ..
            }) => {
                report.releases += 1;
                if seat_holder.remove(seat_id) != Some(*reservation_id) {
                    return Err(format!(
                        "seat {seat_id} released by {reservation_id}, which did not hold it (position {})",
                        r.position
                    ));
                }
            }
            DomainEvent::Seat(SeatEvent::SeatSold {
                seat_id,
                reservation_id,
                ..
            }) if seat_holder.get(seat_id) != Some(reservation_id) => {
                return Err(format!(
                    "seat {seat_id} sold to {reservation_id}, which did not hold it (position {})",
                    r.position
                ));
            }
            DomainEvent::Pool(PoolEvent::PoolSeatsHeld {
                section, quantity, ..
            }) => {
                let used = pool_used.entry(section.clone()).or_default();
                *used += i64::from(*quantity);
                if *used > pool_capacity.get(section).copied().unwrap_or(0) {
                    return Err(format!(
                        "pool {section} over capacity at position {}",
                        r.position
                    ));
                }
            }
            DomainEvent::Pool(PoolEvent::PoolSeatsReleased {
                section, quantity, ..
            }) => {
                *pool_used.entry(section.clone()).or_default() -= i64::from(*quantity);
            }
            _ => {}
        }
        report.events += 1;
        events.push(event);
    }
    let state = ShowState::replay(show, &events);
    state.check_invariants()?;
    Ok((report, state))
}

/// Show bodies for `POST /v1/shows`.
pub mod fixtures {
    use serde_json::{Value, json};

    /// The contract's example show: section 101 (rows A and B of 30, tiers A 120.00 and
    /// B 60.00) and a GA floor of 5 places at tier B.
    pub fn contract_show() -> Value {
        json!({
            "name": "Night 1",
            "venue": {"name": "Arena", "city": "Lisbon", "country": "PT", "timezone": "Europe/Lisbon"},
            "starts_at": "2030-05-01T20:00:00Z",
            "currency": "EUR",
            "limits": {"max_tickets_per_user": 8},
            "price_tiers": [{"id": "A", "name": "Front", "price": "120.00"}, {"id": "B", "name": "Back", "price": "60.00"}],
            "sections": [
                {"id": "101", "name": "Section 101", "kind": "seated",
                 "rows": [{"row": "A", "seats": 30, "tier": "A"}, {"row": "B", "seats": 30, "tier": "B"}]},
                {"id": "floor", "name": "Floor", "kind": "general_admission", "capacity": 5, "tier": "B"}
            ]
        })
    }

    /// A small show: one section `1` with one row `A` of `seats` seats (ids `1-A-n`),
    /// all at `price`.
    pub fn one_row_show(name: &str, seats: u32, price: &str) -> Value {
        json!({
            "name": name,
            "venue": {"name": "Arena", "city": "Lisbon", "country": "PT", "timezone": "Europe/Lisbon"},
            "starts_at": "2030-05-01T20:00:00Z",
            "currency": "EUR",
            "price_tiers": [{"id": "A", "name": "All", "price": price}],
            "sections": [{"id": "1", "name": "One", "kind": "seated", "rows": [{"row": "A", "seats": seats, "tier": "A"}]}]
        })
    }
}

/// The real server on port 0, for HTTP suites.
pub mod http {
    use std::sync::Arc;

    use boxoffice_api::auth::{Auth, Role};
    use boxoffice_api::openapi::RegisteredRoute;
    use boxoffice_api::{Application, Config};
    use boxoffice_store::users::UserDirectory;

    /// A running server and a client for it.
    pub struct Server {
        pub base: String,
        /// The secret the server signs tokens with, for tests that forge their own.
        pub jwt_secret: String,
        pub config: Config,
        pub client: reqwest::Client,
        /// Every (method, path) the server's router registers, read from the router.
        pub routes: Vec<RegisteredRoute>,
        users: Arc<UserDirectory>,
        auth: Arc<Auth>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    /// A user made for a test: its id, an access token, and how to sign in as it.
    pub struct TestUser {
        pub user_id: String,
        pub token: String,
        pub email: String,
        pub password: String,
    }

    impl Server {
        pub async fn start(url: &str) -> Server {
            let dir = std::env::temp_dir()
                .join(format!("boxoffice-http-{}", uuid::Uuid::new_v4().simple()));
            Self::start_with(Config::for_tests(url.to_string(), dir)).await
        }

        /// Starts a server with a configuration of the test's own.
        /// The server continues the test process's hash chains ([`super::chain_key`])
        /// unless the configuration names a key file of its own.
        pub async fn start_with(mut config: Config) -> Server {
            config
                .event_chain_key_file
                .get_or_insert_with(|| super::chain_key_file().to_path_buf());
            let jwt_secret = config.jwt_secret.clone().expect("tests use a fixed secret");
            let app = Application::build(config.clone())
                .await
                .expect("server builds");
            let base = format!("http://{}", app.local_addr());
            let routes = app.registered_routes();
            let (users, auth) = app.user_admin();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(app.run_until(async move {
                let _ = stopped.await;
            }));
            Server {
                base,
                jwt_secret,
                config,
                client: reqwest::Client::new(),
                routes,
                users,
                auth,
                stop: Some(stop),
                task,
            }
        }

        /// Creates a user with `roles` (besides buyer) and a token for it, as
        /// `boxoffice user add` and `POST /v1/auth/token` would.
        pub async fn user(&self, roles: &[Role]) -> TestUser {
            let email = format!("{}@example.test", uuid::Uuid::now_v7().simple());
            let user = boxoffice_api::auth::create_user(
                &self.users,
                &self.auth,
                &email,
                "correct horse".into(),
                None,
                roles,
            )
            .await
            .unwrap_or_else(|e| panic!("create user: {e:?}"));
            let mut all = vec![Role::Buyer];
            all.extend_from_slice(roles);
            let token = self.auth.issue(&user.user_id, &all).expect("token");
            TestUser {
                user_id: user.user_id,
                token,
                email,
                password: "correct horse".into(),
            }
        }

        /// A token signed by this server for any claims (for forged and expired tokens).
        pub fn auth(&self) -> &Arc<Auth> {
            &self.auth
        }

        /// The OpenAPI document the server serves at `/openapi.json`.
        pub async fn openapi(&self) -> serde_json::Value {
            let response = self
                .client
                .get(format!("{}/openapi.json", self.base))
                .send()
                .await
                .expect("GET /openapi.json");
            assert_eq!(response.status(), 200, "GET /openapi.json");
            response.json().await.expect("the document is JSON")
        }

        pub fn req(
            &self,
            method: reqwest::Method,
            path: &str,
            token: &str,
        ) -> reqwest::RequestBuilder {
            self.client
                .request(method, format!("{}{path}", self.base))
                .bearer_auth(token)
        }

        pub async fn stop(mut self) {
            let _ = self.stop.take().expect("running").send(());
            self.task.await.expect("server task").expect("server ran");
        }
    }
}

/// Reading the OpenAPI document the server serves, for the suites that are generated from
/// it (the route coverage and the auth matrix).
pub mod openapi {
    use serde_json::Value;

    /// The methods an OpenAPI path item can hold.
    pub const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// One operation of the document.
    #[derive(Debug, Clone)]
    pub struct Operation {
        /// Upper case, as on the wire.
        pub method: String,
        /// The path template, `/v1/shows/{show_id}`.
        pub path: String,
        pub id: String,
        /// The operation object.
        pub spec: Value,
    }

    impl Operation {
        /// Whether the operation needs a bearer token.
        pub fn secured(&self) -> bool {
            self.spec["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer_auth").is_some()))
        }

        /// The `x-roles` extension, if present.
        pub fn roles(&self) -> Option<Vec<String>> {
            Some(
                self.spec
                    .get("x-roles")?
                    .as_array()?
                    .iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect(),
            )
        }

        /// The `x-forbidden-roles` extension: roles past the role check that are still
        /// refused (403) on an object that is not theirs. Empty if absent.
        pub fn forbidden_roles(&self) -> Vec<String> {
            self.spec
                .get("x-forbidden-roles")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        }

        /// The names of the path parameters the path template has.
        pub fn path_parameters(&self) -> Vec<String> {
            self.path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_string)
                .collect()
        }

        /// The example JSON body the document gives for the operation: the media type's
        /// own example, or its schema's.
        pub fn body_example(&self, doc: &Value) -> Option<Value> {
            let media = &self.spec["requestBody"]["content"]["application/json"];
            if media.is_null() {
                return None;
            }
            if let Some(example) = media.get("example") {
                return Some(example.clone());
            }
            resolve(doc, &media["schema"]).get("example").cloned()
        }
    }

    /// Follows a local `$ref` (`#/components/schemas/X`), or returns the value itself.
    pub fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.strip_prefix('#').expect("a local $ref");
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} does not resolve"))
            }
            None => value,
        }
    }

    /// Every operation of the document, by path and method.
    pub fn operations(doc: &Value) -> Vec<Operation> {
        let mut all = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if let Some(spec) = item.get(method) {
                    all.push(Operation {
                        method: method.to_uppercase(),
                        path: path.clone(),
                        id: spec["operationId"].as_str().unwrap_or_default().to_string(),
                        spec: spec.clone(),
                    });
                }
            }
        }
        all
    }
}
