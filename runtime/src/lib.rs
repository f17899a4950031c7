//! The emollama pipeline: a [`Pipeline`] prepared once from a bundle (engines, face
//! detectors, the LLM) and a [`Session`] per request with one method per stage; the
//! prompt, the typed request and its parsing, the reports (`info`, `doctor`, `bench`).
//! No HTTP server and no CLI parser here: those are `emollama-serve` and the binary.

pub mod bench;
pub mod compile;
pub mod config;
pub mod doctor;
pub mod error;
pub mod eval;
pub mod features;
pub mod observer;
pub mod outputs;
pub mod pipeline;
pub mod prompt;
pub mod report;
pub mod request;
pub mod session;
pub mod stage;
pub mod transcript;
pub mod watch;

pub use config::RuntimeConfig;
pub use error::RuntimeError;
pub use features::{FeatureFiles, FeaturesError};
pub use pipeline::{planned_config, LoadOptions, Pipeline};
pub use request::{AnalyzeOptions, AnalyzeRequest, Layout, Mode, Preset, RequestError, TaskKind};
pub use session::{AnalyzeResult, Session};
pub use stage::{Stage, Timings};
