"""From a SageMaker channel to batches: find the data, check it, split it, decode it.

The dataset is judged by ``dataset_rules`` (the same rules the upload Lambda applies)
before anything is extracted, so a hostile zip never reaches the disk, and a missing
``valid`` or ``test`` split is carved out of ``train`` the same way on every run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from sagedrop_contract import dataset_rules
from sagedrop_serving.image_io import ImageDecodeError, decode_image
from sagedrop_training.data_audit import fingerprint_image

log = logging.getLogger("sagedrop.data")

SPLIT_CHANNELS = {
    "train": "SM_CHANNEL_TRAIN",
    "valid": "SM_CHANNEL_VALID",
    "test": "SM_CHANNEL_TEST",
}


class DatasetError(ValueError):
    """The dataset cannot be trained on; the message lists every problem found."""


@dataclass
class PreparedDataset:
    """Image paths and class indices per split, plus what was learned on the way."""

    classes: list[str]
    labels: list[str]
    splits: dict[str, list[tuple[str, int]]]
    report: dataset_rules.DatasetReport
    notes: list[str] = field(default_factory=list)
    root: str = ""
    # Per split, the images the data audit took out of evaluation (as the dataset names them).
    left_out: dict[str, list[str]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Identifies the exact images and splits, for caches keyed on the data.

        Names are taken relative to the dataset's root, so the same zip extracted into
        another run's folder (each run has its own) has the same fingerprint.
        """
        digest = hashlib.sha256()
        for split in sorted(self.splits):
            for path, label in self.splits[split]:
                name = os.path.relpath(path, self.root) if self.root else path
                digest.update(f"{split}\0{name}\0{label}\0{os.path.getsize(path)}\n".encode())
        return digest.hexdigest()[:16]


def find_data_source(explicit: str | None = None) -> str | dict[str, str]:
    """Where the data is: ``--data``, the ``training`` channel, or separate split channels.

    A channel fed from one S3 object arrives as a folder holding that one file, so a
    folder whose only content is a zip means "that zip".
    """
    if explicit:
        return _unwrap_single_zip(explicit)
    if os.environ.get("SM_CHANNEL_TRAINING"):
        return _unwrap_single_zip(os.environ["SM_CHANNEL_TRAINING"])
    per_split = {s: os.environ[v] for s, v in SPLIT_CHANNELS.items() if os.environ.get(v)}
    if "train" in per_split:
        return per_split
    raise DatasetError(
        "No data: pass --data PATH (a zip or folder), or run under SageMaker with a "
        "'training' channel (or 'train'/'valid'/'test' channels)."
    )


def _unwrap_single_zip(path: str) -> str:
    if os.path.isdir(path):
        visible = [n for n in os.listdir(path) if not n.startswith(".")]
        if len(visible) == 1 and visible[0].lower().endswith(".zip"):
            return os.path.join(path, visible[0])
    return path


def prepare_dataset(
    source: str | dict[str, str],
    work_dir: str,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> PreparedDataset:
    """Validate, extract when needed (into ``work_dir``), and assign every image a split.

    Extraction is skipped when ``work_dir`` already holds a complete extraction, so DDP
    ranks after the first, and repeated runs, reuse it.
    """
    if isinstance(source, dict):
        root = _link_split_channels(source, work_dir)
        entries = [
            dataset_rules.Entry(name=f"{split}/{e.name}", size=e.size, is_symlink=e.is_symlink)
            for split, path in sorted(source.items())
            for e in dataset_rules.entries_from_folder(path)
        ]
        report = dataset_rules.inspect_entries(entries)
    elif os.path.isdir(source):
        root = source
        report = dataset_rules.inspect_path(root)
    else:
        report = dataset_rules.inspect_path(source)
        root = os.path.join(work_dir, "extracted")
        if report.usable:
            marker = os.path.join(root, ".complete")
            if not os.path.exists(marker):
                shutil.rmtree(root, ignore_errors=True)
                dataset_rules.extract_zip(source, root, report)
                open(marker, "w").close()
    if not report.usable:
        raise DatasetError(
            "The dataset cannot be used:\n" + "\n".join(f"  - {p}" for p in report.problems)
        )
    for warning in report.warnings:
        log.warning("dataset: %s", warning)

    classes = report.classes
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {}
    for split in dataset_rules.SPLITS:
        per_class = report.files.get(split, {})
        splits[split] = [
            (os.path.join(root, name), index[cls])
            for cls in classes
            for name in per_class.get(cls, [])
        ]
    notes = _fill_missing_splits(splits, report.missing_splits, seed, valid_fraction, test_fraction)
    for note in notes:
        log.warning("dataset: %s", note)
    return PreparedDataset(
        classes=classes, labels=report.labels, splits=splits, report=report, notes=notes, root=root
    )


def _link_split_channels(channels: dict[str, str], work_dir: str) -> str:
    """Present separate train/valid/test channels as one dataset folder (symlinks, no copies)."""
    root = os.path.join(work_dir, "channels")
    os.makedirs(root, exist_ok=True)
    for split, path in channels.items():
        link = os.path.join(root, split)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(path), link)
    return root


def _fill_missing_splits(
    splits: dict[str, list[tuple[str, int]]],
    missing: Sequence[str],
    seed: int,
    valid_fraction: float,
    test_fraction: float,
) -> list[str]:
    """Carve missing splits out of train: per class, in a seeded order of sorted paths.

    Sorting first makes the split independent of how the archive listed its files; every
    class keeps at least one training image.
    """
    fractions = {"valid": valid_fraction, "test": test_fraction}
    wanted = {s: fractions[s] for s in missing if s in fractions}
    if not wanted:
        return []
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in sorted(splits["train"]):
        by_class.setdefault(item[1], []).append(item)
    train: list[tuple[str, int]] = []
    for label, items in sorted(by_class.items()):
        random.Random(f"{seed}:{label}").shuffle(items)
        for split, fraction in wanted.items():
            take = min(max(1, round(len(items) * fraction)), len(items) - 1)
            splits[split].extend(items[:take])
            items = items[take:]
        train.extend(items)
    splits["train"] = train
    return [
        f"'{split}' split made from {fraction:.0%} of 'train' per class "
        f"({len(splits[split])} images, seed {seed})"
        for split, fraction in wanted.items()
    ]


class ImageFileDataset(Dataset):
    """Decodes on access; an unreadable file yields ``None`` instead of ending training.

    With ``fingerprints`` each sample also carries the data audit's ``Fingerprint``, made
    from the same read and decode (``data_audit.fingerprint_image``): the audit costs a
    hash, not a second decode.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        transform,
        draft_size: int | None,
        fingerprints: bool = False,
    ):
        self.items = list(items)
        self.transform = transform
        self.draft_size = draft_size
        self.fingerprints = fingerprints

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        if self.fingerprints:
            fingerprint, image = fingerprint_image(path, self.draft_size)
            if image is None:
                return None, label, f"{path}: {fingerprint.error}", fingerprint
            return self.transform(image), label, None, fingerprint
        try:
            image = decode_image(path, draft_size=self.draft_size)
        except (ImageDecodeError, OSError) as exc:
            return None, label, f"{path}: {exc}"
        return self.transform(image), label, None


def collate_skipping_unreadable(batch):
    """Stack the readable samples; hand back the unreadable ones' reasons for counting
    (and, from a fingerprinting dataset, every sample's fingerprint, in order)."""
    good = [(sample[0], sample[1]) for sample in batch if sample[2] is None]
    errors = [sample[2] for sample in batch if sample[2] is not None]
    tail = ([sample[3] for sample in batch],) if batch and len(batch[0]) == 4 else ()
    if not good:
        return (None, None, errors, *tail)
    images = torch.stack([x for x, _ in good])
    labels = torch.tensor([y for _, y in good], dtype=torch.long)
    return (images, labels, errors, *tail)
