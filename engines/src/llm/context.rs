use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_sys_2 as sys;
use serde::{Deserialize, Serialize};

use emollama_bundle::KvType;

use super::model::LlmModel;
use crate::cancel::CancelToken;
use crate::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttention {
    #[default]
    Auto,
    On,
    Off,
}

/// llama.cpp's element type for a KV cache of `kv` (the type itself is the bundle's:
/// one definition shared by profiles, the planner and the CLI).
fn ggml_kv_type(kv: KvType) -> sys::ggml_type {
    match kv {
        KvType::F32 => sys::GGML_TYPE_F32,
        KvType::F16 => sys::GGML_TYPE_F16,
        KvType::Q8_0 => sys::GGML_TYPE_Q8_0,
        KvType::Q4_0 => sys::GGML_TYPE_Q4_0,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextParams {
    pub n_ctx: u32,
    /// Rows per `llama_decode` call; prefill is split into chunks of this size.
    pub n_batch: u32,
    pub n_threads: i32,
    pub n_threads_batch: i32,
    pub flash_attention: FlashAttention,
    pub kv_cache_type: KvType,
}

impl Default for ContextParams {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(4);
        Self {
            n_ctx: 2048,
            n_batch: 512,
            n_threads: threads,
            n_threads_batch: threads,
            flash_attention: FlashAttention::Auto,
            kv_cache_type: KvType::F16,
        }
    }
}

impl ContextParams {
    /// llama.cpp's parameters for one sequence, perf counters on.
    pub(crate) fn to_sys(&self) -> sys::llama_context_params {
        // SAFETY: default params are plain data; we only set scalar fields.
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = self.n_ctx;
        cp.n_batch = self.n_batch;
        cp.n_ubatch = self.n_batch;
        cp.n_seq_max = 1;
        cp.n_threads = self.n_threads;
        cp.n_threads_batch = self.n_threads_batch;
        cp.flash_attn_type = match self.flash_attention {
            FlashAttention::Auto => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::On => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        cp.type_k = ggml_kv_type(self.kv_cache_type);
        cp.type_v = ggml_kv_type(self.kv_cache_type);
        cp.no_perf = false; // perf counters read zeros otherwise
        cp
    }
}

/// One run of prompt rows: token ids, or embedding rows (row-major, `n_embd` floats each)
/// that go in through `llama_batch.embd` exactly where the tokens' embeddings would.
#[derive(Debug, Clone, Copy)]
pub enum Segment<'a> {
    Tokens(&'a [i32]),
    Embeddings(&'a [f32]),
}

impl Segment<'_> {
    fn rows(&self, n_embd: usize) -> usize {
        match self {
            Segment::Tokens(t) => t.len(),
            Segment::Embeddings(e) => e.len() / n_embd.max(1),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PrefillReport {
    pub rows: usize,
    pub decode_calls: usize,
    pub ms: f64,
    /// Logits at the last row of each segment, when asked for.
    pub segment_logits: Vec<Vec<f32>>,
}

/// llama.cpp's own perf counters (enabled for every context) plus our clock.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PerfCounters {
    pub prompt_rows: i32,
    pub prompt_ms: f64,
    pub generated_tokens: i32,
    pub decode_ms: f64,
}

/// A saved KV-cache state of sequence 0, to reuse a constant prompt prefix.
#[derive(Debug, Clone)]
pub struct PrefixState {
    data: Vec<u8>,
    n_past: usize,
}

impl PrefixState {
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// A llama.cpp batch we allocated; freed on drop.
struct Batch {
    raw: sys::llama_batch,
    capacity: usize,
    width: usize,
}

impl Batch {
    fn new(capacity: usize, embd_width: usize) -> Self {
        // SAFETY: allocates arrays for `capacity` rows; embd when width > 0, token otherwise.
        let raw = unsafe { sys::llama_batch_init(capacity as i32, embd_width as i32, 1) };
        Self { raw, capacity, width: embd_width }
    }

    /// Fill with `rows` rows starting at position `pos0`, logits for the last row only.
    fn fill(&mut self, tokens: Option<&[i32]>, embd: Option<&[f32]>, rows: usize, pos0: usize, logits_last: bool) {
        assert!(rows <= self.capacity && rows > 0);
        let b = &mut self.raw;
        // SAFETY: every array was allocated for `capacity` >= rows entries by llama_batch_init.
        unsafe {
            if let Some(t) = tokens {
                std::ptr::copy_nonoverlapping(t.as_ptr(), b.token, rows);
            }
            if let Some(e) = embd {
                std::ptr::copy_nonoverlapping(e.as_ptr(), b.embd, rows * self.width);
            }
            for i in 0..rows {
                *b.pos.add(i) = (pos0 + i) as i32;
                *b.n_seq_id.add(i) = 1;
                *(*b.seq_id.add(i)) = 0;
                *b.logits.add(i) = i8::from(logits_last && i + 1 == rows);
            }
        }
        b.n_tokens = rows as i32;
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init, freed once.
        unsafe { sys::llama_batch_free(self.raw) }
    }
}

/// Per-request llama.cpp state: the KV cache of one sequence and its batches.
pub struct LlmContext {
    model: Arc<LlmModel>,
    ptr: NonNull<sys::llama_context>,
    params: ContextParams,
    n_ctx: u32,
    n_past: usize,
    has_logits: bool,
    /// Logits put back after a truncation (see `continuation_logprobs`), served by
    /// `logits()` until the next decode.
    restored_logits: Option<Vec<f32>>,
    token_batch: Batch,
    embd_batch: Option<Batch>,
}

// SAFETY: a llama_context is used from one thread at a time (we require &mut for every
// call that touches it); moving it between threads is fine.
unsafe impl Send for LlmContext {}

impl std::fmt::Debug for LlmContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmContext").field("n_ctx", &self.n_ctx).field("n_past", &self.n_past).finish()
    }
}

impl LlmContext {
    pub fn new(model: Arc<LlmModel>, params: ContextParams) -> Result<Self, EngineError> {
        let cp = params.to_sys();
        // SAFETY: model is live for the context's lifetime (we hold the Arc).
        let raw = unsafe { sys::llama_init_from_model(model.as_ptr(), cp) };
        let ptr =
            NonNull::new(raw).ok_or(EngineError::ContextCreate { n_ctx: params.n_ctx, n_batch: params.n_batch })?;
        // SAFETY: live context.
        let n_ctx = unsafe { sys::llama_n_ctx(ptr.as_ptr()) };
        // llama.cpp clamps n_batch to n_ctx; a decode call larger than that aborts the
        // process, so chunk by the value the context really has.
        // SAFETY: live context.
        let n_batch = unsafe { sys::llama_n_batch(ptr.as_ptr()) }.min(unsafe { sys::llama_n_ubatch(ptr.as_ptr()) });
        let params = ContextParams { n_batch, ..params };
        let token_batch = Batch::new(n_batch as usize, 0);
        Ok(Self {
            model,
            ptr,
            params,
            n_ctx,
            n_past: 0,
            has_logits: false,
            restored_logits: None,
            token_batch,
            embd_batch: None,
        })
    }

    pub fn model(&self) -> &Arc<LlmModel> {
        &self.model
    }

    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Positions already in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn params(&self) -> &ContextParams {
        &self.params
    }

    /// Check a prompt without touching the KV cache: token ids in range, embedding rows
    /// of the model's width, and room in the context.
    pub fn check_segments(&self, segments: &[Segment<'_>]) -> Result<usize, EngineError> {
        let n_embd = self.model.n_embd();
        let n_vocab = self.model.n_vocab();
        let mut rows = 0usize;
        for seg in segments {
            match seg {
                Segment::Tokens(t) => {
                    if let Some(&bad) = t.iter().find(|&&t| t < 0 || t >= n_vocab) {
                        return Err(EngineError::TokenOutOfRange { token: bad, n_vocab });
                    }
                }
                Segment::Embeddings(e) => {
                    if e.len() % n_embd != 0 {
                        return Err(EngineError::EmbeddingRagged { len: e.len(), width: n_embd });
                    }
                }
            }
            rows += seg.rows(n_embd);
        }
        let needed = self.n_past + rows;
        if needed > self.n_ctx as usize {
            return Err(EngineError::ContextOverflow { needed, n_ctx: self.n_ctx });
        }
        Ok(rows)
    }

    /// Embedding rows of an explicit width: a width that differs from the model's is an
    /// error (llama.cpp itself does not check it).
    pub fn check_embedding_width(&self, width: usize) -> Result<(), EngineError> {
        let expected = self.model.n_embd();
        if width != expected {
            return Err(EngineError::EmbeddingWidth { expected, actual: width });
        }
        Ok(())
    }

    /// Decode segments at consecutive positions after what is already cached, in chunks
    /// of at most `n_batch` rows (a llama.cpp batch holds tokens or embeddings, not both).
    /// Leaves the logits of the last row available for [`LlmContext::logits`].
    pub fn prefill(
        &mut self,
        segments: &[Segment<'_>],
        keep_segment_logits: bool,
    ) -> Result<PrefillReport, EngineError> {
        self.prefill_cancellable(segments, keep_segment_logits, None)
    }

    /// [`LlmContext::prefill`], stopping with [`EngineError::Cancelled`] between
    /// batches once `cancel` is set.
    pub fn prefill_cancellable(
        &mut self,
        segments: &[Segment<'_>],
        keep_segment_logits: bool,
        cancel: Option<&CancelToken>,
    ) -> Result<PrefillReport, EngineError> {
        let started = Instant::now();
        let rows = self.check_segments(segments)?;
        let n_embd = self.model.n_embd();
        let chunk = self.params.n_batch as usize;
        let mut report = PrefillReport { rows, ..Default::default() };
        for seg in segments {
            let seg_rows = seg.rows(n_embd);
            let mut done = 0;
            while done < seg_rows {
                if cancel.is_some_and(CancelToken::is_cancelled) {
                    return Err(EngineError::Cancelled);
                }
                let n = chunk.min(seg_rows - done);
                let last = done + n == seg_rows;
                match seg {
                    Segment::Tokens(t) => {
                        self.token_batch.fill(Some(&t[done..done + n]), None, n, self.n_past, last);
                        self.decode_raw(self.token_batch.raw)?;
                    }
                    Segment::Embeddings(e) => {
                        let batch = self.embd_batch.get_or_insert_with(|| Batch::new(chunk, n_embd));
                        batch.fill(None, Some(&e[done * n_embd..(done + n) * n_embd]), n, self.n_past, last);
                        let raw = batch.raw;
                        self.decode_raw(raw)?;
                    }
                }
                self.n_past += n;
                done += n;
                report.decode_calls += 1;
            }
            if seg_rows > 0 {
                self.has_logits = true;
                if keep_segment_logits {
                    report.segment_logits.push(self.logits()?.to_vec());
                }
            }
        }
        report.ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(report)
    }

    /// Decode one token at the next position; its logits become available.
    pub fn decode_token(&mut self, token: i32) -> Result<(), EngineError> {
        self.check_segments(&[Segment::Tokens(&[token])])?;
        self.token_batch.fill(Some(&[token]), None, 1, self.n_past, true);
        self.decode_raw(self.token_batch.raw)?;
        self.n_past += 1;
        self.has_logits = true;
        Ok(())
    }

    fn decode_raw(&mut self, batch: sys::llama_batch) -> Result<(), EngineError> {
        self.restored_logits = None;
        // SAFETY: batch arrays are filled for n_tokens rows; the context is live.
        let code = unsafe { sys::llama_decode(self.ptr.as_ptr(), batch) };
        if code != 0 {
            self.has_logits = false;
            let meaning = match code {
                1 => "no KV-cache slot for the batch: context full",
                2 => "aborted",
                -1 => "invalid batch",
                _ => "internal llama.cpp error",
            };
            return Err(EngineError::Decode { code, meaning });
        }
        Ok(())
    }

    /// Logits of the last decoded row (length n_vocab).
    pub fn logits(&self) -> Result<&[f32], EngineError> {
        if let Some(l) = &self.restored_logits {
            return Ok(l);
        }
        if !self.has_logits {
            return Err(EngineError::NoLogits);
        }
        // SAFETY: after a successful decode with logits requested for the last row,
        // llama.cpp holds n_vocab floats for index -1 until the next decode.
        let ptr = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), -1) };
        if ptr.is_null() {
            return Err(EngineError::NoLogits);
        }
        Ok(unsafe { std::slice::from_raw_parts(ptr, self.model.n_vocab() as usize) })
    }

    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: live context.
        unsafe { sys::llama_get_memory(self.ptr.as_ptr()) }
    }

    /// Forget everything after the first `n_keep` positions (prefix reuse in place).
    pub fn truncate(&mut self, n_keep: usize) {
        if n_keep >= self.n_past {
            return;
        }
        // SAFETY: live context; removing positions [n_keep, end) of sequence 0.
        unsafe { sys::llama_memory_seq_rm(self.memory(), 0, n_keep as i32, -1) };
        self.n_past = n_keep;
        self.has_logits = false;
        self.restored_logits = None;
    }

    /// Empty the KV cache.
    pub fn clear(&mut self) {
        // SAFETY: live context.
        unsafe { sys::llama_memory_clear(self.memory(), true) };
        self.n_past = 0;
        self.has_logits = false;
        self.restored_logits = None;
    }

    /// Bytes of sequence 0's state as llama.cpp holds it (the KV cache at its element
    /// type): a q8_0 cache holds about half of an f16 one.
    pub fn kv_state_bytes(&self) -> usize {
        // SAFETY: live context.
        unsafe { sys::llama_state_seq_get_size(self.ptr.as_ptr(), 0) }
    }

    /// Save the KV cache of the current prompt (e.g. a constant prefix).
    pub fn save_prefix(&mut self) -> Result<PrefixState, EngineError> {
        // SAFETY: live context; the buffer has the size llama.cpp asked for.
        let size = unsafe { sys::llama_state_seq_get_size(self.ptr.as_ptr(), 0) };
        let mut data = vec![0u8; size];
        let written = unsafe { sys::llama_state_seq_get_data(self.ptr.as_ptr(), data.as_mut_ptr(), size, 0) };
        if written == 0 && self.n_past > 0 {
            return Err(EngineError::State("llama.cpp wrote no state".into()));
        }
        data.truncate(written);
        Ok(PrefixState { data, n_past: self.n_past })
    }

    /// Replace the KV cache by a saved prefix. The next prefill continues after it.
    pub fn restore_prefix(&mut self, state: &PrefixState) -> Result<(), EngineError> {
        if state.n_past > self.n_ctx as usize {
            return Err(EngineError::State(format!("{} positions do not fit n_ctx {}", state.n_past, self.n_ctx)));
        }
        self.clear();
        // SAFETY: data came from llama_state_seq_get_data of a context of the same model.
        let read =
            unsafe { sys::llama_state_seq_set_data(self.ptr.as_ptr(), state.data.as_ptr(), state.data.len(), 0) };
        if read == 0 && !state.data.is_empty() {
            return Err(EngineError::State("llama.cpp rejected the saved state (other model or layout?)".into()));
        }
        self.n_past = state.n_past;
        // Logits are not part of the saved state: the caller prefills what follows the
        // prefix (a request always adds rows after it).
        self.has_logits = false;
        Ok(())
    }

    /// Exact log-probabilities of candidate continuations of the current prompt (e.g. the
    /// label words): one-token candidates from the prompt's logits alone, longer ones
    /// by extending the sequence token by token. The prompt's KV cache is reused (never
    /// recomputed): the cache is truncated back after each candidate, and the prompt's
    /// logits stay available for generation afterwards.
    pub fn continuation_logprobs(&mut self, candidates: &[Vec<i32>]) -> Result<Vec<f64>, EngineError> {
        let prompt_logits = self.logits()?.to_vec();
        let n_keep = self.n_past;
        let mut out = Vec::with_capacity(candidates.len());
        for cand in candidates {
            let mut lp = 0.0f64;
            for (k, &t) in cand.iter().enumerate() {
                let logits = if k == 0 { &prompt_logits[..] } else { self.logits()? };
                lp += log_softmax_at(logits, t)?;
                if k + 1 < cand.len() {
                    self.decode_token(t)?;
                }
            }
            self.truncate(n_keep);
            out.push(lp);
        }
        self.restored_logits = Some(prompt_logits);
        Ok(out)
    }

    pub fn perf(&self) -> PerfCounters {
        // SAFETY: live context.
        let p = unsafe { sys::llama_perf_context(self.ptr.as_ptr()) };
        PerfCounters {
            prompt_rows: p.n_p_eval,
            prompt_ms: p.t_p_eval_ms,
            generated_tokens: p.n_eval,
            decode_ms: p.t_eval_ms,
        }
    }

    pub fn reset_perf(&mut self) {
        // SAFETY: live context.
        unsafe { sys::llama_perf_context_reset(self.ptr.as_ptr()) }
    }
}

fn log_softmax_at(logits: &[f32], token: i32) -> Result<f64, EngineError> {
    let n = logits.len() as i32;
    let i = usize::try_from(token)
        .ok()
        .filter(|&i| i < logits.len())
        .ok_or(EngineError::TokenOutOfRange { token, n_vocab: n })?;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    Ok(f64::from(logits[i] - max) - sum.ln())
}

impl Drop for LlmContext {
    fn drop(&mut self) {
        // Batches drop themselves; the context goes before the model (we hold its Arc).
        // SAFETY: we own the context.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}
