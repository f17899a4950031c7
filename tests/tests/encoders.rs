//! Encoder engines on the real ONNX Runtime against the PyTorch goldens, and their
//! errors on bad input. The parity suite runs once per execution provider (candle's
//! `test_device!` shape): CPU always; CUDA and TensorRT when built with their features
//! (and then on a GPU machine), with fp16-sized tolerances stated below. The goldens
//! and the fp32 tolerance come from the exporter's index, never copied here.

mod common;

use emollama_bundle::{Bundle, Role};
use emollama_engines::onnx::{init_runtime, EncoderEngine, EngineOptions, Provider, ProviderPolicy};
use emollama_engines::EngineError;
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// The tolerance of a provider: the exporter's fp32 one on CPU and CUDA (fp32 kernels);
/// TensorRT builds fp16 engines where the profile asks, so it is held to 2e-2.
fn tolerance(provider: Provider) -> f32 {
    let fp32 = common::goldens()["tolerance"]["engines"].as_f64().expect("goldens tolerance.engines") as f32;
    match provider {
        Provider::Cpu | Provider::Cuda => fp32,
        Provider::TensorRt => 2e-2,
    }
}

/// One parity test per provider, each running the same goldens.
macro_rules! parity_per_provider {
    ($($name:ident: $provider:expr $(, feature = $feature:literal)?;)+) => {$(
        #[test]
        $(#[cfg(feature = $feature)])?
        fn $name() {
            every_engine_matches_pytorch_at_both_golden_sizes($provider);
        }
    )+};
}

parity_per_provider! {
    parity_cpu: Provider::Cpu;
    parity_cuda: Provider::Cuda, feature = "cuda";
    parity_tensorrt: Provider::TensorRt, feature = "tensorrt";
}

fn load(bundle: &Bundle, role: &Role, policy: ProviderPolicy) -> Result<EncoderEngine, EngineError> {
    let rt = init_runtime(None)?;
    let entry = bundle.file(role).unwrap();
    let opts = EngineOptions { intra_threads: 2, policy, model_sha256: entry.sha256.clone() };
    EncoderEngine::load(rt, role.as_str(), &bundle.path_of(entry), entry.inputs.clone(), entry.outputs.clone(), &opts)
}

fn engine_name(role: &Role) -> &'static str {
    match role {
        Role::GlobalEngine => "global",
        Role::LocalEngine => "local",
        Role::TemporalEngine => "temporal",
        Role::AudioEngine => "audio",
        _ => unreachable!(),
    }
}

fn every_engine_matches_pytorch_at_both_golden_sizes(provider: Provider) {
    let bundle = Bundle::open_verified(&common::bundle_dir()).unwrap();
    let goldens = common::goldens();
    let policy = ProviderPolicy { order: vec![provider], required: Some(provider), ..ProviderPolicy::default() };
    let tol = tolerance(provider);
    for role in &Role::ENGINES {
        let engine = load(&bundle, role, policy.clone()).unwrap();
        assert_eq!(engine.provider(), provider);
        let cases = goldens["engines"][engine_name(role)].as_array().unwrap();
        assert_eq!(cases.len(), 2, "two input sizes per engine");
        for (i, case) in cases.iter().enumerate() {
            let inputs: Vec<(String, ArrayD<f32>)> =
                case["inputs"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), common::tensor(v))).collect();
            let feeds: Vec<(&str, ArrayViewD<'_, f32>)> = inputs.iter().map(|(k, a)| (k.as_str(), a.view())).collect();
            let mut outputs = engine.run(&feeds).unwrap();
            for (name, want) in case["outputs"].as_object().unwrap() {
                let got = outputs.take(name).unwrap();
                let want = common::tensor(want);
                assert_eq!(got.shape(), want.shape(), "{role} case {i} {name}");
                let diff = common::max_abs_diff(got.as_slice().unwrap(), want.as_slice().unwrap());
                println!("{provider} {role} case {i} {name} {:?}: max |ort - torch| = {diff:.3e}", got.shape());
                assert!(diff <= tol, "{provider} {role} case {i} {name}: {diff} > {tol}");
            }
        }
    }
}

#[test]
fn wrong_input_shape_is_named_and_the_engine_keeps_working() {
    let bundle = Bundle::open(&common::bundle_dir()).unwrap();
    let engine = load(&bundle, &Role::GlobalEngine, ProviderPolicy::cpu_only()).unwrap();
    let wrong = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 224, 224]));
    match engine.run(&[("pixel_values", wrong.view())]) {
        Err(EngineError::InputShape { engine, input, expected, actual }) => {
            assert_eq!(engine, "global_engine");
            assert_eq!(input, "pixel_values");
            assert_eq!(expected, "[batch, 3, 448, 448]");
            assert_eq!(actual, vec![1, 3, 224, 224]);
        }
        other => panic!("{other:?}"),
    }
    let wrong_name = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 448, 448]));
    assert!(matches!(engine.run(&[("image", wrong_name.view())]), Err(EngineError::InputNames { .. })));
    let empty_batch = ArrayD::<f32>::zeros(IxDyn(&[0, 3, 448, 448]));
    assert!(matches!(engine.run(&[("pixel_values", empty_batch.view())]), Err(EngineError::InputShape { .. })));
    // Still serving after the errors.
    engine.warm_up(&|_| 1).unwrap();
}

#[test]
fn missing_and_corrupt_onnx_files_are_specific_errors() {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&common::bundle_dir(), tmp.path());
    let bundle = Bundle::open(tmp.path()).unwrap();

    std::fs::remove_file(tmp.path().join("local.onnx")).unwrap();
    let missing = load(&bundle, &Role::LocalEngine, ProviderPolicy::cpu_only());
    assert!(matches!(missing, Err(EngineError::ModelFileMissing { .. })), "{missing:?}");

    let path = tmp.path().join("audio.onnx");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let truncated = load(&bundle, &Role::AudioEngine, ProviderPolicy::cpu_only());
    assert!(matches!(truncated, Err(EngineError::SessionCreate { .. })), "{truncated:?}");

    std::fs::write(tmp.path().join("temporal.onnx"), b"").unwrap();
    let empty = load(&bundle, &Role::TemporalEngine, ProviderPolicy::cpu_only());
    assert!(matches!(empty, Err(EngineError::SessionCreate { .. })), "{empty:?}");
}

#[test]
fn gpu_providers_fall_back_loudly_or_fail_when_required() {
    let bundle = Bundle::open(&common::bundle_dir()).unwrap();
    // TensorRT → CUDA → CPU: runs on the first that starts here and says why each one
    // before it did not (on a machine without a GPU, or a CPU-only build: two reasons).
    let policy = ProviderPolicy::all();
    let engine = load(&bundle, &Role::AudioEngine, policy.clone()).unwrap();
    let chosen = policy.order.iter().position(|p| *p == engine.provider()).unwrap();
    assert_eq!(engine.fallbacks().len(), chosen, "{:?}", engine.fallbacks());
    for (skipped, reason) in policy.order.iter().zip(engine.fallbacks()) {
        assert!(reason.starts_with(&format!("{skipped} unavailable: ")), "{reason}");
    }
    // Requiring TensorRT where it cannot start turns the fallback into an error naming it.
    if engine.provider() != Provider::TensorRt {
        let policy = ProviderPolicy { required: Some(Provider::TensorRt), ..ProviderPolicy::all() };
        match load(&bundle, &Role::AudioEngine, policy) {
            Err(EngineError::ProviderUnavailable { provider, .. }) => assert_eq!(provider, "TensorrtExecutionProvider"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_cancelled_token_stops_an_encoder_run_before_and_during_it() {
    let bundle = Bundle::open(&common::bundle_dir()).unwrap();
    let engine = load(&bundle, &Role::AudioEngine, ProviderPolicy::cpu_only()).unwrap();
    let wave = ArrayD::<f32>::from_shape_fn(IxDyn(&[1, 16000 * 60]), |i| ((i[1] as f32) * 0.01).sin() * 0.3);
    let feeds = [("waveform", wave.view())];
    // Already cancelled: the run does not start.
    let token = emollama_engines::CancelToken::new();
    token.cancel();
    assert!(matches!(engine.run_cancellable(&feeds, Some(&token)), Err(EngineError::Cancelled)));
    // Cancelled from another thread while ONNX Runtime runs: terminated, not finished.
    let started = std::time::Instant::now();
    engine.run(&feeds).unwrap();
    let full = started.elapsed();
    let token = emollama_engines::CancelToken::new();
    let canceller = token.clone();
    let wait = full / 10;
    let t = std::thread::spawn(move || {
        std::thread::sleep(wait);
        canceller.cancel();
    });
    let started = std::time::Instant::now();
    let result = engine.run_cancellable(&feeds, Some(&token));
    let cancelled_after = started.elapsed();
    t.join().unwrap();
    println!("60 s of audio: full run {full:?}, cancelled after {cancelled_after:?}");
    // The run started long before the cancel (a tenth of a full run), so only a
    // terminated run returns Cancelled; the times are printed, not asserted (shared CPU).
    assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
    // The engine serves the next run.
    engine.warm_up(&|_| 16000).unwrap();
}
