//! Emotion-LLaMA-v2's engines and front end, the first pieces of the v2 runtime: the four
//! engines the exporter writes (`emollama_export.v2`, tiny widths, seeded random weights)
//! run through this runtime's ONNX Runtime and give what independent references give
//! (timm's EVA, transformers' Whisper, ConvProAttention in numpy); chained from the
//! runtime's own outputs (the fusion fed what the other three produced here), they make
//! the 448 rows in the official order; whisper-large-v3's 128-bin log-mel is exact.

mod common;

use std::path::PathBuf;

use emollama_bundle::TensorSpec;
use emollama_engines::onnx::{init_runtime, EncoderEngine, EngineOptions, ProviderPolicy};
use emollama_media::LogMel;
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
    let path = v2_dir().join("engines").join(engine["file"].as_str().unwrap());
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
    let mut global = run("global_v2", None);
    let mut temporal = run("temporal_v2", None);
    // The audio engine hears the runtime's own log-mel of the reference's waveform.
    let index = index();
    let tones = &index["log_mel"][0];
    assert_eq!(tones["name"], "tones-3s");
    let wave = common::tensor_in(&v2_dir(), &tones["waveform"]);
    let features = LogMel::new(16_000, 400, 160, 128, 480_000).compute(wave.as_slice().unwrap());
    let features = ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 128, 3000]), features).unwrap();
    let mut audio = run("audio_v2", Some(vec![("input_features".into(), features)]));
    // The fusion gets what the runtime's engines produced, not the goldens.
    let feeds = vec![
        ("audio_feat".into(), take(&mut audio, "audio_feat")),
        ("cls_feat".into(), take(&mut global, "cls_feat")),
        ("video_feat".into(), take(&mut temporal, "video_feat")),
    ];
    let mut fusion = run("fusion_v2", Some(feeds));
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
