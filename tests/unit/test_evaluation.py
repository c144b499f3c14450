"""evaluation.json's numbers (issue 20): scikit-learn's metrics, intervals that hold the
point value, and every edge case named, never a NaN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from chalicelib.model_quality import statistics_document
from sagedrop_training.evaluation import SplitOutcomes, evaluate, paired


def _outcomes(true, predicted, classes, confidence=0.9):
    probabilities = np.full((len(true), classes), (1 - confidence) / max(classes - 1, 1))
    probabilities[np.arange(len(true)), predicted] = confidence
    return SplitOutcomes([f"f{i}.jpg" for i in range(len(true))], np.asarray(true), probabilities)


def _finite(document) -> bool:
    text = json.dumps(document, allow_nan=False)  # raises on NaN or Infinity
    return bool(text)


def test_the_numbers_are_scikit_learns_and_the_intervals_hold_them():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, 400)
    predicted = np.where(rng.random(400) < 0.7, true, rng.integers(0, 5, 400))
    document = evaluate(list("abcde"), _outcomes(true, predicted, 5), seed=3)
    overall = document["overall"]
    assert overall["accuracy"] == pytest.approx(np.mean(true == predicted))
    assert overall["macro_f1"] == pytest.approx(f1_score(true, predicted, average="macro"))
    assert overall["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, predicted))
    for name in ("accuracy", "macro_f1", "balanced_accuracy"):
        bounds = document["intervals"][name]
        assert bounds["low"] < overall[name] < bounds["high"]
    assert np.array(document["confusion_matrix"]).sum() == 400
    assert len(document["images"]) == 400 and len(document["confidently_wrong"]) == 20
    again = evaluate(list("abcde"), _outcomes(true, predicted, 5), seed=3)
    assert again["intervals"] == document["intervals"]  # seeded
    assert _finite(document)


def test_a_class_without_test_images_is_named_untested_not_nan():
    document = evaluate(["a", "b", "c"], _outcomes([0, 0, 1, 1], [0, 1, 1, 1], 3))
    assert document["untested_classes"] == ["c"]
    [c] = [row for row in document["per_class"] if row["label"] == "c"]
    assert (c["support"], c["recall"], c["precision"]) == (0, None, None)
    assert document["overall"]["chance_balanced_accuracy"] == 0.5  # over the tested classes
    assert _finite(document)


def test_one_image_per_class_and_all_answers_one_class():
    document = evaluate(["a", "b", "c"], _outcomes([0, 1, 2], [1, 1, 1], 3))
    overall = document["overall"]
    assert overall["accuracy"] == pytest.approx(1 / 3)
    assert overall["accuracy_best_constant_classifier"] == pytest.approx(1 / 3)
    assert document["worst_class"]["recall"] == 0.0
    assert document["most_confused"][0]["predicted"] == "b"
    assert _finite(document)


def test_more_than_100_classes_and_an_empty_test_split():
    labels = [f"c{i}" for i in range(150)]
    true = np.arange(300) % 150
    document = evaluate(labels, _outcomes(true, true, 150))
    assert document["overall"]["accuracy"] == 1.0 and document["overall"]["top5_accuracy"] == 1.0
    assert len(document["confusion_matrix"]) == 150
    empty = evaluate(labels, SplitOutcomes([], np.zeros(0, int), np.zeros((0, 150))))
    assert empty["overall"] is None and "no readable test image" in empty["problem"]


def test_calibration_bins_and_the_expected_calibration_error():
    # right with confidence 0.9 on 9 of 10 images: calibrated, so ECE ~ 0
    true = np.zeros(10, int)
    predicted = np.array([0] * 9 + [1])
    document = evaluate(["a", "b"], _outcomes(true, predicted, 2, confidence=0.9))
    assert document["calibration"]["ece"] == pytest.approx(0.0, abs=1e-9)
    assert sum(b["count"] for b in document["calibration"]["bins"]) == 10
    assert len(document["calibration"]["bins"]) == 15


def test_paired_outcomes_match_images_by_file():
    new = _outcomes([0, 1, 0, 1], [0, 1, 1, 1], 2)
    old = _outcomes([0, 1, 0, 1], [0, 0, 0, 1], 2)
    table = paired(new, old)
    assert (table["both_right"], table["new_only_right"], table["serving_only_right"],
            table["both_wrong"]) == (2, 1, 1, 0)  # fmt: skip


def test_the_statistics_document_has_model_monitors_layout():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 3, 250)
    predicted = np.where(rng.random(250) < 0.8, true, (true + 1) % 3)
    evaluation = evaluate(["a", "b", "c"], _outcomes(true, predicted, 3))
    statistics = statistics_document(evaluation)
    metrics = statistics["multiclass_classification_metrics"]
    assert statistics["dataset"]["item_count"] == 250
    assert metrics["accuracy"]["value"] == pytest.approx(evaluation["overall"]["accuracy"])
    assert metrics["weighted_f1"]["value"] == pytest.approx(evaluation["overall"]["weighted_f1"])
    assert all(0 < metrics[k]["standard_deviation"] < 0.1 for k in ("accuracy", "weighted_f1"))
    assert sum(sum(r.values()) for r in metrics["confusion_matrix"].values()) == 250
    tiny = statistics_document(evaluate(["a", "b"], _outcomes([0, 1], [0, 0], 2)))
    assert tiny["multiclass_classification_metrics"]["accuracy"]["standard_deviation"] == "NaN"
    assert not math.isnan(tiny["multiclass_classification_metrics"]["accuracy"]["value"])
