//! The OpenAPI 3.1 document and the docs UI. The document is generated from the handlers:
//! every route is registered with `utoipa_axum::routes!`, which takes the method, path,
//! parameters, bodies and responses from the handler's `#[utoipa::path]`, so a route and
//! its documentation are one declaration. This module adds what no single handler
//! declares (the `info`, the `bearer_auth` scheme, the answers that layers give: 401 from
//! the token check, 429 from the rate limits, 503 from the timeout, the idempotency
//! header and its conflicts), serves the document at `/openapi.json` with a Swagger UI at
//! `/docs` whose assets are compiled into the binary, and lists the routes an axum router
//! really registers, so that a test can prove none is missing from the document.
//!
//! Authorization is part of each operation's entry: an operation that needs a token has
//! `security: [{bearer_auth: []}]` and an `x-roles` extension listing the roles that pass
//! its role check (see [`ROLES_EXTENSION`]).

use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    Content, HttpMethod, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Required, Tag,
};
use utoipa::{PartialSchema, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::state::AppState;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Where the docs UI is served (`/docs` redirects to `/docs/`).
pub const DOCS_PATH: &str = "/docs";
/// The security scheme of every operation that needs a token.
pub const BEARER_AUTH: &str = "bearer_auth";
/// The operation extension that lists the roles passing an operation's role check. A
/// caller with none of them (admin counts as every role) is answered 403 `forbidden`;
/// every signed-in user has `buyer`, so `["buyer"]` means any valid token. Ownership is
/// checked after the roles and is not listed here: another buyer's reservation is 404.
pub const ROLES_EXTENSION: &str = "x-roles";
/// The operation extension that lists roles which pass the role check but are refused
/// with 403 `forbidden` on an object that is not theirs, where a 404 would hide nothing
/// from them (support may read any reservation, but not pay for another buyer's). Absent
/// when there are none.
pub const FORBIDDEN_ROLES_EXTENSION: &str = "x-forbidden-roles";
/// The media type of every error.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Routes the router has that are not API operations: the document and the docs UI.
pub const DOC_ROUTES: [&str; 4] = [OPENAPI_PATH, DOCS_PATH, "/docs/", "/docs/{*rest}"];

/// What a header value in a request may hold: visible ASCII, single spaces between.
/// The HTTP server refuses control characters before any handler sees them (a bare 400),
/// so the document does not offer them.
pub const HEADER_VALUE_PATTERN: &str = "^[!-~]+( [!-~]+)*$";

/// Tags, in the order the docs UI shows them.
const TAGS: [(&str, &str); 10] = [
    ("auth", "Registration and access tokens."),
    (
        "shows",
        "Shows (ticketed events): the catalogue, a show, its seat map.",
    ),
    (
        "manage",
        "Managing a show: seat blocks, prices, cancellation.",
    ),
    ("reservations", "Holds and reservations."),
    ("waitlist", "Waiting for seats to a sold-out show."),
    ("orders", "Orders and their tickets; refunds."),
    ("audit", "The raw event log, for auditors."),
    (
        "notifications",
        "What happened to the caller: offers, orders, expiries.",
    ),
    (
        "payments",
        "The payment provider's webhooks (signed by the provider, not a user).",
    ),
    ("ops", "Health, readiness and metrics (outside /v1)."),
];

/// An error, as every error is answered: RFC 9457 problem details with a stable `code`
/// and the request's id, plus the extension members some errors carry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "https://boxoffice.dev/problems/seats-unavailable",
    "title": "Conflict",
    "status": 409,
    "detail": "seats are not available: 101-A-2",
    "code": "seats_unavailable",
    "request_id": "0192f0c4-a3b2-7e61-a0c3-d0e5b0a1c2d3",
    "unavailable": ["101-A-2"]
}))]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub type_: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// What went wrong, for a program: stable and machine-readable.
    #[schema(example = "seats_unavailable")]
    pub code: String,
    /// The request's id, as in the `x-request-id` header.
    pub request_id: String,
    /// `validation_failed`: each invalid field and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldProblem>>,
    /// `seats_unavailable`: the seats that are taken or blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<Vec<String>>,
    /// `sold_out`: the places still available in the section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<u32>,
    /// `ticket_limit_exceeded`, `hold_limit_exceeded`: the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `ticket_limit_exceeded`: tickets the buyer holds or bought.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u32>,
    /// `ticket_limit_exceeded`: tickets asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<u32>,
    /// `precondition_failed`: the show's current version (for `If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `command_too_large`: the events the command would have appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
}

/// One invalid field of a request, named by its JSON path.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FieldProblem {
    #[schema(example = "sections[0].rows")]
    pub field: String,
    #[schema(example = "a seated section lists its rows")]
    pub message: String,
}

/// The document's fixed parts: `info`, tags, the security scheme and the shared schemas.
pub fn base() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Boxoffice")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The Boxoffice ticketing API: shows, seat maps, holds, reservations and \
                     the waitlist. Errors are `application/problem+json` with a stable \
                     `code`. Send `Authorization: Bearer <token>` from `POST /v1/auth/token` \
                     to the operations that need it.",
                ))
                .build(),
        )
        .tags(Some(TAGS.map(|(name, description)| {
            let mut tag = Tag::new(name);
            tag.description = Some(description.to_string());
            tag
        })))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER_AUTH,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An access token from `POST /v1/auth/token` (HS256, 15 minutes).",
                ))
                .build(),
        ),
    );
    for (name, schema) in [
        (Problem::name(), Problem::schema()),
        (FieldProblem::name(), FieldProblem::schema()),
    ] {
        components.schemas.insert(name.into_owned(), schema);
    }
    doc
}

/// A problem response with `description`, for the answers that layers add.
pub fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            Content::new(Some(RefOr::Ref(Ref::from_schema_name(Problem::name())))),
        )
        .build()
}

fn header_parameter(name: &str, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some(HEADER_VALUE_PATTERN)),
        ))
        .build()
}

/// One OpenAPI link: from a response of one operation to another operation, with the
/// parameter the second takes from the first's body.
struct LinkSpec {
    from: (&'static str, HttpMethod, &'static str),
    name: &'static str,
    to: (&'static str, HttpMethod),
    parameter: &'static str,
    value: &'static str,
}

const fn link(
    from: (&'static str, HttpMethod, &'static str),
    name: &'static str,
    to: (&'static str, HttpMethod),
    parameter: &'static str,
    value: &'static str,
) -> LinkSpec {
    LinkSpec {
        from,
        name,
        to,
        parameter,
        value,
    }
}

/// How a client goes from what it created to what it can do with it: a show to its
/// holds, a hold to its checkout, a paid checkout to its order, a waitlist entry to its
/// status. Clients and generators (schemathesis' stateful run) follow these.
const LINKS: [LinkSpec; 11] = [
    link(
        ("/v1/shows", HttpMethod::Post, "201"),
        "GetShow",
        ("/v1/shows/{show_id}", HttpMethod::Get),
        "show_id",
        "$response.body#/show_id",
    ),
    link(
        ("/v1/shows", HttpMethod::Post, "201"),
        "GetSeatMap",
        ("/v1/shows/{show_id}/seatmap", HttpMethod::Get),
        "show_id",
        "$response.body#/show_id",
    ),
    link(
        ("/v1/shows", HttpMethod::Post, "201"),
        "Hold",
        ("/v1/shows/{show_id}/holds", HttpMethod::Post),
        "show_id",
        "$response.body#/show_id",
    ),
    link(
        ("/v1/shows", HttpMethod::Post, "201"),
        "JoinWaitlist",
        ("/v1/shows/{show_id}/waitlist", HttpMethod::Post),
        "show_id",
        "$response.body#/show_id",
    ),
    link(
        ("/v1/shows/{show_id}/holds", HttpMethod::Post, "201"),
        "GetReservation",
        ("/v1/reservations/{reservation_id}", HttpMethod::Get),
        "reservation_id",
        "$response.body#/reservation_id",
    ),
    link(
        ("/v1/shows/{show_id}/holds", HttpMethod::Post, "201"),
        "CancelReservation",
        ("/v1/reservations/{reservation_id}", HttpMethod::Delete),
        "reservation_id",
        "$response.body#/reservation_id",
    ),
    link(
        ("/v1/shows/{show_id}/holds", HttpMethod::Post, "201"),
        "Checkout",
        (
            "/v1/reservations/{reservation_id}/checkout",
            HttpMethod::Post,
        ),
        "reservation_id",
        "$response.body#/reservation_id",
    ),
    link(
        (
            "/v1/reservations/{reservation_id}/checkout",
            HttpMethod::Post,
            "200",
        ),
        "GetOrder",
        ("/v1/orders/{order_id}", HttpMethod::Get),
        "order_id",
        "$response.body#/order_id",
    ),
    link(
        (
            "/v1/reservations/{reservation_id}/checkout",
            HttpMethod::Post,
            "200",
        ),
        "Refund",
        ("/v1/orders/{order_id}/refund", HttpMethod::Post),
        "order_id",
        "$response.body#/order_id",
    ),
    link(
        ("/v1/shows/{show_id}/waitlist", HttpMethod::Post, "201"),
        "GetWaitlistEntry",
        ("/v1/waitlist/{entry_id}", HttpMethod::Get),
        "entry_id",
        "$response.body#/entry_id",
    ),
    link(
        ("/v1/shows/{show_id}/waitlist", HttpMethod::Post, "201"),
        "LeaveWaitlist",
        ("/v1/waitlist/{entry_id}", HttpMethod::Delete),
        "entry_id",
        "$response.body#/entry_id",
    ),
];

fn operation_mut<'a>(
    doc: &'a mut OpenApi,
    path: &str,
    method: HttpMethod,
) -> Option<&'a mut Operation> {
    let item = doc.paths.paths.get_mut(path)?;
    match method {
        HttpMethod::Get => item.get.as_mut(),
        HttpMethod::Post => item.post.as_mut(),
        HttpMethod::Put => item.put.as_mut(),
        HttpMethod::Patch => item.patch.as_mut(),
        HttpMethod::Delete => item.delete.as_mut(),
        _ => None,
    }
}

/// Adds [`LINKS`] to the responses they start from. Panics if one names an operation or
/// response the document lacks (a route renamed without its link).
pub fn add_links(doc: &mut OpenApi) {
    for spec in &LINKS {
        let (to_path, to_method) = (spec.to.0, spec.to.1.clone());
        let target = operation_mut(doc, to_path, to_method)
            .unwrap_or_else(|| panic!("link {} to a missing operation {to_path}", spec.name));
        let operation_id = target
            .operation_id
            .clone()
            .unwrap_or_else(|| panic!("{to_path} has no operation id"));
        let (from_path, from_method, status) = (spec.from.0, spec.from.1.clone(), spec.from.2);
        let source = operation_mut(doc, from_path, from_method)
            .unwrap_or_else(|| panic!("link {} from a missing operation {from_path}", spec.name));
        let Some(RefOr::T(response)) = source.responses.responses.get_mut(status) else {
            panic!(
                "link {} from a missing response {status} of {from_path}",
                spec.name
            );
        };
        let link = utoipa::openapi::link::LinkBuilder::new()
            .operation_id(operation_id)
            .parameter(spec.parameter, spec.value)
            .build();
        response.links.insert(spec.name.to_string(), RefOr::T(link));
    }
}

/// Adds to every operation what the layers around the handlers do to it: 429 (rate
/// limits), 500 (a handler's panic) and 503 (request timeout) everywhere; 401 where a token is needed; the body
/// extractor's 400/413/415/422 where there is a body; `Idempotency-Key` and its 409/422
/// on every POST with a token.
pub fn add_layer_responses(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations: [(HttpMethod, &mut Option<Operation>); 5] = [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Put, &mut item.put),
            (HttpMethod::Patch, &mut item.patch),
            (HttpMethod::Delete, &mut item.delete),
        ];
        for (method, operation) in operations {
            let Some(op) = operation.as_mut() else {
                continue;
            };
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let responses = &mut op.responses.responses;
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(problem_response(description)));
            };
            add(
                "429",
                "`rate_limited`: too many requests; see `Retry-After`.",
            );
            add("500", "`internal_error`: a bug in the server.");
            add(
                "503",
                "`service_unavailable`, `overloaded`, `not_owner`: the server cannot answer \
                 now (it is starting, stopping, overloaded, the request timed out, or the node \
                 that owns the show could not be reached); see `Retry-After`.",
            );
            if secured {
                add(
                    "401",
                    "`unauthorized`: the bearer token is missing, malformed, forged, expired \
                     or meant for another audience.",
                );
            }
            if op.request_body.is_some() {
                add("400", "`malformed_json`: the body is not JSON.");
                add("413", "`payload_too_large`: the body is over 256 KiB.");
                add(
                    "415",
                    "`unsupported_media_type`: the body is not `application/json`.",
                );
                add(
                    "422",
                    "`validation_failed`: the body does not have the expected shape; \
                     `errors` names the fields.",
                );
            }
            if method == HttpMethod::Post && secured {
                add(
                    "409",
                    "`idempotency_key_in_use`: a request with this `Idempotency-Key` is \
                     still being handled.",
                );
                add(
                    "422",
                    "`idempotency_key_reused`: this `Idempotency-Key` was used for another \
                     request.",
                );
                let parameters = op.parameters.get_or_insert_with(Vec::new);
                for (name, description) in [
                    (
                        "Idempotency-Key",
                        "Makes the request safe to retry: the first response to a key is \
                         replayed for 24 hours to the same user's same request.",
                    ),
                    ("X-Idempotency-Key", "The same as `Idempotency-Key`."),
                ] {
                    let present = parameters
                        .iter()
                        .any(|p| matches!(p, RefOr::T(p) if p.name == name));
                    if !present {
                        parameters.push(RefOr::T(header_parameter(name, description)));
                    }
                }
            }
        }
    }
}

/// The roles an operation's entry lists under [`ROLES_EXTENSION`], if any.
pub fn roles_of(extensions: Option<&Extensions>) -> Option<Vec<String>> {
    let value = extensions?.get(ROLES_EXTENSION)?;
    Some(
        value
            .as_array()?
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect(),
    )
}

/// The routes serving the document and the docs UI. Swagger UI's assets are compiled into
/// the binary (`vendored`), its validator badge is off (it would call out to
/// swagger.io), so the page loads nothing from another origin.
pub fn docs_router(doc: OpenApi) -> Router<AppState> {
    let config = Config::new([OPENAPI_PATH])
        .validator_url("none")
        .try_it_out_enabled(true)
        .persist_authorization(true)
        .display_operation_id(true);
    SwaggerUi::new(DOCS_PATH)
        .url(OPENAPI_PATH, doc)
        .config(config)
        .into()
}

/// One route an axum router registered: a method (or `*` for a service that takes every
/// method) and a path template.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegisteredRoute {
    pub method: String,
    pub path: String,
}

/// The methods a `MethodRouter` can hold, in the order axum's `Debug` prints them.
const ROUTER_METHODS: [&str; 9] = [
    "get", "head", "delete", "options", "patch", "post", "put", "trace", "connect",
];

/// Every (method, path) that `router` routes, read from the router itself.
///
/// axum has no API to list a router's routes; its `Debug` output is the only place that
/// shows them (the path of each route id, and which methods each route's method router
/// holds). This reads that output. It is tied to axum's internals, so it is checked two
/// ways: a unit test below on a router of known routes, and the HTTP suite's assertion
/// that the application router yields every documented operation. If a new axum version
/// prints differently, both fail loudly rather than pass on an empty list.
pub fn registered_routes<S>(router: &Router<S>) -> Vec<RegisteredRoute> {
    let text = format!("{router:?}");
    // Only the path router: the fallback router holds axum's own catch-all routes.
    let main = text
        .split_once(", fallback_router: ")
        .map_or(text.as_str(), |(main, _)| main);
    let Some((routes, node)) = main.split_once("node: Node { paths: {") else {
        return Vec::new();
    };
    let mut paths = std::collections::HashMap::new();
    for entry in node.split("RouteId(").skip(1) {
        let Some((id, rest)) = entry.split_once(')') else {
            continue;
        };
        let Some(rest) = rest.strip_prefix(": \"") else {
            continue;
        };
        let Some((path, _)) = rest.split_once('"') else {
            continue;
        };
        paths.insert(id.to_string(), path.replace("\\\"", "\""));
    }
    let mut found = Vec::new();
    for entry in routes.split("RouteId(").skip(1) {
        let Some((id, rest)) = entry.split_once(')') else {
            continue;
        };
        let Some(path) = paths.get(id) else {
            continue;
        };
        if let Some(methods) = rest.strip_prefix(": MethodRouter(MethodRouter { ") {
            for method in ROUTER_METHODS {
                let Some(at) = methods.find(&format!("{method}: ")) else {
                    continue;
                };
                let value = &methods[at + method.len() + 2..];
                if !value.starts_with("None") {
                    found.push(RegisteredRoute {
                        method: method.to_uppercase(),
                        path: path.clone(),
                    });
                }
            }
        } else if rest.starts_with(": Route(") {
            found.push(RegisteredRoute {
                method: "*".into(),
                path: path.clone(),
            });
        }
    }
    found.sort();
    found
}

/// The routes in `routes` that the document `doc` (as served, in JSON) has no operation
/// for, leaving out the document's own routes ([`DOC_ROUTES`]) and the `GET` routes of
/// the seat-map page ([`crate::web::PAGE_ROUTES`]: HTML and its assets, which are not
/// API operations). A route that takes every method (`*`, from `route_service`) is never
/// documented.
pub fn undocumented_routes(
    routes: &[RegisteredRoute],
    doc: &serde_json::Value,
) -> Vec<RegisteredRoute> {
    routes
        .iter()
        .filter(|r| !DOC_ROUTES.contains(&r.path.as_str()))
        .filter(|r| !(r.method == "GET" && crate::web::PAGE_ROUTES.contains(&r.path.as_str())))
        .filter(|r| {
            doc["paths"][&r.path][r.method.to_lowercase()]
                .as_object()
                .is_none()
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use axum::routing::{get, post};

    use super::*;
    use crate::error::ApiError;

    async fn ok() -> &'static str {
        "ok"
    }

    #[test]
    fn registered_routes_reads_a_router_of_known_routes() {
        let service = tower::service_fn(|_| async {
            Ok::<_, std::convert::Infallible>(axum::response::Response::new(
                axum::body::Body::empty(),
            ))
        });
        let router: Router = Router::new()
            .route("/a", get(ok).post(ok))
            .route("/b/{id}", post(ok).delete(ok))
            .route_service("/c", service)
            .fallback(ok)
            .layer(tower_http::trace::TraceLayer::new_for_http());
        let found: Vec<(String, String)> = registered_routes(&router)
            .into_iter()
            .map(|r| (r.method, r.path))
            .collect();
        let expected: Vec<(String, String)> = [
            ("*", "/c"),
            ("DELETE", "/b/{id}"),
            ("GET", "/a"),
            ("POST", "/a"),
            ("POST", "/b/{id}"),
        ]
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
        assert_eq!(found, expected);
    }

    /// The check the HTTP suite makes on the real router, made here on the API router
    /// with one route added the plain axum way: it is found, and it is the only one.
    #[test]
    fn a_route_added_without_its_documentation_is_found() {
        let (router, doc) = crate::api()
            .route("/v1/undocumented", get(ok))
            .split_for_parts();
        let doc = serde_json::to_value(doc).unwrap();
        let routes = registered_routes(&router);
        assert!(routes.len() > 10, "{routes:?}");
        assert_eq!(
            undocumented_routes(&routes, &doc),
            [RegisteredRoute {
                method: "GET".into(),
                path: "/v1/undocumented".into()
            }]
        );
        let (router, doc) = crate::api().split_for_parts();
        let doc = serde_json::to_value(doc).unwrap();
        assert_eq!(undocumented_routes(&registered_routes(&router), &doc), []);
    }

    /// The page's routes are left out of the check only as `GET` routes: anything else
    /// on those paths, and any other path, still has to be documented.
    #[test]
    fn only_the_page_get_routes_are_exempt() {
        let (api, doc) = crate::api().split_for_parts();
        let doc = serde_json::to_value(doc).unwrap();
        let state_free: Router<crate::state::AppState> = api;
        let router = state_free
            .merge(crate::web::router())
            .route("/shows/{show_id}", post(ok))
            .route("/assets2/{file}", get(ok));
        let mut missing = undocumented_routes(&registered_routes(&router), &doc);
        missing.sort();
        assert_eq!(
            missing,
            [
                RegisteredRoute {
                    method: "GET".into(),
                    path: "/assets2/{file}".into()
                },
                RegisteredRoute {
                    method: "POST".into(),
                    path: "/shows/{show_id}".into()
                },
            ]
        );
    }

    /// Every member an error can carry is in the `Problem` schema, so a client generated
    /// from the document sees the extension members too.
    #[test]
    fn problem_schema_names_every_member_errors_carry() {
        use boxoffice_domain::BookingError;
        let schema = serde_json::to_value(Problem::schema()).unwrap();
        let properties = schema["properties"].as_object().unwrap();
        let errors: Vec<ApiError> = vec![
            BookingError::Invalid(vec![boxoffice_domain::show::FieldError::new("a", "b")]).into(),
            BookingError::SeatsUnavailable {
                seats: vec!["1-A-1".into()],
            }
            .into(),
            BookingError::SoldOut { available: 2 }.into(),
            BookingError::TicketLimitExceeded {
                limit: 8,
                current: 7,
                requested: 2,
            }
            .into(),
            BookingError::TooManyActiveHolds { limit: 3 }.into(),
            BookingError::VersionMismatch { current: 4 }.into(),
            boxoffice_commands::EngineError::TooLarge(70_000).into(),
        ];
        for error in errors {
            let code = error.code;
            let mut body = serde_json::to_value(&error.extra).unwrap();
            let members = body.as_object_mut().unwrap();
            for key in ["type", "title", "status", "detail", "code", "request_id"] {
                members.insert(key.into(), serde_json::Value::Null);
            }
            for key in members.keys() {
                assert!(
                    properties.contains_key(key),
                    "`{key}` of `{code}` is not in the Problem schema"
                );
            }
        }
    }
}
