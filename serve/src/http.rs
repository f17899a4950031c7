//! Routes, request parsing, admission and error mapping.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use emollama_engines::{CancelToken, EngineError};
use emollama_media::MediaError;
use emollama_runtime::{AnalyzeOptions, AnalyzeResult, RuntimeError};

use super::AppState;

/// An error answered as JSON `{"error": {"code", "message"}}` with a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    fn retry(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    fn outcome(&self) -> &'static str {
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE if self.code == "timeout" => "timeout",
            StatusCode::SERVICE_UNAVAILABLE if self.code == "cancelled" => "cancelled",
            StatusCode::SERVICE_UNAVAILABLE => "busy",
            s if s.is_client_error() => "client_error",
            _ => "server_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

fn runtime_error(e: RuntimeError) -> ApiError {
    use StatusCode as S;
    match e {
        RuntimeError::Media(m) => match m {
            MediaError::NotFound(_) => ApiError::new(S::NOT_FOUND, "media_not_found", m.to_string()),
            MediaError::Empty(_) => ApiError::new(S::BAD_REQUEST, "empty_media", m.to_string()),
            MediaError::FileTooLarge { .. } => ApiError::new(S::PAYLOAD_TOO_LARGE, "media_too_large", m.to_string()),
            MediaError::Timeout { .. } => ApiError::new(S::UNPROCESSABLE_ENTITY, "media_timeout", m.to_string()),
            MediaError::TooLong { .. } | MediaError::ResolutionTooLarge { .. } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "media_over_limit", m.to_string())
            }
            _ => ApiError::new(S::UNPROCESSABLE_ENTITY, "unreadable_media", m.to_string()),
        },
        RuntimeError::Engine(EngineError::Sampling(msg)) => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_parameter", msg)
        }
        RuntimeError::Request(r) => ApiError::new(S::BAD_REQUEST, "invalid_field", r.to_string()),
        RuntimeError::Engine(EngineError::ContextOverflow { .. }) => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "context_overflow", e.to_string())
        }
        RuntimeError::Engine(EngineError::Cancelled) => {
            ApiError::new(S::SERVICE_UNAVAILABLE, "cancelled", "the request was cancelled")
        }
        other => ApiError::new(S::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    // The body limit applies while the body streams in: an oversized upload is refused
    // once the limit is passed (or at once from its Content-Length), never read whole.
    let limit = state.config.max_upload_bytes as usize + (64 << 10);
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "alive"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/analyze", post(analyze))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn check_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = state.config.token.as_deref().filter(|t| !t.is_empty()) else { return Ok(()) };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: no early exit on the first differing byte.
    let ok = given.is_some_and(|g| {
        g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token"))
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "shutting down").into_response();
    }
    match (state.ready.get(), state.startup_error.get()) {
        (Some(info), _) => Json(serde_json::json!({"status": "ready", "ready": info})).into_response(),
        (None, Some(e)) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "startup_failed", e.clone()).into_response(),
        (None, None) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "loading", "engines are loading and warming up")
            .retry(5)
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_token(&state, &headers) {
        return e.into_response();
    }
    let admitted = state.admitted.load(Ordering::SeqCst);
    let running = state.running.load(Ordering::SeqCst);
    let text = state.metrics().render(
        admitted.saturating_sub(running),
        running,
        state.ready.get().is_some(),
        state.model_bytes.load(Ordering::Relaxed) as u64,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    stream: Option<bool>,
}

fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, msg)
}

/// An uploaded file, removed when the request ends.
struct Upload(PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn too_large(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("the upload exceeds {} bytes", state.config.max_upload_bytes),
    )
}

/// Stream the multipart body: the `media` file to disk (counting bytes as they come),
/// the other fields as options.
async fn read_multipart(state: &AppState, req: Request) -> Result<(AnalyzeOptions, Upload), ApiError> {
    let mut mp = Multipart::from_request(req, &()).await.map_err(|e| bad("bad_multipart", e.body_text()))?;
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut upload = None;
    let map_err = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(state)
        } else {
            bad("bad_multipart", e.body_text())
        }
    };
    while let Some(mut field) = mp.next_field().await.map_err(map_err)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "media" {
            if upload.is_some() {
                return Err(bad("ambiguous_media", "the upload has two `media` parts"));
            }
            let path = state.upload_dir.path().join(format!("upload-{}", unique()));
            let guard = Upload(path.clone());
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "upload_failed", e.to_string()))?;
            let mut written: u64 = 0;
            while let Some(chunk) = field.chunk().await.map_err(map_err)? {
                written += chunk.len() as u64;
                if written > state.config.max_upload_bytes {
                    return Err(too_large(state));
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "upload_failed", e.to_string()))?;
            }
            file.flush()
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "upload_failed", e.to_string()))?;
            if written == 0 {
                return Err(bad("empty_upload", "the uploaded media is empty"));
            }
            upload = Some(guard);
        } else {
            let text = field.text().await.map_err(map_err)?;
            fields.push((name, text));
        }
    }
    let upload = upload.ok_or_else(|| bad("missing_media", "multipart upload needs a `media` file field"))?;
    // The same rules as a JSON body: each field is parsed as its type, once.
    let opts = AnalyzeOptions::from_form(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| bad("invalid_field", e.to_string()))?;
    Ok((opts, upload))
}

fn unique() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A path from a request: canonicalised (symlinks resolved) and inside an allowed folder.
fn allowed_path(state: &AppState, p: &str) -> Result<String, ApiError> {
    let forbidden =
        || ApiError::new(StatusCode::FORBIDDEN, "path_not_allowed", format!("{p} is not inside an allowed directory"));
    let canon = std::fs::canonicalize(p).map_err(|_| {
        if state.config.allowed_dirs.iter().any(|d| Path::new(p).starts_with(d)) {
            ApiError::new(StatusCode::NOT_FOUND, "media_not_found", format!("{p} does not exist"))
        } else {
            forbidden()
        }
    })?;
    let inside =
        state.config.allowed_dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).any(|d| canon.starts_with(d));
    if inside {
        Ok(canon.to_string_lossy().into_owned())
    } else {
        Err(forbidden())
    }
}

/// Admission: a place in the queue, released when the request ends (however it ends).
struct Admitted(Arc<AppState>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Cancels the request when dropped: a client that disconnects drops the handler.
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn analyze(
    State(state): State<Arc<AppState>>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let result = analyze_inner(state.clone(), q, headers, req).await;
    match result {
        Ok(resp) => resp,
        Err(e) => {
            state.metrics().request(e.outcome());
            e.into_response()
        }
    }
}

async fn analyze_inner(
    state: Arc<AppState>,
    q: StreamQuery,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    check_token(&state, &headers)?;
    let Some(runtime) = state.runtime.get().cloned() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "engines are loading").retry(5));
    };
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let (opts, upload) = if content_type.starts_with("multipart/form-data") {
        let (o, u) = read_multipart(&state, req).await?;
        (o, Some(u))
    } else if content_type.starts_with("application/json") {
        let limit = state.config.max_upload_bytes as usize;
        let body: Bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|_| too_large(&state))?;
        let o: AnalyzeOptions = serde_json::from_slice(&body).map_err(|e| bad("malformed_json", e.to_string()))?;
        (o, None)
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            format!("content type {content_type:?}: send multipart/form-data (field `media`) or application/json (`path` or `url`)"),
        ));
    };
    let media = match (&upload, &opts.path, &opts.url) {
        (Some(u), None, None) => u.0.to_string_lossy().into_owned(),
        (None, Some(p), None) => allowed_path(&state, p)?,
        (None, None, Some(u)) => {
            if !state.config.allow_urls {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "urls_not_allowed",
                    "this server does not fetch URLs (allow_urls = false)",
                ));
            }
            if !["http://", "https://", "rtsp://"].iter().any(|s| u.starts_with(s)) {
                return Err(bad("invalid_url", "only http, https and rtsp URLs"));
            }
            u.clone()
        }
        (None, None, None) => return Err(bad("missing_media", "give a `path`, a `url`, or upload a `media` file")),
        _ => return Err(bad("ambiguous_media", "give exactly one of `path`, `url` or an uploaded `media` file")),
    };
    let stream = q.stream.or(opts.stream).unwrap_or(false);
    let request = opts
        .into_request(media, state.config.max_new_tokens_limit as u32)
        .map_err(|e| bad("invalid_field", e.to_string()))?;

    // Admission: running + waiting bounded; beyond that, 503 at once.
    let capacity = state.config.max_concurrency + state.config.max_queue;
    if state.admitted.fetch_add(1, Ordering::SeqCst) >= capacity {
        state.admitted.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("{capacity} requests already admitted"),
        )
        .retry(2));
    }
    let admitted = Admitted(state.clone());
    let timeout = Duration::from_secs_f64(state.config.request_timeout_s);
    let permit = tokio::time::timeout(timeout, state.slots.clone().acquire_owned())
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "waited too long for a slot").retry(5))?
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "shutting down"))?;
    let cancel = CancelToken::new();

    if stream {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let st = state.clone();
        let cancel_flag = cancel.clone();
        tokio::task::spawn_blocking(move || {
            let _keep = (admitted, permit, upload);
            st.running.fetch_add(1, Ordering::SeqCst);
            let tx_piece = tx.clone();
            let result = runtime.session(&request, cancel_flag.clone()).and_then(|s| {
                s.run(|piece| {
                    let ev = Event::default().event("piece").data(serde_json::json!({"text": piece}).to_string());
                    if tx_piece.send(ev).is_err() {
                        cancel_flag.cancel(); // the client went away
                    }
                })
            });
            st.running.fetch_sub(1, Ordering::SeqCst);
            let ev = match result {
                Ok(r) => {
                    record_ok(&st, &r, &cancel_flag);
                    Event::default().event("result").data(serde_json::to_string(&r).expect("serialisable"))
                }
                Err(e) => {
                    let e = runtime_error(e);
                    st.metrics().request(e.outcome());
                    Event::default()
                        .event("error")
                        .data(serde_json::json!({"error": {"code": e.code, "message": e.message}}).to_string())
                }
            };
            let _ = tx.send(ev);
        });
        let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let events = futures_util::StreamExt::map(events, Ok::<Event, Infallible>);
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }

    let guard = CancelOnDrop(cancel.clone());
    let st = state.clone();
    let flag = cancel.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _keep = (admitted, permit, upload);
        st.running.fetch_add(1, Ordering::SeqCst);
        let r = runtime.session(&request, flag).and_then(|s| s.run(|_| {}));
        st.running.fetch_sub(1, Ordering::SeqCst);
        r
    });
    let outcome = tokio::time::timeout(timeout, job).await;
    let result = match outcome {
        Err(_) => {
            cancel.cancel();
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("the request took longer than {timeout:?}"),
            ));
        }
        Ok(Err(join)) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", join.to_string())),
        Ok(Ok(r)) => r.map_err(runtime_error)?,
    };
    std::mem::forget(guard); // finished: nothing to cancel
    record_ok(&state, &result, &cancel);
    Ok(Json(result).into_response())
}

fn record_ok(state: &AppState, r: &AnalyzeResult, cancel: &CancelToken) {
    let mut m = state.metrics();
    m.request(if cancel.is_cancelled() { "cancelled" } else { "ok" });
    m.stages(&r.timings_ms, r.tokens.decode_per_s, r.tokens.generated);
}
