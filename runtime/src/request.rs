//! What a request asks for, parsed once: the CLI's flags and the HTTP API's JSON and
//! multipart fields all become an [`AnalyzeOptions`] (serde, one set of rules), which
//! [`AnalyzeOptions::into_request`] validates into the typed [`AnalyzeRequest`] the
//! pipeline runs. The enums derive clap's `ValueEnum` when the `clap` feature is on (the
//! binary turns it on; the library itself links no CLI parser).

use serde::{Deserialize, Serialize};

use crate::asr::AsrTask;
use crate::features::FeatureFiles;
use crate::prompt::{EvalSet, Task, REASON_POOL};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Mode {
    /// All four encoders online (the product's default).
    Full,
    /// As the released demo: first frame + audio, zero inputs for local and temporal.
    OfficialDemo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Preset {
    /// The manifest's eval preset (`eval_emotion.py`: greedy, 500 new tokens).
    Eval,
    /// The manifest's demo preset (the Gradio demo's sampling and 2000-position cap).
    Demo,
    /// The emotion task answered from the label scores alone: about one prefill.
    Fast,
}

/// Which official prompt to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Layout {
    /// `eval_emotion.py`: `<s>[INST] {instruction} [/INST]` (double BOS with the tokenizer's).
    Eval,
    /// The Gradio demo: two user turns without separator, a third BOS mid-sequence.
    Demo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TaskKind {
    /// Recognise the emotion (nine labels, or six with `six_labels`).
    Emotion,
    /// Reason about the emotion (one instruction of the pool).
    Reason,
    /// Answer a free question.
    Question,
    /// Emotion-LLaMA-v2: positive, neutral or negative.
    Sentiment,
    /// Emotion-LLaMA-v2: the speaker's communicative intent.
    Intent,
    /// Emotion-LLaMA-v2: one or more emotions.
    #[serde(rename = "multi-label", alias = "multi_label")]
    MultiLabel,
    /// Emotion-LLaMA-v2: reasoning in `<think>`, the label in `<answer>`.
    Think,
    /// Emotion-LLaMA-v2: the voice alone (frame and video zeroed).
    Audio,
    /// Emotion-LLaMA-v2: the frame alone (video and audio zeroed).
    Image,
    /// Emotion-LLaMA-v2: one of its eval sets' prompts (`eval_set`).
    #[serde(rename = "eval-set", alias = "eval_set")]
    EvalSet,
}

/// One request, typed and validated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnalyzeRequest {
    pub media: String,
    /// What errors call the media when it is not the media's own name (an upload: its
    /// file name as the client sent it, never the service's private path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_name: Option<String>,
    /// A separate source for the audio track (None: the media's own track), and what
    /// errors call it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_name: Option<String>,
    /// The media is a still image (its one frame serves every encoder; no audio unless
    /// `audio` gives a track). Without it a still image is refused as not a video.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub still: bool,
    pub task: Task,
    pub layout: Layout,
    pub transcript: Option<String>,
    /// Speech recognition fills the transcript line when none is given (and the bundle
    /// has the engines).
    #[serde(default)]
    pub asr: AsrRequest,
    pub mode: Mode,
    pub preset: Preset,
    /// Label probabilities for the emotion task.
    pub scores: bool,
    /// Overrides of the preset (None: the manifest's value).
    pub max_new_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f32>,
    pub seed: u64,
    /// Stop strings besides the preset's (the answer ends before the first one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Pre-extracted features used instead of running the local, temporal or audio encoder.
    #[serde(default)]
    pub features: FeatureFiles,
}

impl AnalyzeRequest {
    /// What errors call the media.
    pub fn shown_media(&self) -> &str {
        self.media_name.as_deref().unwrap_or(&self.media)
    }

    /// What errors call the separate audio source.
    pub fn shown_audio(&self) -> Option<&str> {
        self.audio_name.as_deref().or(self.audio.as_deref())
    }

    /// The defaults: emotion (nine labels), eval layout and preset, full mode, scores on.
    pub fn new(media: impl Into<String>) -> Self {
        Self {
            media: media.into(),
            media_name: None,
            audio: None,
            audio_name: None,
            still: false,
            task: Task::Emotion { six_labels: false },
            layout: Layout::Eval,
            transcript: None,
            asr: AsrRequest::default(),
            mode: Mode::Full,
            preset: Preset::Eval,
            scores: true,
            max_new_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            repetition_penalty: None,
            seed: 0,
            stop: Vec::new(),
            features: FeatureFiles::default(),
        }
    }
}

/// Whether and how speech recognition fills a missing transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsrRequest {
    /// False when the request says `transcript: none`.
    pub enabled: bool,
    pub task: AsrTask,
    /// The spoken language's code (None: detected).
    pub language: Option<String>,
}

impl Default for AsrRequest {
    fn default() -> Self {
        Self { enabled: true, task: AsrTask::Translate, language: None }
    }
}

/// The transcript a request gives to turn speech recognition off.
pub const NO_TRANSCRIPT: &str = "none";

/// A value a request may not have, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RequestError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RequestError {
    RequestError { field, reason: reason.into() }
}

/// The options of a request as the API and the CLI give them (every field optional).
/// JSON bodies deserialize into it directly; multipart text fields go through
/// [`AnalyzeOptions::from_form`], which applies the same serde rules to each field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeOptions {
    /// The media source (HTTP API): a file inside an allowed folder, or a URL.
    pub path: Option<String>,
    pub url: Option<String>,
    pub task: Option<TaskKind>,
    pub question: Option<String>,
    /// What the person says; `none`: no transcript line, and no speech recognition.
    pub transcript: Option<String>,
    /// Speech recognition when no transcript is given: `translate` (to English, the
    /// default) or `transcribe`, and the spoken language (default: detected).
    pub asr_task: Option<AsrTask>,
    pub asr_language: Option<String>,
    pub mode: Option<Mode>,
    pub preset: Option<Preset>,
    pub layout: Option<Layout>,
    pub six_labels: Option<bool>,
    pub reason_index: Option<u32>,
    /// The v2 eval set whose prompt task `eval-set` asks with.
    pub eval_set: Option<EvalSet>,
    pub max_new_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    /// Stop strings besides the preset's: one string or a list of up to four (as the
    /// OpenAI API takes them).
    pub stop: Option<StopStrings>,
    pub scores: Option<bool>,
    /// Server-Sent Events instead of one JSON answer (HTTP API).
    pub stream: Option<bool>,
    /// Pre-extracted features (`.npy`, float32 `[C]` or `[1, C]`) used instead of running
    /// the MAE, VideoMAE or HuBERT encoder (HTTP API: files inside an allowed folder).
    pub local_features: Option<String>,
    pub temporal_features: Option<String>,
    pub audio_features: Option<String>,
}

/// At most this many stop strings (the OpenAI API's limit), each at most this long.
const MAX_STOP_STRINGS: usize = 4;
const MAX_STOP_BYTES: usize = 64;

/// `stop` as the OpenAI API takes it: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopStrings {
    One(String),
    Many(Vec<String>),
}

impl StopStrings {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopStrings::One(s) => vec![s],
            StopStrings::Many(v) => v,
        }
    }
}

/// Fields whose values are text; every other form field is read as a JSON scalar, so
/// `max_new_tokens=-1`, `seed=1e30` or `scores=1` are refused exactly as in JSON.
const TEXT_FIELDS: [&str; 15] = [
    "eval_set",
    "path",
    "asr_task",
    "asr_language",
    "stop",
    "url",
    "task",
    "question",
    "transcript",
    "mode",
    "preset",
    "layout",
    "local_features",
    "temporal_features",
    "audio_features",
];

impl AnalyzeOptions {
    /// Ask for `task` (its kind and its own field).
    pub fn ask(&mut self, task: Task) {
        match task {
            Task::Emotion { six_labels } => (self.task, self.six_labels) = (Some(TaskKind::Emotion), Some(six_labels)),
            Task::Reason { instruction } => {
                (self.task, self.reason_index) = (Some(TaskKind::Reason), Some(instruction as u32));
            }
            Task::Question { text } => (self.task, self.question) = (Some(TaskKind::Question), Some(text)),
            Task::Sentiment => self.task = Some(TaskKind::Sentiment),
            Task::Intent => self.task = Some(TaskKind::Intent),
            Task::MultiLabel => self.task = Some(TaskKind::MultiLabel),
            Task::Think => self.task = Some(TaskKind::Think),
            Task::Audio => self.task = Some(TaskKind::Audio),
            Task::Image => self.task = Some(TaskKind::Image),
            Task::EvalSet { set } => (self.task, self.eval_set) = (Some(TaskKind::EvalSet), Some(set)),
        }
    }

    /// Whether `name` is one of the options (the one list is the struct's own fields:
    /// every field is optional, so a null of a known name parses and an unknown one does not).
    pub fn knows_field(name: &str) -> bool {
        let mut map = serde_json::Map::new();
        map.insert(name.to_string(), serde_json::Value::Null);
        serde_json::from_value::<Self>(serde_json::Value::Object(map)).is_ok()
    }

    /// Whether a form field of this name is taken as text whatever it reads as (a
    /// question of "42" stays text; a number's field reads "42" as a number).
    pub fn is_text_field(name: &str) -> bool {
        TEXT_FIELDS.contains(&name)
    }

    /// Options from multipart text fields (name, value), with JSON's rules: numbers must
    /// be numbers of the field's type, booleans `true`/`false`, names known, each once.
    pub fn from_form<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, RequestError> {
        let mut map = serde_json::Map::new();
        for (name, value) in fields {
            if map.contains_key(name) {
                return Err(RequestError { field: "form", reason: format!("field {name:?} is given twice") });
            }
            let v = if Self::is_text_field(name) {
                serde_json::Value::String(value.to_string())
            } else {
                match serde_json::from_str::<serde_json::Value>(value.trim()) {
                    Ok(v) if !v.is_array() && !v.is_object() => v,
                    _ => serde_json::Value::String(value.to_string()),
                }
            };
            map.insert(name.to_string(), v);
        }
        serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| RequestError { field: "form", reason: e.to_string() })
    }

    /// Validate into a request for `media`. `max_new_tokens_limit` bounds what a request
    /// may ask for (the service's configuration; the CLI passes the preset's maximum).
    pub fn into_request(self, media: String, max_new_tokens_limit: u32) -> Result<AnalyzeRequest, RequestError> {
        let task = match self.task.unwrap_or(TaskKind::Emotion) {
            TaskKind::Emotion => Task::Emotion { six_labels: self.six_labels.unwrap_or(false) },
            TaskKind::Reason => {
                let i = self.reason_index.unwrap_or(0);
                if i as usize >= REASON_POOL.len() {
                    return Err(invalid(
                        "reason_index",
                        format!("{i} is out of range: the pool has instructions 0-{}", REASON_POOL.len() - 1),
                    ));
                }
                Task::Reason { instruction: i as usize }
            }
            TaskKind::Question => Task::Question {
                text: self.question.clone().filter(|q| !q.trim().is_empty()).ok_or_else(|| {
                    invalid(
                        "question",
                        "task question needs a non-empty question (--question TEXT; `question` in the API)",
                    )
                })?,
            },
            TaskKind::Sentiment => Task::Sentiment,
            TaskKind::Intent => Task::Intent,
            TaskKind::MultiLabel => Task::MultiLabel,
            TaskKind::Think => Task::Think,
            TaskKind::Audio => Task::Audio,
            TaskKind::Image => Task::Image,
            TaskKind::EvalSet => Task::EvalSet {
                set: self.eval_set.ok_or_else(|| {
                    invalid("eval_set", "task eval-set needs the set (--eval-set NAME; `eval_set` in the API)")
                })?,
            },
        };
        if let Some(n) = self.max_new_tokens {
            if n == 0 || n > max_new_tokens_limit {
                return Err(invalid("max_new_tokens", format!("{n} must be in 1-{max_new_tokens_limit}")));
            }
        }
        if let Some(t) = self.temperature {
            if !(t.is_finite() && (0.0..=100.0).contains(&t)) {
                return Err(invalid("temperature", format!("{t} must be in 0-100 (0: greedy)")));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(invalid("top_p", format!("{p} must be in (0, 1]")));
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !(r.is_finite() && r > 0.0 && r <= 10.0) {
                return Err(invalid("repetition_penalty", format!("{r} must be in (0, 10]")));
            }
        }
        let stop = self.stop.map(StopStrings::into_vec).unwrap_or_default();
        if stop.len() > MAX_STOP_STRINGS || stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return Err(invalid(
                "stop",
                format!("at most {MAX_STOP_STRINGS} stop strings, each 1-{MAX_STOP_BYTES} bytes"),
            ));
        }
        let off = self.transcript.as_deref().is_some_and(|t| t.trim().eq_ignore_ascii_case(NO_TRANSCRIPT));
        let asr = AsrRequest {
            enabled: !off,
            task: self.asr_task.unwrap_or_default(),
            language: self.asr_language.map(|l| l.trim().to_ascii_lowercase()),
        };
        Ok(AnalyzeRequest {
            task,
            stop,
            asr,
            layout: self.layout.unwrap_or(Layout::Eval),
            transcript: self.transcript.filter(|_| !off),
            mode: self.mode.unwrap_or(Mode::Full),
            preset: self.preset.unwrap_or(Preset::Eval),
            scores: self.scores.unwrap_or(true),
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed.unwrap_or(0),
            features: FeatureFiles {
                local: self.local_features.map(Into::into),
                temporal: self.temporal_features.map(Into::into),
                audio: self.audio_features.map(Into::into),
            },
            ..AnalyzeRequest::new(media)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Result<AnalyzeRequest, String> {
        serde_json::from_str::<AnalyzeOptions>(body)
            .map_err(|e| e.to_string())
            .and_then(|o| o.into_request("m".into(), 500).map_err(|e| e.to_string()))
    }

    fn form(fields: &[(&str, &str)]) -> Result<AnalyzeRequest, String> {
        AnalyzeOptions::from_form(fields.iter().copied())
            .map_err(|e| e.to_string())
            .and_then(|o| o.into_request("m".into(), 500).map_err(|e| e.to_string()))
    }

    /// One table, both forms: each value is accepted by both or refused by both.
    #[test]
    fn json_and_multipart_accept_and_refuse_the_same_values() {
        let cases: &[(&str, &str, &str, bool)] = &[
            // (field, form text, JSON literal, accepted)
            ("max_new_tokens", "12", "12", true),
            ("max_new_tokens", "-1", "-1", false),
            ("max_new_tokens", "0", "0", false),
            ("max_new_tokens", "1.5", "1.5", false),
            ("max_new_tokens", "501", "501", false),
            ("max_new_tokens", "ten", "\"ten\"", false),
            ("seed", "18446744073709551615", "18446744073709551615", true),
            ("seed", "1e30", "1e30", false),
            ("seed", "-3", "-3", false),
            ("temperature", "0.7", "0.7", true),
            ("temperature", "1e300", "1e300", false),
            ("temperature", "-0.1", "-0.1", false),
            ("top_p", "0", "0", false),
            ("top_p", "1", "1", true),
            ("top_k", "40", "40", true),
            ("top_k", "-40", "-40", false),
            ("repetition_penalty", "1.05", "1.05", true),
            ("repetition_penalty", "0", "0", false),
            ("scores", "true", "true", true),
            ("scores", "1", "1", false),
            ("scores", "yes", "\"yes\"", false),
            ("six_labels", "false", "false", true),
            ("preset", "fast", "\"fast\"", true),
            ("preset", "quick", "\"quick\"", false),
            ("mode", "official-demo", "\"official-demo\"", true),
            ("mode", "official_demo", "\"official_demo\"", false),
            ("layout", "demo", "\"demo\"", true),
            ("task", "sing", "\"sing\"", false),
            ("stop", "###", "\"###\"", true),
            ("stop", "", "\"\"", false),
            ("nonsense", "1", "1", false),
        ];
        for (field, text, literal, accepted) in cases {
            let j = json(&format!("{{\"{field}\": {literal}}}"));
            let f = form(&[(field, text)]);
            assert_eq!(j.is_ok(), *accepted, "JSON {field}={literal}: {j:?}");
            assert_eq!(f.is_ok(), *accepted, "form {field}={text}: {f:?}");
            if let (Ok(a), Ok(b)) = (&j, &f) {
                assert_eq!(a, b, "{field}: both forms give the same request");
            }
        }
        // The task's own fields, the same in both.
        for (fields, accepted) in [
            (vec![("task", "reason"), ("reason_index", "4")], true),
            (vec![("task", "reason"), ("reason_index", "5")], false),
            (vec![("task", "question")], false),
            (vec![("task", "question"), ("question", "  ")], false),
            (vec![("task", "question"), ("question", "Why?")], true),
        ] {
            let body: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| {
                    let v = if *k == "reason_index" { v.parse::<u32>().unwrap().into() } else { (*v).into() };
                    (k.to_string(), v)
                })
                .collect();
            let j = json(&serde_json::Value::Object(body).to_string());
            let f = form(&fields);
            assert_eq!((j.is_ok(), f.is_ok()), (accepted, accepted), "{fields:?}: {j:?} / {f:?}");
        }
        assert!(form(&[("seed", "1"), ("seed", "2")]).unwrap_err().contains("twice"));
        assert_eq!(form(&[("transcript", "123")]).unwrap().transcript.as_deref(), Some("123"));
        assert_eq!(json(r#"{"stop": ["a", "b"]}"#).unwrap().stop, ["a", "b"]);
        assert!(json(r#"{"stop": ["a", "b", "c", "d", "e"]}"#).unwrap_err().contains("at most 4"));
    }
}
