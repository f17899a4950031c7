//! The emollama bundle: a folder holding the encoder engines (ONNX), the LLaMA backbone
//! (GGUF) and `manifest.json`, the versioned contract between the exporter and the runtime.
//!
//! [`Bundle::open`] reads and checks the manifest (format, version, internal consistency);
//! [`Bundle::verify_files`] checks every file's presence, size and sha256. Dimensions the
//! runtime needs (rows, embedding width, image sizes, sample rate) are read from here,
//! never hard-coded, so the same code runs the 7B bundle and the tiny synthetic one.

mod error;
mod manifest;
mod verify;

pub use error::BundleError;
pub use manifest::{
    AudioPreprocess, Dim, FaceConfig, FileEntry, GlobalPreprocess, LlmInfo, Manifest, Parity, Preprocess, PromptLayout,
    Provenance, Role, Rows, TemporalPreprocess, TensorSpec, FORMAT, FORMAT_VERSION,
};
pub use verify::{sha256_file, Bundle};
