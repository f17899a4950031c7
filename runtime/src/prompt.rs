//! The prompt at inference (spec §4; v2 spec §4): the text around the embedding rows
//! (260 for Emotion-LLaMA, 448 for v2), the tasks and their instructions, and label
//! extraction as each model's official evaluation does it. Each function here that
//! differs between the models takes the [`ModelFamily`].

use emollama_bundle::ModelFamily;
use serde::{Deserialize, Serialize};

use crate::request::Layout;

/// The nine MERR labels, in the instruction's order.
pub const LABELS_9: [&str; 9] =
    ["happy", "sad", "neutral", "angry", "worried", "surprise", "fear", "contempt", "doubt"];
/// DFEW's seven classes (zero-shot eval with UAR/WAR; the official code has no DFEW
/// instruction, so it is asked with one of the others).
pub const LABELS_DFEW: [&str; 7] = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"];
/// MER2023/2024 scoring labels; any other answer scores as neutral.
pub const LABELS_6: [&str; 6] = ["happy", "sad", "neutral", "angry", "worried", "surprise"];

/// Emotion-LLaMA-v2's demo quick prompts (`app.py` L199-L204): the emotion labels, and
/// the emotion and reason instructions (tags added by [`Task`]).
pub const LABELS_V2: [&str; 7] = ["anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"];
const V2_EMOTION: &str =
    "Identify the emotion expressed in the video. Choose from: anger, disgust, fear, happy, neutral, sad, surprise.";
const V2_REASON: &str = "Why does the person in the video feel this way? Please provide evidence from the video.";
/// The demo's sentiment and think quick prompts (`app.py` L199-L204).
const V2_SENTIMENT: &str = "Identify the displayed sentiment in the video: Positive, Neutral or Negative.";
const V2_THINK: &str = "The possible emotions are: Anger, Happiness, Disgust, Surprise, Fear, Sadness, Excited, Neutral, Frustration. Analyze the person's emotional state in the video by combining visual, auditory, and textual clues. Provide your reasoning in <think> and your final label in <answer>.";
/// The tasks the demo has no quick prompt for: the first instruction of each training
/// pool (`mer_datasets.py`: intent L522, MAFW's multi-label L847, audio L54, image L119).
const V2_INTENT: &str = "Based on the visual, audio, and textual cues in the video, what is the speaker's intended action or communicative goal? Choose one of: acknowledging, agreeing, consoling, encouraging, neutral, questioning, suggesting, or wishing.";
const V2_MULTI_LABEL: &str = "Based on the multimodal content of the video (visuals, audio, and language), identify all emotions the person may be expressing. You may choose multiple labels. Your output can be any combination of valid emotion labels, such as: 'disgust,contempt', 'sadness,anxiety', 'anger,surprise', 'happiness,contempt', or 'anxiety,helplessness'. Use only labels from this list: anger, anxiety, contempt, disappointment, disgust, fear, happiness, helplessness, neutral, sadness, surprise.";
const V2_AUDIO: &str = "Based on the audio input, what can you infer about the speaker's emotional state? Please consider tone, intonation, pitch, and speech rate in your analysis.";
const V2_IMAGE: &str = "What emotional state might the person in the image be experiencing? Please support your answer using visual cues such as facial expression, body posture, and gaze direction.";
pub const LABELS_SENTIMENT: [&str; 3] = ["positive", "neutral", "negative"];
pub const LABELS_INTENT: [&str; 8] =
    ["acknowledging", "agreeing", "consoling", "encouraging", "neutral", "questioning", "suggesting", "wishing"];
pub const LABELS_THINK: [&str; 9] =
    ["anger", "happiness", "disgust", "surprise", "fear", "sadness", "excited", "neutral", "frustration"];
pub const LABELS_MAFW: [&str; 11] = [
    "anger",
    "anxiety",
    "contempt",
    "disappointment",
    "disgust",
    "fear",
    "happiness",
    "helplessness",
    "neutral",
    "sadness",
    "surprise",
];
pub const LABELS_BOLD: [&str; 26] = [
    "affection",
    "anger",
    "annoyance",
    "anticipation",
    "aversion",
    "confidence",
    "disapproval",
    "disconnection",
    "disquietment",
    "doubt/confusion",
    "embarrassment",
    "engagement",
    "esteem",
    "excitement",
    "fatigue",
    "fear",
    "happiness",
    "pain",
    "peace",
    "pleasure",
    "sadness",
    "sensitivity",
    "suffering",
    "surprise",
    "sympathy",
    "yearning",
];

/// How an eval set's answers are scored (v2 spec §5.2: `evaluation/score_*.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    /// `score_split.py`: the whole response, stripped and lowercased, against the label;
    /// accuracy and weighted F1.
    Single,
    /// `score_split_sentiment_no_neutral.py`: the same without the clips labelled neutral.
    NoNeutral,
    /// `score_multilabel.py`: labels split on `,` or `;`; F1 micro and samples, Jaccard, mAP.
    MultiLabel,
}

/// Emotion-LLaMA-v2's eval sets (`mer_eval_datasets.py`) that score without files the
/// official repository does not hold: not the hit-rate sets (MER2023, MER2024, IEMOCAP,
/// MELD emotion) or OV-MERD+, which need its emotion wheels and ground-truth files, not
/// E3 (its line names the speaker from a column) and not SIMS (its labels are numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum), value(rename_all = "snake_case"))]
pub enum EvalSet {
    Caer,
    Dfew,
    Mafw,
    MafwMulti,
    Bold,
    McEiuEmotion,
    McEiuIntent,
    MeldSentiment,
    CmuMosi,
    CmuMosei,
    #[cfg_attr(feature = "clap", value(name = "ch_sims_v2_s"))]
    ChSimsV2S,
}

const EVAL_EMOTION: &str = "You are a helpful assistant specialized in multimodal emotion recognition. Given the input video and audio, your task is to identify the emotion expressed by the person or people in the video. Your output must be";
const EVAL_SENTIMENT: &str = "You are a helpful assistant specialized in multimodal sentiment analysis. Given the input video and audio, your task is to identify the sentiment expressed by the person or people in the video. Your output must be only one sentiment label strictly chosen from the following list: Neutral, Negative, Positive. Please ensure that all predicted labels come only from this list.";
const EVAL_INTENT: &str = "You are a helpful assistant specialized in **multimodal intent recognition**. Given the input video and audio, your task is to identify the **speaker's communicative intent** based on both visual and auditory information. Your output must be **only one intent label**, strictly chosen from the following list: acknowledging, agreeing, consoling, encouraging, neutral, questioning, suggesting, wishing. Please ensure that all predicted labels come only from this list.";
const EVAL_ENDING: &str = "Please ensure that all predicted labels come only from this list.";

impl EvalSet {
    pub const ALL: [EvalSet; 11] = [
        EvalSet::Caer,
        EvalSet::Dfew,
        EvalSet::Mafw,
        EvalSet::MafwMulti,
        EvalSet::Bold,
        EvalSet::McEiuEmotion,
        EvalSet::McEiuIntent,
        EvalSet::MeldSentiment,
        EvalSet::CmuMosi,
        EvalSet::CmuMosei,
        EvalSet::ChSimsV2S,
    ];

    /// The task tag.
    pub fn tag(self) -> &'static str {
        match self {
            EvalSet::MafwMulti | EvalSet::Bold => "multi-label",
            EvalSet::McEiuIntent => "intent",
            EvalSet::MeldSentiment | EvalSet::CmuMosi | EvalSet::CmuMosei | EvalSet::ChSimsV2S => "sentiment",
            _ => "emotion",
        }
    }

    pub fn scoring(self) -> Scoring {
        match self {
            EvalSet::MafwMulti | EvalSet::Bold => Scoring::MultiLabel,
            EvalSet::CmuMosi | EvalSet::CmuMosei | EvalSet::ChSimsV2S => Scoring::NoNeutral,
            _ => Scoring::Single,
        }
    }

    /// The labels a list may hold (lowercase, as the model answers).
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            EvalSet::Caer | EvalSet::McEiuEmotion => &LABELS_V2,
            EvalSet::Dfew => &["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"],
            EvalSet::Mafw | EvalSet::MafwMulti => &LABELS_MAFW,
            EvalSet::Bold => &LABELS_BOLD,
            EvalSet::McEiuIntent => &LABELS_INTENT,
            EvalSet::MeldSentiment | EvalSet::CmuMosi | EvalSet::CmuMosei | EvalSet::ChSimsV2S => &LABELS_SENTIMENT,
        }
    }

    /// The set's one instruction, verbatim (`mer_eval_datasets.py`).
    pub fn instruction(self) -> String {
        let listed = |labels: &[&str]| labels.join(", ");
        let (how_many, list) = match self {
            EvalSet::McEiuIntent => return EVAL_INTENT.to_string(),
            EvalSet::MeldSentiment | EvalSet::CmuMosi | EvalSet::CmuMosei | EvalSet::ChSimsV2S => {
                return EVAL_SENTIMENT.to_string()
            }
            // BOLD's instruction lists its labels capitalised.
            EvalSet::Bold => ("one or more emotion labels", BOLD_LISTED.to_string()),
            EvalSet::MafwMulti => ("one or more emotion labels", listed(&LABELS_MAFW)),
            other => ("only one emotion label", listed(other.labels())),
        };
        format!("{EVAL_EMOTION} {how_many} strictly chosen from the following list: {list}. {EVAL_ENDING}")
    }
}

const BOLD_LISTED: &str = "Affection, Anger, Annoyance, Anticipation, Aversion, Confidence, Disapproval, Disconnection, Disquietment, Doubt/Confusion, Embarrassment, Engagement, Esteem, Excitement, Fatigue, Fear, Happiness, Pain, Peace, Pleasure, Sadness, Sensitivity, Suffering, Surprise, Sympathy, Yearning";

const EMOTION_9: &str = "Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise, fear, contempt, doubt.";
const EMOTION_6: &str =
    "Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise.";
/// `first_face.py` reasoning pool (L53-59).
pub const REASON_POOL: [&str; 5] = [
    "Please analyze all the clues in the video and reason out the emotional label of the person in the video.",
    "What is the emotional state of the person in the video? Please tell me the reason.",
    "What are the facial expressions and vocal tone used in the video? What is the intended meaning behind his words? Which emotion does this reflect?",
    "Please integrate information from various modalities to infer the emotional category of the person in the video.",
    "Could you describe the emotion-related features of the individual in the video? What emotional category do they fall into?",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Task {
    /// Recognition with the 9-label instruction (`six_labels`: the MER2023/2024 variant).
    Emotion { six_labels: bool },
    /// Reasoning, with one instruction of the pool.
    Reason { instruction: usize },
    /// A free question, asked with no task tag.
    Question { text: String },
    /// Emotion-LLaMA-v2's other tags (v2 spec §4.4): positive, neutral or negative.
    Sentiment,
    /// The speaker's communicative intent (MC-EIU's eight).
    Intent,
    /// One or more emotions, comma-separated (MAFW's eleven).
    #[serde(rename = "multi-label")]
    MultiLabel,
    /// Reasoning in `<think>`, the label in `<answer>`.
    Think,
    /// The voice alone: the frame and the video features zeroed, as v2's training asked it.
    Audio,
    /// The frame alone: the video and audio features zeroed.
    Image,
    /// One of v2's eval sets: its tag, its instruction and its prompt format.
    #[serde(rename = "eval-set")]
    EvalSet { set: EvalSet },
}

/// Which encoder inputs a task leaves to zeros (v2's `audio` and `image` training tasks,
/// `mer_datasets.py` L296-L305): the normalised global frame (still encoded), the
/// temporal features, the audio features (zero features: their rows are the projector
/// biases, and the fusion sees the zeros).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroedInputs {
    pub image: bool,
    pub video: bool,
    pub audio: bool,
}

impl Task {
    /// The task's name on the wire (the API's `task`, the result's).
    pub fn name(&self) -> &'static str {
        match self {
            Task::Emotion { .. } => "emotion",
            Task::Reason { .. } => "reason",
            Task::Question { .. } => "question",
            Task::Sentiment => "sentiment",
            Task::Intent => "intent",
            Task::MultiLabel => "multi-label",
            Task::Think => "think",
            Task::Audio => "audio",
            Task::Image => "image",
            Task::EvalSet { .. } => "eval-set",
        }
    }

    /// Whether `model` was trained for this task (Emotion-LLaMA knows emotion and reason).
    pub fn is_for(&self, model: ModelFamily) -> bool {
        match self {
            Task::Emotion { .. } | Task::Reason { .. } | Task::Question { .. } => true,
            _ => model == ModelFamily::EmotionLlamaV2,
        }
    }

    /// The labels an Emotion-LLaMA recognition answer is scored against.
    pub fn labels(&self) -> &'static [&'static str] {
        match self {
            Task::Emotion { six_labels: true } => &LABELS_6,
            _ => &LABELS_9,
        }
    }

    /// The closed label set `model`'s answer is one of, when the task has one: the
    /// labels scored one continuation each and read from the answer.
    pub fn labels_for(&self, model: ModelFamily) -> Option<&'static [&'static str]> {
        match (model, self) {
            (ModelFamily::EmotionLlama, Task::Emotion { .. }) => Some(self.labels()),
            (ModelFamily::EmotionLlamaV2, Task::Emotion { .. }) => Some(&LABELS_V2),
            (_, Task::Sentiment) => Some(&LABELS_SENTIMENT),
            (_, Task::Intent) => Some(&LABELS_INTENT),
            (_, Task::EvalSet { set }) if set.scoring() != Scoring::MultiLabel => Some(set.labels()),
            _ => None,
        }
    }

    /// The labels an answer may name without a closed set to score (think's, the
    /// multi-label task's): read from the answer, never scored.
    pub fn answer_labels(&self, model: ModelFamily) -> Option<&'static [&'static str]> {
        match self {
            Task::Think => Some(&LABELS_THINK),
            Task::MultiLabel => Some(&LABELS_MAFW),
            Task::EvalSet { set } => Some(set.labels()),
            _ => self.labels_for(model),
        }
    }

    /// The encoder inputs the task zeroes.
    pub fn zeroed_inputs(&self) -> ZeroedInputs {
        match self {
            Task::Audio => ZeroedInputs { image: true, video: true, audio: false },
            Task::Image => ZeroedInputs { image: false, video: true, audio: true },
            _ => ZeroedInputs::default(),
        }
    }

    /// `[task] instruction` as `model`'s training/eval data writes it (v2: its demo's
    /// quick prompts, else its training pools' first instruction; a question as written,
    /// whatever tag it carries).
    fn tagged_instruction(&self, model: ModelFamily) -> String {
        match self {
            _ if model == ModelFamily::EmotionLlama => self.v1_tagged_instruction(),
            Task::EvalSet { set } => format!("[{}] {}", set.tag(), set.instruction()),
            Task::Question { text } => text.trim().to_string(),
            task => format!("[{}] {}", task.name(), task.v2_instruction().unwrap_or_default()),
        }
    }

    /// v2's instruction for a tagged task: the demo's quick prompt, else the first of the
    /// task's training pool (None: the task has no single instruction).
    fn v2_instruction(&self) -> Option<&'static str> {
        Some(match self {
            Task::Emotion { .. } => V2_EMOTION,
            Task::Reason { .. } => V2_REASON,
            Task::Sentiment => V2_SENTIMENT,
            Task::Intent => V2_INTENT,
            Task::MultiLabel => V2_MULTI_LABEL,
            Task::Think => V2_THINK,
            Task::Audio => V2_AUDIO,
            Task::Image => V2_IMAGE,
            Task::Question { .. } | Task::EvalSet { .. } => return None,
        })
    }

    fn v1_tagged_instruction(&self) -> String {
        match self {
            Task::Emotion { six_labels } => format!("[emotion] {}", if *six_labels { EMOTION_6 } else { EMOTION_9 }),
            Task::Reason { instruction } => format!("[reason] {}", REASON_POOL[instruction % REASON_POOL.len()]),
            Task::Question { text } => text.trim().to_string(),
            // Refused before a prompt is built (`is_for`): Emotion-LLaMA was not trained for it.
            other => format!("[{}]", other.name()),
        }
    }

    /// The answer's label(s), as `model`'s official evaluation reads them and robustly
    /// (None: the task names no label). A multi-label answer's robust reading is every
    /// label word it holds, once each, in order, comma-separated.
    pub fn extract(&self, model: ModelFamily, answer: &str) -> Option<ExtractedLabel> {
        let labels = self.answer_labels(model)?;
        let multi = matches!(self, Task::MultiLabel)
            || matches!(self, Task::EvalSet { set } if set.scoring() == Scoring::MultiLabel);
        if !multi {
            return Some(extract_answer_label(model, answer, labels));
        }
        let lower = answer.to_lowercase();
        let mut named: Vec<&str> = Vec::new();
        let words = lower.split(|c: char| c.is_whitespace() || c == ',' || c == ';');
        for l in words.map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '/')) {
            if labels.contains(&l) && !named.contains(&l) {
                named.push(l);
            }
        }
        Some(ExtractedLabel {
            official: answer.trim().to_lowercase(),
            robust: (!named.is_empty()).then(|| named.join(",")),
        })
    }
}

/// A multi-label answer's labels as `score_multilabel.py` splits them: on `,` or `;`,
/// stripped, empty pieces dropped (the text lowercased by the caller).
pub fn split_labels(text: &str) -> Vec<&str> {
    text.split([',', ';']).map(str::trim).filter(|l| !l.is_empty()).collect()
}

/// The prompt text split around the embedding rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromptText {
    /// Tokenized with BOS added and special tokens parsed.
    pub before_rows: String,
    /// Tokenized without BOS, special tokens parsed.
    pub after_rows: String,
}

/// Build the official text. `placeholder`: where the embedding rows go (the manifest's;
/// `get_context_emb` splits on it only). `transcript`: the English sentence spoken, or
/// None (the "The person in video says" line is then left out; the official format
/// leaves its surrounding spaces, which this keeps).
pub fn build_prompt(
    model: ModelFamily,
    layout: Layout,
    task: &Task,
    transcript: Option<&str>,
    placeholder: &str,
) -> PromptText {
    let spoken = transcript.map(|t| t.trim().trim_end_matches('.')).filter(|t| !t.is_empty());
    let character_line = spoken.map(|t| format!("The person in video says: {t}. ")).unwrap_or_default();
    let full = match model {
        ModelFamily::EmotionLlama => v1_prompt(layout, task, &character_line, placeholder),
        ModelFamily::EmotionLlamaV2 => v2_prompt(layout, task, spoken, &character_line, placeholder),
    };
    let (before, after) = full.split_once(placeholder).expect("the template holds the placeholder");
    PromptText { before_rows: before.to_string(), after_rows: after.to_string() }
}

/// Emotion-LLaMA-v2 (v2 spec §4.2): one user turn, `<Vid>` around the placeholder. The
/// eval layout is the MER2023 eval set's (`The person in video says: {text}.␣␣[{task}]
/// {instruction}␣␣[/INST]`; without a transcript its line is left out); the demo layout
/// its first turn (`{q} [/INST]`, the user's text holding the line as the demo's
/// examples do).
fn v2_prompt(layout: Layout, task: &Task, spoken: Option<&str>, character_line: &str, placeholder: &str) -> String {
    let video = format!("<Vid>{placeholder}</Vid>");
    let tagged = task.tagged_instruction(ModelFamily::EmotionLlamaV2);
    match (layout, task, spoken) {
        // The eval sets' format (`mer_eval_datasets.py`, all but MER2023/2024): two spaces
        // after `</Vid>`, the line as the set writes it (empty without a transcript).
        (_, Task::EvalSet { .. }, _) => format!("<s>[INST] {video}  {character_line} {tagged}  [/INST]"),
        (Layout::Eval, Task::Emotion { .. } | Task::Reason { .. }, Some(t)) => {
            format!("<s>[INST] {video} The person in video says: {t}.  {tagged}  [/INST]")
        }
        (Layout::Eval, Task::Emotion { .. } | Task::Reason { .. }, None) => {
            format!("<s>[INST] {video} {tagged}  [/INST]")
        }
        _ => format!("<s>[INST] {video} {character_line}{tagged} [/INST]"),
    }
}

/// Emotion-LLaMA (spec §4.2).
fn v1_prompt(layout: Layout, task: &Task, character_line: &str, placeholder: &str) -> String {
    let video = format!("<video>{placeholder}</video> <feature><FeatureHere></feature>");
    match layout {
        // first_face.py: "<video><VideoHere></video> <feature><FeatureHere></feature> {character_line} [{task}] {instruction} "
        // then prepare_texts: "<s>[INST] " + that + " [/INST]".
        Layout::Eval => match task {
            Task::Question { .. } => {
                format!("<s>[INST] {video} {character_line} {} [/INST]", task.v1_tagged_instruction())
            }
            _ => format!("<s>[INST] {video} {character_line} {}  [/INST]", task.v1_tagged_instruction()),
        },
        // Chat.upload_img + Chat.ask: the user turn is a second "<s>[INST] " with no separator.
        Layout::Demo => {
            format!("<s>[INST] {video}<s>[INST] {character_line}{} [/INST]", task.v1_tagged_instruction())
        }
    }
}

/// The line the official examples put before the task: "The person in video says: …".
pub const TRANSCRIPT_LINE: &str = "The person in video says:";

/// A user's text (a chat message, the official demo's `question`) as the official demo's
/// examples write it: an optional transcript line, then a task.
#[derive(Debug, Clone, PartialEq)]
pub struct UserText {
    /// The spoken sentence from a leading "The person in video says: …" line.
    pub transcript: Option<String>,
    /// None: the text names no task (it was empty or held the transcript line only).
    pub task: Option<Task>,
}

/// Read a user's text. The transcript line runs to the first `[tag]` or the end of its
/// line, whichever comes first. A task's tag alone, or followed by one of its official
/// instructions (Emotion-LLaMA's, v2's quick prompts), is that task, rebuilt with the
/// bundle's model's template (v2's tags `[sentiment]`, `[intent]`, `[multi-label]`,
/// `[think]`, `[audio]`, `[image]` too); any other text, v1's demo tags with a question
/// of their own (`[visual] …`, `[audio] …`, `[detection] …`) included, is a question
/// asked as written.
pub fn read_user_text(text: &str) -> UserText {
    let text = text.trim();
    let (transcript, rest) = match text.get(..TRANSCRIPT_LINE.len()) {
        Some(head) if head.eq_ignore_ascii_case(TRANSCRIPT_LINE) => {
            let line = &text[TRANSCRIPT_LINE.len()..];
            let end = first_tag(line).into_iter().chain(line.find('\n')).min().unwrap_or(line.len());
            let spoken = line[..end].trim();
            ((!spoken.is_empty()).then(|| spoken.to_string()), line[end..].trim())
        }
        _ => (None, text),
    };
    let official = |tag: &str, instructions: &[&str]| -> Option<Option<usize>> {
        let instruction = rest.strip_prefix(tag)?.trim();
        if instruction.is_empty() {
            return Some(None);
        }
        instructions.iter().position(|i| *i == instruction).map(Some)
    };
    let v2_tasks = [Task::Sentiment, Task::Intent, Task::MultiLabel, Task::Think, Task::Audio, Task::Image];
    let task = if rest.is_empty() {
        None
    } else if let Some(i) = official("[emotion]", &[EMOTION_9, EMOTION_6, V2_EMOTION]) {
        Some(Task::Emotion { six_labels: i == Some(1) })
    } else if let Some(i) = official("[reason]", &REASON_POOL) {
        Some(Task::Reason { instruction: i.unwrap_or(0) })
    } else if official("[reason]", &[V2_REASON]).is_some() {
        Some(Task::Reason { instruction: 0 })
    } else if let Some(task) = v2_tasks
        .into_iter()
        .find(|t| official(&format!("[{}]", t.name()), &[t.v2_instruction().unwrap_or_default()]).is_some())
    {
        Some(task)
    } else {
        Some(Task::Question { text: rest.to_string() })
    };
    UserText { transcript, task }
}

/// Where the first `[tag]` (lowercase letters, `_` and `-`) starts.
fn first_tag(text: &str) -> Option<usize> {
    text.match_indices('[').map(|(i, _)| i).find(|&i| {
        let tail = &text[i + 1..];
        tail.find(']')
            .is_some_and(|end| end > 0 && tail[..end].chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '-'))
    })
}

/// The answer's label, two ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtractedLabel {
    /// `eval_emotion.py`: the last space-separated word, verbatim; anything that is not
    /// exactly a label (`"happy."`, `"Happy"`) scores as `neutral`.
    pub official: String,
    /// The last label word found anywhere in the answer (None if there is none).
    pub robust: Option<String>,
}

/// `model`'s label extraction. Emotion-LLaMA: [`extract_label`]. v2 (`score_split.py`):
/// the whole response, stripped and lowercased, is the official prediction; the robust
/// one reads a think answer's `<answer>…</answer>` first, then the last label word.
pub fn extract_answer_label(model: ModelFamily, answer: &str, labels: &[&str]) -> ExtractedLabel {
    match model {
        ModelFamily::EmotionLlama => extract_label(answer, labels),
        ModelFamily::EmotionLlamaV2 => {
            let answered = answer.split_once("<answer>").and_then(|(_, a)| a.split_once("</answer>")).map(|(a, _)| a);
            let robust = extract_label(answered.unwrap_or(answer), labels).robust;
            ExtractedLabel { official: answer.trim().to_lowercase(), robust }
        }
    }
}

pub fn extract_label(answer: &str, labels: &[&str]) -> ExtractedLabel {
    let clean = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
    let last = answer.split(' ').next_back().unwrap_or_default().trim();
    let official = if labels.contains(&last) { last.to_string() } else { "neutral".to_string() };
    let robust = answer.split_whitespace().map(clean).rfind(|w| labels.contains(&w.as_str()));
    ExtractedLabel { official, robust }
}

/// Sequence log-probabilities → probabilities over the label set (sum 1).
pub fn normalise_scores(logprobs: &[f64]) -> Vec<f64> {
    let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logprobs.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "<VideoHere>";

    #[test]
    fn eval_prompt_text_has_the_official_quirks() {
        let p = build_prompt(
            ModelFamily::EmotionLlama,
            Layout::Eval,
            &Task::Emotion { six_labels: false },
            Some("I can't believe we made it"),
            P,
        );
        assert_eq!(p.before_rows, "<s>[INST] <video>");
        assert_eq!(
            p.after_rows,
            "</video> <feature><FeatureHere></feature> The person in video says: I can't believe we made it.  [emotion] Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise, fear, contempt, doubt.  [/INST]"
        );
        let no_transcript =
            build_prompt(ModelFamily::EmotionLlama, Layout::Eval, &Task::Emotion { six_labels: true }, None, P);
        assert!(no_transcript.after_rows.starts_with("</video> <feature><FeatureHere></feature>  [emotion]"));
        assert!(no_transcript.after_rows.ends_with("worried, surprise.  [/INST]"));
    }

    #[test]
    fn v2_prompts_are_its_official_strings() {
        let v2 = ModelFamily::EmotionLlamaV2;
        let emotion = Task::Emotion { six_labels: false };
        // inference.py: `<s>[INST] <Vid><VideoHere></Vid> [emotion] {q} [/INST]`, the demo's quick prompt as q.
        let demo = build_prompt(v2, Layout::Demo, &emotion, None, P);
        assert_eq!(demo.before_rows, "<s>[INST] <Vid>");
        assert_eq!(demo.after_rows, "</Vid> [emotion] Identify the emotion expressed in the video. Choose from: anger, disgust, fear, happy, neutral, sad, surprise. [/INST]");
        let spoken =
            build_prompt(v2, Layout::Demo, &Task::Reason { instruction: 3 }, Some("Now, theres two reasons."), P);
        assert_eq!(spoken.after_rows, "</Vid> The person in video says: Now, theres two reasons. [reason] Why does the person in the video feel this way? Please provide evidence from the video. [/INST]");
        // The MER2023 eval set's layout: two spaces after the line and before `[/INST]`.
        let eval = build_prompt(v2, Layout::Eval, &emotion, Some("We made it."), P);
        assert_eq!(eval.after_rows, "</Vid> The person in video says: We made it.  [emotion] Identify the emotion expressed in the video. Choose from: anger, disgust, fear, happy, neutral, sad, surprise.  [/INST]");
        let none = build_prompt(v2, Layout::Eval, &emotion, None, P);
        assert!(none.after_rows.starts_with("</Vid> [emotion] Identify"), "{}", none.after_rows);
        // v2's answers: the whole response is the official prediction; think answers give their label.
        let think = extract_answer_label(v2, "<think>the voice is bright</think><answer>happy</answer>", &LABELS_V2);
        assert_eq!(think.robust.as_deref(), Some("happy"));
        assert_eq!(think.official, "<think>the voice is bright</think><answer>happy</answer>");
        assert_eq!(extract_answer_label(v2, " Sad ", &LABELS_V2).official, "sad");
    }

    /// Each eval set's instruction, verbatim from `mer_eval_datasets.py` (copied from the
    /// source by a script), its prompt format, and v2's tags read from a user's text.
    #[test]
    fn v2_eval_sets_and_tags_are_the_official_strings() {
        let verbatim = [
            (EvalSet::Caer, "You are a helpful assistant specialized in multimodal emotion recognition. Given the input video and audio, your task is to identify the emotion expressed by the person or people in the video. Your output must be only one emotion label strictly chosen from the following list: anger, disgust, fear, happy, neutral, sad, surprise. Please ensure that all predicted labels come only from this list."),
            (EvalSet::Dfew, "You are a helpful assistant specialized in multimodal emotion recognition. Given the input video and audio, your task is to identify the emotion expressed by the person or people in the video. Your output must be only one emotion label strictly chosen from the following list: angry, disgust, fear, happy, neutral, sad, surprise. Please ensure that all predicted labels come only from this list."),
            (EvalSet::Mafw, "You are a helpful assistant specialized in multimodal emotion recognition. Given the input video and audio, your task is to identify the emotion expressed by the person or people in the video. Your output must be only one emotion label strictly chosen from the following list: anger, anxiety, contempt, disappointment, disgust, fear, happiness, helplessness, neutral, sadness, surprise. Please ensure that all predicted labels come only from this list."),
            (EvalSet::MafwMulti, "You are a helpful assistant specialized in multimodal emotion recognition. Given the input video and audio, your task is to identify the emotion expressed by the person or people in the video. Your output must be one or more emotion labels strictly chosen from the following list: anger, anxiety, contempt, disappointment, disgust, fear, happiness, helplessness, neutral, sadness, surprise. Please ensure that all predicted labels come only from this list."),
            (EvalSet::Bold, "You are a helpful assistant specialized in multimodal emotion recognition. Given the input video and audio, your task is to identify the emotion expressed by the person or people in the video. Your output must be one or more emotion labels strictly chosen from the following list: Affection, Anger, Annoyance, Anticipation, Aversion, Confidence, Disapproval, Disconnection, Disquietment, Doubt/Confusion, Embarrassment, Engagement, Esteem, Excitement, Fatigue, Fear, Happiness, Pain, Peace, Pleasure, Sadness, Sensitivity, Suffering, Surprise, Sympathy, Yearning. Please ensure that all predicted labels come only from this list."),
            (EvalSet::McEiuEmotion, "You are a helpful assistant specialized in multimodal emotion recognition. Given the input video and audio, your task is to identify the emotion expressed by the person or people in the video. Your output must be only one emotion label strictly chosen from the following list: anger, disgust, fear, happy, neutral, sad, surprise. Please ensure that all predicted labels come only from this list."),
            (EvalSet::McEiuIntent, "You are a helpful assistant specialized in **multimodal intent recognition**. Given the input video and audio, your task is to identify the **speaker's communicative intent** based on both visual and auditory information. Your output must be **only one intent label**, strictly chosen from the following list: acknowledging, agreeing, consoling, encouraging, neutral, questioning, suggesting, wishing. Please ensure that all predicted labels come only from this list."),
            (EvalSet::MeldSentiment, "You are a helpful assistant specialized in multimodal sentiment analysis. Given the input video and audio, your task is to identify the sentiment expressed by the person or people in the video. Your output must be only one sentiment label strictly chosen from the following list: Neutral, Negative, Positive. Please ensure that all predicted labels come only from this list."),
            (EvalSet::CmuMosi, "You are a helpful assistant specialized in multimodal sentiment analysis. Given the input video and audio, your task is to identify the sentiment expressed by the person or people in the video. Your output must be only one sentiment label strictly chosen from the following list: Neutral, Negative, Positive. Please ensure that all predicted labels come only from this list."),
            (EvalSet::CmuMosei, "You are a helpful assistant specialized in multimodal sentiment analysis. Given the input video and audio, your task is to identify the sentiment expressed by the person or people in the video. Your output must be only one sentiment label strictly chosen from the following list: Neutral, Negative, Positive. Please ensure that all predicted labels come only from this list."),
            (EvalSet::ChSimsV2S, "You are a helpful assistant specialized in multimodal sentiment analysis. Given the input video and audio, your task is to identify the sentiment expressed by the person or people in the video. Your output must be only one sentiment label strictly chosen from the following list: Neutral, Negative, Positive. Please ensure that all predicted labels come only from this list."),
        ];
        for (set, text) in verbatim {
            assert_eq!(set.instruction(), text, "{set:?}");
        }
        assert_eq!(EvalSet::ALL.len(), verbatim.len());
        let v2 = ModelFamily::EmotionLlamaV2;
        let caer = Task::EvalSet { set: EvalSet::Caer };
        let p = build_prompt(v2, Layout::Eval, &caer, Some("We made it."), P);
        assert_eq!(p.before_rows, "<s>[INST] <Vid>");
        let want = format!(
            "</Vid>  The person in video says: We made it.  [emotion] {}  [/INST]",
            EvalSet::Caer.instruction()
        );
        assert_eq!(p.after_rows, want);
        // The set's format applied to an empty line, as the official code would.
        let none = build_prompt(v2, Layout::Demo, &Task::EvalSet { set: EvalSet::Bold }, None, P);
        assert!(none.after_rows.starts_with("</Vid>   [multi-label] You are"), "{}", none.after_rows);
        let cases: Vec<(String, Task)> = vec![
            ("[sentiment]".into(), Task::Sentiment),
            (format!("[intent] {V2_INTENT}"), Task::Intent),
            ("[multi-label]".into(), Task::MultiLabel),
            (format!("[think] {V2_THINK}"), Task::Think),
            ("[audio]".into(), Task::Audio),
            ("[image]".into(), Task::Image),
            (format!("[emotion] {V2_EMOTION}"), Task::Emotion { six_labels: false }),
            (format!("[reason] {V2_REASON}"), Task::Reason { instruction: 0 }),
        ];
        for (text, task) in cases {
            assert_eq!(read_user_text(&text).task, Some(task), "{text}");
        }
        let r = read_user_text("The person in video says: Fine. [multi-label]");
        assert_eq!((r.transcript.as_deref(), r.task), (Some("Fine."), Some(Task::MultiLabel)));
        // A tag with a question of its own is the question.
        let own = "[audio] Is the voice calm?";
        assert_eq!(read_user_text(own).task, Some(Task::Question { text: own.into() }));
        // Answers: a multi-label answer names its labels; think's label is in <answer>.
        let multi = Task::MultiLabel.extract(v2, "Sadness, anxiety; sadness").unwrap();
        assert_eq!(
            (multi.official.as_str(), multi.robust.as_deref()),
            ("sadness, anxiety; sadness", Some("sadness,anxiety"))
        );
        let think = Task::Think.extract(v2, "<think>tears</think><answer>sadness</answer>").unwrap();
        assert_eq!(think.robust.as_deref(), Some("sadness"));
        assert!(Task::Audio.extract(v2, "a calm voice").is_none());
        assert!(!Task::Sentiment.is_for(ModelFamily::EmotionLlama) && Task::Sentiment.is_for(v2));
    }

    #[test]
    fn demo_prompt_has_the_second_turn() {
        let p = build_prompt(ModelFamily::EmotionLlama, Layout::Demo, &Task::Reason { instruction: 1 }, None, P);
        assert_eq!(p.before_rows, "<s>[INST] <video>");
        assert_eq!(p.after_rows, "</video> <feature><FeatureHere></feature><s>[INST] [reason] What is the emotional state of the person in the video? Please tell me the reason. [/INST]");
    }

    #[test]
    fn the_official_demos_texts_are_read_as_their_tasks() {
        let r = read_user_text("The person in video says: Oh no, my phone and wallet are all in my bag. [emotion] Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise.");
        assert_eq!(r.transcript.as_deref(), Some("Oh no, my phone and wallet are all in my bag."));
        assert_eq!(r.task, Some(Task::Emotion { six_labels: true }));
        let r = read_user_text("The person in video says: Won't you? Impossible! Fan Xiaomei is not such a person.  [reason] What are the facial expressions and vocal tone used in the video? What is the intended meaning behind his words? Which emotion does this reflect?");
        assert_eq!(r.transcript.as_deref(), Some("Won't you? Impossible! Fan Xiaomei is not such a person."));
        assert_eq!(r.task, Some(Task::Reason { instruction: 2 }));
        assert_eq!(read_user_text("[emotion]").task, Some(Task::Emotion { six_labels: false }));
        assert_eq!(read_user_text(" [reason] ").task, Some(Task::Reason { instruction: 0 }));
        // Other instructions and the demo's other tags are questions, asked as written.
        let other = "[emotion] Identify the displayed emotion in the video: is it happy, sad, or surprise?";
        assert_eq!(read_user_text(other).task, Some(Task::Question { text: other.into() }));
        let visual = "[visual] What are the emotions of the woman in the video?";
        assert_eq!(
            read_user_text(visual),
            UserText { transcript: None, task: Some(Task::Question { text: visual.into() }) }
        );
        // Without a tag the transcript is its line; nothing else: no task named.
        let r = read_user_text("the person in video says: Hello there.\nWhy is she [so] sad?");
        assert_eq!(r.transcript.as_deref(), Some("Hello there."));
        assert_eq!(r.task, Some(Task::Question { text: "Why is she [so] sad?".into() }));
        assert_eq!(
            read_user_text("The person in video says: Hi."),
            UserText { transcript: Some("Hi.".into()), task: None }
        );
        assert_eq!(read_user_text("  "), UserText { transcript: None, task: None });
    }

    #[test]
    fn labels_are_extracted_like_the_official_eval_and_robustly() {
        let l = extract_label("The person seems happy.", &LABELS_6);
        assert_eq!((l.official.as_str(), l.robust.as_deref()), ("neutral", Some("happy")));
        let l = extract_label("happy", &LABELS_6);
        assert_eq!((l.official.as_str(), l.robust.as_deref()), ("happy", Some("happy")));
        let l = extract_label("contempt", &LABELS_6);
        assert_eq!((l.official.as_str(), l.robust), ("neutral", None));
        let s = normalise_scores(&[-1.0, -2.0, -3.0]);
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12 && s[0] > s[1]);
    }
}
