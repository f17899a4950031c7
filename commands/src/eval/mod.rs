//! `emollama eval`: the official MER2023 protocol on the device (Emotion-LLaMA-v2: one of
//! its eval sets, `--eval-set`, with its instruction and its scoring script's rule). A dataset as the official
//! files describe it ([`dataset`]), each clip through the pipeline (with pre-extracted
//! features where given) and appended to `results.jsonl` so an interrupted run resumes
//! ([`run`]), the paper's metrics as scikit-learn computes them ([`metrics`]), the report
//! (`eval.md`, `eval.json`, `confusion.svg`, [`report`]) and two runs compared
//! ([`compare`]): what a quantization cost on the same clips.

pub mod compare;
pub mod dataset;
pub mod metrics;
pub mod report;
pub mod run;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use emollama_runtime::prompt::{LABELS_6, LABELS_9, LABELS_DFEW};

pub use compare::Comparison;
pub use dataset::{Clip, Dataset, DatasetPaths};
pub use metrics::{Metrics, MultiLabelMetrics};
pub use report::EvalReport;
pub use run::{run_eval, EvalRow, EvalSettings, Progress, RunKey, RESULTS};

/// A label set: the MER2023/2024 six, or MERR's nine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LabelSet {
    /// happy, sad, neutral, angry, worried, surprise (MER2023/2024 scoring).
    Six,
    /// The six and fear, contempt, doubt (MERR; the MER2023 eval's instruction).
    Nine,
    /// DFEW's seven: happy, sad, neutral, angry, surprise, disgust, fear (scoring only:
    /// there is no official DFEW instruction).
    Dfew,
}

impl LabelSet {
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            LabelSet::Six => &LABELS_6,
            LabelSet::Nine => &LABELS_9,
            LabelSet::Dfew => &LABELS_DFEW,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("list file {path}, line {line}: {reason}")]
    ListLine { path: PathBuf, line: usize, reason: String },
    #[error("transcript file {path}: {reason}")]
    Transcripts { path: PathBuf, reason: String },
    #[error("{path} line {line} is not a result row ({reason}); it was not written by emollama eval")]
    ResultRow { path: PathBuf, line: usize, reason: String },
    #[error("{path} holds results of another run ({found}; this run is {expected}): give another --out, or --restart to replace them")]
    OtherRun { path: PathBuf, found: String, expected: String },
    #[error("--instruction {0:?}: the official prompts ask with the six or the nine labels (DFEW is a scoring set)")]
    Instruction(LabelSet),
    #[error("--asr: bundle {bundle} has no speech recognition engines (emollama_export.whisper adds them)")]
    NoAsr { bundle: String },
    #[error(
        "bundle {bundle} holds Emotion-LLaMA-v2: give --eval-set (one of {}), the v2 eval set the list belongs to \
         (its instruction and its scoring)",
        emollama_runtime::prompt::EvalSet::ALL.map(|s| crate::eval::run::wire(&s)).join(", ")
    )]
    NeedsEvalSet { bundle: String },
    #[error("--eval-set is Emotion-LLaMA-v2's; bundle {bundle} holds Emotion-LLaMA (its protocol: --instruction, --scoring)")]
    EvalSetOnV1 { bundle: String },
    #[error("{path}: no result rows")]
    NoRows { path: PathBuf },
    #[error(transparent)]
    Runtime(#[from] emollama_runtime::RuntimeError),
    #[error(transparent)]
    Write(#[from] crate::outputs::WriteError),
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io { path: path.into(), source }
}
