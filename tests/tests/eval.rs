//! `emollama eval` on a synthetic dataset made here: clips cut from the sample media with
//! the ffmpeg CLI, a list file and a transcript CSV as the official files, and `.npy`
//! features computed by the exporter's PyTorch modules from the runtime's own encoder
//! inputs. With random weights the labels mean nothing, so these tests check the
//! machinery: the metrics against scikit-learn, resuming, features against encoders,
//! comparisons, and every bad input.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use emollama_bundle::Bundle;
use emollama_commands::eval::metrics::Metrics;
use emollama_runtime::observer::InputDump;
use emollama_runtime::prompt::LABELS_6;
use emollama_runtime::{AnalyzeRequest, FeatureFiles, Pipeline, Preset, RuntimeConfig, Stage};
use serde_json::Value;

/// (clip, source in the sample media, ffmpeg arguments, label, valence): short cuts,
/// since face detection runs on every frame of a clip.
const CLIPS: [(&str, &str, &[&str], &str, &str); 6] = [
    ("face_a", "talking-face.mp4", &["-t", "1.5"], "happy", "1.5"),
    ("face_b", "talking-face.mp4", &["-ss", "2", "-t", "1.5"], "sad", "-2"),
    ("pattern", "test-pattern.mp4", &["-c", "copy"], "neutral", "0"),
    ("silent", "no-audio.mp4", &["-c", "copy"], "angry", ""),
    ("face_c", "talking-face.mp4", &["-ss", "4", "-t", "1"], "worried", "0.5"),
    ("pattern_b.mkv", "test-pattern.mp4", &["-c", "copy"], "surprise", "1"),
];

struct Dataset {
    root: PathBuf,
}

impl Dataset {
    fn list(&self) -> PathBuf {
        self.root.join("list.txt")
    }
    fn videos(&self) -> PathBuf {
        self.root.join("videos")
    }
    fn features(&self, modality: &str) -> PathBuf {
        self.root.join("features").join(modality)
    }
    fn transcripts(&self) -> PathBuf {
        self.root.join("transcripts.csv")
    }
}

fn runtime() -> &'static Pipeline {
    static RT: OnceLock<Pipeline> = OnceLock::new();
    RT.get_or_init(|| {
        let config = RuntimeConfig { threads: 2, ..RuntimeConfig::default() };
        Pipeline::load(Bundle::open(&common::bundle_dir()).unwrap(), config).expect("pipeline on the synthetic bundle")
    })
}

fn python(args: &[&str]) -> Output {
    let out = Command::new(common::python())
        .current_dir(common::export_python_dir())
        .args(args)
        .output()
        .expect("the exporter's venv python");
    assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The dataset, made once per test run beside the synthetic bundle (and left there, to
/// try `emollama eval` on by hand).
fn dataset() -> &'static Dataset {
    static D: OnceLock<Dataset> = OnceLock::new();
    D.get_or_init(|| {
        let root = common::test_data().join("eval-dataset");
        let _ = std::fs::remove_dir_all(&root);
        let videos = root.join("videos");
        std::fs::create_dir_all(&videos).unwrap();
        let mut list = String::from("# name num_frames label valence (as relative_test3_NCEV.txt)\n");
        let mut features_args = vec![];
        let dumps = root.join("dumps");
        for (file, source, ffmpeg_args, label, valence) in CLIPS {
            let name = file.split('.').next().unwrap();
            let video = if file.contains('.') { videos.join(file) } else { videos.join(format!("{file}.mp4")) };
            let status = Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-i"])
                .arg(common::media_dir().join(source))
                .args(ffmpeg_args)
                .arg(&video)
                .status()
                .unwrap();
            assert!(status.success(), "ffmpeg for {file}");
            list += &format!("{name} 50 {label} {valence}\n");
            // The runtime's own encoder inputs, dumped, for PyTorch to extract features from.
            let dump = dumps.join(name);
            let req = AnalyzeRequest { preset: Preset::Fast, ..AnalyzeRequest::new(video.to_str().unwrap()) };
            let session = runtime().session(&req, Default::default()).unwrap();
            session.observe(InputDump::new(&dump).unwrap()).run(|_| {}).unwrap();
            features_args.push("--clip".to_string());
            features_args.push(format!("{name}={}", dump.display()));
        }
        std::fs::write(root.join("list.txt"), list).unwrap();
        std::fs::write(
            root.join("transcripts.csv"),
            "name,chinese,sentence\nface_a,x,\"Well, I can't believe it.\"\nface_c,y,No way\n",
        )
        .unwrap();
        let torch = common::test_data().join("torch");
        let features_root = root.join("features");
        let mut args = vec!["-m", "emollama_export.features", "--torch", torch.to_str().unwrap()];
        args.extend(["--out", features_root.to_str().unwrap()]);
        args.extend(features_args.iter().map(String::as_str));
        python(&args);
        Dataset { root }
    })
}

fn emollama<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(common::emollama_bin()).args(args).output().unwrap()
}

fn text(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn bundle_arg() -> String {
    text(&common::bundle_dir())
}

/// `emollama eval --bundle BUNDLE --list LIST --out OUT`, on the dataset's videos.
fn eval_args(bundle: &Path, list: &Path, out: &Path) -> Vec<String> {
    let d = dataset();
    ["eval", "--threads", "2", "--bundle", &text(bundle), "--list", &text(list), "--videos", &text(&d.videos())]
        .iter()
        .map(|s| s.to_string())
        .chain(["--out".to_string(), text(out)])
        .collect()
}

/// `emollama eval` of the dataset into `out`, with `extra` flags; must succeed.
fn eval<S: AsRef<str>>(out: &Path, extra: &[S]) -> Output {
    let mut args = eval_args(&common::bundle_dir(), &dataset().list(), out);
    args.extend(extra.iter().map(|s| s.as_ref().to_string()));
    let o = emollama(&args);
    assert!(o.status.success(), "eval {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn features_flags() -> Vec<String> {
    let d = dataset();
    ["local", "temporal", "audio"]
        .iter()
        .flat_map(|m| [format!("--{m}-features"), d.features(m).to_str().unwrap().to_string()])
        .collect()
}

fn rows(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("eval.json")).unwrap()).unwrap()
}

fn compare(a: &Path, b: &Path) -> Value {
    let o = emollama(&["eval".to_string(), "--compare".into(), text(a), text(b), "--json".into()]);
    assert!(o.status.success(), "compare: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-12, "{what}: emollama {a} vs scikit-learn {b}");
}

/// Every number of `ours` (emollama's report section) equals scikit-learn's.
fn assert_metrics_match(ours: &Value, sk: &Value, what: &str) {
    for key in ["accuracy", "weighted_f1", "weighted_precision", "weighted_recall", "uar"] {
        close(ours[key].as_f64().unwrap(), sk[key].as_f64().unwrap(), &format!("{what} {key}"));
    }
    close(ours["war"].as_f64().unwrap(), sk["accuracy"].as_f64().unwrap(), &format!("{what} war"));
    for (label, recall) in sk["recall"].as_object().unwrap() {
        close(
            ours["per_label"][label]["recall"].as_f64().unwrap(),
            recall.as_f64().unwrap(),
            &format!("{what} recall {label}"),
        );
    }
    assert_eq!(ours["confusion"], sk["confusion"], "{what}: confusion matrix");
}

/// A deterministic generator for the prediction sets.
struct Lcg(u64);
impl Lcg {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        from[(self.0 >> 33) as usize % from.len()]
    }
}

#[test]
fn metrics_equal_scikit_learn() {
    let _serial = common::serial();
    let nine = emollama_runtime::prompt::LABELS_9;
    let mut rng = Lcg(7);
    let mut sets: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
    for (n, truth_from, pred_from) in [
        (40, &LABELS_6[..], &LABELS_6[..]),
        (25, &LABELS_6[..3], &nine[..]),     // predictions outside the truth's labels
        (30, &LABELS_6[..], &LABELS_6[..2]), // labels never predicted
        (7, &LABELS_6[..], &LABELS_6[..]),
    ] {
        let truth: Vec<&str> = (0..n).map(|_| rng.pick(truth_from)).collect();
        let pred: Vec<&str> = (0..n).map(|_| rng.pick(pred_from)).collect();
        sets.push((truth, pred));
    }
    sets.push((vec!["sad"; 5], vec!["sad"; 5])); // perfect
    let file = tempfile::NamedTempFile::new().unwrap();
    let body: Vec<Value> =
        sets.iter().map(|(t, p)| serde_json::json!({"truth": t, "pred": p, "labels": LABELS_6})).collect();
    std::fs::write(file.path(), serde_json::to_vec(&body).unwrap()).unwrap();
    let out = python(&["-m", "emollama_export.eval_reference", "pairs", file.path().to_str().unwrap()]);
    let sk: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (i, ((t, p), sk)) in sets.iter().zip(&sk).enumerate() {
        let ours = Metrics::compute(t.iter().copied().zip(p.iter().copied()), &LABELS_6);
        assert_metrics_match(&serde_json::to_value(&ours).unwrap(), sk, &format!("set {i}"));
    }
    println!("{} prediction sets: every metric equals scikit-learn's to 1e-12", sets.len());
}

/// Emotion-LLaMA-v2's multi-label metrics (`score_multilabel.py`: the binarizer fitted on
/// the truth, F1 micro and samples, the Jaccard with its 1e-6, mAP over 0/1 scores) equal
/// scikit-learn's, with predictions outside the truth's labels, empty ones and exact ones.
#[test]
fn multi_label_metrics_equal_scikit_learn() {
    use emollama_commands::eval::MultiLabelMetrics;
    let labels = ["anger", "fear", "happiness", "sadness", "surprise"];
    let mut rng = Lcg(11);
    let pick_set = |rng: &mut Lcg, from: &[&'static str], most: usize, least: usize| -> String {
        let n = least + (rng.pick(&["0", "1", "2", "3"]).parse::<usize>().unwrap() % (most - least + 1));
        let mut v: Vec<&str> = (0..n).map(|_| rng.pick(from)).collect();
        v.dedup();
        v.join(if rng.pick(&["a", "b"]) == "a" { "," } else { "; " })
    };
    let mut sets: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for (n, extra) in [(30, "contempt"), (12, "pain"), (8, "anger")] {
        let preds: Vec<&'static str> = labels.iter().copied().chain([extra]).collect();
        let truth: Vec<String> = (0..n).map(|_| pick_set(&mut rng, &labels, 3, 1)).collect();
        let pred: Vec<String> = (0..n).map(|_| pick_set(&mut rng, &preds, 3, 0)).collect();
        sets.push((truth, pred));
    }
    sets.push((vec!["fear,anger".into(), "sadness".into()], vec!["anger, fear".into(), "sadness".into()])); // exact
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    let body: Vec<Value> = sets.iter().map(|(t, p)| serde_json::json!({"truth": t, "pred": p})).collect();
    std::fs::write(file.path(), serde_json::to_vec(&body).unwrap()).unwrap();
    let out = python(&["-m", "emollama_export.eval_reference", "multilabel", file.path().to_str().unwrap()]);
    let sk: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let split = |s: &String| -> Vec<String> {
        s.split([',', ';']).map(|l| l.trim().to_lowercase()).filter(|l| !l.is_empty()).collect()
    };
    for (i, ((t, p), sk)) in sets.iter().zip(&sk).enumerate() {
        let owned: Vec<(Vec<String>, Vec<String>)> = t.iter().zip(p).map(|(t, p)| (split(t), split(p))).collect();
        let ours = MultiLabelMetrics::compute(
            owned.iter().map(|(t, p)| (t.iter().map(String::as_str).collect(), p.iter().map(String::as_str).collect())),
        );
        let ours = serde_json::to_value(&ours).unwrap();
        for key in ["f1_micro", "f1_samples", "jaccard", "map"] {
            close(ours[key].as_f64().unwrap(), sk[key].as_f64().unwrap(), &format!("set {i} {key}"));
        }
        for (label, ap) in sk["average_precision"].as_object().unwrap() {
            close(
                ours["average_precision"][label].as_f64().unwrap(),
                ap.as_f64().unwrap(),
                &format!("set {i} AP {label}"),
            );
        }
    }
    println!("{} multi-label sets: every metric equals scikit-learn's", sets.len());
}

#[test]
fn features_give_the_rows_of_the_encoders() {
    let _serial = common::serial();
    let d = dataset();
    let video = d.videos().join("face_a.mp4").to_str().unwrap().to_string();
    let encoders = AnalyzeRequest { max_new_tokens: Some(24), ..AnalyzeRequest::new(video.clone()) };
    let features = AnalyzeRequest {
        features: FeatureFiles {
            local: Some(d.features("local").join("face_a.npy")),
            temporal: Some(d.features("temporal").join("face_a.npy")),
            audio: Some(d.features("audio").join("face_a.npy")),
        },
        ..encoders.clone()
    };
    // The rows themselves: PyTorch's features through the projector-only engines against
    // the ONNX encoders with their projectors.
    let rows = |req: &AnalyzeRequest| {
        let mut s = runtime().session(req, Default::default()).unwrap();
        s.encode().unwrap();
        s.rows().unwrap()
    };
    let width = runtime().manifest().llm.embedding_width as usize;
    let (ra, rb) = (rows(&encoders), rows(&features));
    let row_diff = common::max_abs_diff(&ra, &rb);
    assert!(row_diff < 1e-5, "rows differ by {row_diff}");
    assert_eq!(common::max_abs_diff(&ra[..256 * width], &rb[..256 * width]), 0.0, "the global rows are untouched");
    let a = common::analyze(runtime(), &encoders).unwrap();
    let b = common::analyze(runtime(), &features).unwrap();
    let (sa, sb) = (a.label_scores.unwrap(), b.label_scores.unwrap());
    let worst = sa.iter().map(|(l, p)| (p - sb[l]).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "label probabilities differ by {worst}");
    assert_eq!(a.answer_tokens, b.answer_tokens, "greedy answers");
    assert_eq!(b.notes.iter().filter(|n| n.contains("pre-extracted features")).count(), 3, "{:?}", b.notes);
    // No face detection ran and no audio was decoded: the features replaced them.
    assert!(!b.timings_ms.contains_key(&Stage::Faces), "faces ran: {:?}", b.timings_ms);
    assert_eq!(b.media.as_ref().unwrap().audio_s, None, "audio decoded: {:?}", b.media);
    assert!(a.media.as_ref().unwrap().audio_s.unwrap() > 1.0, "{:?}", a.media);
    println!(
        "features vs encoders: rows max |diff| {row_diff:.2e}, label probabilities max |diff| {worst:.2e}, {} greedy tokens identical",
        a.answer_tokens.len()
    );
}

#[test]
fn eval_reports_the_papers_metrics_and_compares_runs() {
    let _serial = common::serial();
    let work = tempfile::tempdir().unwrap();
    let (with_features, with_encoders) = (work.path().join("features"), work.path().join("encoders"));
    let d = dataset();
    let mut flags: Vec<String> = features_flags();
    flags.extend(["--transcripts".into(), text(&d.transcripts())]);
    let started = Instant::now();
    let o = eval(&with_features, &flags);
    let wall = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("scored 6 of 6 clips"), "{stdout}");
    let r = report(&with_features);
    assert_eq!(r["clips_scored"], 6);
    assert_eq!(r["transcripts_used"], 2);
    assert!(r["speed"]["clips_per_s"].as_f64().unwrap() > 0.0);
    let svg = with_features.join("confusion.svg");
    python(&[
        "-c",
        &format!("import xml.etree.ElementTree as e; assert e.parse({:?}).getroot().tag.endswith('svg')", text(&svg)),
    ]);
    let md = std::fs::read_to_string(with_features.join("eval.md")).unwrap();
    assert!(md.contains("| weighted F1 |") && md.contains("Synthetic bundle") && md.contains("Per label"), "{md}");
    // The report's metrics are scikit-learn's on the rows it wrote.
    let results = with_features.join("results.jsonl");
    let sk = python(&[
        "-m",
        "emollama_export.eval_reference",
        "results",
        results.to_str().unwrap(),
        "--labels",
        &LABELS_6.join(","),
    ]);
    let sk: Value = serde_json::from_slice(&sk.stdout).unwrap();
    assert_eq!(sk["clips"], 6);
    assert_metrics_match(&r["official"], &sk["official"], "official extraction");
    assert_metrics_match(&r["robust"], &sk["robust"], "robust extraction");
    for row in rows(&with_features) {
        assert_eq!(row["run"]["features"], serde_json::json!(["local", "temporal", "audio"]));
        assert!(row["label_scores"].as_object().unwrap().len() == 9, "nine-label instruction scores");
        assert!(LABELS_6.contains(&row["label_official"].as_str().unwrap()), "official extraction is a scoring label");
    }
    println!(
        "eval (preset eval, features): 6 clips in {wall:.1} s with the pipeline load; median clip {:.0} ms",
        r["speed"]["median_clip_ms"].as_f64().unwrap()
    );

    // A run against itself: full agreement, nothing moved.
    let same = compare(&with_features, &results);
    assert_eq!(same["agreement"]["rate"], 1.0);
    assert_eq!(same["probability_max_abs_diff"], 0.0);
    assert!(same["metrics"].as_object().unwrap().values().all(|m| m["delta"] == 0.0));
    assert!(same["changed"].as_array().unwrap().is_empty());

    // The encoders on the videos against their own features: the same labels.
    eval(&with_encoders, &["--transcripts".to_string(), text(&d.transcripts())]);
    let c = compare(&with_encoders, &with_features);
    assert_eq!(c["clips"], 6);
    assert_eq!(c["agreement"]["rate"], 1.0, "{c}");
    let max = c["probability_max_abs_diff"].as_f64().unwrap();
    assert!(max < 1e-4, "features vs encoders: label probabilities differ by {max}");
    println!("eval: encoders vs features 100 % agreement, label probabilities max |diff| {max:.2e}");
}

#[test]
fn an_interrupted_eval_resumes_to_the_same_rows() {
    let _serial = common::serial();
    let work = tempfile::tempdir().unwrap();
    let (whole, resumed) = (work.path().join("whole"), work.path().join("resumed"));
    let flags = features_flags();
    eval(&whole, &flags);
    // Kill a run after its first row, leave a torn line behind as a kill mid-write would.
    let d = dataset();
    let mut child = Command::new(common::emollama_bin())
        .args(eval_args(&common::bundle_dir(), &d.list(), &resumed))
        .args(&flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let file = resumed.join("results.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&file).map_or(0, |t| t.lines().count()) < 1 {
        assert!(Instant::now() < deadline, "no row within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = rows(&resumed).len();
    assert!(before < CLIPS.len(), "the run finished before it was killed ({before} rows)");
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    std::io::Write::write_all(&mut f, b"{\"name\": \"face_").unwrap();
    drop(f);
    eval(&resumed, &flags);
    let strip = |rows: Vec<Value>| -> Vec<Value> {
        rows.into_iter()
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("timings_ms");
                r
            })
            .collect()
    };
    assert_eq!(strip(rows(&resumed)), strip(rows(&whole)), "resumed rows (timings aside) equal one run's");
    println!("killed after {before} of {} clips; resumed: the same rows as one uninterrupted run", CLIPS.len());
    // Another run's settings are not mixed into these results.
    let mut args = eval_args(&common::bundle_dir(), &d.list(), &resumed);
    args.extend(["--preset".into(), "fast".into()]);
    let o = emollama(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("another run") && err.contains("--restart"), "{err}");
}

/// Requantized bundles of the synthetic one, compared on the same clips with the fast
/// preset: F16 and Q8_0 against F32, Q4_K_M against F16.
#[test]
fn quantizations_compared_on_the_same_clips() {
    let _serial = common::serial();
    let work = tempfile::tempdir().unwrap();
    let flags = features_flags();
    let mut runs: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for t in ["f32", "f16", "q8_0", "q4_k_m"] {
        let bundle = if t == "f32" {
            common::bundle_dir()
        } else {
            let b = work.path().join(format!("bundle-{t}"));
            let o = emollama(&["quantize", "--bundle", &bundle_arg(), b.to_str().unwrap(), t]);
            assert!(o.status.success(), "quantize {t}: {}", String::from_utf8_lossy(&o.stderr));
            b
        };
        let out = work.path().join(t);
        let mut args = eval_args(&bundle, &dataset().list(), &out);
        args.extend(["--preset".into(), "fast".into()]);
        args.extend(flags.iter().cloned());
        let started = Instant::now();
        let res = emollama(&args);
        assert!(res.status.success(), "eval {t}: {}", String::from_utf8_lossy(&res.stderr));
        let r = report(&out);
        println!(
            "{t}: preset fast, 6 clips in {:.1} s with the load; median clip {:.1} ms ({:.1} clips/s)",
            started.elapsed().as_secs_f64(),
            r["speed"]["median_clip_ms"].as_f64().unwrap(),
            r["speed"]["clips_per_s"].as_f64().unwrap()
        );
        assert_eq!(r["run"]["llm"], t);
        runs.insert(t, out);
    }
    for (a, b) in [("f32", "f16"), ("f32", "q8_0"), ("f16", "q8_0"), ("f16", "q4_k_m"), ("q8_0", "q4_k_m")] {
        let c = compare(&runs[a], &runs[b]);
        let (mean, max) =
            (c["probability_mean_abs_diff"].as_f64().unwrap(), c["probability_max_abs_diff"].as_f64().unwrap());
        println!(
            "{a} vs {b}: agreement {:.1} % ({} changed), label probabilities mean |diff| {mean:.2e}, max {max:.2e}, weighted F1 delta {:+.4}",
            100.0 * c["agreement"]["rate"].as_f64().unwrap(),
            c["changed"].as_array().unwrap().len(),
            c["metrics"]["official.weighted_f1"]["delta"].as_f64().unwrap()
        );
        assert_eq!(c["clips"], 6);
        assert!(max > 0.0, "{a} vs {b}: a requantized LLM changes the probabilities");
        assert!(c["a"]["llm"] == a && c["b"]["llm"] == b);
    }
}

#[test]
fn bad_inputs_are_clear_errors_or_counted_skips() {
    let _serial = common::serial();
    let d = dataset();
    let work = tempfile::tempdir().unwrap();
    let list = |name: &str, text: &str| -> PathBuf {
        let p = work.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let run = |list: &Path, out: &str, extra: &[String]| -> Output {
        let mut args = eval_args(&common::bundle_dir(), list, &work.path().join(out));
        args.extend(["--preset".into(), "fast".into()]);
        args.extend(extra.iter().cloned());
        emollama(&args)
    };
    // A malformed line and an unknown label stop the run before any clip, naming the line.
    let o = run(&list("bad.txt", "face_a 50 happy 1\nface_b fifty sad\n"), "bad", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("line 2") && err.contains("num_frames"), "{err}");
    let o = run(&list("label.txt", "face_a 50 elated 1\n"), "label", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("unknown label \"elated\"") && err.contains("line 1"), "{err}");
    assert!(!work.path().join("bad/results.jsonl").exists(), "nothing written for a refused list");

    // A missing video and a features file of the wrong shape: those clips are skipped,
    // counted and named; the metrics cover the rest.
    let features = work.path().join("audio-features");
    std::fs::create_dir_all(&features).unwrap();
    for name in ["face_a", "face_b", "ghost"] {
        std::fs::copy(d.features("audio").join("face_a.npy"), features.join(format!("{name}.npy"))).unwrap();
    }
    let wrong = python(&[
        "-c",
        &format!(
            "import numpy as np; np.save({:?}, np.zeros((2, 32), np.float32))",
            features.join("face_b.npy").to_str().unwrap()
        ),
    ]);
    assert!(wrong.status.success());
    let o = run(
        &list("skips.txt", "face_a 50 happy 1\nghost 50 sad 0\nface_b 50 sad 0\n"),
        "skips",
        &["--audio-features".into(), text(&features)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 clips skipped"), "{err}");
    let r = report(&work.path().join("skips"));
    assert_eq!((r["clips_scored"].as_u64(), r["skipped"].as_array().unwrap().len()), (Some(1), 2));
    let reasons: Vec<&str> = r["skipped"].as_array().unwrap().iter().map(|s| s["error"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|e| e.contains("no video ghost")), "{reasons:?}");
    assert!(reasons.iter().any(|e| e.contains("shape [2, 32]")), "{reasons:?}");
    assert_eq!(r["official"]["clips"], 1, "metrics over the scored clip only");
    let md = std::fs::read_to_string(work.path().join("skips/eval.md")).unwrap();
    assert!(md.contains("Scored **1 of 3 clips**; 2 skipped") && md.contains("`ghost`"), "{md}");

    // DFEW's classes as the scoring set (UAR and WAR); there is no DFEW instruction.
    let dfew = list("dfew.txt", "face_a 50 disgust\npattern 50 neutral\n");
    let o = run(&dfew, "dfew", &["--scoring".into(), "dfew".into()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&work.path().join("dfew"));
    assert_eq!(r["run"]["scoring"], "dfew");
    assert!(r["official"]["confusion"]["labels"].as_array().unwrap().iter().any(|l| l == "disgust"));
    let o = run(&dfew, "dfew-instruction", &["--instruction".into(), "dfew".into()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("DFEW is a scoring set"), "{err}");

    // Features for a modality the bundle cannot project: refused before the first clip.
    let old = work.path().join("old-bundle");
    common::copy_dir(&common::bundle_dir(), &old);
    let manifest = old.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["files"].as_array_mut().unwrap().retain(|f| f["role"] != "audio_projector");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let mut args = eval_args(&old, &d.list(), &work.path().join("old"));
    args.extend(["--audio-features".into(), text(&features)]);
    let o = emollama(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no audio_projector engine"), "{err}");
}

/// The low-severity eval findings: a BOM is handled, a malformed or ambiguous transcript
/// CSV is refused naming its row, a clip name stays inside --videos, zero scored clips is
/// an error, a rerun keeps one row per clip, and a features path that is not a file says
/// what it is.
#[test]
fn eval_reads_its_inputs_strictly() {
    let _serial = common::serial();
    let d = dataset();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let out = |name: &str| dir.path().join(name);
    let run = |list: &Path, out: &Path, extra: &[&str]| {
        let mut args = eval_args(&common::bundle_dir(), list, out);
        args.extend(["--preset".into(), "fast".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        emollama(&args)
    };
    // A BOM before the first name: both clips scored.
    let bom = write("bom.txt", "\u{feff}face_a 50 happy\npattern 50 neutral\n");
    let r = run(&bom, &out("bom"), &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rows = std::fs::read_to_string(out("bom").join("results.jsonl")).unwrap();
    assert_eq!(rows.lines().filter(|l| !l.contains("\"error\"")).count(), 2, "{rows}");
    // Transcript CSVs: a BOM is fine; an unclosed quote and a repeated name are refused.
    let list = write("two.txt", "face_a 50 happy\npattern 50 neutral\n");
    let good = write("bom.csv", "\u{feff}name,sentence\nface_a,Hello there\n");
    let r = run(&list, &out("bom-csv"), &["--transcripts", &text(&good)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for (csv, says) in
        [("name,sentence\nface_a,\"Hi\npattern,Fine\n", "row"), ("name,sentence\nface_a,Hi\nface_a,Again\n", "row 3")]
    {
        let csv = write("bad.csv", csv);
        let r = run(&list, &out("bad-csv"), &["--transcripts", &text(&csv)]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{err}");
    }
    // A name that leaves --videos: refused, naming the line.
    for name in [format!("{}/face_a", d.videos().display()), "../videos/face_a".to_string()] {
        let list = write("escape.txt", &format!("{name} 50 happy\n"));
        let r = run(&list, &out("escape"), &[]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{err}");
        assert!(err.contains("line 1") && err.contains("plain file name"), "{err}");
    }
    // Nothing scored: an error (and the report that says why is written).
    let ghost = write("ghost.txt", "ghost 50 happy\n");
    let r = run(&ghost, &out("ghost"), &[]);
    assert_eq!(r.status.code(), Some(1), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no clip was scored"));
    assert!(out("ghost").join("eval.md").is_file());
    // A rerun retries the failed clip and keeps one row per clip.
    let mixed = write("mixed.txt", "ghost 50 happy\nface_a 50 happy\n");
    for _ in 0..3 {
        run(&mixed, &out("mixed"), &[]);
    }
    let lines = std::fs::read_to_string(out("mixed").join("results.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 2, "one row per clip after three runs");
    // A features path that is a folder or a FIFO says what it is (and nothing hangs).
    let feats = dir.path().join("feats");
    std::fs::create_dir_all(feats.join("face_a.npy")).unwrap();
    assert!(Command::new("mkfifo").arg(feats.join("pattern.npy")).status().unwrap().success());
    let started = Instant::now();
    let r = run(&list, &out("feats"), &["--local-features", &text(&feats)]);
    assert!(started.elapsed() < Duration::from_secs(60));
    let md = std::fs::read_to_string(out("feats").join("eval.md")).unwrap_or_default();
    assert!(md.contains("is a folder") && md.contains("FIFO"), "{md}\n{}", String::from_utf8_lossy(&r.stderr));
}

/// `--asr`: the transcript line from the bundle's speech recognition instead of the CSV,
/// on every clip; compared with the CSV run on the same clips; refused with a bundle
/// without the engines.
#[test]
fn asr_transcripts_are_compared_with_the_csvs() {
    let _serial = common::serial();
    let work = tempfile::tempdir().unwrap();
    let (csv, asr) = (work.path().join("csv"), work.path().join("asr"));
    let d = dataset();
    let bundle = common::test_data().join("bundle-asr");
    let run = |out: &Path, extra: &[String]| {
        let mut args = eval_args(&bundle, &d.list(), out);
        args.extend(extra.iter().cloned());
        let o = emollama(&args);
        assert!(o.status.success(), "eval {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&csv, &["--transcripts".into(), text(&d.transcripts())]);
    run(&asr, &["--asr".into()]);
    assert_eq!(report(&csv)["transcripts_used"].as_u64(), Some(2));
    // Every clip with audio is heard (the dataset has one without).
    for row in rows(&asr) {
        assert_eq!(row["run"]["asr"], true, "{row}");
        let heard = row["transcript"] == true;
        assert!(heard || row["notes"].to_string().contains("no audio"), "{row}");
    }
    assert_eq!(report(&asr)["transcripts_used"].as_u64(), Some(5));
    let c = compare(&asr, &csv);
    assert_eq!(c["clips"], 6, "{c}");
    // Without the engines: one clear error before any clip runs.
    let mut args = eval_args(&common::bundle_dir(), &d.list(), &work.path().join("none"));
    args.push("--asr".into());
    let o = emollama(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no speech recognition engines"), "{err}");
}
