//! Speech recognition: the Rust log-mel front end against transformers'
//! `WhisperFeatureExtractor`, and greedy decoding on the bundle's Whisper engines against
//! transformers' `generate`, with the tiny exact-architecture test model
//! (`emollama_export.whisper synthetic`: seeded random weights, the real multilingual
//! tokenizer).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::analyze;
use emollama_bundle::Bundle;
use emollama_devices::AsrPlacement;
use emollama_engines::onnx::{init_runtime, EngineOptions, Provider, ProviderPolicy};
use emollama_engines::CancelToken;
use emollama_runtime::asr::{AsrTask, Transcriber};
use emollama_runtime::request::AsrRequest;
use emollama_runtime::{AnalyzeOptions, AnalyzeRequest, Pipeline, RuntimeConfig, Stage, TranscriptReport};
use serde_json::Value;

fn asr_goldens() -> PathBuf {
    common::test_data().join("asr-goldens")
}

fn index() -> Value {
    serde_json::from_str(&std::fs::read_to_string(asr_goldens().join("index.json")).unwrap()).unwrap()
}

fn transcriber() -> Transcriber {
    transcriber_of("bundle-asr")
}

fn transcriber_of(bundle: &str) -> Transcriber {
    transcriber_placed(bundle, AsrPlacement::Resident, ProviderPolicy::cpu_only())
}

fn transcriber_placed(bundle: &str, placement: AsrPlacement, policy: ProviderPolicy) -> Transcriber {
    let bundle = Bundle::open(&common::test_data().join(bundle)).unwrap();
    bundle.verify_files().unwrap();
    let rt = init_runtime(None).unwrap();
    let opts = EngineOptions { intra_threads: 1, policy, model_sha256: String::new() };
    Transcriber::load(&bundle, rt, &opts, placement).unwrap().expect("the bundle has speech recognition")
}

/// Within this of `WhisperFeatureExtractor`'s numpy path: the FFT libraries differ in
/// the last bits of an f64, which rounding to f32 (as numpy's complex64) almost always
/// hides; log10 and the scaling are the same operations.
const LOG_MEL_TOLERANCE: f32 = 1e-5;

#[test]
fn log_mel_equals_whispers_feature_extractor() {
    let t = transcriber();
    let mut worst = 0f32;
    for case in index()["cases"].as_array().unwrap() {
        let wave = common::tensor_in(&asr_goldens(), &case["waveform"]);
        let want = common::tensor_in(&asr_goldens(), &case["log_mel"]);
        let got = t.features(wave.as_slice().unwrap());
        assert_eq!(got.len(), want.len(), "{}", case["name"]);
        let diff = common::max_abs_diff(&got, want.as_slice().unwrap());
        println!("{}: {} samples, max |rust - transformers| = {diff:.3e}", case["name"], wave.len());
        worst = worst.max(diff);
    }
    assert!(worst <= LOG_MEL_TOLERANCE, "log-mel differs by {worst}");
}

#[test]
fn greedy_decoding_equals_transformers_generate() {
    let t = transcriber();
    let cancel = CancelToken::new();
    for case in index()["cases"].as_array().unwrap() {
        let mel = common::tensor_in(&asr_goldens(), &case["log_mel"]);
        for (key, task, language) in [
            ("translate-en", AsrTask::Translate, Some("en")),
            ("transcribe-en", AsrTask::Transcribe, Some("en")),
            ("transcribe-detect", AsrTask::Transcribe, None),
        ] {
            let want: Vec<u32> = serde_json::from_value(case["generate"][key].clone()).unwrap();
            let d = t.decode(mel.as_slice().unwrap(), task, language, &cancel).unwrap();
            assert_eq!(d.ids, want, "{} {key}", case["name"]);
            assert_eq!(t.info().languages[&d.language], want[1], "{} {key}: the language token", case["name"]);
        }
    }
    // A model that says the end token (its row pointed at the decoder's state): decoding
    // stops there, as `generate` does, and the text leaves it out.
    let ending = transcriber_of("bundle-asr-ending");
    for case in index()["cases"].as_array().unwrap() {
        let mel = common::tensor_in(&asr_goldens(), &case["log_mel"]);
        let want: Vec<u32> = serde_json::from_value(case["generate"]["translate-en-ending"].clone()).unwrap();
        let d = ending.decode(mel.as_slice().unwrap(), AsrTask::Translate, Some("en"), &cancel).unwrap();
        assert_eq!(d.ids, want, "{} ending", case["name"]);
        assert_eq!(d.ids.last(), Some(&ending.info().end), "{}", case["name"]);
    }
    let wave = common::tensor_in(&asr_goldens(), &index()["cases"][0]["waveform"]);
    let r = ending.transcribe(wave.as_slice().unwrap(), AsrTask::Translate, Some("en"), &cancel).unwrap();
    assert!(r.ids.len() < 10 && !r.text.is_empty() && !r.text.contains("<|"), "{r:?}");
    // The text: the ids after the prefix, without the end and timestamp tokens, decoded.
    let wave = common::tensor_in(&asr_goldens(), &index()["cases"][0]["waveform"]);
    let r = t.transcribe(wave.as_slice().unwrap(), AsrTask::Translate, Some("en"), &cancel).unwrap();
    assert_eq!((r.language.as_str(), r.task, r.ids.len()), ("en", AsrTask::Translate, 448));
    assert!(!r.text.is_empty() && !r.text.contains("<|"), "{:?}", r.text);
    println!("tones-3s: {} ids, {:.0} ms, text {:?}…", r.ids.len(), r.ms, r.text.chars().take(60).collect::<String>());
}

fn pipeline(bundle: &str) -> Pipeline {
    let config = RuntimeConfig { threads: 2, ..RuntimeConfig::default() };
    Pipeline::load(Bundle::open(&common::test_data().join(bundle)).unwrap(), config).unwrap()
}

fn asr_pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| pipeline("bundle-asr"))
}

fn request(media: &Path) -> AnalyzeRequest {
    AnalyzeRequest {
        max_new_tokens: Some(4),
        asr: AsrRequest { language: Some("en".into()), ..AsrRequest::default() },
        ..AnalyzeRequest::new(media.to_str().unwrap())
    }
}

/// A clip of `seconds` with a tone, made with the ffmpeg CLI.
fn tone_clip(dir: &Path, seconds: f64) -> PathBuf {
    let path = dir.join(format!("tone-{seconds}s.mp4"));
    let t = seconds.to_string();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=96x96:rate=10"])
        .args(["-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000", "-t", &t, "-pix_fmt", "yuv420p"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

/// No transcript given: speech recognition fills the line, the result says so; the line
/// it builds is the line of the same text given (the same prompt tokens, the same answer:
/// the given line's layout is the spec's, checked by the prompt goldens); `none` turns it off.
#[test]
fn a_missing_transcript_is_heard_and_built_as_a_given_one() {
    let p = asr_pipeline();
    let clip = common::media_dir().join("talking-face.mp4");
    let heard = analyze(p, &request(&clip)).unwrap();
    let Some(TranscriptReport::Asr { text, language, task }) = &heard.transcript else {
        panic!("{:?}", heard.transcript)
    };
    assert_eq!((language.as_str(), *task), ("en", AsrTask::Translate));
    assert!(heard.transcript_used && heard.timings_ms[&Stage::Asr] > 0.0);
    // Where it ran: a provider's name (which one is the build's and the host's choice).
    assert!(["cpu", "cuda", "tensorrt"].contains(&heard.providers["asr"].as_str()), "{:?}", heard.providers);
    let given = analyze(p, &AnalyzeRequest { transcript: Some(text.clone()), ..request(&clip) }).unwrap();
    assert_eq!(given.transcript, Some(TranscriptReport::Request));
    assert!(!given.timings_ms.contains_key(&Stage::Asr));
    assert_eq!((given.tokens.prompt, &given.answer_tokens), (heard.tokens.prompt, &heard.answer_tokens));
    // `transcript: none`: no line, no recognition, no note.
    let opts = AnalyzeOptions { transcript: Some("none".into()), max_new_tokens: Some(4), ..AnalyzeOptions::default() };
    let off = analyze(p, &opts.into_request(clip.to_str().unwrap().into(), 500).unwrap()).unwrap();
    assert!(off.transcript.is_none() && !off.transcript_used && !off.timings_ms.contains_key(&Stage::Asr));
    assert!(off.tokens.prompt < heard.tokens.prompt);
    // Transcribe instead of translate: the task token differs, the result says which.
    let asr = AsrRequest { task: AsrTask::Transcribe, language: Some("en".into()), enabled: true };
    let r = analyze(p, &AnalyzeRequest { asr, ..request(&clip) }).unwrap();
    assert!(
        matches!(r.transcript, Some(TranscriptReport::Asr { task: AsrTask::Transcribe, .. })),
        "{:?}",
        r.transcript
    );
}

/// Each placement the plan can choose hears the same words: kept loaded, loaded for each
/// recognition (which then says how long the loading took), or on the CPU provider
/// whatever the policy asks for; a pipeline placed in turn fills the line as the resident
/// one does.
#[test]
fn every_placement_of_the_engines_hears_the_same_words() {
    let wave = common::tensor_in(&asr_goldens(), &index()["cases"][0]["waveform"]);
    let cancel = CancelToken::new();
    let hear =
        |t: &Transcriber| t.transcribe(wave.as_slice().unwrap(), AsrTask::Translate, Some("en"), &cancel).unwrap();
    let resident = hear(&transcriber());
    assert_eq!(resident.load_ms, 0.0);
    // On the CPU even when the policy requires TensorRT (what the encoders get).
    let tensorrt_only = ProviderPolicy { required: Some(Provider::TensorRt), ..ProviderPolicy::all() };
    for (placement, policy) in [(AsrPlacement::InTurn, ProviderPolicy::cpu_only()), (AsrPlacement::Cpu, tensorrt_only)]
    {
        let t = transcriber_placed("bundle-asr", placement, policy);
        assert_eq!(t.placement(), placement);
        t.warm_up().unwrap();
        let r = hear(&t);
        assert_eq!((&r.ids, &r.text), (&resident.ids, &resident.text), "{placement:?}");
        assert_eq!(r.load_ms > 0.0, placement == AsrPlacement::InTurn, "{placement:?}: loaded in {} ms", r.load_ms);
        assert_eq!(t.provider(), "cpu", "{placement:?}");
        println!("{placement:?}: {:.0} ms in all, {:.0} ms of it loading", r.ms, r.load_ms);
    }
    let config = RuntimeConfig { threads: 2, asr: AsrPlacement::InTurn, ..RuntimeConfig::default() };
    let in_turn = Pipeline::load(Bundle::open(&common::test_data().join("bundle-asr")).unwrap(), config).unwrap();
    let clip = common::media_dir().join("talking-face.mp4");
    let (a, b) = (analyze(&in_turn, &request(&clip)).unwrap(), analyze(asr_pipeline(), &request(&clip)).unwrap());
    assert!(matches!(a.transcript, Some(TranscriptReport::Asr { .. })), "{:?}", a.transcript);
    assert_eq!((&a.transcript, &a.answer_tokens), (&b.transcript, &b.answer_tokens));
}

/// No audio track, 0.2 s of audio, 40 s of audio (only the first 30 s window is heard,
/// said in a note), a bundle without the engines (a note, no error).
#[test]
fn odd_audio_and_bundles_without_asr_are_notes_not_errors() {
    let p = asr_pipeline();
    let r = analyze(p, &request(&common::media_dir().join("no-audio.mp4"))).unwrap();
    assert!(r.transcript.is_none() && r.notes.iter().any(|n| n.contains("no audio to recognise")), "{:?}", r.notes);
    let dir = tempfile::tempdir().unwrap();
    let short = analyze(p, &request(&tone_clip(dir.path(), 0.2))).unwrap();
    assert!(short.timings_ms.contains_key(&Stage::Asr), "{:?}", short.notes);
    let long = analyze(p, &request(&tone_clip(dir.path(), 40.0))).unwrap();
    assert!(long.notes.iter().any(|n| n.contains("first 30 s")), "{:?}", long.notes);
    // A recognised transcript longer than the context leaves room for is cut, said so.
    let config = RuntimeConfig { threads: 2, n_ctx: 768, ..RuntimeConfig::default() };
    let small = Pipeline::load(Bundle::open(&common::test_data().join("bundle-asr")).unwrap(), config).unwrap();
    let clip = common::media_dir().join("talking-face.mp4");
    let cut = analyze(&small, &request(&clip)).unwrap();
    assert!(cut.notes.iter().any(|n| n.contains("recognised transcript was cut")), "{:?}", cut.notes);
    assert!(cut.tokens.prompt + 4 <= 768 && cut.transcript_used, "{:?}", cut.tokens);
    drop(small);
    let plain = pipeline("bundle");
    let r = analyze(&plain, &request(&clip)).unwrap();
    assert!(r.transcript.is_none() && r.notes.iter().any(|n| n.contains("no speech recognition")), "{:?}", r.notes);
    assert!(!r.providers.contains_key("asr"));
}

/// `emollama transcribe`: the text alone or JSON; no audio and a bundle without the
/// engines are one-line errors.
#[test]
fn the_transcribe_command_prints_what_is_said() {
    let run = |media: &Path, bundle: &str, extra: &[&str]| {
        Command::new(common::emollama_bin())
            .arg("transcribe")
            .arg(media)
            .arg("--bundle")
            .arg(common::test_data().join(bundle))
            .args(extra)
            .output()
            .unwrap()
    };
    let speech = common::media_dir().join("speech.wav");
    let out = run(&speech, "bundle-asr", &["--json", "--language", "en", "--task", "transcribe"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["language"].as_str(), v["task"].as_str()), (Some("en"), Some("transcribe")), "{v}");
    assert!(v["ids"].as_array().unwrap().len() > 4 && !v["text"].as_str().unwrap().is_empty(), "{v}");
    let out = run(&speech, "bundle-asr", &["--language", "en"]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty());
    for (media, bundle, says) in [
        (common::media_dir().join("no-audio.mp4"), "bundle-asr", "has no audio stream"),
        (speech, "bundle", "has no speech recognition engines"),
    ] {
        let out = run(&media, bundle, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says) && err.lines().count() == 1, "{err}");
    }
}

/// The planner counts speech recognition (resident: its engines and decoding state).
#[test]
fn the_plan_counts_speech_recognition() {
    let profiles = emollama_devices::load_profiles(&emollama_devices::profile_dirs()).unwrap();
    let with = Bundle::open(&common::test_data().join("bundle-asr")).unwrap();
    let without = Bundle::open(&common::bundle_dir()).unwrap();
    let onnx: u64 = with.manifest().files.iter().filter(|f| f.role.as_str().starts_with("asr_")).map(|f| f.size).sum();
    // fp32 files: on a CPU 1.55 × their weights; on a Jetson at fp16 (half) plus workspace.
    for (name, at_least) in [("x86-cpu", onnx), ("orin-nano-8gb", onnx / 2)] {
        let profile = emollama_devices::find_profile(&profiles, name).unwrap();
        let (a, b) =
            (emollama_devices::plan(with.manifest(), profile), emollama_devices::plan(without.manifest(), profile));
        assert!(a.parts.asr > at_least && b.parts.asr == 0, "{name}: {} vs {onnx}", a.parts.asr);
        assert_eq!(a.resident_total - b.resident_total, a.parts.asr, "{name}");
    }
}
