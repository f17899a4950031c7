//! Token selection with Hugging Face `generate` semantics, because the official
//! Emotion-LLaMA demo samples with transformers: repetition penalty → temperature →
//! top-k → top-p → draw. The penalty applies only to *generated* ids: the official
//! model passes the prompt as `inputs_embeds`, so transformers sees no prompt ids.

use serde::{Deserialize, Serialize};

use crate::EngineError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (arg-max), as `do_sample=False`.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 1.0 disables the penalty (HF `repetition_penalty`).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(EngineError::Sampling(format!("temperature {} must be >= 0", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(EngineError::Sampling(format!("top_p {} must be in (0, 1]", self.top_p)));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(EngineError::Sampling(format!("repetition_penalty {} must be > 0", self.repetition_penalty)));
        }
        Ok(())
    }
}

/// HF `RepetitionPenaltyLogitsProcessor`: for every distinct id in `ids`, a positive
/// logit is divided by `penalty` and a negative one multiplied by it.
pub fn apply_repetition_penalty(logits: &mut [f32], ids: &[i32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    for &id in ids {
        if !seen.insert(id) {
            continue;
        }
        if let Some(l) = usize::try_from(id).ok().and_then(|i| logits.get_mut(i)) {
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// Arg-max, lowest id on ties (as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> i32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as i32
}

/// SplitMix64: a small, well-mixed, seedable generator; reproducible across platforms.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per-request sampler state: the generated ids (for the penalty) and the RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    generated: Vec<i32>,
    scratch: Vec<f32>,
    candidates: Vec<(i32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, EngineError> {
        params.validate()?;
        let rng = SplitMix64(params.seed);
        Ok(Self { params, rng, generated: Vec::new(), scratch: Vec::new(), candidates: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Ids generated so far (what the penalty sees).
    pub fn generated(&self) -> &[i32] {
        &self.generated
    }

    /// Record a generated id.
    pub fn accept(&mut self, token: i32) {
        self.generated.push(token);
    }

    /// Choose the next token from the model's logits.
    pub fn sample(&mut self, logits: &[f32]) -> i32 {
        let p = &self.params;
        if p.repetition_penalty == 1.0 && p.temperature == 0.0 {
            return argmax(logits); // the hot greedy path copies nothing
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(logits);
        apply_repetition_penalty(&mut self.scratch, &self.generated, p.repetition_penalty);
        if p.temperature == 0.0 {
            return argmax(&self.scratch);
        }
        let inv_t = 1.0 / p.temperature;
        self.candidates.clear();
        self.candidates.extend(self.scratch.iter().enumerate().map(|(i, &l)| (i as i32, l * inv_t)));
        let by_logit_desc = |a: &(i32, f32), b: &(i32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            self.candidates.truncate(p.top_k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        // Softmax over the survivors.
        let max = self.candidates[0].1;
        let mut total = 0.0f64;
        for c in &mut self.candidates {
            c.1 = ((c.1 - max) as f64).exp() as f32;
            total += f64::from(c.1);
        }
        // Top-p: the smallest prefix whose probability mass reaches top_p (at least one).
        if p.top_p < 1.0 {
            let mut cum = 0.0f64;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cum += f64::from(c.1) / total;
                if cum >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
            total = self.candidates.iter().map(|c| f64::from(c.1)).sum();
        }
        let mut r = self.rng.next_f64() * total;
        for c in &self.candidates {
            r -= f64::from(c.1);
            if r < 0.0 {
                return c.0;
            }
        }
        self.candidates.last().map(|c| c.0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalty_touches_only_the_given_ids_with_hf_signs() {
        let mut logits = vec![2.0, -2.0, 1.0, -1.0, 0.5];
        apply_repetition_penalty(&mut logits, &[0, 1, 1], 2.0);
        assert_eq!(logits, vec![1.0, -4.0, 1.0, -1.0, 0.5]);
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[0.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let params = SamplingParams { temperature: 0.8, top_k: 50, top_p: 0.9, repetition_penalty: 1.05, seed: 7 };
        let run = |params: SamplingParams| {
            let mut s = Sampler::new(params).unwrap();
            (0..20)
                .map(|_| {
                    let t = s.sample(&logits);
                    s.accept(t);
                    t
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        assert_ne!(run(params.clone()), run(SamplingParams { seed: 8, ..params.clone() }));
        let top1 = run(SamplingParams { top_k: 1, repetition_penalty: 1.0, ..params });
        assert!(top1.iter().all(|&t| t == argmax(&logits)));
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..SamplingParams::greedy() }).is_err());
        assert!(Sampler::new(SamplingParams { temperature: -1.0, ..SamplingParams::greedy() }).is_err());
        assert!(Sampler::new(SamplingParams { repetition_penalty: f32::NAN, ..SamplingParams::greedy() }).is_err());
    }
}
