//! Routes. Every inference route (`/v1/analyze`, `/v1/chat/completions`, the official
//! repository's `/process_video` and `/api/predict/`) goes through the same steps, in an
//! order that makes refusals cheap: the token, draining and readiness from the headers;
//! the declared length (413 before `100 Continue`); admission (503 when running +
//! waiting is at capacity, before a body byte is read); the body under its size and time
//! limits; every field validated, the media sources opened and the prompt fitted to the
//! context; only then the wait for a slot, and the run under the request's deadline.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use emollama_runtime::prompt::read_user_text;
use emollama_runtime::{AnalyzeOptions, AnalyzeRequest, AnalyzeResult, Layout, Pipeline, Preset};

use crate::body::{check_declared_length, read_json, read_multipart, read_to_file, BodyLimits};
use crate::error::{runtime_error, shown, ApiError};
use crate::job::{Admitted, Job};
use crate::metrics::Gauges;
use crate::openai::{self, ChatInput, Completion, MediaInput};
use crate::request_log::{request_id, RequestLog};
use crate::uploads::Upload;
use crate::{AppState, ServeConfig};

pub fn router(state: Arc<AppState>) -> Router {
    let console = state.config.console;
    let router = Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "alive"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/analyze", post(analyze))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/process_video", post(process_video))
        .route("/api/predict", post(gradio_predict))
        .route("/api/predict/", post(gradio_predict))
        .route("/v1/watch/events", get(watch_events))
        .route("/v1/watch/frame", get(watch_frame))
        .route("/v1/status", get(status));
    let router = if console {
        router
            .route("/", get(crate::console::index))
            .route("/favicon.ico", get(crate::console::favicon))
            .route("/console/{*path}", get(crate::console::asset))
    } else {
        router
    };
    router
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

/// `ready`, or `degraded` when a watched source stopped for good (the service still
/// serves requests); else the 503 that says why not (draining, loading, startup failed).
fn readiness(state: &AppState) -> Result<&'static str, ApiError> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(draining());
    }
    match (state.ready.get(), state.startup_error.get()) {
        (Some(_), _) => Ok(if state.watch.failures().is_empty() { "ready" } else { "degraded" }),
        (None, Some(e)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "startup_failed", e.clone())),
        (None, None) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "loading", "engines are loading and warming up")
                .retry(5))
        }
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match readiness(&state) {
        Ok(status) => {
            let failed = state.watch.failures();
            Json(serde_json::json!({"status": status, "ready": state.ready.get(), "watch_failed": failed}))
                .into_response()
        }
        Err(e) => e.into_response(),
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
pub(crate) struct WatchQuery {
    source: Option<String>,
}

/// The token, then the `[[watch]]` source a watch endpoint's query names (None: all).
fn watched_source(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Option<String>, ApiError> {
    check_token(state, headers)?;
    let source = query.map_err(|e| ApiError::bad("invalid_query", e.body_text()))?.0.source;
    if let Some(name) = &source {
        if !state.watch.has(name) {
            let names = state.watch.names().join(", ");
            let msg = format!("no [[watch]] source {name:?} (the sources: {names})");
            return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_source", msg));
        }
    }
    Ok(source)
}

/// `GET /v1/watch/events[?source=NAME]`: the `[[watch]]` sources' events as Server-Sent
/// Events (`window`, `connected`, `reconnecting`, `window_failed`, `ended`), from now on.
async fn watch_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Response {
    let source = match watched_source(&state, &headers, query) {
        Ok(source) => source,
        Err(e) => return e.into_response(),
    };
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

/// What the console shows, in one call: readiness (the bundle, model family, profile,
/// providers, plan), each `[[watch]]` source's state and last windows, and the last
/// failed requests.
async fn status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_token(&state, &headers) {
        return e.into_response();
    }
    let (status, message) = match readiness(&state) {
        Ok(status) => (status, None),
        Err(e) => (e.code, Some(e.message)),
    };
    Json(serde_json::json!({
        "status": status,
        "message": message,
        "ready": state.ready.get(),
        "sources": state.watch.status(),
        "recent_errors": state.metrics().recent_errors(),
    }))
    .into_response()
}

/// The latest window's first frame of a `[[watch]]` source with its face box, as JPEG
/// (`X-Window-Index` says which window).
async fn watch_frame(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Response {
    let source = match watched_source(&state, &headers, query) {
        Ok(Some(source)) => source,
        Ok(None) => return ApiError::bad("invalid_query", "name the source: ?source=NAME").into_response(),
        Err(e) => return e.into_response(),
    };
    let Some((index, jpeg)) = state.watch.frame(&source) else {
        let msg = format!("source {source:?} has no analysed window yet");
        return ApiError::new(StatusCode::NOT_FOUND, "no_frame_yet", msg).into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::HeaderName::from_static("x-window-index"), HeaderValue::from(index)),
        ],
        jpeg.as_ref().clone(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
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

/// The answer of an inference route: its error logged and answered in the one shape,
/// the request id on every answer.
fn respond(result: Result<Response, ApiError>, log: &mut Option<RequestLog>, id: Option<HeaderValue>) -> Response {
    let mut resp = match result {
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

async fn analyze(
    State(state): State<Arc<AppState>>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let mut log = Some(RequestLog::new(state.clone(), request_id(&headers), "analyze"));
    let id = log.as_ref().and_then(RequestLog::header_value);
    let result = analyze_inner(state, query, &headers, req, &mut log).await;
    respond(result, &mut log, id)
}

async fn chat_completions(State(state): State<Arc<AppState>>, headers: HeaderMap, req: Request) -> Response {
    let mut log = Some(RequestLog::new(state.clone(), request_id(&headers), "chat"));
    let id = log.as_ref().and_then(RequestLog::header_value);
    let result = chat_inner(state, &headers, req, &mut log).await;
    respond(result, &mut log, id)
}

/// The official repository's endpoints: its FastAPI `POST /process_video` and its
/// Gradio client's `POST /api/predict/`.
#[derive(Debug, Clone, Copy)]
enum OfficialShape {
    ProcessVideo,
    GradioPredict,
}

async fn process_video(State(state): State<Arc<AppState>>, headers: HeaderMap, req: Request) -> Response {
    official(state, headers, req, OfficialShape::ProcessVideo).await
}

async fn gradio_predict(State(state): State<Arc<AppState>>, headers: HeaderMap, req: Request) -> Response {
    official(state, headers, req, OfficialShape::GradioPredict).await
}

async fn official(state: Arc<AppState>, headers: HeaderMap, req: Request, shape: OfficialShape) -> Response {
    let mut log = Some(RequestLog::new(state.clone(), request_id(&headers), "official"));
    let id = log.as_ref().and_then(RequestLog::header_value);
    let result = official_inner(state, &headers, req, &mut log, shape).await;
    respond(result, &mut log, id)
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let ready = ready_runtime(&state, &headers).map(|runtime| (runtime, state.ready.get()));
    match ready {
        Ok((runtime, Some(info))) => Json(openai::models(runtime.manifest(), info)).into_response(),
        Ok((_, None)) => not_ready().into_response(),
        Err(e) => e.into_response(),
    }
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

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match body_kind(headers) {
        Ok(BodyKind::Json) => Ok(()),
        _ => {
            Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_content_type", "send application/json"))
        }
    }
}

fn not_ready() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "engines are loading").retry(5)
}

/// The token, draining and readiness: the pipeline, or why not.
fn ready_runtime(state: &AppState, headers: &HeaderMap) -> Result<Arc<Pipeline>, ApiError> {
    check_token(state, headers)?;
    if state.draining.load(Ordering::SeqCst) {
        return Err(draining());
    }
    state.runtime.get().cloned().ok_or_else(not_ready)
}

/// A request admitted: the pipeline, its place, its deadline.
struct Admission {
    runtime: Arc<Pipeline>,
    admitted: Admitted,
    deadline: tokio::time::Instant,
}

/// After the token, draining and readiness (`ready_runtime`, which gave `runtime`) and
/// the route's own header checks: the declared length (413 before `100 Continue`), then
/// admission (503 at capacity, before a body byte is read); the deadline starts here.
fn admit(
    state: &Arc<AppState>,
    runtime: Arc<Pipeline>,
    headers: &HeaderMap,
    limits: &BodyLimits,
) -> Result<Admission, ApiError> {
    check_declared_length(headers, limits)?;
    let admitted = Admitted::try_new(state)?;
    let deadline = tokio::time::Instant::now() + ServeConfig::duration(state.config.request_timeout_s);
    Ok(Admission { runtime, admitted, deadline })
}

/// The media source of an analyze request: exactly one of an upload, a path, a URL.
fn analyze_media(upload: Option<Upload>, path: &Option<String>, url: &Option<String>) -> Result<MediaInput, ApiError> {
    match (upload, path, url) {
        (Some(u), None, None) => Ok(MediaInput::Upload(u)),
        (None, Some(p), None) => Ok(MediaInput::Path(p.clone())),
        (None, None, Some(u)) => Ok(MediaInput::Url(u.clone())),
        (None, None, None) => Err(ApiError::bad("missing_media", "give a `path`, a `url`, or upload a `media` file")),
        _ => Err(ApiError::bad("ambiguous_media", "give exactly one of `path`, `url` or an uploaded `media` file")),
    }
}

/// A media source, checked: what the pipeline reads, what errors call it, and the
/// uploaded file removed after the run.
struct Media {
    source: String,
    shown: String,
    upload: Option<Upload>,
}

/// Check a source: a path inside the allowed folders, a URL under the URL policy.
async fn resolve_media(state: &AppState, input: MediaInput) -> Result<Media, ApiError> {
    match input {
        MediaInput::Upload(u) => {
            Ok(Media { source: u.path().to_string_lossy().into_owned(), shown: u.shown_name(), upload: Some(u) })
        }
        MediaInput::Path(p) => Ok(Media { source: allowed_path(state, &p)?, shown: shown(&p), upload: None }),
        MediaInput::Url(u) => {
            if !state.config.allow_urls {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "urls_not_allowed",
                    "this server does not fetch URLs (allow_urls = false)",
                ));
            }
            state.url_policy.check(&u).await.map_err(|why| {
                ApiError::new(StatusCode::FORBIDDEN, "url_not_allowed", format!("{}: {why}", shown(&u)))
            })?;
            Ok(Media { shown: shown(&u), source: u, upload: None })
        }
    }
}

/// What a request runs on: its clip, a separate audio track, whether the clip is a still.
struct Sources {
    clip: Media,
    audio: Option<Media>,
    still: bool,
}

/// Validated options and checked media → a job holding its slot. Features files are
/// read by path under the media path's rules, and only regular files (a FIFO or a device
/// is refused here, before the slot; the runtime's read checks the file it opens
/// again); the prompt is fitted to the context; then the wait for a slot, bounded by
/// the deadline (closed when draining: the queue gets 503 at once).
async fn start_job(
    state: &Arc<AppState>,
    admission: Admission,
    log: &mut Option<RequestLog>,
    mut opts: AnalyzeOptions,
    sources: Sources,
) -> Result<Job, ApiError> {
    for features in [&mut opts.local_features, &mut opts.temporal_features, &mut opts.audio_features] {
        if let Some(p) = features.take() {
            let path = allowed_path(state, &p)?;
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
    let Sources { clip, audio, still } = sources;
    let mut request: AnalyzeRequest = opts
        .into_request(clip.source, state.config.max_new_tokens_limit as u32)
        .map_err(|e| ApiError::bad("invalid_field", e.to_string()).param(e.field))?;
    // Errors about an upload name the client's file, not the service's private copy;
    // a path or URL is named shortened.
    request.media_name = Some(clip.shown);
    request.still = still;
    let mut uploads: Vec<Upload> = clip.upload.into_iter().collect();
    if let Some(a) = audio {
        request.audio = Some(a.source);
        request.audio_name = Some(a.shown);
        uploads.extend(a.upload);
    }
    let Admission { runtime, admitted, deadline } = admission;
    let checked = runtime.clone();
    let req_copy = request.clone();
    tokio::task::spawn_blocking(move || checked.check_request(&req_copy).and_then(|()| checked.check_media(&req_copy)))
        .await
        .map_err(|e| ApiError::internal("internal", e))?
        .map_err(runtime_error)?;
    let permit = tokio::select! {
        p = state.slots.clone().acquire_owned() => p.map_err(|_| draining())?,
        _ = tokio::time::sleep_until(deadline) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "waited too long for a slot").retry(5));
        }
    };
    let log = log.take().expect("the log is taken once");
    Ok(Job::new(state.clone(), runtime, request, log, deadline, (admitted, permit, uploads)))
}

/// Run a job to its end on a worker thread; a client that leaves cancels it.
async fn run_to_end(job: Job) -> Result<AnalyzeResult, ApiError> {
    let mut guard = CancelOnDrop(Some(job.cancel_token()));
    let backstop = job.deadline() + std::time::Duration::from_secs(10);
    let outcome = tokio::time::timeout_at(backstop, tokio::task::spawn_blocking(move || job.run(|_| {}))).await;
    guard.0 = None; // finished (or given up on): nothing left to cancel from here
    match outcome {
        Err(_) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request did not stop at its deadline"))
        }
        Ok(Err(join)) => Err(ApiError::internal("internal", join)),
        Ok(Ok(result)) => result,
    }
}

async fn analyze_inner(
    state: Arc<AppState>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: &HeaderMap,
    req: Request,
    log: &mut Option<RequestLog>,
) -> Result<Response, ApiError> {
    let runtime = ready_runtime(&state, headers)?;
    let Query(query) = query.map_err(|e| ApiError::bad("invalid_query", e.body_text()))?;
    let kind = body_kind(headers)?;
    let limits = match kind {
        BodyKind::Json => BodyLimits::json(&state.config),
        BodyKind::Multipart => BodyLimits::multipart(&state.config),
    };
    let admission = admit(&state, runtime, headers, &limits)?;
    let (opts, upload): (AnalyzeOptions, _) = match kind {
        BodyKind::Json => (read_json(req, limits, state.stopping.subscribe()).await?, None),
        BodyKind::Multipart => {
            let (o, u) = read_multipart(req, limits, &state.config, &state.uploads, state.stopping.subscribe()).await?;
            (o, Some(u))
        }
    };
    let clip = resolve_media(&state, analyze_media(upload, &opts.path, &opts.url)?).await?;
    let stream = query.stream.or(opts.stream).unwrap_or(false);
    let job = start_job(&state, admission, log, opts, Sources { clip, audio: None, still: false }).await?;
    if stream {
        return Ok(stream_job(job, AnalyzeEvents));
    }
    Ok(Json(run_to_end(job).await?).into_response())
}

/// `/v1/chat/completions`: the body to a private file, read from a memory map on a
/// worker thread (its inline media decoded to files there), then the same path as
/// `/v1/analyze`.
async fn chat_inner(
    state: Arc<AppState>,
    headers: &HeaderMap,
    req: Request,
    log: &mut Option<RequestLog>,
) -> Result<Response, ApiError> {
    let runtime = ready_runtime(&state, headers)?;
    require_json(headers)?;
    let limits = BodyLimits::json_with_media(&state.config);
    let admission = admit(&state, runtime, headers, &limits)?;
    let body = read_to_file(req, limits, &state.uploads, state.stopping.subscribe()).await?;
    let reader = state.clone();
    let input = tokio::task::spawn_blocking(move || -> Result<ChatInput, ApiError> {
        let file = std::fs::File::open(body.path()).map_err(|e| ApiError::internal("upload_failed", e))?;
        if file.metadata().map_err(|e| ApiError::internal("upload_failed", e))?.len() == 0 {
            return Err(ApiError::bad("malformed_json", "the body is empty"));
        }
        // SAFETY: the file is this request's own, private (0600 in the service's 0700
        // folder), and written in full before it is mapped; nothing writes it again.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ApiError::internal("upload_failed", e))?;
        openai::read_chat(&map, &reader.config, &reader.uploads)
    })
    .await
    .map_err(|e| ApiError::internal("internal", e))??;
    let clip = resolve_media(&state, input.clip).await?;
    let audio = match input.audio {
        Some(a) => Some(resolve_media(&state, a).await?),
        None => None,
    };
    let id = log.as_ref().map(|l| l.id.clone()).unwrap_or_default();
    let completion = Completion::new(&id, &admission.runtime.manifest().id, input.include_usage);
    let job = start_job(&state, admission, log, input.options, Sources { clip, audio, still: input.still }).await?;
    if input.stream {
        return Ok(stream_job(job, ChatEvents::new(completion, input.notes)));
    }
    let mut result = run_to_end(job).await?;
    result.notes.extend(input.notes);
    Ok(Json(completion.whole(&result)).into_response())
}

/// `POST /process_video {video_path, question}` → `{response}` (the official FastAPI
/// server), `POST /api/predict/ {data: [video_path, question]}` → `{data: [text],
/// duration}` (its Gradio client): the question read as a chat message's text, the
/// demo's prompt layout and sampling (as `process_video_question` runs them), the clip
/// a path inside the allowed folders.
async fn official_inner(
    state: Arc<AppState>,
    headers: &HeaderMap,
    req: Request,
    log: &mut Option<RequestLog>,
    shape: OfficialShape,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ProcessVideo {
        video_path: String,
        question: String,
    }
    #[derive(Deserialize)]
    struct GradioPredict {
        data: (String, String),
    }
    let runtime = ready_runtime(&state, headers)?;
    require_json(headers)?;
    let limits = BodyLimits::json(&state.config);
    let admission = admit(&state, runtime, headers, &limits)?;
    let started = std::time::Instant::now();
    let stopping = state.stopping.subscribe();
    let (path, question) = match shape {
        OfficialShape::ProcessVideo => {
            let b: ProcessVideo = read_json(req, limits, stopping).await?;
            (b.video_path, b.question)
        }
        OfficialShape::GradioPredict => {
            let b: GradioPredict = read_json(req, limits, stopping).await?;
            b.data
        }
    };
    let text = read_user_text(&question);
    let mut opts =
        AnalyzeOptions { layout: Some(Layout::Demo), preset: Some(Preset::Demo), ..AnalyzeOptions::default() };
    opts.transcript = text.transcript;
    if let Some(task) = text.task {
        opts.ask(task);
    }
    let clip = resolve_media(&state, MediaInput::Path(path)).await?;
    let job = start_job(&state, admission, log, opts, Sources { clip, audio: None, still: false }).await?;
    let result = run_to_end(job).await?;
    let body = match shape {
        OfficialShape::ProcessVideo => serde_json::json!({"response": result.text}),
        OfficialShape::GradioPredict => {
            serde_json::json!({"data": [result.text], "duration": started.elapsed().as_secs_f64()})
        }
    };
    Ok(Json(body).into_response())
}

/// How a stream's events are written: `/v1/analyze`'s named events, or OpenAI's chunks.
pub(crate) trait EventFormat: Send + 'static {
    fn start(&self) -> Option<Event> {
        None
    }
    /// None: nothing to send for this piece.
    fn piece(&self, text: &str) -> Option<Event>;
    fn end(&self, result: Result<AnalyzeResult, ApiError>) -> Vec<Event>;
}

/// `piece` per token, then `result` or `error`.
pub(crate) struct AnalyzeEvents;

impl EventFormat for AnalyzeEvents {
    fn piece(&self, text: &str) -> Option<Event> {
        Some(Event::default().event("piece").data(serde_json::json!({"text": text}).to_string()))
    }

    fn end(&self, result: Result<AnalyzeResult, ApiError>) -> Vec<Event> {
        vec![match result {
            Ok(r) => Event::default().event("result").data(serde_json::to_string(&r).unwrap_or_default()),
            Err(e) => Event::default().event("error").data(e.body().to_string()),
        }]
    }
}

/// `chat.completion.chunk`s as `data:` events (the role first, a piece per token, the
/// finish with the result under `emollama`, the usage when asked), then `[DONE]`; an
/// error as a `data:` event with an `error` key (the SDK raises `APIError` on it).
pub(crate) struct ChatEvents {
    completion: Completion,
    notes: Vec<String>,
    /// Whether text was sent: the answer's leading whitespace (SentencePiece's space
    /// before the first word) is not, so the streamed content equals the plain answer.
    began: std::cell::Cell<bool>,
}

impl ChatEvents {
    pub(crate) fn new(completion: Completion, notes: Vec<String>) -> Self {
        Self { completion, notes, began: Default::default() }
    }
}

impl EventFormat for ChatEvents {
    fn start(&self) -> Option<Event> {
        Some(Event::default().data(self.completion.start()))
    }

    fn piece(&self, text: &str) -> Option<Event> {
        let text = if self.began.get() { text } else { text.trim_start() };
        if text.is_empty() {
            return None;
        }
        self.began.set(true);
        Some(Event::default().data(self.completion.piece(text)))
    }

    fn end(&self, result: Result<AnalyzeResult, ApiError>) -> Vec<Event> {
        match result {
            Ok(mut r) => {
                r.notes.extend(self.notes.iter().cloned());
                let mut events: Vec<Event> =
                    self.completion.finish(&r).into_iter().map(|c| Event::default().data(c)).collect();
                events.push(Event::default().data("[DONE]"));
                events
            }
            Err(e) => vec![Event::default().data(e.body().to_string())],
        }
    }
}

/// Server-Sent Events in `format`. A client that goes away cancels the run at its next
/// token; the deadline cuts it like a plain request.
fn stream_job(job: Job, format: impl EventFormat) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let cancel = job.cancel_token();
    if let Some(first) = format.start() {
        let _ = tx.send(first);
    }
    tokio::task::spawn_blocking(move || {
        let pieces = tx.clone();
        let result = job.run(|piece| {
            if let Some(event) = format.piece(piece) {
                if pieces.send(event).is_err() {
                    cancel.cancel(); // the client went away
                }
            }
        });
        for ev in format.end(result) {
            let _ = tx.send(ev);
        }
    });
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let events = futures_util::StreamExt::map(events, Ok::<Event, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
