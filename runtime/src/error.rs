use std::path::PathBuf;

use emollama_bundle::GgufType;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Bundle(#[from] emollama_bundle::BundleError),
    #[error(transparent)]
    NoBundle(#[from] emollama_bundle::locations::NoBundle),
    #[error(transparent)]
    Engine(#[from] emollama_engines::EngineError),
    #[error("the LLM file's {what} is {gguf}, the manifest says {manifest}")]
    LlmMismatch { what: &'static str, gguf: i64, manifest: i64 },
    #[error("n_ctx {n_ctx} exceeds the {n_ctx_train} positions the model was trained for")]
    ContextTooLong { n_ctx: u32, n_ctx_train: u32 },
    #[error(transparent)]
    Media(#[from] emollama_media::MediaError),
    #[error(transparent)]
    Device(#[from] emollama_devices::DeviceError),
    #[error(transparent)]
    Request(#[from] crate::request::RequestError),
    #[error(transparent)]
    Features(#[from] crate::features::FeaturesError),
    #[error("pre-extracted {block} features were given, but this bundle has no {role} engine (bundles exported before projector-only engines); export the bundle again")]
    NoProjector { block: emollama_bundle::RowBlock, role: emollama_bundle::Role },
    #[error("refusing to load bundle {bundle} on {profile}: {message}")]
    DoesNotFit { bundle: String, profile: String, message: String },
    #[error("bundle {bundle} fits {profile} only with its LLM as {llm_type} ({message}); make that bundle first: emollama quantize --bundle IN OUT {llm_type}")]
    NeedsRequantize { bundle: String, profile: String, llm_type: GgufType, message: String },
    #[error("{stage} must run before this stage")]
    StageOrder { stage: &'static str },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Whether the request was cancelled (client gone, deadline, shutdown).
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            RuntimeError::Engine(emollama_engines::EngineError::Cancelled)
                | RuntimeError::Media(emollama_media::MediaError::Cancelled { .. })
        )
    }
}
