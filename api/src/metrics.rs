//! Prometheus metrics: the `GET /metrics` scrape endpoint, the middleware that counts and
//! times every request by its route template, and the engine's counters published at
//! scrape time.
//!
//! Each [`Application`](crate::Application) owns its own recorder rather than installing
//! one globally: a process may run several servers (the test binaries do), a global
//! recorder can be installed only once, and one shared registry would mix their numbers.
//! Metrics are recorded with `metrics::with_local_recorder`, which points the `metrics`
//! macros at this server's recorder for the duration of a synchronous closure; the
//! closures never await, so the thread-local scope cannot leak into another task.
//!
//! What is exported (the descriptions below become the `# HELP` lines):
//!
//! - `http_requests_total{method, route, status}`: requests answered.
//! - `http_request_duration_seconds{method, route}`: histogram of the time from a request
//!   entering the router to its response head, every layer included.
//! - `boxoffice_holds_placed_total`: `201 Created` answers to `POST` on the holds route.
//! - `boxoffice_engine_*`: the write engine's cumulative counters (`EngineStats`).
//!
//! `route` is always a route template (`/v1/shows/{show_id}/holds`) or `unmatched`, and
//! `method` is a standard method or `other`: a label never carries a value the caller
//! chooses freely, so the number of series stays bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use boxoffice_commands::EngineStats;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio::sync::watch;

use crate::state::AppState;

/// The Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The `route` label of a request that matched no route (a 404 from the fallback).
pub const ROUTE_UNMATCHED: &str = "unmatched";
/// How often histogram samples are folded into their buckets when nobody scrapes; a scrape
/// does it too. Without it the samples of an unscraped server would pile up unbounded.
pub const UPKEEP_INTERVAL_MS: u64 = 5_000;

const HTTP_REQUESTS: &str = "http_requests_total";
const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
const HOLDS_PLACED: &str = "boxoffice_holds_placed_total";
const HOLDS_ROUTE: &str = "/v1/shows/{show_id}/holds";

/// Upper bounds of the request duration buckets, in seconds: 1 ms to 10 s. A hold is a
/// few milliseconds; the request timeout (35 s) lands in `+Inf`.
const HTTP_DURATION_BUCKETS_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The engine's cumulative counters, each published as the counter of the same meaning.
/// `EngineStats` holds only totals since start, so they are read at scrape time and set
/// with `Counter::absolute`.
const ENGINE_COUNTERS: [(&str, &str); 7] = [
    (
        "boxoffice_engine_batches_total",
        "Batches of commands appended to the event store.",
    ),
    (
        "boxoffice_engine_commands_total",
        "Commands answered in appended batches.",
    ),
    (
        "boxoffice_engine_events_appended_total",
        "Domain events appended to the event store.",
    ),
    (
        "boxoffice_engine_conflicts_total",
        "Appends refused because another writer changed a stream (the show reloads and retries).",
    ),
    (
        "boxoffice_engine_reloads_total",
        "Times a show's state was loaded or reloaded from the event store.",
    ),
    (
        "boxoffice_engine_expiries_total",
        "Holds expired by their timer, in appended batches.",
    ),
    (
        "boxoffice_engine_append_failures_total",
        "Appends that failed for a reason other than a conflict (the store was unavailable).",
    ),
];
const ENGINE_DECIDE_MICROS: &str = "boxoffice_engine_decide_microseconds_total";
const ENGINE_APPEND_MICROS: &str = "boxoffice_engine_append_microseconds_total";
const ENGINE_MEAN_BATCH: &str = "boxoffice_engine_mean_batch_commands";
const ENGINE_MEAN_APPEND: &str = "boxoffice_engine_mean_append_seconds";

/// One server's recorder and the handle that renders it.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(HTTP_REQUEST_DURATION.into()),
                &HTTP_DURATION_BUCKETS_SECONDS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let metrics = Self {
            handle: recorder.handle(),
            recorder: Arc::new(recorder),
        };
        metrics.describe();
        metrics
    }

    /// Runs `record` with this server's recorder behind the `metrics` macros.
    fn with<T>(&self, record: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self.recorder.as_ref(), record)
    }

    fn describe(&self) {
        self.with(|| {
            describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route template.");
            describe_histogram!(
                HTTP_REQUEST_DURATION,
                metrics::Unit::Seconds,
                "Time to answer an HTTP request, by route template."
            );
            describe_counter!(
                HOLDS_PLACED,
                "Holds answered 201 Created (an idempotent replay of a hold counts again)."
            );
            for (name, help) in ENGINE_COUNTERS {
                describe_counter!(name, help);
            }
            describe_counter!(
                ENGINE_DECIDE_MICROS,
                metrics::Unit::Microseconds,
                "Time the engine spent deciding batches and encoding their events."
            );
            describe_counter!(
                ENGINE_APPEND_MICROS,
                metrics::Unit::Microseconds,
                "Time the engine spent in the event store's append, failed appends included."
            );
            describe_gauge!(
                ENGINE_MEAN_BATCH,
                "Mean commands per appended batch since start."
            );
            describe_gauge!(
                ENGINE_MEAN_APPEND,
                metrics::Unit::Seconds,
                "Mean time of an append since start, failed appends included."
            );
        });
    }

    /// Records one answered request.
    fn observe_request(&self, method: &'static str, route: String, status: u16, took: Duration) {
        self.with(|| {
            let holds_placed = method == "POST" && route == HOLDS_ROUTE && status == 201;
            counter!(
                HTTP_REQUESTS,
                "method" => method,
                "route" => route.clone(),
                "status" => status.to_string()
            )
            .increment(1);
            histogram!(HTTP_REQUEST_DURATION, "method" => method, "route" => route)
                .record(took.as_secs_f64());
            if holds_placed {
                counter!(HOLDS_PLACED).increment(1);
            }
        });
    }

    /// Publishes the engine's counters as they are now, then renders every metric.
    pub fn render(&self, stats: &EngineStats) -> String {
        self.with(|| publish_engine_stats(stats));
        self.handle.render()
    }

    /// Folds histogram samples into their buckets every [`UPKEEP_INTERVAL_MS`] until
    /// `stop` turns true or its sender goes away.
    pub async fn run_upkeep(self, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(Duration::from_millis(UPKEEP_INTERVAL_MS));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.handle.run_upkeep(),
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

/// Sets the engine metrics from its atomics. Counters only grow, so `absolute` keeps
/// them monotonic; the means are derived from the same totals.
fn publish_engine_stats(stats: &EngineStats) {
    let values = [
        &stats.batches,
        &stats.commands,
        &stats.events_appended,
        &stats.conflicts,
        &stats.reloads,
        &stats.expiries,
        &stats.append_failures,
    ]
    .map(EngineStats::get);
    for ((name, _), value) in ENGINE_COUNTERS.iter().zip(values) {
        counter!(*name).absolute(value);
    }
    let [batches, commands, _, conflicts, _, _, append_failures] = values;
    let append_micros = EngineStats::get(&stats.append_micros);
    counter!(ENGINE_DECIDE_MICROS).absolute(EngineStats::get(&stats.decide_micros));
    counter!(ENGINE_APPEND_MICROS).absolute(append_micros);
    // Every finished append adds to `append_micros`: committed, conflicting or failed.
    let appends = batches + conflicts + append_failures;
    gauge!(ENGINE_MEAN_BATCH).set(ratio(commands, batches));
    gauge!(ENGINE_MEAN_APPEND).set(ratio(append_micros, appends) / 1e6);
}

/// `numerator / denominator`, or 0 before anything has been counted.
fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// The `method` label: a standard method, or `other` for an extension method, whose name
/// the caller picks.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts and times every request under its route template. Axum sets `MatchedPath`
/// before a route's layers run; the fallback has none, so a 404 to an unknown path is
/// recorded as `unmatched` and never under its raw path.
pub async fn track_requests(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| ROUTE_UNMATCHED.to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics.observe_request(method, route, response.status().as_u16(), started.elapsed());
    response
}

/// Prometheus metrics
///
/// Every metric in the Prometheus text format, version 0.0.4. Unauthenticated, like
/// `/healthz`; keep it off the public listener in production.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    responses(
        (status = 200, description = "The metrics.", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
    )
)]
pub async fn scrape(State(app): State<AppState>) -> Response {
    let body = app.metrics.render(app.engine.stats());
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}
