//! The official export, on format-faithful fixture files (the official names, containers,
//! dtypes and extra keys at tiny widths, made by `emollama_export.fixtures`): its engines
//! and its LLM against independent references (the official EVA code, transformers' ViT,
//! VideoMAE, HuBERT and LLaMA with the LoRA unmerged), the runtime end to end on it,
//! other spellings of the same weights, and the refusals of broken inputs.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use emollama_bundle::{Bundle, Role};
use emollama_engines::llm::gguf::GgufFile;
use emollama_engines::llm::{LlmContext, LlmModel, ModelParams};
use emollama_engines::onnx::{init_runtime, EncoderEngine, EngineOptions, ProviderPolicy};
use emollama_runtime::observer::InputDump;
use emollama_runtime::{AnalyzeRequest, Mode, Pipeline, RuntimeConfig};
use ndarray::{ArrayD, ArrayViewD};
use serde_json::Value;

fn export_dir() -> PathBuf {
    common::official_dir().join("export")
}

fn fixture() -> PathBuf {
    common::official_fixture()
}

fn goldens() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| common::read_goldens(&export_dir()))
}

fn golden(entry: &Value) -> ArrayD<f32> {
    common::tensor_in(&export_dir(), entry)
}

#[test]
fn exported_engines_match_independent_references() {
    let bundle = Bundle::open_verified(&export_dir().join("bundle")).unwrap();
    let tol = goldens()["tolerance"]["engines"].as_f64().unwrap() as f32;
    let rt = init_runtime(None).unwrap();
    for (role, name) in [
        (Role::GlobalEngine, "global"),
        (Role::LocalEngine, "local"),
        (Role::TemporalEngine, "temporal"),
        (Role::AudioEngine, "audio"),
        (Role::LocalProjector, "feats_llama_proj1"),
        (Role::TemporalProjector, "feats_llama_proj2"),
        (Role::AudioProjector, "feats_llama_proj3"),
    ] {
        let e = bundle.file(&role).unwrap();
        let opts =
            EngineOptions { intra_threads: 2, policy: ProviderPolicy::cpu_only(), model_sha256: e.sha256.clone() };
        let engine =
            EncoderEngine::load(rt, role.as_str(), &bundle.path_of(e), e.inputs.clone(), e.outputs.clone(), &opts)
                .unwrap();
        for (i, case) in goldens()["engines"][name].as_array().unwrap().iter().enumerate() {
            let inputs: Vec<(String, ArrayD<f32>)> =
                case["inputs"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), golden(v))).collect();
            let feeds: Vec<(&str, ArrayViewD<'_, f32>)> = inputs.iter().map(|(k, a)| (k.as_str(), a.view())).collect();
            let mut out = engine.run(&feeds).unwrap();
            for (output, want) in case["outputs"].as_object().unwrap() {
                let got = out.take(output).unwrap();
                let want = golden(want);
                assert_eq!(got.shape(), want.shape());
                let diff = common::max_abs_diff(got.as_slice().unwrap(), want.as_slice().unwrap());
                println!("{name} case {i} {output}: max |emollama - independent reference| = {diff:.2e}");
                assert!(diff <= tol, "{name} case {i} {output}: {diff} > {tol}");
            }
        }
    }
    // The EVA file keeps its fp16 weights: one protobuf, half the size of fp32.
    assert_eq!(bundle.file(&Role::GlobalEngine).unwrap().precision.to_string(), "fp16");
}

fn llm_context(path: &Path) -> LlmContext {
    common::f32_context(path, 512)
}

#[test]
fn exported_llm_matches_transformers_with_the_lora_unmerged() {
    let bundle = Bundle::open(&export_dir().join("bundle")).unwrap();
    let mut ctx = llm_context(&bundle.path_of(bundle.file(&Role::Llm).unwrap()));
    let g = &goldens()["llm"];
    // A LoRA dropped on the way (the official loader's strict=False trap) would show.
    common::assert_llm_matches_goldens(&mut ctx, &export_dir(), g, 100.0 * 1e-3);
    // The LLM is exactly what llama.cpp's convert_hf_to_gguf.py, run as a command, makes of
    // a merged HF folder (written by the reference script: W + 0.25·B@A in fp32 for q/v).
    assert_same_gguf(
        &bundle.path_of(bundle.file(&Role::Llm).unwrap()),
        &export_dir().join("merged-reference/llm-merged-f32.gguf"),
    );
    // rms_norm_eps comes from the user's config.json (the fixture's says 1e-6, as some
    // copies of Llama-2-7b-chat-hf do), not from a constant.
    let gguf = GgufFile::open(&bundle.path_of(bundle.file(&Role::Llm).unwrap())).unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(fixture().join("Llama-2-7b-chat-hf/config.json")).unwrap()).unwrap();
    match gguf.get("llama.attention.layer_norm_rms_epsilon") {
        Some(emollama_engines::llm::gguf::GgufValue::Float(eps)) => {
            assert!((eps - config["rms_norm_eps"].as_f64().unwrap()).abs() < 1e-12, "{eps}")
        }
        other => panic!("{other:?}"),
    }
    // The converter's vocabulary is LLaMA-2's: the spec's golden prompt ids.
    let model = LlmModel::load(&bundle.path_of(bundle.file(&Role::Llm).unwrap()), &ModelParams::default()).unwrap();
    assert_eq!(
        model.tokenize("<s>[INST] <video>", true, true).unwrap(),
        vec![1, 1, 518, 25580, 29962, 529, 9641, 29958]
    );
    assert_eq!(model.tokenize("worried", false, false).unwrap(), vec![6365, 1255]);
}

#[test]
fn info_and_analyze_run_on_the_export_and_match_the_reference_pipeline() {
    let bundle_dir = export_dir().join("bundle");
    let out = Command::new(common::emollama_bin()).args(["info", "--bundle"]).arg(&bundle_dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("official Emotion-LLaMA checkpoints") && text.contains("fp16"), "{text}");

    let pipeline =
        Pipeline::load(Bundle::open(&bundle_dir).unwrap(), RuntimeConfig { threads: 2, ..RuntimeConfig::default() })
            .unwrap();
    let dump = tempfile::tempdir().unwrap();
    let req = AnalyzeRequest {
        mode: Mode::Full,
        max_new_tokens: Some(16),
        transcript: Some("I can't believe we made it".into()),
        ..AnalyzeRequest::new(common::media_dir().join("talking-face.mp4").to_str().unwrap())
    };
    let result = pipeline
        .session(&req, Default::default())
        .unwrap()
        .observe(InputDump::new(dump.path()).unwrap())
        .run(|_| {})
        .unwrap();
    common::assert_matches_reference_pipeline(&result, &common::reference_pipeline("pipeline", dump.path()));
}

/// The official exporter's command on the fixture, with some inputs replaced or left out.
fn exporter(replace: &[(&str, PathBuf)], omit: &[&str]) -> Command {
    let fx = fixture();
    let cache = common::cache_dir();
    let mut inputs: Vec<(&str, PathBuf)> = vec![
        ("--eva", fx.join("eva_vit_g.pth")),
        ("--checkpoint", fx.join("save_checkpoint/Emoation_LLaMA.pth")),
        ("--llama", fx.join("Llama-2-7b-chat-hf")),
        ("--hubert", fx.join("transformer/chinese-hubert-large")),
        ("--mae", fx.join("feature_extract/models/mae_checkpoint-340.pth")),
        ("--videomae", fx.join("feature_extract/models/maeVideo_ckp399.pth")),
    ];
    inputs.retain(|(flag, _)| !omit.contains(flag));
    for (flag, path) in replace {
        inputs.iter_mut().filter(|(f, _)| f == flag).for_each(|(_, p)| *p = path.clone());
    }
    let mut cmd = Command::new(common::python());
    cmd.current_dir(common::export_python_dir()).args(["-m", "emollama_export.official", "--eva-depth", "2"]);
    for (flag, path) in inputs {
        cmd.arg(flag).arg(path);
    }
    cmd.arg("--llm-outtype")
        .arg("f32")
        .arg("--vocab-gguf")
        .arg(common::vocab_gguf())
        .arg("--facenet-dir")
        .arg(cache.join("facenet-pytorch-2.6.0"))
        .arg("--converter-dir")
        .arg(cache.join("llama.cpp-convert"));
    cmd
}

/// Run the official exporter on the fixture into `out`.
fn export(out: &Path, replace: &[(&str, PathBuf)], omit: &[&str]) -> Output {
    exporter(replace, omit).arg("--out").arg(out).output().unwrap()
}

#[test]
fn check_reads_every_input_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = exporter(&[], &[]).arg("--check").arg("--out").arg(tmp.path().join("export")).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("inputs are consistent") && stdout.contains("on 4 pairs"), "{stdout}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    // A broken encoder file is caught by the check too (before any export work).
    let wrong = fixture().join("feature_extract/models/mae_checkpoint-340.pth");
    let run = exporter(&[("--videomae", wrong)], &[]).arg("--check").output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("missing key 'encoder.patch_embed.proj.weight'"), "{stderr}");
}

fn file_hashes(bundle: &Path) -> std::collections::BTreeMap<String, String> {
    let b = Bundle::open_verified(bundle).unwrap();
    b.manifest().files.iter().map(|f| (f.path.clone(), f.sha256.clone())).collect()
}

fn assert_same_gguf(a: &Path, b: &Path) {
    let (a, b) = (GgufFile::open(a).unwrap(), GgufFile::open(b).unwrap());
    assert_eq!(a.metadata, b.metadata);
    let names =
        |f: &GgufFile| f.tensors.iter().map(|t| (t.name.clone(), t.dims.clone(), t.ggml_type)).collect::<BTreeSet<_>>();
    assert_eq!(names(&a), names(&b));
    for t in &a.tensors {
        assert!(a.tensor_bytes(&t.name).unwrap() == b.tensor_bytes(&t.name).unwrap(), "{} differs", t.name);
    }
}

#[test]
fn other_spellings_and_containers_export_the_same_files() {
    // EVA in fp32 with the legacy serializer, peft's newer `.default.` LoRA keys plus
    // rotary buffers, .bin LLaMA shards with inv_freq, `hubert.`-prefixed HuBERT keys,
    // VideoMAE under `module`; and no MAE checkpoint at all.
    let same = fixture().join("variants/same");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    let run = export(
        &out,
        &[
            ("--eva", same.join("eva_vit_g.pth")),
            ("--checkpoint", same.join("Emoation_LLaMA.pth")),
            ("--llama", same.join("Llama-2-7b-chat-hf")),
            ("--hubert", same.join("chinese-hubert-large")),
            ("--videomae", same.join("maeVideo_ckp399.pth")),
        ],
        &["--mae"],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let want = file_hashes(&export_dir().join("bundle"));
    let got = file_hashes(&out.join("bundle"));
    for (path, sha) in &got {
        if path.ends_with(".gguf") {
            // The converter writes tensors in the order it reads them: sorted names in a
            // safetensors header, insertion order in a .bin. Same tensors, same values.
            assert_same_gguf(&export_dir().join("bundle").join(path), &out.join("bundle").join(path));
        } else {
            assert_eq!(Some(sha), want.get(path), "{path} differs from the main export");
        }
    }
    let missing: Vec<&String> = want.keys().filter(|p| !got.contains_key(*p)).collect();
    assert_eq!(missing, vec!["local.onnx"], "only the MAE engine is absent");
    // Without the MAE engine the bundle still runs: the local row is the zero-feature row.
    let pipeline = Pipeline::load(
        Bundle::open(&out.join("bundle")).unwrap(),
        RuntimeConfig { threads: 2, ..RuntimeConfig::default() },
    )
    .unwrap();
    assert_eq!(pipeline.providers()["local"], "absent");
    let info =
        Command::new(common::emollama_bin()).args(["info", "--bundle"]).arg(out.join("bundle")).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    let absent = text.lines().any(|l| l.trim_start().starts_with("local_engine") && l.contains("none in this bundle"));
    assert!(info.status.success() && absent, "{text}");
    // The projectors come from the main checkpoint: pre-extracted MAE features still work.
    assert!(pipeline.takes_features(), "the projector-only engines are exported without the MAE checkpoint");
    let req = AnalyzeRequest {
        max_new_tokens: Some(2),
        ..AnalyzeRequest::new(common::media_dir().join("talking-face.mp4").to_str().unwrap())
    };
    let r = common::analyze(&pipeline, &req).unwrap();
    assert!(r.notes.iter().any(|n| n.contains("no local (MAE) engine")), "{:?}", r.notes);
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("export-report.json")).unwrap()).unwrap();
    let ignored = report["keys"]["checkpoint"]["ignored"].as_object().unwrap();
    assert!(ignored.keys().any(|why| why.contains("no MAE checkpoint")), "{ignored:?}");
    assert_eq!(report["lora"]["pairs"], 4);
    // |dW|/|W| as the merge measured it, per pair: non-zero, so the LoRA was found.
    let ratios = report["lora"]["delta_ratio"].as_object().unwrap();
    assert!(ratios.len() == 4 && ratios.values().all(|r| r.as_f64().unwrap() > 0.01), "{ratios:?}");
}

#[test]
fn broken_inputs_are_refused_and_no_bundle_is_written() {
    let broken = fixture().join("variants/broken");
    let cases: [(&str, &str, &[&str]); 5] = [
        ("--checkpoint", "lora-63-pairs.pth", &["3 complete LoRA pairs, expected 4", "layers.1.self_attn.v_proj"]),
        ("--eva", "eva-renamed-key.pth", &["eva-renamed-key.pth", "'blocks.0.attn.qkv.weight'"]),
        ("--checkpoint", "projector-wrong-shape.pth", &["'llama_proj.weight' has shape [256, 708]", "[256, 704]"]),
        ("--checkpoint", "truncated.pth", &["truncated.pth: not a readable PyTorch checkpoint"]),
        ("--llama", "llama-missing-shard", &["model-00002-of-00002.safetensors: missing shard"]),
    ];
    for (flag, file, wants) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("export");
        let run = export(&out, &[(flag, broken.join(file))], &[]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        println!("{file}: {}", stderr.lines().rev().nth(1).unwrap_or_default());
        assert!(!run.status.success(), "{file}: exported");
        for want in wants {
            assert!(stderr.contains(want), "{file}: {want:?} not in {stderr}");
        }
        assert!(stderr.contains("no bundle was written") && !stderr.contains("Traceback"), "{stderr}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{file}: left {left:?}");
    }
}
