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

/// A target: what it does with one input.
pub type Target = fn(&[u8]);

/// Every target, by the name its cargo-fuzz binary, corpus and regression folders have.
pub const TARGETS: [(&str, Target); 11] = [
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
