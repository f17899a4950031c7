//! The service's request parsers on raw bytes, for the fuzz targets (`fuzz/`): each runs
//! the code a request reaches, with the service's default limits made small, and returns
//! what a handler would get. Not an API: nothing else calls these.

use std::convert::Infallible;
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{header, Uri};
use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use http_body_util::BodyExt;

use crate::body::{read_multipart, BodyLimits};
use crate::error::ApiError;
use crate::openai::{read_chat, ChatInput, Completion};
use crate::routes::{AnalyzeEvents, ChatEvents, EventFormat, StreamQuery, WatchQuery};
use crate::uploads::UploadDir;
use crate::ServeConfig;

/// The service's defaults with room for a fuzzer's inputs only (a larger upload is the
/// same code path with more bytes).
fn config() -> &'static ServeConfig {
    static C: OnceLock<ServeConfig> = OnceLock::new();
    C.get_or_init(|| ServeConfig { max_upload_bytes: 1 << 20, max_json_bytes: 64 << 10, ..ServeConfig::default() })
}

/// One private upload folder per process, as the service has.
fn uploads() -> &'static UploadDir {
    static U: OnceLock<UploadDir> = OnceLock::new();
    U.get_or_init(|| {
        let parent = std::env::temp_dir().join(format!("emollama-fuzz-uploads-{}", std::process::id()));
        UploadDir::create(&parent).expect("a private upload folder in the temporary folder")
    })
}

/// Files in the upload folder: every request's files are gone when its answer is.
pub fn uploads_left() -> usize {
    std::fs::read_dir(uploads().path()).map(|d| d.flatten().filter(|e| e.file_name() != ".lock").count()).unwrap_or(0)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static R: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    R.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime")
    })
}

/// A chat-completions body (JSON, data URLs decoded into the upload folder).
pub fn chat_body(body: &[u8]) -> Result<ChatInput, ApiError> {
    read_chat(body, config(), uploads())
}

/// A `/v1/analyze` multipart upload: `content_type` is the request's header, `body` its
/// bytes; the options and the upload's length, or the error the client would get.
pub fn multipart_body(content_type: &[u8], body: &[u8]) -> Result<(emollama_runtime::AnalyzeOptions, u64), ApiError> {
    let req = Request::builder()
        .uri("/v1/analyze")
        .method("POST")
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.to_vec()));
    let Ok(req) = req else { return Err(ApiError::bad("bad_header", "not a header value")) };
    let (_stopping, stopping) = tokio::sync::watch::channel(false);
    runtime().block_on(async {
        let (options, upload) =
            read_multipart(req, BodyLimits::multipart(config()), config(), uploads(), stopping).await?;
        let len = std::fs::metadata(upload.path()).map(|m| m.len()).unwrap_or(0);
        Ok((options, len))
    })
}

/// The query strings the routes read (`?stream=`, `?source=`), through axum's extractor
/// as the handlers get them: whether each parsed.
pub fn query(query: &str) -> Option<(bool, bool)> {
    let uri: Uri = format!("/v1/analyze?{query}").parse().ok()?;
    Some((Query::<StreamQuery>::try_from_uri(&uri).is_ok(), Query::<WatchQuery>::try_from_uri(&uri).is_ok()))
}

/// What the service writes for one generated piece of text in each stream format
/// (`/v1/analyze?stream=true`'s `piece`, the chat completions chunk), as the bytes on the
/// wire.
pub fn stream_bytes(piece: &str) -> Vec<u8> {
    let chat = ChatEvents::new(Completion::new("fuzz", "emollama-fuzz", false), Vec::new());
    let events: Vec<Event> =
        [AnalyzeEvents.piece(piece), chat.start(), chat.piece(piece)].into_iter().flatten().collect();
    let events = futures_util::stream::iter(events.into_iter().map(Ok::<Event, Infallible>));
    let body = Sse::new(events).into_response().into_body();
    runtime().block_on(async { body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default() })
}
