//! The waitlist over HTTP: joining a sold-out show, places in line, an offer made when
//! seats are released (a reservation with origin "waitlist"), leaving passes it on.

use boxoffice_api::auth::Role;
use boxoffice_tests::backends;
use boxoffice_tests::http::Server;
use reqwest::Method as M;
use serde_json::{Value, json};

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_seats_are_offered_to_the_line_in_order() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let organizer = server.user(&[Role::Organizer]).await.token;
        let (a, b, c) = (
            server.user(&[]).await.token,
            server.user(&[]).await.token,
            server.user(&[]).await.token,
        );
        let show: Value = server
            .req(M::POST, "/v1/shows", &organizer)
            .json(&boxoffice_tests::fixtures::one_row_show(
                "Tiny room",
                2,
                "15.00",
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = show["show_id"].as_str().unwrap().to_string();
        let waitlist = format!("/v1/shows/{id}/waitlist");

        // While seats are free, joining is refused: hold them instead.
        let (status, body) = json_of(
            server
                .req(M::POST, &waitlist, &b)
                .json(&json!({"quantity": 1}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (409, "seats_available"),
            "{}",
            backend.name
        );

        let (_, held) = json_of(
            server
                .req(M::POST, &format!("/v1/shows/{id}/holds"), &a)
                .json(&json!({"seats": ["1-A-1", "1-A-2"]}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let (status, entry_b) = json_of(
            server
                .req(M::POST, &waitlist, &b)
                .json(&json!({"quantity": 2}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201);
        assert_eq!(
            (
                entry_b["status"].as_str().unwrap(),
                entry_b["position"].as_u64().unwrap()
            ),
            ("waiting", 1)
        );
        let (_, entry_c) = json_of(
            server
                .req(M::POST, &waitlist, &c)
                .json(&json!({"quantity": 1}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(entry_c["position"], 2);
        let (status, body) = json_of(
            server
                .req(M::POST, &waitlist, &b)
                .json(&json!({"quantity": 1}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (409, "already_waiting")
        );
        let (status, _) = json_of(
            server
                .req(M::POST, &waitlist, &c)
                .json(&json!({"quantity": 0}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 422);

        let b_entry = format!("/v1/waitlist/{}", entry_b["entry_id"].as_str().unwrap());
        let c_entry = format!("/v1/waitlist/{}", entry_c["entry_id"].as_str().unwrap());
        let (status, body) = json_of(server.req(M::GET, &b_entry, &c).send().await.unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (404, "waitlist_entry_not_found")
        );
        let (status, _) = json_of(
            server
                .req(
                    M::GET,
                    "/v1/waitlist/wle_00000000000000000000000000000001",
                    &b,
                )
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 404);

        // The hold is cancelled: the first in line who fits gets the seats as an offer.
        let rsv = held["reservation_id"].as_str().unwrap();
        assert_eq!(
            server
                .req(M::DELETE, &format!("/v1/reservations/{rsv}"), &a)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let (_, offered) = json_of(server.req(M::GET, &b_entry, &b).send().await.unwrap()).await;
        assert_eq!(offered["status"], "offered", "{}: {offered}", backend.name);
        let offer = offered["offer"]["reservation_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, reservation) = json_of(
            server
                .req(M::GET, &format!("/v1/reservations/{offer}"), &b)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (
                reservation["origin"].as_str().unwrap(),
                reservation["status"].as_str().unwrap()
            ),
            ("waitlist", "held")
        );
        assert_eq!(reservation["seats"], json!(["1-A-1", "1-A-2"]));
        // Nobody else can take those seats meanwhile.
        let (status, _) = json_of(
            server
                .req(M::POST, &format!("/v1/shows/{id}/holds"), &c)
                .json(&json!({"seats": ["1-A-1"]}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 409);

        // B leaves: the offer is cancelled and passes to C, who fits.
        let (status, left) =
            json_of(server.req(M::DELETE, &b_entry, &b).send().await.unwrap()).await;
        assert_eq!((status, left["status"].as_str().unwrap()), (200, "left"));
        let (_, c_now) = json_of(server.req(M::GET, &c_entry, &c).send().await.unwrap()).await;
        assert_eq!(c_now["status"], "offered", "{}: {c_now}", backend.name);
        assert_eq!(c_now["position"], 1);
        let (status, body) =
            json_of(server.req(M::DELETE, &b_entry, &b).send().await.unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (409, "waitlist_entry_closed")
        );
        server.stop().await;
    }
}
