//! The seat-map page: the buyer's and organizer's web page, served from the binary. It
//! owns the page routes (`/`, `/shows/{show_id}`, `/organizer/shows/{show_id}`, which
//! all answer the same single page) and `/assets/{file}`, the page's scripts and styles
//! from `web/` at the repository root, embedded at compile time. The page talks to the
//! JSON API only, like any other client (see `docs/adr/0010-web-page.md`).
//!
//! These routes are not API operations and are not in the OpenAPI document; the check
//! that every route is documented skips exactly the paths in [`PAGE_ROUTES`].

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The page's routes: the three page addresses and the assets. Only `GET` (and the
/// `HEAD` axum answers with it). The OpenAPI check leaves these paths out.
pub const PAGE_ROUTES: [&str; 4] = [
    "/",
    "/shows/{show_id}",
    "/organizer/shows/{show_id}",
    "/assets/{file}",
];

/// The HTML every page address answers; the script reads the address and draws the view.
const INDEX: &str = "index.html";

/// Every file of `web/`, by name, embedded at compile time. A file added to `web/` is
/// served only once it is listed here.
const FILES: [(&str, &[u8]); 7] = [
    (INDEX, include_bytes!("../../web/index.html")),
    ("app.js", include_bytes!("../../web/app.js")),
    ("api.js", include_bytes!("../../web/api.js")),
    ("seatmap.js", include_bytes!("../../web/seatmap.js")),
    ("views.js", include_bytes!("../../web/views.js")),
    ("style.css", include_bytes!("../../web/style.css")),
    ("favicon.svg", include_bytes!("../../web/favicon.svg")),
];

/// What the page may load and run: only its own files and the API (no inline script or
/// style, no other origin), QR codes as object URLs, and no framing. Sent with the HTML.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Largest file the page may have; a limit on what `--web-dir` reads from disk too.
const FILE_BYTES_MAX: usize = 512 * 1024;

const _: () = {
    let mut i = 0;
    while i < FILES.len() {
        assert!(FILES[i].1.len() <= FILE_BYTES_MAX);
        i += 1;
    }
};

/// One file as served: its bytes, media type and entity tag.
struct Asset {
    name: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

/// The page's files: embedded, or read from a directory on each request when the server
/// was started with `--web-dir` (for editing the page without rebuilding).
pub struct Assets {
    embedded: Vec<Asset>,
    dir: Option<PathBuf>,
}

impl Assets {
    pub fn new(dir: Option<PathBuf>) -> Self {
        let embedded = FILES
            .iter()
            .map(|(name, bytes)| Asset {
                name,
                bytes,
                content_type: content_type(name),
                etag: etag(bytes),
            })
            .collect();
        Self { embedded, dir }
    }

    /// The response for `name`: 200 with the file, 304 if the client has it, 404 if the
    /// page has no such file.
    async fn serve(&self, name: &str, headers: &HeaderMap) -> Response {
        let Some(asset) = self.embedded.iter().find(|a| a.name == name) else {
            return ApiError::not_found("not_found", "file").into_response();
        };
        let (bytes, etag): (Bytes, HeaderValue) = match &self.dir {
            None => (Bytes::from_static(asset.bytes), asset.etag.clone()),
            Some(dir) => match tokio::fs::read(dir.join(asset.name)).await {
                Ok(bytes) if bytes.len() <= FILE_BYTES_MAX => {
                    let tag = etag(&bytes);
                    (Bytes::from(bytes), tag)
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(
                        file = asset.name,
                        "cannot read the page file from --web-dir"
                    );
                    (Bytes::from_static(asset.bytes), asset.etag.clone())
                }
            },
        };
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim() == etag.to_str().unwrap_or(""))
            });
        // `no-cache`: the browser keeps the file but asks each time whether it changed,
        // which the entity tag answers with an empty 304. The files are small; a stale
        // script after an upgrade would be worse than one round trip.
        let common = [
            (header::ETAG, etag),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ];
        if fresh {
            return (StatusCode::NOT_MODIFIED, common).into_response();
        }
        let mut response = (
            common,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            bytes,
        )
            .into_response();
        if asset.name == INDEX {
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            );
        }
        response
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// A strong entity tag from the content: the first 16 bytes of its SHA-256, in hex.
fn etag(bytes: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
}

/// The page's routes (see [`PAGE_ROUTES`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(PAGE_ROUTES[0], get(page))
        .route(PAGE_ROUTES[1], get(page))
        .route(PAGE_ROUTES[2], get(page))
        .route(PAGE_ROUTES[3], get(asset))
}

async fn page(State(app): State<AppState>, headers: HeaderMap) -> Response {
    app.web.serve(INDEX, &headers).await
}

async fn asset(
    State(app): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if file == INDEX {
        return ApiError::not_found("not_found", "file").into_response();
    }
    app.web.serve(&file, &headers).await
}

/// Shared by the state; cheap to clone.
pub type SharedAssets = Arc<Assets>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_a_media_type_and_distinct_tag() {
        let assets = Assets::new(None);
        for a in &assets.embedded {
            assert_ne!(a.content_type, "application/octet-stream", "{}", a.name);
        }
        let mut tags: Vec<_> = assets.embedded.iter().map(|a| a.etag.clone()).collect();
        tags.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        tags.dedup();
        assert_eq!(tags.len(), FILES.len());
    }
}
