"""The test split's outcomes, for this model and for the one serving now: ``evaluation.json``.

The new model's outcomes come from the pass that measured ``test_accuracy``. The serving
version's artifact, when the pipeline hands it over (the ``serving`` channel: only a
version of the same dataset with the same classes), is evaluated here on *this* job's
test split with *its own* preprocessing, so the gate compares the two on the same images.
Anything wrong with that artifact is said in the document and never fails the job: the
gate then falls back to its tolerance rule and says so.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sagedrop_contract import artifact_layout
from sagedrop_serving.image_io import Preprocessing, eval_transform
from sagedrop_serving.model_def import build_classifier
from sagedrop_training import evaluation
from sagedrop_training.data_pipeline import ImageFileDataset

log = logging.getLogger("sagedrop.train")
SERVING_CHANNEL = "SM_CHANNEL_SERVING"
EVALUATION_FILE = "evaluation.json"
MAX_SERVING_ARTIFACT_BYTES = 2 * 1024**3
BATCH = 32
LISTED_LEFT_OUT = 50


def display_name(path: str, root: str) -> str:
    """The image as the dataset names it (``test/001.cat/x.jpg``), not the host's path."""
    return os.path.relpath(path, root) if root else os.path.basename(path)


def outcomes_of(
    items: Sequence[tuple[str, int]], unreadable: set[str], outputs: list, root: str
) -> evaluation.SplitOutcomes:
    """Rows of ``outputs`` (``fit_loop.evaluate``'s (labels, probabilities) batches) are the
    readable ``items`` in order: the unreadable were skipped where they fell."""
    failed = {reason.split(": ", 1)[0] for reason in unreadable}
    readable = [(path, label) for path, label in items if path not in failed]
    if outputs:
        true = torch.cat([labels for labels, _ in outputs]).numpy()
        probabilities = torch.cat([probs for _, probs in outputs]).numpy().astype(np.float64)
    else:
        true, probabilities = np.zeros(0, dtype=int), np.zeros((0, 0))
    if len(readable) != len(true) or any(
        label != t for (_, label), t in zip(readable, true, strict=False)
    ):
        log.warning("test outcomes do not line up with the test files; images are numbered")
        files = [f"image {i}" for i in range(len(true))]
    else:
        files = [display_name(path, root) for path, _ in readable]
    return evaluation.SplitOutcomes(files, true.astype(int), probabilities)


def merged(parts: list[evaluation.SplitOutcomes]) -> evaluation.SplitOutcomes:
    """The shards of every process, as one test split."""
    nonempty = [p for p in parts if len(p.true)]
    if not nonempty:
        return parts[0]
    return evaluation.SplitOutcomes(
        [f for p in nonempty for f in p.files],
        np.concatenate([p.true for p in nonempty]),
        np.concatenate([p.probabilities for p in nonempty]),
    )


def serving_outcomes(
    items: Sequence[tuple[str, int]], labels: Sequence[str], root: str, device: torch.device
) -> tuple[evaluation.SplitOutcomes | None, dict]:
    """The serving version's outcomes on these test images, and what is known of it
    (``status``: ``compared`` or ``not-compared`` with the reason)."""
    channel = os.environ.get(SERVING_CHANNEL)
    if not channel:
        return None, {"status": "not-compared", "reason": "no serving version was handed over"}
    archives = sorted(Path(channel).rglob("*.tar.gz"))
    if not archives:
        return None, {"status": "not-compared", "reason": f"no model.tar.gz in {channel}"}
    try:
        with tempfile.TemporaryDirectory(prefix="sagedrop-serving-") as folder:
            return _evaluate_artifact(archives[0], Path(folder), items, labels, root, device)
    except Exception as exc:  # its artifact is not this job's to fail on
        log.warning("the serving version's artifact cannot be evaluated: %s", exc)
        return None, {"status": "not-compared", "reason": f"its artifact cannot be read: {exc}"}


def _evaluate_artifact(archive: Path, folder: Path, items, labels, root, device):
    if archive.stat().st_size > MAX_SERVING_ARTIFACT_BYTES:
        raise ValueError(f"{archive.name} is over {MAX_SERVING_ARTIFACT_BYTES:,} bytes")
    with tarfile.open(archive, "r:gz") as tar:
        wanted = [m for m in tar.getmembers() if m.name.removeprefix("./") in
                  (*artifact_layout.DESCRIPTORS, artifact_layout.WEIGHTS)]  # fmt: skip
        tar.extractall(folder, members=wanted, filter="data")
    artifact = artifact_layout.read_descriptors(str(folder))
    theirs = artifact.labels
    about = {"training_job": artifact.config.get("training_job"),
             "test_accuracy_own_split": artifact.test_accuracy}  # fmt: skip
    if theirs != list(labels):
        return None, {**about, "status": "not-compared", "reason": "its classes differ"}
    network = build_classifier(artifact.backbone, len(theirs))
    weights = folder / artifact_layout.WEIGHTS
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval().to(device)
    pre = Preprocessing.from_dict(artifact.preprocessing)
    draft = artifact.draft_size(pre.resize_size)
    dataset = ImageFileDataset(items, eval_transform(pre), draft)
    names, true, rows = [], [], []
    with torch.inference_mode():
        for begin in range(0, len(dataset), BATCH):
            positions = range(begin, min(begin + BATCH, len(dataset)))
            samples = [(i, *dataset[i]) for i in positions]  # (i, tensor, label, error)
            good = [(i, x, y) for i, x, y, error in samples if error is None]
            if not good:
                continue
            images = torch.stack([x for _, x, _ in good]).to(device)
            rows.append(network(images).float().softmax(1).cpu().numpy().astype(np.float64))
            true += [y for _, _, y in good]
            names += [display_name(items[i][0], root) for i, _, _ in good]
    probabilities = np.concatenate(rows) if rows else np.zeros((0, len(theirs)))
    outcomes = evaluation.SplitOutcomes(names, np.array(true, dtype=int), probabilities)
    return outcomes, {**about, "status": "compared"}


def write(
    output_dir: str,
    labels: Sequence[str],
    outcomes: evaluation.SplitOutcomes,
    seed: int,
    serving: tuple[evaluation.SplitOutcomes | None, dict],
    left_out: dict[str, list[str]] | None = None,
) -> dict:
    """``evaluation.json`` in the job's output (it travels in ``output.tar.gz``).

    ``left_out``: the valid/test images the data audit took out because they duplicate
    a training image; the document says how many and which, so no number hides them.
    """
    document = evaluation.evaluate(labels, outcomes, seed)
    left_out = left_out or {}
    document["left_out"] = {
        "reason": "duplicates of a training image (data_audit.json)",
        "counts": {split: len(left_out.get(split, [])) for split in ("valid", "test")},
        "test_files": left_out.get("test", [])[:LISTED_LEFT_OUT],
    }
    old, about = serving
    comparison = dict(about)
    if old is not None:
        comparison.update(evaluation.paired(outcomes, old))
    document["paired"] = comparison
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, EVALUATION_FILE), "w") as handle:
        json.dump(document, handle)
    return document
