//! The memory planner: from a bundle manifest and a device profile, how much memory each
//! part needs, whether it all fits (resident, or with the encoders loaded in turn), and
//! the smallest set of changes that makes it fit. Its [`PlanSettings`] are the
//! configuration: the runtime loads exactly those (KV type, context, batch, encoder
//! precision and residency, face detectors), so a plan that says "fits with q8_0 KV"
//! runs a q8_0 KV cache. The runtime plans before loading anything, so a bundle that
//! cannot fit is refused instead of being OOM-killed halfway.
//!
//! Estimates (documented, conservative): KV cache = 2 × layers × n_ctx × kv width ×
//! element size; llama.cpp compute buffers = 64 MiB + logits (vocab × n_batch × 4) + 6
//! activations of n_embd × n_batch × 4; an encoder engine on a GPU = its parameters at
//! the engine precision + 15 % workspace; on a CPU, as measured on the full-size export
//! with ONNX Runtime 1.31 (see [`CPU_ENGINE_RESIDENT`]); a face-detector session = its
//! file + 15 % + 4 MiB of arena, once per detector; CUDA/TensorRT contexts 0.5 GB on GPU
//! profiles. Speech recognition's engines are counted the same way where they run
//! (resident, in turn, or on the CPU: [`AsrPlacement`]), plus their decoding state.

use emollama_bundle::{EnginePrecision, GgufType, KvType, Manifest, Precision, Role};
use serde::Serialize;

use crate::profile::{AsrPlacement, Profile, Residency};

const GB: f64 = 1e9;
const MIB: f64 = 1024.0 * 1024.0;

/// ONNX Runtime's CPU provider computes every engine in fp32 (it folds the casts of an
/// fp16-stored file's weights at load) and, once a session has run, holds about this
/// many times the fp32 weights: the initializers, what it keeps of the model, the arena.
/// Measured on the full-size export: EVA-g 6.1 GB for 4.2 GB of fp32 weights; the ViT-L
/// and HuBERT-L engines 2.4–2.8 GB for 1.2–1.3 GB (the 64-frame MAE batch the most).
pub const CPU_ENGINE_RESIDENT: f64 = 1.55;
/// While it folds an fp16-stored file, a CPU session briefly needs the fp16 model and the
/// fp32 weights at once: EVA-g peaked at 10.7 GB (2.55 × its fp32 weights) while loading.
pub const CPU_ENGINE_LOADING_FP16: f64 = 2.55;
/// A Q/DQ int8 file on the CPU provider keeps its weights in int8 (the quantized kernels'
/// packed copies beside them) and, once a session has run, its batch's activations, which
/// stay the same size as at fp32: resident, and at its loading peak (the same: nothing to
/// fold), about this many times the file. Measured on the full-size int8 bundle
/// (`scripts/bench-quantized`, ONNX Runtime 1.31, 2 threads): 5.78 GB for 2.01 GB of
/// files, per engine from 1.9× (EVA-g) to 6.9× (MAE after a 64-crop batch, whose
/// activations are 1.5 GB); the factor is the whole set's, so a total, and the largest
/// engine loaded in turn, are not under what the files hold.
pub const CPU_INT8_RESIDENT: f64 = 2.9;

/// Face detection runs one single-threaded MTCNN per core, up to this many.
pub const MAX_FACE_DETECTORS: usize = 8;

/// What the runtime loads: the plan's choice, applied as it is.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlanSettings {
    /// The LLM's GGUF type. When it differs from the bundle's, the bundle must be
    /// requantized first ([`Plan::requantize`]); the runtime cannot change it.
    pub llm_type: GgufType,
    pub n_ctx: u32,
    pub n_batch: u32,
    pub kv_type: KvType,
    /// The encoders' precision (TensorRT on GPU profiles; on a CPU, the files' own).
    pub encoder_precision: EnginePrecision,
    /// Whether the encoders stay loaded or are loaded for each use, one at a time.
    pub encoders: Residency,
    /// Where speech recognition runs (None: the bundle has none).
    pub asr: Option<AsrPlacement>,
    pub threads: usize,
    pub face_detectors: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanParts {
    pub llm_weights: u64,
    pub kv_cache: u64,
    pub compute_buffers: u64,
    /// Per encoder role, at the engine precision, with workspace, once loaded.
    pub encoders: Vec<(String, u64)>,
    /// The most one encoder needs while it loads (above its resident figure on a CPU
    /// for an fp16-stored file).
    pub encoder_load_peak: u64,
    /// Every face-detector session (three nets per detector).
    pub face_detectors: u64,
    /// Speech recognition in the planned memory, at its placement: its three engines (as
    /// the encoders are counted, plus the largest one's loading peak) and its decoding
    /// state (every layer's cross-attention keys and values and the self-attention cache
    /// at the longest sequence, in and out). 0 when it has none or it is on the CPU
    /// beside a discrete GPU (then [`PlanParts::asr_host`]).
    pub asr: u64,
    /// Speech recognition in host memory, outside the planned GPU memory (on the CPU
    /// beside a discrete GPU).
    pub asr_host: u64,
    pub runtime_contexts: u64,
    pub os_reserve: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    FitsResident,
    FitsInTurn,
    DoesNotFit,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub profile: String,
    pub bundle: String,
    pub usable_bytes: u64,
    pub settings: PlanSettings,
    pub parts: PlanParts,
    pub resident_total: u64,
    pub in_turn_total: u64,
    pub outcome: Outcome,
    /// Changes from the profile's defaults that the outcome needs (empty: none).
    pub changes: Vec<String>,
    pub message: String,
}

impl Plan {
    /// The GGUF type the bundle must be requantized to before it can run as planned.
    pub fn requantize(&self, m: &Manifest) -> Option<GgufType> {
        (bundle_llm_type(m) != Some(self.settings.llm_type)).then_some(self.settings.llm_type)
    }
}

fn bundle_llm_type(m: &Manifest) -> Option<GgufType> {
    m.files.iter().find(|f| f.role == Role::Llm).and_then(|f| f.precision.gguf())
}

fn engine_file_precision(p: Precision) -> EnginePrecision {
    p.engine().unwrap_or(EnginePrecision::Fp32)
}

fn parts(m: &Manifest, p: &Profile, s: &PlanSettings) -> PlanParts {
    let llm = &m.llm;
    let file = m.files.iter().find(|f| f.role == Role::Llm);
    // The bundle's own file when its type is the one planned, else an estimate.
    let llm_weights = match file {
        Some(f) if f.precision == Precision::Gguf(s.llm_type) => f.size,
        _ => (llm.n_params as f64 * s.llm_type.bits_per_weight() / 8.0) as u64,
    };
    let kv_width = f64::from(llm.n_head_kv) * f64::from(llm.head_dim);
    let kv_cache =
        (2.0 * f64::from(llm.n_layer) * f64::from(s.n_ctx) * kv_width * s.kv_type.bytes_per_element()) as u64;
    let nb = f64::from(s.n_batch.min(s.n_ctx));
    let compute_buffers =
        (64.0 * MIB + llm.vocab_size as f64 * nb * 4.0 + 6.0 * llm.embedding_width as f64 * nb * 4.0) as u64;
    let engine_bytes = |f: &emollama_bundle::FileEntry, on_gpu: bool| {
        let stored = engine_file_precision(f.precision);
        let params = f.size as f64 / stored.bytes_per_param();
        if on_gpu {
            // A Q/DQ file is built at int8 whatever the plan's precision for the others.
            let built = if stored == EnginePrecision::Int8 { stored } else { s.encoder_precision };
            let bytes = (params * built.bytes_per_param() * 1.15) as u64;
            (bytes, bytes)
        } else if stored == EnginePrecision::Int8 {
            // Q/DQ graphs keep their int8 weights on the CPU provider (quantized kernels).
            let file = f.size as f64;
            let bytes = (file * CPU_INT8_RESIDENT) as u64;
            (bytes, bytes)
        } else {
            let fp32 = params * EnginePrecision::Fp32.bytes_per_param();
            let loading = if stored == EnginePrecision::Fp16 { CPU_ENGINE_LOADING_FP16 } else { CPU_ENGINE_RESIDENT };
            ((fp32 * CPU_ENGINE_RESIDENT) as u64, (fp32 * loading) as u64)
        }
    };
    let engines: Vec<(String, u64, u64)> = m
        .model
        .row_engines()
        .iter()
        .filter_map(|r| m.files.iter().find(|f| &f.role == r))
        .map(|f| {
            let (resident, loading) = engine_bytes(f, p.has_gpu());
            (f.role.to_string(), resident, loading)
        })
        .collect();
    let asr_on_cpu = s.asr == Some(AsrPlacement::Cpu);
    let asr = m.asr.as_ref().map_or(0, |a| {
        let sizes: Vec<(u64, u64)> = Role::ASR
            .iter()
            .filter_map(|r| m.files.iter().find(|f| &f.role == r && f.format == emollama_bundle::FileFormat::Onnx))
            .map(|f| engine_bytes(f, p.has_gpu() && !asr_on_cpu))
            .collect();
        // Resident together; the one loading last may briefly need more (an fp16-stored
        // graph on a CPU: whisper-large-v3 peaked 2 GB over its resident figure).
        let engines = sizes.iter().map(|s| s.0).sum::<u64>() + sizes.iter().map(|s| s.1 - s.0).max().unwrap_or(0);
        let per_position = 2.0 * f64::from(a.decoder_layers) * f64::from(a.heads) * f64::from(a.head_dim) * 4.0;
        let state = 2.0 * per_position * f64::from(a.audio_positions + a.max_length);
        engines + state as u64
    });
    // Beside a discrete GPU, the CPU's share is host memory: not in the planned budget.
    let (asr, asr_host) = if asr_on_cpu && p.has_gpu() && !p.unified_memory { (0, asr) } else { (asr, 0) };
    let encoder_load_peak = engines.iter().map(|e| e.2).max().unwrap_or(0);
    let encoders = engines.into_iter().map(|(role, resident, _)| (role, resident)).collect();
    let face_nets: f64 =
        m.files.iter().filter(|f| Role::FACE_NETS.contains(&f.role)).map(|f| f.size as f64 * 1.15 + 4.0 * MIB).sum();
    let face_detectors = (face_nets * s.face_detectors as f64) as u64;
    let runtime_contexts = if p.has_gpu() { (0.5 * GB) as u64 } else { (0.1 * GB) as u64 };
    let os_reserve = ((p.memory_total_gb - p.usable_headless_gb).max(0.0) * GB) as u64;
    PlanParts {
        llm_weights,
        kv_cache,
        compute_buffers,
        encoders,
        encoder_load_peak,
        face_detectors,
        asr,
        asr_host,
        runtime_contexts,
        os_reserve,
    }
}

/// The memory needed with every encoder resident, and with the encoders loaded in turn.
fn totals(parts: &PlanParts, asr: Option<AsrPlacement>) -> (u64, u64) {
    // Saturating: the sizes come from a manifest, and a damaged one's sum must read as
    // "does not fit", not overflow (found by fuzzing `manifest`).
    let sum = |xs: &[u64]| xs.iter().fold(0u64, |a, b| a.saturating_add(*b));
    let base =
        sum(&[parts.llm_weights, parts.kv_cache, parts.compute_buffers, parts.runtime_contexts, parts.face_detectors]);
    let all = parts.encoders.iter().fold(0u64, |a, e| a.saturating_add(e.1));
    // Loading an encoder can briefly need more than it keeps (an fp16 file on a CPU); in
    // turn, that happens at every use.
    let max = parts.encoders.iter().map(|e| e.1).max().unwrap_or(0).max(parts.encoder_load_peak);
    let resident = sum(&[base, all.max(parts.encoder_load_peak), parts.asr]);
    // Recognition in turn is released before the encoders load: one more in the rotation.
    let in_turn = match asr {
        Some(AsrPlacement::InTurn) => base.saturating_add(max.max(parts.asr)),
        _ => sum(&[base, max, parts.asr]),
    };
    (resident, in_turn)
}

/// Plan `manifest` on `profile` (its defaults), searching for the fewest changes that
/// fit when the defaults do not.
pub fn plan(m: &Manifest, p: &Profile) -> Plan {
    let usable = (p.usable_headless_gb * GB) as u64;
    let (defaults, forced) = default_settings(m, p);
    let in_turn_allowed = p.defaults.encoder_residency == Residency::InTurn;
    let evaluate = |s: &PlanSettings| {
        let parts = parts(m, p, s);
        let (resident, in_turn) = totals(&parts, s.asr);
        let outcome = if resident <= usable {
            Outcome::FitsResident
        } else if in_turn <= usable {
            Outcome::FitsInTurn
        } else {
            Outcome::DoesNotFit
        };
        (parts, resident, in_turn, outcome)
    };
    let candidates = candidates(&defaults, p, m.llm.head_dim);
    let acceptable = |o: Outcome| o == Outcome::FitsResident || (in_turn_allowed && o == Outcome::FitsInTurn);
    let chosen = candidates
        .iter()
        .map(|(s, ch)| (s, ch, evaluate(s)))
        .find(|(_, _, e)| acceptable(e.3))
        // Without in-turn loading in the profile, loading in turn is itself a change.
        .or_else(|| candidates.iter().map(|(s, ch)| (s, ch, evaluate(s))).find(|(_, _, e)| e.3 == Outcome::FitsInTurn));
    let (mut settings, mut changes, (parts, resident, in_turn, outcome)) = match chosen {
        Some((s, ch, e)) => (s.clone(), ch.clone(), e),
        None => (defaults.clone(), Vec::new(), evaluate(&defaults)),
    };
    changes.splice(0..0, forced);
    if outcome == Outcome::FitsInTurn {
        settings.encoders = Residency::InTurn;
    }
    let message = message(outcome, &changes, &settings, &parts, (resident, in_turn, usable), p);
    Plan {
        profile: p.name.clone(),
        bundle: m.id.clone(),
        usable_bytes: usable,
        settings,
        parts,
        resident_total: resident,
        in_turn_total: in_turn,
        outcome,
        changes,
        message,
    }
}

/// What the profile proposes for this bundle, and the changes forced on it before any
/// fitting (a KV type the head size cannot hold).
fn default_settings(m: &Manifest, p: &Profile) -> (PlanSettings, Vec<String>) {
    // The bundle's own LLM type is what loads; the profile's type is a proposal.
    let bundle_type = bundle_llm_type(m);
    // A CPU runs each encoder file at its own precision: nothing to choose.
    let file_precision = m
        .model
        .encoders()
        .iter()
        .filter_map(|r| m.files.iter().find(|f| &f.role == r))
        .map(|f| engine_file_precision(f.precision))
        .max()
        .unwrap_or(EnginePrecision::Fp32);
    let threads = p.threads();
    // llama.cpp cannot hold a quantized cache for heads that are not whole blocks.
    let head_dim = m.llm.head_dim;
    let kv_default = if p.defaults.kv_cache.fits_head_dim(head_dim) { p.defaults.kv_cache } else { KvType::F16 };
    let mut forced = Vec::new();
    if kv_default != p.defaults.kv_cache {
        forced.push(format!(
            "KV cache {kv_default} instead of {} (head size {head_dim} is not a multiple of its {}-element blocks)",
            p.defaults.kv_cache,
            p.defaults.kv_cache.block_size()
        ));
    }
    // Q/DQ engine files are int8 on every provider: TensorRT builds them as quantized.
    let encoder_precision = match (p.has_gpu(), file_precision) {
        (true, EnginePrecision::Int8) => EnginePrecision::Int8,
        (true, _) => p.defaults.encoder_precision,
        (false, stored) => stored,
    };
    let defaults = PlanSettings {
        llm_type: bundle_type.unwrap_or(p.defaults.llm_quant),
        n_ctx: p.defaults.n_ctx.min(m.llm.n_ctx_train),
        n_batch: p.defaults.n_batch,
        kv_type: kv_default,
        encoder_precision,
        encoders: Residency::Resident,
        asr: m.asr.as_ref().map(|_| p.defaults.asr),
        threads,
        // One detector per core, for a model that crops faces and a bundle with the nets.
        face_detectors: if m.files.iter().any(|f| Role::FACE_NETS.contains(&f.role)) {
            threads.clamp(1, MAX_FACE_DETECTORS)
        } else {
            0
        },
    };
    (defaults, forced)
}

/// Every candidate setting with the changes it makes to `defaults`, fewest changes
/// first; among equals, cheapest in quality first: KV type, context, encoder precision,
/// then smaller LLM types.
fn candidates(defaults: &PlanSettings, p: &Profile, head_dim: u32) -> Vec<(PlanSettings, Vec<String>)> {
    let kv_opts: Vec<KvType> =
        [defaults.kv_type, KvType::Q8_0].into_iter().filter(|k| k.fits_head_dim(head_dim)).collect();
    let ctx_opts = [defaults.n_ctx, 1024, 512];
    let enc_opts: &[EnginePrecision] = if p.has_gpu() {
        &[defaults.encoder_precision, EnginePrecision::Fp16, EnginePrecision::Int8]
    } else {
        &[defaults.encoder_precision]
    };
    let quant_opts = [defaults.llm_type, p.defaults.llm_quant, GgufType::Q4KM, GgufType::Iq4Xs, GgufType::Q3KM];
    // Recognition moves before quality does: in turn (it costs its loading per request),
    // or to the CPU where that takes it out of a discrete GPU's memory (on unified memory
    // the CPU's fp32 copy costs more than the GPU's).
    let asr_opts: Vec<Option<AsrPlacement>> = match defaults.asr {
        None => vec![None],
        Some(a) => {
            let mut opts = vec![Some(a)];
            let cpu_saves = p.has_gpu() && !p.unified_memory;
            for other in [AsrPlacement::InTurn, AsrPlacement::Cpu] {
                if other != a && (other != AsrPlacement::Cpu || cpu_saves) {
                    opts.push(Some(other));
                }
            }
            opts
        }
    };
    let mut candidates: Vec<(PlanSettings, Vec<String>)> = vec![(defaults.clone(), Vec::new())];
    for q in quant_opts {
        for e in enc_opts {
            for c in ctx_opts {
                for &a in &asr_opts {
                    for &k in &kv_opts {
                        let s = PlanSettings {
                            llm_type: q,
                            n_ctx: c.min(defaults.n_ctx),
                            kv_type: k,
                            encoder_precision: (*e).min(defaults.encoder_precision),
                            asr: a,
                            ..defaults.clone()
                        };
                        if !candidates.iter().any(|(c, _)| c == &s) {
                            let changes = changes_from(defaults, &s);
                            candidates.push((s, changes));
                        }
                    }
                }
            }
        }
    }
    candidates.sort_by_key(|(_, ch)| ch.len());
    candidates
}

/// What `s` changes from `defaults`, in words.
fn changes_from(defaults: &PlanSettings, s: &PlanSettings) -> Vec<String> {
    let mut changes = Vec::new();
    if s.kv_type != defaults.kv_type {
        changes.push(format!("KV cache {} instead of {}", s.kv_type, defaults.kv_type));
    }
    if let (Some(to), Some(from)) = (s.asr, defaults.asr) {
        if to != from {
            changes.push(format!("speech recognition {to} instead of {from}"));
        }
    }
    if s.n_ctx != defaults.n_ctx {
        changes.push(format!("n_ctx {} instead of {}", s.n_ctx, defaults.n_ctx));
    }
    if s.encoder_precision != defaults.encoder_precision {
        // int8 means Q/DQ engine files: the bundle is made for it, not the device.
        let how = if s.encoder_precision == EnginePrecision::Int8 {
            " (a bundle made by emollama_export.quantize_encoders --int8)"
        } else {
            ""
        };
        changes.push(format!("encoders in {} instead of {}{how}", s.encoder_precision, defaults.encoder_precision));
    }
    if s.llm_type != defaults.llm_type {
        changes.push(format!("LLM as {} instead of {}", s.llm_type, defaults.llm_type));
    }
    changes
}

/// The plan in one line; for a bundle that does not fit, its biggest parts and the fixes.
fn message(
    outcome: Outcome,
    changes: &[String],
    settings: &PlanSettings,
    parts: &PlanParts,
    (resident, in_turn, usable): (u64, u64, u64),
    p: &Profile,
) -> String {
    let gb = |b: u64| b as f64 / GB;
    match outcome {
        Outcome::FitsResident if changes.is_empty() => {
            format!("fits resident: {:.2} of {:.2} GB usable", gb(resident), gb(usable))
        }
        Outcome::FitsResident => {
            format!("fits resident with: {} ({:.2} of {:.2} GB)", changes.join(", "), gb(resident), gb(usable))
        }
        Outcome::FitsInTurn => format!(
            "fits with encoders loaded in turn{}{} ({:.2} of {:.2} GB; all resident would need {:.2} GB)",
            if changes.is_empty() { "" } else { " and: " },
            changes.join(", "),
            gb(in_turn),
            gb(usable),
            gb(resident)
        ),
        Outcome::DoesNotFit => {
            let mut biggest: Vec<(String, u64)> = vec![
                (format!("LLM weights ({})", settings.llm_type), parts.llm_weights),
                (format!("KV cache ({} × {})", settings.n_ctx, settings.kv_type), parts.kv_cache),
                ("compute buffers".into(), parts.compute_buffers),
                ("runtime contexts".into(), parts.runtime_contexts),
                ("face detectors".into(), parts.face_detectors),
                ("speech recognition".into(), parts.asr),
            ];
            biggest.extend(parts.encoders.iter().map(|(r, b)| (r.clone(), *b)));
            biggest.sort_by_key(|b| std::cmp::Reverse(b.1));
            let top: Vec<String> = biggest.iter().take(3).map(|(n, b)| format!("{n} {:.2} GB", gb(*b))).collect();
            format!(
                "does not fit: needs {:.2} GB even with encoders in turn, {:.2} GB usable on {}; biggest parts: {}; fix: a smaller LLM quantization (q3_k_m), KV cache q8_0, n_ctx 512, int8 encoders, {}or a larger device",
                gb(in_turn),
                gb(usable),
                p.display,
                top.join(", "),
                if settings.asr.is_some() { "a smaller Whisper (or none), " } else { "" }
            )
        }
    }
}
