//! The one error shape of every answer, OpenAI's (`{"error": {"message", "type",
//! "param", "code"}}`, so the `openai` SDK reads it) with a stable `code`; `Retry-After`
//! on 503s that a client should retry, `x-should-retry: false` where a retry cannot
//! help (the SDK would otherwise run a failed inference three times); and the outcome
//! under which `/metrics` counts it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use emollama_engines::EngineError;
use emollama_media::MediaError;
use emollama_runtime::RuntimeError;

/// An error answered as JSON `{"error": {"message", "type", "param", "code"}}` with a
/// stable code.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// The request field at fault, when there is one.
    param: Option<String>,
    retry_after: Option<u64>,
}

/// nginx's "client closed request": the client left before its answer.
pub const CLIENT_CLOSED: u16 = 499;

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), param: None, retry_after: None }
    }

    pub(crate) fn param(mut self, field: impl Into<String>) -> Self {
        self.param = Some(field.into());
        self
    }

    pub(crate) fn retry(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The client left, or the service cancelled the run (499, as nginx logs it).
    pub(crate) fn cancelled() -> Self {
        Self::new(
            StatusCode::from_u16(CLIENT_CLOSED).expect("a valid status"),
            "cancelled",
            "the request was cancelled",
        )
    }

    pub(crate) fn internal(code: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, message.to_string())
    }

    /// The `/metrics` outcome this answer counts under.
    pub(crate) fn outcome(&self) -> &'static str {
        match self.status {
            _ if self.code == "timeout" => "timeout",
            _ if self.code == "cancelled" => "cancelled",
            StatusCode::SERVICE_UNAVAILABLE if self.code == "draining" => "draining",
            StatusCode::SERVICE_UNAVAILABLE => "busy",
            s if s.is_client_error() => "client_error",
            _ => "server_error",
        }
    }

    /// OpenAI's error `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable_error",
            s if s.as_u16() == CLIENT_CLOSED => "cancelled",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The body, also sent as the last event of a stream that fails.
    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message, "type": self.kind(), "param": self.param, "code": self.code,
        }})
    }

    /// Whether a client's retry may succeed: the service was busy, loading or stopping
    /// (it says when, with `Retry-After`) or the body came too slowly. Bad media, a
    /// prompt that does not fit, a wrong field or a failed run fail again.
    fn retryable(&self) -> bool {
        self.retry_after.is_some() || self.status == StatusCode::REQUEST_TIMEOUT
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if !self.retryable() {
            resp.headers_mut().insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A user's text (a path, a URL, a file name) as an error message shows it: control
/// characters escaped, at most 160 characters (the first 100, `…`, the last 50), so an
/// answer never echoes half a megabyte back.
pub(crate) fn shown(text: &str) -> String {
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    let chars: Vec<char> = escaped.chars().collect();
    if chars.len() <= 160 {
        return escaped;
    }
    let head: String = chars[..100].iter().collect();
    let tail: String = chars[chars.len() - 50..].iter().collect();
    format!("{head}…{tail}")
}

pub(crate) fn runtime_error(e: RuntimeError) -> ApiError {
    use StatusCode as S;
    match e {
        RuntimeError::Media(m) => match m {
            MediaError::NotFound(_) => ApiError::new(S::NOT_FOUND, "media_not_found", m.to_string()),
            MediaError::Empty(_) => ApiError::new(S::BAD_REQUEST, "empty_media", m.to_string()),
            MediaError::FileTooLarge { .. } => ApiError::new(S::PAYLOAD_TOO_LARGE, "media_too_large", m.to_string()),
            MediaError::Timeout { .. } => ApiError::new(S::UNPROCESSABLE_ENTITY, "media_timeout", m.to_string()),
            MediaError::Cancelled { .. } => ApiError::cancelled(),
            MediaError::TooLong { .. } | MediaError::ResolutionTooLarge { .. } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "media_over_limit", m.to_string())
            }
            _ => ApiError::new(S::UNPROCESSABLE_ENTITY, "unreadable_media", m.to_string()),
        },
        RuntimeError::Engine(EngineError::Sampling(msg)) => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_parameter", msg)
        }
        RuntimeError::Request(r) => ApiError::new(S::BAD_REQUEST, "invalid_field", r.to_string()).param(r.field),
        RuntimeError::Features(f) => ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_features", f.to_string()),
        RuntimeError::NoProjector { .. } => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "features_not_supported", e.to_string())
        }
        RuntimeError::Engine(EngineError::ContextOverflow { .. }) => {
            ApiError::new(S::UNPROCESSABLE_ENTITY, "context_overflow", e.to_string())
        }
        RuntimeError::Engine(EngineError::Cancelled) => ApiError::cancelled(),
        other => ApiError::new(S::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
    }
}
