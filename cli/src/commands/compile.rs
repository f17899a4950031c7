//! `emollama compile`: build the TensorRT engines for this device ahead of the service
//! (the unit runs it before `serve`), with progress per engine and an elapsed/ETA line.

use std::path::PathBuf;

use emollama_bundle::locations::locate_bundle;
use emollama_bundle::Bundle;
use emollama_commands::compile::{check, compile, compile_plan, CompileEvent, EngineCheck};
use emollama_engines::onnx::TensorRtSupport;
use emollama_serve::ServeConfig;

use crate::args::{host, ProfileArgs};

#[derive(clap::Args)]
pub struct CompileArgs {
    /// The service's configuration, for its bundle, profile and ONNX Runtime library
    /// (default /etc/emollama/config.toml when it exists); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bundle folder; default: the configured one, else the installed bundle.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Device profile (default: the configured one, else detected).
    #[arg(long)]
    profile: Option<String>,
    /// Without TensorRT, say so and exit 0 instead of 3 (for the service's ExecStartPre).
    #[arg(long)]
    if_available: bool,
    /// Only list the engines, their cache folders and whether each is current.
    #[arg(long)]
    list: bool,
    /// Check every engine's graph against the ONNX operators, opsets and types TensorRT
    /// supports and against the optimisation profiles the plan asks for, without a GPU;
    /// exits 1 if TensorRT would refuse one.
    #[arg(long, conflicts_with = "list")]
    check: bool,
    #[arg(long)]
    json: bool,
}

fn minutes(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn print_check(bundle: &str, profile: &str, checks: &[EngineCheck], json: bool) -> anyhow::Result<()> {
    let source = &TensorRtSupport::bundled().source;
    if json {
        println!("{}", serde_json::to_string_pretty(checks)?);
    } else {
        println!("bundle {bundle} on {profile}, checked against TensorRT {} ({})", source.tensorrt, source.document);
        for c in checks {
            let v = &c.verdict;
            let opset = v.opset.map_or("no opset".into(), |o| format!("opset {o}"));
            let verdict = if v.passes() { "pass" } else { "REFUSED" };
            let profiles = match v.profiles {
                1 => "1 profile".to_string(),
                n => format!("{n} profiles"),
            };
            println!("  {:<18} {verdict:<8} {opset}, {} operators, {profiles}", c.role, v.operators.len());
            for r in &v.refusals {
                println!("  {:<18}   refused: {r}", "");
            }
            for w in &v.warnings {
                println!("  {:<18}   warning: {w}", "");
            }
        }
    }
    let refused: Vec<&str> = checks.iter().filter(|c| !c.verdict.passes()).map(|c| c.role.as_str()).collect();
    if !refused.is_empty() {
        anyhow::bail!(
            "TensorRT {} would refuse {} of {} engines: {}",
            source.tensorrt,
            refused.len(),
            checks.len(),
            refused.join(", ")
        );
    }
    Ok(())
}

pub fn run(args: CompileArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let config = ServeConfig::load(args.config.as_deref())?;
    let ort_library = ort_library.or(config.ort_library.clone());
    let profile = ProfileArgs { profile: args.profile.or(config.profile.clone()) }.resolve()?;
    let (dir, _) = locate_bundle(args.bundle.as_deref().or(config.bundle.as_deref()))?;
    let bundle = Bundle::open(&dir)?;
    let plan = compile_plan(&bundle, &profile, &host()?, ort_library.as_deref(), &config.face_search())?;
    if args.check {
        return print_check(&plan.bundle, &plan.profile, &check(&plan), args.json);
    }
    if args.list || args.json {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            println!(
                "bundle {} on {}: TensorRT {} engines, cache key {}",
                plan.bundle, plan.profile, plan.precision, plan.device_key
            );
            for e in &plan.engines {
                let state = if e.current { "current" } else { "to build" };
                println!("  {:<18} {:>7.1} MB  {:<8}  {}", e.role, e.bytes as f64 / 1e6, state, e.cache_dir.display());
                if !e.shapes.is_empty() {
                    println!("  {:<18} {} profiles: {}", "", e.shapes.len(), e.shapes.join(" "));
                }
            }
            if let Some(reason) = &plan.tensorrt_unavailable {
                println!("TensorRT is not available: {reason}");
            }
        }
        return Ok(());
    }
    if let (Some(reason), true) = (&plan.tensorrt_unavailable, args.if_available) {
        eprintln!("TensorRT is not available ({reason}): no engines to build, the encoders run on CUDA or the CPU");
        return Ok(());
    }
    let pending = plan.pending().count();
    if pending == 0 && plan.tensorrt_unavailable.is_none() {
        eprintln!("all {} TensorRT engines are current for {} ({})", plan.engines.len(), plan.profile, plan.device_key);
        return Ok(());
    }
    if plan.tensorrt_unavailable.is_none() {
        eprintln!(
            "building {pending} TensorRT {} engine(s) for {} (a first build takes minutes per engine; the cache is {})",
            plan.precision,
            plan.profile,
            plan.engines
                .first()
                .map(|e| e.cache_dir.parent().unwrap_or(&e.cache_dir).display().to_string())
                .unwrap_or_default()
        );
    }
    let report = compile(&plan, &|event| match event {
        CompileEvent::Started { index, total, engine } => {
            eprintln!("[{index}/{total}] {}: building ({:.0} MB of ONNX) …", engine.role, engine.bytes as f64 / 1e6)
        }
        CompileEvent::StillBuilding { engine, engine_s, elapsed_s } => eprintln!(
            "      {}: still building, {} on this engine, {} in all",
            engine.role,
            minutes(engine_s),
            minutes(elapsed_s)
        ),
        CompileEvent::Built { index, total, engine, engine_s, elapsed_s, eta_s } => eprintln!(
            "[{index}/{total}] {}: built in {}; elapsed {}, ETA {}",
            engine.role,
            minutes(engine_s),
            minutes(elapsed_s),
            eta_s.map(minutes).unwrap_or_else(|| "done".into())
        ),
    })?;
    eprintln!(
        "compiled {} engine(s) in {} ({} already current)",
        report.built.len(),
        minutes(report.total_s),
        report.current.len()
    );
    Ok(())
}
