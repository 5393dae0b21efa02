//! The OpenAPI document and the docs UI over real HTTP: `/openapi.json` is OpenAPI 3.1 and
//! documents every route the router has, with the right methods; `/docs` is a Swagger UI
//! that loads nothing from another origin; and, where schemathesis is installed, a
//! property-based run against the document finds no server error and no response that
//! does not match its schema.
//!
//! How an undocumented route is caught: the list of routes comes from the router the
//! server runs (`Application::registered_routes`, which reads axum's own route table), not
//! from the document or a hand-written list. A route added with a plain `.route(...)`, a
//! `nest`, a `merge` of an axum router, or a `routes!` call that puts a handler on a path
//! it does not document, is in that list and not in the document, and
//! `every_route_is_documented` fails naming it. (The api crate's unit test
//! `a_route_added_without_its_documentation_is_found` shows the same check failing on a
//! router with one such route added.)

use std::collections::BTreeSet;
use std::time::Duration;

use boxoffice_api::auth::Role;
use boxoffice_api::openapi::{DOC_ROUTES, undocumented_routes};
use boxoffice_api::web::PAGE_ROUTES;
use boxoffice_tests::http::Server;
use boxoffice_tests::openapi::{Operation, operations, resolve};
use boxoffice_tests::{fixtures, fresh_sqlite_url};
use serde_json::{Value, json};

/// The roles a token can carry.
const ROLES: [&str; 5] = ["buyer", "organizer", "support", "auditor", "admin"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented() {
    let server = Server::start(&fresh_sqlite_url()).await;
    let response = server
        .client
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = response.json().await.expect("the document is JSON");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Boxoffice");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let scheme = &doc["components"]["securitySchemes"]["bearer_auth"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"], &scheme["bearerFormat"]),
        (&json!("http"), &json!("bearer"), &json!("JWT"))
    );

    // Router → document: every route the router registers has its operation.
    let routes = &server.routes;
    assert!(
        routes
            .iter()
            .any(|r| r.method == "POST" && r.path == "/v1/shows"),
        "the router's routes could not be read: {routes:?}"
    );
    for path in DOC_ROUTES {
        assert!(
            routes.iter().any(|r| r.path == path),
            "{path} is not routed"
        );
    }
    // The seat-map page's routes are left out of the check, and only as GET routes.
    for path in PAGE_ROUTES {
        assert!(
            routes.iter().any(|r| r.path == path && r.method == "GET"),
            "{path} is not routed"
        );
        assert!(
            doc["paths"].get(path).is_none(),
            "{path} is a page, not an API operation"
        );
    }
    let missing = undocumented_routes(routes, &doc);
    assert!(
        missing.is_empty(),
        "routes without an operation in /openapi.json (register them with `routes!` and \
         a `#[utoipa::path]`): {missing:?}"
    );

    // Document → router: every operation is routed, with its method.
    let routed: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let ops = operations(&doc);
    for op in &ops {
        assert!(
            routed.contains(&(op.method.clone(), op.path.clone())),
            "{} {} is documented but not routed",
            op.method,
            op.path
        );
    }
    // The operations the contract names are all there (a sample that a broken
    // registration would lose).
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("POST", "/v1/auth/register"),
        ("POST", "/v1/auth/token"),
        ("GET", "/v1/shows"),
        ("POST", "/v1/shows"),
        ("GET", "/v1/shows/{show_id}/seatmap"),
        ("POST", "/v1/shows/{show_id}/holds"),
        ("GET", "/v1/reservations/{reservation_id}"),
        ("DELETE", "/v1/reservations/{reservation_id}"),
    ] {
        assert!(
            ops.iter().any(|o| o.method == method && o.path == path),
            "{method} {path} missing from the document"
        );
    }

    let mut ids = BTreeSet::new();
    for op in &ops {
        check_operation(&doc, op);
        assert!(ids.insert(op.id.clone()), "operationId {} twice", op.id);
    }
    server.stop().await;
}

/// What every operation's entry must say: an id, a tag, a summary, its path parameters,
/// a schema for every body, problem+json for every error, and its authorization.
fn check_operation(doc: &Value, op: &Operation) {
    let name = format!("{} {}", op.method, op.path);
    let spec = &op.spec;
    assert!(!op.id.is_empty(), "{name}: no operationId");
    assert!(
        spec["tags"].as_array().is_some_and(|t| !t.is_empty()),
        "{name}: no tag"
    );
    assert!(
        spec["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{name}: no summary"
    );
    let declared: BTreeSet<String> = spec["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "path")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let in_path: BTreeSet<String> = op.path_parameters().into_iter().collect();
    assert_eq!(declared, in_path, "{name}: path parameters");
    if let Some(body) = spec.get("requestBody") {
        let schema = &body["content"]["application/json"]["schema"];
        assert!(
            !schema.is_null(),
            "{name}: a request body without a JSON schema"
        );
        resolve(doc, schema);
    }
    let responses = spec["responses"].as_object().expect("responses");
    assert!(
        responses.keys().any(|s| s.starts_with('2')),
        "{name}: no success response"
    );
    for (status, response) in responses {
        let code: u16 = status.parse().expect("numeric statuses");
        let content = response["content"].as_object();
        if code >= 400 {
            let problem = &response["content"]["application/problem+json"]["schema"]["$ref"];
            assert_eq!(
                problem, "#/components/schemas/Problem",
                "{name} {status}: not problem+json"
            );
        } else if code != 304 {
            let content = content.unwrap_or_else(|| panic!("{name} {status}: no body"));
            for (media, entry) in content {
                assert!(
                    !entry["schema"].is_null(),
                    "{name} {status} {media}: no schema"
                );
                resolve(doc, &entry["schema"]);
            }
        }
    }
    if op.secured() {
        let roles = op.roles().unwrap_or_else(|| {
            panic!("{name} needs a token but has no x-roles naming the roles it allows")
        });
        assert!(!roles.is_empty(), "{name}: empty x-roles");
        for role in &roles {
            assert!(
                ROLES.contains(&role.as_str()),
                "{name}: unknown role {role}"
            );
        }
        for role in op.forbidden_roles() {
            assert!(
                ROLES.contains(&role.as_str()),
                "{name}: unknown role {role}"
            );
            assert!(
                responses.contains_key("403"),
                "{name}: x-forbidden-roles without a 403"
            );
        }
        assert!(responses.contains_key("401"), "{name}: no 401");
    } else {
        assert!(
            spec.get("x-roles").is_none() && spec.get("x-forbidden-roles").is_none(),
            "{name} has x-roles but no security requirement"
        );
    }
}

/// The scripts and stylesheets an HTML page loads.
fn assets(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (tag, attribute) in [("<script", "src="), ("<link", "href=")] {
        for element in html.split(tag).skip(1) {
            let element = &element[..element.find('>').unwrap_or(element.len())];
            if let Some(at) = element.find(attribute) {
                let rest = &element[at + attribute.len()..];
                let quote = rest.chars().next().unwrap();
                let value = rest[1..].split(quote).next().unwrap();
                found.push(value.to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_ui_is_served_from_the_binary() {
    let server = Server::start(&fresh_sqlite_url()).await;
    let docs = server
        .client
        .get(format!("{}/docs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    let page = docs.url().clone();
    assert_eq!(
        page.path(),
        "/docs/",
        "/docs redirects to the UI's own folder"
    );
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = docs.text().await.unwrap();
    let assets = assets(&html);
    assert!(
        assets.iter().any(|a| a.ends_with(".js")),
        "no script in the page: {html}"
    );
    for asset in &assets {
        assert!(
            !asset.starts_with("http:") && !asset.starts_with("https:") && !asset.starts_with("//"),
            "{asset} is loaded from another origin"
        );
        let url = page.join(asset).unwrap();
        assert_eq!(url.origin(), page.origin(), "{asset}");
        let response = server.client.get(url.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        if asset.ends_with(".js") {
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(content_type.contains("javascript"), "{url}: {content_type}");
            let script = response.text().await.unwrap();
            assert!(!script.is_empty(), "{url} is empty");
            if asset.ends_with("swagger-initializer.js") {
                // The UI reads this server's document and calls out to no validator.
                assert!(script.contains("\"url\": \"/openapi.json\""), "{script}");
                assert!(
                    !script.contains("http://") && !script.contains("https://"),
                    "{script}"
                );
            }
        }
    }
    assert!(
        assets.iter().any(|a| a.ends_with("swagger-initializer.js")),
        "{assets:?}"
    );
    server.stop().await;
}

/// The schemathesis CLI: `$SCHEMATHESIS`, else `st` on the PATH.
fn schemathesis() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("SCHEMATHESIS").filter(|p| !p.is_empty()) {
        return Some(path.into());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join("st"))
        .find(|p| p.is_file())
}

/// Longest the schemathesis run may take before the test fails.
const SCHEMATHESIS_TIME_MAX_S: u64 = 300;

/// Generates requests from the document (15 per operation, a fixed seed) against a real
/// server with a real show, reservation and an organizer's token (an organizer is a buyer
/// too, so every operation gets past its role check), and fails on any 5xx or any response
/// whose status, media type or body the document does not describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_or_schema_mismatch() {
    let Some(st) = schemathesis() else {
        println!("skipped: schemathesis not found (set SCHEMATHESIS or put `st` on the PATH)");
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "boxoffice-schemathesis-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = boxoffice_api::Config::for_tests(fresh_sqlite_url(), dir.join("data"));
    // Generated requests come fast from one user; rate limits would answer most 429.
    config.rate_limit_per_user = 0;
    config.rate_limit_per_ip = 0;
    let server = Server::start_with(config).await;
    let organizer = server.user(&[Role::Organizer]).await;
    let show: Value = server
        .req(reqwest::Method::POST, "/v1/shows", &organizer.token)
        .json(&fixtures::contract_show())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let show_id = show["show_id"].as_str().expect("show created").to_string();
    let hold: Value = server
        .req(
            reqwest::Method::POST,
            &format!("/v1/shows/{show_id}/holds"),
            &organizer.token,
        )
        .json(&json!({"seats": ["101-B-30"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reservation_id = hold["reservation_id"].as_str().expect("held").to_string();

    let mut command = tokio::process::Command::new(&st);
    command
        .current_dir(&dir)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .arg("run")
        .arg(format!("{}/openapi.json", server.base))
        // Schemathesis 3 reads OpenAPI 3.1 only when asked to.
        .arg("--experimental=openapi-3.1")
        .arg("--checks=not_a_server_error,response_schema_conformance")
        .arg("--hypothesis-max-examples=15")
        // After each operation alone, sequences that follow the document's links (a show,
        // a hold on it, its checkout, the order, a refund; a waitlist entry).
        .arg("--stateful=links")
        .arg("--hypothesis-seed=1")
        .arg("--hypothesis-database=none")
        .arg("--request-timeout=40000")
        .arg("--no-color")
        .arg(format!(
            "--header=Authorization: Bearer {}",
            organizer.token
        ))
        .arg(format!("--set-path=show_id={show_id}"))
        .arg(format!("--set-path=reservation_id={reservation_id}"))
        .arg("--set-path=tier_id=A")
        // An event stream never ends, so it cannot be read to its end as a response.
        .arg("--exclude-operation-id=seatmap_stream")
        .kill_on_drop(true);
    let output = tokio::time::timeout(
        Duration::from_secs(SCHEMATHESIS_TIME_MAX_S),
        command.output(),
    )
    .await
    .unwrap_or_else(|_| panic!("schemathesis ran over {SCHEMATHESIS_TIME_MAX_S} s"))
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "schemathesis found problems ({})",
        output.status
    );
    // A run that tested nothing would also exit 0: every operation but the stream must
    // have been tested ("== 18 passed in 9.81s ==").
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or_default();
    let passed: usize = summary
        .split_whitespace()
        .zip(summary.split_whitespace().skip(1))
        .find(|(_, word)| *word == "passed")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {summary:?}"));
    let operations = operations(&server.openapi().await).len();
    // The stateful run prints one "-> METHOD /path" line per link it followed; it must
    // have gone from a show to its holds and on to a reservation's checkout.
    let followed: Vec<&str> = stdout
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("-> "))
        .collect();
    assert!(
        followed
            .iter()
            .any(|l| l.starts_with("-> POST /v1/reservations/{reservation_id}/checkout")),
        "the stateful run did not reach a checkout: {followed:?}"
    );
    assert_eq!(passed, operations - 1 + followed.len(), "{summary}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
