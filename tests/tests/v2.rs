//! Emotion-LLaMA-v2 on the same runtime, with the synthetic v2 bundle
//! (`emollama_export.v2`: the exact structures at tiny widths, seeded random weights): its
//! four engines give what independent references give (timm's EVA, transformers'
//! Whisper, ConvProAttention in numpy); chained from the runtime's own outputs they make
//! the 448 rows in the official order; whisper-large-v3's 128-bin log-mel is exact; the
//! pipeline reads the manifest's model and runs a clip through v2's stages with the
//! spec's prompt ids; a bundle that mixes the two models is refused at open.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use emollama_bundle::{Bundle, BundleError, ModelFamily, TensorSpec};
use emollama_engines::onnx::{init_runtime, EncoderEngine, EngineOptions, ProviderPolicy};
use emollama_media::LogMel;
use emollama_runtime::observer::Observer;
use emollama_runtime::{AnalyzeRequest, Layout, Pipeline, PromptTokens, RuntimeConfig, RuntimeError, Stage};
use ndarray::{ArrayD, Axis};
use serde_json::Value;

fn v2_dir() -> PathBuf {
    common::test_data().join("v2")
}

fn index() -> Value {
    serde_json::from_slice(&std::fs::read(v2_dir().join("goldens/index.json")).unwrap()).unwrap()
}

fn specs(v: &Value) -> Vec<TensorSpec> {
    serde_json::from_value(v.clone()).unwrap()
}

fn load(name: &str, engine: &Value) -> EncoderEngine {
    let rt = init_runtime(None).unwrap();
    let opts = EngineOptions { intra_threads: 2, policy: ProviderPolicy::cpu_only(), model_sha256: String::new() };
    let path = v2_dir().join("bundle").join(engine["file"].as_str().unwrap());
    EncoderEngine::load(rt, name, &path, specs(&engine["inputs"]), specs(&engine["outputs"]), &opts).unwrap()
}

/// Run `name` on `feeds` (the golden feeds when None) and check every output against the
/// independent reference's.
fn run(name: &str, feeds: Option<Vec<(String, ArrayD<f32>)>>) -> Vec<(String, ArrayD<f32>)> {
    let index = index();
    let engine = &index["engines"][name];
    let tolerance = index["tolerance"].as_f64().unwrap() as f32;
    let feeds = feeds.unwrap_or_else(|| {
        let golden = engine["feeds"].as_object().unwrap();
        golden.iter().map(|(k, v)| (k.clone(), common::tensor_in(&v2_dir(), v))).collect()
    });
    let views: Vec<(&str, ndarray::ArrayViewD<'_, f32>)> = feeds.iter().map(|(k, a)| (k.as_str(), a.view())).collect();
    let mut outputs = load(name, engine).run_cancellable(&views, None).unwrap();
    let mut got = Vec::new();
    for (out, want) in engine["expected"].as_object().unwrap() {
        let a = outputs.take(out).unwrap();
        let want = common::tensor_in(&v2_dir(), want);
        assert_eq!(a.shape(), want.shape(), "{name}.{out}");
        let diff = common::max_abs_diff(a.as_slice().unwrap(), want.as_slice().unwrap());
        println!("{name}.{out} {:?}: max |emollama - reference| = {diff:.3e}", a.shape());
        assert!(diff <= tolerance, "{name}.{out}: {diff} > {tolerance}");
        got.push((out.clone(), a));
    }
    got
}

fn take(outputs: &mut Vec<(String, ArrayD<f32>)>, name: &str) -> ArrayD<f32> {
    let at = outputs.iter().position(|(n, _)| n == name).unwrap();
    outputs.remove(at).1
}

#[test]
fn the_v2_engines_make_the_references_448_rows() {
    let mut global = run("global", None);
    let mut temporal = run("temporal", None);
    // The audio engine hears the runtime's own log-mel of the reference's waveform.
    let index = index();
    let tones = &index["log_mel"][0];
    assert_eq!(tones["name"], "tones-3s");
    let wave = common::tensor_in(&v2_dir(), &tones["waveform"]);
    let features = LogMel::new(16_000, 400, 160, 128, 480_000).compute(wave.as_slice().unwrap());
    let features = ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 128, 3000]), features).unwrap();
    let mut audio = run("audio", Some(vec![("input_features".into(), features)]));
    // The fusion gets what the runtime's engines produced, not the goldens.
    let feeds = vec![
        ("audio_feat".into(), take(&mut audio, "audio_feat")),
        ("cls_feat".into(), take(&mut global, "cls_feat")),
        ("video_feat".into(), take(&mut temporal, "video_feat")),
    ];
    let mut fusion = run("fusion", Some(feeds));
    let blocks = [
        take(&mut fusion, "fusion_rows"),
        take(&mut global, "patch_rows"),
        take(&mut temporal, "video_rows"),
        take(&mut audio, "audio_rows"),
    ];
    let counts: Vec<usize> = serde_json::from_value(index["rows"]["counts"].clone()).unwrap();
    for (block, count) in blocks.iter().zip(&counts) {
        assert_eq!(block.shape()[1], *count);
    }
    let views: Vec<_> = blocks.iter().map(|b| b.index_axis(Axis(0), 0)).collect();
    let rows = ndarray::concatenate(Axis(0), &views).unwrap();
    let want = common::tensor_in(&v2_dir(), &index["rows"]["expected"]);
    assert_eq!(rows.shape(), want.shape());
    assert_eq!(rows.shape()[0], 448);
    let diff = common::max_abs_diff(rows.as_standard_layout().as_slice().unwrap(), want.as_slice().unwrap());
    println!("448 rows: max |emollama - reference| = {diff:.3e}");
    assert!(diff <= index["tolerance"].as_f64().unwrap() as f32);
}

/// whisper-large-v3's front end (128 bins) from this runtime's log-mel, against
/// transformers' `WhisperFeatureExtractor(feature_size=128)`, under and over 30 s.
#[test]
fn the_128_bin_log_mel_is_whisper_large_v3s() {
    let mel = LogMel::new(16_000, 400, 160, 128, 480_000);
    for case in index()["log_mel"].as_array().unwrap() {
        let wave = common::tensor_in(&v2_dir(), &case["waveform"]);
        let want = common::tensor_in(&v2_dir(), &case["log_mel"]);
        let got = mel.compute(wave.as_slice().unwrap());
        let diff = common::max_abs_diff(&got, want.as_slice().unwrap());
        println!("{}: max |emollama - transformers| = {diff:.3e}", case["name"]);
        assert!(diff <= 1e-5, "{}: {diff}", case["name"]);
    }
}

/// The prompt and the engine inputs a session built, as its observer saw them.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Sighting>>);

#[derive(Default, Clone)]
struct Sighting {
    before_rows: Vec<i32>,
    after_rows: Vec<i32>,
    shapes: BTreeMap<String, Vec<usize>>,
    /// Whether each tensor was all zeros.
    zeros: BTreeMap<String, bool>,
}

impl Observer for Seen {
    fn tensor(&mut self, name: &str, tensor: &ArrayD<f32>) -> Result<(), RuntimeError> {
        let mut seen = self.0.lock().unwrap();
        seen.shapes.insert(name.into(), tensor.shape().to_vec());
        seen.zeros.insert(name.into(), tensor.iter().all(|v| *v == 0.0));
        Ok(())
    }

    fn prompt(&mut self, prompt: &PromptTokens, _max_new_tokens: u32) -> Result<(), RuntimeError> {
        let mut seen = self.0.lock().unwrap();
        (seen.before_rows, seen.after_rows) = (prompt.before_rows.clone(), prompt.after_rows.clone());
        Ok(())
    }
}

/// v2 spec §4.3: `<s><s>[INST] <Vid>` in v2's pinned tokenizer, and the demo's quick
/// emotion prompt after the rows (42 ids).
const BEFORE_ROWS: [i32; 9] = [1, 1, 29961, 25580, 29962, 529, 29963, 333, 29958];
const QUICK_EMOTION: [i32; 42] = [
    1533, 29963, 333, 29958, 518, 331, 8194, 29962, 13355, 1598, 278, 953, 8194, 13384, 297, 278, 4863, 29889, 14542,
    852, 515, 29901, 27343, 29892, 766, 29887, 504, 29892, 8866, 29892, 9796, 29892, 21104, 29892, 14610, 29892, 16671,
    29889, 518, 29914, 25580, 29962,
];

#[test]
fn a_v2_bundle_runs_a_clip_through_v2s_stages_with_the_spec_prompt() {
    let bundle = Bundle::open(&v2_dir().join("bundle")).unwrap();
    assert_eq!(bundle.manifest().model, ModelFamily::EmotionLlamaV2);
    let p = Pipeline::load(bundle, RuntimeConfig { threads: 2, ..RuntimeConfig::default() }).unwrap();
    let clip = common::media_dir().join("talking-face.mp4");
    let req =
        AnalyzeRequest { max_new_tokens: Some(4), layout: Layout::Demo, ..AnalyzeRequest::new(clip.to_str().unwrap()) };
    let seen = Seen::default();
    let r = p.session(&req, Default::default()).unwrap().observe(seen.clone()).run(|_| {}).unwrap();
    let Sighting { before_rows: before, after_rows: after, shapes: tensors, .. } = seen.0.lock().unwrap().clone();
    assert_eq!(before, BEFORE_ROWS);
    assert_eq!(after, QUICK_EMOTION);
    assert_eq!(r.tokens.prompt, 9 + 448 + 42);
    for (name, shape) in [
        ("pixel_values", vec![1, 3, 448, 448]),
        ("frames", vec![16, 3, 224, 224]),
        ("input_features", vec![1, 128, 3000]),
        ("audio_feat", vec![1, 64, 24]),
        ("cls_feat", vec![1, 32]),
        ("video_feat", vec![1, 64, 32]),
    ] {
        assert_eq!(tensors.get(name), Some(&shape), "{name}: {tensors:?}");
    }
    let providers: Vec<&str> = r.providers.keys().map(String::as_str).collect();
    assert_eq!(providers, ["audio", "fusion", "global", "llm", "temporal"]);
    for stage in [Stage::GlobalEncoder, Stage::TemporalEncoder, Stage::AudioEncoder, Stage::FusionEncoder] {
        assert!(r.timings_ms.contains_key(&stage), "{stage:?}: {:?}", r.timings_ms);
    }
    assert!(!r.timings_ms.contains_key(&Stage::Faces) && r.faces.is_none());
    assert_eq!(r.answer_tokens.len(), 4);
    // No audio track: zero audio bins for the fusion and the projector's bias as the
    // audio rows (as the official training fed a missing modality), said in a note.
    let silent = common::media_dir().join("no-audio.mp4");
    let r = common::analyze(
        &p,
        &AnalyzeRequest { max_new_tokens: Some(2), ..AnalyzeRequest::new(silent.to_str().unwrap()) },
    )
    .unwrap();
    assert!(r.notes.iter().any(|n| n.contains("no audio")), "{:?}", r.notes);
    assert!(!r.timings_ms.contains_key(&Stage::AudioEncoder) && r.timings_ms.contains_key(&Stage::FusionEncoder));
}

/// v2's tasks (spec §4.4): each asks its instruction, the tasks with a closed label set
/// score their labels, `[audio]` zeroes the normalised frame (still encoded) and the video
/// features (the temporal EVA is not run), `[image]` the video and audio features, as
/// v2's training did; Emotion-LLaMA refuses the tasks it was not trained for.
#[test]
fn v2s_tasks_ask_their_instructions_and_zero_what_training_zeroed() {
    use emollama_runtime::prompt::{EvalSet, Task};
    let p = Pipeline::load(
        Bundle::open(&v2_dir().join("bundle")).unwrap(),
        RuntimeConfig { threads: 2, ..RuntimeConfig::default() },
    )
    .unwrap();
    let clip = common::media_dir().join("talking-face.mp4");
    // (task, its tag in the prompt, labels scored, the frame zeroed, temporal EVA run, Whisper run)
    let cases = [
        (Task::Sentiment, "[sentiment] Identify the displayed sentiment", 3, false, true, true),
        (Task::Intent, "[intent] Based on the visual, audio", 8, false, true, true),
        (Task::MultiLabel, "[multi-label] Based on the multimodal content", 0, false, true, true),
        (Task::Think, "[think] The possible emotions are", 0, false, true, true),
        (Task::Audio, "[audio] Based on the audio input", 0, true, false, true),
        (Task::Image, "[image] What emotional state might the person in the image", 0, false, false, false),
        (Task::EvalSet { set: EvalSet::Caer }, "[emotion] You are a helpful assistant", 7, false, true, true),
        (Task::EvalSet { set: EvalSet::MafwMulti }, "[multi-label] You are a helpful assistant", 0, false, true, true),
    ];
    for (task, tag, scored, zero_frame, video, audio) in cases {
        let name = task.name();
        let req = AnalyzeRequest { task, max_new_tokens: Some(2), ..AnalyzeRequest::new(clip.to_str().unwrap()) };
        let seen = Seen::default();
        let r = p.session(&req, Default::default()).unwrap().observe(seen.clone()).run(|_| {}).unwrap();
        let s = seen.0.lock().unwrap().clone();
        let after = p.llm().detokenize(&s.after_rows, false).unwrap();
        assert!(after.contains(tag), "{name}: {after}");
        assert_eq!(r.label_scores.as_ref().map_or(0, |l| l.len()), scored, "{name}");
        assert_eq!(s.zeros["pixel_values"], zero_frame, "{name}: the frame");
        assert_eq!(s.shapes.contains_key("frames"), video, "{name}: the temporal EVA's input");
        assert_eq!(r.timings_ms.contains_key(&Stage::TemporalEncoder), video, "{name}");
        assert_eq!(s.zeros["video_feat"], !video, "{name}: the fusion's video features");
        assert_eq!(s.shapes.contains_key("input_features"), audio, "{name}: Whisper's input");
        assert_eq!(s.zeros["audio_feat"], !audio, "{name}: the fusion's audio features");
        assert!(!s.zeros["cls_feat"], "{name}: the CLS of the (maybe zeroed) frame is encoded");
        assert_eq!(r.task, name);
    }
    // Emotion-LLaMA was trained for emotion and reason: the others are refused, naming the field.
    let v1 = Pipeline::load(
        Bundle::open(&common::bundle_dir()).unwrap(),
        RuntimeConfig { threads: 2, ..RuntimeConfig::default() },
    )
    .unwrap();
    let req = AnalyzeRequest { task: Task::Sentiment, ..AnalyzeRequest::new(clip.to_str().unwrap()) };
    match v1.session(&req, Default::default()).map(|_| ()) {
        Err(RuntimeError::Request(e)) => assert!(e.field == "task" && e.reason.contains("Emotion-LLaMA-v2"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(()) => panic!("a v1 bundle took task sentiment"),
    };
}

/// A manifest that mixes the models, or leaves out what its model needs, is refused at
/// open with the reason.
#[test]
fn a_bundle_that_mixes_the_models_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    type Tamper = fn(&mut Value);
    let cases: [(&str, Tamper); 5] = [
        ("v1 bundle with a fusion engine", |m| {
            m["model"] = "emotion-llama".into();
        }),
        ("v2 without its fusion engine", |m| {
            let files = m["files"].as_array_mut().unwrap();
            files.retain(|f| f["role"] != "fusion_engine");
        }),
        ("v2 with a face section", |m| {
            m["preprocess"]["face"] = serde_json::json!({"image_size": [224, 224], "aligned_size": [112, 112], "resize": "bilinear", "scale": 0.1});
        }),
        ("v2 rows in v1's order", |m| {
            m["prompt"]["row_order"] =
                serde_json::json!(["global_patches", "local", "temporal", "audio", "global_cls"]);
        }),
        ("v2 without its frame window", |m| {
            m["preprocess"]["temporal"].as_object_mut().unwrap().remove("window");
        }),
    ];
    for (what, tamper) in cases {
        let copy = dir.path().join(what.replace(' ', "-"));
        common::copy_dir(&v2_dir().join("bundle"), &copy);
        let path = copy.join("manifest.json");
        let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        tamper(&mut m);
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let err = Bundle::open(&copy).unwrap_err();
        println!("{what}: {err}");
        assert!(
            matches!(
                err,
                BundleError::Inconsistent(_) | BundleError::MissingRole(_) | BundleError::MissingTensor { .. }
            ),
            "{what}: {err:?}"
        );
    }
}

/// `watch` cuts a file into windows and runs each through v2's stages (its labels are v2's).
#[test]
fn watch_runs_windows_through_a_v2_bundle() {
    let clip = common::media_dir().join("talking-face.mp4");
    let out = std::process::Command::new(common::emollama_bin())
        .arg("watch")
        .arg(&clip)
        .arg("--bundle")
        .arg(v2_dir().join("bundle"))
        .args(["--window", "1", "--hop", "1", "--max-windows", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let windows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "window")
        .collect();
    assert_eq!(windows.len(), 2);
    for w in &windows {
        let label = w["label"].as_str().unwrap();
        assert!(emollama_runtime::prompt::LABELS_V2.contains(&label), "{w}");
    }
}

/// Both HTTP APIs serve a v2 bundle through its stages: `/v1/analyze` and the
/// OpenAI-compatible chat route (the fusion among the providers, the 448 rows in the prompt).
#[test]
fn the_http_apis_serve_a_v2_bundle() {
    use common::server::{http, json_path, start_on, wait_ready, JSON};
    let srv = start_on(&v2_dir().join("bundle"), &[]);
    wait_ready(srv.port);
    let clip = common::media_dir().join("talking-face.mp4");
    let r = http(srv.port, "POST", "/v1/analyze", &[JSON], &json_path(&clip, 4, ""));
    assert_eq!(r.status, 200, "{}", r.body);
    let analyzed: Value = serde_json::from_str(&r.body).unwrap();
    assert!(analyzed["providers"]["fusion"].is_string(), "{analyzed}");
    assert!(analyzed["tokens"]["prompt"].as_u64().unwrap() > 448, "{analyzed}");
    let video = serde_json::json!({"type": "video_url", "video_url": {"url": format!("file://{}", clip.display())}});
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": [{"type": "text", "text": "[emotion]"}, video]}],
        "max_tokens": 4,
    });
    let r = http(srv.port, "POST", "/v1/chat/completions", &[JSON], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let chat: Value = serde_json::from_str(&r.body).unwrap();
    assert!(chat["choices"][0]["message"]["content"].is_string(), "{chat}");
    assert!(chat["emollama"]["providers"]["fusion"].is_string(), "{chat}");
    assert_eq!(chat["emollama"]["tokens"]["prompt"], analyzed["tokens"]["prompt"], "the same prompt: {chat}");
    // v2's tasks by name in the API, and by tag in a chat message.
    let r = http(srv.port, "POST", "/v1/analyze", &[JSON], &json_path(&clip, 2, ", \"task\": \"sentiment\""));
    assert_eq!(r.status, 200, "{}", r.body);
    let sentiment: Value = serde_json::from_str(&r.body).unwrap();
    let scored: Vec<&String> = sentiment["label_scores"].as_object().unwrap().keys().collect();
    assert_eq!(scored, ["negative", "neutral", "positive"], "{sentiment}");
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": [{"type": "text", "text": "[think]"}, video]}],
        "max_tokens": 2,
    });
    let r = http(srv.port, "POST", "/v1/chat/completions", &[JSON], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let chat: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(chat["emollama"]["task"], "think", "{chat}");
}

/// `emollama eval --eval-set` on a v2 bundle: each set's instruction, its labels in the
/// list, and its scoring script's rule (the whole response, lowercased; the no-neutral
/// sentiment rule; the multi-label metrics), every number equal to scikit-learn's as the
/// official `score_*.py` compute them; the refusals of a v2 bundle without a set, a v1
/// bundle with one, and a label outside the set.
#[test]
fn eval_scores_v2_sets_as_their_scripts_do() {
    use emollama_runtime::prompt::EvalSet;
    let root = tempfile::tempdir().unwrap();
    let videos = root.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    for (name, source) in [("a", "talking-face.mp4"), ("b", "test-pattern.mp4"), ("c", "no-audio.mp4")] {
        std::fs::copy(common::media_dir().join(source), videos.join(format!("{name}.mp4"))).unwrap();
    }
    let eval = |set: &str, labels: [&str; 3], extra: &[&str], bundle: &std::path::Path| {
        let list = root.path().join(format!("{set}.txt"));
        let lines: Vec<String> = ["a", "b", "c"].iter().zip(labels).map(|(n, l)| format!("{n} 50 {l}\n")).collect();
        std::fs::write(&list, lines.concat()).unwrap();
        let out_dir = root.path().join(set);
        let out = std::process::Command::new(common::emollama_bin())
            .arg("eval")
            .arg("--bundle")
            .arg(bundle)
            .arg("--list")
            .arg(&list)
            .arg("--videos")
            .arg(&videos)
            .arg("--out")
            .arg(&out_dir)
            .args(extra)
            .output()
            .unwrap();
        (out, out_dir)
    };
    let reference = |args: &[&str]| -> Value {
        let out = std::process::Command::new(common::python())
            .current_dir(common::export_python_dir())
            .args(["-m", "emollama_export.eval_reference"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let close = |a: &Value, b: &Value, what: &str| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{what}: emollama {a}, scikit-learn {b}");
    };
    let bundle = v2_dir().join("bundle");
    for (set, labels, preset, counted) in [
        (EvalSet::Caer, ["happy", "Sad", "neutral"], "eval", 3),
        (EvalSet::CmuMosi, ["positive", "neutral", "negative"], "fast", 2),
        (EvalSet::MafwMulti, ["anger;sadness", "happiness", "neutral,fear"], "eval", 3),
    ] {
        let name = serde_json::to_value(set).unwrap().as_str().unwrap().to_string();
        let (out, dir) = eval(&name, labels, &["--eval-set", &name, "--preset", preset], &bundle);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let report: Value = serde_json::from_slice(&std::fs::read(dir.join("eval.json")).unwrap()).unwrap();
        assert_eq!(report["clips_scored"], 3, "{name}: {report}");
        assert_eq!(report["official"]["clips"], counted, "{name}: clips counted");
        let md = std::fs::read_to_string(dir.join("eval.md")).unwrap();
        assert!(md.contains(&format!("eval set `{name}`")), "{md}");
        let results = dir.join("results.jsonl");
        let rows: Vec<Value> =
            std::fs::read_to_string(&results).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let results = results.to_str().unwrap();
        if set == EvalSet::MafwMulti {
            // score_multilabel.py on the same rows.
            let sk = reference(&["multilabel", results]);
            for extraction in ["official", "robust"] {
                for key in ["f1_micro", "f1_samples", "jaccard", "map"] {
                    let ours = &report["multi_label"][extraction][key];
                    close(ours, &sk[extraction][key], &format!("{name} {extraction} {key}"));
                }
            }
            assert_eq!(rows[2]["truth"], "neutral,fear");
            continue;
        }
        // The official prediction is the whole response, stripped and lowercased.
        for row in &rows {
            let text = row["text"].as_str().unwrap();
            if preset == "eval" {
                assert_eq!(row["label_official"].as_str().unwrap(), text.trim().to_lowercase());
            }
        }
        let labels = set.labels().join(",");
        let mut args = vec!["results", results, "--labels", labels.as_str()];
        if set.scoring() == emollama_runtime::prompt::Scoring::NoNeutral {
            args.push("--drop-neutral");
        }
        let sk = reference(&args);
        for extraction in ["official", "robust"] {
            for key in ["accuracy", "weighted_f1"] {
                close(&report[extraction][key], &sk[extraction][key], &format!("{name} {extraction} {key}"));
            }
        }
    }
    // Refusals, each before a clip runs.
    let (out, _) = eval("none", ["happy", "sad", "neutral"], &[], &bundle);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("give --eval-set") && err.contains("mafw_multi"), "{err}");
    let (out, _) = eval("v1", ["happy", "sad", "neutral"], &["--eval-set", "caer"], &common::bundle_dir());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--eval-set is Emotion-LLaMA-v2's"), "{err}");
    let (out, _) = eval("wrong", ["happy", "contempt", "neutral"], &["--eval-set", "caer"], &bundle);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 2") && err.contains("contempt"), "{err}");
}

/// `compile` on a v2 bundle: its four engines (no face nets) pass the static TensorRT
/// check for an Orin, and the build list names them with their cache folders.
#[test]
fn compile_checks_and_lists_v2s_engines() {
    let bundle = v2_dir().join("bundle");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::emollama_bin()).args(args).arg(&bundle).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let want = ["global_engine", "temporal_engine", "audio_engine", "fusion_engine"];
    let checks = run(&["compile", "--check", "--json", "--profile", "orin-nx-16gb", "--bundle"]);
    let checked: Vec<&str> = checks.as_array().unwrap().iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(checked, want, "{checks}");
    for c in checks.as_array().unwrap() {
        assert_eq!(c["refusals"], serde_json::json!([]), "{c}");
    }
    let plan = run(&["compile", "--json", "--profile", "orin-nx-16gb", "--bundle"]);
    let listed: Vec<&str> = plan["engines"].as_array().unwrap().iter().map(|e| e["role"].as_str().unwrap()).collect();
    assert_eq!(listed, want, "{plan}");
}
