//! Smaller encoder engines (`emollama_export.quantize_encoders`) on the synthetic bundle
//! (and on the official fixture's export, whose EVA weights are stored fp16):
//! fp16-stored weights and explicit int8 (Q/DQ) graphs calibrated on the runtime's own
//! encoder inputs for a folder of clips, each engine kept only at its stated parity with
//! the fp32 engine; the bundles verify, pass the static TensorRT check, run through the
//! whole pipeline (compared with the fp32 bundle's answer and label probabilities) and
//! through `eval --compare`; calibration folders that cannot calibrate are clear errors
//! and nothing is written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use emollama_bundle::{Bundle, EnginePrecision, Precision, Role};
use emollama_runtime::{AnalyzeRequest, Pipeline, RuntimeConfig};
use serde_json::Value;

/// Eight short cuts of the sample media (one without sound, one without a face): the
/// calibration folder, made once per test run.
fn calibration_clips() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::test_data().join("calibration-clips");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cuts: [(&str, &str, &str); 8] = [
            ("talking-face.mp4", "0", "1.5"),
            ("talking-face.mp4", "1.5", "1.5"),
            ("talking-face.mp4", "3", "1.5"),
            ("test-pattern.mp4", "0", "1"),
            ("talking-face.mp4", "4.5", "1.5"),
            ("no-audio.mp4", "0", "1"),
            ("talking-face.mp4", "0.7", "2"),
            ("talking-face.mp4", "2.2", "2"),
        ];
        for (i, (source, start, length)) in cuts.iter().enumerate() {
            let status = Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-ss", start, "-t", length, "-i"])
                .arg(common::media_dir().join(source))
                .arg(dir.join(format!("clip{i}.mp4")))
                .status()
                .unwrap();
            assert!(status.success(), "ffmpeg cut {i}");
        }
        dir
    })
}

fn quantize(out: &Path, args: &[&str]) -> Output {
    quantize_bundle(&common::bundle_dir(), out, args)
}

fn quantize_bundle(bundle: &Path, out: &Path, args: &[&str]) -> Output {
    Command::new(common::python())
        .current_dir(common::export_python_dir())
        .args(["-m", "emollama_export.quantize_encoders", "--bundle"])
        .arg(bundle)
        .arg("--out")
        .arg(out)
        .arg("--emollama")
        .arg(common::emollama_bin())
        .args(args)
        .output()
        .unwrap()
}

/// The fp16 and int8 bundles, made once per test run.
fn quantized(precision: &str) -> PathBuf {
    static MADE: OnceLock<()> = OnceLock::new();
    let dir = |p: &str| common::test_data().join(format!("bundle-encoders-{p}"));
    MADE.get_or_init(|| {
        // The clips' encoder inputs, dumped by the first run and read by the second.
        let dumps = common::test_data().join("bundle-encoders-dumps");
        let _ = std::fs::remove_dir_all(&dumps);
        for p in ["fp16", "int8"] {
            let flag = format!("--{p}");
            let clips = calibration_clips().to_str().unwrap();
            let out = quantize(&dir(p), &[&flag, "--calibration", clips, "--dumps", dumps.to_str().unwrap()]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{p}: {text}{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(text.contains("read from"), p == "int8", "{p}: {text}");
            print!("{text}");
            // The unchanged files are the original's (hard links): the LLM is not copied.
            let llm = |b: &Path| {
                use std::os::unix::fs::MetadataExt;
                let m: Value =
                    serde_json::from_str(&std::fs::read_to_string(b.join("manifest.json")).unwrap()).unwrap();
                let f = m["files"].as_array().unwrap().iter().find(|f| f["role"] == "llm").unwrap()["path"].clone();
                std::fs::metadata(b.join(f.as_str().unwrap())).unwrap().ino()
            };
            assert_eq!(llm(&dir(p)), llm(&common::bundle_dir()), "{p}: the LLM file is shared");
        }
    });
    dir(precision)
}

fn pipeline(dir: &Path) -> Pipeline {
    Pipeline::load(Bundle::open_verified(dir).unwrap(), RuntimeConfig { threads: 2, ..RuntimeConfig::default() })
        .unwrap()
}

#[test]
fn fp16_and_int8_engines_keep_their_parity_through_the_pipeline() {
    let _serial = common::serial();
    let fp32 = Bundle::open(&common::bundle_dir()).unwrap();
    let fp32_size = |role: &Role| fp32.file(role).unwrap().size;
    for (precision, engine_precision) in [("fp16", EnginePrecision::Fp16), ("int8", EnginePrecision::Int8)] {
        let dir = quantized(precision);
        let bundle = Bundle::open_verified(&dir).unwrap();
        let m = bundle.manifest();
        assert_eq!(m.id, format!("{}-{precision}", fp32.manifest().id));
        let roles: &[Role] = if precision == "fp16" {
            &[Role::GlobalEngine, Role::LocalEngine, Role::TemporalEngine, Role::AudioEngine, Role::LocalProjector]
        } else {
            &[Role::GlobalEngine, Role::LocalEngine, Role::TemporalEngine, Role::AudioEngine]
        };
        for role in roles {
            let e = bundle.file(role).unwrap();
            assert_eq!(e.precision, Precision::Engine(engine_precision), "{role}");
            let q = e.quantization.as_ref().unwrap_or_else(|| panic!("{role}: no quantization record"));
            assert_eq!(q.calibration.is_some(), precision == "int8", "{role}: {q:?}");
            let p = e.parity.as_ref().unwrap();
            let cosine = p.extra["cosine_min"].as_f64().unwrap();
            assert!(cosine >= p.extra["min_cosine"].as_f64().unwrap(), "{role}: {cosine}");
            assert!(p.extra["max_rel_diff"].as_f64().unwrap() <= p.tolerance, "{role}");
            assert!(!dir.join(&fp32.file(role).unwrap().path).exists(), "{role}: the fp32 file was left behind");
            println!(
                "{precision} {role}: {} -> {} bytes, cosine {cosine:.6}, max |diff| {:.3e}",
                fp32_size(role),
                e.size,
                p.max_abs_diff.unwrap()
            );
        }
        // fp16 halves what it touches (at these tiny widths the fp32 position tables and
        // norms are a large share, so the file shrinks by less).
        if precision == "fp16" {
            assert!(bundle.file(&Role::GlobalEngine).unwrap().size < fp32_size(&Role::GlobalEngine) * 3 / 4);
        }
        // The face nets and the LLM are copied as they are.
        for role in [Role::FacePnet, Role::Llm] {
            assert_eq!(bundle.file(&role).unwrap().sha256, fp32.file(&role).unwrap().sha256);
        }
        // The Q/DQ graphs pass the static TensorRT check.
        let out = Command::new(common::emollama_bin())
            .args(["compile", "--check", "--json", "--profile", "orin-nano-8gb", "--bundle"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
        for c in checks.as_array().unwrap() {
            assert_eq!(c["refusals"], serde_json::json!([]), "{c}");
            if precision == "int8" && c["role"] == "global_engine" {
                let ops = c["operators"].as_object().unwrap();
                assert!(ops.contains_key("QuantizeLinear") && ops.contains_key("DequantizeLinear"), "{c}");
            }
        }
    }
    // The whole pipeline on one clip: the fp32 bundle's answer against each.
    let clip = common::media_dir().join("talking-face.mp4");
    let req = AnalyzeRequest { max_new_tokens: Some(16), ..AnalyzeRequest::new(clip.to_str().unwrap()) };
    let reference = common::analyze(&pipeline(&common::bundle_dir()), &req).unwrap();
    for precision in ["fp16", "int8"] {
        let r = common::analyze(&pipeline(&quantized(precision)), &req).unwrap();
        let same = r.answer_tokens.iter().zip(&reference.answer_tokens).take_while(|(a, b)| a == b).count();
        let (a, b) = (r.label_scores.as_ref().unwrap(), reference.label_scores.as_ref().unwrap());
        let worst = a.iter().map(|(l, p)| (p - b[l]).abs()).fold(0.0, f64::max);
        println!(
            "{precision}: {same} of {} greedy tokens as fp32's, label probabilities max |diff| {worst:.2e}, label {:?} (fp32 {:?})",
            reference.answer_tokens.len(),
            r.label,
            reference.label
        );
        // Stated from the measured runs (random weights): fp16 moves the probabilities by
        // about 1e-4, int8 by about 1e-2.
        let bound = if precision == "fp16" { 5e-3 } else { 0.1 };
        assert!(worst < bound, "{precision}: label probabilities moved by {worst}");
        if precision == "fp16" {
            assert_eq!(r.answer_tokens, reference.answer_tokens, "fp16: the greedy tokens");
        }
    }
}

/// `eval --compare` of the fp32 and int8 bundles on the same clips: the tool users run on
/// their own data with real weights.
#[test]
fn eval_compares_the_int8_bundle_with_the_fp32_one() {
    let _serial = common::serial();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    let names: Vec<String> =
        (0..4).map(|i| format!("clip{i} 40 {}\n", ["happy", "sad", "neutral", "angry"][i])).collect();
    std::fs::write(&list, names.concat()).unwrap();
    let mut runs = Vec::new();
    for (name, bundle) in [("fp32", common::bundle_dir()), ("int8", quantized("int8"))] {
        let out = work.path().join(name);
        let o = Command::new(common::emollama_bin())
            .arg("eval")
            .arg("--bundle")
            .arg(&bundle)
            .arg("--list")
            .arg(&list)
            .arg("--videos")
            .arg(calibration_clips())
            .arg("--out")
            .arg(&out)
            .args(["--preset", "fast"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        runs.push(out);
    }
    let o = Command::new(common::emollama_bin()).args(["eval", "--json", "--compare"]).args(&runs).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["clips"], 4);
    assert_eq!(c["b"]["bundle"], format!("{}-int8", c["a"]["bundle"].as_str().unwrap()), "{c}");
    let max = c["probability_max_abs_diff"].as_f64().unwrap();
    println!(
        "fp32 vs int8 encoders: label agreement {:.0} %, label probabilities max |diff| {max:.2e}",
        100.0 * c["agreement"]["rate"].as_f64().unwrap()
    );
    assert!(max > 0.0 && max < 0.1, "{max}");
}

/// Calibration folders that cannot calibrate, and a gate that is not met: clear errors,
/// and neither the bundle nor a partial folder is written.
#[test]
fn calibration_and_parity_failures_are_clear_and_write_nothing() {
    let _serial = common::serial();
    let work = tempfile::tempdir().unwrap();
    let folder = |name: &str, files: &[(&str, &[u8])]| -> PathBuf {
        let d = work.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, bytes) in files {
            std::fs::write(d.join(f), bytes).unwrap();
        }
        d
    };
    let clip = std::fs::read(calibration_clips().join("clip0.mp4")).unwrap();
    let empty = folder("empty", &[]);
    let small = folder("small", &[("a.mp4", &clip), ("b.mp4", &clip)]);
    let audio = folder("audio", &[("a.wav", b"RIFF"), ("b.jpg", b"\xff\xd8")]);
    let broken =
        folder("broken", &[("a.mp4", &clip), ("b.mp4", &clip), ("c.mp4", b"not a video at all"), ("d.mp4", &clip)]);
    let all = calibration_clips().to_str().unwrap().to_string();
    let cases: [(&str, Vec<&str>, &str); 6] = [
        ("empty", vec!["--int8", "--calibration", empty.to_str().unwrap()], "holds no video clips"),
        ("too small", vec!["--int8", "--calibration", small.to_str().unwrap()], "holds 2 clips"),
        ("wrong media", vec!["--int8", "--calibration", audio.to_str().unwrap()], "found a.wav, b.jpg"),
        ("corrupt clip", vec!["--int8", "--calibration", broken.to_str().unwrap()], "calibration clip c.mp4"),
        ("no clips", vec!["--int8"], "--int8 needs --calibration"),
        (
            "gate",
            vec!["--int8", "--calibration", &all, "--min-cosine", "0.9999999"],
            "global_engine at int8 misses its parity gate",
        ),
    ];
    for (what, args, says) in cases {
        let out_dir = work.path().join(format!("out-{}", what.replace(' ', "-")));
        let o = quantize(&out_dir, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{what}: {err}");
        assert!(!out_dir.exists(), "{what}: a bundle was written");
        assert!(!out_dir.with_file_name(format!("out-{}.partial", what.replace(' ', "-"))).exists(), "{what}");
    }
}

/// An Emotion-LLaMA-v2 bundle quantizes the same way: its four engines (the fusion fed the
/// other engines' outputs, as the runtime dumped them) at int8, and the pipeline's answer
/// against the fp32 bundle's.
#[test]
fn a_v2_bundle_quantizes_to_int8_too() {
    let _serial = common::serial();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("v2-int8");
    let v2 = common::test_data().join("v2/bundle");
    let o = quantize_bundle(&v2, &out, &["--int8", "--calibration", calibration_clips().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bundle = Bundle::open_verified(&out).unwrap();
    for role in [Role::GlobalEngine, Role::TemporalEngine, Role::AudioEngine, Role::FusionEngine] {
        assert_eq!(bundle.file(&role).unwrap().precision, Precision::Engine(EnginePrecision::Int8), "{role}");
    }
    let clip = common::media_dir().join("talking-face.mp4");
    let req = AnalyzeRequest { max_new_tokens: Some(8), ..AnalyzeRequest::new(clip.to_str().unwrap()) };
    let (a, b) = (common::analyze(&pipeline(&v2), &req).unwrap(), common::analyze(&pipeline(&out), &req).unwrap());
    let (pa, pb) = (a.label_scores.unwrap(), b.label_scores.unwrap());
    let worst = pa.iter().map(|(l, p)| (p - pb[l]).abs()).fold(0.0, f64::max);
    let same = a.answer_tokens.iter().zip(&b.answer_tokens).take_while(|(x, y)| x == y).count();
    println!(
        "v2 int8: {same} of {} greedy tokens as fp32's, label probabilities max |diff| {worst:.2e}",
        a.answer_tokens.len()
    );
    assert!(worst < 0.1, "{worst}");
}

/// The official export stores EVA's weights as fp16 behind a Cast and a Transpose (PyTorch
/// folds neither for an fp16 parameter): quantized, every MatMul must read its weight
/// through a DequantizeLinear of an int8 initializer with one scale per output channel,
/// and no fp32 copy of a weight may stay in the file (before the fold, the quantizer took
/// those weights for activations: one scale per matrix, and the file kept them in fp32).
#[test]
fn an_fp16_stored_eva_is_quantized_per_channel_with_no_float_weights_left() {
    let _serial = common::serial();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("official-int8");
    let official = common::official_dir().join("export/bundle");
    let clips = calibration_clips().to_str().unwrap();
    // EVA alone: the fixture's other engines (random weights at the official widths) are
    // not what this checks.
    let keep = ["--keep", "local_engine", "--keep", "temporal_engine", "--keep", "audio_engine"];
    let o = quantize_bundle(&official, &out, &[&["--int8", "--calibration", clips][..], &keep].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (before, after) = (Bundle::open_verified(&official).unwrap(), Bundle::open_verified(&out).unwrap());
    let (eva, eva_int8) = (before.file(&Role::GlobalEngine).unwrap(), after.file(&Role::GlobalEngine).unwrap());
    assert_eq!(eva.precision, Precision::Engine(EnginePrecision::Fp16));
    assert_eq!(eva_int8.precision, Precision::Engine(EnginePrecision::Int8));
    // The onnx package reads the graph: MatMuls, how their weights arrive, float weights left.
    let check =
        Command::new(common::python()).args(["-c", MATMUL_WEIGHTS]).arg(out.join(&eva_int8.path)).output().unwrap();
    let report: Value =
        serde_json::from_slice(&check.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&check.stderr)));
    println!("official EVA int8: {report}");
    let matmuls = report["matmuls"].as_u64().unwrap();
    assert!(matmuls >= 8, "{report}");
    assert_eq!(report["int8_per_channel"].as_u64().unwrap(), report["weighted"].as_u64().unwrap(), "{report}");
    assert!(report["weighted"].as_u64().unwrap() >= matmuls / 2, "{report}");
    assert_eq!(report["float_weights_2d"].as_u64().unwrap(), 0, "{report}");
    assert!(eva_int8.size * 10 < eva.size * 7, "int8 {} bytes, fp16 {}", eva_int8.size, eva.size);
}

/// Counts, in an ONNX file: MatMuls; those whose B is a DequantizeLinear of an initializer
/// ("weighted"); of those, int8 with one scale per output channel; 2-D float initializers.
const MATMUL_WEIGHTS: &str = r#"
import json, sys, onnx
m = onnx.load(sys.argv[1])
inits = {i.name: i for i in m.graph.initializer}
made_by = {o: n for n in m.graph.node for o in n.output}
matmuls = [n for n in m.graph.node if n.op_type == "MatMul"]
weighted = per_channel = 0
for n in matmuls:
    dq = made_by.get(n.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        continue
    weighted += 1
    w, scale = inits[dq.input[0]], inits.get(dq.input[1])
    if w.data_type == onnx.TensorProto.INT8 and scale is not None and list(scale.dims) == [w.dims[1]]:
        per_channel += 1
floats = sum(1 for i in inits.values() if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(i.dims) == 2)
print(json.dumps({"matmuls": len(matmuls), "weighted": weighted, "int8_per_channel": per_channel, "float_weights_2d": floats}))
"#;
