"""What a model gets right and wrong on images it never saw: ``evaluation.json``.

Computed once, at the end of every run whose model can be deployed (the debug job, a run
by hand), from the very forward pass that gives the job's ``test_accuracy``, so the two
always agree. scikit-learn computes the metrics; the bootstrap intervals are vectorised
over resamples (1,000 of them cost milliseconds at 836 images and 133 classes,
``bench/evaluation_cost.py``).

Every class is named: one with no test image is listed as untested (never a NaN), and
the per-image outcomes let two models be compared image by image on the same test split
(the gate's paired comparison).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

VERSION = 1
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_CHUNK_ITEMS = 2_000_000  # resampled labels held at once
CONFIDENCE = 0.95
CALIBRATION_BINS = 15
MOST_CONFUSED = 10
CONFIDENTLY_WRONG = 20


@dataclass(frozen=True)
class SplitOutcomes:
    """Each readable test image once: its file, its true class and the model's
    probabilities (rows in the same order)."""

    files: list[str]
    true: np.ndarray  # (n,) int
    probabilities: np.ndarray  # (n, classes) float

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


def evaluate(labels: Sequence[str], outcomes: SplitOutcomes, seed: int = 0) -> dict:
    """The whole evaluation document for ``labels`` (index order) and the outcomes."""
    classes = len(labels)
    true, predicted = outcomes.true.astype(int), outcomes.predicted.astype(int)
    n = len(true)
    support = np.bincount(true, minlength=classes)
    tested = [i for i in range(classes) if support[i] > 0]
    document: dict = {
        "version": VERSION,
        "item_count": n,
        "classes": list(labels),
        "untested_classes": [labels[i] for i in range(classes) if support[i] == 0],
    }
    if n == 0:
        document["overall"] = None
        document["problem"] = "no readable test image: nothing could be evaluated"
        return document
    precision, recall, f1, _ = precision_recall_fscore_support(
        true, predicted, labels=list(range(classes)), zero_division=0
    )
    weighted = precision_recall_fscore_support(
        true, predicted, labels=tested, average="weighted", zero_division=0
    )
    majority = int(np.argmax(support))
    document["overall"] = {
        "accuracy": float(np.mean(true == predicted)),
        "top5_accuracy": _top_k(outcomes.probabilities, true, 5),
        "macro_f1": float(
            f1_score(true, predicted, labels=tested, average="macro", zero_division=0)
        ),
        # balanced accuracy: mean recall over the tested classes (scikit-learn's definition)
        "balanced_accuracy": float(np.mean(recall[tested])),
        "weighted_precision": float(weighted[0]),
        "weighted_recall": float(weighted[1]),
        "weighted_f1": float(weighted[2]),
        "accuracy_best_constant_classifier": float(support[majority] / n),
        "best_constant_class": labels[majority],
        "chance_balanced_accuracy": 1.0 / len(tested),
    }
    document["intervals"] = _bootstrap(true, predicted, classes, tested, seed)
    document["per_class"] = [
        {
            "label": labels[i],
            "index": i,
            "support": int(support[i]),
            "precision": float(precision[i]) if support[i] else None,
            "recall": float(recall[i]) if support[i] else None,
            "f1": float(f1[i]) if support[i] else None,
        }
        for i in range(classes)
    ]
    worst = min(tested, key=lambda i: (recall[i], -support[i], i))
    document["worst_class"] = {"label": labels[worst], "recall": float(recall[worst]),
                               "support": int(support[worst])}  # fmt: skip
    matrix = confusion_matrix(true, predicted, labels=list(range(classes)))
    document["confusion_matrix"] = matrix.tolist()
    document["most_confused"] = _most_confused(matrix, labels)
    document["calibration"] = _calibration(outcomes.confidence, true == predicted)
    document["confidently_wrong"] = _confidently_wrong(outcomes, labels)
    document["images"] = [
        {"file": f, "true": int(t), "predicted": int(p), "probability": round(float(c), 6)}
        for f, t, p, c in zip(outcomes.files, true, predicted, outcomes.confidence, strict=True)
    ]
    return document


def _top_k(probabilities: np.ndarray, true: np.ndarray, k: int) -> float:
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == true[:, None]).any(axis=1)))


def _bootstrap(true, predicted, classes: int, tested: list[int], seed: int) -> dict:
    """Percentile intervals over resampled test sets (the same resamples for every metric).

    Per resample, the per-class counts come from one ``bincount`` over resample-offset
    labels, so 1,000 resamples cost a few array passes, not 1,000 sklearn calls. They are
    drawn in chunks of at most ``BOOTSTRAP_CHUNK_ITEMS`` labels, so a test split of 100,000
    images needs tens of megabytes, not gigabytes.
    """
    n = len(true)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, min(BOOTSTRAP_RESAMPLES, BOOTSTRAP_CHUNK_ITEMS // n))
    values: dict[str, list[np.ndarray]] = {"accuracy": [], "macro_f1": [], "balanced_accuracy": []}
    for start in range(0, BOOTSTRAP_RESAMPLES, per_chunk):
        count = min(per_chunk, BOOTSTRAP_RESAMPLES - start)
        picks = rng.integers(0, n, size=(count, n))
        offsets = (np.arange(count) * classes)[:, None]
        t, p = true[picks], predicted[picks]
        right = (t == p).astype(float)
        size = count * classes
        hits = np.bincount((offsets + t).ravel(), weights=right.ravel(), minlength=size)
        support = np.bincount((offsets + t).ravel(), minlength=size).astype(float)
        said = np.bincount((offsets + p).ravel(), minlength=size).astype(float)
        hits, support, said = (a.reshape(count, classes) for a in (hits, support, said))
        denominator = support + said
        f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
        recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
        present = support > 0
        values["accuracy"].append(right.mean(axis=1))
        values["macro_f1"].append(f1[:, tested].mean(axis=1))
        values["balanced_accuracy"].append(
            (recall * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
        )
    tail = (1 - CONFIDENCE) / 2 * 100
    intervals: dict = {"confidence": CONFIDENCE, "resamples": BOOTSTRAP_RESAMPLES, "seed": seed}
    for name, parts in values.items():
        samples = np.concatenate(parts)
        low, high = np.percentile(samples, [tail, 100 - tail])
        intervals[name] = {"low": float(low), "high": float(high), "std": float(samples.std())}
    return intervals


def _most_confused(matrix: np.ndarray, labels: Sequence[str]) -> list[dict]:
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:MOST_CONFUSED]
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), matrix.shape[1])
        if off[t, p] == 0:
            break
        pairs.append({"true": labels[t], "predicted": labels[p], "count": int(off[t, p])})
    return pairs


def _calibration(confidence: np.ndarray, right: np.ndarray) -> dict:
    """Expected calibration error over equal-width confidence bins, and the bins (the
    points of a reliability diagram)."""
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, CALIBRATION_BINS - 1)
    bins, ece, n = [], 0.0, len(confidence)
    for b in range(CALIBRATION_BINS):
        inside = which == b
        count = int(inside.sum())
        entry: dict[str, float | int | None] = {
            "lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
            "confidence": None, "accuracy": None,
        }  # fmt: skip
        if count:
            mean_confidence = float(confidence[inside].mean())
            accuracy = float(right[inside].mean())
            entry["confidence"], entry["accuracy"] = mean_confidence, accuracy
            ece += count / n * abs(accuracy - mean_confidence)
        bins.append(entry)
    return {"ece": float(ece), "bins": bins}


def _confidently_wrong(outcomes: SplitOutcomes, labels: Sequence[str]) -> list[dict]:
    predicted, confidence = outcomes.predicted, outcomes.confidence
    wrong = np.flatnonzero(predicted != outcomes.true)
    ranked = wrong[np.argsort(-confidence[wrong], kind="stable")][:CONFIDENTLY_WRONG]
    return [
        {
            "file": outcomes.files[i],
            "true": labels[int(outcomes.true[i])],
            "predicted": labels[int(predicted[i])],
            "probability": round(float(confidence[i]), 6),
        }
        for i in ranked
    ]


def paired(new: SplitOutcomes, old: SplitOutcomes) -> dict:
    """Two models on the same test images, image by image: who gets what right.

    Rows are matched by file; the counts are McNemar's table (the gate computes the
    exact test from them)."""
    index = {f: i for i, f in enumerate(old.files)}
    both = [(i, index[f]) for i, f in enumerate(new.files) if f in index]
    if not both:
        return {"status": "not-compared", "reason": "no test image in common"}
    rows_new = np.array([i for i, _ in both])
    rows_old = np.array([j for _, j in both])
    truth = new.true[rows_new]
    new_right = new.predicted[rows_new] == truth
    old_right = old.predicted[rows_old] == truth
    return {
        "status": "compared",
        "images": len(both),
        "both_right": int((new_right & old_right).sum()),
        "new_only_right": int((new_right & ~old_right).sum()),
        "serving_only_right": int((~new_right & old_right).sum()),
        "both_wrong": int((~new_right & ~old_right).sum()),
        "new_accuracy": float(new_right.mean()),
        "serving_accuracy": float(old_right.mean()),
    }
