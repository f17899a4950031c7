//! The web console at `/`: static files embedded in the binary (nothing to build or
//! install), served with a strict Content-Security-Policy. The page is a client of the
//! API like any script (`/v1/status`, `/v1/watch/events`, `/v1/watch/frame`,
//! `/v1/analyze`, `/metrics`): nothing the API does depends on it. The files need no
//! token (they hold no data); every call the page makes does, and the page keeps the
//! token in the browser's storage only.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Only this origin's scripts, styles, images (and the previews' blob URLs) and API
/// calls; no inline script or style, no frames, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// (path under `/console/`, content type, bytes).
const FILES: [(&str, &str, &[u8]); 5] = [
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../console/app.js")),
    ("icon.svg", "image/svg+xml", include_bytes!("../console/icon.svg")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../console/style.css")),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/vendor/uPlot.iife.min.js"),
    ),
    ("vendor/uPlot.min.css", "text/css; charset=utf-8", include_bytes!("../console/vendor/uPlot.min.css")),
];
const INDEX: &[u8] = include_bytes!("../console/index.html");

fn file(content_type: &'static str, bytes: &'static [u8]) -> Response {
    let mut r = (StatusCode::OK, bytes).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change with the binary only; a browser revalidates them on each load.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// Browsers ask for `/favicon.ico` whatever the page says; the console's icon answers.
pub async fn favicon() -> Response {
    asset(Path("icon.svg".to_string())).await
}

pub async fn asset(Path(path): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, bytes)) => file(content_type, bytes),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such console file").into_response(),
    }
}
