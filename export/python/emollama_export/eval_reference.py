"""scikit-learn's numbers for emollama eval's predictions: the metrics the official
`eval_emotion.py` computes (f1, accuracy, precision and recall with average='weighted'),
balanced accuracy (UAR), per-label recall and the confusion matrix. The tests compare
emollama's own computation with these.

Emotion-LLaMA-v2's scoring scripts (`evaluation/score_split*.py`, `score_multilabel.py`)
are followed line for line: `--drop-neutral` as the no-neutral sentiment script, and the
multi-label metrics with `MultiLabelBinarizer` fitted on the truth.

usage: python -m emollama_export.eval_reference pairs SETS.json     (sets of truth/pred lists)
       python -m emollama_export.eval_reference results RESULTS.jsonl --labels a,b,... [--drop-neutral]
       python -m emollama_export.eval_reference multilabel RESULTS.jsonl   (or SETS.json of truth/pred strings)
prints one JSON object.
"""

import argparse
import json
import sys
import warnings

import re

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix,
                             f1_score, precision_score, recall_score)
from sklearn.preprocessing import MultiLabelBinarizer


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


def split_labels(text):  # score_multilabel.py L9-L10
    return [label.strip().lower() for label in re.split(r'[;,]', text) if label.strip()]


def multilabel(truth: list, pred: list) -> dict:
    """score_multilabel.py L38-L60 on lists of label strings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "unknown class(es) will be ignored", as there
        mlb = MultiLabelBinarizer()
        y_true = mlb.fit_transform([split_labels(t) for t in truth])
        y_pred = mlb.transform([split_labels(p) for p in pred])
        jaccard = ((y_true & y_pred).sum(axis=1) / ((y_true | y_pred).sum(axis=1) + 1e-6)).mean()
        ap = average_precision_score(y_true, y_pred.astype(float), average=None)
        return {"f1_micro": f1_score(y_true, y_pred, average="micro"),
                "f1_samples": f1_score(y_true, y_pred, average="samples"), "jaccard": float(jaccard),
                "map": average_precision_score(y_true, y_pred.astype(float), average="macro"),
                "average_precision": dict(zip(mlb.classes_.tolist(), np.atleast_1d(ap).tolist()))}


def latest_rows(path: str) -> list:
    latest = {}
    for line in open(path):
        if line.strip():
            row = json.loads(line)
            latest[row["name"]] = row
    return [r for r in latest.values() if r.get("error") is None]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.eval_reference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["pairs", "results", "multilabel"])
    ap.add_argument("file")
    ap.add_argument("--labels", default="", help="the scoring labels, in the confusion matrix's order")
    ap.add_argument("--drop-neutral", action="store_true", help="score_split_sentiment_no_neutral.py's rows")
    args = ap.parse_args(argv)
    labels = [x for x in args.labels.split(",") if x]
    if args.kind == "pairs":
        sets = json.load(open(args.file))
        out = [metrics(s["truth"], s["pred"], s.get("labels", labels)) for s in sets]
    elif args.kind == "multilabel" and args.file.endswith(".json"):
        out = [multilabel(s["truth"], s["pred"]) for s in json.load(open(args.file))]
    elif args.kind == "multilabel":
        rows = latest_rows(args.file)
        truth = [r["truth"] for r in rows]
        out = {"clips": len(rows), "official": multilabel(truth, [r["label_official"] for r in rows]),
               "robust": multilabel(truth, [r["label"] for r in rows])}
    else:
        rows = [r for r in latest_rows(args.file) if not (args.drop_neutral and r["truth"].strip().lower() == "neutral")]
        truth = [r["truth"] for r in rows]
        out = {"clips": len(rows), "official": metrics(truth, [r["label_official"] for r in rows], labels),
               "robust": metrics(truth, [r["label"] for r in rows], labels)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
