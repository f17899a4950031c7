//! The reference for overhead measurements: a greedy decode loop straight on the
//! llama.cpp C API (`llama_decode` + arg-max, nothing else), as any llama.cpp program
//! runs it. Benchmarks run it beside [`LlmContext::generate`](super::LlmContext) on the
//! same model, threads and batch size. It follows the wrapper's habits: the context is
//! owned by a guard that frees it on every path, pointers are checked before use, and
//! each unsafe block makes one call.

use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::context::ContextParams;
use super::model::LlmModel;
use crate::EngineError;

/// A bare llama.cpp context, freed when dropped. It borrows the model: the context
/// cannot outlive it.
struct RawContext<'m> {
    ptr: NonNull<sys::llama_context>,
    model: &'m LlmModel,
}

impl<'m> RawContext<'m> {
    fn new(model: &'m LlmModel, params: &ContextParams) -> Result<Self, EngineError> {
        // SAFETY: the model pointer is live for 'm; llama.cpp returns null on failure.
        let raw = unsafe { sys::llama_init_from_model(model.as_ptr(), params.to_sys()) };
        let ptr =
            NonNull::new(raw).ok_or(EngineError::ContextCreate { n_ctx: params.n_ctx, n_batch: params.n_batch })?;
        Ok(Self { ptr, model })
    }

    /// Decode `tokens` (logits for the last one only, as `llama_batch_get_one` asks).
    fn decode(&mut self, tokens: &mut [i32]) -> Result<(), EngineError> {
        // SAFETY: the batch only points into `tokens`, which outlives the call.
        let batch = unsafe { sys::llama_batch_get_one(tokens.as_mut_ptr(), tokens.len() as i32) };
        // SAFETY: live context; the batch is valid for this call.
        let code = unsafe { sys::llama_decode(self.ptr.as_ptr(), batch) };
        if code != 0 {
            return Err(EngineError::Decode { code, meaning: "raw loop decode failed" });
        }
        Ok(())
    }

    /// The last decoded row's logits (valid until the next decode: the borrow says so).
    fn logits(&self) -> Result<&[f32], EngineError> {
        // SAFETY: live context; llama.cpp returns null when the row has no logits.
        let ptr = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), -1) };
        if ptr.is_null() {
            return Err(EngineError::NoLogits);
        }
        // SAFETY: after a decode with logits for the last row, llama.cpp holds n_vocab
        // floats there until the next decode, which needs `&mut self`.
        Ok(unsafe { std::slice::from_raw_parts(ptr, self.model.n_vocab() as usize) })
    }
}

impl Drop for RawContext<'_> {
    fn drop(&mut self) {
        // SAFETY: the context was created by llama_init_from_model and is freed once.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}

/// Decode `n` greedy tokens after `prompt`; returns (tokens/s over the decode part,
/// tokens). Its own context, with the same llama.cpp parameters as an `LlmContext`.
pub fn raw_greedy_decode(
    model: &LlmModel,
    params: &ContextParams,
    prompt: &[i32],
    n: usize,
) -> Result<(f64, Vec<i32>), EngineError> {
    let mut ctx = RawContext::new(model, params)?;
    ctx.decode(&mut prompt.to_vec())?;
    let mut out = Vec::with_capacity(n);
    let started = std::time::Instant::now();
    for i in 0..n {
        let logits = ctx.logits()?;
        let mut best = 0usize;
        for (j, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = j;
            }
        }
        let mut tok = [best as i32];
        out.push(tok[0]);
        if i + 1 < n {
            ctx.decode(&mut tok)?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((n.saturating_sub(1) as f64 / secs, out))
}
