//! The manifest is the contract and the plan is the configuration: a changed manifest
//! (stop strings, sample rate, row order) changes what runs, or is refused at open with
//! a clear error where the runtime cannot honour it; a plan's settings are the settings
//! llama.cpp gets.

mod common;

use std::path::Path;

use common::analyze;
use emollama_bundle::{Bundle, BundleError, GgufType, KvType, Precision, Role, RowBlock};
use emollama_devices::{load_profiles, plan, Outcome, Profile};
use emollama_engines::llm::StopReason;
use emollama_runtime::observer::Observer;
use emollama_runtime::session::PromptTokens;
use emollama_runtime::{AnalyzeRequest, Pipeline, RuntimeConfig, RuntimeError};
use ndarray::ArrayD;
use serde_json::Value;

fn talking_face() -> String {
    common::media_dir().join("talking-face.mp4").to_str().unwrap().to_string()
}

/// A copy of the synthetic bundle whose manifest `edit` changes (the manifest is not
/// checksummed; its files are, and they stay as they are).
fn edited_bundle(dir: &Path, edit: impl FnOnce(&mut Value)) -> std::path::PathBuf {
    let out = dir.join("bundle");
    common::copy_dir(&common::bundle_dir(), &out);
    let path = out.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    out
}

fn pipeline(dir: &Path) -> Result<Pipeline, RuntimeError> {
    Pipeline::load(Bundle::open(dir)?, RuntimeConfig { threads: 2, ..RuntimeConfig::default() })
}

fn open_err(dir: &Path) -> String {
    match Bundle::open(dir) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{} should be refused", dir.display()),
    }
}

#[test]
fn a_different_stop_string_in_the_manifest_ends_the_answer_there() {
    let req = AnalyzeRequest { max_new_tokens: Some(32), ..AnalyzeRequest::new(talking_face()) };
    let base = analyze(&pipeline(&common::bundle_dir()).unwrap(), &req).unwrap();
    // A stop string from the middle of the default answer (not at its start).
    let chars: Vec<char> = base.text.chars().collect();
    assert!(chars.len() > 12, "the random model's answer is long enough: {:?}", base.text);
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let at = base.text.find(&stop).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_bundle(tmp.path(), |m| m["generation"]["eval"]["stop_strings"] = serde_json::json!([stop]));
    let r = analyze(&pipeline(&dir).unwrap(), &req).unwrap();
    println!("stop string {stop:?}: {:?} -> {:?}", base.text, r.text);
    assert_eq!(r.stop, Some(StopReason::StopString));
    assert_eq!(r.text, base.text[..at].trim(), "the answer ends before the manifest's stop string");
}

/// Records the shape of every tensor a session feeds its engines.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<usize>)>>>;
struct Shapes(Seen);

impl Observer for Shapes {
    fn tensor(&mut self, name: &str, t: &ArrayD<f32>) -> Result<(), RuntimeError> {
        self.0.lock().unwrap().push((name.to_string(), t.shape().to_vec()));
        Ok(())
    }
    fn prompt(&mut self, _: &PromptTokens, _: u32) -> Result<(), RuntimeError> {
        Ok(())
    }
}

fn waveform_samples(p: &Pipeline) -> usize {
    let shapes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let req = AnalyzeRequest::new(talking_face());
    let mut s = p.session(&req, Default::default()).unwrap().observe(Shapes(shapes.clone()));
    s.decode_media().unwrap();
    s.encode_audio().unwrap();
    let shapes = shapes.lock().unwrap();
    shapes.iter().find(|(n, _)| n == "waveform").expect("the audio engine was fed").1[1]
}

#[test]
fn the_manifest_sample_rate_is_the_rate_the_audio_engine_gets() {
    let at_16k = waveform_samples(&pipeline(&common::bundle_dir()).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_bundle(tmp.path(), |m| m["preprocess"]["audio"]["sample_rate"] = 8000.into());
    let at_8k = waveform_samples(&pipeline(&dir).unwrap());
    println!("waveform: {at_16k} samples at 16 kHz, {at_8k} at 8 kHz");
    assert!((at_8k as f64 / at_16k as f64 - 0.5).abs() < 0.01, "{at_8k} vs {at_16k}");
    // What the runtime cannot honour is refused at open, not mis-run.
    let dir = edited_bundle(&tmp.path().join("stereo"), |m| m["preprocess"]["audio"]["channels"] = 2.into());
    assert!(open_err(&dir).contains("mono"), "{}", open_err(&dir));
}

#[test]
fn the_manifest_row_order_is_the_order_of_the_prompt_rows() {
    let req = AnalyzeRequest::new(talking_face());
    let rows_of = |p: &Pipeline| {
        let mut s = p.session(&req, Default::default()).unwrap();
        s.encode().unwrap();
        s.rows().unwrap()
    };
    let base = pipeline(&common::bundle_dir()).unwrap();
    let m = base.manifest();
    let d = m.llm.embedding_width as usize;
    let default = rows_of(&base);
    let tmp = tempfile::tempdir().unwrap();
    let swapped_order = ["global_patches", "audio", "temporal", "local", "global_cls"];
    let dir = edited_bundle(tmp.path(), |m| m["prompt"]["row_order"] = serde_json::json!(swapped_order));
    let swapped = rows_of(&pipeline(&dir).unwrap());
    assert_eq!(default.len(), swapped.len());
    // Offsets of each block in the default order, then compare block by block.
    let mut at = std::collections::BTreeMap::new();
    let mut offset = 0;
    for block in &m.prompt.row_order {
        let n = m.rows.of(*block) as usize * d;
        at.insert(*block, default[offset..offset + n].to_vec());
        offset += n;
    }
    let mut offset = 0;
    for name in swapped_order {
        let block: RowBlock = name.parse().unwrap();
        let n = m.rows.of(block) as usize * d;
        assert_eq!(&swapped[offset..offset + n], &at[&block][..], "{name} block in its new place");
        offset += n;
    }
    assert_ne!(default, swapped, "the local and audio rows differ, so the order shows");
    // An order that is not a permutation of the five blocks is refused.
    let dir = edited_bundle(&tmp.path().join("dup"), |m| {
        m["prompt"]["row_order"] = serde_json::json!(["global_patches", "local", "local", "audio", "global_cls"])
    });
    assert!(open_err(&dir).contains("row_order"), "{}", open_err(&dir));
}

#[test]
fn a_manifest_missing_what_the_runtime_reads_is_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    // A global engine that declares one output (the CLS row is missing).
    let dir = edited_bundle(&tmp.path().join("one-output"), |m| {
        let files = m["files"].as_array_mut().unwrap();
        let global = files.iter_mut().find(|f| f["role"] == "global_engine").unwrap();
        global["outputs"].as_array_mut().unwrap().truncate(1);
    });
    match Bundle::open(&dir) {
        Err(BundleError::MissingTensor { name, kind, .. }) => assert_eq!((kind, name), ("output", "cls_row")),
        other => panic!("{other:?}"),
    }
    // An engine output renamed.
    let dir = edited_bundle(&tmp.path().join("renamed"), |m| {
        let files = m["files"].as_array_mut().unwrap();
        let audio = files.iter_mut().find(|f| f["role"] == "audio_engine").unwrap();
        audio["outputs"][0]["name"] = "row".into();
    });
    assert!(open_err(&dir).contains("\"audio_row\""), "{}", open_err(&dir));
    // Row counts that disagree with the engine's output shape.
    let dir = edited_bundle(&tmp.path().join("rows"), |m| m["rows"]["global_patches"] = 255.into());
    assert!(open_err(&dir).contains("255"), "{}", open_err(&dir));
    // Untyped values are refused by name.
    let dir = edited_bundle(&tmp.path().join("resize"), |m| m["preprocess"]["global"]["resize"] = "lanczos".into());
    assert!(open_err(&dir).contains("unknown resize filter \"lanczos\""), "{}", open_err(&dir));
    // The previous format version is refused with what to do.
    let dir = edited_bundle(&tmp.path().join("v1"), |m| m["format_version"] = 1.into());
    assert!(open_err(&dir).contains("re-export"), "{}", open_err(&dir));
    // BOS/EOS ids are checked against the GGUF when the LLM loads.
    let dir = edited_bundle(&tmp.path().join("bos"), |m| m["llm"]["bos_id"] = 5.into());
    match pipeline(&dir) {
        Err(e) => assert!(e.to_string().contains("BOS id is 1, the manifest says 5"), "{e}"),
        Ok(_) => panic!("a wrong BOS id must be refused"),
    }
}

fn x86_profile() -> Profile {
    let mut p = load_profiles(&[]).unwrap().into_iter().find(|p| p.name == "x86-cpu").unwrap();
    p.defaults.threads = 2;
    p
}

/// The synthetic bundle with an LLM of the same width whose heads are 32 wide (2 heads
/// of 32 instead of 4 of 16): llama.cpp holds quantized KV caches in 32-element blocks,
/// which 16-wide heads cannot be.
fn bundle_with_32_wide_heads(dir: &Path) -> std::path::PathBuf {
    let gguf = dir.join("llm-hd32.gguf");
    let status = std::process::Command::new(common::cache_dir().join("venv/bin/python"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../export/python"))
        .args(["-m", "emollama_export.bench_llm", "--hidden", "64", "--layers", "2", "--heads", "2"])
        .args(["--intermediate", "176", "--dtype", "f32", "--out"])
        .arg(&gguf)
        .arg("--vocab-gguf")
        .arg(common::vocab_gguf())
        .status()
        .unwrap();
    assert!(status.success());
    let out = dir.join("bundle");
    let src = Bundle::open(&common::bundle_dir()).unwrap();
    emollama_bundle::derive_bundle::<BundleError>(&src, &out, &Role::Llm, "llm-hd32.gguf", "hd32", |_, to| {
        std::fs::copy(&gguf, to).map_err(|source| BundleError::Write { path: to.into(), source })?;
        Ok(Precision::Gguf(GgufType::F32))
    })
    .unwrap();
    let path = out.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["llm"]["n_head_kv"] = 2.into();
    m["llm"]["head_dim"] = 32.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    out
}

#[test]
fn a_plan_with_q8_0_kv_runs_a_q8_0_kv_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle_with_32_wide_heads(tmp.path());
    let bundle = Bundle::open(&dir).unwrap();
    let mut profile = x86_profile();
    let f16 = plan(bundle.manifest(), &profile);
    assert_eq!((f16.outcome, f16.settings.kv_type), (Outcome::FitsResident, KvType::F16));
    assert!(f16.parts.face_detectors > 0, "the face detectors are counted");
    // Usable memory that fits a q8_0 KV cache but not an f16 one.
    let saved = f16.parts.kv_cache - (f16.parts.kv_cache as f64 * 34.0 / 64.0) as u64;
    profile.usable_headless_gb = (f16.resident_total - saved / 2) as f64 / 1e9;
    let q8 = plan(bundle.manifest(), &profile);
    assert_eq!((q8.outcome, q8.settings.kv_type), (Outcome::FitsResident, KvType::Q8_0), "{}", q8.message);
    assert!(q8.message.contains("KV cache q8_0"), "{}", q8.message);

    let planned = Pipeline::planned(&dir, &profile, Default::default()).unwrap();
    let c = planned.config();
    let s = &q8.settings;
    assert_eq!(
        (c.kv_type, c.n_ctx, c.n_batch, c.threads, c.face_detectors),
        (KvType::Q8_0, s.n_ctx, s.n_batch, 2, s.face_detectors)
    );
    // And llama.cpp holds the cache at that type: about 34/64 of the f16 cache's bytes.
    let kv_bytes = |p: &Pipeline| {
        let req = AnalyzeRequest { mode: emollama_runtime::Mode::OfficialDemo, ..AnalyzeRequest::new(talking_face()) };
        let mut s = p.session(&req, Default::default()).unwrap();
        s.encode().unwrap();
        s.tokenize_prompt().unwrap();
        s.prefill().unwrap();
        s.context().unwrap().kv_state_bytes()
    };
    let f16_pipeline = Pipeline::planned(&dir, &x86_profile(), Default::default()).unwrap();
    assert_eq!(f16_pipeline.config().kv_type, KvType::F16);
    let (a, b) = (kv_bytes(&planned) as f64, kv_bytes(&f16_pipeline) as f64);
    println!("KV state after prefill: q8_0 {a} bytes, f16 {b} bytes, ratio {:.3}", a / b);
    assert!((a / b - 34.0 / 64.0).abs() < 0.05, "{a} / {b}");
}

#[test]
fn a_quantized_kv_default_that_the_heads_cannot_hold_is_planned_as_f16_and_said() {
    // The synthetic LLM's heads are 16 wide: a profile asking for q8_0 gets f16, named.
    let bundle = Bundle::open(&common::bundle_dir()).unwrap();
    let mut profile = x86_profile();
    profile.defaults.kv_cache = KvType::Q8_0;
    let p = plan(bundle.manifest(), &profile);
    assert_eq!(p.settings.kv_type, KvType::F16);
    assert!(p.changes.iter().any(|c| c.contains("head size 16")), "{:?}", p.changes);
    let pipeline = Pipeline::planned(&common::bundle_dir(), &profile, Default::default()).unwrap();
    assert_eq!(pipeline.config().kv_type, KvType::F16);
}

#[test]
fn a_plan_that_needs_a_smaller_llm_is_refused_with_the_command_that_makes_it() {
    let bundle = Bundle::open(&common::bundle_dir()).unwrap();
    let mut profile = x86_profile();
    let p = plan(bundle.manifest(), &profile);
    // Too small for the F32 LLM whatever the KV cache or context, enough for q4_k_m.
    let llm = p.parts.llm_weights;
    profile.usable_headless_gb = (p.resident_total - llm + llm / 5) as f64 / 1e9;
    let small = plan(bundle.manifest(), &profile);
    assert_ne!(small.outcome, Outcome::DoesNotFit, "{}", small.message);
    assert!(small.requantize(bundle.manifest()).is_some(), "{}", small.message);
    match Pipeline::planned(&common::bundle_dir(), &profile, Default::default()) {
        Err(e @ RuntimeError::NeedsRequantize { .. }) => {
            assert!(e.to_string().contains("emollama quantize --bundle"), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("must refuse"),
    }
}

#[test]
fn the_binary_links_no_exporter_and_the_library_crates_no_server_or_cli_parser() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |package: &str| {
        let out = std::process::Command::new(&cargo)
            .args(["tree", "--offline", "-e", "normal", "--prefix", "none", "-p", package])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let crate_names =
        |t: &str| t.lines().filter_map(|l| l.split_whitespace().next().map(String::from)).collect::<Vec<_>>();
    let binary = crate_names(&tree("emollama"));
    assert!(binary.iter().any(|c| c == "emollama-runtime"));
    assert!(!binary.iter().any(|c| c.contains("export")), "{binary:?}");
    let pipeline = crate_names(&tree("emollama-runtime"));
    for forbidden in ["axum", "hyper", "clap", "tokio"] {
        assert!(!pipeline.iter().any(|c| c == forbidden), "emollama-runtime depends on {forbidden}");
    }
    let commands = crate_names(&tree("emollama-commands"));
    for forbidden in ["axum", "hyper", "clap", "tokio"] {
        assert!(!commands.iter().any(|c| c == forbidden), "emollama-commands depends on {forbidden}");
    }
    let media = crate_names(&tree("emollama-media"));
    assert!(!media.iter().any(|c| c == "emollama-runtime" || c == "axum"), "{media:?}");
    // What travels to a lent GPU machine needs no FFmpeg there.
    let device_check = crate_names(&tree("emollama-device-check"));
    assert!(!device_check.iter().any(|c| c.starts_with("ffmpeg") || c == "emollama-media"), "{device_check:?}");
}
