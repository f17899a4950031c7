//! The typed vocabulary of the contract: one type per concept, shared by the manifest,
//! the device profiles, the planner, the engines and the CLI. Each has one spelling on
//! the wire (serde), one parser (`FromStr`, which serde also uses) and one display name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::manifest::Role;

/// A value that is not one of a type's names, with the names it could have been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {found:?}: use {}", expected.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub found: String,
    pub expected: Vec<&'static str>,
}

/// Implements `name()`, `ALL`, `FromStr`, `Display` and string serde for a fieldless
/// enum from one table of (variant, name), so the spellings cannot drift apart.
macro_rules! named_enum {
    ($ty:ident, $what:literal, [$(($var:ident, $name:literal)),+ $(,)?]) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$var),+];

            pub fn name(self) -> &'static str {
                match self { $($ty::$var => $name),+ }
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                let lower = s.trim().to_ascii_lowercase();
                $ty::ALL.iter().copied().find(|v| v.name() == lower).ok_or_else(|| UnknownName {
                    what: $what,
                    found: s.to_string(),
                    expected: $ty::ALL.iter().map(|v| v.name()).collect(),
                })
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The element type of a GGUF LLM file (llama.cpp's file types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
    Q6K,
    Q5KM,
    Q4KM,
    Q4_0,
    Iq4Xs,
    Q3KM,
}

named_enum!(
    GgufType,
    "GGUF type",
    [
        (F32, "f32"),
        (F16, "f16"),
        (Q8_0, "q8_0"),
        (Q6K, "q6_k"),
        (Q5KM, "q5_k_m"),
        (Q4KM, "q4_k_m"),
        (Q4_0, "q4_0"),
        (Iq4Xs, "iq4_xs"),
        (Q3KM, "q3_k_m"),
    ]
);

impl GgufType {
    /// Average bits per weight of a LLaMA-7B file of this type (llama.cpp's tables).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Self::F32 => 32.0,
            Self::F16 => 16.0,
            Self::Q8_0 => 8.5,
            Self::Q6K => 6.56,
            Self::Q5KM => 5.69,
            Self::Q4KM => 4.85,
            Self::Q4_0 => 4.5,
            Self::Iq4Xs => 4.25,
            Self::Q3KM => 3.91,
        }
    }
}

/// The element type of llama.cpp's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvType {
    F32,
    #[default]
    F16,
    Q8_0,
    Q4_0,
}

named_enum!(KvType, "KV cache type", [(F32, "f32"), (F16, "f16"), (Q8_0, "q8_0"), (Q4_0, "q4_0")]);

impl KvType {
    /// Bytes per element (block formats averaged over their 32-element blocks).
    pub fn bytes_per_element(self) -> f64 {
        match self {
            Self::F32 => 4.0,
            Self::F16 => 2.0,
            Self::Q8_0 => 34.0 / 32.0,
            Self::Q4_0 => 18.0 / 32.0,
        }
    }

    /// Elements per block: llama.cpp refuses a quantized cache whose attention head size
    /// is not a multiple of it.
    pub fn block_size(self) -> u32 {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q8_0 | Self::Q4_0 => 32,
        }
    }

    /// Whether llama.cpp can hold a cache of this type for heads of `head_dim`.
    pub fn fits_head_dim(self, head_dim: u32) -> bool {
        head_dim.is_multiple_of(self.block_size())
    }
}

/// The arithmetic precision of an encoder engine (ONNX file, or the TensorRT engine
/// built from it). Ordered from smallest to largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnginePrecision {
    Int8,
    Fp16,
    Fp32,
}

named_enum!(EnginePrecision, "engine precision", [(Int8, "int8"), (Fp16, "fp16"), (Fp32, "fp32")]);

impl EnginePrecision {
    pub fn bytes_per_param(self) -> f64 {
        match self {
            Self::Int8 => 1.0,
            Self::Fp16 => 2.0,
            Self::Fp32 => 4.0,
        }
    }
}

/// The resampling filter of a resize, as PIL names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resize {
    Bicubic,
    Bilinear,
}

named_enum!(Resize, "resize filter", [(Bicubic, "bicubic"), (Bilinear, "bilinear")]);

/// Which decoded frame the global encoder sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameChoice {
    /// The official choice: the first decoded frame.
    First,
    Middle,
}

named_enum!(FrameChoice, "frame choice", [(First, "first"), (Middle, "middle")]);

/// A file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    Onnx,
    Gguf,
    /// Little-endian f32 values, row-major.
    RawF32,
    /// A Hugging Face `tokenizers` file (`tokenizer.json`).
    TokenizerJson,
}

named_enum!(
    FileFormat,
    "file format",
    [(Onnx, "onnx"), (Gguf, "gguf"), (RawF32, "raw-f32"), (TokenizerJson, "tokenizer-json")]
);

/// The element type of an engine's input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
}

named_enum!(DType, "tensor dtype", [(F32, "f32")]);

/// One block of embedding rows in the prompt, by the modality that produces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowBlock {
    /// The global encoder's patch rows (256 in the official models).
    GlobalPatches,
    Local,
    Temporal,
    Audio,
    /// The global encoder's CLS row (Emotion-LLaMA).
    GlobalCls,
    /// ConvProAttention's rows (Emotion-LLaMA-v2).
    Fusion,
}

named_enum!(
    RowBlock,
    "row block",
    [
        (GlobalPatches, "global_patches"),
        (Local, "local"),
        (Temporal, "temporal"),
        (Audio, "audio"),
        (GlobalCls, "global_cls"),
        (Fusion, "fusion"),
    ]
);

/// Which model a bundle holds. Everything else that differs between them is data in the
/// manifest (rows, their order, the placeholder, preprocessing, presets) or lives in one
/// place per stage of the runtime, chosen by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ModelFamily {
    /// Emotion-LLaMA (NeurIPS 2024): EVA, MAE and VideoMAE on faces, HuBERT; 260 rows.
    #[default]
    EmotionLlama,
    /// Emotion-LLaMA-v2: EVA, a second EVA over 16 frames, Whisper's encoder,
    /// ConvProAttention; 448 rows.
    EmotionLlamaV2,
}

named_enum!(ModelFamily, "model family", [(EmotionLlama, "emotion-llama"), (EmotionLlamaV2, "emotion-llama-v2")]);

impl ModelFamily {
    /// The row blocks this model's prompt holds (each exactly once, in any order the
    /// manifest's `row_order` gives).
    pub fn row_blocks(self) -> &'static [RowBlock] {
        match self {
            ModelFamily::EmotionLlama => {
                &[RowBlock::GlobalPatches, RowBlock::Local, RowBlock::Temporal, RowBlock::Audio, RowBlock::GlobalCls]
            }
            ModelFamily::EmotionLlamaV2 => {
                &[RowBlock::GlobalPatches, RowBlock::Temporal, RowBlock::Audio, RowBlock::Fusion]
            }
        }
    }

    /// The encoders, required first (a v1 bundle may lack local and temporal).
    pub fn encoders(self) -> &'static [Role] {
        match self {
            ModelFamily::EmotionLlama => &Role::ENGINES,
            ModelFamily::EmotionLlamaV2 => {
                &[Role::GlobalEngine, Role::TemporalEngine, Role::AudioEngine, Role::FusionEngine]
            }
        }
    }

    /// Every engine that makes prompt rows: the encoders, then projector-only engines.
    pub fn row_engines(self) -> &'static [Role] {
        match self {
            ModelFamily::EmotionLlama => &Role::ROW_ENGINES,
            ModelFamily::EmotionLlamaV2 => self.encoders(),
        }
    }

    /// The blocks whose all-zero-input rows the `zero_rows` file holds, in its order
    /// (one row each: the projector's bias).
    pub fn zero_row_blocks(self) -> &'static [RowBlock] {
        match self {
            ModelFamily::EmotionLlama => &[RowBlock::Local, RowBlock::Temporal, RowBlock::Audio],
            ModelFamily::EmotionLlamaV2 => &[RowBlock::Temporal, RowBlock::Audio],
        }
    }
}

/// A file's precision: an encoder's arithmetic, or the LLM's GGUF type. The names do not
/// overlap (`fp32` is an engine's, `f32` a GGUF file's), so one string says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Engine(EnginePrecision),
    Gguf(GgufType),
}

impl Precision {
    pub fn engine(self) -> Option<EnginePrecision> {
        match self {
            Precision::Engine(p) => Some(p),
            Precision::Gguf(_) => None,
        }
    }

    pub fn gguf(self) -> Option<GgufType> {
        match self {
            Precision::Gguf(t) => Some(t),
            Precision::Engine(_) => None,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precision::Engine(p) => p.fmt(f),
            Precision::Gguf(t) => t.fmt(f),
        }
    }
}

impl FromStr for Precision {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        if let Ok(p) = s.parse::<EnginePrecision>() {
            return Ok(Precision::Engine(p));
        }
        s.parse::<GgufType>().map(Precision::Gguf).map_err(|_| UnknownName {
            what: "precision",
            found: s.to_string(),
            expected: EnginePrecision::ALL
                .iter()
                .map(|p| p.name())
                .chain(GgufType::ALL.iter().map(|t| t.name()))
                .collect(),
        })
    }
}

impl Serialize for Precision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Precision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_say_what_is_allowed() {
        for t in GgufType::ALL {
            assert_eq!(t.name().parse::<GgufType>().unwrap(), *t);
            assert_eq!(serde_json::to_string(t).unwrap(), format!("\"{}\"", t.name()));
        }
        assert_eq!("Q4_K_M".parse::<GgufType>().unwrap(), GgufType::Q4KM);
        let e = "q9".parse::<KvType>().unwrap_err().to_string();
        assert!(e.contains("unknown KV cache type \"q9\"") && e.contains("q8_0"), "{e}");
        assert!(serde_json::from_str::<KvType>("\"f8\"").is_err());
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::Engine(EnginePrecision::Fp16));
        assert_eq!("f16".parse::<Precision>().unwrap(), Precision::Gguf(GgufType::F16));
        assert!("fp8".parse::<Precision>().is_err());
        assert!(EnginePrecision::Int8 < EnginePrecision::Fp32);
    }
}
