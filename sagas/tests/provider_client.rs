//! The provider client against a slow provider: however many calls its callers make at
//! once, at most `CALLS_IN_FLIGHT_MAX` are in flight, over at most as many connections,
//! and every call is still answered.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::routing::get;
use boxoffice_sagas::provider::{CALLS_IN_FLIGHT_MAX, Intent, IntentStatus, ProviderClient};
use tokio::net::TcpListener;

/// How long the provider takes to answer each call.
const ANSWER_AFTER: Duration = Duration::from_millis(40);
/// Calls made at once: well over the bound.
const CALLS: usize = 5 * CALLS_IN_FLIGHT_MAX;

#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    in_flight_max: AtomicUsize,
    calls: AtomicUsize,
    connections: Mutex<HashSet<SocketAddr>>,
}

async fn retrieve(
    State(seen): State<Arc<Seen>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Json<Intent> {
    seen.connections.lock().unwrap().insert(peer);
    seen.calls.fetch_add(1, Ordering::SeqCst);
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.in_flight_max.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(ANSWER_AFTER).await;
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    Json(Intent {
        id,
        status: IntentStatus::Processing,
        amount: 1_000,
        currency: "eur".to_owned(),
        payment_token: "tok_visa".to_owned(),
        metadata: BTreeMap::new(),
        created: 0,
        last_payment_error: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_bound_wait_their_turn_on_reused_connections() {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route("/v1/payment_intents/{id}", get(retrieve))
        .with_state(Arc::clone(&seen));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    // Two clones, as the saga and the API's refunds share one client.
    let client = ProviderClient::new(&url, None);
    let other = client.clone();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let client = if i % 2 == 0 {
            client.clone()
        } else {
            other.clone()
        };
        calls.spawn(async move { (i, client.retrieve(&format!("pi_{i}")).await) });
    }
    while let Some(call) = calls.join_next().await {
        let (i, answer) = call.unwrap();
        let intent = answer.unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(intent.id, format!("pi_{i}"));
    }
    server.abort();

    assert_eq!(seen.calls.load(Ordering::SeqCst), CALLS);
    let in_flight_max = seen.in_flight_max.load(Ordering::SeqCst);
    let connections = seen.connections.lock().unwrap().len();
    println!("{CALLS} calls: at most {in_flight_max} in flight, over {connections} connections");
    assert!(
        in_flight_max <= CALLS_IN_FLIGHT_MAX,
        "{in_flight_max} calls in flight"
    );
    // The bound is used, not just respected: the calls overlapped.
    assert!(in_flight_max > CALLS_IN_FLIGHT_MAX / 2, "{in_flight_max}");
    assert!(
        connections <= CALLS_IN_FLIGHT_MAX,
        "{connections} connections for {CALLS} calls"
    );
}
