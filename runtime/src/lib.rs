//! The emollama pipeline core that every command and the service share: a [`Pipeline`]
//! prepared once from a bundle (engines, face detectors, the LLM) and a [`Session`] per
//! request with one method per stage; the prompt, the typed request and its parsing,
//! pre-extracted features, transcripts. The commands' own back-ends (eval, bench,
//! compile, info, doctor, watch) are `emollama-commands`; the HTTP server is
//! `emollama-serve`; the CLI parser is the binary's.

pub mod asr;
pub mod config;
pub mod error;
pub mod features;
pub mod observer;
pub mod pipeline;
pub mod prompt;
pub mod request;
pub mod session;
pub mod stage;
pub mod transcript;

pub use config::RuntimeConfig;
pub use error::RuntimeError;
pub use features::{FeatureFiles, FeaturesError};
pub use pipeline::{planned_config, LoadOptions, Pipeline};
pub use request::{AnalyzeOptions, AnalyzeRequest, Layout, Mode, Preset, RequestError, TaskKind};
pub use session::{AnalyzeResult, PromptTokens, Session, TranscriptReport};
pub use stage::{Stage, Timings};
