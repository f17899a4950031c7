//! Thin safe wrappers over the two inference libraries emollama runs:
//!
//! - [`onnx`]: ONNX Runtime (through `ort`, loaded at run time) for the four encoder
//!   engines, with the execution providers TensorRT → CUDA → CPU;
//! - [`llm`]: llama.cpp (through `llama-cpp-sys-2`) for the LLaMA backbone, with token
//!   and embedding-row prefill, sampling, streaming and prefix reuse.
//!
//! Nothing here knows about emotions, prompts or media.

pub mod cancel;
pub mod error;
pub mod llm;
pub mod onnx;

pub use cancel::CancelToken;
pub use error::EngineError;
