//! Shared helpers of the integration tests: where setup put the synthetic bundle, its
//! PyTorch goldens and the sample media, and readers for them.
#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

pub fn cache_dir() -> PathBuf {
    emollama_bundle::locations::setup_cache_dir()
}

/// Run one request to the end on a pipeline.
pub fn analyze(
    p: &emollama_runtime::Pipeline,
    req: &emollama_runtime::AnalyzeRequest,
) -> Result<emollama_runtime::AnalyzeResult, emollama_runtime::RuntimeError> {
    p.session(req, Default::default())?.run(|_| {})
}

/// `bundle/` and `goldens/` written by the exporter (scripts/test regenerates them).
pub fn test_data() -> PathBuf {
    let dir =
        std::env::var_os("EMOLLAMA_TEST_DATA").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("synthetic"));
    assert!(
        dir.join("bundle/manifest.json").is_file(),
        "no synthetic bundle at {}: run ./scripts/test (or ./scripts/setup)",
        dir.display()
    );
    dir
}

pub fn bundle_dir() -> PathBuf {
    test_data().join("bundle")
}

pub fn media_dir() -> PathBuf {
    std::env::var_os("EMOLLAMA_TEST_MEDIA").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("media"))
}

/// The official-format fixture files (`fixture/`) and their export (`export/`: bundle,
/// report, goldens from the independent references), made by scripts/test.
pub fn official_dir() -> PathBuf {
    let dir = test_data().join("official");
    assert!(
        dir.join("export/bundle/manifest.json").is_file(),
        "no official fixture export at {}: run ./scripts/test",
        dir.display()
    );
    dir
}

/// The exporter's venv interpreter (scripts/setup).
pub fn python() -> PathBuf {
    cache_dir().join("venv/bin/python")
}

/// The exporter's Python package folder (run `python -m emollama_export.…` from here).
pub fn export_python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../export/python")
}

pub fn vocab_gguf() -> PathBuf {
    cache_dir().join("vocab/ggml-vocab-llama-spm.gguf")
}

pub fn goldens() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| read_goldens(&test_data()))
}

/// `DIR/goldens/index.json` (the synthetic export's, or the official fixture export's).
pub fn read_goldens(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("goldens/index.json")).expect("goldens/index.json");
    serde_json::from_str(&text).expect("goldens JSON")
}

/// A golden tensor `{file, shape}` of the synthetic goldens as an ndarray.
pub fn tensor(entry: &Value) -> ArrayD<f32> {
    tensor_in(&test_data(), entry)
}

/// A golden tensor `{file, shape}` under `DIR/goldens`.
pub fn tensor_in(dir: &Path, entry: &Value) -> ArrayD<f32> {
    let file = entry["file"].as_str().expect("file");
    let shape: Vec<usize> =
        entry["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let bytes = std::fs::read(dir.join("goldens").join(file)).expect("golden tensor file");
    let data: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("golden shape")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Copy a bundle folder (to tamper with it in a test).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The `emollama` binary of this workspace (built by `cargo test --workspace --bins`),
/// next to the test executables' `deps/` folder.
pub fn emollama_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("emollama");
    assert!(bin.is_file(), "{} not built: run cargo test --workspace --bins --tests", bin.display());
    bin
}

/// One test of a file at a time (take it first in each): these tests run llama.cpp, ONNX
/// Runtime or a live source on every core, and two at once on two cores measure each
/// other's load.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The official-format fixture files (`emollama_export.fixtures`, and `fixtures_v2` under `v2/`).
pub fn official_fixture() -> PathBuf {
    official_dir().join("fixture")
}

/// A llama.cpp context for reference checks: f32 KV cache, no flash attention, 2 threads.
pub fn f32_context(path: &Path, n_ctx: u32) -> emollama_engines::llm::LlmContext {
    use emollama_engines::llm::{ContextParams, FlashAttention, LlmContext, LlmModel, ModelParams};
    let model = std::sync::Arc::new(LlmModel::load(path, &ModelParams::default()).unwrap());
    let params = ContextParams {
        n_ctx,
        n_batch: 512,
        n_threads: 2,
        n_threads_batch: 2,
        kv_cache_type: emollama_bundle::KvType::F32,
        flash_attention: FlashAttention::Off,
    };
    LlmContext::new(model, params).unwrap()
}

/// The exported LLM against its goldens (`official_reference`): the logits at the ends of
/// the spliced prompt's segments within 1e-3 of transformers with the LoRA unmerged, and
/// more than `lora_floor` away from the model without it (a dropped LoRA would show), then
/// the same greedy tokens.
pub fn assert_llm_matches_goldens(ctx: &mut emollama_engines::llm::LlmContext, dir: &Path, g: &Value, lora_floor: f32) {
    use emollama_engines::llm::{Sampler, SamplingParams, Segment};
    use ndarray::Axis;
    let ids = |v: &Value| -> Vec<i32> { serde_json::from_value(v.clone()).unwrap() };
    let (prefix, suffix) = (ids(&g["segments"][0]["tokens"]), ids(&g["segments"][2]["tokens"]));
    let rows = tensor_in(dir, &g["segments"][1]["embeddings"]).into_raw_vec_and_offset().0;
    let report =
        ctx.prefill(&[Segment::Tokens(&prefix), Segment::Embeddings(&rows), Segment::Tokens(&suffix)], true).unwrap();
    let (want, without_lora) =
        (tensor_in(dir, &g["logits_at_segment_ends"]), tensor_in(dir, &g["logits_without_lora"]));
    for (i, got) in report.segment_logits.iter().enumerate() {
        let diff = max_abs_diff(got, want.index_axis(Axis(0), i).as_slice().unwrap());
        let lora = max_abs_diff(got, without_lora.index_axis(Axis(0), i).as_slice().unwrap());
        println!(
            "segment {i}: max |llama.cpp - transformers, LoRA unmerged| = {diff:.2e}; without the LoRA {lora:.2e}"
        );
        assert!(diff <= 1e-3, "segment {i}: {diff}");
        assert!(lora > lora_floor, "segment {i}: the LoRA changes the logits by only {lora}");
    }
    let greedy = ids(&g["greedy_tokens"]);
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let mut tokens = Vec::new();
    for _ in 0..greedy.len() {
        let t = sampler.sample(ctx.logits().unwrap());
        tokens.push(t);
        ctx.decode_token(t).unwrap();
    }
    assert_eq!(tokens, greedy);
}

/// `emollama_export.official_reference <command>` (`pipeline` or `pipeline-v2`) on the
/// inputs a session dumped into `dump`: the independent end-to-end reference's result.
pub fn reference_pipeline(command: &str, dump: &Path) -> Value {
    let out = dump.join("reference.json");
    let status = std::process::Command::new(python())
        .current_dir(export_python_dir())
        .args(["-m", "emollama_export.official_reference", command, "--eva-depth", "2", "--fixture"])
        .arg(official_fixture())
        .arg("--lavis-dir")
        .arg(cache_dir().join("lavis-1.0.2"))
        .arg("--inputs")
        .arg(dump)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "the independent reference pipeline ({command}) failed");
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

/// The runtime's answer against the reference pipeline's: the same greedy tokens (as
/// many as the runtime generated) and label probabilities within 1e-4.
pub fn assert_matches_reference_pipeline(result: &emollama_runtime::session::AnalyzeResult, want: &Value) {
    let greedy: Vec<i32> = serde_json::from_value(want["greedy_tokens"].clone()).unwrap();
    let n = result.answer_tokens.len();
    assert!(n > 0);
    assert_eq!(&result.answer_tokens[..], &greedy[..n.min(greedy.len())], "greedy tokens");
    let lp = want["label_logprobs"].as_object().unwrap();
    let max = lp.values().map(|v| v.as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = lp.values().map(|v| (v.as_f64().unwrap() - max).exp()).sum();
    let scores = result.label_scores.as_ref().expect("label scores");
    assert_eq!(scores.len(), lp.len(), "the same labels scored");
    let worst =
        scores.iter().map(|(label, p)| (p - (lp[label].as_f64().unwrap() - max).exp() / z).abs()).fold(0.0, f64::max);
    println!("{n} greedy tokens identical to the independent reference; label probabilities max |diff| {worst:.2e}");
    assert!(worst < 1e-4, "label scores {worst}");
}
