use std::path::PathBuf;

/// What a command's back-end can fail with: the pipeline's errors, and its own.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Runtime(#[from] emollama_runtime::RuntimeError),
    #[error(transparent)]
    Engine(#[from] emollama_engines::EngineError),
    #[error(transparent)]
    Bundle(#[from] emollama_bundle::BundleError),
    #[error(transparent)]
    Device(#[from] emollama_devices::DeviceError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error(transparent)]
    Write(#[from] crate::outputs::WriteError),
    #[error("TensorRT is not available: {reason}; nothing to compile (the encoders run on CUDA or the CPU)")]
    TensorRtUnavailable { reason: String },
    #[error("engine {role}: TensorRT would refuse its graph: {reasons}")]
    TensorRtRefuses { role: String, reasons: String },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CommandError {
    /// Whether the work was cancelled (Ctrl-C, shutdown).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, CommandError::Runtime(e) if e.is_cancelled())
            || matches!(self, CommandError::Engine(emollama_engines::EngineError::Cancelled))
    }
}
