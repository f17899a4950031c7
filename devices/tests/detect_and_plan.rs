//! Detection on files recorded from real boards (written from the formats'
//! documentation), and the memory planner on the real 7B bundle's manifest (with each
//! Whisper size's engines beside it).

use std::path::Path;

use emollama_bundle::Bundle;
use emollama_devices::{detect, find_profile, load_profiles, plan, AsrPlacement, Outcome, Profile};

fn boards() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boards"))
}

#[test]
fn recorded_boards_are_recognised_with_their_software_and_power_mode() {
    let profiles = load_profiles(&[]).unwrap();
    let cases = [
        ("orin-nano-8gb-jp62-maxn-super", "orin-nano-8gb-super", "36.4.3", "6.2", "MAXN_SUPER", 0),
        ("orin-nano-8gb-jp61-7w", "orin-nano-8gb", "36.4.0", "6.1", "7W", 1),
        ("orin-nx-16gb-jp61-maxn", "orin-nx-16gb", "36.4.0", "6.1", "MAXN", 0),
        ("agx-orin-64gb-jp512-maxn", "agx-orin-64gb", "35.4.1", "5.1.2", "MAXN", 0),
    ];
    for (dir, profile, l4t, jetpack, mode, problems) in cases {
        let info = detect(&boards().join(dir), &profiles);
        assert_eq!(info.profile.as_deref(), Some(profile), "{dir}: {info:?}");
        assert_eq!(info.l4t.as_deref(), Some(l4t), "{dir}");
        assert_eq!(info.jetpack.as_deref(), Some(jetpack), "{dir}");
        assert_eq!(info.power_mode.as_deref(), Some(mode), "{dir}");
        assert_eq!(info.problems.len(), problems, "{dir}: {:?}", info.problems);
        assert!(
            info.cuda.is_some() && info.tensorrt.is_some() && info.gpu_max_mhz.is_some() && info.cpu_cores == 6,
            "{dir}: {info:?}"
        );
        assert!(info.cpu_features.contains(&"asimd".to_string()));
    }
    let slow = detect(&boards().join("orin-nano-8gb-jp61-7w"), &profiles);
    assert!(slow.problems[0].contains("nvpmodel") && slow.problems[0].contains("jetson_clocks"), "{:?}", slow.problems);
}

/// `getconf NAME` as a number: the C library's sysconf, a path to the host's facts that
/// does not go through the files `detect` reads.
fn getconf(name: &str) -> u64 {
    let out = std::process::Command::new("getconf").arg(name).output().expect("getconf");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("getconf {name}: {out:?}"))
}

#[test]
fn this_machine_is_detected_as_what_it_is() {
    // Whatever runs the tests (an x86 CI host, a GPU machine, a Jetson): what detection
    // says agrees with the host's own facts.
    let profiles = load_profiles(&[]).unwrap();
    let info = detect(Path::new("/"), &profiles);
    assert_eq!(info.arch, std::env::consts::ARCH);
    assert_eq!(info.cpu_cores as u64, getconf("_NPROCESSORS_CONF"), "{info:?}");
    let mem_gb = (getconf("_PHYS_PAGES") * getconf("PAGESIZE")) as f64 / 1e9;
    let detected = info.mem_total_gb.expect("memory read");
    assert!((detected / mem_gb - 1.0).abs() < 0.01, "{detected} GB detected, {mem_gb} GB by sysconf");
    let jetson = Path::new("/etc/nv_tegra_release").exists();
    let nvidia = Path::new("/dev/nvidia0").exists() || Path::new("/proc/driver/nvidia/version").exists();
    assert_eq!(info.is_jetson(), jetson, "{info:?}");
    assert_eq!(info.nvidia_gpu, nvidia || jetson, "{info:?}");
    let profile = info.profile.as_deref();
    if jetson {
        // A board we know gets its profile; one we don't says how to pass one.
        assert!(
            profile.is_some_and(|p| !p.starts_with("x86")) || info.problems.iter().any(|p| p.contains("--profile")),
            "{info:?}"
        );
    } else {
        assert_eq!(profile, Some(if nvidia { "x86-cuda" } else { "x86-cpu" }), "{info:?}");
    }
}

#[test]
fn the_real_7b_bundle_plans_as_the_spec_says() {
    let bundle = Bundle::open(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/emotion-llama-7b"))).unwrap();
    let profiles = load_profiles(&[]).unwrap();
    for p in &profiles {
        let plan = plan(bundle.manifest(), p);
        println!("{:<20} {:?} {}", p.name, plan.outcome, plan.message);
    }
    let nx = plan(bundle.manifest(), find_profile(&profiles, "orin-nx-16gb").unwrap());
    assert_eq!(nx.outcome, Outcome::FitsResident, "{}", nx.message);
    assert!(nx.changes.is_empty());
    let nano = plan(bundle.manifest(), find_profile(&profiles, "orin-nano-8gb").unwrap());
    assert_eq!(nano.outcome, Outcome::FitsInTurn, "{}", nano.message);
    assert!(!nano.changes.is_empty(), "a smaller footprint is needed and stated: {}", nano.message);
    assert!(nano.in_turn_total <= nano.usable_bytes && nano.resident_total > nano.usable_bytes);
    for big in ["agx-orin-32gb", "agx-orin-64gb", "agx-thor"] {
        assert_eq!(
            plan(bundle.manifest(), find_profile(&profiles, big).unwrap()).outcome,
            Outcome::FitsResident,
            "{big}"
        );
    }
}

#[test]
fn a_device_too_small_is_refused_with_the_biggest_parts_named() {
    let bundle = Bundle::open(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/emotion-llama-7b"))).unwrap();
    let mut tiny = load_profiles(&[]).unwrap().into_iter().find(|p| p.name == "orin-nano-8gb").unwrap();
    tiny.usable_headless_gb = 2.0;
    let plan = plan(bundle.manifest(), &tiny);
    assert_eq!(plan.outcome, Outcome::DoesNotFit);
    assert!(plan.message.contains("LLM weights") && plan.message.contains("fix:"), "{}", plan.message);
}

#[test]
fn on_a_cpu_the_encoders_cost_what_the_full_size_export_measured() {
    // The full-size export on a 24 GB x86 host: `emollama analyze` peaked at 16.87 GB
    // resident (all four encoders, Q4_K_M LLM, n_ctx 512), and loading the fp16 EVA file
    // alone peaked at 10.7 GB. A 16 GB machine (the generic x86-cpu profile) cannot run it.
    let bundle = Bundle::open(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/emotion-llama-7b"))).unwrap();
    let mut cpu = load_profiles(&[]).unwrap().into_iter().find(|p| p.name == "x86-cpu").unwrap();
    assert_eq!(plan(bundle.manifest(), &cpu).outcome, Outcome::DoesNotFit);
    cpu.memory_total_gb = 24.0;
    cpu.usable_headless_gb = 22.0;
    let p = plan(bundle.manifest(), &cpu);
    assert_eq!(p.outcome, Outcome::FitsResident, "{}", p.message);
    let measured = 16.87e9;
    let planned = p.resident_total as f64;
    // Planned at the plan's n_ctx (2048: a larger KV cache than the measured run's 512).
    let kv_difference = p.parts.kv_cache as f64 * (1.0 - 512.0 / f64::from(p.settings.n_ctx));
    let off = (planned - kv_difference - measured) / measured;
    println!(
        "planned {:.2} GB (at n_ctx 512), measured {:.2} GB: {:+.1} %",
        (planned - kv_difference) / 1e9,
        measured / 1e9,
        off * 100.0
    );
    assert!(off.abs() < 0.15, "{off}");
    let eva = p.parts.encoders.iter().find(|(r, _)| r == "global_engine").unwrap().1 as f64;
    assert!((eva / 6.1e9 - 1.0).abs() < 0.15, "EVA resident {eva}");
    assert!((p.parts.encoder_load_peak as f64 / 10.7e9 - 1.0).abs() < 0.15, "{}", p.parts.encoder_load_peak);
}

/// The real 7B bundle with one Whisper size's engines and `asr` section beside it, as the
/// exporter wrote them for random weights of that size's real dimensions
/// (`devices/manifests/whisper/`).
fn with_whisper(size: &str) -> (tempfile::TempDir, Bundle) {
    let manifests = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests"));
    let read = |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let mut m = read(&manifests.join("emotion-llama-7b/manifest.json"));
    let asr = read(&manifests.join(format!("whisper/{size}.json")));
    m["asr"] = asr["asr"].clone();
    m["files"].as_array_mut().unwrap().extend(asr["files"].as_array().unwrap().iter().cloned());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let bundle = Bundle::open(dir.path()).unwrap();
    (dir, bundle)
}

/// An int8 Q/DQ file's bytes per weight: the int8 weights and their per-channel scales
/// (measured: a ViT-L of 303 M parameters in 0.3055 GB).
const INT8_FILE_PER_PARAM: f64 = 1.008;

const WHISPER_SIZES: [&str; 6] = ["tiny", "base", "small", "medium", "large-v3-turbo", "large-v3"];

/// Where speech recognition goes on each device, for every Whisper size: resident where
/// it fits, loaded in turn where only that fits, on the CPU only beside a discrete GPU
/// (on a Jetson's unified memory the CPU's fp32 copy would cost more, not less).
#[test]
fn every_whisper_size_is_placed_where_it_fits() {
    let profiles = load_profiles(&[]).unwrap();
    let by_name = |n: &str| find_profile(&profiles, n).unwrap().clone();
    let placed = |size: &str, p: &Profile| {
        let (_dir, b) = with_whisper(size);
        plan(b.manifest(), p)
    };
    for size in WHISPER_SIZES {
        for p in &profiles {
            let plan = placed(size, p);
            let asr = plan.settings.asr.expect("a bundle with speech recognition");
            println!(
                "{size:<15} {:<20} {:<13} asr {asr} {:.2} GB; {}",
                p.name,
                format!("{:?}", plan.outcome),
                (plan.parts.asr + plan.parts.asr_host) as f64 / 1e9,
                plan.message
            );
            if p.unified_memory || !p.has_gpu() {
                assert_ne!(asr, AsrPlacement::Cpu, "{size} on {}: the CPU saves nothing there", p.name);
            }
        }
    }
    // The 16 GB boards keep every size resident beside the 7B model.
    for size in WHISPER_SIZES {
        let nx = placed(size, &by_name("orin-nx-16gb"));
        assert_eq!((nx.outcome, nx.settings.asr), (Outcome::FitsResident, Some(AsrPlacement::Resident)), "{size}");
    }
    // Where the encoders already take turns, a small Whisper stays loaded (Orin NX 8 GB);
    // on the Nano, full without it (5.41 of 5.50 GB), even the tiny one takes its turn,
    // and large-v3-turbo (its 4-layer decoder) still fits that way; large-v3 does not.
    let nx8 = placed("tiny", &by_name("orin-nx-8gb"));
    assert_eq!((nx8.outcome, nx8.settings.asr), (Outcome::FitsInTurn, Some(AsrPlacement::Resident)), "{}", nx8.message);
    let nano = by_name("orin-nano-8gb");
    let turbo = placed("large-v3-turbo", &nano);
    assert_eq!((turbo.outcome, turbo.settings.asr), (Outcome::FitsInTurn, Some(AsrPlacement::InTurn)));
    assert!(turbo.changes.iter().any(|c| c.contains("speech recognition loaded in turn")), "{:?}", turbo.changes);
    assert!(turbo.in_turn_total <= turbo.usable_bytes, "{}", turbo.message);
    let large = placed("large-v3", &nano);
    assert_eq!(large.outcome, Outcome::DoesNotFit);
    assert!(
        large.message.contains("speech recognition") && large.message.contains("a smaller Whisper"),
        "{}",
        large.message
    );

    // Beside a discrete GPU that holds the model but not Whisper too, Whisper goes to the
    // CPU: host memory, outside the GPU's budget.
    let mut gpu = by_name("x86-cuda");
    let (_dir, b) = with_whisper("large-v3");
    let without_asr = plan(
        Bundle::open(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/emotion-llama-7b"))).unwrap().manifest(),
        &gpu,
    );
    gpu.usable_headless_gb = without_asr.resident_total as f64 / 1e9 + 0.2;
    let tight = plan(b.manifest(), &gpu);
    assert_eq!(
        (tight.outcome, tight.settings.asr),
        (Outcome::FitsResident, Some(AsrPlacement::Cpu)),
        "{}",
        tight.message
    );
    assert!(tight.parts.asr == 0 && tight.parts.asr_host > 0, "{:?}", tight.parts);

    // A profile may place it on the CPU itself; on unified memory that is counted at the
    // CPU's cost (fp32 weights), in the same memory.
    let mut cpu_asr = by_name("orin-nx-16gb");
    cpu_asr.defaults.asr = AsrPlacement::Cpu;
    let (on_gpu, on_cpu) = (placed("small", &by_name("orin-nx-16gb")), placed("small", &cpu_asr));
    assert_eq!(on_cpu.settings.asr, Some(AsrPlacement::Cpu));
    assert!(on_cpu.parts.asr > 2 * on_gpu.parts.asr && on_cpu.parts.asr_host == 0, "{:?}", on_cpu.parts);
}

/// Emotion-LLaMA-v2 at its real dimensions (file sizes from the v2 spec's parameter
/// counts: both EVA graphs and Whisper's encoder in fp16, 5.4 GB of engines beside the
/// Q4_K_M LLM): where it fits resident, in turn, or not at all.
#[test]
fn emotion_llama_v2_is_planned_per_device() {
    let v2 = Bundle::open(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/emotion-llama-v2-7b"))).unwrap();
    assert_eq!(v2.manifest().model, emollama_bundle::ModelFamily::EmotionLlamaV2);
    let profiles = load_profiles(&[]).unwrap();
    let outcome = |name: &str| plan(v2.manifest(), find_profile(&profiles, name).unwrap());
    for p in &profiles {
        let plan = plan(v2.manifest(), p);
        println!("{:<20} {:<13} {}", p.name, format!("{:?}", plan.outcome), plan.message);
        let engines: Vec<&str> = plan.parts.encoders.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(engines, ["global_engine", "temporal_engine", "audio_engine", "fusion_engine"]);
        assert_eq!(plan.parts.face_detectors, 0, "v2 has no face detector");
    }
    for big in ["orin-nx-16gb", "agx-orin-32gb", "agx-orin-64gb", "agx-thor"] {
        assert_eq!(outcome(big).outcome, Outcome::FitsResident, "{big}: {}", outcome(big).message);
    }
    let nano = outcome("orin-nano-8gb");
    assert_ne!(nano.outcome, Outcome::FitsResident, "{}", nano.message);
}

/// The real 7B bundle with its encoders as int8 Q/DQ files (`quantize_encoders --int8`:
/// one byte per weight, plus the per-channel scales), planned per device beside the fp32
/// bundle: where the fp32 bundle needs int8 encoders the plan names the tool that makes
/// them; the int8 bundle needs no such change, and never more memory.
#[test]
fn int8_encoders_plan_per_device() {
    use emollama_bundle::EnginePrecision;
    let manifests = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests"));
    let fp32 = Bundle::open(&manifests.join("emotion-llama-7b")).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifests.join("emotion-llama-7b/manifest.json")).unwrap()).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        let stored: EnginePrecision = match f["precision"].as_str().unwrap().parse() {
            Ok(p) if f["role"].as_str().unwrap().ends_with("_engine") => p,
            _ => continue,
        };
        let params = f["size"].as_f64().unwrap() / stored.bytes_per_param();
        f["size"] = ((params * INT8_FILE_PER_PARAM) as u64).into();
        f["precision"] = "int8".into();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let int8 = Bundle::open(dir.path()).unwrap();
    let profiles = load_profiles(&[]).unwrap();
    let gb = |b: u64| b as f64 / 1e9;
    for name in ["orin-nano-8gb", "orin-nx-8gb", "orin-nx-16gb", "agx-orin-32gb", "x86-cpu"] {
        let p = find_profile(&profiles, name).unwrap();
        let (a, b) = (plan(fp32.manifest(), p), plan(int8.manifest(), p));
        let encoders = |x: &emollama_devices::Plan| x.parts.encoders.iter().map(|e| e.1).sum::<u64>();
        println!(
            "{name:<14} fp32 bundle: {:?}, encoders {:.2} GB: {}\n{:<14} int8 bundle: {:?}, encoders {:.2} GB: {}",
            a.outcome,
            gb(encoders(&a)),
            a.message,
            "",
            b.outcome,
            gb(encoders(&b)),
            b.message
        );
        assert_eq!(b.settings.encoder_precision, EnginePrecision::Int8, "{name}");
        assert!(b.changes.iter().all(|c| !c.contains("encoders in")), "{name}: {:?}", b.changes);
        // At most what the fp32 bundle's plan counted (it counts int8 where it needs it).
        assert!(encoders(&b) as f64 <= encoders(&a) as f64 * 1.01, "{name}");
    }
    let nano = find_profile(&profiles, "orin-nano-8gb").unwrap();
    let (a, b) = (plan(fp32.manifest(), nano), plan(int8.manifest(), nano));
    assert!(a.changes.iter().any(|c| c.contains("quantize_encoders --int8")), "{:?}", a.changes);
    assert!(b.changes.len() < a.changes.len(), "{:?} vs {:?}", b.changes, a.changes);
}
