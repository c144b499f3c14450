"""Helpers the tests share: images and zips built byte by byte, train.py run by hand,
and a trained model under another dataset's labels. Fixtures live in ``conftest.py``."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from PIL import Image

from sagedrop.paths import TRAIN_SCRIPT, TRAINING_CODE

__all__ = ["TRAINING_CODE"]


def jpeg_bytes(color=(200, 30, 30), size=(24, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bytes(color=(30, 200, 30), size=(24, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    """A zip with exactly these members (names are written verbatim, even hostile ones)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def layout(classes=("001.cat", "002.dog"), splits=("train", "valid", "test"), n=2, prefix=""):
    """Members of a well-formed dataset: n JPEGs per class and split, each of its own
    colour (so no two are duplicates of each other)."""
    members = {}
    for s, split in enumerate(splits):
        for c, cls in enumerate(classes):
            for i in range(n):
                colour = ((40 * c) % 256, (30 + 45 * i) % 256, (20 + 70 * s) % 256)
                members[f"{prefix}{split}/{cls}/img_{i}.jpg"] = jpeg_bytes(colour)
    return members


def run_train(args: list[str], env_extra: dict | None = None, timeout: int = 300, launcher=None):
    """Run train.py by hand, in its own folder (``tests/contract/test_training_toolkit.py``
    runs it through SageMaker's training runner); return the result."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    command = [*(launcher or [sys.executable]), str(TRAIN_SCRIPT), *args]
    return subprocess.run(
        command, cwd=TRAINING_CODE, env=env, capture_output=True, text=True, timeout=timeout
    )


def failure_line(result: subprocess.CompletedProcess) -> str:
    """train.py's reason for failing: the end of its stderr from the last line that starts
    with an error class, which SageMaker's training toolkit turns into the FailureReason."""
    lines = result.stderr.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\w*(Error|Exception): ", line)]
    return "\n".join(lines[starts[-1] :]) if starts else ""


TINY_HYPERPARAMETERS = [
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--image-size",
    "32",
    "--pretrained",
    "false",
    "--augment",
    "crop",
    "--lr",
    "0.05",
    "--num-workers",
    "0",
]


LETTERS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def relabelled(model_dir: Path, folder: Path, labels: list[str]) -> Path:
    """The trained model under other class names: same weights, another dataset's labels."""
    shutil.copytree(model_dir, folder)
    classes = json.loads((folder / "classes.json").read_text())
    for entry in classes:
        entry["label"] = entry["folder"] = labels[entry["index"]]
    (folder / "classes.json").write_text(json.dumps(classes))
    return folder


def evaluation_document(
    accuracy: float, labels=("cat", "dog"), n: int = 200, paired: dict | None = None
) -> dict:
    """``evaluation.json`` as the job writes it (its own code computes it), for ``n``
    balanced test images of which ``accuracy`` are right (the wrong ones go to the next
    class), and the paired comparison ``paired`` (default: none was handed over)."""
    import numpy as np

    from sagedrop_training.evaluation import SplitOutcomes, evaluate

    true = np.arange(n) % len(labels)
    predicted = true.copy()
    wrong = n - round(accuracy * n)
    predicted[:wrong] = (predicted[:wrong] + 1) % len(labels)
    probabilities = np.eye(len(labels))[predicted] * 0.9 + 0.1 / len(labels)
    files = [f"test/{labels[t]}/img_{i}.jpg" for i, t in enumerate(true)]
    document = evaluate(list(labels), SplitOutcomes(files, true, probabilities))
    document["paired"] = paired or {
        "status": "not-compared",
        "reason": "no serving version was handed over",
    }
    return document


COLOURS = {"zero": (220, 40, 40), "one": (40, 200, 40), "two": (40, 60, 220)}


def colour_dataset(out_dir: Path, config: dict | None = None, per_split=None, seed: int = 0):
    """A dataset a tiny model learns in two epochs (each class one colour, with noise),
    laid out as the sample digits are (``digits/{split}/NNN.name``), so that a pipeline
    test's model passes a gate that blocks what a constant answer does as well as."""
    import numpy as np
    from PIL import Image

    per_split = per_split or {"train": 16, "valid": 6, "test": 8}
    rng = np.random.default_rng(seed)
    root = Path(out_dir) / "digits"
    for split, count in per_split.items():
        for n, (name, rgb) in enumerate(COLOURS.items()):
            folder = root / split / f"{n + 1:03d}.{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 20, (32, 32, 3))
                pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{split}_{i:03d}.jpg", quality=95)
    if config is not None:
        (root / "sagedrop.json").write_text(json.dumps(config))
    return root


def probe_wheel(folder: Path, name: str = "sagedrop_probe") -> Path:
    """A pure-Python wheel built here (nothing downloads): ``import sagedrop_probe``."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}/__init__.py": b"PROBE = 1\n",
        f"{name}-1.0.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()
        ),
        f"{name}-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = (
        "".join(
            f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
            for path, data in files.items()
        )
        + f"{name}-1.0.dist-info/RECORD,,\n"
    )
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{name}-1.0.dist-info/RECORD", record)
    return path
