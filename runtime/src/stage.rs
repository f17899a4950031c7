//! The stages of one request, typed: the session's methods, the timings of a result,
//! the service's metrics and the bench all name a stage by this enum, never by a string
//! written in several files. Serialised as snake_case names (`decode`, …).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// An HTTP(S) source copied to a local file.
    Fetch,
    /// The source demuxed once: its audio decoded and resampled, its selected frames
    /// decoded to RGB.
    Decode,
    /// Speech recognition (Whisper) filling the transcript line.
    Asr,
    GlobalEncoder,
    Faces,
    LocalEncoder,
    TemporalEncoder,
    AudioEncoder,
    /// Emotion-LLaMA-v2's ConvProAttention over the other encoders' outputs.
    FusionEncoder,
    Prompt,
    Prefill,
    LabelScores,
    /// From the request's start to the first generated token.
    FirstToken,
    Generation,
    Total,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 15] = [
        Stage::Fetch,
        Stage::Decode,
        Stage::Asr,
        Stage::GlobalEncoder,
        Stage::Faces,
        Stage::LocalEncoder,
        Stage::TemporalEncoder,
        Stage::AudioEncoder,
        Stage::FusionEncoder,
        Stage::Prompt,
        Stage::Prefill,
        Stage::LabelScores,
        Stage::FirstToken,
        Stage::Generation,
        Stage::Total,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Asr => "asr",
            Stage::GlobalEncoder => "global_encoder",
            Stage::Faces => "faces",
            Stage::LocalEncoder => "local_encoder",
            Stage::TemporalEncoder => "temporal_encoder",
            Stage::FusionEncoder => "fusion_encoder",
            Stage::AudioEncoder => "audio_encoder",
            Stage::Prompt => "prompt",
            Stage::Prefill => "prefill",
            Stage::LabelScores => "label_scores",
            Stage::FirstToken => "first_token",
            Stage::Generation => "generation",
            Stage::Total => "total",
        }
    }

    /// The stages that do work of their own (not the summaries `first_token`, `total`).
    pub fn is_work(self) -> bool {
        !matches!(self, Stage::FirstToken | Stage::Total)
    }

    pub fn is_encoder(self) -> bool {
        matches!(
            self,
            Stage::GlobalEncoder
                | Stage::LocalEncoder
                | Stage::TemporalEncoder
                | Stage::AudioEncoder
                | Stage::FusionEncoder
        )
    }

    pub fn is_media(self) -> bool {
        matches!(self, Stage::Fetch | Stage::Decode | Stage::Faces)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Milliseconds per stage.
pub type Timings = BTreeMap<Stage, f64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for s in Stage::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.name()));
        }
        let t: Timings = [(Stage::Decode, 1.5)].into();
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, "{\"decode\":1.5}");
        assert_eq!(serde_json::from_str::<Timings>(&text).unwrap(), t);
    }
}
