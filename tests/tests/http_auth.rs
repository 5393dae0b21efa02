//! Auth over real HTTP: registration, tokens, roles and ownership, and every kind of bad
//! token on the routes that need one.

use boxoffice_api::auth::Role;
use boxoffice_tests::backends;
use boxoffice_tests::http::Server;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::Method as M;
use serde_json::{Value, json};

async fn code(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["code"].as_str().unwrap_or_default().to_string(),
        body,
    )
}

fn token(secret: &str, claims: Value, alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_tokens_roles_and_ownership() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let url = |p: &str| format!("{}{p}", server.base);

        // Register, then sign in.
        let email = format!("Ana.{}@Example.test", uuid::Uuid::now_v7().simple());
        let registered = server
            .client
            .post(url("/v1/auth/register"))
            .json(&json!({"email": email, "password": "longenough", "display_name": "Ana"}))
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), 201, "{}", backend.name);
        let user: Value = registered.json().await.unwrap();
        assert_eq!(user["roles"], json!(["buyer"]));
        assert_eq!(user["email"], email.to_lowercase());
        assert!(user["user_id"].as_str().unwrap().starts_with("usr_"));
        let again = server
            .client
            .post(url("/v1/auth/register"))
            .json(&json!({"email": email.to_uppercase(), "password": "longenough"}))
            .send()
            .await
            .unwrap();
        assert_eq!(code(again).await.1, "email_taken");
        let (status, c, body) = code(
            server
                .client
                .post(url("/v1/auth/register"))
                .json(&json!({"email": "not-an-email", "password": "short"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, c.as_str()), (422, "validation_failed"));
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["email", "password"]);

        let signed_in = server
            .client
            .post(url("/v1/auth/token"))
            .json(&json!({"email": email, "password": "longenough"}))
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), 200);
        let signed_in: Value = signed_in.json().await.unwrap();
        assert_eq!(signed_in["token_type"], "Bearer");
        assert_eq!(signed_in["expires_in"], 900);
        let buyer = signed_in["access_token"].as_str().unwrap().to_string();
        for wrong in [
            json!({"email": email, "password": "wrong-password"}),
            json!({"email": "nobody@example.test", "password": "longenough"}),
        ] {
            let (status, c, _) = code(
                server
                    .client
                    .post(url("/v1/auth/token"))
                    .json(&wrong)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!((status, c.as_str()), (401, "invalid_credentials"));
        }

        // Roles: a buyer cannot create a show; an organizer can; every user can hold.
        let (status, c, _) = code(
            server
                .req(M::POST, "/v1/shows", &buyer)
                .json(&boxoffice_tests::fixtures::one_row_show(
                    "Auth night",
                    20,
                    "10.00",
                ))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, c.as_str()), (403, "forbidden"));
        let organizer = server.user(&[Role::Organizer]).await;
        let show: Value = server
            .req(M::POST, "/v1/shows", &organizer.token)
            .json(&boxoffice_tests::fixtures::one_row_show(
                "Auth night",
                20,
                "10.00",
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let show_id = show["show_id"].as_str().unwrap().to_string();
        let holds = format!("/v1/shows/{show_id}/holds");
        let hold = server
            .req(M::POST, &holds, &buyer)
            .json(&json!({"seats": ["1-A-1"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(hold.status(), 201);
        let rsv = hold.json::<Value>().await.unwrap()["reservation_id"]
            .as_str()
            .unwrap()
            .to_string();
        let reservation = format!("/v1/reservations/{rsv}");

        // Ownership: another buyer and an organizer get 404; support reads and cancels.
        let other = server.user(&[]).await;
        assert_eq!(
            code(
                server
                    .req(M::GET, &reservation, &other.token)
                    .send()
                    .await
                    .unwrap()
            )
            .await
            .1,
            "reservation_not_found"
        );
        assert_eq!(
            code(
                server
                    .req(M::DELETE, &reservation, &other.token)
                    .send()
                    .await
                    .unwrap()
            )
            .await
            .1,
            "reservation_not_found"
        );
        assert_eq!(
            code(
                server
                    .req(M::GET, &reservation, &organizer.token)
                    .send()
                    .await
                    .unwrap()
            )
            .await
            .1,
            "reservation_not_found"
        );
        let support = server.user(&[Role::Support]).await;
        assert_eq!(
            server
                .req(M::GET, &reservation, &support.token)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let admin = server.user(&[Role::Admin]).await;
        assert_eq!(
            server
                .req(M::GET, &reservation, &admin.token)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            server
                .req(M::DELETE, &reservation, &support.token)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );

        // Bad tokens on every route that needs one are 401, never anything else.
        let now = chrono::Utc::now().timestamp();
        let sub = other.user_id.clone();
        let claims = |exp: i64, iss: &str, aud: &str| json!({"sub": sub, "iss": iss, "aud": aud, "exp": exp, "iat": now, "roles": ["buyer", "organizer"]});
        let hs = jsonwebtoken::Algorithm::HS256;
        let bad_tokens = vec![
            ("malformed", "not-a-token".to_string()),
            (
                "forged",
                token(
                    "another-secret-that-is-long-enough-0000",
                    claims(now + 600, "boxoffice", "boxoffice-api"),
                    hs,
                ),
            ),
            (
                "expired",
                token(
                    &server.jwt_secret,
                    claims(now - 60, "boxoffice", "boxoffice-api"),
                    hs,
                ),
            ),
            (
                "wrong audience",
                token(
                    &server.jwt_secret,
                    claims(now + 600, "boxoffice", "someone-else"),
                    hs,
                ),
            ),
            (
                "wrong issuer",
                token(
                    &server.jwt_secret,
                    claims(now + 600, "elsewhere", "boxoffice-api"),
                    hs,
                ),
            ),
            (
                "other algorithm",
                token(
                    &server.jwt_secret,
                    claims(now + 600, "boxoffice", "boxoffice-api"),
                    jsonwebtoken::Algorithm::HS512,
                ),
            ),
            (
                "no subject",
                token(
                    &server.jwt_secret,
                    json!({"iss": "boxoffice", "aud": "boxoffice-api", "exp": now + 600, "roles": ["admin"]}),
                    hs,
                ),
            ),
        ];
        let routes: Vec<(M, String, Option<Value>)> = vec![
            (
                M::POST,
                "/v1/shows".to_string(),
                Some(boxoffice_tests::fixtures::one_row_show(
                    "Auth night",
                    20,
                    "10.00",
                )),
            ),
            (M::POST, holds.clone(), Some(json!({"seats": ["1-A-2"]}))),
            (M::GET, reservation.clone(), None),
            (M::DELETE, reservation.clone(), None),
        ];
        for (method, path, body) in &routes {
            let mut bare = server.client.request(method.clone(), url(path));
            if let Some(b) = body {
                bare = bare.json(b);
            }
            assert_eq!(
                code(bare.send().await.unwrap()).await.0,
                401,
                "{method} {path} without a token"
            );
            for (what, bad) in &bad_tokens {
                let mut request = server.req(method.clone(), path, bad);
                if let Some(b) = body {
                    request = request.json(b);
                }
                let (status, c, _) = code(request.send().await.unwrap()).await;
                assert_eq!(
                    (status, c.as_str()),
                    (401, "unauthorized"),
                    "{method} {path} with a {what} token"
                );
            }
        }
        // A token within the leeway still works (clocks drift a little).
        let fresh = token(
            &server.jwt_secret,
            claims(now - 2, "boxoffice", "boxoffice-api"),
            hs,
        );
        assert_eq!(
            server
                .req(M::POST, &holds, &fresh)
                .json(&json!({"seats": ["1-A-3"]}))
                .send()
                .await
                .unwrap()
                .status(),
            201
        );

        // `boxoffice user add` makes a staff user who can sign in with that role.
        let staff_email = format!("staff.{}@example.test", uuid::Uuid::now_v7().simple());
        let staff = boxoffice_api::add_user(
            &server.config,
            &staff_email,
            "staff-password".into(),
            None,
            &[Role::Organizer],
        )
        .await
        .unwrap();
        assert_eq!(staff.roles, ["buyer", "organizer"]);
        let staff_token: Value = server
            .client
            .post(url("/v1/auth/token"))
            .json(&json!({"email": staff_email, "password": "staff-password"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let created = server
            .req(
                M::POST,
                "/v1/shows",
                staff_token["access_token"].as_str().unwrap(),
            )
            .json(&boxoffice_tests::fixtures::one_row_show(
                "Auth night",
                20,
                "10.00",
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        server.stop().await;
    }
}
