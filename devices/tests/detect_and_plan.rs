//! Detection on files recorded from real boards (written from the formats'
//! documentation), and the memory planner on the real 7B bundle's manifest.

use std::path::Path;

use emollama_bundle::Bundle;
use emollama_devices::{detect, find_profile, load_profiles, plan, Outcome};

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
