"""Likely label errors: confident learning on out-of-sample probabilities.

With a frozen backbone the features of every training image are computed once anyway
(``train.py``'s cached-feature path). A linear head trained on k-1 folds of them predicts
the k-th fold, so every training image gets probabilities from a model that never saw it;
cleanlab's ``find_label_issues`` (confident learning: Northcutt et al., 2021) then ranks the
images whose given label those probabilities contradict. Seconds, not minutes: full-batch
L-BFGS on a linear layer. Nothing is removed or relabelled: the list is for a person.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger("sagedrop.train")
FOLDS = 5
TOP = 50  # candidates listed
STEPS = 60  # L-BFGS iterations per fold
WEIGHT_DECAY = 1e-3
METHOD = (
    f"{FOLDS}-fold out-of-sample probabilities from a linear head on the frozen backbone's "
    "features, ranked by cleanlab.filter.find_label_issues (self-confidence)"
)


def out_of_fold_probabilities(
    features: torch.Tensor, labels: np.ndarray, classes: int, seed: int = 0
) -> np.ndarray:
    """For each row, class probabilities from a head trained without that row's fold.

    Folds are stratified: each class's rows, in a seeded order, are dealt round the folds.
    """
    x = features.detach().float().cpu()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    fold_of = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label).tolist()
        random.Random(f"{seed}:{label}").shuffle(rows)
        for n, row in enumerate(rows):
            fold_of[row] = n % FOLDS
    y = torch.as_tensor(labels, dtype=torch.long)
    probabilities = np.zeros((len(labels), classes))
    for fold in range(FOLDS):
        held = fold_of == fold
        if not held.any():
            continue
        head = _fit_head(x[~held], y[~held], classes, seed + fold)
        with torch.no_grad():
            probabilities[held] = torch.softmax(head(x[held]), dim=1).double().numpy()
    return probabilities


def _fit_head(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=STEPS,
                                  line_search_fn="strong_wolfe")  # fmt: skip
    loss_fn = nn.CrossEntropyLoss()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(head(x), y) + WEIGHT_DECAY * head.weight.pow(2).sum() / 2
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def find(
    features: torch.Tensor | None,
    labels: np.ndarray,
    files: Sequence[str],
    names: Sequence[str],
    seed: int = 0,
    skipped_because: str = "",
) -> dict:
    """The ``label_errors`` part of ``data_audit.json``: ``status`` ``found`` with the
    ranked candidates, or ``skipped`` with the reason."""
    if features is None:
        return {"status": "skipped", "reason": skipped_because or "no cached features"}
    counts = np.bincount(labels, minlength=len(names)) if len(labels) else np.zeros(0)
    judged = counts >= FOLDS
    if not judged.any():
        return {
            "status": "skipped",
            "reason": f"no class has the {FOLDS} training images that {FOLDS}-fold "
            "out-of-sample probabilities need",
        }
    if judged.sum() < 2:
        return {"status": "skipped", "reason": f"fewer than two classes have {FOLDS} or more "
                "training images"}  # fmt: skip
    from cleanlab.filter import find_label_issues

    try:
        probabilities = out_of_fold_probabilities(features, labels, len(names), seed)
        ranked = find_label_issues(
            labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
        )
    except Exception as exc:  # a finding for a person, never a reason to lose the model
        log.warning("data audit: label errors could not be ranked: %s", exc)
        return {"status": "skipped", "reason": f"ranking failed ({type(exc).__name__}: {exc})"}
    ranked = [int(i) for i in ranked if judged[labels[i]]]
    candidates = []
    for i in ranked[:TOP]:
        suggested = int(np.argmax(probabilities[i]))
        candidates.append({
            "file": files[i],
            "given": names[labels[i]],
            "suggested": names[suggested],
            "confidence": round(float(probabilities[i, suggested]), 4),
            "given_probability": round(float(probabilities[i, labels[i]]), 4),
        })  # fmt: skip
    unjudged = [names[int(c)] for c in np.flatnonzero(~judged)]
    result = {
        "status": "found",
        "method": METHOD,
        "count": len(ranked),
        "candidates": candidates,
        "out_of_sample_accuracy": round(float((probabilities.argmax(1) == labels).mean()), 4),
    }
    if unjudged:
        result["not_judged"] = {
            "reason": f"fewer than {FOLDS} training images",
            "classes": unjudged[:TOP],
            "count": len(unjudged),
        }
    return result
