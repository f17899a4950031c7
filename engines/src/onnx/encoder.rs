//! One encoder engine: an ONNX Runtime session built once from a bundle file and shared
//! by every request. ONNX Runtime's `Run` is thread-safe, but `ort` takes `&mut Session`,
//! so the session sits behind a mutex; per-request state (inputs, outputs) never lives
//! in the engine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use emollama_bundle::{Dim, TensorSpec};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use ort::session::{builder::GraphOptimizationLevel, RunOptions, Session, SessionInputValue};
use ort::value::TensorRef;

use super::library::OrtRuntime;
use super::providers::{Provider, ProviderPolicy};
use crate::{CancelToken, EngineError};

/// How to build an engine's session.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub intra_threads: usize,
    pub policy: ProviderPolicy,
    /// Model sha256 from the manifest (keys the TensorRT engine cache).
    pub model_sha256: String,
}

/// The f32 outputs of one run, read by name.
#[derive(Debug)]
pub struct Outputs {
    engine: String,
    values: Vec<(String, ArrayD<f32>)>,
}

impl Outputs {
    /// Take the output called `name` (each can be taken once).
    pub fn take(&mut self, name: &str) -> Result<ArrayD<f32>, EngineError> {
        let at = self.values.iter().position(|(n, _)| n == name).ok_or_else(|| EngineError::Output {
            engine: self.engine.clone(),
            output: name.into(),
            message: "not declared by the manifest".into(),
        })?;
        Ok(self.values.swap_remove(at).1)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| n.as_str())
    }
}

#[derive(Debug)]
pub struct EncoderEngine {
    name: String,
    path: PathBuf,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    provider: Provider,
    /// Why preferred providers were skipped, for `doctor` and `/readyz`.
    fallbacks: Vec<String>,
    session: Mutex<Session>,
}

impl EncoderEngine {
    /// Build the session, trying the policy's providers in order.
    #[tracing::instrument(level = "info", skip(rt, inputs, outputs, opts), fields(path = %path.display()))]
    pub fn load(
        rt: &OrtRuntime,
        name: &str,
        path: &Path,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
        opts: &EngineOptions,
    ) -> Result<Self, EngineError> {
        if !path.is_file() {
            return Err(EngineError::ModelFileMissing { engine: name.into(), path: path.into() });
        }
        // A required provider is the only one tried; otherwise the policy's order, with
        // CPU as the last resort.
        let order = match opts.policy.required {
            Some(p) => vec![p],
            None => {
                let mut o = opts.policy.order.clone();
                if !o.contains(&Provider::Cpu) {
                    o.push(Provider::Cpu);
                }
                o
            }
        };
        let mut fallbacks = Vec::new();
        for provider in order {
            match build_session(rt, name, path, &inputs, provider, opts) {
                Ok(session) => {
                    for reason in &fallbacks {
                        tracing::warn!(engine = name, "{reason}; running on {provider}");
                    }
                    tracing::info!(engine = name, %provider, "encoder engine ready");
                    return Ok(Self {
                        name: name.into(),
                        path: path.into(),
                        inputs,
                        outputs,
                        provider,
                        fallbacks,
                        session: Mutex::new(session),
                    });
                }
                Err(Skip::Unavailable(reason)) => fallbacks.push(format!("{provider} unavailable: {reason}")),
                Err(Skip::Fatal(e)) => return Err(e),
            }
        }
        Err(match opts.policy.required {
            Some(p) => EngineError::ProviderUnavailable {
                engine: name.into(),
                provider: p.name(),
                reason: fallbacks.join("; "),
            },
            None => EngineError::SessionCreate {
                engine: name.into(),
                path: path.into(),
                message: format!("no execution provider could run it: {}", fallbacks.join("; ")),
            },
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The provider this engine's session was created with.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Check names, ranks and fixed dimensions against the manifest before running.
    pub fn check_inputs(&self, inputs: &[(&str, ArrayViewD<'_, f32>)]) -> Result<(), EngineError> {
        let expected: Vec<String> = self.inputs.iter().map(|s| s.name.clone()).collect();
        let actual: Vec<String> = inputs.iter().map(|(n, _)| (*n).to_string()).collect();
        if expected != actual {
            return Err(EngineError::InputNames { engine: self.name.clone(), expected, actual });
        }
        for (spec, (_, array)) in self.inputs.iter().zip(inputs) {
            let shape = array.shape();
            let ok = shape.len() == spec.shape.len()
                && spec.shape.iter().zip(shape).all(|(d, &n)| d.accepts(n as u64) && (n > 0 || d.may_be_empty()));
            if !ok {
                return Err(EngineError::InputShape {
                    engine: self.name.clone(),
                    input: spec.name.clone(),
                    expected: spec.shape_string(),
                    actual: shape.to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Run once. Inputs are given in the manifest's order.
    pub fn run(&self, inputs: &[(&str, ArrayViewD<'_, f32>)]) -> Result<Outputs, EngineError> {
        self.run_cancellable(inputs, None)
    }

    /// [`EncoderEngine::run`], terminated by ONNX Runtime when `cancel` is cancelled
    /// (before or during the run): then [`EngineError::Cancelled`].
    pub fn run_cancellable(
        &self,
        inputs: &[(&str, ArrayViewD<'_, f32>)],
        cancel: Option<&CancelToken>,
    ) -> Result<Outputs, EngineError> {
        self.check_inputs(inputs)?;
        let run_err = |e: ort::Error| EngineError::Run { engine: self.name.clone(), message: e.to_string() };
        let contiguous: Vec<_> = inputs.iter().map(|(_, a)| a.as_standard_layout()).collect();
        let mut feeds: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for ((name, _), array) in inputs.iter().zip(&contiguous) {
            let tensor = TensorRef::from_array_view(array).map_err(run_err)?;
            feeds.push(((*name).into(), tensor.into()));
        }
        let mut options = RunOptions::new().map_err(run_err)?;
        if has_dynamic_inputs(&self.inputs) {
            // Inputs of varying shapes (a clip's length, a frame's face count) leave the
            // arena at the largest a run ever needed: hand back what this run grew.
            let device = if self.provider == Provider::Cpu { "cpu:0" } else { "cpu:0;gpu:0" };
            options.set("memory.enable_memory_arena_shrinkage", device).map_err(run_err)?;
        }
        let options = Arc::new(options);
        if cancel.is_some_and(|c| !c.register(&options)) {
            return Err(EngineError::Cancelled);
        }
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = Instant::now();
        let outputs = match session.run_with_options(feeds, &*options) {
            Ok(o) => o,
            Err(_) if cancel.is_some_and(CancelToken::is_cancelled) => return Err(EngineError::Cancelled),
            Err(e) => return Err(run_err(e)),
        };
        let mut result = Vec::with_capacity(self.outputs.len());
        for spec in &self.outputs {
            let value = outputs.get(&spec.name).ok_or_else(|| EngineError::Output {
                engine: self.name.clone(),
                output: spec.name.clone(),
                message: "not produced by the model".into(),
            })?;
            let array = value.try_extract_array::<f32>().map_err(|e| EngineError::Output {
                engine: self.name.clone(),
                output: spec.name.clone(),
                message: e.to_string(),
            })?;
            result.push((spec.name.clone(), array.to_owned()));
        }
        tracing::debug!(engine = %self.name, ms = started.elapsed().as_secs_f64() * 1e3, "run");
        Ok(Outputs { engine: self.name.clone(), values: result })
    }

    /// One run on zeros at the smallest shape, so that the first request does not pay
    /// for lazy initialisation (and TensorRT engine building).
    pub fn warm_up(&self, dynamic_sizes: &dyn Fn(&str) -> usize) -> Result<(), EngineError> {
        let arrays: Vec<ArrayD<f32>> = self
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = spec
                    .shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => *n as usize,
                        Dim::Dynamic(axis) => dynamic_sizes(axis).max(1),
                    })
                    .collect();
                ArrayD::zeros(IxDyn(&shape))
            })
            .collect();
        let feeds: Vec<(&str, ArrayViewD<'_, f32>)> =
            self.inputs.iter().zip(&arrays).map(|(s, a)| (s.name.as_str(), a.view())).collect();
        self.run(&feeds).map(|_| ())
    }
}

enum Skip {
    Unavailable(String),
    Fatal(EngineError),
}

/// Whether any input has a named dynamic axis.
fn has_dynamic_inputs(inputs: &[TensorSpec]) -> bool {
    inputs.iter().any(|i| i.shape.iter().any(|d| matches!(d, Dim::Dynamic(_))))
}

fn build_session(
    rt: &OrtRuntime,
    name: &str,
    path: &Path,
    inputs: &[TensorSpec],
    provider: Provider,
    opts: &EngineOptions,
) -> Result<Session, Skip> {
    let create_err = |e: ort::Error| {
        Skip::Fatal(EngineError::SessionCreate { engine: name.into(), path: path.into(), message: e.to_string() })
    };
    let mut builder = Session::builder(&rt.environment)
        .map_err(create_err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| create_err(e.into()))?;
    if opts.intra_threads > 0 {
        builder = builder.with_intra_threads(opts.intra_threads).map_err(|e| create_err(e.into()))?;
    }
    if has_dynamic_inputs(inputs) {
        // A memory pattern is planned per input shape and kept for each shape seen: with
        // shapes that vary per request, an unbounded cache.
        builder = builder.with_memory_pattern(false).map_err(|e| create_err(e.into()))?;
    }
    match provider {
        Provider::Cpu => {}
        Provider::Cuda | Provider::TensorRt => {
            if !provider.compiled_in() {
                return Err(Skip::Unavailable(format!(
                    "emollama was built without the `{}` feature",
                    provider.short()
                )));
            }
            let dispatch = gpu_dispatch(rt, provider, name, inputs, opts).map_err(Skip::Unavailable)?;
            builder = builder
                .with_execution_providers([dispatch.error_on_failure()])
                .map_err(|e| Skip::Unavailable(e.to_string()))?;
        }
    }
    builder.commit_from_file(path).map_err(|e| match provider {
        // A GPU provider that fails at commit (missing CUDA libraries, unsupported op)
        // is a fallback reason, not a fatal error; the CPU attempt decides.
        Provider::Cpu => create_err(e),
        _ => Skip::Unavailable(e.to_string()),
    })
}

#[cfg(feature = "cuda")]
fn gpu_dispatch(
    rt: &OrtRuntime,
    provider: Provider,
    _name: &str,
    inputs: &[TensorSpec],
    opts: &EngineOptions,
) -> Result<ort::ep::ExecutionProviderDispatch, String> {
    use ort::ep::ExecutionProvider;
    match provider {
        Provider::Cuda => {
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                return Err(format!("{} has no CUDA provider (CPU-only build)", rt.library.display()));
            }
            Ok(ort::ep::CUDA::default().build())
        }
        #[cfg(feature = "tensorrt")]
        Provider::TensorRt => {
            if !ort::ep::TensorRT::is_available().unwrap_or(false) {
                return Err(format!("{} has no TensorRT provider (CPU-only build)", rt.library.display()));
            }
            let trt = &opts.policy.tensorrt;
            let mut ep = ort::ep::TensorRT::default().with_fp16(trt.fp16).with_int8(trt.int8);
            if let Some(dir) = trt.cache_dir(&rt.version, &opts.model_sha256, inputs) {
                std::fs::create_dir_all(&dir).map_err(|e| format!("engine cache {}: {e}", dir.display()))?;
                let dir = dir.display().to_string();
                ep = ep
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir);
            }
            if let Some([min, opt, max]) = trt.profile_shapes(inputs) {
                ep = ep.with_profile_min_shapes(min).with_profile_opt_shapes(opt).with_profile_max_shapes(max);
            }
            Ok(ep.build())
        }
        _ => Err("not a GPU provider".into()),
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_dispatch(
    _rt: &OrtRuntime,
    provider: Provider,
    _name: &str,
    _inputs: &[TensorSpec],
    _opts: &EngineOptions,
) -> Result<ort::ep::ExecutionProviderDispatch, String> {
    Err(format!("emollama was built without the `{}` feature", provider.short()))
}
