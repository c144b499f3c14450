"""``sagedrop dataset check``'s pixel audit: the job's audit, before anything is uploaded.

The dataset is read exactly as a job reads it (``data_pipeline.prepare_dataset``: the same
rules, the same extraction, the same carving of missing splits with the default seed) and
audited by the same module with the same decode, so what the check says is what the job
will say. Label errors need a trained backbone's features, which only a job has.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from sagedrop_serving.image_io import Preprocessing
from sagedrop_training.data_audit import audit, fingerprint_all, named_images
from sagedrop_training.data_pipeline import prepare_dataset

NO_FEATURES = (
    "a check before upload has no trained backbone's features; the debug job looks for "
    "label errors in its own"
)


def audit_dataset(
    path: str,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    image_size: int = 224,
) -> dict:
    """``data_audit.json`` of the dataset at ``path`` (a zip or a folder); raises
    ``data_pipeline.DatasetError`` when the dataset cannot be used at all."""
    workers = workers if workers is not None else max(1, min(8, (os.cpu_count() or 1)))
    draft = Preprocessing.for_size(image_size).resize_size
    with tempfile.TemporaryDirectory(prefix="sagedrop-check-") as work:
        data = prepare_dataset(path, work)
        total = sum(len(items) for items in data.splits.values())
        done = 0
        prints = {}
        for split, items in data.splits.items():

            def step(finished: int, _: int, before: int = done) -> None:
                if progress:
                    progress(before + finished, total)

            prints[split] = fingerprint_all([p for p, _ in items], draft, workers, step)
            done += len(items)
        result = audit(named_images(data.splits, data.labels, data.root), prints, data.labels)
    result.document["label_errors"] = {"status": "skipped", "reason": NO_FEATURES}
    result.document["split_notes"] = data.notes
    return result.document
