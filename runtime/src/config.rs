//! How the pipeline runs on this machine. A device profile's memory plan fills it in
//! ([`RuntimeConfig::from_plan`]): the settings the planner chose are the settings that
//! load, field for field.

use std::path::PathBuf;

use emollama_bundle::locations::setup_cache_dir;
use emollama_bundle::{EnginePrecision, KvType};
use emollama_devices::{AsrPlacement, HostInfo, Plan, Profile, Residency};
use emollama_engines::llm::{ContextParams, FlashAttention};
use emollama_engines::onnx::{ProviderPolicy, TensorRtOptions};
use emollama_media::faces::FaceSearch;
use emollama_media::MediaLimits;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RuntimeConfig {
    pub threads: usize,
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_gpu_layers: i32,
    pub kv_type: KvType,
    pub flash_attention: FlashAttention,
    /// Encoders kept loaded, or loaded for each use and released after.
    pub encoders: Residency,
    /// Speech recognition kept loaded, loaded for each use, or on the CPU provider.
    pub asr: AsrPlacement,
    /// Single-threaded MTCNN detectors working on frames in parallel (0: none loaded).
    pub face_detectors: usize,
    /// How the face stage searches (smallest face, detection cadence, the face gate).
    pub faces: FaceSearch,
    pub providers: ProviderPolicy,
    pub limits: MediaLimits,
    /// Where a URL source is fetched to for the request's decoding (the service sets its
    /// private upload folder).
    pub scratch_dir: PathBuf,
    pub ort_library: Option<PathBuf>,
    /// Shown in results (`device`).
    pub device: String,
}

/// Where TensorRT engines and timing caches go: systemd's `CacheDirectory=` (it sets
/// `$CACHE_DIRECTORY`), else the user's cache.
pub fn engine_cache_dir() -> PathBuf {
    std::env::var_os("CACHE_DIRECTORY")
        .and_then(|v| std::env::split_paths(&v).next())
        .unwrap_or_else(setup_cache_dir)
        .join("engines")
}

/// TensorRT optimisation-profile ranges (min, opt, max) for the manifest's named
/// dynamic axes, from the media limits.
fn dynamic_ranges(limits: &MediaLimits, sample_rate: u32) -> std::collections::BTreeMap<String, [u64; 3]> {
    let rate = f64::from(sample_rate);
    let max_samples = (limits.max_duration_s * rate) as u64;
    let min_samples = (rate / 10.0) as u64;
    [
        ("batch", [1, 1, 2]),
        ("frames", [1, 16, limits.max_face_frames.max(1) as u64]),
        ("samples", [min_samples, (10.0 * rate) as u64, max_samples.max(min_samples)]),
        ("height", [12, 360, u64::from(limits.max_height)]),
        ("width", [12, 640, u64::from(limits.max_width)]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), [v[0], v[1].min(v[2]), v[2]]))
    .collect()
}

impl RuntimeConfig {
    /// The plan's settings on the plan's profile: KV type, context, batch, residency,
    /// face detectors, threads and encoder precision, exactly as planned.
    pub fn from_plan(profile: &Profile, plan: &Plan, sample_rate: u32) -> Self {
        let base = Self::default();
        let s = &plan.settings;
        Self {
            threads: s.threads,
            n_ctx: s.n_ctx,
            n_batch: s.n_batch,
            n_gpu_layers: if emollama_engines::llm::gpu_compiled_in() { profile.defaults.n_gpu_layers } else { 0 },
            kv_type: s.kv_type,
            encoders: s.encoders,
            asr: s.asr.unwrap_or_default(),
            face_detectors: s.face_detectors,
            device: profile.display.clone(),
            providers: ProviderPolicy {
                tensorrt: TensorRtOptions {
                    fp16: s.encoder_precision == EnginePrecision::Fp16,
                    int8: s.encoder_precision == EnginePrecision::Int8,
                    cache_root: Some(engine_cache_dir()),
                    device_key: profile.name.clone(),
                    dynamic_ranges: dynamic_ranges(&base.limits, sample_rate),
                    exact_shapes: Default::default(),
                },
                ..base.providers.clone()
            },
            ..base
        }
    }

    /// Key TensorRT engine caches on the board's software too: an engine built under
    /// another L4T or TensorRT is rebuilt, never loaded.
    pub fn with_host(mut self, host: &HostInfo) -> Self {
        let tensorrt = &mut self.providers.tensorrt;
        tensorrt.device_key = format!(
            "{}-L4T{}-trt{}",
            tensorrt.device_key,
            host.l4t.as_deref().unwrap_or("none"),
            host.tensorrt.as_deref().unwrap_or("none")
        );
        self
    }

    /// llama.cpp's context for one request.
    pub fn context_params(&self) -> ContextParams {
        ContextParams {
            n_ctx: self.n_ctx,
            n_batch: self.n_batch,
            n_threads: self.threads as i32,
            n_threads_batch: self.threads as i32,
            flash_attention: self.flash_attention,
            kv_cache_type: self.kv_type,
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
            kv_type: KvType::F16,
            flash_attention: FlashAttention::Auto,
            encoders: Residency::Resident,
            asr: AsrPlacement::Resident,
            face_detectors: threads.clamp(1, emollama_devices::MAX_FACE_DETECTORS),
            faces: FaceSearch::default(),
            providers: ProviderPolicy::default(),
            limits: MediaLimits::default(),
            scratch_dir: std::env::temp_dir(),
            ort_library: None,
            device: format!("{} CPU, {threads} threads", std::env::consts::ARCH),
        }
    }
}
