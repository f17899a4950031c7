//! The manifest schema. The Python writer is `export/python/emollama_export/manifest.py`
//! and `synthetic.py`; bump [`FORMAT_VERSION`] on both sides for incompatible changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{DType, FileFormat, FrameChoice, ModelFamily, Precision, Resize, RowBlock};

pub const FORMAT: &str = "emollama-bundle";
/// Version 2: typed fields; the prompt's row order, the preprocessing filters, the
/// aligned face size and the generation presets moved out of the runtime's code.
pub const FORMAT_VERSION: u32 = 2;

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
    /// Which model (absent in the manifests written before v2: Emotion-LLaMA).
    #[serde(default)]
    pub model: ModelFamily,
    pub provenance: Provenance,
    pub llm: LlmInfo,
    pub rows: Rows,
    pub prompt: PromptSpec,
    pub preprocess: Preprocess,
    pub generation: Generation,
    pub files: Vec<FileEntry>,
    /// Whisper speech recognition, when the bundle has its engines (`asr_*` roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asr: Option<AsrInfo>,
}

/// What the runtime's Whisper front end and greedy decoder need (the exporter copies the
/// checkpoint's config and generation config here).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AsrInfo {
    /// The checkpoint's folder name (`whisper-small`, …).
    pub checkpoint: String,
    /// The log-mel front end (`WhisperFeatureExtractor`): rate, FFT size, hop, bins, and
    /// the one window the encoder takes (30 s).
    pub sample_rate: u32,
    pub n_fft: u32,
    pub hop_length: u32,
    pub n_mels: u32,
    pub chunk_samples: u32,
    /// The decoder's cache shape: layers, heads, head width, encoder positions.
    pub decoder_layers: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub audio_positions: u32,
    /// The longest decoder sequence, forced tokens included (448).
    pub max_length: u32,
    pub vocab_size: u32,
    /// Forced and special token ids.
    pub start: u32,
    pub end: u32,
    pub translate: u32,
    pub transcribe: u32,
    pub no_timestamps: u32,
    /// The first timestamp token (`<|0.00|>`): ids from here on are not text.
    pub timestamp_begin: u32,
    /// Language code (`en`, `zh`, …) to its token id.
    pub languages: BTreeMap<String, u32>,
    /// Never sampled; and not as the first token.
    pub suppress: Vec<u32>,
    pub begin_suppress: Vec<u32>,
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
    /// Checked against the GGUF's own ids when the LLM loads.
    pub bos_id: i32,
    pub eos_id: i32,
    /// The context the model was trained for: the runtime's context never exceeds it.
    pub n_ctx_train: u32,
    /// Architecture numbers the memory planner needs (KV cache, re-quantised size).
    pub n_layer: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_params: u64,
}

/// Embedding rows each modality contributes to the prompt (0: a block the model does
/// not have).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rows {
    pub global_patches: u32,
    #[serde(default)]
    pub local: u32,
    pub temporal: u32,
    pub audio: u32,
    #[serde(default)]
    pub global_cls: u32,
    #[serde(default)]
    pub fusion: u32,
}

impl Rows {
    /// All the rows (u64: six u32 counts from a manifest cannot overflow it).
    pub fn total(&self) -> u64 {
        [self.global_patches, self.local, self.temporal, self.audio, self.global_cls, self.fusion]
            .iter()
            .map(|r| u64::from(*r))
            .sum()
    }

    /// Rows of one block.
    pub fn of(&self, block: RowBlock) -> u32 {
        match block {
            RowBlock::GlobalPatches => self.global_patches,
            RowBlock::Local => self.local,
            RowBlock::Temporal => self.temporal,
            RowBlock::Audio => self.audio,
            RowBlock::GlobalCls => self.global_cls,
            RowBlock::Fusion => self.fusion,
        }
    }
}

/// Where the embedding rows go: all of them, in `row_order`, at the one `placeholder`
/// of the prompt text (`get_context_emb` at inference, official eval and demo alike).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    pub placeholder: String,
    /// A permutation of the model's blocks.
    pub row_order: Vec<RowBlock>,
    /// The token ids before the rows when the model's own environment fixes them (v2:
    /// its pinned tokenizer's `<s><s>[INST] <Vid>`, which llama.cpp would tokenize
    /// differently); None: the text before the placeholder, tokenized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_rows_ids: Option<Vec<i32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub global: GlobalPreprocess,
    /// The face encoders' crops (Emotion-LLaMA only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face: Option<FaceConfig>,
    pub temporal: TemporalPreprocess,
    pub audio: AudioPreprocess,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalPreprocess {
    pub image_size: [u32; 2],
    pub resize: Resize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub frame: FrameChoice,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceConfig {
    /// The local encoder's input size.
    pub image_size: [u32; 2],
    /// The aligned crop (five-point similarity warp) before the resize to `image_size`.
    pub aligned_size: [u32; 2],
    /// Used for the local and the temporal encoders' resizes.
    pub resize: Resize,
    /// Pixel scale (1/255: no mean/std for the face encoders).
    pub scale: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemporalPreprocess {
    /// Emotion-LLaMA: `segments × frames_per_segment` face crops (VideoMAE's sampler);
    /// v2: consecutive whole frames at a seeded start (`window`).
    pub frames: u32,
    #[serde(default)]
    pub segments: u32,
    #[serde(default)]
    pub frames_per_segment: u32,
    pub image_size: [u32; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<FrameWindow>,
}

/// Emotion-LLaMA-v2's temporal frames (v2 spec §3.2): `frames` consecutive frames whose
/// start numpy's legacy generator draws after `seed(seed)`, each resized and normalised.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameWindow {
    pub seed: u32,
    pub resize: Resize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioPreprocess {
    pub sample_rate: u32,
    /// 1: the runtime decodes mono (a bundle asking for more is refused at open).
    pub channels: u32,
    /// The audio encoder's input: Whisper's log-mel window (v2); None: the waveform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_mel: Option<LogMelSpec>,
}

/// A Whisper front end: `WhisperFeatureExtractor`'s parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogMelSpec {
    pub n_fft: u32,
    pub hop_length: u32,
    pub n_mels: u32,
    /// The one window the encoder hears (30 s at 16 kHz: 480000).
    pub chunk_samples: u32,
}

/// The generation presets the official code uses (spec §4.4).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// `eval_emotion.py`: greedy, 500 new tokens.
    pub eval: GenerationPreset,
    /// The Gradio demo: temperature 0.2, top-p 0.9, top-k 50, repetition penalty 1.05,
    /// prompt + answer capped at 2000 positions.
    pub demo: GenerationPreset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationPreset {
    /// 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: u32,
    pub top_p: f32,
    /// HF style, on generated ids only.
    pub repetition_penalty: f32,
    pub max_new_tokens: u32,
    /// Prompt + answer cap (the demo's `max_length`); the answer is shortened to fit.
    #[serde(default)]
    pub max_positions: Option<u32>,
    /// The answer ends before the first of these.
    pub stop_strings: Vec<String>,
}

/// What a file is for. Unknown roles from newer exporters are kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    GlobalEngine,
    LocalEngine,
    TemporalEngine,
    AudioEngine,
    /// Emotion-LLaMA-v2's ConvProAttention with its projector.
    FusionEngine,
    Llm,
    /// MTCNN's three stages (facenet-pytorch weights).
    FacePnet,
    FaceRnet,
    FaceOnet,
    /// `feats_llama_proj1/2/3` alone: one pre-extracted utterance feature (the encoder's
    /// output before its projector, the official eval's `.npy` files) to its prompt row.
    LocalProjector,
    TemporalProjector,
    AudioProjector,
    /// The rows of an all-zero utterance feature (local, temporal, audio): the
    /// projector biases, used for the official demo mode and for missing input.
    ZeroRows,
    /// Whisper (optional, as a whole): the encoder, the cross-attention keys and values,
    /// the decoder step with its cache, the tokenizer.
    AsrEncoder,
    AsrCrossKv,
    AsrDecoder,
    AsrTokenizer,
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
            Role::FusionEngine => "fusion_engine",
            Role::Llm => "llm",
            Role::FacePnet => "face_pnet",
            Role::FaceRnet => "face_rnet",
            Role::FaceOnet => "face_onet",
            Role::LocalProjector => "local_projector",
            Role::TemporalProjector => "temporal_projector",
            Role::AudioProjector => "audio_projector",
            Role::ZeroRows => "zero_rows",
            Role::AsrEncoder => "asr_encoder",
            Role::AsrCrossKv => "asr_cross_kv",
            Role::AsrDecoder => "asr_decoder",
            Role::AsrTokenizer => "asr_tokenizer",
            Role::Other(s) => s,
        }
    }

    /// Emotion-LLaMA's encoders ([`ModelFamily::encoders`] for any model's).
    pub const ENGINES: [Role; 4] = [Role::GlobalEngine, Role::LocalEngine, Role::TemporalEngine, Role::AudioEngine];
    pub const FACE_NETS: [Role; 3] = [Role::FacePnet, Role::FaceRnet, Role::FaceOnet];
    pub const PROJECTORS: [Role; 3] = [Role::LocalProjector, Role::TemporalProjector, Role::AudioProjector];
    pub const ASR: [Role; 4] = [Role::AsrEncoder, Role::AsrCrossKv, Role::AsrDecoder, Role::AsrTokenizer];
    /// Every engine that makes prompt rows: the encoders, then the projector-only engines.
    /// Emotion-LLaMA's ([`ModelFamily::row_engines`] for any model's).
    pub const ROW_ENGINES: [Role; 7] = [
        Role::GlobalEngine,
        Role::LocalEngine,
        Role::TemporalEngine,
        Role::AudioEngine,
        Role::LocalProjector,
        Role::TemporalProjector,
        Role::AudioProjector,
    ];

    /// Files a bundle may lack: the face detector (as a whole), and the local or temporal
    /// engine of an export made without the MAE or VideoMAE checkpoint, whose rows are then
    /// always the zero-feature rows; and the projector-only engines (bundles exported before
    /// them take no pre-extracted features).
    pub fn is_optional(&self) -> bool {
        matches!(
            self,
            Role::LocalEngine
                | Role::TemporalEngine
                | Role::FacePnet
                | Role::FaceRnet
                | Role::FaceOnet
                | Role::LocalProjector
                | Role::TemporalProjector
                | Role::AudioProjector
                | Role::AsrEncoder
                | Role::AsrCrossKv
                | Role::AsrDecoder
                | Role::AsrTokenizer
        )
    }
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
    pub format: FileFormat,
    pub precision: Precision,
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
    /// How an engine was made smaller than the export's fp32 (`emollama_export.quantize_encoders`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// An engine's quantization: the method, and for int8 the clips its activation ranges
/// were calibrated on (the parity it met is in the entry's `parity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

/// The calibration set: its hash (of the clips' names and bytes, in order), how many clips
/// calibrated and how many were held out for the parity check, and the folder's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub sha256: String,
    pub clips: u32,
    pub held_out_clips: u32,
    pub folder: String,
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

    /// Whether a run may give this axis no element: only a decoder's cache before its
    /// first token (the dynamic axis named [`Dim::PAST`]); every other axis holds data.
    pub fn may_be_empty(&self) -> bool {
        matches!(self, Dim::Dynamic(name) if name == Self::PAST)
    }

    pub const PAST: &'static str = "past";
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
    pub dtype: DType,
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
