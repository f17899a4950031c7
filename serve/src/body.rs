//! Request bodies, read only after admission and under limits a reverse proxy would
//! otherwise impose: a size cap (a declared `Content-Length` over it is refused before
//! hyper sends `100 Continue`; a chunked body is cut where it passes the cap) and a
//! time budget that grows with what arrives (`body_timeout_s` plus one second per
//! `body_min_rate` bytes, Apache mod_reqtimeout's rule), so a trickling client is cut off
//! while a slow but honest upload finishes. JSON is read into memory (bounded by
//! `max_json_bytes`), a multipart `media` file streams to a private file on disk.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, StatusCode};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use emollama_runtime::AnalyzeOptions;

use crate::error::ApiError;
use crate::uploads::{Upload, UploadDir};
use crate::ServeConfig;

/// Why a body stopped early (shared between the body stream and its reader).
#[derive(Default)]
struct Verdict(AtomicU8);

const TOO_LARGE: u8 = 1;
const TOO_SLOW: u8 = 2;
/// The service began to shut down while the body arrived.
const DRAINING: u8 = 3;

impl Verdict {
    fn set(&self, v: u8) {
        self.0.store(v, Ordering::SeqCst);
    }
}

/// The limits of one body.
#[derive(Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
    pub min_rate: u64,
}

impl BodyLimits {
    pub fn json(c: &ServeConfig) -> Self {
        Self::with_max(c, c.max_json_bytes)
    }

    /// The media file plus room for the text fields.
    pub fn multipart(c: &ServeConfig) -> Self {
        Self::with_max(c, c.max_upload_bytes.saturating_add(c.max_json_bytes))
    }

    /// A JSON body that may carry the media file as base64 (4 characters per 3 bytes),
    /// plus room for the text.
    pub fn json_with_media(c: &ServeConfig) -> Self {
        Self::with_max(c, c.max_upload_bytes.div_ceil(3).saturating_mul(4).saturating_add(c.max_json_bytes))
    }

    fn with_max(c: &ServeConfig, max_bytes: u64) -> Self {
        Self { max_bytes, timeout: ServeConfig::duration(c.body_timeout_s), min_rate: c.body_min_rate }
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body exceeds {limit} bytes"))
}

/// 413 from the headers alone, before any body byte is asked for.
pub fn check_declared_length(headers: &HeaderMap, limits: &BodyLimits) -> Result<(), ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limits.max_bytes => Err(too_large(limits.max_bytes)),
        _ => Ok(()),
    }
}

/// A body that ends with an error once it passes its size cap, falls behind its time
/// budget, or the service starts to shut down (`stopping` turns true: the client gets a
/// 503 it can retry elsewhere, at once, not a connection closed at the end of the
/// drain); `Verdict` says which.
fn limited(body: Body, limits: BodyLimits, stopping: watch::Receiver<bool>) -> (Body, Arc<Verdict>) {
    let verdict = Arc::new(Verdict::default());
    let v = verdict.clone();
    let started = Instant::now();
    let state = (body.into_data_stream(), 0u64, false, stopping);
    let stream = futures_util::stream::unfold(state, move |(mut inner, received, done, mut stopping)| {
        let v = v.clone();
        async move {
            if done {
                return None;
            }
            let budget = limits.timeout + Duration::from_secs_f64(received as f64 / limits.min_rate as f64);
            let deadline = tokio::time::Instant::from_std(started + budget);
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, inner.next()) => Some(next),
                _ = stopping.wait_for(|s| *s) => None,
            };
            let Some(next) = next else {
                v.set(DRAINING);
                return Some((
                    Err(std::io::Error::other("the service is shutting down")),
                    (inner, received, true, stopping),
                ));
            };
            let cut = match next {
                Ok(None) => return None,
                Ok(Some(Ok(bytes))) if received + bytes.len() as u64 <= limits.max_bytes => {
                    let received = received + bytes.len() as u64;
                    return Some((Ok(bytes), (inner, received, false, stopping)));
                }
                Ok(Some(Err(e))) => return Some((Err(std::io::Error::other(e)), (inner, received, true, stopping))),
                Ok(Some(Ok(_))) => (TOO_LARGE, "the body is too large"),
                Err(_) => (TOO_SLOW, "the body arrived too slowly"),
            };
            v.set(cut.0);
            Some((Err(std::io::Error::other(cut.1)), (inner, received, true, stopping)))
        }
    });
    (Body::from_stream(stream), verdict)
}

/// The error for a body that could not be read: too large, too slow, or malformed.
fn body_error(verdict: &Verdict, limits: &BodyLimits, detail: impl std::fmt::Display) -> ApiError {
    match verdict.0.load(Ordering::SeqCst) {
        TOO_LARGE => too_large(limits.max_bytes),
        DRAINING => crate::routes::draining(),
        TOO_SLOW => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {:.0} s plus 1 s per {} bytes",
                limits.timeout.as_secs_f64(),
                limits.min_rate
            ),
        ),
        _ => ApiError::bad("malformed_body", format!("the body could not be read: {detail}")),
    }
}

/// A JSON body, whole, as `T`.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request,
    limits: BodyLimits,
    stopping: watch::Receiver<bool>,
) -> Result<T, ApiError> {
    let (body, verdict) = limited(req.into_body(), limits, stopping);
    let bytes: Bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| body_error(&verdict, &limits, e))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad("malformed_json", e.to_string()))
}

/// A body written to a private file as it arrives (a chat request's JSON may carry a
/// clip as base64: up to the upload limit, not held in memory).
pub async fn read_to_file(
    req: Request,
    limits: BodyLimits,
    uploads: &UploadDir,
    stopping: watch::Receiver<bool>,
) -> Result<Upload, ApiError> {
    let (body, verdict) = limited(req.into_body(), limits, stopping);
    let (upload, file) = uploads.new_file().map_err(|e| ApiError::internal("upload_failed", e))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_error(&verdict, &limits, e))?;
        file.write_all(&chunk).await.map_err(|e| ApiError::internal("upload_failed", e))?;
    }
    file.flush().await.map_err(|e| ApiError::internal("upload_failed", e))?;
    Ok(upload)
}

/// A multipart body: the `media` file to a private file (counting bytes as they come),
/// the text fields as options with JSON's rules: each a known option given once (refused
/// from its header, before its value is read), all of them together at most
/// `max_json_bytes`, as a JSON body.
pub async fn read_multipart(
    req: Request,
    limits: BodyLimits,
    config: &ServeConfig,
    uploads: &UploadDir,
    stopping: watch::Receiver<bool>,
) -> Result<(AnalyzeOptions, Upload), ApiError> {
    let (parts, body) = req.into_parts();
    let (body, verdict) = limited(body, limits, stopping);
    let req = Request::from_parts(parts, body);
    let mut mp = Multipart::from_request(req, &()).await.map_err(|e| ApiError::bad("bad_multipart", e.body_text()))?;
    let err = |e: axum::extract::multipart::MultipartError| match verdict.0.load(Ordering::SeqCst) {
        0 => ApiError::bad("bad_multipart", e.body_text()),
        _ => body_error(&verdict, &limits, ""),
    };
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut text_total: u64 = 0;
    let mut upload = None;
    while let Some(mut field) = mp.next_field().await.map_err(err)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "media" {
            if upload.is_some() {
                return Err(ApiError::bad("ambiguous_media", "the upload has two `media` parts"));
            }
            let (mut guard, file) = uploads.new_file().map_err(|e| ApiError::internal("upload_failed", e))?;
            guard.set_client_name(field.file_name());
            let mut file = tokio::fs::File::from_std(file);
            let mut written: u64 = 0;
            while let Some(chunk) = field.chunk().await.map_err(err)? {
                written += chunk.len() as u64;
                if written > config.max_upload_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "upload_too_large",
                        format!("the upload exceeds {} bytes", config.max_upload_bytes),
                    ));
                }
                file.write_all(&chunk).await.map_err(|e| ApiError::internal("upload_failed", e))?;
            }
            file.flush().await.map_err(|e| ApiError::internal("upload_failed", e))?;
            if written == 0 {
                return Err(ApiError::bad("empty_upload", "the uploaded media is empty"));
            }
            upload = Some(guard);
        } else {
            if !AnalyzeOptions::knows_field(&name) {
                return Err(ApiError::bad("unknown_field", format!("the upload has a field {name:?}: not an option")));
            }
            if fields.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad("invalid_field", format!("field {name:?} is given twice")));
            }
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(err)? {
                text.extend_from_slice(&chunk);
                text_total += chunk.len() as u64;
                if text_total > config.max_json_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "fields_too_large",
                        format!(
                            "the upload's text fields exceed {} bytes together (max_json_bytes)",
                            config.max_json_bytes
                        ),
                    ));
                }
            }
            let text = String::from_utf8(text)
                .map_err(|_| ApiError::bad("invalid_field", format!("field {name:?} is not UTF-8")))?;
            fields.push((name, text));
        }
    }
    let upload = upload.ok_or_else(|| ApiError::bad("missing_media", "multipart upload needs a `media` file field"))?;
    // The same rules as a JSON body: each field is parsed as its type, once.
    let opts = AnalyzeOptions::from_form(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ApiError::bad("invalid_field", e.to_string()))?;
    Ok((opts, upload))
}
