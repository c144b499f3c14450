"""What evaluation.json adds to a job (issue 20): dogImages' shape, 133 classes and 836
test images, timed in one run.

The forward pass is the job's own (its test pass collects the probabilities); what is new
is the metrics, the 1,000 bootstrap resamples, calibration and the per-image outcomes,
plus the Lambda's statistics document (Model Monitor's layout, 5 subsamples) from it.
Synthetic outcomes: a model right ~70% of the time, with look-alike pairs.

Run: .venv/bin/python bench/evaluation_cost.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sagedrop  # noqa: F401 - import paths
from chalicelib.model_quality import statistics_document
from sagedrop_training.evaluation import SplitOutcomes, evaluate

CLASSES, IMAGES, RUNS = 133, 836, 7


def outcomes(seed: int = 0) -> SplitOutcomes:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, CLASSES, IMAGES)
    logits = rng.normal(0, 1, (IMAGES, CLASSES))
    logits[np.arange(IMAGES), true] += 3.0
    for a in range(0, 40, 2):  # twenty look-alike pairs
        logits[true == a, a + 1] += 2.8
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    files = [f"test/{t:03d}/img_{i}.jpg" for i, t in enumerate(true)]
    return SplitOutcomes(files, true, probabilities)


def main() -> None:
    labels = [f"breed_{i}" for i in range(CLASSES)]
    split = outcomes()
    job, lam, sizes = [], [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        document = evaluate(labels, split, seed=0)
        text = json.dumps(document)
        job.append(time.perf_counter() - started)
        sizes.append(len(text))
        started = time.perf_counter()
        statistics_document(json.loads(text))
        lam.append(time.perf_counter() - started)
    print(f"classes={CLASSES} test_images={IMAGES} runs={RUNS}")
    print(f"job_evaluation_median_s={statistics.median(job):.3f} (evaluate + json.dumps)")
    print(f"lambda_statistics_median_s={statistics.median(lam):.3f} (json.loads + layout)")
    print(f"evaluation_json_bytes={sizes[0]}")
    print(f"accuracy={document['overall']['accuracy']:.4f} macro_f1="
          f"{document['overall']['macro_f1']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
