//! The official Emotion-LLaMA-v2 export (`emollama_export.official_v2`) on format-faithful
//! fixture files (`emollama_export.fixtures_v2`: the v2 checkpoint's training key names
//! with a real AdamW state, whisper-large-v3's folder layout, v1's EVA file and LLaMA
//! folder): its engines against references built from the same files by other code
//! (LAVIS's EVA, timm's `Eva` loaded as the official code loads it, transformers'
//! `WhisperModel.from_pretrained`, ConvProAttention in numpy), its LLM against
//! transformers with the LoRA unmerged at v2's prompt ids, every checkpoint tensor
//! placed, the runtime on it, and the refusals of broken inputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use emollama_bundle::{Bundle, ModelFamily, Role};
use emollama_engines::onnx::{init_runtime, EncoderEngine, EngineOptions, ProviderPolicy};
use emollama_runtime::observer::InputDump;
use emollama_runtime::{AnalyzeRequest, Layout, Pipeline, RuntimeConfig};
use ndarray::ArrayD;
use serde_json::Value;

fn export_dir() -> PathBuf {
    common::official_dir().join("export-v2")
}

fn fixture() -> PathBuf {
    common::official_fixture()
}

/// The references' outputs, written by `official_reference goldens-v2` beside the export.
fn goldens() -> &'static Value {
    static V2_GOLDENS: OnceLock<Value> = OnceLock::new();
    V2_GOLDENS.get_or_init(|| common::read_goldens(&export_dir()))
}

fn golden(entry: &Value) -> ArrayD<f32> {
    common::tensor_in(&export_dir(), entry)
}

#[test]
fn exported_v2_engines_match_references_built_from_the_files() {
    let bundle = Bundle::open_verified(&export_dir().join("bundle")).unwrap();
    assert_eq!(bundle.manifest().model, ModelFamily::EmotionLlamaV2);
    let tol = goldens()["tolerance"]["engines"].as_f64().unwrap() as f32;
    let rt = init_runtime(None).unwrap();
    for (name, role) in [
        ("global", Role::GlobalEngine),
        ("temporal", Role::TemporalEngine),
        ("audio", Role::AudioEngine),
        ("fusion", Role::FusionEngine),
    ] {
        let e = bundle.file(&role).unwrap();
        let opts = EngineOptions { intra_threads: 2, policy: ProviderPolicy::cpu_only(), model_sha256: String::new() };
        let engine =
            EncoderEngine::load(rt, name, &bundle.path_of(e), e.inputs.clone(), e.outputs.clone(), &opts).unwrap();
        let case = &goldens()["engines"][name][0];
        let feeds: Vec<(String, ArrayD<f32>)> =
            case["inputs"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), golden(v))).collect();
        let views: Vec<(&str, ndarray::ArrayViewD<'_, f32>)> =
            feeds.iter().map(|(k, a)| (k.as_str(), a.view())).collect();
        let mut out = engine.run_cancellable(&views, None).unwrap();
        for (output, want) in case["outputs"].as_object().unwrap() {
            let got = out.take(output).unwrap();
            let diff = common::max_abs_diff(got.as_slice().unwrap(), golden(want).as_slice().unwrap());
            println!("{name}.{output}: max |emollama - independent reference| = {diff:.2e}");
            assert!(diff <= tol, "{name}.{output}: {diff}");
        }
    }
    // Every checkpoint tensor placed (the spec's 166 at full size: 46 with the fixture's
    // two layers), nothing of the checkpoint ignored but training state.
    let report: Value =
        serde_json::from_slice(&std::fs::read(export_dir().join("export-report.json")).unwrap()).unwrap();
    let checkpoint = &report["keys"]["checkpoint"];
    assert_eq!(checkpoint["tensors_used"], 2 * 2 * 2 + 8 + 30, "{checkpoint}");
    assert!(checkpoint["ignored"].as_object().unwrap().is_empty(), "{checkpoint}");
    // EVA's blocks: the global branch ignores the last one and the norm, the temporal one takes them.
    let ignored = |part: &str| report["keys"][part]["ignored"].to_string();
    assert!(ignored("eva_global").contains("blocks.2.") && ignored("eva_global").contains("norm.weight"));
    assert!(!ignored("eva_temporal").contains("blocks.2.") && !ignored("eva_temporal").contains("\"norm.weight\""));
    assert!(ignored("whisper").contains("model.decoder.layers.0"), "{}", ignored("whisper"));
}

#[test]
fn exported_v2_llm_matches_transformers_with_the_lora_unmerged() {
    let bundle = Bundle::open(&export_dir().join("bundle")).unwrap();
    let mut ctx = common::f32_context(&bundle.path_of(bundle.file(&Role::Llm).unwrap()), 1024);
    let g = &goldens()["llm"];
    // The manifest's ids before the rows are the ones the reference used (v2 spec §4.3).
    let prefix: Vec<i32> = serde_json::from_value(g["segments"][0]["tokens"].clone()).unwrap();
    assert_eq!(bundle.manifest().prompt.before_rows_ids.as_ref(), Some(&prefix));
    // A LoRA dropped on the way would show: its effect is far above the tolerance.
    common::assert_llm_matches_goldens(&mut ctx, &export_dir(), g, 50.0 * 1e-3);
}

/// The runtime on the official v2 export, end to end on a clip with sound and one without,
/// against the independent pipeline (`official_reference pipeline-v2`: the references'
/// encoders on the inputs the runtime dumped, zero audio features for the silent clip, the
/// rows in `encode_img`'s order, the LLM with the LoRA unmerged).
#[test]
fn the_runtime_on_the_official_v2_export_matches_the_reference_pipeline() {
    let bundle = Bundle::open(&export_dir().join("bundle")).unwrap();
    // An f32 KV cache, as the fp32 reference has: the default f16 cache moves these random
    // logits by about 1e-3 (label probabilities by 2e-4, measured), beyond this check's 1e-4.
    let config = RuntimeConfig {
        threads: 2,
        kv_type: emollama_bundle::KvType::F32,
        flash_attention: emollama_engines::llm::FlashAttention::Off,
        ..RuntimeConfig::default()
    };
    let p = Pipeline::load(bundle, config).unwrap();
    for (clip, sound) in [("talking-face.mp4", true), ("no-audio.mp4", false)] {
        let dump = tempfile::tempdir().unwrap();
        let req = AnalyzeRequest {
            max_new_tokens: Some(12),
            layout: Layout::Demo,
            ..AnalyzeRequest::new(common::media_dir().join(clip).to_str().unwrap())
        };
        let r = p.session(&req, Default::default()).unwrap().observe(InputDump::new(dump.path()).unwrap()).run(|_| {});
        let r = r.unwrap();
        assert_eq!(r.tokens.prompt, 9 + 448 + 42, "{clip}: the spec's §4.3 prompt length");
        let want = common::reference_pipeline("pipeline-v2", dump.path());
        assert_eq!(want["sound"], Value::Bool(sound), "{clip}");
        println!("{clip}:");
        common::assert_matches_reference_pipeline(&r, &want);
    }
}

/// The v2 exporter's command on the fixture, with some inputs replaced.
fn exporter(replace: &[(&str, PathBuf)]) -> Command {
    let fx = fixture();
    let mut inputs: Vec<(&str, PathBuf)> = vec![
        ("--checkpoint", fx.join("v2/checkpoint_9.pth")),
        ("--eva", fx.join("eva_vit_g.pth")),
        ("--whisper", fx.join("v2/whisper-large-v3")),
        ("--llama", fx.join("Llama-2-7b-chat-hf")),
    ];
    for (flag, path) in replace {
        inputs.iter_mut().filter(|(f, _)| f == flag).for_each(|(_, p)| *p = path.clone());
    }
    let mut cmd = Command::new(common::python());
    cmd.current_dir(common::export_python_dir()).args(["-m", "emollama_export.official_v2", "--eva-depth", "2"]);
    for (flag, path) in inputs {
        cmd.arg(flag).arg(path);
    }
    cmd.args(["--llm-outtype", "f32", "--vocab-gguf"])
        .arg(common::vocab_gguf())
        .arg("--converter-dir")
        .arg(common::cache_dir().join("llama.cpp-convert"));
    cmd
}

fn export(out: &Path, replace: &[(&str, PathBuf)]) -> Output {
    exporter(replace).arg("--out").arg(out).output().unwrap()
}

#[test]
fn check_reads_every_v2_input_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = exporter(&[]).arg("--check").arg("--out").arg(tmp.path().join("export")).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("inputs are consistent") && stdout.contains("temporal 3 and its norm"), "{stdout}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn broken_v2_inputs_are_refused_and_no_bundle_is_written() {
    let broken = fixture().join("v2/broken");
    let empty = tempfile::tempdir().unwrap();
    let cases: [(&str, PathBuf, &[&str]); 6] = [
        ("--whisper", empty.path().to_path_buf(), &["no config.json"]),
        ("--checkpoint", fixture().join("save_checkpoint/Emoation_LLaMA.pth"), &["an Emotion-LLaMA (v1) checkpoint"]),
        ("--checkpoint", broken.join("lora-missing-pair.pth"), &["3 complete LoRA pairs, expected 4"]),
        ("--checkpoint", broken.join("unknown-key.pth"), &["unknown key 'conv_pro_module.fc_out.weight'"]),
        ("--eva", broken.join("eva-without-last-block.pth"), &["needs blocks 0..2 and the final norm"]),
        ("--whisper", broken.join("whisper-other-width"), &["a Whisper of width 64", "takes width 128"]),
    ];
    for (flag, path, wants) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let run = export(&tmp.path().join("export"), &[(flag, path.clone())]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        println!("{}: {}", path.display(), stderr.lines().rev().nth(1).unwrap_or_default());
        assert!(!run.status.success(), "{}: exported", path.display());
        for want in wants {
            assert!(stderr.contains(want), "{want:?} not in {stderr}");
        }
        assert!(stderr.contains("no bundle was written") && !stderr.contains("Traceback"), "{stderr}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "{}", path.display());
    }
}
