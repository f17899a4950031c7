//! The LLaMA backbone on llama.cpp: a safe wrapper of our own over `llama-cpp-sys-2`.
//!
//! - [`LlmModel`]: the loaded GGUF (shared, immutable), tokenizer and vocabulary;
//! - [`LlmContext`]: per-request state (KV cache, batches) with prefill of token and
//!   embedding-row segments, single-token decode, prefix reuse and perf counters;
//! - [`Sampler`]: greedy / temperature / top-k / top-p / HF repetition penalty, seeded;
//! - [`LlmContext::generate`]: the streaming generation loop with stop conditions;
//! - [`quantize`]: GGUF quantization for the exporter.

mod backend;
mod context;
mod generate;
pub mod gguf;
mod model;
mod quantize;
mod raw;
mod sampling;
mod text;

pub use backend::{devices, gpu_compiled_in, init_backend, no_gpu_reason, system_info, ComputeDevice};
pub use context::{ContextParams, FlashAttention, LlmContext, PerfCounters, PrefillReport, PrefixState, Segment};
pub use generate::{GenerateOptions, Generation, StopReason};
pub use model::{check_gguf_header, LlmModel, ModelParams};
pub use quantize::quantize;
pub use raw::raw_greedy_decode;
pub use sampling::{apply_repetition_penalty, argmax, Sampler, SamplingParams};
pub use text::TextStream;
