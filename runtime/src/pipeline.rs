//! The pipeline: a [`Runtime`] built once from a bundle (engines loaded and warmed),
//! serving many [`AnalyzeRequest`]s; each request's state (media, rows, KV cache) is its
//! own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use emollama_bundle::TensorSpec;
use emollama_bundle::{Bundle, Role};
use emollama_devices::Profile;
use emollama_engines::llm::{
    ContextParams, FlashAttention, GenerateOptions, KvCacheType, LlmContext, LlmModel, ModelParams, Sampler,
    SamplingParams, Segment, StopReason,
};
use emollama_engines::onnx::{init_runtime, EncoderEngine, EngineOptions, OrtRuntime, Outputs, ProviderPolicy};
use ndarray::{ArrayD, ArrayViewD};
use serde::{Deserialize, Serialize};

use crate::media::faces::{face_crops, FaceDetector};
use crate::media::{
    decode_audio_16k_mono, decode_frames, face_tensor, global_tensor, temporal_tensor, videomae_indices,
    FrameSelection, MediaError, MediaLimits, RgbImage,
};
use crate::prompt::{build_prompt, extract_label, normalise_scores, PromptLayout, Task};
use crate::RuntimeError;

/// How the runtime runs on this machine (a device profile fills it in).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeConfig {
    pub threads: usize,
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_gpu_layers: i32,
    pub kv_cache_type: KvCacheType,
    pub flash_attention: FlashAttention,
    pub providers: ProviderPolicy,
    pub limits: MediaLimits,
    pub ort_library: Option<PathBuf>,
    /// Shown in results (`device`).
    pub device: String,
    /// When set, the memory plan runs before anything loads and refuses what cannot fit.
    pub profile: Option<Profile>,
}

/// Where TensorRT engines and timing caches go: systemd's `CacheDirectory=` (it sets
/// `$CACHE_DIRECTORY`), else the user's cache.
pub fn engine_cache_dir() -> PathBuf {
    std::env::var_os("CACHE_DIRECTORY")
        .and_then(|v| std::env::split_paths(&v).next())
        .unwrap_or_else(emollama_engines::onnx::library::setup_cache_dir)
        .join("engines")
}

/// TensorRT optimisation-profile ranges (min, opt, max) for the manifest's named
/// dynamic axes, from the media limits.
fn default_dynamic_ranges(limits: &MediaLimits) -> std::collections::BTreeMap<String, [u64; 3]> {
    let max_samples = (limits.max_duration_s * 16000.0) as u64;
    [
        ("batch", [1, 1, 2]),
        ("frames", [1, 16, limits.max_face_frames.max(1) as u64]),
        ("samples", [1600, 160_000.min(max_samples), max_samples.max(1600)]),
        ("height", [12, 360, u64::from(limits.max_height)]),
        ("width", [12, 640, u64::from(limits.max_width)]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl RuntimeConfig {
    /// Key TensorRT engine caches on the board's software too: an engine built under
    /// another L4T or TensorRT is rebuilt, never loaded.
    pub fn with_host(mut self, host: &emollama_devices::HostInfo) -> Self {
        let tensorrt = &mut self.providers.tensorrt;
        tensorrt.device_key = format!(
            "{}-L4T{}-trt{}",
            tensorrt.device_key,
            host.l4t.as_deref().unwrap_or("none"),
            host.tensorrt.as_deref().unwrap_or("none")
        );
        self
    }

    /// The profile's defaults: threads, context, KV cache type, GPU layers.
    pub fn from_profile(profile: &Profile) -> Self {
        let base = Self::default();
        let d = &profile.defaults;
        Self {
            threads: if d.threads == 0 { base.threads } else { d.threads },
            n_ctx: d.n_ctx,
            n_gpu_layers: if cfg!(feature = "llama-cuda") { d.n_gpu_layers } else { 0 },
            kv_cache_type: match d.kv_cache.as_str() {
                "f32" => KvCacheType::F32,
                "q8_0" => KvCacheType::Q8_0,
                "q4_0" => KvCacheType::Q4_0,
                _ => KvCacheType::F16,
            },
            device: profile.display.clone(),
            profile: Some(profile.clone()),
            providers: ProviderPolicy {
                tensorrt: emollama_engines::onnx::TensorRtOptions {
                    fp16: d.encoder_precision == emollama_devices::EncoderPrecision::Fp16,
                    int8: d.encoder_precision == emollama_devices::EncoderPrecision::Int8,
                    cache_root: Some(engine_cache_dir()),
                    device_key: profile.name.clone(),
                    dynamic_ranges: default_dynamic_ranges(&base.limits),
                },
                ..base.providers.clone()
            },
            ..base
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self {
            threads,
            n_ctx: 2048,
            n_batch: 512,
            n_gpu_layers: 0,
            kv_cache_type: KvCacheType::F16,
            flash_attention: FlashAttention::Auto,
            providers: ProviderPolicy::default(),
            limits: MediaLimits::default(),
            ort_library: None,
            device: format!("{} CPU, {threads} threads", std::env::consts::ARCH),
            profile: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// All four encoders online (the product's default).
    Full,
    /// As the released demo: first frame + audio, zero inputs for local and temporal.
    OfficialDemo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Greedy, 500 new tokens (`eval_emotion.py`).
    Eval,
    /// Temperature 0.2, top-p 0.9, top-k 50, repetition penalty 1.05, 500 new tokens,
    /// prompt + answer capped at 2000 (the Gradio demo).
    Demo,
    /// The emotion task answered from the label scores alone: about one prefill.
    Fast,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnalyzeRequest {
    pub media: String,
    pub task: Task,
    pub layout: PromptLayout,
    pub transcript: Option<String>,
    pub mode: Mode,
    pub preset: Preset,
    pub scores: bool,
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub seed: u64,
    /// Write the preprocessed inputs and prompt ids here (for the reference pipeline).
    #[serde(skip)]
    pub dump_inputs: Option<PathBuf>,
}

impl AnalyzeRequest {
    pub fn new(media: impl Into<String>) -> Self {
        Self {
            media: media.into(),
            task: Task::Emotion { six_labels: false },
            layout: PromptLayout::Eval,
            transcript: None,
            mode: Mode::Full,
            preset: Preset::Eval,
            scores: true,
            max_new_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            repetition_penalty: None,
            seed: 0,
            dump_inputs: None,
        }
    }

    fn sampling(&self) -> SamplingParams {
        let base = match self.preset {
            Preset::Demo => {
                SamplingParams { temperature: 0.2, top_k: 50, top_p: 0.9, repetition_penalty: 1.05, seed: self.seed }
            }
            _ => SamplingParams { seed: self.seed, ..SamplingParams::greedy() },
        };
        SamplingParams {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_k: self.top_k.unwrap_or(base.top_k),
            top_p: self.top_p.unwrap_or(base.top_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(base.repetition_penalty),
            seed: base.seed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenCounts {
    pub prompt: usize,
    pub generated: usize,
    pub decode_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleRef {
    pub id: String,
    pub synthetic: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnalyzeResult {
    /// The recognised label (emotion task): from the scores with `--preset fast`, else
    /// from the answer (a label word found in it, else the official extraction).
    pub label: Option<String>,
    /// `eval_emotion.py`'s extraction: last word, anything else → neutral.
    pub label_official: Option<String>,
    pub label_scores: Option<BTreeMap<String, f64>>,
    pub text: String,
    pub task: String,
    pub mode: Mode,
    pub preset: Preset,
    pub transcript_used: bool,
    pub stop: Option<StopReason>,
    /// The answer's token ids (for checks against a reference).
    pub answer_tokens: Vec<i32>,
    /// What fell back to the official behaviour, and why (no audio, no face, …).
    pub notes: Vec<String>,
    pub timings_ms: BTreeMap<String, f64>,
    pub tokens: TokenCounts,
    pub providers: BTreeMap<String, String>,
    pub bundle: BundleRef,
    pub device: String,
}

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
    fn run(&self, inputs: &[(&str, ArrayViewD<'_, f32>)]) -> Result<Outputs, RuntimeError> {
        match self {
            EncoderSlot::Resident(e) => Ok(e.run(inputs)?),
            EncoderSlot::InTurn { rt, name, path, inputs: i, outputs: o, opts, .. } => {
                let engine = EncoderEngine::load(rt, name, path, i.clone(), o.clone(), opts)?;
                Ok(engine.run(inputs)?) // the session is released here
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

/// Loaded once, shared by every request.
pub struct Runtime {
    bundle: Bundle,
    config: RuntimeConfig,
    /// Loaded one after another (the plan's "fits with encoders loaded in turn").
    in_turn: bool,
    global: EncoderSlot,
    local: EncoderSlot,
    temporal: EncoderSlot,
    audio: EncoderSlot,
    /// One MTCNN per worker thread (empty when the bundle ships no face detector).
    faces: Vec<FaceDetector>,
    /// Rows of zero features, [local, temporal, audio] × width.
    zero_rows: Vec<f32>,
    llm: Arc<LlmModel>,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Runtime {
    /// Verify the bundle, load every engine and the LLM, warm the encoders up.
    pub fn new(bundle_dir: &Path, config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let bundle = Bundle::open(bundle_dir)?;
        // Plan before touching the files: a bundle that cannot fit is refused here, not
        // killed by the OOM killer halfway through loading; one that fits only with the
        // encoders loaded in turn gets them that way.
        let mut in_turn = false;
        if let Some(profile) = &config.profile {
            let plan = emollama_devices::plan(bundle.manifest(), profile);
            tracing::info!(profile = %profile.name, outcome = ?plan.outcome, "{}", plan.message);
            match plan.outcome {
                emollama_devices::Outcome::DoesNotFit => {
                    return Err(RuntimeError::DoesNotFit {
                        bundle: bundle.manifest().id.clone(),
                        profile: profile.display.clone(),
                        message: plan.message,
                    })
                }
                emollama_devices::Outcome::FitsInTurn => in_turn = true,
                emollama_devices::Outcome::FitsResident => {}
            }
        }
        bundle.verify_files()?;
        let rt = init_runtime(config.ort_library.as_deref())?;
        let opts = EngineOptions {
            intra_threads: config.threads,
            policy: config.providers.clone(),
            model_sha256: String::new(),
        };
        let m = bundle.manifest();
        let sr = m.preprocess.audio.sample_rate as usize;
        // Each encoder is loaded and warmed up once (which also checks it); in turn, it
        // is then released until a request needs it.
        let load = |role: Role| -> Result<EncoderSlot, RuntimeError> {
            let e = bundle.file(&role).ok_or(emollama_bundle::BundleError::MissingRole(role.clone()))?;
            let opts = EngineOptions { model_sha256: e.sha256.clone(), ..opts.clone() };
            let path = bundle.path_of(e);
            let engine = EncoderEngine::load(rt, role.as_str(), &path, e.inputs.clone(), e.outputs.clone(), &opts)?;
            engine.warm_up(&|axis| if axis == "samples" { sr } else { 1 })?;
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
        let (global, local, temporal, audio) = (
            load(Role::GlobalEngine)?,
            load(Role::LocalEngine)?,
            load(Role::TemporalEngine)?,
            load(Role::AudioEngine)?,
        );
        // Face detection is per frame: one detector per core, single-threaded each.
        let face_opts = EngineOptions { intra_threads: 1, ..opts.clone() };
        let mut faces = Vec::new();
        for _ in 0..config.threads.clamp(1, 8) {
            match FaceDetector::from_bundle(rt, &bundle, &face_opts)? {
                Some(d) => faces.push(d),
                None => break,
            }
        }
        let width = m.llm.embedding_width as usize;
        let zero_rows = match bundle.file(&Role::ZeroRows) {
            Some(e) => {
                let path = bundle.path_of(e);
                let bytes = std::fs::read(&path)
                    .map_err(|source| emollama_bundle::BundleError::FileUnreadable { path: path.clone(), source })?;
                let rows: Vec<f32> =
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                if rows.len() != 3 * width {
                    return Err(emollama_bundle::BundleError::Inconsistent(format!(
                        "zero rows hold {} floats, expected {}",
                        rows.len(),
                        3 * width
                    ))
                    .into());
                }
                rows
            }
            None => return Err(emollama_bundle::BundleError::MissingRole(Role::ZeroRows).into()),
        };
        let llm_entry = bundle.file(&Role::Llm).expect("open() checked the llm role");
        let llm = Arc::new(LlmModel::load(
            &bundle.path_of(llm_entry),
            &ModelParams { n_gpu_layers: config.n_gpu_layers, use_mmap: true },
        )?);
        if llm.n_embd() != width {
            return Err(RuntimeError::LlmWidthMismatch { gguf: llm.n_embd() as u64, manifest: width as u64 });
        }
        Ok(Self { bundle, config, in_turn, global, local, temporal, audio, faces, zero_rows, llm })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn providers(&self) -> BTreeMap<String, String> {
        [("global", &self.global), ("local", &self.local), ("temporal", &self.temporal), ("audio", &self.audio)]
            .iter()
            .map(|(n, e)| (n.to_string(), e.provider()))
            .collect()
    }

    /// Whether the encoders are loaded one after another (memory plan).
    pub fn encoders_in_turn(&self) -> bool {
        self.in_turn
    }

    fn context_params(&self) -> ContextParams {
        ContextParams {
            n_ctx: self.config.n_ctx,
            n_batch: self.config.n_batch,
            n_threads: self.config.threads as i32,
            n_threads_batch: self.config.threads as i32,
            flash_attention: self.config.flash_attention,
            kv_cache_type: self.config.kv_cache_type,
        }
    }

    /// Run one request. `on_piece` receives the answer's text as it is generated.
    pub fn analyze(
        &self,
        req: &AnalyzeRequest,
        cancel: Option<&AtomicBool>,
        mut on_piece: impl FnMut(&str),
    ) -> Result<AnalyzeResult, RuntimeError> {
        let started = Instant::now();
        let m = self.bundle.manifest();
        let width = m.llm.embedding_width as usize;
        let mut timings = BTreeMap::new();
        let mut notes = Vec::new();
        let limits = &self.config.limits;

        // Media: frames for the global encoder, and every frame (capped) for faces.
        let t = Instant::now();
        let mut selections = vec![FrameSelection::First];
        if req.mode == Mode::Full {
            selections.push(FrameSelection::AllCapped(limits.max_face_frames));
        }
        let decoded = decode_frames(&req.media, limits, &selections)?;
        timings.insert("decode_video".into(), ms(t));
        let t = Instant::now();
        let waveform = match decode_audio_16k_mono(&req.media, limits, m.preprocess.audio.sample_rate) {
            Ok(w) => Some(w),
            Err(MediaError::NoAudio { .. }) | Err(MediaError::NoSamples { .. }) => {
                notes.push("no audio track: the audio row is the zero-feature row (projector bias)".into());
                None
            }
            Err(e) => return Err(e.into()),
        };
        timings.insert("decode_audio".into(), ms(t));

        let mut dump = Dump::new(req.dump_inputs.as_deref());
        dump.tensor("zero_rows", &ArrayD::from_shape_vec(vec![3, width], self.zero_rows.clone()).expect("3 x width"))?;

        // Global: first frame, 448² bicubic, CLIP normalisation.
        let t = Instant::now();
        let g = &m.preprocess.global;
        let first = decoded.select(FrameSelection::First)[0];
        let pixels = global_tensor(first, g.image_size, g.mean, g.std).into_dyn();
        dump.tensor("pixel_values", &pixels)?;
        let out = self.global.run(&[("pixel_values", pixels.view())])?;
        let (patch_rows, cls_row) = (&out[0].1, &out[1].1);
        timings.insert("global_encoder".into(), ms(t));

        // Faces → local (all crops) and temporal (16 crops, VideoMAE sampling).
        let zero = |i: usize| self.zero_rows[i * width..(i + 1) * width].to_vec();
        let (mut local_row, mut temporal_row) = (zero(0), zero(1));
        if req.mode == Mode::Full {
            let t = Instant::now();
            let crops = match self.faces.is_empty() {
                false => {
                    let idx = FrameSelection::AllCapped(limits.max_face_frames).indices(decoded.total);
                    face_crops(&self.faces, idx.iter().filter_map(|i| decoded.frames.get(i).map(|f| (*i, f))))?.crops
                }
                true => {
                    notes.push(
                        "the bundle has no face detector: local and temporal rows are the zero-feature rows".into(),
                    );
                    Vec::new()
                }
            };
            timings.insert("faces".into(), ms(t));
            if crops.is_empty() && !self.faces.is_empty() {
                notes.push(
                    "no face found: local and temporal rows are the zero-feature rows (as the official demo)".into(),
                );
            }
            if !crops.is_empty() {
                let images: Vec<RgbImage> = crops.into_iter().map(|(_, c)| c).collect();
                let f = &m.preprocess.face;
                let t = Instant::now();
                let faces = face_tensor(&images, f.image_size, f.scale).into_dyn();
                dump.tensor("faces", &faces)?;
                local_row = self.local.run(&[("faces", faces.view())])?[0].1.iter().copied().collect();
                timings.insert("local_encoder".into(), ms(t));
                let t = Instant::now();
                let tp = &m.preprocess.temporal;
                let picks: Vec<RgbImage> =
                    videomae_indices(images.len(), tp.segments as usize, tp.frames_per_segment as usize)
                        .into_iter()
                        .map(|i| images[i].clone())
                        .collect();
                let clip = temporal_tensor(&picks, tp.image_size, f.scale).into_dyn();
                dump.tensor("clip", &clip)?;
                temporal_row = self.temporal.run(&[("clip", clip.view())])?[0].1.iter().copied().collect();
                timings.insert("temporal_encoder".into(), ms(t));
            }
        } else {
            notes.push("official-demo mode: local and temporal rows are the zero-feature rows".into());
        }

        // Audio.
        let audio_row = match &waveform {
            Some(w) => {
                let t = Instant::now();
                let wave = ArrayD::from_shape_vec(vec![1, w.len()], w.clone()).expect("1 x samples");
                dump.tensor("waveform", &wave)?;
                let row: Vec<f32> = self.audio.run(&[("waveform", wave.view())])?[0].1.iter().copied().collect();
                timings.insert("audio_encoder".into(), ms(t));
                row
            }
            None => zero(2),
        };

        // The 260 rows in the official order: [global patches, local, temporal, audio, CLS].
        let mut rows = Vec::with_capacity(m.rows.total() as usize * width);
        rows.extend(patch_rows.iter());
        rows.extend(&local_row);
        rows.extend(&temporal_row);
        rows.extend(&audio_row);
        rows.extend(cls_row.iter());

        // Prompt.
        let t = Instant::now();
        let prompt = build_prompt(req.layout, &req.task, req.transcript.as_deref());
        let before = self.llm.tokenize(&prompt.before_rows, true, true)?;
        let after = self.llm.tokenize(&prompt.after_rows, false, true)?;
        let labels = req.task.labels();
        let label_ids: Vec<Vec<i32>> =
            labels.iter().map(|l| self.llm.tokenize(l, false, false)).collect::<Result<_, _>>()?;
        let prompt_len = before.len() + rows.len() / width + after.len();
        timings.insert("prompt".into(), ms(t));
        let max_new = req.max_new_tokens.unwrap_or(500);
        dump.prompt(&before, &after, labels, &label_ids, max_new)?;

        let t = Instant::now();
        let mut ctx = LlmContext::new(self.llm.clone(), self.context_params())?;
        ctx.prefill(&[Segment::Tokens(&before), Segment::Embeddings(&rows), Segment::Tokens(&after)], false)?;
        timings.insert("prefill".into(), ms(t));

        let is_emotion = matches!(req.task, Task::Emotion { .. });
        let want_scores = is_emotion && (req.scores || req.preset == Preset::Fast);
        let mut label_scores = None;
        if want_scores {
            let t = Instant::now();
            let lps = ctx.continuation_logprobs(&label_ids)?;
            let probs = normalise_scores(&lps);
            label_scores = Some(labels.iter().map(|l| l.to_string()).zip(probs).collect::<BTreeMap<_, _>>());
            timings.insert("label_scores".into(), ms(t));
        }

        let (text, answer_tokens, stop, decode_per_s) = if req.preset == Preset::Fast && is_emotion {
            (String::new(), Vec::new(), None, 0.0)
        } else {
            // The demo caps prompt + answer at 2000 positions (it drops rows; we shorten the answer).
            let cap = if req.preset == Preset::Demo { 2000usize.saturating_sub(prompt_len).max(1) } else { usize::MAX };
            let opts = GenerateOptions { max_new_tokens: max_new.min(cap), stop_strings: vec!["###".into()] };
            let mut sampler = Sampler::new(req.sampling())?;
            let t = Instant::now();
            let before_generation = ms(started);
            let g = ctx.generate(&mut sampler, &opts, cancel, |piece| {
                on_piece(piece);
                std::ops::ControlFlow::Continue(())
            })?;
            // Time to first token, from the start of the request.
            timings.insert("first_token".into(), before_generation + g.first_token_ms);
            timings.insert("generation".into(), ms(t));
            let rate = g.decode_per_s();
            (g.text.trim().to_string(), g.tokens, Some(g.stop), rate)
        };

        let (label, label_official) = if is_emotion {
            match (&label_scores, req.preset) {
                (Some(s), Preset::Fast) => {
                    let best = s.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(l, _)| l.clone());
                    (best.clone(), best)
                }
                _ => {
                    let e = extract_label(&text, labels);
                    (Some(e.robust.unwrap_or_else(|| e.official.clone())), Some(e.official))
                }
            }
        } else {
            (None, None)
        };
        timings.insert("total".into(), ms(started));
        Ok(AnalyzeResult {
            label,
            label_official,
            label_scores,
            text,
            task: req.task.name().into(),
            mode: req.mode,
            preset: req.preset,
            transcript_used: req.transcript.as_deref().is_some_and(|t| !t.trim().is_empty()),
            stop,
            notes,
            timings_ms: timings,
            tokens: TokenCounts { prompt: prompt_len, generated: answer_tokens.len(), decode_per_s },
            answer_tokens,
            providers: self.providers(),
            bundle: BundleRef { id: m.id.clone(), synthetic: m.synthetic },
            device: self.config.device.clone(),
        })
    }
}

/// Writes the exact inputs of a request for the reference pipeline (`--dump-inputs`).
struct Dump<'a> {
    dir: Option<&'a Path>,
    tensors: serde_json::Map<String, serde_json::Value>,
}

impl<'a> Dump<'a> {
    fn new(dir: Option<&'a Path>) -> Self {
        Self { dir, tensors: Default::default() }
    }

    fn io(path: &Path, e: std::io::Error) -> RuntimeError {
        RuntimeError::Io { path: path.to_path_buf(), source: e }
    }

    fn tensor(&mut self, name: &str, a: &ArrayD<f32>) -> Result<(), RuntimeError> {
        let Some(dir) = self.dir else { return Ok(()) };
        std::fs::create_dir_all(dir).map_err(|e| Self::io(dir, e))?;
        let view: ArrayViewD<'_, f32> = a.view();
        let bytes: Vec<u8> = view.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = dir.join(format!("{name}.f32"));
        std::fs::write(&path, bytes).map_err(|e| Self::io(&path, e))?;
        self.tensors.insert(name.into(), serde_json::json!({"file": format!("{name}.f32"), "shape": a.shape()}));
        Ok(())
    }

    fn prompt(
        &self,
        before: &[i32],
        after: &[i32],
        labels: &[&str],
        ids: &[Vec<i32>],
        max_new: usize,
    ) -> Result<(), RuntimeError> {
        let Some(dir) = self.dir else { return Ok(()) };
        let labels: serde_json::Map<String, serde_json::Value> =
            labels.iter().zip(ids).map(|(l, i)| (l.to_string(), serde_json::json!(i))).collect();
        let index = serde_json::json!({
            "tensors": self.tensors,
            "prompt": {"before_rows": before, "after_rows": after},
            "labels": labels,
            "max_new_tokens": max_new,
        });
        let path = dir.join("index.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&index).expect("json")).map_err(|e| Self::io(&path, e))
    }
}
