use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Bundle(#[from] emollama_bundle::BundleError),
    #[error(transparent)]
    Engine(#[from] emollama_engines::EngineError),
    #[error("no bundle found: pass --bundle DIR, install one under {installed}, or run ./scripts/setup to create the synthetic bundle at {synthetic}")]
    NoBundle { installed: PathBuf, synthetic: PathBuf },
    #[error("the LLM file says embedding width {gguf}, the manifest says {manifest}")]
    LlmWidthMismatch { gguf: u64, manifest: u64 },
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    #[error(transparent)]
    Device(#[from] emollama_devices::DeviceError),
    #[error("refusing to load bundle {bundle} on {profile}: {message}")]
    DoesNotFit { bundle: String, profile: String, message: String },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
