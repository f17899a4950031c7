//! The report of a run: the paper's metrics with both label extractions, per-label
//! recall, the confusion matrix (text and SVG), how often the label scores agree with
//! the generated answer, and the speed. Written as `eval.md`, `eval.json` and
//! `confusion.svg` beside `results.jsonl`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::dataset::Clip;
use super::metrics::{Metrics, MultiLabelMetrics};
use super::run::{latest_rows, EvalRow, RunKey};
use super::EvalError;
use emollama_runtime::prompt::{split_labels, Scoring};
use emollama_runtime::stage::Stage;

/// A share of clips on which two labels agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub clips: usize,
    pub agree: usize,
    pub rate: f64,
}

impl Agreement {
    pub fn of(pairs: impl Iterator<Item = bool>) -> Self {
        let (mut clips, mut agree) = (0, 0);
        for same in pairs {
            clips += 1;
            agree += usize::from(same);
        }
        Agreement { clips, agree, rate: if clips == 0 { 0.0 } else { agree as f64 / clips as f64 } }
    }
}

/// Per-clip time, medians over the scored clips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    pub median_clip_ms: f64,
    /// One clip after another: 1000 / the median clip time.
    pub clips_per_s: f64,
    pub median_stage_ms: BTreeMap<Stage, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub run: RunKey,
    pub synthetic: bool,
    pub clips_listed: usize,
    pub clips_scored: usize,
    /// Listed clips not yet run (an interrupted or `--limit`ed run).
    pub clips_pending: usize,
    pub skipped: Vec<Skipped>,
    /// `eval_emotion.py`'s extraction (the paper's numbers).
    pub official: Metrics,
    /// The last label word anywhere in the answer.
    pub robust: Metrics,
    /// A v2 multi-label set's metrics (`score_multilabel.py`); `official` and `robust`
    /// then compare label sets as wholes (sorted, comma-joined: the subset accuracy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<MultiLabelReport>,
    /// The best-scored label against the generated label (runs that generate).
    pub scores_vs_answer: Option<Agreement>,
    pub transcripts_used: usize,
    pub speed: Option<Speed>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelReport {
    pub official: MultiLabelMetrics,
    pub robust: MultiLabelMetrics,
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

impl EvalReport {
    /// The report of the list's clips from the file's rows (the latest row of each).
    pub fn new(clips: &[Clip], rows: Vec<EvalRow>, synthetic: bool) -> Result<Self, EvalError> {
        let run = rows.first().map(|r| r.run.clone()).ok_or(EvalError::NoRows { path: super::RESULTS.into() })?;
        let latest = latest_rows(rows);
        let listed: Vec<&EvalRow> = clips.iter().filter_map(|c| latest.get(&c.name)).collect();
        let scored: Vec<&EvalRow> = listed.iter().copied().filter(|r| r.scored()).collect();
        let skipped = listed
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| Skipped { name: r.name.clone(), error: e.clone() }))
            .collect();
        let settings = &run.settings;
        let (labels, multi) = (settings.labels(), settings.multi_label());
        // `score_split_sentiment_no_neutral.py` leaves out the clips labelled neutral.
        let no_neutral = settings.eval_set.is_some_and(|s| s.scoring() == Scoring::NoNeutral);
        let counted: Vec<&EvalRow> = scored.iter().copied().filter(|r| !(no_neutral && r.truth == "neutral")).collect();
        let set_of = |l: &str| -> Vec<String> {
            let mut v: Vec<String> = split_labels(&l.to_lowercase()).into_iter().map(str::to_string).collect();
            v.sort();
            v.dedup();
            v
        };
        let picked = |pick: fn(&EvalRow) -> &Option<String>| -> Vec<(String, String)> {
            let whole = |l: &str| if multi { set_of(l).join(",") } else { l.to_string() };
            counted
                .iter()
                .map(|r| (whole(&r.truth), whole(pick(r).as_deref().expect("scored rows have labels"))))
                .collect()
        };
        let pairs = |pick: fn(&EvalRow) -> &Option<String>| -> Metrics {
            let owned = picked(pick);
            Metrics::compute(owned.iter().map(|(t, p)| (t.as_str(), p.as_str())), labels)
        };
        let multi_pairs = |pick: fn(&EvalRow) -> &Option<String>| -> MultiLabelMetrics {
            let owned: Vec<(Vec<String>, Vec<String>)> = counted
                .iter()
                .map(|r| (set_of(&r.truth), set_of(pick(r).as_deref().expect("scored rows have labels"))))
                .collect();
            MultiLabelMetrics::compute(
                owned
                    .iter()
                    .map(|(t, p)| (t.iter().map(String::as_str).collect(), p.iter().map(String::as_str).collect())),
            )
        };
        let multi_label = multi.then(|| MultiLabelReport {
            official: multi_pairs(|r| &r.label_official),
            robust: multi_pairs(|r| &r.label),
        });
        let generated = run.settings.preset != emollama_runtime::request::Preset::Fast;
        let scores_vs_answer = generated.then(|| {
            Agreement::of(
                scored.iter().filter(|r| r.label_from_scores.is_some()).map(|r| r.label_from_scores == r.label),
            )
        });
        let speed = median(scored.iter().filter_map(|r| r.timings_ms.get(&Stage::Total).copied()).collect()).map(|m| {
            let stages = Stage::ALL
                .iter()
                .filter(|s| s.is_work())
                .filter_map(|s| {
                    median(scored.iter().filter_map(|r| r.timings_ms.get(s).copied()).collect()).map(|v| (*s, v))
                })
                .collect();
            Speed { median_clip_ms: m, clips_per_s: if m > 0.0 { 1e3 / m } else { 0.0 }, median_stage_ms: stages }
        });
        Ok(EvalReport {
            synthetic,
            clips_listed: clips.len(),
            clips_scored: scored.len(),
            clips_pending: clips.len() - listed.len(),
            skipped,
            official: pairs(|r| &r.label_official),
            robust: pairs(|r| &r.label),
            multi_label,
            scores_vs_answer,
            transcripts_used: scored.iter().filter(|r| r.transcript).count(),
            speed,
            run,
        })
    }

    /// `eval.md`.
    pub fn render(&self) -> String {
        let r = &self.run;
        let mut s = String::from("# emollama eval\n\n");
        if self.synthetic {
            s += "**Synthetic bundle (random weights): these labels mean nothing; the numbers show the machinery works.**\n\n";
        }
        s += &format!("Run: {r}.\n\n");
        s += &format!(
            "Scored **{} of {} clips**; {} skipped, {} not run yet; transcripts on {} clips.\n\n",
            self.clips_scored,
            self.clips_listed,
            self.skipped.len(),
            self.clips_pending,
            self.transcripts_used
        );
        s += "| metric | official extraction | robust extraction |\n|---|---:|---:|\n";
        let (o, b) = (&self.official, &self.robust);
        for ((key, x), (_, y)) in o.headline().into_iter().zip(b.headline()) {
            s += &format!("| {} | {x:.4} | {y:.4} |\n", Metrics::title(key));
        }
        match r.settings.eval_set {
            None => {
                s += "\nOfficial: the answer's last word if it is a scoring label, else `neutral` (`eval_emotion.py`, the paper's numbers). \
                      Robust: the last label word anywhere in the answer, else the official label. Metrics as scikit-learn computes them \
                      (`average='weighted'`; UAR = `balanced_accuracy_score`).\n";
            }
            Some(set) => {
                s += &format!(
                    "\nEmotion-LLaMA-v2 eval set `{}`, scored as `{}`. Official: the whole response, stripped and lowercased, \
                     is the prediction. Robust: the label in a think answer's `<answer>`, else the last label word anywhere \
                     (multi-label: every label named). Metrics as scikit-learn computes them.\n",
                    super::run::wire(&set),
                    match set.scoring() {
                        Scoring::Single => "score_split.py",
                        Scoring::NoNeutral => "score_split_sentiment_no_neutral.py (clips labelled neutral left out)",
                        Scoring::MultiLabel => "score_multilabel.py",
                    }
                );
            }
        }
        if let Some(m) = &self.multi_label {
            s += "\n| multi-label metric | official | robust |\n|---|---:|---:|\n";
            for (name, x, y) in [
                ("F1 micro", m.official.f1_micro, m.robust.f1_micro),
                ("F1 samples", m.official.f1_samples, m.robust.f1_samples),
                ("Jaccard (example-based accuracy)", m.official.jaccard, m.robust.jaccard),
                ("mAP (0/1 scores)", m.official.map, m.robust.map),
            ] {
                s += &format!("| {name} | {x:.4} | {y:.4} |\n");
            }
        }
        if let Some(a) = &self.scores_vs_answer {
            s += &format!(
                "\nLabel scores: the best-scored label equals the generated label on {} of {} clips ({:.1} %): how often `--preset fast` (one prefill) gives the generated answer.\n",
                a.agree, a.clips, 100.0 * a.rate
            );
        }
        s += "\n## Per label (robust extraction)\n\n| label | clips | predicted | precision | recall | F1 |\n|---|---:|---:|---:|---:|---:|\n";
        for (label, m) in &b.per_label {
            s += &format!(
                "| {label} | {} | {} | {:.4} | {:.4} | {:.4} |\n",
                m.support, m.predicted, m.precision, m.recall, m.f1
            );
        }
        s += &format!(
            "\n## Confusion matrix (robust extraction)\n\n```text\n{}```\n\n![confusion matrix](confusion.svg)\n",
            b.confusion.render()
        );
        s += &format!("\nOfficial extraction:\n\n```text\n{}```\n", o.confusion.render());
        if let Some(sp) = &self.speed {
            s += &format!(
                "\n## Speed\n\nMedian clip {:.0} ms, {:.2} clips/s one after another. Median per stage (ms):\n\n",
                sp.median_clip_ms, sp.clips_per_s
            );
            s += "| stage | ms |\n|---|---:|\n";
            for (stage, ms) in &sp.median_stage_ms {
                s += &format!("| {stage} | {ms:.1} |\n");
            }
        }
        if !self.skipped.is_empty() {
            s += "\n## Skipped clips (not in the metrics)\n\n";
            for k in &self.skipped {
                s += &format!("- `{}`: {}\n", k.name, k.error);
            }
        }
        s
    }

    /// `eval.md`, `eval.json` and `confusion.svg` in `dir`, each written to a temporary
    /// name and renamed.
    pub fn write(&self, dir: &Path) -> Result<(), EvalError> {
        let title = format!("{} {}, {:?} preset", self.run.bundle, self.run.llm, self.run.settings.preset);
        let (md, json) = (self.render(), serde_json::to_vec_pretty(self).expect("report serialises"));
        let svg = self.robust.confusion.svg(&title);
        crate::outputs::write_files(
            dir,
            &[("eval.md", md.as_bytes()), ("eval.json", &json), ("confusion.svg", svg.as_bytes())],
        )?;
        Ok(())
    }
}
