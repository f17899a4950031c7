use std::path::PathBuf;

/// Errors of the inference engines. Each names the engine/file involved and, where a
/// user can act, what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the ONNX Runtime library was not found; looked in:\n{}\nrun ./scripts/setup, or set `ort_library` in the config (or ORT_DYLIB_PATH) to a libonnxruntime.so of version 1.20 or newer", searched.iter().map(|p| format!("  - {}", p.display())).collect::<Vec<_>>().join("\n"))]
    OrtLibraryNotFound { searched: Vec<PathBuf> },
    #[error("the ONNX Runtime library {path} cannot be used: {message}")]
    OrtLibraryLoad { path: PathBuf, message: String },
    #[error("ONNX Runtime environment: {0}")]
    OrtEnvironment(String),
    #[error("{path} is not a readable ONNX graph: {reason}")]
    InvalidGraph { path: PathBuf, reason: String },
    #[error("the TensorRT support data is invalid: {0}")]
    SupportData(String),
    #[error("engine {engine}: model file {path} is missing")]
    ModelFileMissing { engine: String, path: PathBuf },
    #[error("engine {engine}: ONNX Runtime cannot load {path}: {message}")]
    SessionCreate { engine: String, path: PathBuf, message: String },
    #[error("engine {engine}: execution provider {provider} is required but unavailable: {reason}")]
    ProviderUnavailable { engine: String, provider: &'static str, reason: String },
    #[error("engine {engine}: input {input} must have shape {expected}, got {actual:?}")]
    InputShape { engine: String, input: String, expected: String, actual: Vec<usize> },
    #[error("engine {engine}: expected inputs {expected:?}, got {actual:?}")]
    InputNames { engine: String, expected: Vec<String>, actual: Vec<String> },
    #[error("engine {engine}: running the model failed: {message}")]
    Run { engine: String, message: String },
    #[error("cancelled")]
    Cancelled,
    #[error("engine {engine}: output {output} is missing or not f32: {message}")]
    Output { engine: String, output: String, message: String },

    #[error("GGUF file {path} is missing")]
    GgufMissing { path: PathBuf },
    #[error("{path} is not a usable GGUF file: {reason}")]
    GgufInvalid { path: PathBuf, reason: String },
    #[error("llama.cpp could not load {path} (see the log above for llama.cpp's reason)")]
    ModelLoad { path: PathBuf },
    #[error(
        "llama.cpp could not create a context (n_ctx {n_ctx}, n_batch {n_batch}): out of memory or invalid parameters"
    )]
    ContextCreate { n_ctx: u32, n_batch: u32 },
    #[error("embedding rows have width {actual}, the model's embedding width is {expected}")]
    EmbeddingWidth { expected: usize, actual: usize },
    #[error("embedding data holds {len} floats, which is not a whole number of rows of width {width}")]
    EmbeddingRagged { len: usize, width: usize },
    #[error("the prompt needs {needed} positions but the context holds {n_ctx}")]
    ContextOverflow { needed: usize, n_ctx: u32 },
    #[error("token id {token} is outside the vocabulary of {n_vocab}")]
    TokenOutOfRange { token: i32, n_vocab: i32 },
    #[error("llama_decode failed with code {code} ({meaning})")]
    Decode { code: i32, meaning: &'static str },
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("no logits are available: nothing has been decoded yet")]
    NoLogits,
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
    #[error("saved prefix state does not fit this context: {0}")]
    State(String),
    #[error("quantizing {input} to {output} failed (llama.cpp code {code})")]
    Quantize { input: PathBuf, output: PathBuf, code: u32 },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
