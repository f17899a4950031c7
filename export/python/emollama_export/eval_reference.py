"""scikit-learn's numbers for emollama eval's predictions: the metrics the official
`eval_emotion.py` computes (f1, accuracy, precision and recall with average='weighted'),
balanced accuracy (UAR), per-label recall and the confusion matrix. The tests compare
emollama's own computation with these.

usage: python -m emollama_export.eval_reference pairs SETS.json     (sets of truth/pred lists)
       python -m emollama_export.eval_reference results RESULTS.jsonl --labels a,b,...
prints one JSON object.
"""

import argparse
import json
import sys
import warnings

from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, precision_score,
                             recall_score)


def metrics(truth: list, pred: list, labels: list) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division and "y_pred contains classes not in y_true"
        present = sorted(set(truth) | set(pred))
        order = labels + [x for x in present if x not in labels]
        return {
            "accuracy": accuracy_score(truth, pred),
            "weighted_f1": f1_score(truth, pred, average="weighted"),
            "weighted_precision": precision_score(truth, pred, average="weighted"),
            "weighted_recall": recall_score(truth, pred, average="weighted"),
            "uar": balanced_accuracy_score(truth, pred),
            "recall": dict(zip(present, recall_score(truth, pred, average=None, labels=present).tolist())),
            "confusion": {"labels": order, "counts": confusion_matrix(truth, pred, labels=order).tolist()},
        }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.eval_reference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["pairs", "results"])
    ap.add_argument("file")
    ap.add_argument("--labels", default="", help="the scoring labels, in the confusion matrix's order")
    args = ap.parse_args(argv)
    labels = [x for x in args.labels.split(",") if x]
    if args.kind == "pairs":
        sets = json.load(open(args.file))
        out = [metrics(s["truth"], s["pred"], s.get("labels", labels)) for s in sets]
    else:
        latest = {}
        for line in open(args.file):
            if line.strip():
                row = json.loads(line)
                latest[row["name"]] = row
        rows = [r for r in latest.values() if r.get("error") is None]
        truth = [r["truth"] for r in rows]
        out = {"clips": len(rows), "official": metrics(truth, [r["label_official"] for r in rows], labels),
               "robust": metrics(truth, [r["label"] for r in rows], labels)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
