//! `emollama compile`: every encoder's TensorRT engine built for this device into the
//! engine cache, ahead of the service. A first TensorRT build takes minutes per engine
//! (the 1B-parameter EVA ViT-g most of all); a service that spends them on its first
//! request looks hung. The engines are the ones the service would build: the same plan,
//! the same precision, the same cache key (board, L4T, TensorRT and ONNX Runtime
//! versions, shapes, model hash), so what is compiled here is what the service loads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use emollama_bundle::{Bundle, Dim, Role, TensorSpec};
use emollama_devices::{HostInfo, Profile};
use emollama_engines::onnx::graph::read_model;
use emollama_engines::onnx::providers::provider_problem;
use emollama_engines::onnx::{
    available_providers, check_profiles, init_runtime, EncoderEngine, EngineOptions, GraphVerdict, OrtRuntime,
    Provider, ProviderPolicy, TensorRtOptions, TensorRtSupport,
};
use emollama_media::faces::FaceSearch;

use crate::CommandError;
use emollama_runtime::pipeline::{planned_engine_config, warm_up};

/// How often a long build reports that it is still running.
const STILL_BUILDING_EVERY: Duration = Duration::from_secs(30);

/// One encoder engine and where its TensorRT engine is cached.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineTarget {
    pub role: String,
    pub path: PathBuf,
    pub bytes: u64,
    #[serde(skip)]
    pub sha256: String,
    #[serde(skip)]
    pub inputs: Vec<TensorSpec>,
    #[serde(skip)]
    pub outputs: Vec<TensorSpec>,
    pub cache_dir: PathBuf,
    /// The input shapes built one optimisation profile each (the face detector's pyramid
    /// levels, `HxW`); empty: one profile over the configured ranges.
    pub shapes: Vec<String>,
    /// The cache already holds an engine for exactly this model, device and software.
    pub current: bool,
    /// This engine's TensorRT settings (the plan's, with its own profiles).
    #[serde(skip)]
    tensorrt: TensorRtOptions,
}

/// What `compile` would do: the engines, in the order they are built.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompilePlan {
    pub bundle: String,
    pub profile: String,
    pub precision: &'static str,
    pub device_key: String,
    /// Why TensorRT cannot run here (`None`: it can).
    pub tensorrt_unavailable: Option<String>,
    pub engines: Vec<EngineTarget>,
    #[serde(skip)]
    threads: usize,
    #[serde(skip)]
    sample_rate: u32,
    #[serde(skip)]
    rt: &'static OrtRuntime,
}

impl CompilePlan {
    /// The engines whose cache is not current.
    pub fn pending(&self) -> impl Iterator<Item = &EngineTarget> {
        self.engines.iter().filter(|e| !e.current)
    }
}

/// Progress, for the command's output (a first build takes minutes: say so, with an ETA).
#[derive(Debug, Clone, Copy)]
pub enum CompileEvent<'a> {
    Started { index: usize, total: usize, engine: &'a EngineTarget },
    StillBuilding { engine: &'a EngineTarget, engine_s: f64, elapsed_s: f64 },
    Built { index: usize, total: usize, engine: &'a EngineTarget, engine_s: f64, elapsed_s: f64, eta_s: Option<f64> },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CompileReport {
    pub built: Vec<(String, f64)>,
    pub current: Vec<String>,
    pub total_s: f64,
}

/// Why this binary and library cannot build TensorRT engines, if they cannot.
fn tensorrt_unavailable(library: &Path) -> Option<String> {
    if !Provider::TensorRt.compiled_in() {
        return Some("this emollama was built without TensorRT (cargo feature `tensorrt`)".into());
    }
    if !available_providers().contains(&Provider::TensorRt) {
        return Some(format!(
            "{} has no TensorRT provider (a CPU-only ONNX Runtime; Jetson needs the GPU build for its JetPack)",
            library.display()
        ));
    }
    provider_problem(library, Provider::TensorRt)
}

/// The engines of `bundle` on `profile` (the four encoders, the projectors, the face
/// detector's three nets as `faces` searches), with their cache folders and whether each
/// is current. Reads no model: cheap enough for every service start.
pub fn compile_plan(
    bundle: &Bundle,
    profile: &Profile,
    host: &HostInfo,
    ort_library: Option<&Path>,
    faces: &FaceSearch,
) -> Result<CompilePlan, CommandError> {
    let config = planned_engine_config(bundle, profile, Some(host))?;
    let rt = init_runtime(ort_library)?;
    let base = EngineOptions { intra_threads: config.threads, policy: config.providers.clone(), ..Default::default() };
    let mut engines = Vec::new();
    for role in bundle.manifest().model.row_engines().iter().cloned().chain(Role::FACE_NETS) {
        let Some(e) = bundle.file(&role) else { continue };
        let tensorrt = faces.engine_options(&role, &base).policy.tensorrt;
        let cache_dir = tensorrt
            .cache_dir(&rt.version, &e.sha256, &e.inputs)
            .expect("the planned configuration always has an engine cache");
        let shapes = e
            .inputs
            .iter()
            .flat_map(|i| tensorrt.exact_shapes.get(&i.name).into_iter().flatten())
            .map(|dims| dims.iter().skip(2).map(u64::to_string).collect::<Vec<_>>().join("x"))
            .collect();
        engines.push(EngineTarget {
            role: role.as_str().into(),
            path: bundle.path_of(e),
            bytes: e.size,
            sha256: e.sha256.clone(),
            inputs: e.inputs.clone(),
            outputs: e.outputs.clone(),
            current: holds_engine(&cache_dir),
            cache_dir,
            shapes,
            tensorrt,
        });
    }
    let tensorrt = config.providers.tensorrt;
    Ok(CompilePlan {
        bundle: bundle.manifest().id.clone(),
        profile: profile.name.clone(),
        precision: tensorrt.precision(),
        device_key: tensorrt.device_key.clone(),
        tensorrt_unavailable: tensorrt_unavailable(&rt.library),
        engines,
        threads: config.threads,
        sample_rate: bundle.manifest().preprocess.audio.sample_rate,
        rt,
    })
}

/// ONNX Runtime's TensorRT provider writes `<model>_<hash>_<profile>.engine` files into
/// the cache folder once an engine is built.
fn holds_engine(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "engine") && e.metadata().is_ok_and(|m| m.len() > 0))
    })
}

/// The static TensorRT verdict on one engine's graph.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineCheck {
    pub role: String,
    pub path: PathBuf,
    #[serde(flatten)]
    pub verdict: GraphVerdict,
}

/// Every engine of the plan checked against the TensorRT support list this binary
/// carries and against the optimisation profiles the plan asks for. Needs no GPU and no
/// TensorRT: a graph TensorRT would refuse is found here, not after a first build.
pub fn check(plan: &CompilePlan) -> Vec<EngineCheck> {
    let support = TensorRtSupport::bundled();
    plan.engines
        .iter()
        .map(|e| {
            let verdict = match read_model(&e.path) {
                Ok(model) => {
                    let mut verdict = support.check_graph(&model);
                    check_profiles(&model, &e.inputs, &e.tensorrt, &mut verdict);
                    verdict
                }
                Err(err) => GraphVerdict {
                    tensorrt: support.source.tensorrt.clone(),
                    refusals: vec![err.to_string()],
                    ..Default::default()
                },
            };
            EngineCheck { role: e.role.clone(), path: e.path.clone(), verdict }
        })
        .collect()
}

/// Build every pending engine: a TensorRT session (TensorRT required, no fallback) and
/// one warm-up run, which leaves the engine in the cache.
pub fn compile(
    plan: &CompilePlan,
    on_event: &(dyn Fn(CompileEvent<'_>) + Sync),
) -> Result<CompileReport, CommandError> {
    if let Some(reason) = &plan.tensorrt_unavailable {
        return Err(CommandError::TensorRtUnavailable { reason: reason.clone() });
    }
    let pending: Vec<&EngineTarget> = plan.pending().collect();
    // Minutes of building end in a refusal the static check sees at once.
    if let Some(failed) =
        check(plan).into_iter().find(|c| !c.verdict.passes() && pending.iter().any(|e| e.role == c.role))
    {
        return Err(CommandError::TensorRtRefuses { role: failed.role, reasons: failed.verdict.refusals.join("; ") });
    }
    let started = Instant::now();
    let total_bytes: u64 = pending.iter().map(|e| e.bytes).sum();
    let mut done_bytes = 0u64;
    let mut built = Vec::new();
    for (i, engine) in pending.iter().enumerate() {
        on_event(CompileEvent::Started { index: i + 1, total: pending.len(), engine });
        let engine_started = Instant::now();
        let finished = AtomicBool::new(false);
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut next = STILL_BUILDING_EVERY;
                while !finished.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    if engine_started.elapsed() >= next {
                        next += STILL_BUILDING_EVERY;
                        on_event(CompileEvent::StillBuilding {
                            engine,
                            engine_s: engine_started.elapsed().as_secs_f64(),
                            elapsed_s: started.elapsed().as_secs_f64(),
                        });
                    }
                }
            });
            let result = build_one(plan, engine);
            finished.store(true, Ordering::Relaxed);
            result
        });
        result?;
        let engine_s = engine_started.elapsed().as_secs_f64();
        done_bytes += engine.bytes;
        let elapsed_s = started.elapsed().as_secs_f64();
        // Build time grows with the model's size: estimate the rest from the bytes done.
        let eta_s = (done_bytes > 0 && done_bytes < total_bytes)
            .then(|| elapsed_s * (total_bytes - done_bytes) as f64 / done_bytes as f64);
        on_event(CompileEvent::Built { index: i + 1, total: pending.len(), engine, engine_s, elapsed_s, eta_s });
        built.push((engine.role.clone(), engine_s));
    }
    let current = plan.engines.iter().filter(|e| e.current).map(|e| e.role.clone()).collect();
    Ok(CompileReport { built, current, total_s: started.elapsed().as_secs_f64() })
}

fn build_one(plan: &CompilePlan, engine: &EngineTarget) -> Result<(), CommandError> {
    let opts = EngineOptions {
        intra_threads: plan.threads,
        policy: ProviderPolicy {
            order: vec![Provider::TensorRt],
            required: Some(Provider::TensorRt),
            tensorrt: engine.tensorrt.clone(),
        },
        model_sha256: engine.sha256.clone(),
    };
    let session =
        EncoderEngine::load(plan.rt, &engine.role, &engine.path, engine.inputs.clone(), engine.outputs.clone(), &opts)?;
    // An engine with exact shapes runs once on the first of them (any other shape is
    // outside its profiles); the others as the pipeline warms them.
    let mut exact_axes = std::collections::BTreeMap::new();
    for input in &engine.inputs {
        if let Some(dims) = engine.tensorrt.exact_shapes.get(&input.name).and_then(|s| s.first()) {
            for (d, n) in input.shape.iter().zip(dims) {
                if let Dim::Dynamic(axis) = d {
                    exact_axes.insert(axis.clone(), *n as usize);
                }
            }
        }
    }
    if exact_axes.is_empty() {
        Ok(warm_up(&session, plan.sample_rate)?)
    } else {
        Ok(session.warm_up(&|axis| exact_axes.get(axis).copied().unwrap_or(1))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_file_makes_the_cache_current() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!holds_engine(&dir.path().join("absent")));
        assert!(!holds_engine(dir.path()));
        std::fs::write(dir.path().join("timing.cache"), b"x").unwrap();
        assert!(!holds_engine(dir.path()), "a timing cache alone is not an engine");
        std::fs::write(dir.path().join("TensorrtExecutionProvider_TRTKernel_graph_1_0.engine"), b"").unwrap();
        assert!(!holds_engine(dir.path()), "an empty engine file (a build that died) is not current");
        std::fs::write(dir.path().join("TensorrtExecutionProvider_TRTKernel_graph_1_0.engine"), b"plan").unwrap();
        assert!(holds_engine(dir.path()));
    }
}
