//! `emollama profiles`, `doctor`, `plan` and `bench` through the real binary, and the
//! start-up plan refusing a bundle that cannot fit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn emollama(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(common::emollama_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn profiles_and_doctor() {
    let all = json(&emollama(&["profiles", "--json"], &[]));
    let names: Vec<&str> = all.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in [
        "orin-nano-8gb",
        "orin-nano-8gb-super",
        "orin-nx-8gb",
        "orin-nx-16gb",
        "agx-orin-32gb",
        "agx-orin-64gb",
        "agx-thor",
        "x86-cpu",
        "x86-cuda",
    ] {
        assert!(names.contains(&want), "{want}");
    }
    let here = json(&emollama(&["doctor", "--json"], &[]));
    println!(
        "doctor: profile {} ONNX Runtime {} providers {}",
        here["profile"], here["onnxruntime"]["version"], here["onnxruntime"]["providers_available"]
    );
    if std::env::consts::ARCH == "x86_64" && !Path::new("/dev/nvidia0").exists() {
        assert_eq!(here["profile"], "x86-cpu");
    }
    // Facts of this machine, not of the one the test was written on: the version is the
    // one the loaded library's file name carries; llama.cpp computes on CUDA exactly when
    // the build has CUDA and a GPU device answered.
    let library = here["onnxruntime"]["library"].as_str().unwrap();
    let version = here["onnxruntime"]["version"].as_str().unwrap();
    assert!(
        std::fs::canonicalize(library).unwrap().to_string_lossy().ends_with(&format!(".so.{version}")),
        "{library} is not version {version}"
    );
    assert!(here["onnxruntime"]["providers_available"].as_array().unwrap().iter().any(|p| p == "cpu"));
    let devices = here["llama_cpp_devices"].as_array().unwrap();
    assert!(devices.iter().any(|d| d["kind"] == "cpu"), "{devices:?}");
    let gpu = devices.iter().any(|d| d["kind"] == "gpu" || d["kind"] == "igpu");
    assert!(!gpu || here["llama_cpp_cuda_compiled"] == true, "a GPU device without a GPU backend: {devices:?}");
    assert_eq!(here["llama_cpp_backend"], if gpu { "cuda" } else { "cpu" });
    if !Path::new("/dev/nvidiactl").exists() {
        assert!(!gpu, "no NVIDIA device node, yet llama.cpp lists a GPU: {devices:?}");
    }
    let board = repo().join("devices/tests/boards/orin-nano-8gb-jp61-7w");
    let nano = json(&emollama(
        &[
            "doctor",
            "--json",
            "--root",
            board.to_str().unwrap(),
            "--bundle",
            repo().join("devices/manifests/emotion-llama-7b").to_str().unwrap(),
        ],
        &[],
    ));
    assert_eq!(nano["profile"], "orin-nano-8gb");
    assert_eq!(nano["host"]["jetpack"], "6.1");
    let problems: Vec<String> =
        nano["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    assert!(problems.iter().any(|p| p.contains("power mode is 7W")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("llama.cpp runs on the CPU")), "{problems:?}");
    assert_eq!(nano["plan"]["outcome"], "fits_in_turn");
}

#[test]
fn plan_every_profile_for_the_synthetic_and_the_real_bundle() {
    let synthetic = json(&emollama(&["plan", "--json", "--bundle", common::bundle_dir().to_str().unwrap()], &[]));
    assert_eq!(synthetic.as_array().unwrap().len(), 9);
    assert!(synthetic.as_array().unwrap().iter().all(|p| p["outcome"] == "fits_resident"));
    let real = json(&emollama(
        &["plan", "--json", "--bundle", repo().join("devices/manifests/emotion-llama-7b").to_str().unwrap()],
        &[],
    ));
    let outcome = |name: &str| {
        real.as_array().unwrap().iter().find(|p| p["profile"] == name).unwrap()["outcome"].as_str().unwrap().to_string()
    };
    assert_eq!(outcome("orin-nx-16gb"), "fits_resident");
    assert_eq!(outcome("orin-nano-8gb"), "fits_in_turn");
    for p in real.as_array().unwrap() {
        for key in ["llm_weights", "kv_cache", "compute_buffers", "encoders", "runtime_contexts", "os_reserve"] {
            assert!(p["parts"].get(key).is_some(), "{key}");
        }
    }
}

/// `emollama plan --json | head`: the reader is gone before the first write; the command
/// ends as Unix tools do (SIGPIPE), without a panic's message and backtrace.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let script = "import os, subprocess, sys\nr, w = os.pipe()\nos.close(r)\n\
                  p = subprocess.run(sys.argv[1:], stdout=w, stderr=subprocess.PIPE)\n\
                  print(p.returncode, p.stderr.decode())";
    let bin = common::emollama_bin();
    let out = Command::new(common::python())
        .args(["-c", script, bin.to_str().unwrap(), "plan", "--json", "--bundle"])
        .arg(common::bundle_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("-13"), "ended by SIGPIPE: {text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn startup_plan_refuses_a_bundle_that_cannot_fit() {
    let config = tempfile::tempdir().unwrap();
    let dir = config.path().join("emollama/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = std::fs::read_to_string(repo().join("devices/profiles/x86-cpu.toml"))
        .unwrap()
        .replace("name = \"x86-cpu\"", "name = \"tiny-board\"")
        .replace("memory_total_gb = 16.0", "memory_total_gb = 0.5")
        .replace("usable_headless_gb = 14.0", "usable_headless_gb = 0.01");
    std::fs::write(dir.join("tiny.toml"), tiny).unwrap();
    let media = common::media_dir().join("talking-face.mp4");
    let out = emollama(
        &[
            "analyze",
            media.to_str().unwrap(),
            "--bundle",
            common::bundle_dir().to_str().unwrap(),
            "--profile",
            "tiny-board",
        ],
        &[("XDG_CONFIG_HOME", config.path())],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(err.contains("does not fit") && err.contains("biggest parts") && err.contains("fix:"), "{err}");
    assert!(err.contains("compute buffers") && err.contains("face detectors"), "{err}");
}

/// `emollama bench` on the synthetic bundle and the x86-cpu profile, writing into `out`.
fn bench(out: &Path, media: &Path, extra: &[&str]) -> Output {
    let bundle = common::bundle_dir();
    let mut args =
        vec!["bench", "--profile", "x86-cpu", "--bundle", bundle.to_str().unwrap(), "--media", media.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    emollama(&args, &[])
}

#[test]
fn bench_reports_every_field_and_writes_markdown_json_svg() {
    let out_dir = tempfile::tempdir().unwrap();
    let media = common::media_dir().join("test-pattern.mp4");
    let v = json(&bench(out_dir.path(), &media, &["--json", "--runs", "3", "--warmup", "1", "--max-new-tokens", "16"]));
    for key in [
        "profile",
        "device",
        "power_mode",
        "emollama_version",
        "git_revision",
        "onnxruntime",
        "llama_cpp_system",
        "bundle",
        "providers",
        "cold_start_ms",
        "stages_ms",
        "time_to_first_token_ms",
        "prefill_tok_s",
        "decode_tok_s",
        "peak_rss_mb",
        "bandwidth_gb_s",
        "decode_ceiling_tok_s",
        "decode_pct_of_ceiling",
        "raw_llama_cpp",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    let ratio = v["raw_llama_cpp"]["ratio"].as_f64().unwrap();
    assert!(ratio > 0.0 && v["cold_start_ms"].as_f64().unwrap() > 0.0 && v["decode_tok_s"].as_f64().unwrap() > 0.0);
    for stage in ["total", "prefill", "global_encoder"] {
        let p = &v["stages_ms"][stage];
        assert!(p["p50"].as_f64().unwrap() <= p["p99"].as_f64().unwrap(), "{stage}");
    }
    println!(
        "bench: cold start {:.0} ms, ttft p50 {:.0} ms, total p50 {:.0} ms, prefill {:.0} tok/s, decode {:.0} tok/s ({:.1} % of the x86-cpu ceiling), wrapper/raw llama.cpp {:.3}, peak RSS {:.0} MB",
        v["cold_start_ms"].as_f64().unwrap(), v["time_to_first_token_ms"]["p50"].as_f64().unwrap(), v["stages_ms"]["total"]["p50"].as_f64().unwrap(),
        v["prefill_tok_s"].as_f64().unwrap(), v["decode_tok_s"].as_f64().unwrap(), v["decode_pct_of_ceiling"].as_f64().unwrap(), ratio, v["peak_rss_mb"].as_f64().unwrap()
    );
    for f in ["bench.md", "bench.json", "bench.svg"] {
        assert!(out_dir.path().join(f).is_file(), "{f}");
    }
    assert!(std::fs::read_to_string(out_dir.path().join("bench.svg")).unwrap().starts_with("<svg"));
    assert!(std::fs::read_to_string(out_dir.path().join("bench.md")).unwrap().contains("| stage | p50 ms"));
    // --compare against the earlier JSON prints deltas.
    let old = out_dir.path().join("old.json");
    std::fs::copy(out_dir.path().join("bench.json"), &old).unwrap();
    let again = bench(
        out_dir.path(),
        &media,
        &["--runs", "1", "--warmup", "0", "--max-new-tokens", "4", "--compare", old.to_str().unwrap()],
    );
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("decode tok/s"));
}
