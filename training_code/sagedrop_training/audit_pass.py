"""The data audit inside a training job: before the first epoch, over every split.

``train.py`` hands over the fingerprints of this process's share of each split (from the
cached-feature pass, which decodes every image once, or from ``data_audit.fingerprint_all``
on the image path). Here they are gathered from every process, judged
(``data_audit.audit``), and acted on: leaked validation and test images leave
``PreparedDataset.splits`` (unless ``--leakage keep``), so every number the job reports
is measured without them; cached features are dealt out again to match. Likely label
errors come from the training features where they exist (``label_errors``).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from sagedrop_reports.audit_section import audit_section, thumbnails_from_folder, wanted_thumbnails
from sagedrop_serving.image_io import decode_image
from sagedrop_training import ddp_runtime, label_errors
from sagedrop_training.data_audit import (
    AUDIT_FILE,
    Audit,
    Fingerprint,
    audit,
    fingerprint_all,
    named_images,
)
from sagedrop_training.data_pipeline import PreparedDataset

log = logging.getLogger("sagedrop.train")
EVALUATED = ("valid", "test")


def audit_features(
    runtime: ddp_runtime.Runtime,
    data: PreparedDataset,
    features: dict[str, list[torch.Tensor]],
    shard_prints: dict[str, list[Fingerprint]],
    leakage: str,
    seed: int,
    look_for_label_errors: bool,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], set[str], Audit]:
    """The cached-feature path: audit from the fingerprints the feature pass made, deal
    the valid/test features out again without the leaked images, rank label errors on
    the training features. Returns the features, this process's unreadable images (as
    the image dataset words them) and the audit."""
    totals = {split: len(items) for split, items in data.splits.items()}
    prints = gather_prints(runtime, shard_prints, data)
    result = decide(runtime, data, prints, leakage)
    kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    unreadable: set[str] = set()
    for split, (x, y) in features.items():
        gone = result.left_out.get(split, set())
        kept[split] = reshard_features(runtime, x, y, shard_prints[split], totals[split], gone)
        remaining = [p for i, p in enumerate(prints[split]) if i not in gone]
        unreadable |= shard_reasons(runtime, data.splits[split], remaining)
    train = (*kept["train"], shard_prints["train"]) if look_for_label_errors else None
    why = "not looked for in a tuning trial (the debug job looks)"
    add_label_errors(runtime, result, data, train, seed, why)
    return kept, unreadable, result


def audit_images(
    runtime: ddp_runtime.Runtime,
    data: PreparedDataset,
    draft_size: int,
    workers: int,
    leakage: str,
) -> Audit:
    """The image path (the backbone trains, so no features are cached): one fingerprint
    pass over this process's share of each split, then the same audit."""
    shard_prints = {
        split: fingerprint_all(
            [path for path, _ in ddp_runtime.shard(items, runtime)], draft_size, workers
        )
        for split, items in data.splits.items()
    }
    result = decide(runtime, data, gather_prints(runtime, shard_prints, data), leakage)
    why = "the backbone is trained, so no features are cached (confident learning needs them)"
    add_label_errors(runtime, result, data, None, 0, why)
    return result


def gather_prints(
    runtime: ddp_runtime.Runtime, shard_prints: dict[str, list[Fingerprint]], data: PreparedDataset
) -> dict[str, list[Fingerprint]]:
    """Every process's fingerprints, back in the split's order (shards are ``i::world``)."""
    parts = ddp_runtime.gather(
        runtime, {s: [p.to_dict() for p in prints] for s, prints in shard_prints.items()}
    )
    full: dict[str, list[Fingerprint]] = {}
    for split, items in data.splits.items():
        ordered: list[Fingerprint | None] = [None] * len(items)
        for rank, part in enumerate(parts):
            for k, value in enumerate(part.get(split, [])):
                ordered[rank + k * runtime.world_size] = Fingerprint.from_dict(value)
        missing = sum(1 for p in ordered if p is None)
        if missing:
            raise RuntimeError(f"{missing} '{split}' image(s) have no fingerprint")
        full[split] = [p for p in ordered if p is not None]
    return full


def decide(
    runtime: ddp_runtime.Runtime,
    data: PreparedDataset,
    prints: dict[str, list[Fingerprint]],
    leakage: str,
) -> Audit:
    """Audit the dataset and leave the leaked images out of ``data.splits``; every process
    reaches the same result from the same fingerprints."""
    result = audit(named_images(data.splits, data.labels, data.root), prints, data.labels, leakage)
    if runtime.is_main:
        for sentence in result.document["sentences"]:
            log.warning("data audit: %s", sentence)
        if not result.document["sentences"]:
            log.info("data audit: no duplicates, leakage or unreadable images found")
    for split in EVALUATED:
        gone = result.left_out.get(split, set())
        if gone:
            data.left_out[split] = [
                os.path.relpath(path, data.root) if data.root else path
                for i, (path, _) in enumerate(data.splits[split])
                if i in gone
            ]
            data.splits[split] = [
                item for i, item in enumerate(data.splits[split]) if i not in gone
            ]
    return result


def shard_reasons(
    runtime: ddp_runtime.Runtime,
    items: list[tuple[str, int]],
    prints: list[Fingerprint],
) -> set[str]:
    """The unreadable reasons of this process's share of ``items`` (as the image dataset
    words them), from fingerprints aligned with ``items``."""
    own = range(runtime.rank, len(items), runtime.world_size)
    return {f"{items[i][0]}: {prints[i].error}" for i in own if prints[i].error is not None}


def reshard_features(
    runtime: ddp_runtime.Runtime,
    x: torch.Tensor,
    y: torch.Tensor,
    shard_prints: list[Fingerprint],
    total: int,
    gone: set[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's features after ``gone`` left the split: the rows of the images it
    now holds (``kept[rank::world]``), wherever they were computed."""
    if not gone:
        return x, y
    mine = list(range(runtime.rank, total, runtime.world_size))
    readable = [i for i, p in zip(mine, shard_prints, strict=True) if p.error is None]
    parts = ddp_runtime.gather(runtime, (x.cpu(), y.cpu(), readable))
    row_of = {index: (rank, row) for rank, (_, _, indices) in enumerate(parts)
              for row, index in enumerate(indices)}  # fmt: skip
    kept = [i for i in range(total) if i not in gone]
    rows = [row_of[i] for i in kept[runtime.rank :: runtime.world_size] if i in row_of]
    if not rows:
        return x[:0], y[:0]
    new_x = torch.stack([parts[rank][0][row] for rank, row in rows]).to(x.device)
    new_y = torch.stack([parts[rank][1][row] for rank, row in rows]).to(y.device)
    return new_x, new_y


def add_label_errors(
    runtime: ddp_runtime.Runtime,
    result: Audit,
    data: PreparedDataset,
    features: tuple[torch.Tensor, torch.Tensor, list[Fingerprint]] | None,
    seed: int,
    skipped_because: str,
) -> None:
    """Rank likely label errors among the training images (``label_errors``), on the
    main process, from every process's training features; or say why not."""
    if features is None:
        if runtime.is_main:
            result.document["label_errors"] = label_errors.find(
                None, np.zeros(0, dtype=int), [], data.labels, skipped_because=skipped_because
            )
        return
    x, y, shard_prints = features
    mine = list(range(runtime.rank, len(data.splits["train"]), runtime.world_size))
    readable = [i for i, p in zip(mine, shard_prints, strict=True) if p.error is None]
    parts = ddp_runtime.gather(runtime, (x.cpu(), y.cpu(), readable))
    if not runtime.is_main:
        return
    xs = torch.cat([part[0] for part in parts])
    ys = torch.cat([part[1] for part in parts]).numpy()
    indices = [i for part in parts for i in part[2]]
    files = [
        os.path.relpath(data.splits["train"][i][0], data.root) if data.root else str(i)
        for i in indices
    ]
    found = label_errors.find(xs, ys, files, data.labels, seed)
    result.document["label_errors"] = found
    result.headline["label_error_candidates"] = found.get("count")
    if found["status"] == "found" and found["candidates"]:
        top = found["candidates"][0]
        log.warning(
            "data audit: %d training image(s) are likely mislabelled (confident learning), "
            "e.g. %s filed as '%s' looks like '%s' (%.2f); nothing was changed",
            found["count"], top["file"], top["given"], top["suggested"], top["confidence"],
        )  # fmt: skip
    elif found["status"] == "skipped":
        log.info("data audit: label errors not looked for: %s", found["reason"])


def report_section(result: Audit, data: PreparedDataset) -> str:
    """The audit's section of the debug job's report, its label-error candidates drawn
    from the job's own copy of the images."""
    document = result.document
    files = wanted_thumbnails(document)
    return audit_section(document, thumbnails_from_folder(data.root, files, decode_image))


def write(output_dir: str, result: Audit) -> str:
    """``data_audit.json`` in the job's output (it travels in ``output.tar.gz``)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, AUDIT_FILE)
    with open(path, "w") as handle:
        json.dump(result.document, handle, indent=1)
    return path
