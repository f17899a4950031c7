//! The reference for overhead measurements: a greedy decode loop straight on the
//! llama.cpp C API (`llama_decode` + arg-max, nothing else), as any llama.cpp program
//! runs it. Benchmarks run it beside [`LlmContext::generate`](super::LlmContext) on the
//! same model, threads and batch size.

use llama_cpp_sys_2 as sys;

use super::context::ContextParams;
use super::model::LlmModel;
use crate::EngineError;

/// Decode `n` greedy tokens after `prompt`; returns (tokens/s over the decode part,
/// tokens). Its own context, with the same llama.cpp parameters as an `LlmContext`.
pub fn raw_greedy_decode(
    model: &LlmModel,
    params: &ContextParams,
    prompt: &[i32],
    n: usize,
) -> Result<(f64, Vec<i32>), EngineError> {
    // SAFETY: plain C API use on a live model; the context is freed on every path.
    unsafe {
        let ctx = sys::llama_init_from_model(model.as_ptr(), params.to_sys());
        if ctx.is_null() {
            return Err(EngineError::ContextCreate { n_ctx: params.n_ctx, n_batch: params.n_batch });
        }
        let free = |code: i32| {
            sys::llama_free(ctx);
            EngineError::Decode { code, meaning: "raw loop decode failed" }
        };
        let mut prompt = prompt.to_vec();
        let code = sys::llama_decode(ctx, sys::llama_batch_get_one(prompt.as_mut_ptr(), prompt.len() as i32));
        if code != 0 {
            return Err(free(code));
        }
        let n_vocab = model.n_vocab() as usize;
        let mut out = Vec::with_capacity(n);
        let started = std::time::Instant::now();
        for i in 0..n {
            let logits = std::slice::from_raw_parts(sys::llama_get_logits_ith(ctx, -1), n_vocab);
            let mut best = 0usize;
            for (j, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = j;
                }
            }
            let mut tok = best as i32;
            out.push(tok);
            if i + 1 < n {
                let code = sys::llama_decode(ctx, sys::llama_batch_get_one(&mut tok, 1));
                if code != 0 {
                    return Err(free(code));
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        sys::llama_free(ctx);
        Ok((n.saturating_sub(1) as f64 / secs, out))
    }
}
