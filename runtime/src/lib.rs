//! The emollama runtime: finds and opens a bundle, loads its engines, and (in later
//! layers) runs the media front end, the prompt plan and the pipeline.

pub mod bench;
pub mod doctor;
pub mod error;
pub mod locate;
pub mod media;
pub mod pipeline;
pub mod prompt;
pub mod report;
pub mod serve;
pub mod transcript;

pub use error::RuntimeError;
