//! The GPU build (`scripts/build-gpu`: `--features tensorrt,llama-cuda-no-vmm`, CUDA 13)
//! with the GPU build of ONNX Runtime (the onnxruntime-gpu wheel's libraries), on this
//! machine, whatever it has: every provider and device that cannot start is named with
//! its reason and the work runs on the next one; the answers agree with the CPU build's.
//! On a machine without a GPU that is: doctor names the missing driver and libraries,
//! `--provider auto` runs on the CPU and says so in the JSON result and in `/readyz`,
//! `--provider cuda`/`tensorrt` fail at once with one line. These tests need the GPU
//! build in the cache (`./scripts/build-gpu`, or `./scripts/test --gpu-build`); without
//! it they say so and check nothing.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::server::{http, start_binary, wait_ready};
use serde_json::Value;

/// The GPU build's binary, the cuBLAS folder it needs and the GPU ONNX Runtime library.
struct GpuBuild {
    bin: PathBuf,
    lib: PathBuf,
    ort: PathBuf,
}

fn gpu_build() -> Option<GpuBuild> {
    let cache = common::cache_dir();
    let build = GpuBuild {
        bin: cache.join("gpu/bin/emollama"),
        lib: cache.join("gpu/lib"),
        ort: cache.join("onnxruntime-gpu/1.31.1/libonnxruntime.so.1.31.1"),
    };
    if build.bin.is_file() && build.ort.is_file() {
        Some(build)
    } else {
        println!("no GPU build in {}: run ./scripts/build-gpu (nothing checked)", cache.display());
        None
    }
}

impl GpuBuild {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("LD_LIBRARY_PATH", &self.lib).env("ORT_DYLIB_PATH", &self.ort).stdin(Stdio::null());
        cmd
    }

    /// Runs to the end within `limit` (no hang at start), or the test fails.
    fn run(&self, args: &[&str], limit: Duration) -> Output {
        let started = Instant::now();
        let out = self.command().args(args).output().unwrap();
        assert!(started.elapsed() < limit, "{args:?} took {:?}", started.elapsed());
        out
    }
}

/// The profile a user of the GPU build on an x86 machine names: every layer on the GPU.
fn analyze_args<'a>(clip: &'a str, bundle: &'a str, provider: &'a str) -> Vec<&'a str> {
    vec!["analyze", clip, "--bundle", bundle, "--profile", "x86-cuda", "--provider", provider]
        .into_iter()
        .chain(["--mode", "official-demo", "--max-new-tokens", "8", "--json"])
        .collect()
}

/// What this machine's doctor says of the GPU build: its own facts, not assumed ones.
fn doctor(build: &GpuBuild) -> Value {
    let out = build.run(&["doctor", "--json"], Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn doctor_names_what_the_gpu_build_lacks_here() {
    let Some(build) = gpu_build() else { return };
    let d = doctor(&build);
    println!("{}", serde_json::to_string_pretty(&d).unwrap());
    let compiled: Vec<&str> =
        d["onnxruntime"]["providers_compiled"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(compiled, ["tensorrt", "cuda", "cpu"]);
    assert_eq!(d["llama_cpp_cuda_compiled"], true);
    let problems: Vec<&str> = d["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    // Every GPU provider the library lists either loads or is named with the loader's reason.
    let unusable = d["onnxruntime"]["providers_unusable"].as_object().unwrap();
    for (provider, reason) in unusable {
        let reason = reason.as_str().unwrap();
        assert!(
            reason.contains("cannot open shared object file") || reason.contains("missing"),
            "{provider}: {reason}"
        );
        assert!(problems
            .iter()
            .any(|p| p.contains(&format!("{provider} provider cannot start")) && p.contains(reason)));
    }
    let gpu = d["llama_cpp_devices"].as_array().unwrap().iter().any(|x| x["kind"] == "gpu");
    assert_eq!(d["llama_cpp_backend"], if gpu { "cuda" } else { "cpu" });
    if !gpu {
        let llama = problems.iter().find(|p| p.starts_with("llama.cpp was built with CUDA but sees no GPU"));
        let llama = llama.unwrap_or_else(|| panic!("{problems:?}"));
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            assert!(llama.contains("libcuda.so.1"), "the missing driver is named: {llama}");
        }
    }
}

/// `--provider auto` runs where it can and says where; the answer is the CPU build's.
#[test]
fn the_gpu_build_runs_where_it_can_and_agrees_with_the_cpu_build() {
    let Some(build) = gpu_build() else { return };
    let d = doctor(&build);
    let clip = common::media_dir().join("talking-face.mp4");
    let bundle = common::bundle_dir();
    let args = analyze_args(clip.to_str().unwrap(), bundle.to_str().unwrap(), "auto");
    let out = build.run(&args, Duration::from_secs(300));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gpu: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cpu_out = Command::new(common::emollama_bin()).args(&args).output().unwrap();
    assert!(cpu_out.status.success(), "{}", String::from_utf8_lossy(&cpu_out.stderr));
    let cpu: Value = serde_json::from_slice(&cpu_out.stdout).unwrap();
    println!("GPU build providers {} (CPU build {})", gpu["providers"], cpu["providers"]);
    // Where every GPU provider and device is unusable (doctor's word), all of it is on the CPU.
    let usable = d["onnxruntime"]["providers_available"].as_array().unwrap().iter().any(|p| p != "cpu");
    if !usable {
        for encoder in ["global", "local", "temporal", "audio"] {
            assert_eq!(gpu["providers"][encoder], "cpu", "{}", gpu["providers"]);
        }
    }
    assert_eq!(gpu["providers"]["llm"], d["llama_cpp_backend"]);
    if gpu["providers"]["llm"] == "cpu" {
        let notes = gpu["notes"].as_array().unwrap();
        assert!(notes.iter().any(|n| n.as_str().unwrap().starts_with("llm: no GPU, on the CPU: ")), "{notes:?}");
    }
    // Greedy tokens: the same answer as the CPU build's, on the CPU or on a GPU.
    assert_eq!(gpu["answer_tokens"], cpu["answer_tokens"]);
    assert_eq!(gpu["text"], cpu["text"]);
    if gpu["providers"]["global"] == "cpu" && gpu["providers"]["llm"] == "cpu" {
        // Same arithmetic on the same CPU: the label scores agree to rounding.
        for (label, score) in cpu["label_scores"].as_object().unwrap() {
            let other = gpu["label_scores"][label].as_f64().unwrap();
            assert!((score.as_f64().unwrap() - other).abs() < 1e-4, "{label}: {score} vs {other}");
        }
    }
}

/// A provider asked for by name that cannot start is a one-line error, at once.
#[test]
fn a_gpu_provider_that_cannot_start_is_a_one_line_error() {
    let Some(build) = gpu_build() else { return };
    let d = doctor(&build);
    let clip = common::media_dir().join("talking-face.mp4");
    let bundle = common::bundle_dir();
    for (provider, ort_name) in [("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider")] {
        if d["onnxruntime"]["providers_available"].as_array().unwrap().iter().any(|p| p == provider) {
            println!("{provider} loads here: not a failure to check");
            continue;
        }
        let args = analyze_args(clip.to_str().unwrap(), bundle.to_str().unwrap(), provider);
        let out = build.run(&args, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(1), "{provider}");
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{err}"));
        assert!(line.contains(&format!("execution provider {ort_name} is required but unavailable")), "{line}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{err}");
        println!("--provider {provider}: {line}");
    }
}

/// The service on the GPU build: ready, and `/readyz` says where everything runs and why.
#[test]
fn readyz_says_where_the_gpu_build_runs() {
    let Some(build) = gpu_build() else { return };
    let d = doctor(&build);
    let lib = build.lib.to_string_lossy().into_owned();
    let ort = build.ort.to_string_lossy().into_owned();
    let env = [("LD_LIBRARY_PATH", lib.as_str()), ("ORT_DYLIB_PATH", ort.as_str())];
    let server = start_binary(&build.bin, "x86-cuda", &[], &env, Stdio::inherit());
    wait_ready(server.port);
    let r = http(server.port, "GET", "/readyz", &[], b"");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    println!("{}", serde_json::to_string_pretty(&v["ready"]).unwrap());
    let providers = &v["ready"]["providers"];
    assert_eq!(providers["llm"], d["llama_cpp_backend"]);
    let fallbacks: Vec<&str> =
        v["ready"]["fallbacks"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    for encoder in ["global", "local", "temporal", "audio"] {
        if providers[encoder] != "tensorrt" {
            let role = format!("{encoder}_engine: tensorrt unavailable: ");
            assert!(fallbacks.iter().any(|f| f.starts_with(&role)), "{role} in {fallbacks:?}");
        }
    }
    if providers["llm"] == "cpu" {
        assert!(fallbacks.iter().any(|f| f.starts_with("llm: no GPU, on the CPU: ")), "{fallbacks:?}");
    }
}
