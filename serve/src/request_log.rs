//! One record per analyze request, however it ends: counted in `/metrics` under its
//! outcome and logged as one line at info (id, status, outcome, ms, tokens). The record
//! travels with the request (into the worker that runs it), so a request whose client
//! left is still counted, with the tokens it generated; one dropped unfinished counts
//! as cancelled.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue};

use emollama_runtime::AnalyzeResult;

use crate::error::{ApiError, CLIENT_CLOSED};
use crate::metrics::RecentError;
use crate::AppState;

pub struct RequestLog {
    state: Arc<AppState>,
    pub id: String,
    /// Which API: `analyze`, `chat` (OpenAI's), `official` (the official demo's).
    route: &'static str,
    started: Instant,
    status: u16,
    outcome: Option<&'static str>,
    tokens: usize,
}

/// The client's `X-Request-Id` when it is a sane token, else one made here.
pub fn request_id(headers: &HeaderMap) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:x}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

impl RequestLog {
    pub fn new(state: Arc<AppState>, id: String, route: &'static str) -> Self {
        Self { state, id, route, started: Instant::now(), status: 0, outcome: None, tokens: 0 }
    }

    pub fn header_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.id).ok()
    }

    pub fn failed(&mut self, e: &ApiError) {
        self.status = e.status.as_u16();
        self.outcome = Some(e.outcome());
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.state.metrics().error(RecentError {
            time: time.as_secs_f64(),
            id: self.id.clone(),
            status: self.status,
            code: e.code,
            message: e.message.clone(),
        });
    }

    /// A finished run: its stage timings and tokens go to the metrics.
    pub fn succeeded(&mut self, r: &AnalyzeResult) {
        self.status = 200;
        self.outcome = Some("ok");
        self.tokens = r.tokens.generated;
        self.state.metrics().stages(&r.timings_ms, r.tokens.decode_per_s, r.tokens.generated);
    }

    /// A run cut short (client gone, deadline) after generating `tokens`.
    pub fn stopped(&mut self, e: &ApiError, tokens: usize) {
        self.failed(e);
        self.tokens = tokens;
        self.state.metrics().tokens(tokens);
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or("cancelled");
        let status = if self.outcome.is_none() { CLIENT_CLOSED } else { self.status };
        self.state.metrics().request(outcome);
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            target: "emollama::request",
            id = %self.id,
            route = self.route,
            status,
            outcome,
            ms = format_args!("{ms:.0}"),
            tokens = self.tokens,
            "analyze"
        );
    }
}
