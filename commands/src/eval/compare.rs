//! Two runs on the same clips compared: how often their labels agree, what each metric
//! moved, how far their label probabilities are apart, which clips changed, and their
//! speeds. "What did Q4_K_M cost against F16" is `--compare f16/ q4_k_m/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::report::{median, Agreement};
use super::run::{latest_rows, EvalRow, RunKey};
use emollama_runtime::stage::Stage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricDelta {
    pub a: f64,
    pub b: f64,
    /// b - a.
    pub delta: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangedClip {
    pub name: String,
    pub truth: String,
    pub a: String,
    pub b: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: RunKey,
    pub b: RunKey,
    /// Clips scored in both runs (the rest are counted, not compared).
    pub clips: usize,
    pub only_a: usize,
    pub only_b: usize,
    /// Robust labels equal.
    pub agreement: Agreement,
    pub agreement_official: Agreement,
    /// Official extraction's metrics on the common clips, then the robust one's.
    pub metrics: BTreeMap<String, MetricDelta>,
    /// Mean and largest |p_a - p_b| over the common clips' label probabilities.
    pub probability_mean_abs_diff: Option<f64>,
    pub probability_max_abs_diff: Option<f64>,
    pub changed: Vec<ChangedClip>,
    /// Median clip time, b / a.
    pub median_clip_ms: Option<MetricDelta>,
}

impl Comparison {
    pub fn new(a_rows: Vec<EvalRow>, b_rows: Vec<EvalRow>) -> Option<Self> {
        let (a_key, b_key) = (a_rows.first()?.run.clone(), b_rows.first()?.run.clone());
        let a = latest_rows(a_rows);
        let b = latest_rows(b_rows);
        let scored = |m: &BTreeMap<String, EvalRow>| -> BTreeMap<String, EvalRow> {
            m.iter().filter(|(_, r)| r.scored()).map(|(k, r)| (k.clone(), r.clone())).collect()
        };
        let (a, b) = (scored(&a), scored(&b));
        let common: Vec<(&EvalRow, &EvalRow)> = a.iter().filter_map(|(k, ra)| b.get(k).map(|rb| (ra, rb))).collect();
        let label = |r: &EvalRow| r.label.clone().unwrap_or_default();
        let official = |r: &EvalRow| r.label_official.clone().unwrap_or_default();
        let labels = a_key.settings.scoring.labels();
        let metrics_of = |pick: &dyn Fn(&EvalRow) -> String, side: bool| {
            let pairs: Vec<(String, String)> = common
                .iter()
                .map(|(x, y)| if side { (y.truth.clone(), pick(y)) } else { (x.truth.clone(), pick(x)) })
                .collect();
            Metrics::compute(pairs.iter().map(|(t, p)| (t.as_str(), p.as_str())), labels)
        };
        let mut metrics = BTreeMap::new();
        for (extraction, pick) in [("official", &official as &dyn Fn(&EvalRow) -> String), ("robust", &label)] {
            let (ma, mb) = (metrics_of(pick, false), metrics_of(pick, true));
            for ((name, x), (_, y)) in ma.headline().into_iter().zip(mb.headline()) {
                metrics.insert(format!("{extraction}.{name}"), MetricDelta { a: x, b: y, delta: y - x });
            }
        }
        let diffs: Vec<f64> = common
            .iter()
            .filter_map(|(x, y)| Some((x.label_scores.as_ref()?, y.label_scores.as_ref()?)))
            .flat_map(|(sa, sb)| sa.iter().filter_map(|(l, p)| sb.get(l).map(|q| (p - q).abs())).collect::<Vec<_>>())
            .collect();
        let changed = common
            .iter()
            .filter(|(x, y)| x.label != y.label)
            .map(|(x, y)| ChangedClip { name: x.name.clone(), truth: x.truth.clone(), a: label(x), b: label(y) })
            .collect();
        let clip_ms = |side: &BTreeMap<String, EvalRow>| {
            median(side.values().filter_map(|r| r.timings_ms.get(&Stage::Total).copied()).collect())
        };
        let median_clip_ms = match (clip_ms(&a), clip_ms(&b)) {
            (Some(x), Some(y)) => Some(MetricDelta { a: x, b: y, delta: y - x }),
            _ => None,
        };
        Some(Comparison {
            clips: common.len(),
            only_a: a.keys().filter(|k| !b.contains_key(*k)).count(),
            only_b: b.keys().filter(|k| !a.contains_key(*k)).count(),
            agreement: Agreement::of(common.iter().map(|(x, y)| x.label == y.label)),
            agreement_official: Agreement::of(common.iter().map(|(x, y)| x.label_official == y.label_official)),
            metrics,
            probability_mean_abs_diff: (!diffs.is_empty()).then(|| diffs.iter().sum::<f64>() / diffs.len() as f64),
            probability_max_abs_diff: diffs.iter().copied().reduce(f64::max),
            changed,
            median_clip_ms,
            a: a_key,
            b: b_key,
        })
    }

    pub fn render(&self) -> String {
        let mut s = String::from("# emollama eval --compare\n\n");
        s += &format!("A: {}\n\nB: {}\n\n", self.a, self.b);
        s +=
            &format!("{} clips scored in both ({} only in A, {} only in B).\n\n", self.clips, self.only_a, self.only_b);
        s += &format!(
            "Label agreement: **{:.1} %** ({} of {}); official extraction {:.1} %.\n\n",
            100.0 * self.agreement.rate,
            self.agreement.agree,
            self.agreement.clips,
            100.0 * self.agreement_official.rate
        );
        if let (Some(mean), Some(max)) = (self.probability_mean_abs_diff, self.probability_max_abs_diff) {
            s += &format!("Label probabilities: mean |p_A - p_B| {mean:.2e}, largest {max:.2e}.\n\n");
        }
        s += "| metric | A | B | B - A |\n|---|---:|---:|---:|\n";
        for (name, d) in &self.metrics {
            s += &format!("| {name} | {:.4} | {:.4} | {:+.4} |\n", d.a, d.b, d.delta);
        }
        if let Some(t) = &self.median_clip_ms {
            let ratio = if t.a > 0.0 { t.b / t.a } else { 0.0 };
            s += &format!("\nMedian clip: A {:.0} ms, B {:.0} ms (B/A {ratio:.2}).\n", t.a, t.b);
        }
        if self.changed.is_empty() {
            s += "\nNo clip changed its label.\n";
        } else {
            s += &format!(
                "\n## {} clips changed their label\n\n| clip | truth | A | B |\n|---|---|---|---|\n",
                self.changed.len()
            );
            for c in &self.changed {
                s += &format!("| {} | {} | {} | {} |\n", c.name, c.truth, c.a, c.b);
            }
        }
        s
    }
}
