//! ONNX Runtime encoder engines.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`), found by [`library`];
//! execution providers are chosen by [`providers`]; [`encoder::EncoderEngine`] is one
//! prepared model, shared across requests. [`graph`] reads a graph without a session,
//! for [`tensorrt_support`]'s check of what TensorRT can build.

pub mod encoder;
pub mod graph;
pub mod library;
pub mod providers;
pub mod tensorrt_support;

pub use encoder::{EncoderEngine, EngineOptions, Outputs};
pub use library::{init_runtime, OrtRuntime};
pub use providers::{available_providers, OptimisationProfile, Provider, ProviderPolicy, TensorRtOptions};
pub use tensorrt_support::{check_profiles, GraphVerdict, TensorRtSupport};
