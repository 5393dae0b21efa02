//! The Boxoffice HTTP server: configuration, start-up and the router. `main` only wires
//! config and tracing; [`Application`] builds the server, can bind port 0 so tests run
//! it for real, and shuts down when the future it is given completes. The router and
//! the OpenAPI document at `/openapi.json` are built together from [`api`], so a route
//! cannot exist without its documentation.

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod checkout;
pub mod cluster;
pub mod context;
pub mod error;
pub mod idempotency;
pub mod json;
pub mod limits;
pub mod manage;
pub mod metrics;
pub mod notifications;
pub mod openapi;
pub mod orders;
pub mod reservations;
pub mod sales;
pub mod seatmap;
pub mod shows;
pub mod state;
pub mod stream;
pub mod views;
pub mod waitlist;
pub mod web;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Router, middleware};
use boxoffice_commands::{Engine, EngineConfig};
use boxoffice_domain::{RandomIds, SystemClock};
use boxoffice_store::EventStore;
use boxoffice_store::chain::ChainKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use boxoffice_projections::{NotifyConfig, ReadSide, ReadSideConfig};
use boxoffice_sagas::inbox::WebhookInbox;
use boxoffice_sagas::paysim::{self, Paysim, PaysimConfig};
use boxoffice_sagas::provider::ProviderClient;
use boxoffice_sagas::saga::{PaymentSaga, SagaConfig};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::seatmap::SeatMaps;
use crate::state::{AppParts, AppState};
use boxoffice_store::users::UserDirectory;

/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 256 * 1024;
/// Longest a request may take before it is answered 503.
pub const REQUEST_TIMEOUT_MS: u64 = 35_000;

/// Server configuration, from flags or the environment (see `boxoffice serve --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long = "bind", env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Event store: `sqlite://path` (embedded) or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/boxoffice.db"
    )]
    pub database_url: String,
    /// Directory for local state (the SQLite file by default, a generated token secret).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Secret for signing access tokens (at least 32 bytes). If unset, it is read from
    /// `JWT_SECRET_FILE`, or generated once into `<data dir>/jwt-secret`.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding the token secret.
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// The file holding the key of the event log's hash chain (tamper evidence; keep it
    /// outside the database and back it up: `boxctl verify` needs it). Default
    /// `<data dir>/event-chain.key`, generated there on first start.
    #[arg(long, env = "EVENT_CHAIN_KEY_FILE")]
    pub event_chain_key_file: Option<PathBuf>,
    /// Requests per second one user may make (burst twice that); 0 turns it off.
    #[arg(long, env = "RATE_LIMIT_PER_USER", default_value_t = 50)]
    pub rate_limit_per_user: u32,
    /// Requests per second one client IP may make (burst twice that); 0 turns it off.
    #[arg(long, env = "RATE_LIMIT_PER_IP", default_value_t = 2_000)]
    pub rate_limit_per_ip: u32,
    /// The payment provider's base URL. Unset: the payment simulator (`boxoffice
    /// paysim`) runs in-process on a loopback port, its state in `<data dir>/paysim.db`.
    #[arg(long, env = "PAYMENT_PROVIDER_URL")]
    pub payment_provider_url: Option<String>,
    /// The API key sent to the payment provider, if it wants one.
    #[arg(long, env = "PAYMENT_PROVIDER_API_KEY", hide_env_values = true)]
    pub payment_provider_api_key: Option<String>,
    /// Secret of the provider's webhook signatures. If unset, generated once into
    /// `<data dir>/payment-webhook-secret` (shared with the in-process simulator).
    #[arg(long, env = "PAYMENT_WEBHOOK_SECRET", hide_env_values = true)]
    pub payment_webhook_secret: Option<String>,
    /// Simulated provider latency in milliseconds (the in-process simulator only).
    #[arg(long, env = "PAYSIM_LATENCY_MS", default_value_t = 200)]
    pub paysim_latency_ms: u64,
    /// File that notification emails are appended to, one JSON line each (the
    /// development mail sink). Default `<data dir>/outbox/mail.jsonl`.
    #[arg(long, env = "NOTIFY_EMAIL_FILE")]
    pub notify_email_file: Option<PathBuf>,
    /// URL that every notification is POSTed to, signed (a user's own webhook, if set,
    /// is used instead).
    #[arg(long, env = "NOTIFY_WEBHOOK_URL")]
    pub notify_webhook_url: Option<String>,
    /// Secret of the notification webhook signatures (required with
    /// `NOTIFY_WEBHOOK_URL`).
    #[arg(long, env = "NOTIFY_WEBHOOK_SECRET", hide_env_values = true)]
    pub notify_webhook_secret: Option<String>,
    /// Serve the seat-map page from this directory (the repository's `web/`), read on
    /// each request, instead of the copy built into the binary: for editing the page
    /// without rebuilding.
    #[arg(long, env = "WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// This node's id among several on one PostgreSQL (unique per node, stable across
    /// its restarts). Default: generated once into `<data dir>/node-id`.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// The base URL other nodes forward this node's shows' commands to. Default:
    /// `http://<bind address>` (loopback if bound to every interface).
    #[arg(long, env = "ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// How long a show lease lasts without renewal (PostgreSQL): about the longest a
    /// dead node's shows wait for another node to take them over.
    #[arg(long, env = "LEASE_MS", default_value_t = 5_000)]
    pub lease_ms: u64,
    /// How often show leases are renewed and expired ones taken over; at most half of
    /// `--lease-ms`.
    #[arg(long, env = "RENEW_MS", default_value_t = 1_500)]
    pub renew_ms: u64,
    /// Serve reads and run projections only: no write actors, every command goes to the
    /// node that owns its show (PostgreSQL).
    #[arg(long, env = "READ_ONLY", default_value_t = false)]
    pub read_only: bool,
}

impl Config {
    /// A configuration for tests: port 0 on loopback, the given store, a fixed secret.
    pub fn for_tests(database_url: String, data_dir: PathBuf) -> Self {
        Self {
            bind: "127.0.0.1:0".parse().expect("addr"),
            database_url,
            data_dir,
            jwt_secret: Some(format!("test-secret-{}", uuid::Uuid::new_v4().simple())),
            jwt_secret_file: None,
            event_chain_key_file: None,
            rate_limit_per_user: 50,
            rate_limit_per_ip: 2_000,
            payment_provider_url: None,
            payment_provider_api_key: None,
            payment_webhook_secret: Some(format!("whsec-test-{}", uuid::Uuid::new_v4().simple())),
            paysim_latency_ms: 100,
            notify_email_file: None,
            notify_webhook_url: None,
            notify_webhook_secret: None,
            web_dir: None,
            node_id: None,
            advertise_url: None,
            lease_ms: 5_000,
            renew_ms: 1_500,
            read_only: false,
        }
    }

    /// Show ownership across nodes: on PostgreSQL every node takes show leases (a single
    /// node simply owns every show it touches); SQLite is one process and has none.
    async fn cluster(
        &self,
        bound: SocketAddr,
    ) -> anyhow::Result<Option<Arc<boxoffice_commands::Cluster>>> {
        let postgres = self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://");
        if !postgres {
            anyhow::ensure!(
                !self.read_only,
                "--read-only needs PostgreSQL (other nodes to send commands to)"
            );
            return Ok(None);
        }
        let node_id = match &self.node_id {
            Some(id) => id.clone(),
            None => cluster::default_node_id(&self.data_dir)?,
        };
        let advertise_url = match &self.advertise_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let mut own = bound;
                if own.ip().is_unspecified() {
                    own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{own}")
            }
        };
        let config = boxoffice_commands::ClusterConfig {
            node_id,
            advertise_url,
            lease: Duration::from_millis(self.lease_ms),
            renew: Duration::from_millis(self.renew_ms),
            read_only: self.read_only,
        };
        config.validate().map_err(anyhow::Error::msg)?;
        tracing::info!(
            node_id = %config.node_id,
            advertise_url = %config.advertise_url,
            lease_ms = self.lease_ms,
            read_only = self.read_only,
            "show ownership through PostgreSQL leases"
        );
        let leases = boxoffice_store::leases::ShowLeases::connect(&self.database_url).await?;
        Ok(Some(Arc::new(boxoffice_commands::Cluster::new(
            leases, config,
        ))))
    }

    /// The token secret: configured, from its file, or generated once into the data
    /// directory (never a value built into the binary).
    fn jwt_secret(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(secret) = &self.jwt_secret {
            return Ok(secret.as_bytes().to_vec());
        }
        if let Some(path) = &self.jwt_secret_file {
            return Ok(std::fs::read_to_string(path)?.trim().as_bytes().to_vec());
        }
        self.generated_secret("jwt-secret")
    }

    /// The key of the event log's hash chain: from its file, generated there on first
    /// use.
    pub fn chain_key(&self) -> anyhow::Result<ChainKey> {
        let path = self
            .event_chain_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("event-chain.key"));
        let (key, created) = ChainKey::load_or_create(&path)?;
        if created {
            tracing::warn!(
                path = %path.display(),
                "generated the event log's hash-chain key; back it up outside the database"
            );
        }
        Ok(key)
    }

    /// The payment webhook secret: configured, or generated once into the data dir.
    fn payment_webhook_secret(&self) -> anyhow::Result<Vec<u8>> {
        match &self.payment_webhook_secret {
            Some(secret) => Ok(secret.as_bytes().to_vec()),
            None => self.generated_secret("payment-webhook-secret"),
        }
    }

    /// A secret kept in `<data dir>/<name>`, generated there on first use.
    fn generated_secret(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.data_dir.join(name);
        if let Ok(secret) = std::fs::read_to_string(&path) {
            return Ok(secret.trim().as_bytes().to_vec());
        }
        std::fs::create_dir_all(&self.data_dir)?;
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        std::fs::write(&path, &secret)?;
        tracing::info!(path = %path.display(), "generated a secret for development");
        Ok(secret.into_bytes())
    }
}

/// Adds a user to the store named by `config` (`boxoffice user add`). The email and
/// password are checked by the same rules as registration.
pub async fn add_user(
    config: &Config,
    email: &str,
    password: String,
    display_name: Option<String>,
    roles: &[auth::Role],
) -> anyhow::Result<boxoffice_store::users::UserRecord> {
    // Opening the event store applies the migrations, the users table among them.
    let _store = boxoffice_store::connect(&config.database_url, None).await?;
    let users = UserDirectory::connect(&config.database_url).await?;
    let auth = Arc::new(Auth::new(&config.jwt_secret()?)?);
    let body = auth::RegisterBody::new(email, &password, display_name.as_deref());
    validator::Validate::validate(&body).map_err(|e| anyhow::anyhow!("invalid user: {e}"))?;
    auth::create_user(&users, &auth, email, password, display_name, roles)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.detail))
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    store: Arc<dyn EventStore>,
    read_side: ReadSide,
    /// The in-process payment simulator, unless `PAYMENT_PROVIDER_URL` names another.
    paysim: Option<Paysim>,
}

impl Application {
    /// Opens the store, loads every show and the seat maps, and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store =
            boxoffice_store::connect(&config.database_url, Some(config.chain_key()?)).await?;
        Self::build_with_store(config, store).await
    }

    pub async fn build_with_store(
        config: Config,
        store: Arc<dyn EventStore>,
    ) -> anyhow::Result<Self> {
        // Bound first: the advertised URL defaults to the address actually bound.
        let listener = TcpListener::bind(config.bind).await?;
        let cluster = config.cluster(listener.local_addr()?).await?;
        let forwarder = match cluster {
            Some(_) => Some(cluster::Forwarder::new()?),
            None => None,
        };
        let engine = Engine::with_cluster(
            Arc::clone(&store),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
            EngineConfig::default(),
            cluster,
        );
        let shows = engine.load_all().await?;
        let seatmaps = SeatMaps::new(Arc::clone(&store));
        seatmaps.catch_up().await?;
        tracing::info!(
            shows,
            position = seatmaps.position(),
            backend = store.backend(),
            "loaded"
        );
        let tables = boxoffice_store::tables::TablePool::connect(&config.database_url).await?;
        let users = Arc::new(UserDirectory::new(tables.clone()));
        let idempotency = Arc::new(boxoffice_store::idempotency::IdempotencyKeys::new(
            tables.clone(),
        ));
        let auth = Arc::new(Auth::new(&config.jwt_secret()?)?);

        // Payments: the provider (the simulator in-process unless configured), its
        // webhooks to this server, and the saga that drives every payment.
        let webhook_secret = config.payment_webhook_secret()?;
        let (provider_url, paysim) = match &config.payment_provider_url {
            Some(url) => (url.clone(), None),
            None => {
                let mut sim =
                    PaysimConfig::new(config.data_dir.join("paysim.db"), webhook_secret.clone());
                sim.latency_ms = config.paysim_latency_ms;
                let sim = paysim::start(sim, TcpListener::bind("127.0.0.1:0").await?).await?;
                let mut own = listener.local_addr()?;
                if own.ip().is_unspecified() {
                    own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                sim.set_webhook_url(format!("http://{own}/v1/webhooks/payments"));
                tracing::info!(url = %sim.url(), "payment simulator started in-process");
                (sim.url(), Some(sim))
            }
        };
        let provider = ProviderClient::new(&provider_url, config.payment_provider_api_key.clone());
        let payments = state::Payments {
            saga: PaymentSaga::new(Arc::clone(&engine), provider, SagaConfig::default()),
            inbox: WebhookInbox::new(tables.clone()),
            webhook_secret: webhook_secret.into(),
        };

        // The read side: orders, notifications (and their delivery).
        let notify = NotifyConfig {
            email_file: Some(
                config
                    .notify_email_file
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("outbox").join("mail.jsonl")),
            ),
            webhook_url: config.notify_webhook_url.clone(),
            webhook_secret: config
                .notify_webhook_secret
                .clone()
                .unwrap_or_default()
                .into_bytes(),
        };
        let runtime = boxoffice_projections::RuntimeConfig::for_backend(
            boxoffice_projections::db::backend_of(&tables),
        );
        let read_side = ReadSide::start(
            Arc::clone(&store),
            tables,
            ReadSideConfig {
                runtime,
                notify,
                ..ReadSideConfig::default()
            },
            Arc::clone(engine.clock()),
        )?;
        let reads = state::Reads {
            orders: read_side.orders().clone(),
            notifications: read_side.notifications().clone(),
            orders_at: vec![read_side.orders_projector().clone()],
            notifications_at: vec![read_side.notifications_projector().clone()],
            sales: read_side.sales().clone(),
            sales_at: read_side.sales_projectors(),
        };
        let state = AppState::new(AppParts {
            engine,
            seatmaps,
            users,
            auth,
            idempotency,
            limiters: limits::Limiters::new(limits::RateLimits {
                per_user_per_second: config.rate_limit_per_user,
                per_ip_per_second: config.rate_limit_per_ip,
            }),
            ready: Arc::new(AtomicBool::new(false)),
            metrics: metrics::Metrics::new(),
            payments,
            reads,
            web: Arc::new(web::Assets::new(config.web_dir.clone())),
            forwarder,
        });
        Ok(Self {
            listener,
            state,
            store,
            read_side,
            paysim,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Every (method, path) the server's router registers, read from the router itself
    /// (see [`openapi::registered_routes`]), for tests that hold it against the document.
    pub fn registered_routes(&self) -> Vec<openapi::RegisteredRoute> {
        openapi::registered_routes(&router(self.state.clone()))
    }

    /// The user directory and token issuer, for tests and tools that create users.
    pub fn user_admin(&self) -> (Arc<UserDirectory>, Arc<Auth>) {
        (Arc::clone(&self.state.users), Arc::clone(&self.state.auth))
    }

    /// Serves until `shutdown` completes, then stops taking requests, finishes those in
    /// flight and lets every show actor finish its batch.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let upkeep = tokio::spawn(self.state.metrics.clone().run_upkeep(stop_rx.clone()));
        let sweeper = tokio::spawn(Arc::clone(&self.state.limiters).sweep(stop_rx.clone()));
        let purger = tokio::spawn(purge_idempotency_keys(
            Arc::clone(&self.state.idempotency),
            stop_rx.clone(),
        ));
        let follower = tokio::spawn(Arc::clone(&self.state.seatmaps).follow(stop_rx.clone()));
        // Several nodes: keep this node's show leases, take over shows whose owner is
        // gone, and index every reservation's show so requests can be forwarded.
        let ownership = self.state.engine.cluster().is_some().then(|| {
            (
                tokio::spawn(Arc::clone(&self.state.engine).run_leases(stop_rx.clone())),
                tokio::spawn(Arc::clone(&self.state.engine).follow_objects(stop_rx.clone())),
            )
        });
        let state = self.state.clone();
        // Resume every payment in flight before taking requests, then re-deliver any
        // webhook stored but not handed over when the process stopped.
        state.payments.saga.start().await;
        redeliver_stored_webhooks(&state).await;
        state.ready.store(true, Ordering::Release);
        let ready = Arc::clone(&state.ready);
        let seatmaps = Arc::clone(&state.seatmaps);
        let app = router(state.clone());
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            ready.store(false, Ordering::Release);
            // Open seat-map streams never finish by themselves; end them so that the
            // graceful shutdown does not wait on them.
            seatmaps.close_streams();
            tracing::info!("shutting down");
        })
        .await?;
        state.payments.saga.shutdown().await;
        state.engine.shutdown().await;
        self.read_side.shutdown().await;
        if let Some(sim) = self.paysim {
            sim.shutdown().await;
        }
        let _ = stop_tx.send(true);
        let _ = follower.await;
        if let Some((leases, objects)) = ownership {
            let _ = leases.await;
            let _ = objects.await;
        }
        let _ = upkeep.await;
        let _ = sweeper.await;
        let _ = purger.await;
        drop(self.store);
        Ok(())
    }
}

/// Every API route with its OpenAPI operation.
///
/// How a module is added: the module has `pub fn router() -> OpenApiRouter<AppState>`
/// that registers its handlers with `.routes(routes!(handler))`, one `routes!` call per
/// path (the macro routes every handler it is given on each of their paths). Each
/// handler carries `#[utoipa::path(...)]` with its method, path, `tag`, `params`,
/// `request_body` (a type deriving `ToSchema`, with an example), and every response it
/// gives: the success body and each error as `body = Problem, content_type =
/// "application/problem+json"`, its codes in the description. A handler that takes a
/// `Caller` also has `security(("bearer_auth" = []))` and `extensions(("x-roles" =
/// json!([...])))` naming the roles that pass its role check (and `"x-forbidden-roles"`
/// if some of those are still refused 403 on another user's object; see `openapi`).
/// Then `.merge(module::router())` below. The answers that layers give (401, 429, 500,
/// 503, the body extractor's and the idempotency layer's) are added to the document by
/// `openapi::add_layer_responses`.
///
/// `tests/tests/http_openapi.rs` fails if the router has a route the document lacks
/// (say, one added with a plain `.route(...)`); `tests/tests/http_auth.rs` fails for a
/// secured operation without `x-roles`, a body without an example, or a path parameter
/// it has no value for (add one to `Fixture::path_value` there).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(auth::router())
        .merge(catalog::router())
        .merge(shows::router())
        .merge(manage::router())
        .merge(waitlist::router())
        .merge(reservations::router())
        .merge(checkout::router())
        .merge(orders::router())
        .merge(notifications::router())
        .merge(webhooks::router())
        .merge(audit::router())
        .merge(sales::router())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::scrape))
}

/// The OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = api().into_openapi();
    openapi::add_layer_responses(&mut doc);
    openapi::add_links(&mut doc);
    doc
}

pub fn router(state: AppState) -> Router {
    let (api, mut doc) = api().split_for_parts();
    openapi::add_layer_responses(&mut doc);
    openapi::add_links(&mut doc);
    api.merge(openapi::docs_router(doc))
        .merge(web::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        // Innermost, so that the idempotency layer sees the 500 and frees the key.
        .layer(CatchPanicLayer::custom(handler_panicked))
        // Inside the request-id and timeout layers, so a replayed error names the
        // request that got it and a stuck first request is cut off.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ))
        // Outside idempotency: a limited request must not claim its key.
        .layer(middleware::from_fn_with_state(state.clone(), limits::layer))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(REQUEST_TIMEOUT_MS),
        ))
        .layer(TraceLayer::new_for_http())
        // Outside the limits, idempotency and the handlers, whose answer it may replace
        // with the show owner's; inside the request id, which it passes on.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cluster::layer,
        ))
        .layer(middleware::from_fn(context::request_id_layer))
        // Outermost, so the time and status include every layer (a timeout's 503 too).
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track_requests,
        ))
}

/// Hands every stored but unprocessed payment webhook to the saga (the process stopped
/// between storing one and passing it on).
async fn redeliver_stored_webhooks(state: &AppState) {
    let pending = match state.payments.inbox.unprocessed(10_000).await {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read stored webhooks; the saga polls anyway");
            return;
        }
    };
    let now = state.engine.clock().now();
    for hook in pending {
        if let Some(id) = hook
            .reservation_id
            .as_deref()
            .and_then(|r| r.parse::<boxoffice_domain::ReservationId>().ok())
        {
            state.payments.saga.poke(id);
        }
        if let Err(e) = state
            .payments
            .inbox
            .mark_processed(&hook.event_id, now)
            .await
        {
            tracing::warn!(error = %e, "cannot mark a stored webhook processed");
        }
    }
}

/// How often idempotency keys past their time are deleted.
const IDEMPOTENCY_PURGE_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// Deletes idempotency keys older than twice their promised lifetime, now and hourly.
async fn purge_idempotency_keys(
    keys: Arc<boxoffice_store::idempotency::IdempotencyKeys>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let before = chrono::Utc::now() - chrono::Duration::hours(2 * idempotency::KEY_TTL_HOURS);
        match keys.purge(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "old idempotency keys deleted"),
            Err(e) => tracing::warn!(error = %e, "could not purge idempotency keys"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(IDEMPOTENCY_PURGE_INTERVAL_MS)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Liveness
///
/// 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "Alive.", body = String, content_type = "text/plain", example = "ok"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness
///
/// 200 once the database is reachable and the write side has loaded; 503 while starting
/// or shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = "`not_ready`", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(app): State<AppState>) -> Response {
    let ready = app.ready.load(Ordering::Acquire) && app.engine.store().ping().await.is_ok();
    if ready {
        (StatusCode::OK, "ready").into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting, stopping, or the database is unreachable",
        )
        .into_response()
    }
}

/// The answer to a request whose handler panicked: a bug, logged with its message; the
/// client gets a problem like any other error rather than a dropped connection.
fn handler_panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the server failed to answer this request",
    )
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
