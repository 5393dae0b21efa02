//! Per-request context: the request id (a task-local set by the request-id layer, so
//! any error can name it) and the caller.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

use crate::error::{ApiError, REQUEST_ID_HEADER};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Longest request id we echo back.
const REQUEST_ID_LEN_MAX: usize = 128;

/// The id of the request being handled, or a fresh one outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| Uuid::now_v7().to_string())
}

/// Takes the caller's `x-request-id` (if sane) or makes one, runs the request in its
/// scope, puts it on the response and into any problem body.
pub async fn request_id_layer(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= REQUEST_ID_LEN_MAX
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    let is_problem = |r: &Response| {
        r.headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/problem+json")
    };
    let status = response.status();
    if !is_problem(&response) && (status.is_client_error() || status.is_server_error()) {
        // An error made by a layer rather than a handler (a timeout, a body over the
        // limit, an extractor's rejection): every error is problem+json all the same.
        response = problem_for_status(response).await;
    }
    if is_problem(&response) {
        response = fill_problem_request_id(response, &id).await;
    }
    response.headers_mut().insert(
        REQUEST_ID_HEADER,
        HeaderValue::from_str(&id).expect("checked ascii"),
    );
    response
}

/// Replaces a bare error response with a problem body for its status, keeping headers
/// such as `Retry-After`.
async fn problem_for_status(response: Response) -> Response {
    use axum::http::StatusCode as S;
    let (parts, body) = response.into_parts();
    let detail = axum::body::to_bytes(body, 4 * 1024)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| {
            parts
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_string()
        });
    let code = match parts.status {
        S::BAD_REQUEST => "bad_request",
        S::UNAUTHORIZED => "unauthorized",
        S::FORBIDDEN => "forbidden",
        S::NOT_FOUND => "not_found",
        S::METHOD_NOT_ALLOWED => "method_not_allowed",
        S::PAYLOAD_TOO_LARGE => "payload_too_large",
        S::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        S::UNPROCESSABLE_ENTITY => "validation_failed",
        S::TOO_MANY_REQUESTS => "rate_limited",
        S::REQUEST_TIMEOUT | S::SERVICE_UNAVAILABLE | S::GATEWAY_TIMEOUT => "service_unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal_error",
    };
    let mut problem =
        axum::response::IntoResponse::into_response(ApiError::new(parts.status, code, detail));
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}

/// Writes JSON with every non-ASCII character escaped (`\u00e9`). A problem's `detail`
/// can echo what the client sent, and `application/problem+json` names no charset, so a
/// client that guesses the charset from the bytes (as Python's `requests` does for any
/// type but `application/json`) could misread UTF-8 and break the JSON; ASCII reads the
/// same under every guess.
struct AsciiJson;

impl serde_json::ser::Formatter for AsciiJson {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

fn to_ascii_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, AsciiJson);
    serde::Serialize::serialize(value, &mut serializer).expect("a JSON value serializes");
    out
}

/// Problem bodies are small; the id is written into the `request_id` member.
async fn fill_problem_request_id(response: Response, id: &str) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert(
                "request_id".into(),
                serde_json::Value::String(id.to_string()),
            );
            to_ascii_json(&serde_json::Value::Object(map))
        }
        _ => bytes.to_vec(),
    };
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The `Idempotency-Key` (or `X-Idempotency-Key`) of a request, if any.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    const KEY_LEN_MAX: usize = 255;
    let Some(value) = headers
        .get("idempotency-key")
        .or_else(|| headers.get("x-idempotency-key"))
    else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid_field("Idempotency-Key", "must be visible ASCII"))?;
    if key.is_empty() || key.len() > KEY_LEN_MAX {
        return Err(ApiError::invalid_field(
            "Idempotency-Key",
            "must be 1 to 255 characters",
        ));
    }
    Ok(Some(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_json_is_ascii_and_reads_back_the_same() {
        let value = serde_json::json!({
            "detail": "unknown section \"\u{7f}A\u{87}\u{f7}\u{40081}é\"",
            "n": 1,
        });
        let bytes = to_ascii_json(&value);
        assert!(bytes.is_ascii(), "{}", String::from_utf8_lossy(&bytes));
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, value);
    }
}
