//! The prepared pipeline: built once from a bundle (engines loaded and warmed, face
//! detectors, the LLM, a pool of LLM contexts), immutable and shared by every request.
//! Each request runs in its own [`Session`]: `pipeline.session(req)?.run(…)`, the shape
//! of tract's plan/state split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use emollama_bundle::contract::{engine_io, FEATURES};
use emollama_bundle::{Bundle, BundleError, EnginePrecision, Manifest, Role, RowBlock, TensorSpec};
use emollama_devices::{plan, HostInfo, Outcome, Plan, Profile, Residency};
use emollama_engines::llm::{LlmContext, LlmModel, ModelParams};
use emollama_engines::onnx::{init_runtime, EncoderEngine, EngineOptions, OrtRuntime, Outputs, ProviderPolicy};
use emollama_engines::CancelToken;
use emollama_media::faces::FaceDetector;
use emollama_media::{LogMel, MediaError, Source, SourceKind, SourceOptions};
use ndarray::ArrayViewD;

use crate::asr::Transcriber;
use crate::config::RuntimeConfig;
use crate::request::AnalyzeRequest;
use crate::session::Session;
use crate::RuntimeError;

/// An encoder kept loaded, or, when the memory plan says the encoders only fit one at a
/// time, loaded for each use and released right after.
enum EncoderSlot {
    Resident(EncoderEngine),
    InTurn {
        rt: &'static OrtRuntime,
        name: String,
        path: PathBuf,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
        opts: EngineOptions,
        provider: String,
    },
}

impl EncoderSlot {
    fn run(&self, inputs: &[(&str, ArrayViewD<'_, f32>)], cancel: &CancelToken) -> Result<Outputs, RuntimeError> {
        match self {
            EncoderSlot::Resident(e) => Ok(e.run_cancellable(inputs, Some(cancel))?),
            EncoderSlot::InTurn { rt, name, path, inputs: i, outputs: o, opts, .. } => {
                let engine = EncoderEngine::load(rt, name, path, i.clone(), o.clone(), opts)?;
                Ok(engine.run_cancellable(inputs, Some(cancel))?) // the session is released here
            }
        }
    }

    fn provider(&self) -> String {
        match self {
            EncoderSlot::Resident(e) => e.provider().to_string(),
            EncoderSlot::InTurn { provider, .. } => provider.clone(),
        }
    }
}

/// The encoders by role (local and temporal are absent from Emotion-LLaMA bundles
/// exported without their checkpoints; local from every v2 bundle, which has the fusion).
pub(crate) struct Encoders {
    global: EncoderSlot,
    local: Option<EncoderSlot>,
    temporal: Option<EncoderSlot>,
    audio: EncoderSlot,
    fusion: Option<EncoderSlot>,
}

impl Encoders {
    fn slot(&self, role: &Role) -> Option<&EncoderSlot> {
        match role {
            Role::GlobalEngine => Some(&self.global),
            Role::LocalEngine => self.local.as_ref(),
            Role::TemporalEngine => self.temporal.as_ref(),
            Role::AudioEngine => Some(&self.audio),
            Role::FusionEngine => self.fusion.as_ref(),
            _ => None,
        }
    }

    /// Whether the bundle has this encoder.
    pub(crate) fn has(&self, role: &Role) -> bool {
        self.slot(role).is_some()
    }

    pub(crate) fn run(
        &self,
        role: &Role,
        inputs: &[(&str, ArrayViewD<'_, f32>)],
        cancel: &CancelToken,
    ) -> Result<Outputs, RuntimeError> {
        let slot = self.slot(role).ok_or_else(|| BundleError::MissingRole(role.clone()))?;
        slot.run(inputs, cancel)
    }
}

/// A projector-only engine (always resident: one linear layer), its input width and the
/// output that holds its row (the contract's).
pub(crate) struct Projector {
    pub(crate) engine: EncoderEngine,
    pub(crate) width: usize,
    pub(crate) output: &'static str,
}

/// Which row each projector-only engine makes.
fn projector_role(block: RowBlock) -> Option<Role> {
    match block {
        RowBlock::Local => Some(Role::LocalProjector),
        RowBlock::Temporal => Some(Role::TemporalProjector),
        RowBlock::Audio => Some(Role::AudioProjector),
        RowBlock::GlobalPatches | RowBlock::GlobalCls | RowBlock::Fusion => None,
    }
}

/// How a pipeline is loaded for a device profile: the plan decides the rest.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Encoder providers (default: TensorRT → CUDA → CPU).
    pub providers: Option<ProviderPolicy>,
    pub ort_library: Option<PathBuf>,
    /// The host's software, to key TensorRT caches (default: none recorded).
    pub host: Option<HostInfo>,
    /// Where URL sources are fetched to (default: the system's temporary folder).
    pub scratch_dir: Option<PathBuf>,
    /// How faces are searched for (default: [`emollama_media::faces::FaceSearch::default`]).
    pub faces: Option<emollama_media::faces::FaceSearch>,
}

/// Loaded once, shared by every request.
pub struct Pipeline {
    bundle: Bundle,
    config: RuntimeConfig,
    plan: Option<Plan>,
    encoders: Encoders,
    /// The projector-only engines the bundle has, for pre-extracted features.
    projectors: BTreeMap<RowBlock, Projector>,
    /// One MTCNN per worker thread (empty when the bundle ships no face detector).
    pub(crate) faces: Vec<FaceDetector>,
    /// Rows of zero features, the model's zero-row blocks × width.
    pub(crate) zero_rows: Vec<f32>,
    /// The audio encoder's log-mel front end, when the manifest has one (v2), built once.
    pub(crate) audio_log_mel: Option<LogMel>,
    /// Speech recognition, when the bundle has its engines.
    asr: Option<Transcriber>,
    llm: Arc<LlmModel>,
    /// Where the LLM's layers run: `cuda` or `cpu`.
    llm_device: &'static str,
    /// Why a GPU was asked for and not used (an encoder provider that could not start,
    /// llama.cpp without a GPU device), for `/readyz` and the log.
    fallbacks: Vec<String>,
    /// LLM contexts of finished requests, cleared, for the next ones (a context's
    /// buffers are allocated once, not per request).
    contexts: Mutex<Vec<LlmContext>>,
}

/// Contexts kept for reuse (the service runs one request at a time on a Jetson).
const CONTEXT_POOL: usize = 2;

/// Run an encoder once on zeros at the smallest sensible sizes of its dynamic axes (one
/// item, one second of audio): it checks the engine, and a GPU provider builds its
/// kernels (or its TensorRT engine) then rather than on the first request.
pub fn warm_up(engine: &EncoderEngine, sample_rate: u32) -> Result<(), RuntimeError> {
    let samples = sample_rate as usize;
    Ok(engine.warm_up(&|axis| if axis == "samples" { samples } else { 1 })?)
}

/// The plan of `bundle` on `profile` and the configuration it runs with (keyed on the
/// host's L4T and TensorRT when given); refuses a bundle that cannot fit or needs a
/// requantized LLM. The service, `compile` and the commands all start here, so a
/// setting the planner chose is the setting that runs.
pub fn planned_config(
    bundle: &Bundle,
    profile: &Profile,
    host: Option<&HostInfo>,
) -> Result<(Plan, RuntimeConfig), RuntimeError> {
    let m = bundle.manifest();
    let plan = plan(m, profile);
    tracing::info!(profile = %profile.name, outcome = ?plan.outcome, "{}", plan.message);
    if plan.outcome == Outcome::DoesNotFit {
        return Err(RuntimeError::DoesNotFit {
            bundle: m.id.clone(),
            profile: profile.display.clone(),
            message: plan.message,
        });
    }
    if let Some(t) = plan.requantize(m) {
        return Err(RuntimeError::NeedsRequantize {
            bundle: m.id.clone(),
            profile: profile.display.clone(),
            llm_type: t,
            message: plan.message.clone(),
        });
    }
    let config = config_of(bundle, profile, &plan, host);
    Ok((plan, config))
}

/// The configuration of the encoders, projectors and face nets alone: the LLM's type
/// does not shape them, so a bundle whose LLM must be requantized for `profile` still
/// gets it (the requantized bundle's engines are the same files). A bundle that does not
/// fit at all is refused as by [`planned_config`].
pub fn planned_engine_config(
    bundle: &Bundle,
    profile: &Profile,
    host: Option<&HostInfo>,
) -> Result<RuntimeConfig, RuntimeError> {
    match planned_config(bundle, profile, host) {
        Err(RuntimeError::NeedsRequantize { .. }) => {
            Ok(config_of(bundle, profile, &plan(bundle.manifest(), profile), host))
        }
        other => other.map(|(_, config)| config),
    }
}

fn config_of(bundle: &Bundle, profile: &Profile, plan: &Plan, host: Option<&HostInfo>) -> RuntimeConfig {
    let config = RuntimeConfig::from_plan(profile, plan, bundle.manifest().preprocess.audio.sample_rate);
    match host {
        Some(host) => config.with_host(host),
        None => config,
    }
}

impl Pipeline {
    /// Plan the bundle on `profile` before touching its files, refuse what cannot fit
    /// (or needs a requantized LLM), then load it with exactly the plan's settings.
    pub fn planned(bundle_dir: &Path, profile: &Profile, opts: LoadOptions) -> Result<Self, RuntimeError> {
        let bundle = Bundle::open(bundle_dir)?;
        let (plan, mut config) = planned_config(&bundle, profile, opts.host.as_ref())?;
        if let Some(mut providers) = opts.providers {
            providers.tensorrt = config.providers.tensorrt.clone();
            config.providers = providers;
        }
        config.ort_library = opts.ort_library;
        if let Some(dir) = opts.scratch_dir {
            config.scratch_dir = dir;
        }
        if let Some(faces) = opts.faces {
            config.faces = faces;
        }
        let mut pipeline = Self::load(bundle, config)?;
        pipeline.plan = Some(plan);
        Ok(pipeline)
    }

    /// Verify the bundle's files, load every engine and the LLM with `config` as given,
    /// warm the encoders up.
    pub fn load(bundle: Bundle, config: RuntimeConfig) -> Result<Self, RuntimeError> {
        config.faces.check().map_err(|reason| crate::RequestError { field: "faces", reason })?;
        bundle.verify_files()?;
        let rt = init_runtime(config.ort_library.as_deref())?;
        let opts = EngineOptions {
            intra_threads: config.threads,
            policy: config.providers.clone(),
            model_sha256: String::new(),
        };
        let m = bundle.manifest();
        let sample_rate = m.preprocess.audio.sample_rate;
        let in_turn = config.encoders == Residency::InTurn;
        // Each encoder is loaded and warmed up once (which also checks it); in turn, it
        // is then released until a request needs it.
        let encoder_fallbacks = std::cell::RefCell::new(Vec::new());
        let load = |role: Role| -> Result<EncoderSlot, RuntimeError> {
            let e = bundle.required(&role)?;
            let mut opts = EngineOptions { model_sha256: e.sha256.clone(), ..opts.clone() };
            // A Q/DQ file is built quantized (TensorRT's int8 flag) whatever the plan's
            // precision for the bundle's other engines (one kept fp16 beside int8 ones).
            if e.precision.engine() == Some(EnginePrecision::Int8) {
                opts.policy.tensorrt.int8 = true;
            }
            let path = bundle.path_of(e);
            let engine = EncoderEngine::load(rt, role.as_str(), &path, e.inputs.clone(), e.outputs.clone(), &opts)?;
            encoder_fallbacks.borrow_mut().extend(engine.fallbacks().iter().map(|f| format!("{}: {f}", role.as_str())));
            warm_up(&engine, sample_rate)?;
            Ok(if in_turn {
                let provider = engine.provider().to_string();
                EncoderSlot::InTurn {
                    rt,
                    name: role.as_str().into(),
                    path,
                    inputs: e.inputs.clone(),
                    outputs: e.outputs.clone(),
                    opts,
                    provider,
                }
            } else {
                EncoderSlot::Resident(engine)
            })
        };
        let optional = |role: Role| bundle.file(&role).is_some().then(|| load(role)).transpose();
        let encoders = Encoders {
            global: load(Role::GlobalEngine)?,
            local: optional(Role::LocalEngine)?,
            temporal: optional(Role::TemporalEngine)?,
            audio: load(Role::AudioEngine)?,
            fusion: optional(Role::FusionEngine)?,
        };
        let mut projectors = BTreeMap::new();
        for block in crate::features::FeatureFiles::BLOCKS {
            let role = projector_role(block).expect("a features block");
            let Some(e) = bundle.file(&role) else { continue };
            let width =
                e.inputs.iter().find(|i| i.name == FEATURES).and_then(|i| i.shape.last()).and_then(|d| d.fixed());
            let width = width.ok_or_else(|| {
                BundleError::Inconsistent(format!("{}: the `features` input needs a fixed width", e.path))
            })? as usize;
            let opts = EngineOptions { model_sha256: e.sha256.clone(), ..opts.clone() };
            let engine =
                EncoderEngine::load(rt, role.as_str(), &bundle.path_of(e), e.inputs.clone(), e.outputs.clone(), &opts)?;
            warm_up(&engine, sample_rate)?;
            let output = engine_io(m.model, &role).and_then(|io| io.outputs.first()).expect("a projector's contract").0;
            projectors.insert(block, Projector { engine, width, output });
        }
        // Face detection is per frame: one single-threaded detector per worker.
        let face_opts = EngineOptions { intra_threads: 1, ..opts.clone() };
        let mut faces = Vec::new();
        for _ in 0..config.face_detectors {
            match FaceDetector::from_bundle(rt, &bundle, &face_opts, &config.faces)? {
                Some(d) => faces.push(d),
                None => break,
            }
        }
        let zero_rows = read_zero_rows(&bundle)?;
        let audio_log_mel = m.preprocess.audio.log_mel.as_ref().map(|s| {
            let (n_fft, hop, n_mels) = (s.n_fft as usize, s.hop_length as usize, s.n_mels as usize);
            LogMel::new(sample_rate, n_fft, hop, n_mels, s.chunk_samples as usize)
        });
        let asr = Transcriber::load(&bundle, rt, &opts, config.asr)?;
        if let Some(asr) = &asr {
            asr.warm_up()?;
        }
        let llm_entry = bundle.required(&Role::Llm)?;
        let llm = Arc::new(LlmModel::load(
            &bundle.path_of(llm_entry),
            &ModelParams { n_gpu_layers: config.n_gpu_layers, use_mmap: true },
        )?);
        check_llm(m, &llm)?;
        if config.n_ctx > m.llm.n_ctx_train {
            return Err(RuntimeError::ContextTooLong { n_ctx: config.n_ctx, n_ctx_train: m.llm.n_ctx_train });
        }
        // One context made now: its KV cache and compute buffers are memory the first
        // request needs anyway, and a device too small for them fails at load, not at
        // its first request.
        let first_context = LlmContext::new(llm.clone(), config.context_params())?;
        let gpu = emollama_engines::llm::devices().iter().any(|d| d.is_gpu());
        let llm_device = if config.n_gpu_layers > 0 && gpu { "cuda" } else { "cpu" };
        // The encoders' fallbacks were logged by the engines as they loaded.
        let mut fallbacks = encoder_fallbacks.into_inner();
        if emollama_engines::llm::gpu_compiled_in() && config.n_gpu_layers > 0 && !gpu {
            let why = format!("llm: no GPU, on the CPU: {}", emollama_engines::llm::no_gpu_reason());
            tracing::warn!("{why}");
            fallbacks.push(why);
        }
        Ok(Self {
            bundle,
            config,
            plan: None,
            encoders,
            projectors,
            faces,
            zero_rows,
            audio_log_mel,
            asr,
            llm,
            llm_device,
            fallbacks,
            contexts: Mutex::new(vec![first_context]),
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn manifest(&self) -> &Manifest {
        self.bundle.manifest()
    }

    /// The configuration that runs (the plan's settings when loaded by [`Pipeline::planned`]).
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The memory plan this pipeline was loaded from, if any.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    pub fn llm(&self) -> &Arc<LlmModel> {
        &self.llm
    }

    pub(crate) fn encoders(&self) -> &Encoders {
        &self.encoders
    }

    /// The projector-only engine of `block`, for its pre-extracted features.
    pub(crate) fn projector(&self, block: RowBlock) -> Result<&Projector, RuntimeError> {
        self.projectors.get(&block).ok_or_else(|| RuntimeError::NoProjector {
            block,
            role: projector_role(block).unwrap_or(Role::Other(block.to_string())),
        })
    }

    /// Whether this bundle takes pre-extracted features for every one of local, temporal
    /// and audio.
    pub fn takes_features(&self) -> bool {
        self.projectors.len() == crate::features::FeatureFiles::BLOCKS.len()
    }

    /// Each of the model's encoders' provider (one the bundle lacks is "absent") and the
    /// LLM's device (`llm`: `cuda` or `cpu`).
    pub fn providers(&self) -> std::collections::BTreeMap<String, String> {
        let mut out: std::collections::BTreeMap<String, String> = self
            .manifest()
            .model
            .encoders()
            .iter()
            .map(|role| {
                let name = role.as_str().trim_end_matches("_engine").to_string();
                (name, self.encoders.slot(role).map_or("absent".into(), EncoderSlot::provider))
            })
            .collect();
        out.insert("llm".into(), self.llm_device.into());
        if let Some(asr) = &self.asr {
            out.insert("asr".into(), asr.provider());
        }
        out
    }

    /// Speech recognition, when the bundle has its engines.
    pub fn asr(&self) -> Option<&Transcriber> {
        self.asr.as_ref()
    }

    /// Why a GPU provider or device was passed over, one line each (empty: none was).
    pub fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    /// Whether the encoders are loaded one after another (memory plan).
    pub fn encoders_in_turn(&self) -> bool {
        self.config.encoders == Residency::InTurn
    }

    /// Everything about `req` that can be refused without its media: the merged sampling
    /// values of its preset, and whether its prompt (transcript included) fits the context.
    pub fn check_request(&self, req: &AnalyzeRequest) -> Result<(), RuntimeError> {
        self.check_features(&req.features)?;
        self.session(req, CancelToken::new())?.check_fits()
    }

    /// How this pipeline reads a request's sources (its limits, the manifest's audio
    /// rate; a still image only when the request says it sends one).
    pub fn source_options(&self, still: bool) -> SourceOptions {
        SourceOptions {
            still,
            ..SourceOptions::request(self.config.limits.clone(), self.manifest().preprocess.audio.sample_rate)
        }
    }

    /// Open the request's local sources (the media, a separate audio track) and close
    /// them, so that what cannot be read (not media, no video, no audio in the audio
    /// source, a still sent as a video, over the limits) is refused before a slot is
    /// taken; the service calls it before a run. URLs and live sources are read once,
    /// by the run itself.
    pub fn check_media(&self, req: &AnalyzeRequest) -> Result<(), RuntimeError> {
        let opts = self.source_options(req.still);
        let cancel = CancelToken::new();
        let sources = [(Some(req.media.as_str()), req.shown_media(), false)].into_iter().chain([(
            req.audio.as_deref(),
            req.shown_audio().unwrap_or_default(),
            true,
        )]);
        for (source, name, audio) in sources {
            let Some(source) = source.filter(|s| SourceKind::of(s) == SourceKind::File) else { continue };
            let opened = Source::open(source, &opts, &cancel).map_err(|e| e.about(name))?;
            let missing = match audio {
                true if !opened.has_audio() => Some(MediaError::NoAudio { source_name: name.into() }),
                false if opened.info.video.is_none() => Some(MediaError::NoVideo { source_name: name.into() }),
                _ => None,
            };
            if let Some(e) = missing {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Refuse features of a modality this bundle has no projector-only engine for.
    pub fn check_features(&self, features: &crate::features::FeatureFiles) -> Result<(), RuntimeError> {
        for block in crate::features::FeatureFiles::BLOCKS {
            if features.get(block).is_some() {
                self.projector(block)?;
            }
        }
        Ok(())
    }

    /// A session for one request, cancelled through `cancel`.
    pub fn session<'p>(&'p self, req: &AnalyzeRequest, cancel: CancelToken) -> Result<Session<'p>, RuntimeError> {
        Session::new(self, req.clone(), cancel)
    }

    /// A cleared LLM context: a pooled one, else a new one with the configured settings.
    pub(crate) fn take_context(&self) -> Result<LlmContext, RuntimeError> {
        let pooled = self.contexts.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(ctx) => Ok(ctx),
            None => Ok(LlmContext::new(self.llm.clone(), self.config.context_params())?),
        }
    }

    /// Return a context to the pool, cleared.
    pub(crate) fn return_context(&self, mut ctx: LlmContext) {
        ctx.clear();
        let mut pool = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < CONTEXT_POOL {
            pool.push(ctx);
        }
    }
}

/// The LLM file agrees with the manifest: width, special ids, vocabulary.
fn check_llm(m: &Manifest, llm: &LlmModel) -> Result<(), RuntimeError> {
    let mismatch = |what: &'static str, gguf: i64, manifest: i64| RuntimeError::LlmMismatch { what, gguf, manifest };
    let l = &m.llm;
    if llm.n_embd() as u64 != l.embedding_width {
        return Err(mismatch("embedding width", llm.n_embd() as i64, l.embedding_width as i64));
    }
    if llm.bos() != l.bos_id {
        return Err(mismatch("BOS id", i64::from(llm.bos()), i64::from(l.bos_id)));
    }
    if llm.eos() != l.eos_id {
        return Err(mismatch("EOS id", i64::from(llm.eos()), i64::from(l.eos_id)));
    }
    if i64::from(llm.n_vocab()) != l.vocab_size as i64 {
        return Err(mismatch("vocabulary size", i64::from(llm.n_vocab()), l.vocab_size as i64));
    }
    Ok(())
}

fn read_zero_rows(bundle: &Bundle) -> Result<Vec<f32>, RuntimeError> {
    let e = bundle.required(&Role::ZeroRows)?;
    let width = bundle.manifest().llm.embedding_width as usize;
    let path = bundle.path_of(e);
    let bytes = std::fs::read(&path).map_err(|source| BundleError::FileUnreadable { path: path.clone(), source })?;
    let rows: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let expected = bundle.manifest().model.zero_row_blocks().len() * width;
    if rows.len() != expected {
        return Err(
            BundleError::Inconsistent(format!("zero rows hold {} floats, expected {expected}", rows.len())).into()
        );
    }
    Ok(rows)
}
