"""SageMaker's model-quality statistics for a version, from the job's ``evaluation.json``.

The layout is Model Monitor's for multiclass classification (the "Model quality metrics"
page of the SageMaker Developer Guide), which SageMaker Studio shows on a Model Registry
version: ``version``, ``dataset.item_count``, and ``multiclass_classification_metrics``
with ``confusion_matrix`` (true label → predicted label → count) and, each as
``{"value", "standard_deviation"}``: ``accuracy``, ``weighted_recall``,
``weighted_precision``, ``weighted_f0_5``, ``weighted_f1``, ``weighted_f2`` and the same six
for the best constant classifier (``..._best_constant_classifier``).

Standard deviations are computed as Model Monitor documents it: the metric on 80 % of the
images, drawn at random 5 times (seeded). Model Monitor itself reports "NaN" below 200
images; here any test split of at least 10 images gets a number, "NaN" below that.
Standard library only: it runs in the Lambda.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence

SUBSAMPLES, FRACTION, MIN_ITEMS_FOR_STD = 5, 0.8, 10
BETAS = {"f0_5": 0.5, "f1": 1.0, "f2": 2.0}


def statistics_document(evaluation: dict, seed: int = 0) -> dict:
    """The statistics document of one version; ``evaluation`` is its evaluation.json."""
    labels: list[str] = evaluation["classes"]
    images = evaluation.get("images") or []
    pairs = [(int(i["true"]), int(i["predicted"])) for i in images]
    matrix = evaluation.get("confusion_matrix") or _matrix(pairs, len(labels))
    metrics: dict = {
        "confusion_matrix": {
            labels[t]: {labels[p]: int(matrix[t][p]) for p in range(len(labels))}
            for t in range(len(labels))
        }
    }
    values = _metrics(pairs, len(labels))
    spread = _standard_deviations(pairs, len(labels), seed)
    for name, value in values.items():
        metrics[name] = {"value": value, "standard_deviation": spread.get(name, "NaN")}
    return {
        "version": 0.0,
        "dataset": {
            "item_count": len(pairs),
            "evaluation_time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
        "multiclass_classification_metrics": metrics,
    }


def _matrix(pairs: Sequence[tuple[int, int]], classes: int) -> list[list[int]]:
    matrix = [[0] * classes for _ in range(classes)]
    for t, p in pairs:
        matrix[t][p] += 1
    return matrix


def _metrics(pairs: Sequence[tuple[int, int]], classes: int) -> dict[str, float]:
    """Accuracy and the support-weighted precision, recall and F-scores, for the model
    and for the best constant classifier (always the most frequent true class)."""
    n = len(pairs)
    if n == 0:
        return {}
    support, said, hits = [0] * classes, [0] * classes, [0] * classes
    for t, p in pairs:
        support[t] += 1
        said[p] += 1
        hits[t] += t == p
    weights = [s / n for s in support]
    precision = [hits[c] / said[c] if said[c] else 0.0 for c in range(classes)]
    recall = [hits[c] / support[c] if support[c] else 0.0 for c in range(classes)]
    out = {
        "accuracy": sum(hits) / n,
        "weighted_recall": sum(w * r for w, r in zip(weights, recall, strict=True)),
        "weighted_precision": sum(w * q for w, q in zip(weights, precision, strict=True)),
    }
    for name, beta in BETAS.items():
        out[f"weighted_{name}"] = sum(
            w * _f_beta(q, r, beta) for w, q, r in zip(weights, precision, recall, strict=True)
        )
    share = max(weights)  # the constant answer: the most frequent class
    constant = {"accuracy": share, "weighted_recall": share, "weighted_precision": share * share}
    for name, beta in BETAS.items():
        constant[f"weighted_{name}"] = share * _f_beta(share, 1.0, beta)
    out.update({f"{k}_best_constant_classifier": v for k, v in constant.items()})
    return out


def _f_beta(precision: float, recall: float, beta: float) -> float:
    denominator = beta * beta * precision + recall
    return (1 + beta * beta) * precision * recall / denominator if denominator else 0.0


def _standard_deviations(
    pairs: Sequence[tuple[int, int]], classes: int, seed: int
) -> dict[str, float]:
    if len(pairs) < MIN_ITEMS_FOR_STD:
        return {}
    rng = random.Random(seed)
    size = max(1, round(len(pairs) * FRACTION))
    samples = [_metrics(rng.sample(list(pairs), size), classes) for _ in range(SUBSAMPLES)]
    out = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        mean = sum(values) / len(values)
        out[name] = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return out
