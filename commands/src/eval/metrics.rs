//! The paper's metrics, defined as scikit-learn defines them (the official
//! `eval_emotion.py` calls `f1_score`, `accuracy_score`, `precision_score` and
//! `recall_score` with `average='weighted'`): the labels are the sorted union of the true
//! and the predicted ones; a label never predicted has precision 0 and one never true
//! weighs nothing. UAR is `balanced_accuracy_score` (the mean recall over the labels that
//! occur in the truth), WAR the accuracy. The tests compare every number with
//! scikit-learn's on the same predictions.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelMetrics {
    /// Clips whose true label this is.
    pub support: usize,
    /// Clips predicted as this label.
    pub predicted: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Counts of (true label, predicted label), rows true, columns predicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub counts: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub clips: usize,
    pub accuracy: f64,
    pub weighted_f1: f64,
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    /// Unweighted average recall (DFEW): mean recall over the labels present in the truth.
    pub uar: f64,
    /// Weighted average recall (DFEW): the accuracy.
    pub war: f64,
    pub per_label: BTreeMap<String, LabelMetrics>,
    pub confusion: Confusion,
}

impl Metrics {
    /// The metrics of `pairs` (true label, predicted label). `scoring` labels are always
    /// in the confusion matrix, even with no clip (a fixed layout across runs).
    pub fn compute<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, scoring: &[&str]) -> Self {
        let pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
        let present: BTreeSet<&str> = pairs.iter().flat_map(|(t, p)| [*t, *p]).collect();
        let mut labels: Vec<&str> = scoring.to_vec();
        labels.extend(present.iter().filter(|l| !scoring.contains(l)));
        let index: BTreeMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (*l, i)).collect();
        let mut counts = vec![vec![0usize; labels.len()]; labels.len()];
        for (t, p) in &pairs {
            counts[index[t]][index[p]] += 1;
        }
        let n = pairs.len();
        let correct: usize = (0..labels.len()).map(|i| counts[i][i]).sum();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut per_label = BTreeMap::new();
        let (mut wp, mut wr, mut wf, mut recalls) = (0.0, 0.0, 0.0, Vec::new());
        for (i, label) in labels.iter().enumerate() {
            let tp = counts[i][i];
            let support: usize = counts[i].iter().sum();
            let predicted: usize = counts.iter().map(|row| row[i]).sum();
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            // sklearn's F1 is 2tp / (2tp + fp + fn), 0 when that is 0/0.
            let f1 = ratio(2 * tp, support + predicted);
            if support > 0 {
                recalls.push(recall);
            }
            let w = support as f64;
            wp += w * precision;
            wr += w * recall;
            wf += w * f1;
            if present.contains(label) {
                per_label.insert(label.to_string(), LabelMetrics { support, predicted, precision, recall, f1 });
            }
        }
        let total = n as f64;
        let weighted = |x: f64| if n == 0 { 0.0 } else { x / total };
        let accuracy = ratio(correct, n);
        Metrics {
            clips: n,
            accuracy,
            weighted_f1: weighted(wf),
            weighted_precision: weighted(wp),
            weighted_recall: weighted(wr),
            uar: if recalls.is_empty() { 0.0 } else { recalls.iter().sum::<f64>() / recalls.len() as f64 },
            war: accuracy,
            per_label,
            confusion: Confusion { labels: labels.iter().map(|l| l.to_string()).collect(), counts },
        }
    }
}

impl Metrics {
    /// The headline numbers by their JSON names, in the paper's order.
    pub fn headline(&self) -> [(&'static str, f64); 6] {
        [
            ("weighted_f1", self.weighted_f1),
            ("accuracy", self.accuracy),
            ("weighted_precision", self.weighted_precision),
            ("weighted_recall", self.weighted_recall),
            ("uar", self.uar),
            ("war", self.war),
        ]
    }

    /// How a headline number is called in a report.
    pub fn title(key: &str) -> &'static str {
        match key {
            "weighted_f1" => "weighted F1",
            "accuracy" => "accuracy",
            "weighted_precision" => "weighted precision",
            "weighted_recall" => "weighted recall",
            "uar" => "UAR (mean recall)",
            "war" => "WAR (accuracy)",
            _ => "metric",
        }
    }
}

/// A multi-label set's metrics as `score_multilabel.py` computes them: the label space
/// fitted on the truth only (`MultiLabelBinarizer`: a predicted label outside it counts
/// for nothing), F1 micro and samples, the mean Jaccard with its `+1e-6`, and mAP: each
/// label's `average_precision_score` with the 0/1 predictions as scores, averaged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelMetrics {
    pub clips: usize,
    pub f1_micro: f64,
    pub f1_samples: f64,
    pub jaccard: f64,
    pub map: f64,
    /// Each label's average precision.
    pub average_precision: BTreeMap<String, f64>,
}

impl MultiLabelMetrics {
    /// The metrics of `pairs` (true labels, predicted labels) of each clip.
    pub fn compute<'a>(pairs: impl IntoIterator<Item = (Vec<&'a str>, Vec<&'a str>)>) -> Self {
        let pairs: Vec<(BTreeSet<&str>, BTreeSet<&str>)> =
            pairs.into_iter().map(|(t, p)| (t.into_iter().collect(), p.into_iter().collect())).collect();
        let classes: BTreeSet<&str> = pairs.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        let n = pairs.len();
        let ratio = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
        let mean = |sum: f64| if n == 0 { 0.0 } else { sum / n as f64 };
        let (mut tp, mut fp, mut fnn, mut f1_sum, mut jaccard_sum) = (0usize, 0usize, 0usize, 0.0, 0.0);
        for (t, p) in &pairs {
            let p: BTreeSet<&str> = p.intersection(&classes).copied().collect();
            let both = t.intersection(&p).count();
            tp += both;
            fp += p.len() - both;
            fnn += t.len() - both;
            f1_sum += ratio(2.0 * both as f64, (t.len() + p.len()) as f64);
            jaccard_sum += both as f64 / (t.union(&p).count() as f64 + 1e-6);
        }
        let average_precision: BTreeMap<String, f64> = classes
            .iter()
            .map(|c| {
                let truth: Vec<bool> = pairs.iter().map(|(t, _)| t.contains(c)).collect();
                let predicted: Vec<bool> = pairs.iter().map(|(_, p)| p.contains(c)).collect();
                (c.to_string(), binary_average_precision(&truth, &predicted))
            })
            .collect();
        MultiLabelMetrics {
            clips: n,
            f1_micro: ratio(2.0 * tp as f64, (2 * tp + fp + fnn) as f64),
            f1_samples: mean(f1_sum),
            jaccard: mean(jaccard_sum),
            map: ratio(average_precision.values().sum(), average_precision.len() as f64),
            average_precision,
        }
    }
}

/// scikit-learn's `average_precision_score` for 0/1 scores: the thresholds are the score
/// values present, from 1 down; AP = Σ (R_k - R_(k-1)) P_k. At score 1 the precision and
/// recall of the predictions, at 0 everything is predicted (precision: the positives' share).
fn binary_average_precision(truth: &[bool], predicted: &[bool]) -> f64 {
    let positives = truth.iter().filter(|t| **t).count() as f64;
    let n = truth.len() as f64;
    if positives == 0.0 {
        return 0.0;
    }
    let hits = truth.iter().zip(predicted).filter(|(t, p)| **t && **p).count() as f64;
    let flagged = predicted.iter().filter(|p| **p).count() as f64;
    let all = positives / n;
    if flagged == 0.0 || flagged == n {
        return all; // one score value: one threshold, every clip predicted
    }
    let recall = hits / positives;
    recall * (hits / flagged) + (1.0 - recall) * all
}

impl Confusion {
    /// A text table: one row per true label, one column per predicted label.
    pub fn render(&self) -> String {
        let corner = "true \\ predicted";
        let w = self.labels.iter().map(|l| l.len()).max().unwrap_or(0).max(corner.len());
        let mut s = format!("{corner:>w$} |");
        for l in &self.labels {
            s += &format!(" {l:>8}");
        }
        s += "\n";
        s += &format!("{}-+{}\n", "-".repeat(w), "-".repeat(9 * self.labels.len()));
        for (l, row) in self.labels.iter().zip(&self.counts) {
            s += &format!("{l:>w$} |");
            for c in row {
                s += &format!(" {c:>8}");
            }
            s += "\n";
        }
        s
    }

    /// An SVG picture: each cell shaded by its share of the true label's clips.
    pub fn svg(&self, title: &str) -> String {
        let n = self.labels.len();
        let (cell, left, top) = (56usize, 96usize, 72usize);
        let (width, height) = (left + n * cell + 16, top + n * cell + 40);
        let esc = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"16\" font-size=\"13\">{}</text>\n\
             <text x=\"{left}\" y=\"34\">rows: true label; columns: predicted; shade: share of the row</text>\n",
            esc(title)
        );
        for (j, l) in self.labels.iter().enumerate() {
            let x = left + j * cell + cell / 2;
            s += &format!("<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", top - 6, esc(l));
        }
        for (i, (l, row)) in self.labels.iter().zip(&self.counts).enumerate() {
            let y = top + i * cell;
            let total: usize = row.iter().sum();
            s +=
                &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", left - 6, y + cell / 2 + 4, esc(l));
            for (j, c) in row.iter().enumerate() {
                let share = if total == 0 { 0.0 } else { *c as f64 / total as f64 };
                let shade = (255.0 - 200.0 * share).round() as u8;
                let ink = if share > 0.5 { "white" } else { "black" };
                let x = left + j * cell;
                s += &format!(
                    "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({shade},{shade},255)\" stroke=\"#999\"/>\n\
                     <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{ink}\">{c}</text>\n",
                    x + cell / 2,
                    y + cell / 2 + 4
                );
            }
        }
        s += "</svg>\n";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_example() {
        // truth a a b c; predicted a b b a: a P=1/2 R=1/2, b P=1/2 R=1, c P=0 R=0.
        let m = Metrics::compute([("a", "a"), ("a", "b"), ("b", "b"), ("c", "a")], &["a", "b", "c"]);
        assert_eq!(m.accuracy, 0.5);
        assert!((m.weighted_precision - (2.0 * 0.5 + 0.5) / 4.0).abs() < 1e-12);
        assert!((m.weighted_recall - 0.5).abs() < 1e-12);
        assert!((m.weighted_f1 - (2.0 * 0.5 + 2.0 / 3.0) / 4.0).abs() < 1e-12);
        assert!((m.uar - 0.5).abs() < 1e-12);
        assert_eq!(m.confusion.counts, vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]);
        assert!(m.confusion.render().contains("true \\ predicted"));
        assert!(m.confusion.svg("t").starts_with("<svg"));
    }
}
