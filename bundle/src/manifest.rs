//! The manifest schema. The Python writer is `export/python/emollama_export/manifest.py`
//! and `synthetic.py`; bump [`FORMAT_VERSION`] on both sides for incompatible changes.

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "emollama-bundle";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// Stable identifier of what was exported (e.g. `synthetic-seed1234`).
    pub id: String,
    /// True for random-weight bundles: their answers mean nothing.
    pub synthetic: bool,
    pub description: String,
    pub provenance: Provenance,
    pub llm: LlmInfo,
    pub rows: Rows,
    pub prompt: PromptLayout,
    pub preprocess: Preprocess,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    pub source: String,
    pub exporter: String,
    pub exporter_version: String,
    /// Library versions and anything else the exporter records.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmInfo {
    pub embedding_width: u64,
    pub vocab_size: u64,
    pub bos_id: i32,
    pub eos_id: i32,
    pub n_ctx_train: u32,
    /// Architecture numbers the memory planner needs (KV cache, re-quantised size).
    pub n_layer: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_params: u64,
}

/// Embedding rows each modality contributes to the prompt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rows {
    pub global_patches: u32,
    pub local: u32,
    pub temporal: u32,
    pub audio: u32,
    pub global_cls: u32,
}

impl Rows {
    pub fn total(&self) -> u32 {
        self.global_patches + self.local + self.temporal + self.audio + self.global_cls
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptLayout {
    /// `inference`: all rows at the placeholder, as the official eval and demo do.
    pub layout: String,
    pub placeholder: String,
    pub row_order: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub global: GlobalPreprocess,
    pub face: FaceConfig,
    pub temporal: TemporalPreprocess,
    pub audio: AudioPreprocess,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalPreprocess {
    pub image_size: [u32; 2],
    pub resize: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub frame: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceConfig {
    pub image_size: [u32; 2],
    pub aligned_size: [u32; 2],
    pub resize: String,
    pub scale: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemporalPreprocess {
    pub frames: u32,
    pub segments: u32,
    pub frames_per_segment: u32,
    pub image_size: [u32; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioPreprocess {
    pub sample_rate: u32,
    pub channels: u32,
}

/// What a file is for. Unknown roles from newer exporters are kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    GlobalEngine,
    LocalEngine,
    TemporalEngine,
    AudioEngine,
    Llm,
    /// MTCNN's three stages (facenet-pytorch weights).
    FacePnet,
    FaceRnet,
    FaceOnet,
    /// The rows of an all-zero utterance feature (local, temporal, audio): the
    /// projector biases, used for the official demo mode and for missing input.
    ZeroRows,
    #[serde(untagged)]
    Other(String),
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Role::GlobalEngine => "global_engine",
            Role::LocalEngine => "local_engine",
            Role::TemporalEngine => "temporal_engine",
            Role::AudioEngine => "audio_engine",
            Role::Llm => "llm",
            Role::FacePnet => "face_pnet",
            Role::FaceRnet => "face_rnet",
            Role::FaceOnet => "face_onet",
            Role::ZeroRows => "zero_rows",
            Role::Other(s) => s,
        }
    }

    pub const ENGINES: [Role; 4] = [Role::GlobalEngine, Role::LocalEngine, Role::TemporalEngine, Role::AudioEngine];
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the bundle folder.
    pub path: String,
    pub role: Role,
    /// `onnx`, `gguf`, ...
    pub format: String,
    pub precision: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub parity: Option<Parity>,
    /// Where non-synthetic weights came from (package, file, licence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One axis of a tensor shape: a fixed size or a named dynamic axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    Dynamic(String),
}

impl Dim {
    pub fn fixed(&self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Dynamic(_) => None,
        }
    }

    pub fn accepts(&self, n: u64) -> bool {
        self.fixed().is_none_or(|f| f == n)
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// `[batch, 3, 448, 448]`, for messages.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(ToString::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// The parity a file met against its reference when it was exported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parity {
    pub reference: String,
    pub tolerance: f64,
    #[serde(default)]
    pub max_abs_diff: Option<f64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}
