"""``sagedrop demo``: sample data → ``train.py`` under the container contract → predictions.

The training job runs exactly as SageMaker would run it: a subprocess of
``training_code/train.py`` with ``SM_CHANNEL_TRAINING``, ``SM_MODEL_DIR`` and
``SM_OUTPUT_DATA_DIR`` set and hyperparameters as ``--name value``; the metrics are read
from its log with the pipeline's own ``MetricDefinitions``; the predictions come from the
artifact's own ``code/inference.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from chalicelib.datasets import inspect_path
from chalicelib.training_metrics import METRIC_DEFINITIONS, parse_metric_lines
from sagedrop.artifacts import load_inference_code
from sagedrop.paths import TRAIN_SCRIPT, TRAINING_CODE
from sagedrop.sample_data import pack_dataset, write_sample_dataset

# Digits are 8x8 scans: ImageNet features do not help at this size, and random init
# keeps the demo offline and deterministic.
DEMO_HYPERPARAMETERS = {
    "epochs": "8",
    "batch-size": "32",
    "lr": "0.05",
    "momentum": "0.9",
    "image-size": "32",
    "augment": "crop",
    "pretrained": "false",
    "seed": "0",
}


def run_demo(root: str | os.PathLike, epochs: int | None = None, say: Callable = print) -> int:
    root = Path(root).resolve()  # the job runs in training_code/: paths must be absolute
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    say(f"sagedrop demo in {root}")
    folder = write_sample_dataset(root / "data")
    dataset_zip = pack_dataset(folder, root / "data" / "digits.zip")
    report = inspect_path(str(dataset_zip))
    images = report.summary()["images"]
    say(f"1/3 dataset {dataset_zip}: {len(report.classes)} classes, {images} images")

    job = root / "jobs" / "demo-training"
    channel = job / "input" / "data" / "training"
    channel.mkdir(parents=True)
    shutil.copy(dataset_zip, channel / dataset_zip.name)
    hyperparameters = dict(DEMO_HYPERPARAMETERS)
    if epochs:
        hyperparameters["epochs"] = str(epochs)
    say(
        f"2/3 training job {job.name}: {' '.join(f'--{k} {v}' for k, v in hyperparameters.items())}"
    )
    log_text = _run_training_job(job, hyperparameters, say)
    if log_text is None:
        say(f"training failed; the log is {job / 'training.log'}")
        return 1
    metrics = parse_metric_lines(log_text, METRIC_DEFINITIONS)

    say("3/3 predictions for held-out test images through the artifact's code/inference.py")
    inference = load_inference_code(job / "model" / "code")
    model = inference.model_fn(str(job / "model"))
    rows, correct = [], 0
    for class_folder in report.classes:
        name = report.files["test"][class_folder][0]
        image = _read_member(dataset_zip, name)
        body, _ = inference.output_fn(
            inference.predict_fn(inference.input_fn(image, "image/jpeg"), model), "application/json"
        )
        top = json.loads(body)["predictions"][0]
        truth = class_folder.split(".", 1)[-1]
        correct += top["label"] == truth
        rows.append((Path(name).name, truth, top["label"], f"{top['probability']:.3f}"))
    _print_table(("image", "truth", "predicted", "probability"), rows, say)
    test_accuracy = metrics.get("test_accuracy", [float("nan")])[-1]
    valid_accuracy = max(metrics.get("valid_accuracy", [float("nan")]))
    say("")
    _print_table(
        ("summary", "value"),
        [
            ("best valid_accuracy", f"{valid_accuracy:.4f}"),
            ("test_accuracy", f"{test_accuracy:.4f}"),
            ("sample predictions correct", f"{correct}/{len(rows)}"),
            ("model artifact", str(job / "model")),
            ("training log", str(job / "training.log")),
            ("training summary", str(job / "output" / "data" / "training_summary.json")),
            ("wall time", f"{time.perf_counter() - started:.0f} s"),
        ],
        say,
    )
    return 0


def _run_training_job(job: Path, hyperparameters: dict[str, str], say: Callable) -> str | None:
    """Run train.py like SageMaker's container does; stream its log; None on failure."""
    env = dict(os.environ)
    env.update(
        SM_CHANNEL_TRAINING=str(job / "input" / "data" / "training"),
        SM_MODEL_DIR=str(job / "model"),
        SM_OUTPUT_DATA_DIR=str(job / "output" / "data"),
        SM_OUTPUT_DIR=str(job / "output"),
        PYTHONUNBUFFERED="1",
    )
    for key in ("model", "output/data"):
        (job / key).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(TRAIN_SCRIPT)]
    for name, value in hyperparameters.items():
        command += [f"--{name}", value]
    lines = []
    with open(job / "training.log", "w") as log_file:
        process = subprocess.Popen(
            command,
            cwd=TRAINING_CODE,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            lines.append(line)
            if line.startswith("metrics:") or " WARNING " in line or " ERROR " in line:
                say("    " + line.rstrip())
        code = process.wait()
    return "".join(lines) if code == 0 else None


def _read_member(dataset_zip: Path, name: str) -> bytes:
    with zipfile.ZipFile(dataset_zip) as archive:
        return archive.read(name)


def _print_table(header: tuple, rows: list[tuple], say: Callable) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    line = "  ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True))
    say(line.rstrip())
    say("  ".join("-" * w for w in widths))
    for row in rows:
        say("  ".join(f"{c!s:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip())
