"""Shared fixtures: generated datasets, archives built entry by entry, one trained model."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from sagedrop.paths import TRAIN_SCRIPT, TRAINING_CODE
from sagedrop.sample_data import pack_dataset, write_sample_dataset


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
    """Members of a well-formed dataset: n JPEGs per class and split."""
    members = {}
    for split in splits:
        for c, cls in enumerate(classes):
            for i in range(n):
                members[f"{prefix}{split}/{cls}/img_{i}.jpg"] = jpeg_bytes((40 * c, 90, 150))
    return members


def run_train(args: list[str], env_extra: dict | None = None, timeout: int = 300, launcher=None):
    """Run train.py by hand, in its own folder (``tests/test_training_toolkit.py`` runs it
    through SageMaker's training runner); return the result."""
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


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """The full sample dataset (1,797 images, 32 px) as a folder and a zip."""
    base = tmp_path_factory.mktemp("digits")
    folder = write_sample_dataset(base)
    return {"folder": folder, "zip": pack_dataset(folder, base / "digits.zip")}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> dict[str, Path]:
    """Three classes, eight images each: enough to exercise every code path in seconds."""
    base = tmp_path_factory.mktemp("tiny")
    folder = write_sample_dataset(base, per_class=8, classes=3)
    return {"folder": folder, "zip": pack_dataset(folder, base / "digits.zip")}


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


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory, tiny_dataset) -> dict:
    """One real training job under the container contract, shared by the tests that read it.

    The dataset holds a truncated JPEG and a stray text file, as real uploads do.
    """
    job = tmp_path_factory.mktemp("job")
    source = tiny_dataset["folder"]
    data = job / "dataset"
    subprocess.run(["cp", "-r", str(source), str(data)], check=True)
    victim = sorted((data / "train" / "001.zero").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated, like dogImages' Leonberger_06571
    (data / "train" / "001.zero" / "notes.txt").write_text("not an image")
    channel = job / "input" / "data" / "training"
    channel.mkdir(parents=True)
    pack_dataset(data, channel / "upload.zip")
    env = {
        "SM_CHANNEL_TRAINING": str(channel),
        "SM_MODEL_DIR": str(job / "model"),
        "SM_OUTPUT_DATA_DIR": str(job / "output" / "data"),
        "SM_OUTPUT_DIR": str(job / "output"),
    }
    result = run_train([*TINY_HYPERPARAMETERS, "--work-dir", str(job / "work")], env)
    assert result.returncode == 0, result.stdout + result.stderr
    return {
        "dir": job,
        "model_dir": job / "model",
        "output_dir": job / "output" / "data",
        "log": result.stdout + result.stderr,
        "truncated": victim.name,
    }
