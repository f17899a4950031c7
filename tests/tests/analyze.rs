//! End to end: `emollama analyze` against the Python reference pipeline (the exporter's
//! PyTorch modules and transformers' LLaMA on the same preprocessed inputs), label
//! scores, the CLI's JSON and its errors.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use common::analyze;
use emollama_bundle::{Bundle, GgufType, Precision};
use emollama_runtime::observer::InputDump;
use emollama_runtime::prompt::Task;
use emollama_runtime::{AnalyzeRequest, Layout, Mode, Pipeline, Preset, RuntimeConfig, Stage};

fn runtime() -> &'static Pipeline {
    static RT: OnceLock<Pipeline> = OnceLock::new();
    RT.get_or_init(|| {
        let config = RuntimeConfig { threads: 2, ..RuntimeConfig::default() };
        Pipeline::load(Bundle::open(&common::bundle_dir()).unwrap(), config).expect("pipeline on the synthetic bundle")
    })
}

fn talking_face() -> String {
    common::media_dir().join("talking-face.mp4").to_str().unwrap().to_string()
}

/// Run the exporter's reference pipeline on the inputs the runtime dumped.
fn reference(dump: &Path) -> serde_json::Value {
    let out = dump.join("reference.json");
    let status = Command::new(common::python())
        .current_dir(common::export_python_dir())
        .args(["-m", "emollama_export.reference", "--torch"])
        .arg(common::test_data().join("torch"))
        .arg("--inputs")
        .arg(dump)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("the exporter's venv python");
    assert!(status.success(), "reference pipeline failed");
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

fn check_against_reference(mode: Mode) {
    let dump = tempfile::tempdir().unwrap();
    let req = AnalyzeRequest {
        mode,
        max_new_tokens: Some(24),
        transcript: Some("I can't believe we made it".into()),
        ..AnalyzeRequest::new(talking_face())
    };
    let session = runtime().session(&req, Default::default()).unwrap();
    let result = session.observe(InputDump::new(dump.path()).unwrap()).run(|_| {}).unwrap();
    let want = reference(dump.path());
    let greedy: Vec<i32> =
        want["greedy_tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap() as i32).collect();
    let n = result.answer_tokens.len();
    assert!(n > 0);
    assert_eq!(&result.answer_tokens[..], &greedy[..n.min(greedy.len())], "{mode:?}: greedy tokens");
    if result.stop != Some(emollama_engines::llm::StopReason::StopString) {
        assert_eq!(n, greedy.len(), "{mode:?}: same length");
    }
    // Label scores: the reference's exact sequence log-probabilities, normalised.
    let ref_lp = want["label_logprobs"].as_object().unwrap();
    let max = ref_lp.values().map(|v| v.as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = ref_lp.values().map(|v| (v.as_f64().unwrap() - max).exp()).sum();
    let scores = result.label_scores.as_ref().unwrap();
    assert_eq!(scores.len(), 9);
    let mut worst = 0.0f64;
    for (label, p) in scores {
        let want_p = (ref_lp[label].as_f64().unwrap() - max).exp() / z;
        worst = worst.max((p - want_p).abs());
    }
    println!("{mode:?}: {n} greedy tokens identical to the reference; label probabilities max |diff| {worst:.2e}; notes {:?}", result.notes);
    assert!(worst < 1e-4, "{mode:?}: label scores {worst}");
    assert!((scores.values().sum::<f64>() - 1.0).abs() < 1e-9);
    // A bare-label answer is the arg-max of the scores.
    if let Some(bare) = result.text.split_whitespace().next().filter(|_| result.text.split_whitespace().count() == 1) {
        if scores.contains_key(bare) {
            let best = scores.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(best, bare);
        }
    }
}

#[test]
fn full_mode_matches_the_python_reference() {
    check_against_reference(Mode::Full);
}

#[test]
fn official_demo_mode_matches_the_python_reference() {
    check_against_reference(Mode::OfficialDemo);
}

#[test]
fn a_bare_label_answer_is_the_argmax_of_the_scores() {
    // The label scores are the LLM's own probabilities: for the single-token labels, the
    // ratio of two labels' scores is exp of the difference of their next-token logits
    // after the prompt. So the greedy first token, when it is a label, is the top-scored
    // label (a multi-token label's probability never exceeds its first token's), and the
    // scores order the labels as the logits do, on whatever weights.
    let rt = runtime();
    let req = AnalyzeRequest { max_new_tokens: Some(1), ..AnalyzeRequest::new(talking_face()) };
    let mut session = rt.session(&req, Default::default()).unwrap();
    session.encode().unwrap();
    session.tokenize_prompt().unwrap();
    session.prefill().unwrap();
    let logits = session.context().unwrap().logits().unwrap().to_vec();
    session.score_labels().unwrap();
    session.generate(|_| {}).unwrap();
    let r = session.finish();
    let scores = r.label_scores.unwrap();
    let best = scores.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0.clone();
    let single_token_labels = [
        (9796, "happy"),
        (14610, "sad"),
        (21104, "neutral"),
        (26230, "angry"),
        (16671, "surprise"),
        (8866, "fear"),
        (7404, "doubt"),
    ];
    let mut worst = 0.0f64;
    for (ta, a) in single_token_labels {
        for (tb, b) in single_token_labels {
            let from_scores = (scores[a] / scores[b]).ln();
            let from_logits = f64::from(logits[ta as usize] - logits[tb as usize]);
            worst = worst.max((from_scores - from_logits).abs());
        }
    }
    println!("label score ratios against the logits: max |diff| {worst:.2e} (log scale)");
    assert!(worst < 1e-3, "the scores are not the model's probabilities: {worst}");
    let first = r.answer_tokens[0];
    let top_logit = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as i32;
    assert_eq!(first, top_logit, "greedy takes the top logit");
    let (_, top_single) =
        single_token_labels.iter().max_by(|a, b| logits[a.0 as usize].total_cmp(&logits[b.0 as usize])).unwrap();
    let best_single =
        single_token_labels.iter().map(|(_, l)| *l).max_by(|a, b| scores[*a].total_cmp(&scores[*b])).unwrap();
    assert_eq!(best_single, *top_single);
    if let Some((_, label)) = single_token_labels.iter().find(|(t, _)| *t == first) {
        assert_eq!(&best, label, "a bare-label answer is the top-scored label");
    }
    // And the fast preset's label is that arg-max, with no generation at all.
    let fast = analyze(rt, &AnalyzeRequest { preset: Preset::Fast, ..AnalyzeRequest::new(talking_face()) }).unwrap();
    assert_eq!(fast.label.as_deref(), Some(best.as_str()));
    assert!(fast.answer_tokens.is_empty() && fast.text.is_empty());
    let t = &fast.timings_ms;
    println!(
        "fast preset: prefill {:.1} ms, label scores {:.1} ms (prompt {} positions)",
        t[&Stage::Prefill],
        t[&Stage::LabelScores],
        fast.tokens.prompt
    );
}

#[test]
fn tasks_layouts_and_missing_inputs_are_reported() {
    let rt = runtime();
    let no_audio = common::media_dir().join("no-audio.mp4").to_str().unwrap().to_string();
    let r = analyze(rt, &AnalyzeRequest { max_new_tokens: Some(4), ..AnalyzeRequest::new(no_audio) }).unwrap();
    assert!(r.notes.iter().any(|n| n.contains("no audio")), "{:?}", r.notes);
    assert!(!r.transcript_used);
    let pattern = common::media_dir().join("test-pattern.mp4").to_str().unwrap().to_string();
    let req = AnalyzeRequest {
        task: Task::Reason { instruction: 2 },
        layout: Layout::Demo,
        preset: Preset::Demo,
        max_new_tokens: Some(6),
        ..AnalyzeRequest::new(pattern)
    };
    let mut streamed = String::new();
    let r = rt.session(&req, Default::default()).unwrap().run(|p| streamed.push_str(p)).unwrap();
    assert!(r.notes.iter().any(|n| n.contains("no face")), "{:?}", r.notes);
    assert!(r.label.is_none() && r.label_scores.is_none(), "reason task: no label scoring");
    assert_eq!(streamed.trim(), r.text);
    for stage in [
        Stage::Decode,
        Stage::Faces,
        Stage::GlobalEncoder,
        Stage::AudioEncoder,
        Stage::Prompt,
        Stage::Prefill,
        Stage::FirstToken,
        Stage::Generation,
        Stage::Total,
    ] {
        assert!(r.timings_ms.contains_key(&stage), "missing timing {stage}");
    }
    let q = AnalyzeRequest {
        task: Task::Question { text: "Is the person smiling?".into() },
        max_new_tokens: Some(3),
        ..AnalyzeRequest::new(talking_face())
    };
    assert_eq!(analyze(rt, &q).unwrap().task, "question");
}

fn emollama(args: &[&str]) -> std::process::Output {
    Command::new(common::emollama_bin()).args(args).output().unwrap()
}

#[test]
fn cli_json_has_every_field_and_bad_input_exits_non_zero() {
    let bundle = common::bundle_dir();
    let b = bundle.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let srt = dir.path().join("clip.srt");
    let clip = dir.path().join("clip.mp4");
    std::fs::copy(talking_face(), &clip).unwrap();
    std::fs::write(&srt, "1\n00:00:00,000 --> 00:00:02,000\nWe made it!\n").unwrap();
    let started = Instant::now();
    let out = emollama(&["analyze", clip.to_str().unwrap(), "--bundle", b, "--json", "--max-new-tokens", "8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "label",
        "label_scores",
        "text",
        "task",
        "mode",
        "transcript_used",
        "timings_ms",
        "tokens",
        "providers",
        "bundle",
        "device",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["transcript_used"], true, "the .srt beside the video is used");
    for key in ["prompt", "generated", "decode_per_s"] {
        assert!(v["tokens"].get(key).is_some());
    }
    assert!(v["timings_ms"]["total"].as_f64().unwrap() > 0.0);
    assert_eq!(v["bundle"]["synthetic"], true);
    println!("cli analyze --json in {:.1} s", started.elapsed().as_secs_f64());

    let one_line_error = |out: &std::process::Output| {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        lines[0].to_string()
    };
    let e = one_line_error(&emollama(&["analyze", "/nonexistent/clip.mp4", "--bundle", b]));
    assert!(e.contains("does not exist"), "{e}");
    let garbage = dir.path().join("garbage.mp4");
    std::fs::write(&garbage, vec![7u8; 5000]).unwrap();
    let e = one_line_error(&emollama(&["analyze", garbage.to_str().unwrap(), "--bundle", b]));
    assert!(e.contains("cannot open"), "{e}");
    // A bundle whose LLM does not match its manifest.
    let bad = dir.path().join("bundle");
    common::copy_dir(&bundle, &bad);
    std::fs::write(bad.join("zero-rows.f32"), vec![0u8; 16]).unwrap();
    let e = one_line_error(&emollama(&["analyze", &talking_face(), "--bundle", bad.to_str().unwrap()]));
    assert!(e.contains("zero-rows.f32"), "{e}");
    let e = one_line_error(&emollama(&["analyze", &talking_face(), "--bundle", b, "--task", "question"]));
    assert!(e.contains("--question"), "{e}");
}

#[test]
fn a_bundle_that_fits_only_in_turn_loads_encoders_one_at_a_time_with_the_same_answer() {
    let bundle = emollama_bundle::Bundle::open(&common::bundle_dir()).unwrap();
    let mut profile = emollama_devices::load_profiles(&[]).unwrap().into_iter().find(|p| p.name == "x86-cpu").unwrap();
    let plan = emollama_devices::plan(bundle.manifest(), &profile);
    // Usable memory between "encoders in turn" and "all resident".
    profile.usable_headless_gb = (plan.in_turn_total + plan.resident_total) as f64 / 2.0 / 1e9;
    profile.defaults.encoder_residency = emollama_devices::Residency::InTurn;
    assert_eq!(emollama_devices::plan(bundle.manifest(), &profile).outcome, emollama_devices::Outcome::FitsInTurn);
    profile.defaults.threads = 2;
    let in_turn = Pipeline::planned(&common::bundle_dir(), &profile, Default::default()).unwrap();
    assert!(in_turn.encoders_in_turn());
    let config = RuntimeConfig { encoders: emollama_devices::Residency::Resident, ..in_turn.config().clone() };
    let resident = Pipeline::load(bundle, config).unwrap();
    assert!(!resident.encoders_in_turn());
    let req = AnalyzeRequest { max_new_tokens: Some(8), ..AnalyzeRequest::new(talking_face()) };
    let (a, b) = (analyze(&in_turn, &req).unwrap(), analyze(&resident, &req).unwrap());
    assert_eq!(a.answer_tokens, b.answer_tokens);
    assert_eq!(a.label, b.label);
}

#[test]
fn prompt_plans_tokenize_to_the_spec_golden_ids() {
    use emollama_engines::llm::{LlmModel, ModelParams};
    use emollama_runtime::prompt::build_prompt;
    let m = LlmModel::load(&common::bundle_dir().join("llm-f32.gguf"), &ModelParams::default()).unwrap();
    let task = Task::Emotion { six_labels: false };
    // Eval: double BOS, "▁[INST] ▁<video>", then the rows, then the suffix of spec §4.3.
    let placeholder = &Bundle::open(&common::bundle_dir()).unwrap().manifest().prompt.placeholder.clone();
    let eval =
        build_prompt(emollama_bundle::ModelFamily::EmotionLlama, Layout::Eval, &task, Some("We made it"), placeholder);
    assert_eq!(m.tokenize(&eval.before_rows, true, true).unwrap(), vec![1, 1, 518, 25580, 29962, 529, 9641, 29958]);
    let after = m.tokenize(&eval.after_rows, false, true).unwrap();
    assert_eq!(
        &after[..17],
        &[1533, 9641, 29958, 529, 14394, 5299, 19132, 10605, 2565, 14394, 29958, 450, 2022, 297, 4863, 4083, 29901]
    );
    assert!(after.windows(7).any(|w| w == [29871, 518, 331, 8194, 29962, 3529, 8161]), "{after:?}");
    assert!(after.ends_with(&[29871, 518, 29914, 25580, 29962]));
    // Demo: the second user turn brings a third BOS mid-sequence, right before "[INST]".
    let demo = build_prompt(emollama_bundle::ModelFamily::EmotionLlama, Layout::Demo, &task, None, placeholder);
    assert_eq!(m.tokenize(&demo.before_rows, true, true).unwrap(), vec![1, 1, 518, 25580, 29962, 529, 9641, 29958]);
    let after = m.tokenize(&demo.after_rows, false, true).unwrap();
    let bos = after.iter().position(|&t| t == 1).expect("a BOS after the rows");
    assert_eq!(&after[..bos], &[1533, 9641, 29958, 529, 14394, 5299, 19132, 10605, 2565, 14394, 29958]);
    assert_eq!(after.iter().filter(|&&t| t == 1).count(), 1);
    let inst = m.tokenize("[INST]", false, false).unwrap();
    assert_eq!(&after[bos + 1..bos + 1 + inst.len()], &inst[..], "[INST] follows the BOS");
    assert!(after.ends_with(&[518, 29914, 25580, 29962]), "' [/INST]'");
}

/// `emollama quantize --bundle`: the bundle writer with the LLM replaced.
fn requantize(out: &Path) -> std::process::Output {
    emollama(&["quantize", "--bundle", common::bundle_dir().to_str().unwrap(), out.to_str().unwrap(), "q8_0"])
}

#[test]
fn a_requantized_bundle_verifies_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8");
    let run = requantize(&out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let bundle = Bundle::open_verified(&out).unwrap();
    let llm = bundle.file(&emollama_bundle::Role::Llm).unwrap();
    assert_eq!((llm.precision, llm.path.as_str()), (Precision::Gguf(GgufType::Q8_0), "llm-q8_0.gguf"));
    assert!(llm.size < std::fs::metadata(common::bundle_dir().join("llm-f32.gguf")).unwrap().len());
    assert!(bundle.manifest().id.ends_with("-q8_0"));
    // Refuses to overwrite; nothing half-written is left beside it.
    let again = requantize(&out);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let rt = Pipeline::load(bundle, RuntimeConfig { threads: 2, ..RuntimeConfig::default() }).unwrap();
    let req = AnalyzeRequest { preset: Preset::Fast, mode: Mode::OfficialDemo, ..AnalyzeRequest::new(talking_face()) };
    assert!(analyze(&rt, &req).unwrap().label.is_some());
}
