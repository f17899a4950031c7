//! The OpenAI-compatible API. `POST /v1/chat/completions` bodies, as the `openai` SDK,
//! LangChain and the clients of vLLM and llama.cpp send them, are read here into the
//! same [`AnalyzeOptions`] as `/v1/analyze` (so one set of rules validates both) plus
//! the request's media; the answers are shaped here (`chat.completion`,
//! `chat.completion.chunk`, the model list). [`read_chat`] lists what is accepted,
//! ignored and refused.
//!
//! The body arrives in a private file (a clip travels as base64: up to the upload
//! limit) and is parsed from a memory map, its base64 borrowed, never copied whole, and
//! decoded in chunks into its own private file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;

use axum::http::StatusCode;
use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use emollama_runtime::prompt::{read_user_text, Task};
use emollama_runtime::{AnalyzeOptions, AnalyzeResult, TaskKind};

use crate::error::{shown, ApiError};
use crate::uploads::{Upload, UploadDir};
use crate::ServeConfig;

/// Where a request's clip or audio track comes from.
#[derive(Debug)]
pub enum MediaInput {
    /// Inline data, decoded to a private file.
    Upload(Upload),
    /// A local path (absolute, or a `file://` URL), checked against `allowed_dirs`.
    Path(String),
    /// An http(s) URL, checked against the URL policy.
    Url(String),
}

/// A chat request, read.
#[derive(Debug)]
pub struct ChatInput {
    pub options: AnalyzeOptions,
    pub clip: MediaInput,
    /// The clip is a still image (`image_url`).
    pub still: bool,
    /// A separate audio track (`input_audio`, `audio_url`).
    pub audio: Option<MediaInput>,
    pub stream: bool,
    pub include_usage: bool,
    /// What the request held that was ignored, told in the result's notes.
    pub notes: Vec<String>,
}

/// More content parts than any prompt of this model needs (one clip, one audio track,
/// text); 10,000 parts are refused, not walked.
const MAX_PARTS: usize = 64;
const MAX_MESSAGES: usize = 16;

/// OpenAI parameters whose default is all this service does: accepted at that value
/// (clients send them filled in), refused at any other.
const DEFAULT_ONLY: [(&str, &str); 15] = [
    ("frequency_penalty", "0"),
    ("presence_penalty", "0"),
    ("logprobs", "false"),
    ("top_logprobs", "0"),
    ("logit_bias", "{}"),
    ("tools", "[]"),
    ("functions", "[]"),
    ("tool_choice", "\"none\""),
    ("function_call", "\"none\""),
    ("response_format", "{\"type\":\"text\"}"),
    ("modalities", "[\"text\"]"),
    ("audio", "null"),
    ("prediction", "null"),
    ("reasoning_effort", "null"),
    ("web_search_options", "null"),
];

/// OpenAI parameters that change nothing here (bookkeeping, the one model served).
const IGNORED: [&str; 8] = [
    "model",
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "safety_identifier",
    "prompt_cache_key",
];

/// Options of `/v1/analyze` that a chat request gives another way.
const GIVEN_OTHERWISE: [(&str, &str); 4] = [
    ("path", "give the clip as a content part (video_url, input_video, image_url or file)"),
    ("url", "give the clip as a content part (video_url, input_video, image_url or file)"),
    ("question", "write the question in the user message"),
    ("max_new_tokens", "use max_tokens or max_completion_tokens"),
];

#[derive(Deserialize)]
struct Message<'a> {
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    Text {
        #[serde(borrow)]
        text: Cow<'a, str>,
    },
    /// vLLM, mistral.rs.
    VideoUrl {
        #[serde(borrow)]
        video_url: UrlRef<'a>,
    },
    /// llama.cpp's server.
    InputVideo {
        #[serde(borrow)]
        input_video: Inline<'a>,
    },
    ImageUrl {
        #[serde(borrow)]
        image_url: UrlRef<'a>,
    },
    /// OpenAI: base64 without a `data:` prefix; llama.cpp also takes `url`.
    InputAudio {
        #[serde(borrow)]
        input_audio: Inline<'a>,
    },
    AudioUrl {
        #[serde(borrow)]
        audio_url: UrlRef<'a>,
    },
    /// The SDK's typed way to send any file.
    File {
        #[serde(borrow)]
        file: FilePart<'a>,
    },
}

/// `{"url": …}`, or the URL alone as some clients send it.
#[derive(Deserialize)]
#[serde(untagged)]
enum UrlRef<'a> {
    Plain(#[serde(borrow)] Cow<'a, str>),
    Object {
        #[serde(borrow)]
        url: Cow<'a, str>,
    },
}

impl<'a> UrlRef<'a> {
    fn url(&self) -> &str {
        match self {
            UrlRef::Plain(u) | UrlRef::Object { url: u } => u,
        }
    }
}

#[derive(Deserialize)]
struct Inline<'a> {
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    url: Option<Cow<'a, str>>,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Deserialize)]
struct FilePart<'a> {
    #[serde(borrow, default)]
    file_data: Option<Cow<'a, str>>,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    file_id: Option<String>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What a media part is for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Clip,
    Still,
    Audio,
}

impl Slot {
    fn what(self) -> &'static str {
        match self {
            Slot::Clip => "a video",
            Slot::Still => "an image",
            Slot::Audio => "audio",
        }
    }

    /// Whether a data URL's media type fits the part (empty: not given, FFmpeg sniffs).
    fn accepts(self, media_type: &str) -> bool {
        let generic = ["", "application/octet-stream"].contains(&media_type);
        generic
            || match self {
                Slot::Clip => {
                    media_type.starts_with("video/")
                        || ["application/mp4", "application/x-matroska"].contains(&media_type)
                }
                Slot::Still => media_type.starts_with("image/"),
                Slot::Audio => media_type.starts_with("audio/") || media_type.starts_with("video/"),
            }
    }
}

/// Where an error points: `messages[m].content[p]`.
fn at(message: usize, part: usize) -> String {
    format!("messages[{message}].content[{part}]")
}

fn field_error(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_field", message).param(param)
}

/// Read a chat request body (JSON bytes) into options and media; inline media is decoded
/// into `uploads`. Accepted: `messages` (one user turn; text as a string or content
/// parts; a clip as `video_url`, `input_video`, `image_url` or `file`; a separate audio
/// track as `input_audio` or `audio_url`), `max_tokens` / `max_completion_tokens`,
/// `temperature`, `top_p`, `seed`, `stop`, `n` (1), `stream`,
/// `stream_options.include_usage`, and `/v1/analyze`'s options as extra keys. Ignored:
/// [`IGNORED`], system and developer messages (said in the notes). Refused: earlier
/// turns, [`DEFAULT_ONLY`] at other than their default, [`GIVEN_OTHERWISE`], unknown keys.
pub fn read_chat(body: &[u8], config: &ServeConfig, uploads: &UploadDir) -> Result<ChatInput, ApiError> {
    let top: BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| ApiError::bad("malformed_json", e.to_string()))?;
    let mut options = serde_json::Map::new();
    // Which request key set each option, for "given twice" errors.
    let mut given_as: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |option: &str, key: &str, value: Value| -> Result<(), ApiError> {
        if let Some(first) = given_as.get(option) {
            return Err(field_error(key, format!("{key}: {option} is already given (as {first})")));
        }
        given_as.insert(option.to_string(), key.to_string());
        options.insert(option.to_string(), value);
        Ok(())
    };
    let parse = |key: &str, raw: &RawValue| -> Result<Value, ApiError> {
        serde_json::from_str(raw.get()).map_err(|e| field_error(key, format!("{key}: {e}")))
    };
    let mut messages = None;
    let (mut stream, mut include_usage) = (false, false);
    let mut small_fields = 0usize;
    for (key, raw) in &top {
        if key == "messages" {
            messages = Some(*raw);
            continue;
        }
        small_fields += key.len() + raw.get().len();
        if small_fields as u64 > config.max_json_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "fields_too_large",
                format!("the fields besides `messages` exceed {} bytes (max_json_bytes)", config.max_json_bytes),
            ));
        }
        if raw.get() == "null" || IGNORED.contains(&key.as_str()) {
            continue;
        }
        let value = parse(key, raw)?;
        match key.as_str() {
            "max_tokens" | "max_completion_tokens" => put("max_new_tokens", key, value)?,
            "temperature" => put("temperature", key, value)?,
            "top_p" => put("top_p", key, value)?,
            "seed" => put("seed", key, value)?,
            "stop" => put("stop", key, value)?,
            "n" if value.as_u64() == Some(1) => {}
            "n" => return Err(field_error("n", "n: this service returns one choice (n = 1)")),
            "stream" => stream = value.as_bool().ok_or_else(|| field_error("stream", "stream: not a boolean"))?,
            "stream_options" => {
                let o: StreamOptions =
                    serde_json::from_value(value).map_err(|e| field_error("stream_options", e.to_string()))?;
                include_usage = o.include_usage;
            }
            k => {
                if let Some((_, default)) = DEFAULT_ONLY.iter().find(|(name, _)| *name == k) {
                    let default: Value = serde_json::from_str(default).expect("a JSON literal");
                    if !same_value(&value, &default) {
                        return Err(ApiError::bad(
                            "unsupported_parameter",
                            format!("{k} is not supported by this service (only {default} is)"),
                        )
                        .param(k));
                    }
                } else if let Some((_, how)) = GIVEN_OTHERWISE.iter().find(|(name, _)| *name == k) {
                    return Err(ApiError::bad("unsupported_parameter", format!("{k}: {how}")).param(k));
                } else if AnalyzeOptions::knows_field(k) {
                    put(k, k, value)?;
                } else {
                    return Err(ApiError::bad(
                        "unknown_field",
                        format!("{}: not a parameter of this service", shown(k)),
                    )
                    .param(k.to_string()));
                }
            }
        }
    }
    let messages = messages.ok_or_else(|| field_error("messages", "messages: required"))?;
    let messages: Vec<Message> =
        serde_json::from_str(messages.get()).map_err(|e| field_error("messages", format!("messages: {e}")))?;
    if messages.len() > MAX_MESSAGES {
        return Err(field_error("messages", format!("{} messages: a request has one user turn", messages.len())));
    }
    let mut notes = Vec::new();
    let mut user = None;
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_ref() {
            "system" | "developer" => {
                notes.push(format!("the {} message was ignored: the model's prompt has no system turn", m.role));
            }
            "user" if user.is_none() => user = Some((i, m)),
            role => {
                return Err(ApiError::bad(
                    "multi_turn_not_supported",
                    format!(
                        "messages[{i}] ({}): the model's prompt has one user turn; send one user message, \
                         without earlier turns",
                        shown(role)
                    ),
                )
                .param(format!("messages[{i}]")));
            }
        }
    }
    let (index, user) = user.ok_or_else(|| field_error("messages", "messages: no user message"))?;
    let parts: Vec<&Part> = match &user.content {
        None => Vec::new(),
        Some(Content::Text(_)) => Vec::new(),
        Some(Content::Parts(p)) if p.len() > MAX_PARTS => {
            return Err(ApiError::bad(
                "too_many_parts",
                format!("{} content parts: at most {MAX_PARTS} (one clip, one audio track, text)", p.len()),
            )
            .param(format!("messages[{index}].content")));
        }
        Some(Content::Parts(p)) => p.iter().collect(),
    };
    let mut text: Vec<&str> = match &user.content {
        Some(Content::Text(t)) => vec![t.as_ref()],
        _ => Vec::new(),
    };
    let mut clip: Option<(MediaInput, bool)> = None;
    let mut audio: Option<MediaInput> = None;
    for (p, part) in parts.into_iter().enumerate() {
        let param = at(index, p);
        let media = match part {
            Part::Text { text: t } => {
                text.push(t);
                continue;
            }
            Part::VideoUrl { video_url } => (Slot::Clip, media_ref(video_url.url(), Slot::Clip, None, &param)?),
            Part::InputVideo { input_video } => (Slot::Clip, inline_ref(input_video, Slot::Clip, &param)?),
            Part::ImageUrl { image_url } => (Slot::Still, media_ref(image_url.url(), Slot::Still, None, &param)?),
            Part::InputAudio { input_audio } => (Slot::Audio, inline_ref(input_audio, Slot::Audio, &param)?),
            Part::AudioUrl { audio_url } => (Slot::Audio, media_ref(audio_url.url(), Slot::Audio, None, &param)?),
            Part::File { file } => {
                if file.file_id.is_some() {
                    return Err(
                        ApiError::bad("unsupported_parameter", "file_id: send the file as file_data").param(param)
                    );
                }
                let data = file.file_data.as_deref().ok_or_else(|| field_error(&param, "file: no file_data"))?;
                let name = file.filename.as_deref();
                match data_url(data) {
                    Some((t, _)) if t.starts_with("image/") => {
                        (Slot::Still, media_ref(data, Slot::Still, name, &param)?)
                    }
                    Some(_) => (Slot::Clip, media_ref(data, Slot::Clip, name, &param)?),
                    // OpenAI's SDK examples send bare base64 too.
                    None => (Slot::Clip, Ref::Inline { media_type: String::new(), base64: data, name }),
                }
            }
        };
        let media = match media {
            (slot, Ref::Inline { media_type, base64, name }) => {
                if !slot.accepts(&media_type) {
                    return Err(ApiError::bad(
                        "invalid_media_type",
                        format!("{param}: a {media_type} data URL is not {}", slot.what()),
                    )
                    .param(param));
                }
                (slot, MediaInput::Upload(decode_to_file(base64, uploads, config.max_upload_bytes, name, &param)?))
            }
            (slot, Ref::Path(p)) => (slot, MediaInput::Path(p)),
            (slot, Ref::Url(u)) => (slot, MediaInput::Url(u)),
        };
        match media {
            (Slot::Audio, m) if audio.is_none() => audio = Some(m),
            (Slot::Audio, _) => {
                return Err(ApiError::bad("ambiguous_media", "the message has two audio parts").param(param));
            }
            (slot, m) if clip.is_none() => clip = Some((m, slot == Slot::Still)),
            _ => {
                return Err(ApiError::bad(
                    "ambiguous_media",
                    "the message has two clips (video_url, input_video, image_url, file): send one",
                )
                .param(param))
            }
        }
    }
    let (clip, still) = clip.ok_or_else(|| {
        ApiError::bad(
            "missing_media",
            "the user message has no clip: add a video_url, input_video, image_url or file part",
        )
        .param(format!("messages[{index}].content"))
    })?;
    let text = text.join("\n");
    if text.len() as u64 > config.max_json_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text_too_long",
            format!("the message's text exceeds {} bytes (max_json_bytes)", config.max_json_bytes),
        ));
    }
    let mut options: AnalyzeOptions =
        serde_json::from_value(Value::Object(options)).map_err(|e| ApiError::bad("invalid_field", e.to_string()))?;
    let param = format!("messages[{index}].content");
    let read = read_user_text(&text);
    if read.transcript.is_some() && options.transcript.is_some() {
        return Err(ApiError::bad(
            "ambiguous_transcript",
            "the message's text has a transcript line and `transcript` is given: give one",
        )
        .param(param));
    }
    options.transcript = options.transcript.or(read.transcript);
    match read.task {
        None => {}
        Some(Task::Question { text }) if options.task == Some(TaskKind::Question) => options.question = Some(text),
        Some(_)
            if options.task.is_some()
                || options.six_labels.is_some()
                || options.reason_index.is_some()
                || options.eval_set.is_some() =>
        {
            return Err(ApiError::bad(
                "ambiguous_task",
                "the message's text names a task and `task` (or six_labels, reason_index, eval_set) is given: give one",
            )
            .param(param));
        }
        Some(task) => options.ask(task),
    }
    Ok(ChatInput { options, clip, still, audio, stream, include_usage, notes })
}

/// JSON equality with numbers compared as numbers (`0` and `0.0` are the same default).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// A media reference before it is decoded or checked.
enum Ref<'s> {
    Inline { media_type: String, base64: &'s str, name: Option<&'s str> },
    Path(String),
    Url(String),
}

/// `data:[<media type>][;<parameter>]*;base64,<data>`: the media type (lowercase, maybe
/// empty) and the base64 text; None when `url` is not a base64 data URL.
fn data_url(url: &str) -> Option<(String, &str)> {
    let rest = url.get(..5).filter(|s| s.eq_ignore_ascii_case("data:")).map(|_| &url[5..])?;
    let (head, data) = rest.split_once(',')?;
    let mut params = head.split(';');
    let media_type = params.next().unwrap_or_default().trim().to_ascii_lowercase();
    params.any(|p| p.trim().eq_ignore_ascii_case("base64")).then_some((media_type, data))
}

/// A URL, path or data URL of a part.
fn media_ref<'s>(url: &'s str, slot: Slot, name: Option<&'s str>, param: &str) -> Result<Ref<'s>, ApiError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("data:") {
        let (media_type, base64) = data_url(url).ok_or_else(|| {
            ApiError::bad("invalid_data_url", format!("{param}: only base64 data URLs are taken (data:TYPE;base64,…)"))
                .param(param)
        })?;
        return Ok(Ref::Inline { media_type, base64, name });
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(Ref::Url(url.to_string()));
    }
    if lower.starts_with("file://") {
        return Ok(Ref::Path(url["file://".len()..].to_string()));
    }
    if url.starts_with('/') {
        return Ok(Ref::Path(url.to_string()));
    }
    Err(ApiError::bad(
        "unsupported_url",
        format!("{param}: {} is not a data URL, an http(s) URL or an absolute path (for {})", shown(url), slot.what()),
    )
    .param(param))
}

/// llama.cpp's and OpenAI's `{data, url, format}`: base64 (no prefix; `format` is the
/// subtype, as OpenAI's `wav`/`mp3`) or a URL.
fn inline_ref<'s>(part: &'s Inline<'s>, slot: Slot, param: &str) -> Result<Ref<'s>, ApiError> {
    match (&part.data, &part.url) {
        (Some(data), None) if data.starts_with("data:") => media_ref(data, slot, None, param),
        (Some(data), None) => {
            let family = if slot == Slot::Audio { "audio" } else { "video" };
            let media_type = part.format.as_deref().map(|f| format!("{family}/{}", f.to_ascii_lowercase()));
            Ok(Ref::Inline { media_type: media_type.unwrap_or_default(), base64: data, name: None })
        }
        (None, Some(url)) => media_ref(url, slot, None, param),
        _ => Err(field_error(param, format!("{param}: give one of `data` (base64) or `url`"))),
    }
}

/// Decode base64 (padding optional, whitespace skipped) in chunks into a new private
/// file of `uploads`.
fn decode_to_file(
    base64: &str,
    uploads: &UploadDir,
    max_bytes: u64,
    name: Option<&str>,
    param: &str,
) -> Result<Upload, ApiError> {
    if (base64.len() as u64 / 4).saturating_mul(3) > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload_too_large",
            format!("{param}: the decoded file exceeds {max_bytes} bytes (max_upload_bytes)"),
        )
        .param(param));
    }
    const CHUNK: usize = 64 << 10; // a multiple of 4: only the last chunk holds padding
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let (mut upload, file) = uploads.new_file().map_err(|e| ApiError::internal("upload_failed", e))?;
    upload.set_client_name(name);
    let mut out = std::io::BufWriter::new(file);
    let mut pending = Vec::with_capacity(CHUNK);
    let mut decoded = vec![0u8; CHUNK / 4 * 3];
    let mut written = 0u64;
    let mut flush = |pending: &mut Vec<u8>, written: &mut u64| -> Result<(), ApiError> {
        let n = engine.decode_slice_unchecked(pending.as_slice(), &mut decoded).map_err(|e| {
            ApiError::bad("invalid_base64", format!("{param}: the data is not valid base64 ({e})")).param(param)
        })?;
        out.write_all(&decoded[..n]).map_err(|e| ApiError::internal("upload_failed", e))?;
        *written += n as u64;
        pending.clear();
        Ok(())
    };
    for &b in base64.as_bytes() {
        if b.is_ascii_whitespace() {
            continue;
        }
        pending.push(b);
        if pending.len() == CHUNK {
            flush(&mut pending, &mut written)?;
        }
    }
    flush(&mut pending, &mut written)?;
    out.flush().map_err(|e| ApiError::internal("upload_failed", e))?;
    if written == 0 {
        return Err(ApiError::bad("empty_upload", format!("{param}: the data is empty")).param(param));
    }
    Ok(upload)
}

/// Why the answer ended, as OpenAI says it.
fn finish_reason(result: &AnalyzeResult) -> &'static str {
    use emollama_engines::llm::StopReason;
    match result.stop {
        Some(StopReason::MaxTokens | StopReason::ContextFull) => "length",
        _ => "stop",
    }
}

/// The answer's text; with the fast preset (no text generated) the label.
fn answer_text(result: &AnalyzeResult) -> String {
    match (&result.label, result.text.is_empty()) {
        (Some(label), true) => label.clone(),
        _ => result.text.clone(),
    }
}

fn usage(result: &AnalyzeResult) -> Value {
    let (prompt, completion) = (result.tokens.prompt, result.tokens.generated);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One answer's identity, shared by its chunks.
pub struct Completion {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub include_usage: bool,
}

impl Completion {
    pub fn new(request_id: &str, model: &str, include_usage: bool) -> Self {
        Self { id: format!("chatcmpl-{request_id}"), model: model.into(), created: unix_now(), include_usage }
    }

    /// `chat.completion`, with the whole result under `emollama`.
    pub fn whole(&self, result: &AnalyzeResult) -> Value {
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer_text(result)},
                "finish_reason": finish_reason(result),
                "logprobs": null,
            }],
            "usage": usage(result),
            "emollama": result,
        })
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    }

    /// The first chunk: the role.
    pub fn start(&self) -> String {
        self.chunk(json!({"role": "assistant", "content": ""}), None).to_string()
    }

    pub fn piece(&self, text: &str) -> String {
        self.chunk(json!({"content": text}), None).to_string()
    }

    /// The last chunks: the finish reason with the result under `emollama` (and, with the
    /// fast preset, the label as the content), then the usage when asked for.
    pub fn finish(&self, result: &AnalyzeResult) -> Vec<String> {
        let delta = if result.text.is_empty() { json!({"content": answer_text(result)}) } else { json!({}) };
        let mut last = self.chunk(delta, Some(finish_reason(result)));
        last["emollama"] = json!(result);
        let mut out = vec![last.to_string()];
        if self.include_usage {
            let mut u = self.chunk(json!({}), None);
            u["choices"] = json!([]);
            u["usage"] = usage(result);
            out.push(u.to_string());
        }
        out
    }
}

/// `GET /v1/models`: the bundle's model, with its LLM's type and the device.
pub fn models(manifest: &emollama_bundle::Manifest, ready: &crate::ReadyInfo) -> Value {
    let llm_type = manifest.files.iter().find(|f| f.role == emollama_bundle::Role::Llm).map(|f| json!(f.precision));
    json!({"object": "list", "data": [{
        "id": manifest.id, "object": "model", "created": unix_now(), "owned_by": "emollama",
        "emollama": {
            "llm_type": llm_type, "synthetic": manifest.synthetic, "device": ready.profile,
            "providers": ready.providers, "description": manifest.description,
        },
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploads() -> (tempfile::TempDir, UploadDir) {
        let parent = tempfile::tempdir().unwrap();
        let dir = UploadDir::create(parent.path()).unwrap();
        (parent, dir)
    }

    fn read(body: Value) -> Result<ChatInput, ApiError> {
        let (_parent, dir) = uploads();
        read_chat(body.to_string().as_bytes(), &ServeConfig::default(), &dir)
    }

    fn video(url: &str) -> Value {
        json!({"type": "video_url", "video_url": {"url": url}})
    }

    #[test]
    fn base64_is_borrowed_from_the_body_and_decoded_in_chunks() {
        let body = br#"[{"type":"video_url","video_url":{"url":"data:video/mp4;base64,AAAA"}}]"#;
        let parts: Vec<Part> = serde_json::from_slice(body).unwrap();
        let Part::VideoUrl { video_url: UrlRef::Object { url } } = &parts[0] else { panic!("a video part") };
        assert!(matches!(url, Cow::Borrowed(_)), "the data URL is not copied");
        let (_parent, dir) = uploads();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(&data);
        let up = decode_to_file(&text, &dir, 1 << 20, None, "p").unwrap();
        assert_eq!(std::fs::read(up.path()).unwrap(), data);
        let unpadded = text.trim_end_matches('=').to_string() + "\n";
        assert_eq!(std::fs::read(decode_to_file(&unpadded, &dir, 1 << 20, None, "p").unwrap().path()).unwrap(), data);
        assert_eq!(decode_to_file("!!!!", &dir, 1 << 20, None, "p").unwrap_err().code, "invalid_base64");
        assert_eq!(decode_to_file(&text, &dir, 1000, None, "p").unwrap_err().code, "upload_too_large");
    }

    #[test]
    fn a_chat_request_becomes_analyze_options() {
        let r = read(json!({
            "model": "anything", "max_tokens": 12, "temperature": 0, "seed": 7, "stop": "###",
            "n": 1, "stream": true, "stream_options": {"include_usage": true}, "frequency_penalty": 0.0,
            "preset": "demo", "scores": false, "user": "u1",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": [
                    {"type": "text", "text": "The person in video says: We made it. [reason]"},
                    video("data:video/mp4;base64,AAAA"),
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                ]},
            ],
        }))
        .unwrap();
        let o = &r.options;
        assert_eq!((o.max_new_tokens, o.temperature, o.seed), (Some(12), Some(0.0), Some(7)));
        assert_eq!(o.transcript.as_deref(), Some("We made it."));
        assert_eq!((o.task, o.reason_index), (Some(emollama_runtime::TaskKind::Reason), Some(0)));
        assert_eq!((o.preset, o.scores), (Some(emollama_runtime::Preset::Demo), Some(false)));
        assert!(r.stream && r.include_usage && !r.still && r.notes.len() == 1);
        assert!(matches!((&r.clip, &r.audio), (MediaInput::Upload(_), Some(MediaInput::Upload(_)))));
        // A plain string content with a path; a still image.
        let r = read(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///srv/a.png"}}, {"type": "text", "text": "Why?"}]}]}))
        .unwrap();
        assert!(r.still && matches!(&r.clip, MediaInput::Path(p) if p == "/srv/a.png"));
        assert_eq!(r.options.question.as_deref(), Some("Why?"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_naming_the_field() {
        let user = |parts: Value| json!({"messages": [{"role": "user", "content": parts}]});
        let clip = video("https://example.org/a.mp4");
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!({"n": 2, "messages": []}), "invalid_field", "n"),
            (json!({"logprobs": true, "messages": []}), "unsupported_parameter", "logprobs"),
            (json!({"tools": [{"type": "function"}], "messages": []}), "unsupported_parameter", "tools"),
            (json!({"tsak": "reason", "messages": []}), "unknown_field", "tsak"),
            (json!({"path": "/a.mp4", "messages": []}), "unsupported_parameter", "path"),
            (json!({"max_tokens": 5, "max_completion_tokens": 6, "messages": []}), "invalid_field", "max_tokens"),
            (
                json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": [clip]}]}),
                "multi_turn_not_supported",
                "messages[1]",
            ),
            (user(json!([{"type": "text", "text": "hi"}])), "missing_media", "messages[0].content"),
            (user(json!([video("data:text/plain;base64,AAAA")])), "invalid_media_type", "messages[0].content[0]"),
            (user(json!([video("data:video/mp4,AAAA")])), "invalid_data_url", "messages[0].content[0]"),
            (user(json!([video("data:video/mp4;base64,A!A=")])), "invalid_base64", "messages[0].content[0]"),
            (user(json!([video("ftp://h/a.mp4")])), "unsupported_url", "messages[0].content[0]"),
            (user(json!([clip.clone(), clip.clone()])), "ambiguous_media", "messages[0].content[1]"),
            (user(json!(vec![json!({"type": "text", "text": "x"}); 10_000])), "too_many_parts", "messages[0].content"),
        ];
        for (body, code, param) in cases {
            let e = read(body.clone()).unwrap_err();
            assert_eq!((e.code, e.body()["error"]["param"].as_str()), (code, Some(param)), "{body}: {}", e.message);
        }
        let both = json!({"task": "emotion", "messages": [{"role": "user", "content": [clip, {"type": "text", "text": "[reason]"}]}]});
        assert_eq!(read(both).unwrap_err().code, "ambiguous_task");
    }
}
