//! The seat-map page's HTTP side, without a browser: the page addresses answer the same
//! HTML, assets have their media types and entity tags (304 when unchanged), unknown
//! files and other methods are problems like anywhere else; and a ticket's QR code is an
//! SVG for whoever may read the order, and nobody else.

use boxoffice_tests::fixtures::one_row_show;
use boxoffice_tests::fresh_sqlite_url;
use boxoffice_tests::http::Server;
use reqwest::Method as M;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let server = Server::start(&fresh_sqlite_url()).await;
    let get = |path: &str| server.client.get(format!("{}{path}", server.base)).send();

    let mut html = None;
    for path in [
        "/",
        "/shows/shw_0192f0c4a3b27e61a0c3d0e5b0a1c2d3",
        "/organizer/shows/x",
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=utf-8",
            "{path}"
        );
        let body = response.text().await.unwrap();
        assert!(
            body.contains("<script type=\"module\" src=\"/assets/app.js\">"),
            "{body}"
        );
        if let Some(first) = &html {
            assert_eq!(first, &body, "{path} is the same page");
        }
        html = Some(body);
    }

    for (file, media) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("seatmap.js", "text/javascript; charset=utf-8"),
        ("views.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let response = get(&format!("/assets/{file}")).await.unwrap();
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(response.headers()["content-type"], media, "{file}");
        assert_eq!(response.headers()["cache-control"], "no-cache", "{file}");
        let etag = response.headers()["etag"].to_str().unwrap().to_string();
        assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
        assert!(!response.bytes().await.unwrap().is_empty());
        let again = server
            .client
            .get(format!("{}/assets/{file}", server.base))
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file}");
        assert!(again.bytes().await.unwrap().is_empty());
    }

    // Not a file of the page, the HTML under another name, or another method: problems.
    for path in [
        "/assets/nope.js",
        "/assets/index.html",
        "/assets/..%2Fapi%2Fsrc%2Flib.rs",
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let post = server
        .client
        .post(format!("{}/shows/x", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_qr_code_is_an_svg_for_its_order_readers_only() {
    let server = Server::start(&fresh_sqlite_url()).await;
    let organizer = server.user(&[boxoffice_api::auth::Role::Organizer]).await;
    let buyer = server.user(&[]).await;
    let stranger = server.user(&[]).await;
    let show: Value = server
        .req(M::POST, "/v1/shows", &organizer.token)
        .json(&one_row_show("QR night", 4, "10.00"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let show_id = show["show_id"].as_str().unwrap();
    let hold: Value = server
        .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer.token)
        .json(&json!({"seats": ["1-A-1"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paid: Value = server
        .req(
            M::POST,
            &format!(
                "/v1/reservations/{}/checkout?wait_seconds=10",
                hold["reservation_id"].as_str().unwrap()
            ),
            &buyer.token,
        )
        .json(&json!({"payment_token": "tok_visa"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order_id = paid["order_id"].as_str().expect("paid").to_string();
    let order: Value = server
        .req(M::GET, &format!("/v1/orders/{order_id}"), &buyer.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = order["tickets"][0]["ticket_id"].as_str().unwrap();
    let path = format!("/v1/orders/{order_id}/tickets/{ticket}/qr.svg");

    for reader in [&buyer, &organizer] {
        let response = server
            .req(M::GET, &path, &reader.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "image/svg+xml");
        assert_eq!(response.headers()["cache-control"], "private, no-store");
        let svg = response.text().await.unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
        // A QR code of a ~40-character code is at least version 3: many dark modules.
        assert!(svg.len() > 1_000, "{svg}");
    }
    let response = server
        .req(M::GET, &path, &stranger.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "order_not_found");
    let response = server
        .req(
            M::GET,
            &format!("/v1/orders/{order_id}/tickets/tkt_0192f0c4a3b27e61a0c3d0e5b0a1c2d3/qr.svg"),
            &buyer.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "ticket_not_found");
    let anonymous = server
        .client
        .get(format!("{}{path}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    server.stop().await;
}
