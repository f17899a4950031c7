//! Warm `analyze` against the Python reference pipeline (the exporter's PyTorch modules
//! and transformers' LLaMA, on the same preprocessed inputs), side by side, medians,
//! with the runtime's per-stage breakdown. Not a test.
//!
//! usage: cargo bench -p emollama-runtime --bench analyze -- BUNDLE_PARENT MEDIA [RUNS]
//! (BUNDLE_PARENT holds bundle/ and torch/, as scripts/test's test-data folder does.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use emollama_bundle::Bundle;
use emollama_runtime::observer::InputDump;
use emollama_runtime::{AnalyzeRequest, Pipeline, RuntimeConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let data = PathBuf::from(args.first().expect("usage: analyze BUNDLE_PARENT MEDIA [RUNS]"));
    let media = args.get(1).expect("MEDIA").clone();
    let runs: usize = args.get(2).map_or(5, |s| s.parse().unwrap());
    let rt = Pipeline::load(Bundle::open(&data.join("bundle")).unwrap(), RuntimeConfig::default()).unwrap();
    let dump = tempfile::tempdir().unwrap();
    let req = AnalyzeRequest { max_new_tokens: Some(24), ..AnalyzeRequest::new(media.clone()) };
    let session = rt.session(&req, Default::default()).unwrap();
    session.observe(InputDump::new(dump.path()).unwrap()).run(|_| {}).unwrap();
    let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..runs {
        let r = rt.session(&req, Default::default()).unwrap().run(|_| {}).unwrap();
        for (k, v) in r.timings_ms {
            stages.entry(k.name().to_string()).or_default().push(v);
        }
    }
    let med: BTreeMap<String, f64> = stages.into_iter().map(|(k, v)| (k, median(v))).collect();
    let python = emollama_bundle::locations::setup_cache_dir().join("venv/bin/python");
    let out = dump.path().join("ref.json");
    let status = Command::new(python)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../export/python"))
        .args(["-m", "emollama_export.reference", "--repeat", &runs.to_string(), "--torch"])
        .arg(data.join("torch"))
        .arg("--inputs")
        .arg(dump.path())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    let pt = &reference["timings_ms"];
    let get = |k: &str| med.get(k).copied().unwrap_or(0.0);
    let ours_encoders = get("global_encoder") + get("local_encoder") + get("temporal_encoder") + get("audio_encoder");
    let ours_model = ours_encoders + get("prefill") + get("label_scores") + get("generation");
    let py = |k: &str| pt[k].as_f64().unwrap();
    println!("warm analyze, {media}, 24 greedy tokens + 9 label scores, {runs} runs, medians (ms)");
    println!("{:<18} {:>10} {:>12}", "stage", "emollama", "python ref");
    for k in ["fetch", "decode", "faces"] {
        println!("{k:<18} {:>10.1} {:>12}", get(k), "-");
    }
    println!("{:<18} {:>10.1} {:>12.1}", "encoders", ours_encoders, py("encoders"));
    for k in ["prefill", "label_scores", "generation"] {
        println!("{k:<18} {:>10.1} {:>12.1}", get(k), py(k));
    }
    println!("{:<18} {:>10.1} {:>12.1}", "model total", ours_model, py("total"));
    println!("{:<18} {:>10.1} {:>12}", "request total", get("total"), "-");
    println!("ratio emollama/python over the same work (encoders + LLM): {:.2}", ours_model / py("total"));
}
