//! The emollama bundle: a folder holding the encoder engines (ONNX), the LLaMA backbone
//! (GGUF) and `manifest.json`, the versioned contract between the exporter and the runtime.
//!
//! [`Bundle::open`] reads and checks the manifest (format, version, internal consistency,
//! the names and shapes the runtime needs: [`contract`]); [`Bundle::verify_files`] checks
//! every file's presence, size and sha256; [`derive_bundle`] writes a new bundle with one
//! file replaced. Everything that belongs to the model (dimensions, row order,
//! preprocessing, generation presets, special token ids) is read from the manifest, never
//! hard-coded, so the same code runs the 7B bundle and the tiny synthetic one.
//! [`types`] holds the one definition of each shared vocabulary type (GGUF type, KV type,
//! engine precision, resize filter).

pub mod contract;
mod error;
pub mod files;
pub mod locations;
mod manifest;
pub mod types;
mod verify;
mod writer;

pub use error::BundleError;
pub use manifest::{
    AsrInfo, AudioPreprocess, Calibration, Dim, FaceConfig, FileEntry, FrameWindow, Generation, GenerationPreset,
    GlobalPreprocess, LlmInfo, LogMelSpec, Manifest, Parity, Preprocess, PromptSpec, Provenance, Quantization, Role,
    Rows, TemporalPreprocess, TensorSpec, FORMAT, FORMAT_VERSION,
};
pub use types::{
    DType, EnginePrecision, FileFormat, FrameChoice, GgufType, KvType, ModelFamily, Precision, Resize, RowBlock,
};
pub use verify::{sha256_file, Bundle, MANIFEST_FILE};
pub use writer::{derive_bundle, install_bundle};
