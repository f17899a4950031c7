//! Each clip through the pipeline, one JSON line per clip appended to `results.jsonl`
//! (written and synced before the next clip starts). A rerun reads the file, skips the
//! clips already scored and goes on: an eval interrupted on a device resumes where it
//! stopped, and its rows are the rows one uninterrupted run writes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use emollama_bundle::Role;
use emollama_engines::CancelToken;
use serde::{Deserialize, Serialize};

use super::dataset::{Clip, Dataset, DatasetPaths};
use super::{io, EvalError, LabelSet};
use emollama_runtime::prompt::{extract_label, EvalSet, Scoring, Task};
use emollama_runtime::request::{AnalyzeRequest, AsrRequest, Mode, Preset};
use emollama_runtime::session::AnalyzeResult;
use emollama_runtime::stage::Timings;
use emollama_runtime::Pipeline;

/// The results file inside the output folder.
pub const RESULTS: &str = "results.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    pub preset: Preset,
    pub mode: Mode,
    /// The instruction's labels (the official MER2023 eval asks with nine).
    pub instruction: LabelSet,
    /// The labels scored, and allowed in the list (MER2023/2024: six; anything else in
    /// an answer scores as neutral).
    pub scoring: LabelSet,
    /// The transcript line from the bundle's speech recognition instead of the dataset's
    /// CSV (off: the official protocol, the CSV's line or none, never recognised).
    #[serde(default)]
    pub asr: bool,
    /// Emotion-LLaMA-v2's eval set: its instruction, labels and scoring instead of
    /// `instruction` and `scoring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_set: Option<EvalSet>,
}

impl EvalSettings {
    /// Settings the official prompts can run.
    pub fn check(&self) -> Result<(), EvalError> {
        match self.instruction {
            _ if self.eval_set.is_some() => Ok(()), // the set's own instruction
            LabelSet::Six | LabelSet::Nine => Ok(()),
            other => Err(EvalError::Instruction(other)),
        }
    }

    /// The labels the list may hold and the answers are scored against.
    pub fn labels(&self) -> &'static [&'static str] {
        self.eval_set.map_or_else(|| self.scoring.labels(), EvalSet::labels)
    }

    /// Whether a clip has one or more labels (a v2 multi-label set).
    pub fn multi_label(&self) -> bool {
        self.eval_set.is_some_and(|s| s.scoring() == Scoring::MultiLabel)
    }

    /// The task each clip is asked.
    pub fn task(&self) -> Task {
        match self.eval_set {
            Some(set) => Task::EvalSet { set },
            None => Task::Emotion { six_labels: self.instruction == LabelSet::Six },
        }
    }

    /// Settings this pipeline can run: the model's protocol (v2: an eval set), speech
    /// recognition with the bundle's engines.
    pub fn check_pipeline(&self, pipeline: &Pipeline) -> Result<(), EvalError> {
        let bundle = pipeline.manifest().id.clone();
        match (pipeline.manifest().model, self.eval_set) {
            (emollama_bundle::ModelFamily::EmotionLlamaV2, None) => return Err(EvalError::NeedsEvalSet { bundle }),
            (emollama_bundle::ModelFamily::EmotionLlama, Some(_)) => return Err(EvalError::EvalSetOnV1 { bundle }),
            _ => {}
        }
        if self.asr && pipeline.asr().is_none() {
            return Err(EvalError::NoAsr { bundle: pipeline.manifest().id.clone() });
        }
        Ok(())
    }
}

/// What makes two runs' rows comparable: a resumed run must be the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunKey {
    pub bundle: String,
    /// The LLM file's type (f32, q8_0, q4_k_m, …).
    pub llm: String,
    #[serde(flatten)]
    pub settings: EvalSettings,
    /// The modalities taken from pre-extracted features.
    pub features: Vec<String>,
    pub transcripts: bool,
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.settings;
        let features = if self.features.is_empty() { "none".to_string() } else { self.features.join("+") };
        let protocol = match s.eval_set {
            Some(set) => format!("eval set {}", wire(&set)),
            None => format!("instruction {} labels, scoring {} labels", wire(&s.instruction), wire(&s.scoring)),
        };
        write!(
            f,
            "bundle {}, LLM {}, preset {}, mode {}, {protocol}, features {features}, transcripts {}",
            self.bundle,
            self.llm,
            wire(&s.preset),
            wire(&s.mode),
            match (s.asr, self.transcripts) {
                (true, _) => "from speech recognition",
                (false, true) => "from the CSV",
                (false, false) => "none",
            }
        )
    }
}

/// A value's name as the command line and the JSON spell it (`fast`, `official-demo`).
pub(crate) fn wire(v: &impl Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// One clip's result, as one line of `results.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub name: String,
    /// The list's label.
    pub truth: String,
    pub valence: Option<f64>,
    /// The robust extraction: the last label word of the answer, else the official one
    /// (with `--preset fast`, the best-scored label).
    pub label: Option<String>,
    /// `eval_emotion.py`'s: the answer's last word if it is a scoring label, else neutral.
    pub label_official: Option<String>,
    /// The best-scored label (the `--preset fast` answer).
    pub label_from_scores: Option<String>,
    pub label_scores: Option<BTreeMap<String, f64>>,
    pub text: String,
    pub transcript: bool,
    pub notes: Vec<String>,
    pub timings_ms: Timings,
    /// Why the clip has no result (a missing video or features file, unreadable media).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub run: RunKey,
}

impl EvalRow {
    pub fn scored(&self) -> bool {
        self.error.is_none() && self.label.is_some() && self.label_official.is_some()
    }

    fn failed(clip: &Clip, run: &RunKey, error: String) -> Self {
        EvalRow {
            name: clip.name.clone(),
            truth: clip.label.clone(),
            valence: clip.valence,
            label: None,
            label_official: None,
            label_from_scores: None,
            label_scores: None,
            text: String::new(),
            transcript: false,
            notes: Vec::new(),
            timings_ms: Timings::new(),
            error: Some(error),
            run: run.clone(),
        }
    }

    fn from_result(clip: &Clip, run: &RunKey, r: AnalyzeResult) -> Self {
        let scoring = run.settings.scoring.labels();
        let from_scores =
            r.label_scores.as_ref().and_then(|s| s.iter().max_by(|a, b| a.1.total_cmp(b.1))).map(|(l, _)| l.clone());
        let (label, official) = if run.settings.eval_set.is_some() {
            // v2: the session read the answer as the set's scoring script does.
            (r.label.clone(), r.label_official.clone())
        } else if run.settings.preset == Preset::Fast {
            let official = from_scores.clone().filter(|l| scoring.contains(&l.as_str())).unwrap_or("neutral".into());
            (from_scores.clone(), Some(official))
        } else {
            let official = extract_label(&r.text, scoring).official;
            // Any label word of the instruction or of the scoring set (DFEW's disgust).
            let mut words = run.settings.instruction.labels().to_vec();
            words.extend(scoring.iter().filter(|l| !words.contains(l)).collect::<Vec<_>>());
            let robust = extract_label(&r.text, &words).robust;
            (Some(robust.unwrap_or_else(|| official.clone())), Some(official))
        };
        EvalRow {
            name: clip.name.clone(),
            truth: clip.label.clone(),
            valence: clip.valence,
            label,
            label_official: official,
            label_from_scores: from_scores,
            label_scores: r.label_scores,
            text: r.text,
            transcript: r.transcript_used,
            notes: r.notes,
            timings_ms: r.timings_ms,
            error: None,
            run: run.clone(),
        }
    }
}

/// Where a run stands, after each clip.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// Clips of the list scored or failed, this run and earlier ones.
    pub done: usize,
    pub total: usize,
    /// Clips done by this invocation, and its time so far.
    pub done_now: usize,
    pub elapsed_s: f64,
    pub failed: usize,
    pub row: &'a EvalRow,
}

impl Progress<'_> {
    /// This invocation's clips per second.
    pub fn clips_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.done_now as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    pub fn eta_s(&self) -> Option<f64> {
        let rate = self.clips_per_s();
        (rate > 0.0).then(|| (self.total - self.done) as f64 / rate)
    }
}

/// The rows of a results file, in file order. A last line cut short by a kill is
/// dropped (and `truncate` cuts it from the file); any other bad line is an error.
pub fn read_rows(path: &Path, truncate: bool) -> Result<Vec<EvalRow>, EvalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() && truncate {
        let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io(path))?;
        f.set_len(complete as u64).map_err(io(path))?;
        tracing::warn!(file = %path.display(), "dropped a result line cut short by an interruption");
    }
    let text = String::from_utf8_lossy(&bytes[..complete]);
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line).map_err(|e| EvalError::ResultRow {
            path: path.into(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// Replace the results file with `rows` (temporary name, synced, then renamed).
fn rewrite_rows(path: &Path, rows: &[EvalRow]) -> Result<(), EvalError> {
    let tmp = path.with_extension("jsonl.partial");
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).expect("a row serialises"));
        text.push('\n');
    }
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The last row of each clip (a failed clip retried later has two).
pub fn latest_rows(rows: Vec<EvalRow>) -> BTreeMap<String, EvalRow> {
    rows.into_iter().map(|r| (r.name.clone(), r)).collect()
}

/// The run key of `pipeline` with `settings` on `paths`.
pub fn run_key(pipeline: &Pipeline, paths: &DatasetPaths, settings: EvalSettings) -> RunKey {
    let m = pipeline.manifest();
    let llm = m.files.iter().find(|f| f.role == Role::Llm).map(|f| f.precision.to_string()).unwrap_or_default();
    let features =
        [("local", &paths.local_features), ("temporal", &paths.temporal_features), ("audio", &paths.audio_features)]
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(n, _)| n.to_string())
            .collect();
    RunKey { bundle: m.id.clone(), llm, settings, features, transcripts: paths.transcripts.is_some() }
}

/// Run (or resume) the evaluation of `dataset` into `out/results.jsonl`. Returns every
/// row of the file.
pub fn run_eval(
    pipeline: &Pipeline,
    dataset: &Dataset,
    settings: EvalSettings,
    out: &Path,
    cancel: &CancelToken,
    mut on_clip: impl FnMut(&Progress<'_>),
) -> Result<Vec<EvalRow>, EvalError> {
    settings.check()?;
    let (paths, clips, transcripts) = (&dataset.paths, &dataset.clips, &dataset.transcripts);
    let key = run_key(pipeline, paths, settings);
    // Features the bundle cannot take are refused before the first clip, not per clip.
    let given = emollama_runtime::features::FeatureFiles {
        local: paths.local_features.clone(),
        temporal: paths.temporal_features.clone(),
        audio: paths.audio_features.clone(),
    };
    pipeline.check_features(&given)?;

    std::fs::create_dir_all(out).map_err(io(out))?;
    let results = out.join(RESULTS);
    let mut rows = read_rows(&results, true)?;
    if let Some(other) = rows.iter().find(|r| r.run != key) {
        return Err(EvalError::OtherRun { path: results, found: other.run.to_string(), expected: key.to_string() });
    }
    // One row per clip: the clips that failed before are retried, their old rows go (a
    // file that kept them would grow by a failure row per clip at every rerun).
    let done: BTreeSet<String> = rows.iter().filter(|r| r.error.is_none()).map(|r| r.name.clone()).collect();
    if rows.iter().any(|r| r.error.is_some()) || latest_rows(rows.clone()).len() < rows.len() {
        rows = latest_rows(rows).into_values().filter(|r| r.error.is_none()).collect();
        rewrite_rows(&results, &rows)?;
    }
    // Clips whose latest row is an error, kept up to date row by row.
    let mut failed = BTreeSet::new();
    let note_row = |failed: &mut BTreeSet<String>, r: &EvalRow| {
        if r.error.is_some() {
            failed.insert(r.name.clone());
        } else {
            failed.remove(&r.name);
        }
    };
    rows.iter().for_each(|r| note_row(&mut failed, r));
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&results).map_err(io(&results))?;
    let started = Instant::now();
    let total = clips.len();
    let (mut done_count, mut done_now) = (clips.iter().filter(|c| done.contains(&c.name)).count(), 0);
    for clip in clips.iter().filter(|c| !done.contains(&c.name)) {
        if cancel.is_cancelled() {
            break;
        }
        let row = match run_clip(pipeline, paths, transcripts, clip, &key, cancel) {
            Ok(row) => row,
            Err(e) if e.is_cancelled() => break,
            Err(e) => return Err(e.into()),
        };
        let mut line = serde_json::to_string(&row).expect("a row serialises");
        line.push('\n');
        file.write_all(line.as_bytes()).and_then(|_| file.sync_data()).map_err(io(&results))?;
        done_count += 1;
        done_now += 1;
        note_row(&mut failed, &row);
        rows.push(row);
        on_clip(&Progress {
            done: done_count,
            total,
            done_now,
            elapsed_s: started.elapsed().as_secs_f64(),
            failed: failed.len(),
            row: rows.last().expect("just pushed"),
        });
    }
    Ok(rows)
}

/// One clip: its row, or its error as a row (a missing or unreadable file); a cancelled
/// run is the only error returned.
fn run_clip(
    pipeline: &Pipeline,
    paths: &DatasetPaths,
    transcripts: &BTreeMap<String, String>,
    clip: &Clip,
    key: &RunKey,
    cancel: &CancelToken,
) -> Result<EvalRow, emollama_runtime::RuntimeError> {
    let inputs = paths.video(&clip.name).and_then(|v| paths.features(&clip.name).map(|f| (v, f)));
    let (video, features) = match inputs {
        Ok(x) => x,
        Err(why) => return Ok(EvalRow::failed(clip, key, why)),
    };
    let s = key.settings;
    let req = AnalyzeRequest {
        task: s.task(),
        preset: s.preset,
        mode: s.mode,
        transcript: transcripts.get(&clip.name).cloned().filter(|_| !s.asr),
        asr: AsrRequest { enabled: s.asr, ..AsrRequest::default() },
        features,
        scores: true,
        ..AnalyzeRequest::new(video.to_string_lossy().into_owned())
    };
    match pipeline.session(&req, cancel.clone()).and_then(|session| session.run(|_| {})) {
        Ok(result) => Ok(EvalRow::from_result(clip, key, result)),
        Err(e) if e.is_cancelled() => Err(e),
        Err(e) => Ok(EvalRow::failed(clip, key, e.to_string())),
    }
}

/// The results file of an output folder, or the file itself.
pub fn results_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(RESULTS)
    } else {
        path.to_path_buf()
    }
}
