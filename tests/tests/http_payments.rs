//! Checkout, orders, refunds, webhooks and notifications over real HTTP, with the
//! in-process payment simulator, on both backends: every test token's path ends in the
//! right state with the right events; forged, tampered, stale and replayed webhooks
//! change nothing; buyer B can do nothing to buyer A's things; a released seat goes to
//! the waitlist and the offer is paid like any reservation.

use std::time::{Duration, Instant};

use boxoffice_api::auth::Role;
use boxoffice_domain::ShowId;
use boxoffice_sagas::signature;
use boxoffice_tests::http::{Server, TestUser};
use boxoffice_tests::payments::check_payments;
use boxoffice_tests::{backends, check_log, open, partition};
use reqwest::Method as M;
use serde_json::{Value, json};

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A show of one row of `seats` seats at 25.00 with the shortest payment timeout.
async fn small_show(server: &Server, organizer: &str, seats: u32) -> String {
    let mut body = boxoffice_tests::fixtures::one_row_show("Checkout night", seats, "25.00");
    body["limits"] = json!({"payment_timeout_seconds": 5, "max_tickets_per_user": 8});
    let (status, show) = json_of(
        server
            .req(M::POST, "/v1/shows", organizer)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{show}");
    show["show_id"].as_str().unwrap().to_string()
}

async fn hold(server: &Server, show: &str, buyer: &str, seats: &[&str]) -> String {
    let (status, body) = json_of(
        server
            .req(M::POST, &format!("/v1/shows/{show}/holds"), buyer)
            .json(&json!({ "seats": seats }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["reservation_id"].as_str().unwrap().to_string()
}

async fn checkout(
    server: &Server,
    reservation: &str,
    buyer: &str,
    token: &str,
    wait: u32,
) -> (u16, Value) {
    json_of(
        server
            .req(
                M::POST,
                &format!("/v1/reservations/{reservation}/checkout?wait_seconds={wait}"),
                buyer,
            )
            .json(&json!({ "payment_token": token }))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn get(server: &Server, path: &str, token: &str) -> (u16, Value) {
    json_of(server.req(M::GET, path, token).send().await.unwrap()).await
}

/// Polls the reservation until its status is `want` (or panics after `limit`).
async fn reservation_reaches(
    server: &Server,
    reservation: &str,
    token: &str,
    want: &str,
    limit: Duration,
) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = get(server, &format!("/v1/reservations/{reservation}"), token).await;
        assert_eq!(status, 200, "{body}");
        if body["status"] == want {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "{reservation} is {} after {limit:?}, not {want}",
            body["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn seat_status(server: &Server, show: &str, seat: &str) -> String {
    let (_, map) = get(server, &format!("/v1/shows/{show}/seatmap"), "x").await;
    map["sections"][0]["rows"][0]["seats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == seat)
        .map(|s| s["status"].as_str().unwrap().to_string())
        .unwrap()
}

/// Asserts the seat map shows `seat` as `want`. The seat map is a read model that
/// follows the log, so a change the saga made a moment ago may take a little while to
/// show; this waits for it (up to 5 s) rather than read a stale map.
async fn assert_seat(server: &Server, show: &str, seat: &str, want: &str) {
    let started = Instant::now();
    loop {
        let status = seat_status(server, show, seat).await;
        if status == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "seat {seat} is {status}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_test_token_ends_in_the_right_state() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let buyer = server.user(&[]).await;
        let show = small_show(&server, &organizer, 10).await;

        // tok_visa: paid within the wait, tickets issued, an order to read.
        let visa = hold(&server, &show, &buyer.token, &["1-A-1", "1-A-2"]).await;
        let (status, paid) = checkout(&server, &visa, &buyer.token, "tok_visa", 10).await;
        assert_eq!(status, 200, "{}: {paid}", backend.name);
        assert_eq!(paid["status"], "confirmed");
        let order_id = paid["order_id"].as_str().unwrap().to_string();
        let (status, order) = get(&server, &format!("/v1/orders/{order_id}"), &buyer.token).await;
        assert_eq!(status, 200, "{order}");
        assert_eq!(order["status"], "paid");
        assert_eq!(order["reservation_id"], visa.as_str());
        assert_eq!(
            order["total"],
            json!({"amount": "50.00", "currency": "EUR"})
        );
        let tickets = order["tickets"].as_array().unwrap();
        assert_eq!(tickets.len(), 2);
        assert!(
            tickets
                .iter()
                .all(|t| t["code"].as_str().unwrap().len() >= 32)
        );
        assert_seat(&server, &show, "1-A-1", "sold").await;
        // Paying again is refused: the reservation is no longer held.
        let (status, again) = checkout(&server, &visa, &buyer.token, "tok_visa", 1).await;
        assert_eq!(
            (status, again["code"].as_str()),
            (409, Some("reservation_not_held"))
        );

        // tok_declined: 402 and the seat is free again.
        let declined = hold(&server, &show, &buyer.token, &["1-A-3"]).await;
        let (status, body) = checkout(&server, &declined, &buyer.token, "tok_declined", 10).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (402, Some("payment_declined")),
            "{body}"
        );
        reservation_reaches(
            &server,
            &declined,
            &buyer.token,
            "payment_failed",
            Duration::from_secs(1),
        )
        .await;
        assert_seat(&server, &show, "1-A-3", "available").await;

        // tok_timeout: pending past the wait; voided at the deadline, then released.
        let timeout = hold(&server, &show, &buyer.token, &["1-A-4"]).await;
        let (status, body) = checkout(&server, &timeout, &buyer.token, "tok_timeout", 1).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (202, Some("payment_pending")),
            "{body}"
        );
        assert_seat(&server, &show, "1-A-4", "held").await;

        // tok_late_visa: captured just after the deadline, cannot be voided: tickets.
        let late = hold(&server, &show, &buyer.token, &["1-A-5"]).await;
        let (status, _) = checkout(&server, &late, &buyer.token, "tok_late_visa", 1).await;
        assert_eq!(status, 202);

        // tok_dup_visa: three deliveries and a stale failure, one set of tickets.
        let dup = hold(&server, &show, &buyer.token, &["1-A-6"]).await;
        let (status, body) = checkout(&server, &dup, &buyer.token, "tok_dup_visa", 10).await;
        assert_eq!(status, 200, "{body}");

        let limit = Duration::from_secs(15);
        let voided = reservation_reaches(&server, &timeout, &buyer.token, "expired", limit).await;
        assert_eq!(voided["payment"]["status"], "timed_out");
        assert_seat(&server, &show, "1-A-4", "available").await;
        let late_paid = reservation_reaches(&server, &late, &buyer.token, "confirmed", limit).await;
        assert!(late_paid["order_id"].is_string());
        // Let the duplicate deliveries of tok_dup_visa arrive before the log is read.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let (status, orders) = get(&server, "/v1/orders", &buyer.token).await;
        assert_eq!(status, 200);
        assert_eq!(orders["data"].as_array().unwrap().len(), 3, "{orders}");
        let (_, notes) = get(&server, "/v1/me/notifications", &buyer.token).await;
        let kinds: Vec<&str> = notes["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "order_confirmed").count(),
            3,
            "{kinds:?}"
        );
        assert!(kinds.contains(&"payment_failed"), "{kinds:?}");

        let store = open(&backend.url).await;
        let show_id: ShowId = show.parse().unwrap();
        let log = partition(&store, show_id).await;
        check_log(show_id, &log).unwrap();
        let report = check_payments(&log, Some(chrono::Utc::now())).unwrap();
        assert_eq!(report.count(|t| t.issued == 1), 3);
        assert_eq!(report.count(|t| t.failed == 1), 1);
        assert_eq!(report.count(|t| t.timed_out == 1), 1);
        server.stop().await;
    }
}

/// Signs `body` as the provider would, at `t`, with `secret`.
fn signed(server: &Server, secret: &[u8], t: i64, body: &str) -> reqwest::RequestBuilder {
    server
        .client
        .post(format!("{}/v1/webhooks/payments", server.base))
        .header("content-type", "application/json")
        .header(
            signature::SIGNATURE_HEADER,
            signature::sign(secret, t, body.as_bytes()),
        )
        .body(body.to_string())
}

fn succeeded_event(event_id: &str, intent: &str, reservation: &str) -> String {
    json!({
        "id": event_id,
        "type": "payment_intent.succeeded",
        "created": chrono::Utc::now().timestamp(),
        "data": {"object": {
            "id": intent, "status": "succeeded", "amount": 2500, "currency": "eur",
            "payment_token": "tok_visa", "created": chrono::Utc::now().timestamp(),
            "metadata": {"reservation_id": reservation}
        }}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_stale_and_replayed_webhooks_change_nothing() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let secret = server
            .config
            .payment_webhook_secret
            .clone()
            .expect("tests configure the webhook secret")
            .into_bytes();
        let organizer = server.user(&[Role::Organizer]).await.token;
        let buyer = server.user(&[]).await;
        let show = small_show(&server, &organizer, 4).await;
        // A payment that never settles on its own: only a lie could "confirm" it.
        let pending = hold(&server, &show, &buyer.token, &["1-A-1"]).await;
        let (status, _) = checkout(&server, &pending, &buyer.token, "tok_timeout", 0).await;
        assert_eq!(status, 202);
        let now = chrono::Utc::now().timestamp();
        let body = succeeded_event("evt_forged_1", "pi_forged", &pending);

        let (status, problem) = json_of(
            server
                .client
                .post(format!("{}/v1/webhooks/payments", server.base))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_signature")),
            "{}",
            backend.name
        );
        for (what, request) in [
            (
                "wrong secret",
                signed(&server, b"not-the-secret", now, &body),
            ),
            ("stale", signed(&server, &secret, now - 301, &body)),
            (
                "tampered",
                signed(&server, &secret, now, &body).body(body.replace("2500", "1")),
            ),
        ] {
            let (status, problem) = json_of(request.send().await.unwrap()).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (400, Some("invalid_signature")),
                "{what}"
            );
        }
        // A correctly signed but false claim: accepted (200), stored once, and it
        // changes nothing, because the saga asks the provider instead of believing it.
        let (status, ack) =
            json_of(signed(&server, &secret, now, &body).send().await.unwrap()).await;
        assert_eq!(
            (status, ack["duplicate"].as_bool()),
            (200, Some(false)),
            "{ack}"
        );
        let (status, ack) =
            json_of(signed(&server, &secret, now, &body).send().await.unwrap()).await;
        assert_eq!(
            (status, ack["duplicate"].as_bool()),
            (200, Some(true)),
            "{ack}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, r) = get(
            &server,
            &format!("/v1/reservations/{pending}"),
            &buyer.token,
        )
        .await;
        assert_eq!(r["status"], "payment_pending", "{r}");
        assert_seat(&server, &show, "1-A-1", "held").await;
        // Malformed JSON with a good signature is refused as such.
        let (status, problem) = json_of(
            signed(&server, &secret, now, "{not json")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_payload"))
        );
        // The deadline passes: voided and released, as if no webhook had come.
        reservation_reaches(
            &server,
            &pending,
            &buyer.token,
            "expired",
            Duration::from_secs(15),
        )
        .await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_b_cannot_touch_buyer_a_things_and_refunds_need_staff() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let other_organizer = server.user(&[Role::Organizer]).await.token;
        let support = server.user(&[Role::Support]).await.token;
        let a: TestUser = server.user(&[]).await;
        let b: TestUser = server.user(&[]).await;
        let show = small_show(&server, &organizer, 6).await;

        let held = hold(&server, &show, &a.token, &["1-A-1"]).await;
        // B can neither pay for nor cancel A's hold: it does not exist for B.
        let (status, body) = checkout(&server, &held, &b.token, "tok_visa", 1).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("reservation_not_found")),
            "{}",
            backend.name
        );
        let (status, _) = json_of(
            server
                .req(M::DELETE, &format!("/v1/reservations/{held}"), &b.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 404);
        // Support may read it but not pay for it.
        let (status, _) = checkout(&server, &held, &support, "tok_visa", 1).await;
        assert_eq!(status, 403);

        let (status, paid) = checkout(&server, &held, &a.token, "tok_visa", 10).await;
        assert_eq!(status, 200, "{paid}");
        let order = paid["order_id"].as_str().unwrap().to_string();
        let refund = format!("/v1/orders/{order}/refund");
        let (status, _) = get(&server, &format!("/v1/orders/{order}"), &b.token).await;
        assert_eq!(status, 404);
        let (_, listed) = get(&server, "/v1/orders", &b.token).await;
        assert_eq!(listed["data"], json!([]));
        let post = |token: &str| server.req(M::POST, &refund, token).json(&json!({})).send();
        assert_eq!(post(&b.token).await.unwrap().status(), 403);
        // The buyer who paid may not refund it themselves; another show's organizer
        // does not even see it.
        assert_eq!(post(&a.token).await.unwrap().status(), 403);
        assert_eq!(post(&other_organizer).await.unwrap().status(), 404);
        // Support reads every order and refunds it; the seat returns to sale.
        let (status, _) = get(&server, &format!("/v1/orders/{order}"), &support).await;
        assert_eq!(status, 200);
        let (status, refunded) = json_of(post(&support).await.unwrap()).await;
        assert_eq!(
            (status, refunded["status"].as_str()),
            (200, Some("refunded")),
            "{refunded}"
        );
        let (status, again) = json_of(post(&organizer).await.unwrap()).await;
        assert_eq!((status, again["status"].as_str()), (200, Some("refunded")));
        assert_seat(&server, &show, "1-A-1", "available").await;
        let (_, order_now) = get(&server, &format!("/v1/orders/{order}"), &a.token).await;
        assert_eq!(order_now["status"], "refunded");
        let (_, r) = get(&server, &format!("/v1/reservations/{held}"), &a.token).await;
        assert_eq!(r["status"], "refunded");

        let store = open(&backend.url).await;
        let show_id: ShowId = show.parse().unwrap();
        let log = partition(&store, show_id).await;
        assert_eq!(
            log.iter()
                .filter(|e| e.event_type == "RefundIssued")
                .count(),
            1
        );
        check_payments(&log, Some(chrono::Utc::now())).unwrap();
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waitlist_offer_is_notified_and_paid_like_any_reservation() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let a = server.user(&[]).await;
        let b = server.user(&[]).await;
        let show = small_show(&server, &organizer, 1).await;
        let held = hold(&server, &show, &a.token, &["1-A-1"]).await;
        let (status, entry) = json_of(
            server
                .req(M::POST, &format!("/v1/shows/{show}/waitlist"), &b.token)
                .json(&json!({"quantity": 1}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{entry}");
        let entry = entry["entry_id"].as_str().unwrap().to_string();
        // A's payment is declined: the seat goes to B's offer, not back on sale.
        let (status, _) = checkout(&server, &held, &a.token, "tok_declined", 10).await;
        assert_eq!(status, 402, "{}", backend.name);
        let (_, waiting) = get(&server, &format!("/v1/waitlist/{entry}"), &b.token).await;
        assert_eq!(waiting["status"], "offered", "{waiting}");
        assert_seat(&server, &show, "1-A-1", "held").await;
        let offer = waiting["offer"]["reservation_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, notes) = get(&server, "/v1/me/notifications", &b.token).await;
        let first = &notes["data"][0];
        assert_eq!(first["kind"], "waitlist_offer", "{notes}");
        assert_eq!(first["data"]["reservation_id"], offer.as_str());
        // B pays for the offer like any reservation.
        let (status, paid) = checkout(&server, &offer, &b.token, "tok_visa", 10).await;
        assert_eq!(
            (status, paid["origin"].as_str()),
            (200, Some("waitlist")),
            "{paid}"
        );
        let (_, claimed) = get(&server, &format!("/v1/waitlist/{entry}"), &b.token).await;
        assert_eq!(claimed["status"], "claimed");
        assert_seat(&server, &show, "1-A-1", "sold").await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_show_refunds_every_paid_order() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let buyer = server.user(&[]).await;
        let show = small_show(&server, &organizer, 4).await;
        let mut orders = Vec::new();
        for seat in ["1-A-1", "1-A-2"] {
            let held = hold(&server, &show, &buyer.token, &[seat]).await;
            let (status, paid) = checkout(&server, &held, &buyer.token, "tok_visa", 10).await;
            assert_eq!(status, 200, "{paid}");
            orders.push(paid["order_id"].as_str().unwrap().to_string());
        }
        let open_hold = hold(&server, &show, &buyer.token, &["1-A-3"]).await;
        let (status, _) = json_of(
            server
                .req(M::POST, &format!("/v1/shows/{show}/cancel"), &organizer)
                .json(&json!({"reason": "the band is ill"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 202, "{}", backend.name);
        reservation_reaches(
            &server,
            &open_hold,
            &buyer.token,
            "cancelled",
            Duration::from_secs(5),
        )
        .await;
        for order in &orders {
            let started = Instant::now();
            loop {
                let (_, body) = get(&server, &format!("/v1/orders/{order}"), &buyer.token).await;
                if body["status"] == "refunded" {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{order} not refunded: {body}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let (_, notes) = get(&server, "/v1/me/notifications", &buyer.token).await;
        let refunds = notes["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == "order_refunded")
            .count();
        assert_eq!(refunds, 2, "{notes}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_cannot_be_paid() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let buyer = server.user(&[]).await;
        let mut body = boxoffice_tests::fixtures::one_row_show("Short holds", 2, "25.00");
        body["limits"] = json!({"hold_ttl_seconds": 10});
        let (status, show) = json_of(
            server
                .req(M::POST, "/v1/shows", &organizer)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201);
        let show = show["show_id"].as_str().unwrap().to_string();
        let held = hold(&server, &show, &buyer.token, &["1-A-1"]).await;
        reservation_reaches(
            &server,
            &held,
            &buyer.token,
            "expired",
            Duration::from_secs(15),
        )
        .await;
        let (status, problem) = checkout(&server, &held, &buyer.token, "tok_visa", 1).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (410, Some("hold_expired")),
            "{}",
            backend.name
        );
        assert_seat(&server, &show, "1-A-1", "available").await;
        let (_, notes) = get(&server, "/v1/me/notifications", &buyer.token).await;
        assert_eq!(notes["data"][0]["kind"], "hold_expired", "{notes}");
        server.stop().await;
    }
}

/// What a webhook receiver got: the signature header, the notification id header, the
/// body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

async fn receiver() -> (String, Received) {
    use axum::http::HeaderMap;
    let got: Received = Default::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let store = store.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                store.lock().unwrap().push((
                    header("boxoffice-signature"),
                    header("boxoffice-notification-id"),
                    body,
                ));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_webhook_receives_signed_notifications() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let buyer = server.user(&[]).await;
        let other = server.user(&[]).await;
        let (url, got) = receiver().await;
        let secret = "buyer-webhook-secret-0001";

        let put = |token: &str, body: Value| {
            server
                .req(M::PUT, "/v1/me/webhook", token)
                .json(&body)
                .send()
        };
        let (status, problem) = json_of(
            put(
                &buyer.token,
                json!({"url": "ftp://x.example/hook", "secret": secret}),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("validation_failed")),
            "{problem}"
        );
        let (status, problem) = json_of(
            put(&buyer.token, json!({"url": url, "secret": "short"}))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("validation_failed"))
        );
        let (status, set) = json_of(
            put(&buyer.token, json!({"url": url, "secret": secret}))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, set["url"].as_str()),
            (200, Some(url.as_str())),
            "{}",
            backend.name
        );
        let (status, shown) = get(&server, "/v1/me/webhook", &buyer.token).await;
        assert_eq!(status, 200);
        assert!(shown.get("secret").is_none(), "the secret is never shown");
        let (status, _) = get(&server, "/v1/me/webhook", &other.token).await;
        assert_eq!(status, 404, "another user's webhook is not theirs");

        let show = small_show(&server, &organizer, 2).await;
        let held = hold(&server, &show, &buyer.token, &["1-A-1"]).await;
        let (status, _) = checkout(&server, &held, &buyer.token, "tok_visa", 10).await;
        assert_eq!(status, 200);
        let started = Instant::now();
        let delivered = loop {
            if let Some(d) = got.lock().unwrap().first().cloned() {
                break d;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no delivery");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (signature_header, id, body) = delivered;
        signature::verify(
            secret.as_bytes(),
            Some(&signature_header),
            body.as_bytes(),
            chrono::Utc::now().timestamp(),
        )
        .expect("signed with the buyer's secret");
        let note: Value = serde_json::from_str(&body).unwrap();
        assert!(id.starts_with("ntf_"), "{id}");
        assert!(body.contains(&id), "{body}");
        assert!(body.contains("order_confirmed"), "{note}");

        let removed = server
            .req(M::DELETE, "/v1/me/webhook", &buyer.token)
            .send()
            .await
            .unwrap();
        assert_eq!(removed.status(), 200);
        let again = server
            .req(M::DELETE, "/v1/me/webhook", &buyer.token)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 404);
        server.stop().await;
    }
}
