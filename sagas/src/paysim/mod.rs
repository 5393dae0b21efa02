//! paysim: a stand-alone payment provider modelled on Stripe PaymentIntents, for
//! development, tests and load runs.
//!
//! It owns a real HTTP server (create, retrieve, cancel, refund, list refunds), its own
//! SQLite file so it survives restarts like a real provider, a settlement worker that
//! settles intents asynchronously by test token (see [`behaviour`]), and a webhook worker
//! that delivers signed events with retries from an outbox. Faults are injected by configuration:
//! latency and jitter, lost API responses, dropped webhook attempts.
//!
//! Run it stand-alone with [`run`], or in-process with [`start`] on a listener the
//! caller bound (port 0 in tests).

mod api;
mod behaviour;
mod settlement;
mod store;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng as _;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use store::Store;

/// The longest simulated latency accepted (ten minutes).
pub const LATENCY_MS_MAX: u64 = 600_000;

/// Command-line and environment configuration of the simulator.
#[derive(clap::Args, Debug, Clone)]
pub struct PaysimArgs {
    /// Address to listen on.
    #[arg(long, env = "PAYSIM_BIND", default_value = "127.0.0.1:8090")]
    pub bind: SocketAddr,
    /// SQLite file holding the simulator's intents, keys, refunds and webhook outbox
    /// (created with its folder if missing).
    #[arg(long, env = "PAYSIM_DB", default_value = "data/paysim.db")]
    pub db: PathBuf,
    /// Time from creating an intent to its settlement, in milliseconds.
    #[arg(long, env = "PAYSIM_LATENCY_MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(0..=LATENCY_MS_MAX))]
    pub latency_ms: u64,
    /// A random extra delay of up to this many milliseconds added to each settlement.
    #[arg(long, env = "PAYSIM_JITTER_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=LATENCY_MS_MAX))]
    pub jitter_ms: u64,
    /// Where to POST webhook events (for example
    /// http://127.0.0.1:8080/v1/webhooks/payments). Without it, events wait in the
    /// outbox until a URL is configured.
    #[arg(long, env = "PAYSIM_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The secret webhook signatures are made with (header Boxoffice-Signature); the
    /// receiving server must be configured with the same one.
    #[arg(long, env = "PAYMENT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: String,
    /// If set, API calls must carry `Authorization: Bearer <key>` (401 otherwise).
    #[arg(long, env = "PAYSIM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Fraction (0 to 1) of API calls answered 500; half of them after performing the
    /// request, as when a provider's response is lost.
    #[arg(long, env = "PAYSIM_API_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub api_error_rate: f64,
    /// Fraction (0 to 1) of webhook delivery attempts dropped before sending (they are
    /// retried with backoff like any failed delivery).
    #[arg(long, env = "PAYSIM_WEBHOOK_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub webhook_failure_rate: f64,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not a fraction between 0 and 1"))
    }
}

/// The simulator's configuration; see [`PaysimArgs`] for each field's meaning.
#[derive(Clone)]
pub struct PaysimConfig {
    /// Used by [`run`] only; [`start`] serves on the listener it is given.
    pub bind: SocketAddr,
    pub db: PathBuf,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub webhook_url: Option<String>,
    pub webhook_secret: Vec<u8>,
    pub api_key: Option<String>,
    pub api_error_rate: f64,
    pub webhook_failure_rate: f64,
}

impl PaysimConfig {
    /// A configuration with the defaults of [`PaysimArgs`], storing its state in `db`.
    pub fn new(db: impl Into<PathBuf>, webhook_secret: impl Into<Vec<u8>>) -> PaysimConfig {
        PaysimConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8090)),
            db: db.into(),
            latency_ms: 200,
            jitter_ms: 0,
            webhook_url: None,
            webhook_secret: webhook_secret.into(),
            api_key: None,
            api_error_rate: 0.0,
            webhook_failure_rate: 0.0,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.latency_ms <= LATENCY_MS_MAX && self.jitter_ms <= LATENCY_MS_MAX,
            "paysim latency and jitter are limited to {LATENCY_MS_MAX} ms"
        );
        for (name, rate) in [
            ("api_error_rate", self.api_error_rate),
            ("webhook_failure_rate", self.webhook_failure_rate),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "paysim {name} {rate} is not in [0, 1]"
            );
        }
        anyhow::ensure!(
            !self.webhook_secret.is_empty(),
            "paysim needs a webhook secret"
        );
        Ok(())
    }

    fn latency_with_jitter_ms(&self) -> u64 {
        if self.jitter_ms == 0 {
            self.latency_ms
        } else {
            self.latency_ms + rand::thread_rng().gen_range(0..=self.jitter_ms)
        }
    }
}

/// Secrets stay out of logs.
impl std::fmt::Debug for PaysimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaysimConfig")
            .field("bind", &self.bind)
            .field("db", &self.db)
            .field("latency_ms", &self.latency_ms)
            .field("jitter_ms", &self.jitter_ms)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &"<redacted>")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_error_rate", &self.api_error_rate)
            .field("webhook_failure_rate", &self.webhook_failure_rate)
            .finish()
    }
}

impl From<PaysimArgs> for PaysimConfig {
    fn from(args: PaysimArgs) -> Self {
        PaysimConfig {
            bind: args.bind,
            db: args.db,
            latency_ms: args.latency_ms,
            jitter_ms: args.jitter_ms,
            webhook_url: args.webhook_url,
            webhook_secret: args.webhook_secret.into_bytes(),
            api_key: args.api_key,
            api_error_rate: args.api_error_rate,
            webhook_failure_rate: args.webhook_failure_rate,
        }
    }
}

/// What the HTTP handlers and the workers share.
pub(crate) struct Shared {
    config: PaysimConfig,
    store: Store,
    webhook_url: RwLock<Option<String>>,
    /// Wakes the settlement worker when an intent is created.
    settle_wake: Notify,
    /// Wakes the webhook worker when deliveries are queued or the URL changes.
    deliver_wake: Notify,
    webhook_http: reqwest::Client,
}

impl Shared {
    fn webhook_url(&self) -> Option<String> {
        self.webhook_url
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A running simulator.
pub struct Paysim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Paysim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give a [`crate::provider::ProviderClient`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where webhooks go from now on, including deliveries already pending. The
    /// in-process simulator learns the server's address only after both have bound.
    pub fn set_webhook_url(&self, url: String) {
        *self
            .shared
            .webhook_url
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(url);
        self.shared.deliver_wake.notify_one();
    }

    /// Stops serving and stops the workers. Settlements and deliveries not done yet stay
    /// in the database and resume on the next start.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a paysim task failed");
            }
        }
        self.shared.store.close().await;
    }
}

/// Starts the simulator on `listener`, resuming whatever settlements and webhook
/// deliveries its database holds.
pub async fn start(config: PaysimConfig, listener: TcpListener) -> anyhow::Result<Paysim> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let store = Store::open(&config.db).await?;
    let webhook_http = reqwest::Client::builder()
        .timeout(Duration::from_millis(webhooks::DELIVERY_TIMEOUT_MS))
        .connect_timeout(Duration::from_millis(webhooks::CONNECT_TIMEOUT_MS))
        .user_agent("boxoffice-paysim")
        .build()
        .context("building the webhook HTTP client")?;
    let shared = Arc::new(Shared {
        webhook_url: RwLock::new(config.webhook_url.clone()),
        config,
        store,
        settle_wake: Notify::new(),
        deliver_wake: Notify::new(),
        webhook_http,
    });
    let (shutdown, stopping) = watch::channel(false);
    let app = api::router(shared.clone());
    let mut server_stopping = stopping.clone();
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = server_stopping.wait_for(|stop| *stop).await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(%error, "paysim server failed");
        }
    });
    let settler = tokio::spawn(settlement::run(shared.clone(), stopping.clone()));
    let deliverer = tokio::spawn(webhooks::run(shared.clone(), stopping));
    Ok(Paysim {
        addr,
        shared,
        shutdown,
        tasks: vec![server, settler, deliverer],
    })
}

/// The stand-alone simulator: binds, serves until ctrl-c (or SIGTERM), shuts down.
pub async fn run(args: PaysimArgs) -> anyhow::Result<()> {
    let config = PaysimConfig::from(args);
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    let db = config.db.clone();
    let paysim = start(config, listener).await?;
    tracing::info!(url = %paysim.url(), db = %db.display(), "paysim listening");
    stop_requested().await?;
    tracing::info!("paysim shutting down");
    paysim.shutdown().await;
    Ok(())
}

async fn stop_requested() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// A provider-style id: `prefix_` and 32 random hex digits.
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The system clock in unix milliseconds: the simulator plays an outside party, so it
/// runs on real time rather than the application's injected clock.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        paysim: PaysimArgs,
    }

    #[test]
    fn arguments_have_defaults_and_the_secret_is_required() {
        if std::env::var_os("PAYMENT_WEBHOOK_SECRET").is_none() {
            let error = Cli::try_parse_from(["paysim"]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument
            );
        }
        let cli = Cli::try_parse_from(["paysim", "--webhook-secret", "s3cret"]).unwrap();
        let config = PaysimConfig::from(cli.paysim);
        assert_eq!(config.webhook_secret, b"s3cret");
        assert!(config.validate().is_ok());
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn rates_and_latencies_are_bounded() {
        for bad in [
            ["--api-error-rate", "1.5"],
            ["--webhook-failure-rate", "-0.1"],
            ["--api-error-rate", "NaN"],
            ["--latency-ms", "600001"],
        ] {
            let args = ["paysim", "--webhook-secret", "s", bad[0], bad[1]];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from([
            "paysim",
            "--webhook-secret",
            "s",
            "--api-error-rate",
            "0.25",
            "--latency-ms",
            "5",
            "--jitter-ms",
            "3",
            "--webhook-url",
            "http://127.0.0.1:1/hook",
            "--db",
            "x.db",
            "--bind",
            "127.0.0.1:0",
        ])
        .unwrap();
        let config = PaysimConfig::from(cli.paysim);
        assert_eq!(config.api_error_rate, 0.25);
        for _ in 0..100 {
            assert!((5..=8).contains(&config.latency_with_jitter_ms()));
        }
        let mut config = PaysimConfig::new("x.db", "s");
        config.webhook_failure_rate = 2.0;
        assert!(config.validate().is_err());
    }
}
