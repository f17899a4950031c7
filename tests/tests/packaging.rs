//! The package's own logic that runs without a board: the Jetson build plan that
//! `scripts/package` derives from a board's files (recorded trees of real Jetsons), its
//! argument handling, `install-bundle`, `compile` without TensorRT, and the systemd unit
//! (verify clean, exposure at most 3.0). The .deb itself is built, installed into a
//! Debian 12 rootfs and purged by `scripts/test-package` (part of ./scripts/test).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bundle_dir, emollama_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn package(args: &[&str]) -> Output {
    Command::new(repo().join("scripts/package")).args(args).output().expect("scripts/package runs")
}

fn plan_of(out: &Output) -> std::collections::BTreeMap<String, String> {
    assert!(out.status.success(), "scripts/package failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

#[test]
fn the_jetson_build_follows_the_board_files() {
    let boards = repo().join("devices/tests/boards");
    // (recorded board, JetPack, profile): every one is an Orin, CUDA architecture 87.
    for (board, jetpack, profile) in [
        ("orin-nano-8gb-jp62-maxn-super", "6.2", "orin-nano-8gb-super"),
        ("orin-nano-8gb-jp61-7w", "6.1", "orin-nano-8gb"),
        ("orin-nx-16gb-jp61-maxn", "6.1", "orin-nx-16gb"),
        ("agx-orin-64gb-jp512-maxn", "5.1.2", "agx-orin-64gb"),
    ] {
        let root = boards.join(board);
        let p = plan_of(&package(&[
            "--dry-run",
            "--root",
            root.to_str().unwrap(),
            "--ort-library",
            "/opt/ort/libonnxruntime.so.1.20.0",
        ]));
        assert_eq!(p["jetson"], "1", "{board}");
        assert_eq!(p["jetpack"], jetpack, "{board}");
        assert_eq!(p["profile"], profile, "{board}");
        assert_eq!(p["cuda_arch"], "87", "{board}");
        assert_eq!(p["target"], "arm64", "{board}");
        assert_eq!(p["features"], "tensorrt,llama-cuda", "{board}");
        assert_eq!(p["onnxruntime"], "/opt/ort/libonnxruntime.so.1.20.0", "{board}");
        assert!(p["package"].ends_with(&format!("_0.1.0-1+jetpack{jetpack}_arm64.deb")), "{board}: {}", p["package"]);
    }
}

#[test]
fn a_jetson_build_needs_the_gpu_onnx_runtime_and_the_board() {
    let root = repo().join("devices/tests/boards/orin-nx-16gb-jp61-maxn");
    let out = package(&["--dry-run", "--root", root.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GPU build of ONNX Runtime for JetPack 6.1") && err.contains("--ort-library"), "{err}");
    if std::env::consts::ARCH != "aarch64" {
        let out = package(&["--root", root.to_str().unwrap(), "--ort-library", "/x/libonnxruntime.so"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("made on the Jetson itself"));
    }
}

#[test]
fn a_plain_host_gets_the_cpu_package_and_bad_options_are_refused() {
    let empty = tempfile::tempdir().unwrap();
    let p = plan_of(&package(&["--dry-run", "--root", empty.path().to_str().unwrap()]));
    assert_eq!(p["jetson"], "0");
    assert_eq!(p["features"], "none");
    let arch = if std::env::consts::ARCH == "aarch64" { "arm64" } else { "amd64" };
    assert!(p["package"].ends_with(&format!("emollama_0.1.0-1_{arch}.deb")), "{}", p["package"]);
    let p = plan_of(&package(&["--dry-run", "--target", "arm64", "--root", empty.path().to_str().unwrap()]));
    assert!(p["onnxruntime"].ends_with("1.31.1-aarch64/libonnxruntime.so.1.31.1"), "{}", p["onnxruntime"]);
    for bad in [&["--target", "riscv64"][..], &["--frobnicate"], &["--target"]] {
        let out = package(bad);
        assert_ne!(out.status.code(), Some(0), "{bad:?} accepted");
        assert!(!out.stderr.is_empty(), "{bad:?}: no message");
    }
}

#[test]
fn the_unit_verifies_clean_and_is_hardened() {
    let unit = repo().join("packaging/debian/emollama.service");
    // `verify` exits 0 on a misspelt key: any output is a failure. The binary is not
    // installed here, so that one complaint is expected and nothing else.
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let rest: Vec<&str> = text.lines().filter(|l| !l.contains("Command /usr/bin/emollama is not executable")).collect();
    assert!(rest.is_empty(), "systemd-analyze verify: {rest:?}");
    // --threshold is on the 0..100 scale: 30 = an exposure of 3.0.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=30", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("");
    assert!(out.status.success(), "exposure above 3.0: {score}");
    // Both GPU families: Orin's nvgpu nodes and the nvidia* nodes of Thor and dGPUs.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for node in [
        "/dev/nvmap",
        "/dev/nvgpu/igpu0/as",
        "/dev/nvgpu/igpu0/channel",
        "/dev/nvgpu/igpu0/tsg",
        "/dev/nvidia0",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
    ] {
        assert!(unit_text.contains(&format!("DeviceAllow={node} rw")), "{node} missing from DeviceAllow");
    }
    eprintln!("{score}");
}

fn emollama(args: &[&str]) -> Output {
    Command::new(emollama_bin()).args(args).output().unwrap()
}

#[test]
fn install_bundle_verifies_while_it_copies_and_replaces_only_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("share/emollama/bundle");
    let out = emollama(&["install-bundle", bundle_dir().to_str().unwrap(), "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("every sha256 checked"));
    let manifest = std::fs::read(to.join("manifest.json")).unwrap();
    assert_eq!(manifest, std::fs::read(bundle_dir().join("manifest.json")).unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(to.join("manifest.json")).unwrap().permissions().mode() & 0o777, 0o644);

    // A tampered source: refused, the installed bundle untouched, no staging left.
    let bad = dir.path().join("bad");
    common::copy_dir(&bundle_dir(), &bad);
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let audio = m["files"].as_array().unwrap().iter().find(|f| f["role"] == "audio_engine").unwrap();
    let victim = bad.join(audio["path"].as_str().unwrap());
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();
    let out = emollama(&["install-bundle", bad.to_str().unwrap(), "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fails its checksum") && err.contains(audio["path"].as_str().unwrap()), "{err}");
    assert!(emollama(&["info", "--bundle", to.to_str().unwrap()]).status.success(), "the installed bundle was damaged");
    let left: Vec<_> = std::fs::read_dir(to.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("bundle")], "staging left behind");
}

/// N7: install-bundle touches only what it owns. A destination that is not a bundle (a
/// folder of someone's files, a file) is refused unless --force; a bundle whose file is a
/// symlink, a FIFO, or larger than its manifest says is refused at once, saying so, and
/// without printing a foreign file's size or hash; every failure leaves the parent folder
/// as it was.
#[test]
fn install_bundle_touches_only_what_it_owns() {
    let dir = tempfile::tempdir().unwrap();
    let src = bundle_dir();
    let install = |from: &Path, to: &Path, force: bool| {
        let mut args = vec!["install-bundle", from.to_str().unwrap(), "--to", to.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        emollama(&args)
    };
    let listing = |p: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(p).unwrap().flatten().map(|e| e.file_name()).collect();
        v.sort();
        v
    };
    // Someone's folder: refused, kept; with --force, replaced.
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("keep.txt"), b"mine").unwrap();
    let before = listing(dir.path());
    let out = install(&src, &folder, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(folder.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(listing(dir.path()), before, "nothing left beside it");
    assert!(install(&src, &folder, true).status.success());
    assert!(emollama(&["info", "--bundle", folder.to_str().unwrap()]).status.success());
    assert_eq!(listing(dir.path()), before, "no .old or .partial left");
    // A file: refused; with --force, replaced.
    let file = dir.path().join("notes");
    std::fs::write(&file, b"x").unwrap();
    assert_eq!(install(&src, &file, false).status.code(), Some(1));
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert!(install(&src, &file, true).status.success() && file.join("manifest.json").is_file());
    // An empty folder, and a bundle, are replaced without --force.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(install(&src, &empty, false).status.success());
    assert!(install(&src, &empty, false).status.success(), "a bundle is replaced by a bundle");
    // Bundles whose audio engine is not a regular file of its manifest's size.
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("manifest.json")).unwrap()).unwrap();
    let audio = m["files"].as_array().unwrap().iter().find(|f| f["role"] == "audio_engine").unwrap();
    let audio = audio["path"].as_str().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"only root may read this").unwrap();
    let secret_sha = emollama_bundle::sha256_file(&secret).unwrap();
    let bad = |name: &str, make: &dyn Fn(&Path)| {
        let b = dir.path().join(name);
        common::copy_dir(&src, &b);
        let victim = b.join(audio);
        std::fs::remove_file(&victim).unwrap();
        make(&victim);
        b
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (bad("zero", &|v| std::os::unix::fs::symlink("/dev/zero", v).unwrap()), "symbolic link"),
        (bad("secret-link", &|v| std::os::unix::fs::symlink(&secret, v).unwrap()), "symbolic link"),
        (bad("fifo", &|v| assert!(Command::new("mkfifo").arg(v).status().unwrap().success())), "FIFO"),
        (bad("sparse", &|v| std::fs::File::create(v).unwrap().set_len(10 << 30).unwrap()), "more bytes"),
    ];
    let target = dir.path().join("target");
    for (from, says) in &cases {
        let before = listing(dir.path());
        let started = std::time::Instant::now();
        let out = install(from, &target, false);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{from:?}: {err}");
        assert!(err.contains(says), "{from:?}: {err}");
        assert!(!err.contains(&secret_sha) && !err.contains("23 bytes"), "a foreign file's hash or size: {err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{from:?}: {:?}", started.elapsed());
        assert_eq!(listing(dir.path()), before, "{from:?}: something was left behind");
    }
}

#[test]
fn compile_without_tensorrt_says_so_and_lists_the_engines() {
    let bundle = bundle_dir();
    let b = bundle.to_str().unwrap();
    // Whether TensorRT can start is a fact of this machine: doctor's, asked first.
    let doctor: serde_json::Value = serde_json::from_slice(&emollama(&["doctor", "--json"]).stdout).unwrap();
    let tensorrt = doctor["onnxruntime"]["providers_available"].as_array().unwrap().iter().any(|p| p == "tensorrt");
    if !tensorrt {
        let out = emollama(&["compile", "--bundle", b, "--profile", "x86-cpu"]);
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("TensorRT is not available") && err.contains("tensorrt"), "{err}");
        let out = emollama(&["compile", "--bundle", b, "--profile", "x86-cpu", "--if-available"]);
        assert!(out.status.success());
    }
    // The list names every engine (the encoders, the projector-only engines, then the face
    // detector's nets) with its cache folder, keyed on the device and versions; P-Net's
    // TensorRT profiles are the fixed pyramid's level shapes, the same for every frame.
    let out = emollama(&["compile", "--bundle", b, "--profile", "orin-nano-8gb", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let roles: Vec<&str> = plan["engines"].as_array().unwrap().iter().map(|e| e["role"].as_str().unwrap()).collect();
    let all: Vec<&str> = emollama_bundle::Role::ROW_ENGINES
        .iter()
        .chain(&emollama_bundle::Role::FACE_NETS)
        .map(|r| r.as_str())
        .collect();
    assert_eq!(roles, all);
    let pnet = plan["engines"].as_array().unwrap().iter().find(|e| e["role"] == "face_pnet").unwrap();
    let shapes: Vec<&str> = pnet["shapes"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let want = emollama_media::faces::FaceSearch::default().pyramid().all_shapes().unwrap();
    assert_eq!(shapes.len(), want.len(), "{shapes:?}");
    assert!(shapes.contains(&"150x267") && shapes.contains(&"267x150"), "16:9 and 9:16 first levels: {shapes:?}");
    assert_eq!(roles[..4], ["global_engine", "local_engine", "temporal_engine", "audio_engine"]);
    assert_eq!(plan["precision"], "fp16", "the planner's precision for an Orin Nano");
    let key = plan["device_key"].as_str().unwrap();
    assert!(key.starts_with("orin-nano-8gb-L4T") && key.contains("-trt"), "{key}");
    for e in plan["engines"].as_array().unwrap() {
        assert_eq!(e["current"], false);
        assert!(e["cache_dir"].as_str().unwrap().contains("/engines/tensorrt/orin-nano-8gb-"), "{e}");
    }
}

/// Microsoft's ONNX Runtime builds keep a device id and a telemetry cache in
/// `~/.cache/Microsoft` and upload events, on Linux too; emollama opts out before the
/// library initialises, so a run leaves nothing in the (service's) home.
#[test]
fn a_run_leaves_no_onnx_runtime_telemetry_behind() {
    let home = tempfile::tempdir().unwrap();
    let ort = common::cache_dir().join("onnxruntime/1.31.1/libonnxruntime.so.1.31.1");
    let clip = common::media_dir().join("talking-face.mp4");
    let out = Command::new(emollama_bin())
        .env("HOME", home.path())
        .env_remove("XDG_CACHE_HOME")
        .env_remove("ORT_DISABLE_TELEMETRY")
        .args(["--ort-library", ort.to_str().unwrap(), "analyze", clip.to_str().unwrap()])
        .args(["--bundle", bundle_dir().to_str().unwrap(), "--mode", "official-demo", "--max-new-tokens", "2"])
        .args(["--transcript", "hello", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let left: Vec<_> = walk(home.path());
    assert!(left.is_empty(), "left in the home folder: {left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}
