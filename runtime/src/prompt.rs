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
}

impl Task {
    pub fn name(&self) -> &'static str {
        match self {
            Task::Emotion { .. } => "emotion",
            Task::Reason { .. } => "reason",
            Task::Question { .. } => "question",
        }
    }

    /// The labels an Emotion-LLaMA recognition answer is scored against.
    pub fn labels(&self) -> &'static [&'static str] {
        match self {
            Task::Emotion { six_labels: true } => &LABELS_6,
            _ => &LABELS_9,
        }
    }

    /// The labels `model`'s recognition answer is scored against.
    pub fn labels_for(&self, model: ModelFamily) -> &'static [&'static str] {
        match model {
            ModelFamily::EmotionLlama => self.labels(),
            ModelFamily::EmotionLlamaV2 => &LABELS_V2,
        }
    }

    /// `[task] instruction` as `model`'s training/eval data writes it (v2: its demo's
    /// quick prompts; a question as written, whatever tag it carries).
    fn tagged_instruction(&self, model: ModelFamily) -> String {
        match (model, self) {
            (ModelFamily::EmotionLlamaV2, Task::Emotion { .. }) => format!("[emotion] {V2_EMOTION}"),
            (ModelFamily::EmotionLlamaV2, Task::Reason { .. }) => format!("[reason] {V2_REASON}"),
            (_, task) => task.v1_tagged_instruction(),
        }
    }

    fn v1_tagged_instruction(&self) -> String {
        match self {
            Task::Emotion { six_labels } => format!("[emotion] {}", if *six_labels { EMOTION_6 } else { EMOTION_9 }),
            Task::Reason { instruction } => format!("[reason] {}", REASON_POOL[instruction % REASON_POOL.len()]),
            Task::Question { text } => text.trim().to_string(),
        }
    }
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
/// line, whichever comes first. `[emotion]` or `[reason]` alone, or followed by one of the official
/// instructions, is that task, rebuilt with the official template; any other text,
/// the demo's other tags (`[visual]`, `[audio]`, `[detection]`) included, is a
/// question asked as written.
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
    let task = if rest.is_empty() {
        None
    } else if let Some(i) = official("[emotion]", &[EMOTION_9, EMOTION_6]) {
        Some(Task::Emotion { six_labels: i == Some(1) })
    } else if let Some(i) = official("[reason]", &REASON_POOL) {
        Some(Task::Reason { instruction: i.unwrap_or(0) })
    } else {
        Some(Task::Question { text: rest.to_string() })
    };
    UserText { transcript, task }
}

/// Where the first `[tag]` (lowercase letters and `_`) starts.
fn first_tag(text: &str) -> Option<usize> {
    text.match_indices('[').map(|(i, _)| i).find(|&i| {
        let tail = &text[i + 1..];
        tail.find(']').is_some_and(|end| end > 0 && tail[..end].chars().all(|c| c.is_ascii_lowercase() || c == '_'))
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
