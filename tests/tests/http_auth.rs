//! Auth over real HTTP: registration, tokens, roles and ownership; and a matrix generated
//! from the OpenAPI document: every kind of bad token, and every role, on every operation.
//!
//! The matrix takes its operations, whether each needs a token, and the roles each allows
//! from `/openapi.json` (the `bearer_auth` security requirement and the `x-roles`
//! extension), so a new route is in it as soon as it is routed (`http_openapi.rs` proves
//! the document has every route). A secured operation without `x-roles`, a path parameter
//! this file has no value for, or a body without an example in the document fails it:
//! the new route's expectations have to be written down before it passes.

use boxoffice_api::auth::Role;
use boxoffice_tests::backends;
use boxoffice_tests::http::{Server, TestUser};
use boxoffice_tests::openapi::{Operation, operations};
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

        // A token within the leeway still works (clocks drift a little). Every kind of
        // bad token on every operation is in `bad_tokens_and_wrong_roles_on_every_operation`.
        let now = chrono::Utc::now().timestamp();
        let fresh = token(
            &server.jwt_secret,
            json!({"sub": other.user_id, "iss": "boxoffice", "aud": "boxoffice-api",
                   "exp": now - 2, "iat": now, "roles": ["buyer"]}),
            jsonwebtoken::Algorithm::HS256,
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

/// Every kind of token that must be refused, with what makes it bad.
fn bad_tokens(server: &Server, user_id: &str) -> Vec<(&'static str, String)> {
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, iss: &str, aud: &str| {
        json!({"sub": user_id, "iss": iss, "aud": aud, "exp": exp, "iat": now,
               "roles": ["buyer", "organizer", "support", "auditor", "admin"]})
    };
    let hs = jsonwebtoken::Algorithm::HS256;
    let secret = &server.jwt_secret;
    vec![
        ("malformed", "not-a-token".to_string()),
        (
            "forged (signed with another secret)",
            token(
                "another-secret-that-is-long-enough-0000",
                claims(now + 600, "boxoffice", "boxoffice-api"),
                hs,
            ),
        ),
        (
            "expired",
            token(secret, claims(now - 60, "boxoffice", "boxoffice-api"), hs),
        ),
        (
            "wrong audience",
            token(secret, claims(now + 600, "boxoffice", "someone-else"), hs),
        ),
        (
            "wrong issuer",
            token(secret, claims(now + 600, "elsewhere", "boxoffice-api"), hs),
        ),
        (
            "other algorithm",
            token(
                secret,
                claims(now + 600, "boxoffice", "boxoffice-api"),
                jsonwebtoken::Algorithm::HS512,
            ),
        ),
        (
            "no subject",
            token(
                secret,
                json!({"iss": "boxoffice", "aud": "boxoffice-api", "exp": now + 600, "roles": ["admin"]}),
                hs,
            ),
        ),
    ]
}

/// The objects the matrix's requests name, made by the test.
struct Fixture {
    show_id: String,
    reservation_id: String,
}

impl Fixture {
    /// The value for a path parameter, and what an authorized caller's answer shows:
    ///
    /// - `show_id`: a real show (the contract's example) organised by the matrix's
    ///   organizer, so its organizer and an admin pass both the role and the ownership
    ///   check of the management operations; other roles are refused by the role check.
    /// - `reservation_id`: a real seat held by the matrix's buyer. The owner, support and
    ///   admin read it (200) or cancel it (200, then 409 once cancelled); the organizer and
    ///   the auditor get 404, as another buyer's reservation is hidden, not forbidden.
    /// - `tier_id`: `A`, a tier of the show.
    /// - `entry_id`: a well-formed id that names no waitlist entry: 404
    ///   `waitlist_entry_not_found` for any signed-in caller, which is only reached once
    ///   the token and the role check have passed.
    /// - `order_id`: a well-formed id that names no order: 404 `order_not_found` for
    ///   every caller past the role check (a refund's role check refuses buyers and
    ///   auditors first, with 403, whatever the order).
    fn path_value(&self, parameter: &str, op: &Operation) -> String {
        match parameter {
            "show_id" => self.show_id.clone(),
            "reservation_id" => self.reservation_id.clone(),
            "tier_id" => "A".to_string(),
            "entry_id" => format!("wle_{}", uuid::Uuid::now_v7().simple()),
            "order_id" => format!("ord_{}", uuid::Uuid::now_v7().simple()),
            "ticket_id" => format!("tkt_{}", uuid::Uuid::now_v7().simple()),
            other => panic!(
                "{} {}: no value for the path parameter `{other}`; add one to \
                 `Fixture::path_value` in tests/tests/http_auth.rs",
                op.method, op.path
            ),
        }
    }

    fn url_path(&self, op: &Operation) -> String {
        let mut path = op.path.clone();
        for parameter in op.path_parameters() {
            path = path.replace(
                &format!("{{{parameter}}}"),
                &self.path_value(&parameter, op),
            );
        }
        path
    }
}

/// Sends `op` with `token` (if any) and the document's example body; returns the status
/// and, for an error, the problem's `code` and content type. A success body is not read
/// (an event stream never ends).
async fn send(
    server: &Server,
    fixture: &Fixture,
    doc: &Value,
    op: &Operation,
    token: Option<&str>,
) -> (u16, String, String) {
    let method = M::from_bytes(op.method.as_bytes()).unwrap();
    let url = format!("{}{}", server.base, fixture.url_path(op));
    let mut request = server.client.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if op.spec.get("requestBody").is_some() {
        let body = op.body_example(doc).unwrap_or_else(|| {
            panic!(
                "{} {}: the document gives no example body to send",
                op.method, op.path
            )
        });
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status < 400 {
        return (status, String::new(), String::new());
    }
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let (_, code, _) = code(response).await;
    (status, code, content_type)
}

/// Whether a user with `role` (and buyer, as every user) passes an operation allowing
/// `allowed` (admin passes every role check) and is not among the roles `forbidden` on
/// objects that are not theirs (the fixture's objects are never the role users' own but
/// for the buyer's reservation, and `x-forbidden-roles` may not name buyer).
fn passes(role: Role, allowed: &[String], forbidden: &[String]) -> bool {
    let role_check =
        role == Role::Admin || allowed.iter().any(|a| a == "buyer" || a == role.as_str());
    role_check && !forbidden.iter().any(|f| f == role.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_wrong_roles_on_every_operation() {
    for backend in backends().await {
        let server = Server::start(&backend.url).await;
        let doc = server.openapi().await;
        let ops = operations(&doc);
        assert!(ops.len() >= 19, "{} operations", ops.len());

        let organizer = server.user(&[Role::Organizer]).await;
        let buyer = server.user(&[]).await;
        let show: Value = server
            .req(M::POST, "/v1/shows", &organizer.token)
            .json(&boxoffice_tests::fixtures::contract_show())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let show_id = show["show_id"].as_str().unwrap().to_string();
        let hold: Value = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &buyer.token)
            .json(&json!({"seats": ["101-B-30"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let fixture = Fixture {
            show_id,
            reservation_id: hold["reservation_id"].as_str().unwrap().to_string(),
        };
        let users: Vec<(Role, TestUser)> = vec![
            (Role::Buyer, buyer),
            (Role::Organizer, organizer),
            (Role::Support, server.user(&[Role::Support]).await),
            (Role::Auditor, server.user(&[Role::Auditor]).await),
            (Role::Admin, server.user(&[Role::Admin]).await),
        ];
        let bad = bad_tokens(&server, &users[0].1.user_id);

        let mut secured = 0;
        for op in &ops {
            let name = format!("{} {} ({})", op.method, op.path, backend.name);
            if !op.secured() {
                // A public operation answers a caller without a token on its merits.
                let (status, code, _) = send(&server, &fixture, &doc, op, None).await;
                assert!(
                    status < 500 && code != "unauthorized" && status != 403,
                    "{name} without a token: {status} {code}"
                );
                continue;
            }
            secured += 1;
            let allowed = op
                .roles()
                .unwrap_or_else(|| panic!("{name} needs a token but its entry has no x-roles"));
            let forbidden = op.forbidden_roles();
            assert!(
                !forbidden.iter().any(|f| f == "buyer"),
                "{name}: x-forbidden-roles names buyer, the fixture objects' owner"
            );

            // No token, and every kind of bad token: 401 `unauthorized`, problem+json.
            let (status, code, content_type) = send(&server, &fixture, &doc, op, None).await;
            assert_eq!(
                (status, code.as_str(), content_type.as_str()),
                (401, "unauthorized", "application/problem+json"),
                "{name} without a token"
            );
            for (what, token) in &bad {
                let (status, code, content_type) =
                    send(&server, &fixture, &doc, op, Some(token)).await;
                assert_eq!(
                    (status, code.as_str(), content_type.as_str()),
                    (401, "unauthorized", "application/problem+json"),
                    "{name} with a {what} token"
                );
            }

            // Each role: refused with 403 `forbidden` exactly where `x-roles` does not
            // allow it or `x-forbidden-roles` names it; otherwise past the token and the
            // role check (any other answer, as the fixture's ids make it, but never 401,
            // 403 or a server error).
            for (role, user) in &users {
                let (status, code, _) = send(&server, &fixture, &doc, op, Some(&user.token)).await;
                if passes(*role, &allowed, &forbidden) {
                    assert!(
                        status != 401 && status != 403 && status < 500,
                        "{name} as {}: {status} {code} (x-roles {allowed:?})",
                        role.as_str()
                    );
                } else {
                    assert_eq!(
                        (status, code.as_str()),
                        (403, "forbidden"),
                        "{name} as {} (x-roles {allowed:?}, x-forbidden-roles {forbidden:?})",
                        role.as_str()
                    );
                }
            }
        }
        // The matrix reached the operations that need a token (a document without
        // security requirements would make it pass vacuously).
        assert!(secured >= 11, "{secured} secured operations");
        server.stop().await;
    }
}
