//! What each fuzz target does with its bytes: the parsers that take outside bytes,
//! called through the entry points the runtime and the service use. A target must never
//! panic, hang or allocate without bound; each returns nothing (an `Err` is a correct
//! answer to bad input) and checks what must hold of an `Ok`.
//!
//! The cargo-fuzz binaries (`fuzz/targets/`) call these; `tests/replay.rs` runs every
//! committed seed (`fuzz/corpus/TARGET/`) and every input that once crashed or hung
//! (`fuzz/regressions/TARGET/`) through them on each `cargo test`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use emollama_bundle::{Bundle, Manifest};
use emollama_devices::{load_profiles, plan, Profile};
use emollama_engines::onnx::graph::ModelProto;
use emollama_engines::onnx::TensorRtSupport;
use emollama_engines::CancelToken;
use emollama_media::{read_clip, ClipRequest, FrameSelection, MediaLimits, SourceOptions};
use emollama_runtime::features::parse_npy_f32;
use emollama_runtime::prompt::read_user_text;
use emollama_runtime::transcript::subtitles_text;
use emollama_runtime::AnalyzeOptions;
use emollama_serve::config::ServeConfig;
use emollama_serve::fuzzing;

/// A target: what it does with one input.
pub type Target = fn(&[u8]);

/// Every target, by the name its cargo-fuzz binary, corpus and regression folders have.
pub const TARGETS: [(&str, Target); 17] = [
    ("manifest", manifest),
    ("profile", profile),
    ("serve_config", serve_config),
    ("analyze_options", analyze_options),
    ("npy", npy),
    ("eval_list", eval_list),
    ("transcripts_csv", transcripts_csv),
    ("subtitles", subtitles),
    ("gguf", gguf),
    ("onnx", onnx),
    ("media", media),
    ("chat_body", chat_body),
    ("multipart", multipart),
    ("query", query),
    ("sse", sse),
    ("analyze_request", analyze_request),
    ("chat_request", chat_request),
];

/// The built-in device profiles (parsed once).
fn profiles() -> &'static [Profile] {
    static P: OnceLock<Vec<Profile>> = OnceLock::new();
    P.get_or_init(|| load_profiles(&[]).expect("the built-in profiles parse"))
}

/// The real 7B bundle's manifest (`devices/manifests/`), to plan a fuzzed profile with.
fn real_manifest() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| {
        serde_json::from_str(include_str!("../../devices/manifests/emotion-llama-7b/manifest.json"))
            .expect("the 7B manifest parses")
    })
}

/// A file of this process for the targets whose parser reads a path.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("emollama-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&path, data).expect("the scratch file is writable");
    path
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A bundle manifest as `Bundle::open` checks it, then planned on every built-in profile
/// (the planner sums the manifest's sizes and parameters).
pub fn manifest(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(bundle) = Bundle::from_manifest_text(Path::new("/nonexistent/fuzz-bundle"), text) {
        for p in profiles() {
            let _ = plan(bundle.manifest(), p);
        }
    }
}

/// A device profile (TOML), then the real bundle planned on it.
pub fn profile(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(p) = Profile::from_toml(text, Path::new("fuzz.toml")) {
        let _ = plan(real_manifest(), &p);
    }
}

/// The service's configuration file as `serve --check-config` reads it: TOML into the
/// config, its values checked, each `[[watch]]` section checked. The upload folder is
/// this process's temporary folder (the check writes a probe file there).
pub fn serve_config(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(mut config) = toml::from_str::<ServeConfig>(text) else { return };
    config.upload_dir = Some(std::env::temp_dir());
    let _ = config.validate();
    for w in &config.watch {
        let _ = w.check();
    }
}

/// An analyze request's JSON body, as `/v1/analyze` reads it, into a request; the chat
/// API's user text (task tags) as the prompt reads it.
pub fn analyze_options(data: &[u8]) {
    if let Ok(options) = serde_json::from_slice::<AnalyzeOptions>(data) {
        let _ = options.into_request("clip.mp4".into(), 500);
    }
    if let Some(text) = text(data) {
        let _ = read_user_text(text);
    }
}

/// A pre-extracted features file (`.npy`): what parses holds as many values as its shape says.
pub fn npy(data: &[u8]) {
    if let Ok((shape, values)) = parse_npy_f32(data) {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?}");
    }
}

/// An eval list file (one clip per line), single- and multi-label.
pub fn eval_list(data: &[u8]) {
    let path = scratch("list", data);
    let labels = ["angry", "happy", "neutral", "sad", "surprise", "worried"];
    let _ = emollama_commands::eval::dataset::read_list(&path, &labels, false);
    let _ = emollama_commands::eval::dataset::read_list(&path, &labels, true);
}

/// An eval transcript CSV (name, sentence).
pub fn transcripts_csv(data: &[u8]) {
    let path = scratch("transcripts", data);
    let _ = emollama_commands::eval::dataset::read_transcripts(&path);
}

/// A `.srt` or `.vtt` file beside a clip, read as its transcript.
pub fn subtitles(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = subtitles_text(text);
    }
}

/// A GGUF file's header, metadata and tensor directory as the bundle checks read them.
pub fn gguf(data: &[u8]) {
    let path = scratch("gguf", data);
    let _ = emollama_engines::llm::gguf::GgufFile::open(&path);
}

/// An ONNX model as `compile --check` reads it: decoded, then checked against TensorRT's
/// operator list.
pub fn onnx(data: &[u8]) {
    use prost::Message;
    if let Ok(model) = ModelProto::decode(data) {
        let _ = TensorRtSupport::bundled().check_graph(&model);
        let _ = (model.inputs(), model.outputs());
    }
}

/// A media file through the runtime's own entry point (FFmpeg's demuxers and decoders),
/// under small limits: the first frame, four across it, and the audio.
pub fn media(data: &[u8]) {
    let path = scratch("media", data);
    let limits = MediaLimits {
        max_file_bytes: 1 << 20,
        max_duration_s: 30.0,
        max_width: 1024,
        max_height: 1024,
        ..Default::default()
    };
    let request = ClipRequest { frames: vec![FrameSelection::First, FrameSelection::Uniform(4)], audio: true };
    let _ = read_clip(
        path.to_str().expect("a UTF-8 temporary path"),
        &SourceOptions::request(limits, 16_000),
        &request,
        &CancelToken::new(),
    );
}

/// A `POST /v1/chat/completions` body as the service reads it (JSON, content parts, data
/// URLs decoded into the upload folder). Whatever the answer, the request's files are
/// gone with it.
pub fn chat_body(data: &[u8]) {
    drop(fuzzing::chat_body(data));
    assert_eq!(fuzzing::uploads_left(), 0, "a chat body left a file in the upload folder");
}

/// A `/v1/analyze` multipart upload: the input's first line is the Content-Type header
/// (the boundary is the client's), the rest the body. An accepted upload holds at most
/// the body's bytes, and its file is gone with the request.
pub fn multipart(data: &[u8]) {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok((_, len)) = fuzzing::multipart_body(content_type, body) {
        assert!(len > 0 && len <= body.len() as u64, "an upload of {len} bytes from a body of {}", body.len());
    }
    assert_eq!(fuzzing::uploads_left(), 0, "an upload left a file in the upload folder");
}

/// The query strings the routes take (`?stream=`, `?source=`).
pub fn query(data: &[u8]) {
    if let Some(q) = text(data) {
        let _ = fuzzing::query(q);
    }
}

/// A generated piece of text written as the service's event streams write it, read back
/// by an independent Server-Sent Events parser (`eventsource-stream`, the one async-openai
/// uses): every piece arrives whole, whatever characters it holds.
pub fn sse(data: &[u8]) {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;

    let piece = String::from_utf8_lossy(data);
    let wire = fuzzing::stream_bytes(&piece);
    let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(wire)]).eventsource();
    let events: Vec<_> = futures_executor::block_on(stream.collect::<Vec<_>>())
        .into_iter()
        .map(|e| e.expect("the service's event stream parses"))
        .collect();
    let analyze = &events[0];
    assert_eq!(analyze.event, "piece");
    let sent: serde_json::Value = serde_json::from_str(&analyze.data).expect("a piece's data is JSON");
    assert_eq!(sent["text"].as_str(), Some(&*piece), "the analyze stream's piece");
    // The chat stream: its role chunk, then the piece (a first piece without its leading
    // whitespace, none when nothing is left).
    let chat_text = piece.trim_start();
    assert_eq!(events.len(), if chat_text.is_empty() { 2 } else { 3 });
    if let Some(chunk) = events.get(2) {
        let chunk: serde_json::Value = serde_json::from_str(&chunk.data).expect("a chunk is JSON");
        assert_eq!(chunk["choices"][0]["delta"]["content"].as_str(), Some(chat_text), "the chat stream's piece");
    }
}

// --- structure-aware targets: the fuzzer's bytes drive a generator (`arbitrary`) -------

/// The analyze options' names and the words their values take: a generated request
/// uses them most of the time, so that it gets past the first unknown field.
const OPTION_NAMES: [&str; 25] = [
    "path",
    "url",
    "task",
    "question",
    "transcript",
    "asr_task",
    "asr_language",
    "mode",
    "preset",
    "layout",
    "six_labels",
    "reason_index",
    "eval_set",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "seed",
    "stop",
    "scores",
    "stream",
    "local_features",
    "temporal_features",
    "audio_features",
];
const OPTION_WORDS: [&str; 16] = [
    "emotion",
    "reason",
    "question",
    "sentiment",
    "intent",
    "multi-label",
    "fast",
    "official",
    "official-demo",
    "transcribe",
    "translate",
    "en",
    "mafw_multi",
    "clip.mp4",
    "###",
    "",
];

#[derive(Debug, arbitrary::Arbitrary)]
enum OptionName {
    Known(u8),
    Other(String),
}

#[derive(Debug, arbitrary::Arbitrary)]
enum OptionValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Word(u8),
    Text(String),
}

impl OptionName {
    fn name(&self) -> String {
        match self {
            OptionName::Known(i) => OPTION_NAMES[*i as usize % OPTION_NAMES.len()].to_string(),
            OptionName::Other(s) => s.clone(),
        }
    }
}

impl OptionValue {
    fn json(&self) -> serde_json::Value {
        match self {
            OptionValue::Bool(b) => (*b).into(),
            OptionValue::Int(i) => (*i).into(),
            OptionValue::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
            OptionValue::Word(i) => OPTION_WORDS[*i as usize % OPTION_WORDS.len()].into(),
            OptionValue::Text(s) => s.as_str().into(),
        }
    }

    /// The same value as a form field's text (a JSON scalar's own spelling).
    fn form_text(&self) -> String {
        match self.json() {
            serde_json::Value::String(s) => s,
            v => v.to_string(),
        }
    }

    /// Where a form rightly differs from JSON (a form has only text): a text field takes
    /// a number's spelling as text, and another field reads a text that spells a
    /// number, boolean or null as that value.
    fn form_differs(&self, name: &str) -> bool {
        match self.json() {
            serde_json::Value::String(s) => {
                !AnalyzeOptions::is_text_field(name)
                    && serde_json::from_str::<serde_json::Value>(s.trim())
                        .is_ok_and(|v| !v.is_array() && !v.is_object())
            }
            _ => AnalyzeOptions::is_text_field(name),
        }
    }
}

/// A generated analyze request sent both ways the service takes it, a JSON body and a
/// multipart form with a clip, which must agree (the form's fields follow JSON's rules:
/// the same options, or both refused); accepted options then become a request.
pub fn analyze_request(data: &[u8]) {
    use arbitrary::Arbitrary;
    let Ok(fields) = Vec::<(OptionName, OptionValue)>::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
        return;
    };
    let pairs: Vec<(String, &OptionValue)> = fields.iter().map(|(n, v)| (n.name(), v)).collect();
    // Written by hand: a map would drop the repeated names the service must refuse.
    let body = pairs
        .iter()
        .map(|(n, v)| format!("{}:{}", serde_json::Value::from(n.as_str()), v.json()))
        .collect::<Vec<_>>()
        .join(",");
    let from_json = serde_json::from_str::<AnalyzeOptions>(&format!("{{{body}}}"));
    const BOUNDARY: &str = "emollama-fuzz-7d1f0c";
    let mut form = Vec::new();
    for (name, value) in &pairs {
        let part =
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{}\r\n", value.form_text());
        form.extend_from_slice(part.as_bytes());
    }
    form.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"c.mp4\"\r\n\r\nx\r\n--{BOUNDARY}--\r\n").as_bytes());
    let from_form = fuzzing::multipart_body(format!("multipart/form-data; boundary={BOUNDARY}").as_bytes(), &form);
    // Names a form cannot carry as they are (quotes, line breaks, the boundary) and the
    // values a form reads otherwise (`form_differs`) are where the two may rightly differ.
    let comparable = pairs
        .iter()
        .all(|(n, v)| !n.contains(['"', '\r', '\n', '\\']) && !v.form_text().contains(BOUNDARY) && !v.form_differs(n));
    if comparable {
        match (&from_json, &from_form) {
            (Ok(a), Ok((b, _))) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "JSON and form options differ"),
            (Err(_), Err(_)) => {}
            (a, b) => {
                panic!("JSON says {:?}, the form says {:?} for {body}", a.as_ref().map(|_| ()), b.as_ref().map(|_| ()))
            }
        }
    }
    if let Ok(options) = from_json {
        let _ = options.into_request("clip.mp4".into(), 500);
    }
    assert_eq!(fuzzing::uploads_left(), 0, "an upload left a file in the upload folder");
}

/// The tiny committed clips a generated chat request may carry inline.
const CLIPS: [(&str, &[u8]); 3] = [
    ("video/mp4", include_bytes!("../corpus/media/h264-aac.mp4")),
    ("image/png", include_bytes!("../corpus/media/still.png")),
    ("audio/wav", include_bytes!("../corpus/media/tone.wav")),
];

#[derive(Debug, arbitrary::Arbitrary)]
enum ChatMedia {
    Clip(u8),
    Bytes(Vec<u8>),
    Base64Text(String),
    Url(String),
}

impl ChatMedia {
    fn url(&self) -> String {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match self {
            ChatMedia::Clip(i) => {
                let (mime, bytes) = CLIPS[*i as usize % CLIPS.len()];
                format!("data:{mime};base64,{}", b64(bytes))
            }
            ChatMedia::Bytes(b) => format!("data:video/mp4;base64,{}", b64(b)),
            ChatMedia::Base64Text(s) => format!("data:video/mp4;base64,{s}"),
            ChatMedia::Url(s) => s.clone(),
        }
    }
}

#[derive(Debug, arbitrary::Arbitrary)]
enum ChatPart {
    Text(String),
    TaskTag(u8, String),
    VideoUrl(ChatMedia, bool),
    ImageUrl(ChatMedia),
    InputVideo(ChatMedia),
    InputAudio(ChatMedia, bool),
    AudioUrl(ChatMedia),
    File(ChatMedia, Option<String>),
    Unknown(String),
}

impl ChatPart {
    fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let tags = ["[emotion]", "[reason]", "[question]", "[sentiment]", "[intent]", "[multi-label]"];
        match self {
            ChatPart::Text(t) => json!({"type": "text", "text": t}),
            ChatPart::TaskTag(i, t) => {
                json!({"type": "text", "text": format!("{} {t}", tags[*i as usize % tags.len()])})
            }
            ChatPart::VideoUrl(m, true) => json!({"type": "video_url", "video_url": {"url": m.url()}}),
            ChatPart::VideoUrl(m, false) => json!({"type": "video_url", "video_url": m.url()}),
            ChatPart::ImageUrl(m) => json!({"type": "image_url", "image_url": {"url": m.url()}}),
            ChatPart::InputVideo(m) => json!({"type": "input_video", "input_video": {"url": m.url()}}),
            ChatPart::InputAudio(m, wav) => {
                let data = m.url().split_once("base64,").map(|(_, d)| d.to_string()).unwrap_or_else(|| m.url());
                json!({"type": "input_audio", "input_audio": {"data": data, "format": if *wav { "wav" } else { "mp3" }}})
            }
            ChatPart::AudioUrl(m) => json!({"type": "audio_url", "audio_url": {"url": m.url()}}),
            ChatPart::File(m, name) => json!({"type": "file", "file": {"file_data": m.url(), "filename": name}}),
            ChatPart::Unknown(t) => json!({"type": t, t.as_str(): {}}),
        }
    }
}

#[derive(Debug, arbitrary::Arbitrary)]
struct ChatMessage {
    role: u8,
    parts: Option<Vec<ChatPart>>,
    text: String,
}

#[derive(Debug, arbitrary::Arbitrary)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    n: Option<u8>,
    stream: Option<bool>,
    include_usage: Option<bool>,
    stop: Option<Vec<String>>,
    extra: Vec<(OptionName, OptionValue)>,
}

/// A generated chat-completions request (the shapes of the OpenAI SDK, vLLM and
/// llama.cpp's server: content parts of every kind, inline clips from the committed
/// seeds or bytes, task tags, sampling fields, `/v1/analyze`'s options as extra keys) as
/// the service reads it; what is accepted streams as asked, and leaves no file behind.
pub fn chat_request(data: &[u8]) {
    use arbitrary::Arbitrary;
    use serde_json::json;
    let Ok(r) = ChatRequest::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else { return };
    let roles = ["user", "system", "developer", "assistant", "tool"];
    let messages: Vec<_> = r
        .messages
        .iter()
        .map(|m| {
            let content = match &m.parts {
                Some(parts) => parts.iter().map(ChatPart::json).collect::<Vec<_>>().into(),
                None => serde_json::Value::from(m.text.as_str()),
            };
            json!({"role": roles[m.role as usize % roles.len()], "content": content})
        })
        .collect();
    let mut body = json!({"model": "emollama", "messages": messages});
    let fields = [
        ("max_tokens", r.max_tokens.map(Into::into)),
        ("temperature", r.temperature.and_then(serde_json::Number::from_f64).map(Into::into)),
        ("top_p", r.top_p.and_then(serde_json::Number::from_f64).map(Into::into)),
        ("seed", r.seed.map(Into::into)),
        ("n", r.n.map(Into::into)),
        ("stream", r.stream.map(Into::into)),
        ("stream_options", r.include_usage.map(|u| json!({"include_usage": u}))),
        ("stop", r.stop.as_ref().map(|s| s.clone().into())),
    ];
    for (key, value) in fields {
        if let Some(v) = value {
            body[key] = v;
        }
    }
    for (name, value) in &r.extra {
        body[name.name()] = value.json();
    }
    let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
    if let Ok(input) = fuzzing::chat_body(&bytes) {
        // `stream` as the body finally says (an extra key may have set it too).
        assert_eq!(input.stream, body["stream"] == true, "stream as asked");
    }
    assert_eq!(fuzzing::uploads_left(), 0, "a chat request left a file in the upload folder");
}
