//! What the runtime needs of each engine: the input and output names it feeds and
//! reads (by name, never by position), and which prompt rows each output holds.
//! [`crate::Bundle::open`] refuses a manifest whose files do not declare them, so a
//! wrong bundle fails at open with its file named, not later inside a request.

use crate::manifest::Role;
use crate::types::{ModelFamily, RowBlock};

pub const PIXEL_VALUES: &str = "pixel_values";
pub const FACES: &str = "faces";
pub const CLIP: &str = "clip";
pub const WAVEFORM: &str = "waveform";
/// A projector-only engine's input: one utterance feature `[1, C]`.
pub const FEATURES: &str = "features";
pub const PATCH_ROWS: &str = "patch_rows";
pub const CLS_ROW: &str = "cls_row";
pub const LOCAL_ROW: &str = "local_row";
pub const TEMPORAL_ROW: &str = "temporal_row";
pub const AUDIO_ROW: &str = "audio_row";
pub const ZERO_ROWS: &str = "zero_rows";
/// MTCNN's nets: one image input, box regression and face probability out (O-Net also
/// the five landmarks).
pub const IMAGE: &str = "image";
pub const REG: &str = "reg";
pub const PROB: &str = "prob";
pub const LANDMARKS: &str = "landmarks";
/// Whisper: the log-mel window, the encoder's states, the cross-attention keys and
/// values, the decoder's new token ids (f32, exact below 2^24), its cache in and out, and
/// the last position's logits.
pub const INPUT_FEATURES: &str = "input_features";
pub const ENCODER_HIDDEN: &str = "encoder_hidden";
pub const CROSS_K: &str = "cross_k";
pub const CROSS_V: &str = "cross_v";
pub const INPUT_IDS: &str = "input_ids";
pub const PAST_K: &str = "past_k";
pub const PAST_V: &str = "past_v";
pub const LOGITS: &str = "logits";
pub const PRESENT_K: &str = "present_k";
pub const PRESENT_V: &str = "present_v";
/// Emotion-LLaMA-v2: the global CLS after `ln_vision` (for the fusion), the temporal
/// EVA's 16 frames and its 64 cells, the audio bins, their rows, ConvProAttention's rows.
pub const CLS_FEAT: &str = "cls_feat";
pub const FRAMES: &str = "frames";
pub const VIDEO_FEAT: &str = "video_feat";
pub const VIDEO_ROWS: &str = "video_rows";
pub const AUDIO_FEAT: &str = "audio_feat";
pub const AUDIO_ROWS: &str = "audio_rows";
pub const FUSION_ROWS: &str = "fusion_rows";

/// The names one role must declare.
#[derive(Debug, Clone, Copy)]
pub struct EngineIo {
    pub inputs: &'static [&'static str],
    /// Each output, with the prompt rows it holds (`[batch, rows, width]`), if any.
    pub outputs: &'static [(&'static str, Option<RowBlock>)],
}

/// The contract of a role in `family`'s bundles; `None` for roles without tensors (the
/// LLM).
pub fn engine_io(family: ModelFamily, role: &Role) -> Option<EngineIo> {
    if family == ModelFamily::EmotionLlamaV2 {
        let io = match role {
            Role::GlobalEngine => EngineIo {
                inputs: &[PIXEL_VALUES],
                outputs: &[(PATCH_ROWS, Some(RowBlock::GlobalPatches)), (CLS_FEAT, None)],
            },
            Role::TemporalEngine => {
                EngineIo { inputs: &[FRAMES], outputs: &[(VIDEO_FEAT, None), (VIDEO_ROWS, Some(RowBlock::Temporal))] }
            }
            Role::AudioEngine => EngineIo {
                inputs: &[INPUT_FEATURES],
                outputs: &[(AUDIO_FEAT, None), (AUDIO_ROWS, Some(RowBlock::Audio))],
            },
            Role::FusionEngine => EngineIo {
                inputs: &[AUDIO_FEAT, CLS_FEAT, VIDEO_FEAT],
                outputs: &[(FUSION_ROWS, Some(RowBlock::Fusion))],
            },
            _ => return v1_engine_io(role),
        };
        return Some(io);
    }
    v1_engine_io(role)
}

/// Emotion-LLaMA's contract (and the roles both models share: the LLM, the zero rows,
/// speech recognition).
fn v1_engine_io(role: &Role) -> Option<EngineIo> {
    Some(match role {
        Role::GlobalEngine => EngineIo {
            inputs: &[PIXEL_VALUES],
            outputs: &[(PATCH_ROWS, Some(RowBlock::GlobalPatches)), (CLS_ROW, Some(RowBlock::GlobalCls))],
        },
        Role::LocalEngine => EngineIo { inputs: &[FACES], outputs: &[(LOCAL_ROW, Some(RowBlock::Local))] },
        Role::TemporalEngine => EngineIo { inputs: &[CLIP], outputs: &[(TEMPORAL_ROW, Some(RowBlock::Temporal))] },
        Role::AudioEngine => EngineIo { inputs: &[WAVEFORM], outputs: &[(AUDIO_ROW, Some(RowBlock::Audio))] },
        Role::LocalProjector => EngineIo { inputs: &[FEATURES], outputs: &[(LOCAL_ROW, Some(RowBlock::Local))] },
        Role::TemporalProjector => {
            EngineIo { inputs: &[FEATURES], outputs: &[(TEMPORAL_ROW, Some(RowBlock::Temporal))] }
        }
        Role::AudioProjector => EngineIo { inputs: &[FEATURES], outputs: &[(AUDIO_ROW, Some(RowBlock::Audio))] },
        Role::FacePnet | Role::FaceRnet => EngineIo { inputs: &[IMAGE], outputs: &[(REG, None), (PROB, None)] },
        Role::FaceOnet => EngineIo { inputs: &[IMAGE], outputs: &[(REG, None), (LANDMARKS, None), (PROB, None)] },
        Role::ZeroRows => EngineIo { inputs: &[], outputs: &[(ZERO_ROWS, None)] },
        Role::AsrEncoder => EngineIo { inputs: &[INPUT_FEATURES], outputs: &[(ENCODER_HIDDEN, None)] },
        Role::AsrCrossKv => EngineIo { inputs: &[ENCODER_HIDDEN], outputs: &[(CROSS_K, None), (CROSS_V, None)] },
        Role::AsrDecoder => EngineIo {
            inputs: &[INPUT_IDS, PAST_K, PAST_V, CROSS_K, CROSS_V],
            outputs: &[(LOGITS, None), (PRESENT_K, None), (PRESENT_V, None)],
        },
        Role::Llm | Role::AsrTokenizer | Role::FusionEngine | Role::Other(_) => return None,
    })
}
