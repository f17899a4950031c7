//! ONNX Runtime encoder engines.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`), found by [`library`];
//! execution providers are chosen by [`providers`]; [`encoder::EncoderEngine`] is one
//! prepared model, shared across requests.

pub mod encoder;
pub mod library;
pub mod providers;

pub use encoder::{EncoderEngine, EngineOptions, Outputs};
pub use library::{init_runtime, OrtRuntime};
pub use providers::{available_providers, Provider, ProviderPolicy, TensorRtOptions};
