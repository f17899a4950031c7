//! Routes. `/v1/analyze` goes through its steps in an order that makes refusals cheap:
//! the token, draining and readiness from the headers; the declared length (413 before
//! `100 Continue`); admission (503 when running + waiting is at capacity, before a body
//! byte is read); the body under its size and time limits; every field validated, the
//! media source checked and the prompt fitted to the context; only then the wait for a
//! slot, and the run under the request's deadline.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use emollama_runtime::AnalyzeRequest;

use crate::body::{check_declared_length, read_json, read_multipart, BodyLimits};
use crate::error::{runtime_error, shown, ApiError};
use crate::job::{Admitted, Job};
use crate::metrics::Gauges;
use crate::request_log::{request_id, RequestLog};
use crate::uploads::Upload;
use crate::{AppState, ServeConfig};

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "alive"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/analyze", post(analyze))
        .route("/v1/watch/events", get(watch_events))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint takes another method")
        })
        // Bodies are limited where they are read (body.rs), by kind.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// `Authorization: Bearer TOKEN`, the scheme case-insensitive (RFC 7235), the token
/// compared in constant time.
fn check_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = state.config.token.as_deref() else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let ok = given.is_some_and(|g| {
        g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token"))
    }
}

pub(crate) fn draining() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "the service is shutting down").retry(5)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return draining().into_response();
    }
    match (state.ready.get(), state.startup_error.get()) {
        // A watched source that stopped for good leaves the service serving requests:
        // ready, but degraded, with the source and why.
        (Some(info), _) => {
            let failed = state.watch.failures();
            let status = if failed.is_empty() { "ready" } else { "degraded" };
            Json(serde_json::json!({"status": status, "ready": info, "watch_failed": failed})).into_response()
        }
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
    let gauges = Gauges {
        queue_depth: admitted.saturating_sub(running),
        in_flight: running,
        connections: state.connections.load(Ordering::SeqCst),
        ready: state.ready.get().is_some(),
        draining: state.draining.load(Ordering::SeqCst),
        model_bytes: state.model_bytes.load(Ordering::Relaxed) as u64,
        event_streams: state.watch.subscribers(),
    };
    let text = state.metrics().render(&gauges) + &state.watch.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    source: Option<String>,
}

/// `GET /v1/watch/events[?source=NAME]`: the `[[watch]]` sources' events as Server-Sent
/// Events (`window`, `connected`, `reconnecting`, `window_failed`, `ended`), from now on.
async fn watch_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Response {
    if let Err(e) = check_token(&state, &headers) {
        return e.into_response();
    }
    let source = match query {
        Ok(Query(q)) => q.source,
        Err(e) => return ApiError::bad("invalid_query", e.body_text()).into_response(),
    };
    if let Some(name) = &source {
        if !state.watch.has(name) {
            let names = state.watch.names().join(", ");
            let msg = format!("no [[watch]] source {name:?} (the sources: {names})");
            return ApiError::new(StatusCode::NOT_FOUND, "unknown_source", msg).into_response();
        }
    }
    let Some(events) = state.watch.subscribe(state.config.max_event_streams) else {
        let msg = format!("{} event streams are open (max_event_streams)", state.config.max_event_streams);
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_streams", msg).retry(5).into_response();
    };
    // A stream ends after `event_stream_max_s` (clients reconnect), so none holds its
    // connection for ever.
    let lifetime = tokio::time::sleep(ServeConfig::duration(state.config.event_stream_max_s));
    let events = futures_util::StreamExt::take_until(events, lifetime);
    let events = futures_util::StreamExt::filter(events, move |p| {
        std::future::ready(source.as_ref().is_none_or(|s| *s == p.source))
    });
    let events =
        futures_util::StreamExt::map(events, |p| Ok::<Event, Infallible>(Event::default().event(p.kind).data(p.json)));
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    stream: Option<bool>,
}

/// A path from a request, inside an allowed folder. `..` is resolved on the text first,
/// so the answer (403 outside, 404 missing inside) says nothing about files outside the
/// allowed folders; then symlinks are resolved and checked again.
fn allowed_path(state: &AppState, p: &str) -> Result<String, ApiError> {
    let forbidden = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!("{} is not inside an allowed directory", shown(p)),
        )
    };
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(forbidden());
    }
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let allowed: Vec<PathBuf> =
        state.config.allowed_dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect();
    let inside = |q: &Path| allowed.iter().chain(&state.config.allowed_dirs).any(|d| q.starts_with(d));
    if !inside(&lexical) {
        return Err(forbidden());
    }
    let canon = std::fs::canonicalize(&lexical)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "media_not_found", format!("{} does not exist", shown(p))))?;
    if allowed.iter().any(|d| canon.starts_with(d)) {
        Ok(canon.to_string_lossy().into_owned())
    } else {
        Err(forbidden())
    }
}

/// Cancels the request when dropped: a client that disconnects drops the handler.
struct CancelOnDrop(Option<emollama_engines::CancelToken>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

async fn analyze(
    State(state): State<Arc<AppState>>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let mut log = Some(RequestLog::new(state.clone(), request_id(&headers)));
    let id = log.as_ref().and_then(RequestLog::header_value);
    let mut resp = match analyze_inner(state, query, &headers, req, &mut log).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(l) = log.as_mut() {
                l.failed(&e);
            }
            e.into_response()
        }
    };
    if let Some(id) = id {
        resp.headers_mut().insert("x-request-id", id);
    }
    resp
}

enum BodyKind {
    Json,
    Multipart,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        Ok(BodyKind::Multipart)
    } else if ct.starts_with("application/json") {
        Ok(BodyKind::Json)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            format!(
                "content type {ct:?}: send multipart/form-data (field `media`) or application/json (`path` or `url`)"
            ),
        ))
    }
}

/// The media source of a request: exactly one of an upload, a path, a URL.
async fn media_source(
    state: &AppState,
    upload: &Option<Upload>,
    path: &Option<String>,
    url: &Option<String>,
) -> Result<String, ApiError> {
    match (upload, path, url) {
        (Some(u), None, None) => Ok(u.path().to_string_lossy().into_owned()),
        (None, Some(p), None) => allowed_path(state, p),
        (None, None, Some(u)) => {
            if !state.config.allow_urls {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "urls_not_allowed",
                    "this server does not fetch URLs (allow_urls = false)",
                ));
            }
            state.url_policy.check(u).await.map_err(|why| {
                ApiError::new(StatusCode::FORBIDDEN, "url_not_allowed", format!("{}: {why}", shown(u)))
            })?;
            Ok(u.clone())
        }
        (None, None, None) => Err(ApiError::bad("missing_media", "give a `path`, a `url`, or upload a `media` file")),
        _ => Err(ApiError::bad("ambiguous_media", "give exactly one of `path`, `url` or an uploaded `media` file")),
    }
}

async fn analyze_inner(
    state: Arc<AppState>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: &HeaderMap,
    req: Request,
    log: &mut Option<RequestLog>,
) -> Result<Response, ApiError> {
    check_token(&state, headers)?;
    if state.draining.load(Ordering::SeqCst) {
        return Err(draining());
    }
    let Some(runtime) = state.runtime.get().cloned() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "engines are loading").retry(5));
    };
    let Query(query) = query.map_err(|e| ApiError::bad("invalid_query", e.body_text()))?;
    let kind = body_kind(headers)?;
    let limits = match kind {
        BodyKind::Json => BodyLimits::json(&state.config),
        BodyKind::Multipart => BodyLimits::multipart(&state.config),
    };
    check_declared_length(headers, &limits)?;
    let admitted = Admitted::try_new(&state)?;
    let deadline = tokio::time::Instant::now() + ServeConfig::duration(state.config.request_timeout_s);

    let (opts, upload) = match kind {
        BodyKind::Json => (read_json(req, limits, state.stopping.subscribe()).await?, None),
        BodyKind::Multipart => {
            let (o, u) = read_multipart(req, limits, &state.config, &state.uploads, state.stopping.subscribe()).await?;
            (o, Some(u))
        }
    };
    let media = media_source(&state, &upload, &opts.path, &opts.url).await?;
    let mut opts = opts;
    // Features files are read by path, under the same rules as a media `path`, and only
    // regular files (a FIFO or a device is refused here, before the slot; the runtime's
    // read checks the file it opens again).
    for features in [&mut opts.local_features, &mut opts.temporal_features, &mut opts.audio_features] {
        if let Some(p) = features.take() {
            let path = allowed_path(&state, &p)?;
            match std::fs::metadata(&path) {
                Ok(m) if !m.is_file() => {
                    let kind = emollama_bundle::files::describe_kind(&m);
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_features",
                        format!("features file {} is {kind}, not a regular file", shown(&p)),
                    ));
                }
                _ => *features = Some(path),
            }
        }
    }
    let stream = query.stream.or(opts.stream).unwrap_or(false);
    let mut request: AnalyzeRequest = opts
        .into_request(media, state.config.max_new_tokens_limit as u32)
        .map_err(|e| ApiError::bad("invalid_field", e.to_string()))?;
    // Errors about an upload name the client's file, not the service's private copy;
    // a path or URL is named shortened.
    request.media_name = Some(match &upload {
        Some(u) => u.shown_name(),
        None => shown(&request.media),
    });
    let checked = runtime.clone();
    let req_copy = request.clone();
    tokio::task::spawn_blocking(move || checked.check_request(&req_copy))
        .await
        .map_err(|e| ApiError::internal("internal", e))?
        .map_err(runtime_error)?;

    // The slot: closed when draining (the queue gets 503 at once), bounded by the deadline.
    let permit = tokio::select! {
        p = state.slots.clone().acquire_owned() => p.map_err(|_| draining())?,
        _ = tokio::time::sleep_until(deadline) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "waited too long for a slot").retry(5));
        }
    };
    let log = log.take().expect("the log is taken once");
    let job = Job::new(state.clone(), runtime, request, log, deadline, (admitted, permit, upload));
    if stream {
        return Ok(stream_job(job));
    }
    let mut guard = CancelOnDrop(Some(job.cancel_token()));
    let backstop = deadline + std::time::Duration::from_secs(10);
    let outcome = tokio::time::timeout_at(backstop, tokio::task::spawn_blocking(move || job.run(|_| {}))).await;
    guard.0 = None; // finished (or given up on): nothing left to cancel from here
    match outcome {
        Err(_) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request did not stop at its deadline"))
        }
        Ok(Err(join)) => Err(ApiError::internal("internal", join)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Ok(Ok(result))) => Ok(Json(result).into_response()),
    }
}

/// Server-Sent Events: `piece` per token, then `result` or `error`. A client that goes
/// away cancels the run at its next token; the deadline cuts it like a plain request.
fn stream_job(job: Job) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let cancel = job.cancel_token();
    tokio::task::spawn_blocking(move || {
        let pieces = tx.clone();
        let result = job.run(|piece| {
            let ev = Event::default().event("piece").data(serde_json::json!({"text": piece}).to_string());
            if pieces.send(ev).is_err() {
                cancel.cancel(); // the client went away
            }
        });
        let ev = match result {
            Ok(r) => Event::default().event("result").data(serde_json::to_string(&r).unwrap_or_default()),
            Err(e) => Event::default()
                .event("error")
                .data(serde_json::json!({"error": {"code": e.code, "message": e.message}}).to_string()),
        };
        let _ = tx.send(ev);
    });
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let events = futures_util::StreamExt::map(events, Ok::<Event, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
