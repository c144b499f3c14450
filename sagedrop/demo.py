"""``sagedrop demo``: the whole pipeline on the local cloud, on the digits sample.

Writes the sample dataset with a ``sagedrop.json`` sized for two CPU cores, starts the
local cloud on a fresh root, drops the zip (tuning with several trials, the debug job,
the quality gate, the endpoint), then drops one held-out test image per class and waits
for the predictions. Everything goes through the same handlers, requests and training
and inference code as on AWS.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from chalicelib import naming
from sagedrop.local import overview
from sagedrop.local.cloud import DATA_BUCKET, INFERENCE_BUCKET, LocalCloud
from sagedrop.local.report import render
from sagedrop.sample_data import pack_dataset, write_sample_dataset

# Digits are 8x8 scans: ImageNet features do not help at this size, and random init keeps
# the demo offline and deterministic. Four trials, two at a time, fit two cores.
DEMO_CONFIG = {
    "strategy": "Bayesian",
    "max_jobs": 4,
    "max_parallel_jobs": 2,
    "epochs": 6,
    "early_stopping": "Auto",
    "ranges": {
        "lr": {"type": "continuous", "min": 0.01, "max": 0.1, "scaling": "Logarithmic"},
        "momentum": {"type": "continuous", "min": 0.8, "max": 0.9, "scaling": "Linear"},
        "batch-size": {"type": "categorical", "values": [32, 64]},
    },
    "hyperparameters": {
        "image-size": 32,
        "augment": "crop",
        "pretrained": "false",
        "seed": 0,
    },
}
PIPELINE_TIMEOUT = 900
PREDICTION_TIMEOUT = 60


def run_demo(
    root: str | os.PathLike,
    epochs: int | None = None,
    say: Callable[[str], None] = print,
    config: dict | None = None,
    per_class: int | None = None,
    classes: int = 10,
) -> int:
    root = Path(root).resolve()
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    config = json.loads(json.dumps(config or DEMO_CONFIG))
    if epochs:
        config["epochs"] = epochs
    folder = write_sample_dataset(
        root / "sample", per_class=per_class, classes=classes, config=config
    )
    dataset_zip = pack_dataset(folder, root / "sample" / "digits.zip")
    say(f"sagedrop demo in {root}: dataset {dataset_zip.name}, settings {json.dumps(config)}")
    cloud = LocalCloud(root, say=lambda line: say(f"  {line}"))
    cloud.start()
    try:
        return _run(cloud, dataset_zip, folder, started, say)
    finally:
        cloud.stop()


def _run(cloud: LocalCloud, dataset_zip: Path, folder: Path, started: float, say) -> int:
    cloud.s3.put_object(
        Bucket=DATA_BUCKET, Key=f"datasets/{dataset_zip.name}", Body=dataset_zip.read_bytes()
    )
    outcome = _wait_for_pipeline(cloud)
    runs = overview.runs(cloud.root, cloud.state)
    if outcome != "deployed" or not runs:
        say(f"demo FAILED: the pipeline ended {outcome!r}; see {cloud.topic_file}")
        return 1
    run = runs[-1]
    held_out = _one_test_image_per_class(folder)
    expected = {}
    for label, image in held_out:
        key = f"{naming.IMAGES_PREFIX}{naming.pipeline_name(dataset_zip.name)}/{label}-{image.name}"
        expected[key] = label
        cloud.s3.put_object(Bucket=INFERENCE_BUCKET, Key=key, Body=image.read_bytes())
    bucket = cloud.root / "buckets" / INFERENCE_BUCKET
    cloud.wait_until(
        lambda: all((bucket / f"{k}.json").exists() for k in expected), PREDICTION_TIMEOUT
    )
    report_path = cloud.root / "reports" / f"{run['name']}.html"
    report_path.parent.mkdir(exist_ok=True)
    run = overview.runs(cloud.root, cloud.state)[-1]
    report_path.write_text(render(run, cloud.root))
    return _summary(cloud, run, expected, bucket, report_path, started, say)


def _wait_for_pipeline(cloud: LocalCloud) -> str:
    """'deployed', or why the pipeline stopped (rejected, failed, blocked)."""
    outcome: list[str] = []

    def finished() -> bool:
        for notice in overview.notifications(cloud.root):
            event = notice.get("event", {})
            if event.get("stage") == "endpoint" and event.get("status") == "ready":
                outcome.append("deployed")
            elif event.get("status") in ("failed", "rejected", "blocked"):
                outcome.append(f"{event.get('stage')} {event.get('status')}")
        return bool(outcome)

    cloud.wait_until(finished, PIPELINE_TIMEOUT, interval=0.5)
    return outcome[0] if outcome else "timed out"


def _one_test_image_per_class(folder: Path) -> list[tuple[str, Path]]:
    picks = []
    for class_dir in sorted((folder / "test").iterdir()):
        images = sorted(class_dir.glob("*.jpg"))
        if images:
            picks.append((class_dir.name.split(".", 1)[-1], images[0]))
    return picks


def _summary(cloud, run, expected, bucket, report_path, started, say) -> int:
    tuning = run["tuning"]
    say("")
    say(f"Tuning job {run['name']}: {tuning['status']}, {tuning['trials_started']} trials")
    rows = [
        (
            t["name"],
            t["status"] + (" (early stop)" if t["early_stopped"] else ""),
            " ".join(f"{k}={_short(v)}" for k, v in sorted(t["hyperparameters"].items())),
            "-" if t["objective"] is None else f"{t['objective']:.4f}",
        )
        for t in run["trials"]
    ]
    _print_table(("trial", "status", "hyperparameters", "valid_accuracy"), rows, say)
    debug = run["debug_job"] or {}
    gate = run["gate"] or {}
    say("")
    say(f"Best trial:      {tuning['best_job']} (valid_accuracy {tuning['best_objective']:.4f})")
    say(f"Debug job:       {debug.get('name')}: {debug.get('status')}, "
        f"test_accuracy {debug.get('test_accuracy') or 0:.4f}")  # fmt: skip
    rules = debug.get("rules") or []
    flagged = [r for r in rules if r["RuleEvaluationStatus"] != "NoIssuesFound"]
    say(f"Rules:           {len(rules) - len(flagged)} of {len(rules)} NoIssuesFound")
    for rule in flagged:
        say(f"                 {rule['RuleConfigurationName']} {rule['RuleEvaluationStatus']}: "
            f"{rule.get('StatusDetails', '')}")  # fmt: skip
    if debug.get("report"):
        say(f"Debug report:    {debug['report']}")
    say(f"Quality gate:    {gate.get('decision')}: {gate.get('summary', '')}")
    for dataset in overview.datasets(
        cloud.root, cloud.state, [run], naming.endpoint_prefix(os.environ)
    ):
        for version in dataset["versions"]:
            serving = " (serving)" if version["serving"] else ""
            say(f"Model Registry:  {dataset['endpoint']} version {version['number']} "
                f"{version['approval']}{serving}")  # fmt: skip
            if version.get("macro_f1") is not None:
                say(f"Evaluation:      macro-F1 {version['macro_f1']:.4f}; worst class "
                    f"{version.get('worst_class') or '-'}")  # fmt: skip
            if version.get("data_audit"):
                say(f"Data audit:      {version['data_audit']}")
    endpoint = overview.endpoints(cloud.state)[0]
    say(f"Endpoint:        {endpoint['name']} {endpoint['status']} (127.0.0.1:{endpoint['port']})")
    say("")
    rows, correct = [], 0
    for key, label in expected.items():
        path = bucket / f"{key}.json"
        if not path.exists():
            rows.append((key, label, "(no prediction)", "-"))
            continue
        top = json.loads(path.read_text())["predictions"][0]
        correct += top["label"] == label
        rows.append((key, label, top["label"], f"{top['probability']:.3f}"))
    _print_table(("image", "true label", "predicted", "probability"), rows, say)
    say("")
    say(f"Held-out images: {correct}/{len(expected)} correct")
    say(f"Predictions:     {bucket / 'images'}/<image>.json")
    say(f"Report:          {report_path}")
    say(f"Notifications:   {cloud.topic_file}")
    say(f"MLflow runs:     sagedrop mlflow --root {cloud.root}  (then http://127.0.0.1:5000)")
    say(f"Took {time.perf_counter() - started:.0f} s")
    return 0 if len(rows) == len(expected) and all(r[2] != "(no prediction)" for r in rows) else 1


def _short(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def _print_table(header: tuple, rows: list[tuple], say: Callable) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    say("  ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)))
    for row in rows:
        say("  ".join(f"{c!s:<{w}}" for c, w in zip(row, widths, strict=True)))
