//! The memory planner: from a bundle manifest and a device profile, how much memory each
//! part needs, whether it all fits (resident, or with the encoders loaded in turn), and
//! the smallest set of changes that makes it fit. The runtime runs it before loading
//! anything, so a bundle that cannot fit is refused instead of being OOM-killed halfway.
//!
//! Estimates (documented, conservative): KV cache = 2 × layers × n_ctx × kv width ×
//! element size; llama.cpp compute buffers = 64 MiB + logits (vocab × n_batch × 4) + 6
//! activations of n_embd × n_batch × 4; an encoder engine = its parameters at the
//! engine precision + 15 % workspace; CUDA/TensorRT contexts 0.5 GB on GPU profiles.

use emollama_bundle::{Manifest, Role};
use serde::Serialize;

use crate::profile::{EncoderPrecision, Profile, Residency};

const GB: f64 = 1e9;

/// Bits per weight of the llama.cpp types the planner can propose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LlmQuant {
    F32,
    F16,
    Q8_0,
    Q6K,
    Q5KM,
    Q4KM,
    Q4_0,
    Iq4Xs,
    Q3KM,
}

impl LlmQuant {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q6_k" => Self::Q6K,
            "q5_k_m" => Self::Q5KM,
            "q4_k_m" => Self::Q4KM,
            "q4_0" => Self::Q4_0,
            "iq4_xs" => Self::Iq4Xs,
            "q3_k_m" => Self::Q3KM,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q6K => "q6_k",
            Self::Q5KM => "q5_k_m",
            Self::Q4KM => "q4_k_m",
            Self::Q4_0 => "q4_0",
            Self::Iq4Xs => "iq4_xs",
            Self::Q3KM => "q3_k_m",
        }
    }

    /// Average bits per weight of a LLaMA-7B file of this type (llama.cpp's tables).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Self::F32 => 32.0,
            Self::F16 => 16.0,
            Self::Q8_0 => 8.5,
            Self::Q6K => 6.56,
            Self::Q5KM => 5.69,
            Self::Q4KM => 4.85,
            Self::Q4_0 => 4.5,
            Self::Iq4Xs => 4.25,
            Self::Q3KM => 3.91,
        }
    }
}

fn kv_bytes_per_element(kv: &str) -> f64 {
    match kv {
        "f32" => 4.0,
        "q8_0" => 34.0 / 32.0,
        "q4_0" => 18.0 / 32.0,
        _ => 2.0,
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlanSettings {
    pub llm_quant: String,
    pub n_ctx: u32,
    pub kv_cache: String,
    pub encoder_precision: EncoderPrecision,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanParts {
    pub llm_weights: u64,
    pub kv_cache: u64,
    pub compute_buffers: u64,
    /// Per encoder role, at the engine precision, with workspace.
    pub encoders: Vec<(String, u64)>,
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

fn parts(m: &Manifest, p: &Profile, s: &PlanSettings, n_batch: u32) -> PlanParts {
    let llm = &m.llm;
    let file = m.files.iter().find(|f| f.role == Role::Llm);
    // The bundle's own file when its type is the one asked for, else an estimate.
    let llm_weights = match file {
        Some(f) if f.precision.eq_ignore_ascii_case(&s.llm_quant) => f.size,
        _ => {
            let bpw = LlmQuant::parse(&s.llm_quant).map_or(16.0, LlmQuant::bits_per_weight);
            (llm.n_params as f64 * bpw / 8.0) as u64
        }
    };
    let kv_width = f64::from(llm.n_head_kv) * f64::from(llm.head_dim);
    let kv_cache =
        (2.0 * f64::from(llm.n_layer) * f64::from(s.n_ctx) * kv_width * kv_bytes_per_element(&s.kv_cache)) as u64;
    let nb = f64::from(n_batch.min(s.n_ctx));
    let compute_buffers = (64.0 * 1024.0 * 1024.0
        + llm.vocab_size as f64 * nb * 4.0
        + 6.0 * llm.embedding_width as f64 * nb * 4.0) as u64;
    let encoders = Role::ENGINES
        .iter()
        .filter_map(|r| m.files.iter().find(|f| &f.role == r))
        .map(|f| {
            let file_bpp = EncoderPrecision::parse(&f.precision).unwrap_or(EncoderPrecision::Fp32).bytes_per_param();
            let params = f.size as f64 / file_bpp;
            (f.role.to_string(), (params * s.encoder_precision.bytes_per_param() * 1.15) as u64)
        })
        .collect();
    let runtime_contexts = if p.has_gpu() { (0.5 * GB) as u64 } else { (0.1 * GB) as u64 };
    let os_reserve = ((p.memory_total_gb - p.usable_headless_gb).max(0.0) * GB) as u64;
    PlanParts { llm_weights, kv_cache, compute_buffers, encoders, runtime_contexts, os_reserve }
}

fn totals(parts: &PlanParts) -> (u64, u64) {
    let base = parts.llm_weights + parts.kv_cache + parts.compute_buffers + parts.runtime_contexts;
    let all: u64 = parts.encoders.iter().map(|e| e.1).sum();
    let max = parts.encoders.iter().map(|e| e.1).max().unwrap_or(0);
    (base + all, base + max)
}

/// Plan `manifest` on `profile` (its defaults, n_batch 512), searching for the fewest
/// changes that fit when the defaults do not.
pub fn plan(m: &Manifest, p: &Profile) -> Plan {
    let usable = (p.usable_headless_gb * GB) as u64;
    // The bundle's own LLM type is what loads; the profile's type is a proposal.
    let bundle_quant = m
        .files
        .iter()
        .find(|f| f.role == Role::Llm)
        .and_then(|f| LlmQuant::parse(&f.precision))
        .map(|q| q.name().to_string());
    let defaults = PlanSettings {
        llm_quant: bundle_quant.unwrap_or_else(|| p.defaults.llm_quant.clone()),
        n_ctx: p.defaults.n_ctx,
        kv_cache: p.defaults.kv_cache.clone(),
        encoder_precision: p.defaults.encoder_precision,
    };
    let in_turn_allowed = p.defaults.encoder_residency == Residency::InTurn;
    let evaluate = |s: &PlanSettings| {
        let parts = parts(m, p, s, 512);
        let (resident, in_turn) = totals(&parts);
        let outcome = if resident <= usable {
            Outcome::FitsResident
        } else if in_turn <= usable {
            Outcome::FitsInTurn
        } else {
            Outcome::DoesNotFit
        };
        (parts, resident, in_turn, outcome)
    };
    // Candidate changes, cheapest in quality first: KV type, context, encoder precision,
    // then smaller LLM types.
    let mut candidates: Vec<(PlanSettings, Vec<String>)> = vec![(defaults.clone(), Vec::new())];
    let kv_opts = [defaults.kv_cache.clone(), "q8_0".into()];
    let ctx_opts = [defaults.n_ctx, 1024, 512];
    let enc_opts = [defaults.encoder_precision, EncoderPrecision::Fp16, EncoderPrecision::Int8];
    let quant_opts =
        [defaults.llm_quant.clone(), p.defaults.llm_quant.clone(), "q4_k_m".into(), "iq4_xs".into(), "q3_k_m".into()];
    for q in &quant_opts {
        for e in &enc_opts {
            for c in &ctx_opts {
                for k in &kv_opts {
                    let s = PlanSettings {
                        llm_quant: q.clone(),
                        n_ctx: (*c).min(defaults.n_ctx),
                        kv_cache: k.clone(),
                        encoder_precision: (*e).min(defaults.encoder_precision),
                    };
                    let mut changes = Vec::new();
                    if s.kv_cache != defaults.kv_cache {
                        changes.push(format!("KV cache {} instead of {}", s.kv_cache, defaults.kv_cache));
                    }
                    if s.n_ctx != defaults.n_ctx {
                        changes.push(format!("n_ctx {} instead of {}", s.n_ctx, defaults.n_ctx));
                    }
                    if s.encoder_precision != defaults.encoder_precision {
                        changes.push(
                            format!(
                                "encoders in {:?} instead of {:?}",
                                s.encoder_precision, defaults.encoder_precision
                            )
                            .to_lowercase(),
                        );
                    }
                    if s.llm_quant != defaults.llm_quant {
                        changes.push(format!("LLM as {} instead of {}", s.llm_quant, defaults.llm_quant));
                    }
                    if !candidates.iter().any(|(c, _)| c == &s) {
                        candidates.push((s, changes));
                    }
                }
            }
        }
    }
    candidates.sort_by_key(|(_, ch)| ch.len());
    let acceptable = |o: Outcome| o == Outcome::FitsResident || (in_turn_allowed && o == Outcome::FitsInTurn);
    let chosen = candidates
        .iter()
        .map(|(s, ch)| (s, ch, evaluate(s)))
        .find(|(_, _, e)| acceptable(e.3))
        // Without in-turn loading in the profile, loading in turn is itself a change.
        .or_else(|| candidates.iter().map(|(s, ch)| (s, ch, evaluate(s))).find(|(_, _, e)| e.3 == Outcome::FitsInTurn));
    let (settings, changes, (parts, resident, in_turn, outcome)) = match chosen {
        Some((s, ch, e)) => (s.clone(), ch.clone(), e),
        None => (defaults.clone(), Vec::new(), evaluate(&defaults)),
    };
    let gb = |b: u64| b as f64 / GB;
    let mut biggest: Vec<(String, u64)> = vec![
        (format!("LLM weights ({})", settings.llm_quant), parts.llm_weights),
        (format!("KV cache ({} × {})", settings.n_ctx, settings.kv_cache), parts.kv_cache),
        ("compute buffers".into(), parts.compute_buffers),
        ("runtime contexts".into(), parts.runtime_contexts),
    ];
    biggest.extend(parts.encoders.iter().map(|(r, b)| (r.clone(), *b)));
    biggest.sort_by(|a, b| b.1.cmp(&a.1));
    let top: Vec<String> = biggest.iter().take(3).map(|(n, b)| format!("{n} {:.2} GB", gb(*b))).collect();
    let message = match outcome {
        Outcome::FitsResident if changes.is_empty() => format!("fits resident: {:.2} of {:.2} GB usable", gb(resident), gb(usable)),
        Outcome::FitsResident => format!("fits resident with: {} ({:.2} of {:.2} GB)", changes.join(", "), gb(resident), gb(usable)),
        Outcome::FitsInTurn => format!(
            "fits with encoders loaded in turn{}{} ({:.2} of {:.2} GB; all resident would need {:.2} GB)",
            if changes.is_empty() { "" } else { " and: " },
            changes.join(", "),
            gb(in_turn),
            gb(usable),
            gb(resident)
        ),
        Outcome::DoesNotFit => format!(
            "does not fit: needs {:.2} GB even with encoders in turn, {:.2} GB usable on {}; biggest parts: {}; fix: a smaller LLM quantization (q3_k_m), KV cache q8_0, n_ctx 512, int8 encoders, or a larger device",
            gb(in_turn),
            gb(usable),
            p.display,
            top.join(", ")
        ),
    };
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
