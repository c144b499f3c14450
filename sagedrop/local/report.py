"""``sagedrop report``: one self-contained HTML page per pipeline (inline SVG, no scripts).

Trials table, objective per trial, objective against each tuned hyperparameter, the best
job's learning curves, the debug job's rule verdicts and the gate decision, with a link to
the debug job's own report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import zipfile
from pathlib import Path

from PIL import Image

from offline_api import (  # training_code/'s door
    audit_section,
    evaluation_section,
    line_chart,
    page,
    scatter,
    table,
    wanted_thumbnails,
)

THUMBNAIL = 96
MAX_THUMBNAIL_SOURCE = 16 * 1024 * 1024  # the largest image file a thumbnail is made of
MAX_THUMBNAIL_PIXELS = 64_000_000  # the serving limit (image_io.DEFAULT_MAX_PIXELS)


def _dataset_name(pipeline: dict) -> str:
    """The dataset's slug, from its tuning job's name (``sdt-<dataset>-<digest>``)."""
    return pipeline["name"].removeprefix("sdt-").rsplit("-", 1)[0]


def render(pipeline: dict, root: Path | None = None) -> str:
    """``root``: the local cloud's, where the dataset's zip is (its thumbnails)."""
    tuning = pipeline["tuning"]
    trials = pipeline["trials"]
    parts = [
        f"<h1>sagedrop pipeline {html.escape(pipeline['name'])}</h1>",
        f"<p>Dataset <code>{html.escape(str(pipeline['dataset']))}</code>; tuning "
        f"{html.escape(tuning['status'])} ({html.escape(tuning['strategy'])}, "
        f"{tuning['trials_started']}/{tuning['trials_planned']} trials); best "
        f"valid_accuracy {_fmt(tuning['best_objective'])} by "
        f"{html.escape(str(tuning['best_job']))}.</p>",
        "<h2>Trials</h2>",
        # Side by side, curve by curve, against other uploads' trials: MLflow does that.
        "<p>Each trial, and the debug job, is also an MLflow run named after its job, in "
        f"the experiment <code>sagedrop-{html.escape(_dataset_name(pipeline))}</code>: "
        "<code>sagedrop mlflow</code> opens them.</p>",
    ]
    names = sorted({k for t in trials for k in t["hyperparameters"]})
    rows = [
        [
            t["name"],
            t["status"] + (" (early stop)" if t["early_stopped"] else ""),
            *[t["hyperparameters"].get(k, "") for k in names],
            _fmt(t["objective"]),
        ]
        for t in trials
    ]
    parts.append(table(["trial", "status", *names, "valid_accuracy"], rows))
    parts.append('<div class="plots">')
    parts.append(
        scatter(
            "Objective per trial",
            [(i + 1, t["objective"]) for i, t in enumerate(trials)],
            "trial",
            "valid_accuracy",
        )
    )
    for name in names:
        try:
            points = [(float(t["hyperparameters"][name]), t["objective"]) for t in trials
                      if name in t["hyperparameters"]]  # fmt: skip
        except ValueError:
            continue
        parts.append(
            scatter(f"Objective against {name}", points, name, "valid_accuracy", log_x=name == "lr")
        )
    best = next((t for t in trials if t["name"] == tuning["best_job"]), None)
    if best:
        series = best["series"]
        parts.append(
            line_chart(
                f"Learning curves of the best trial {best['name']}",
                {
                    k: _by_epoch(series.get(k, [])[: len(series.get("epoch", []))])
                    for k in ("train_loss", "valid_loss")
                },
                "epoch",
                "loss",
            )
        )
        parts.append(
            line_chart(
                "Validation accuracy of the best trial",
                {
                    "valid_accuracy": _by_epoch(
                        series.get("valid_accuracy", [])[: len(series.get("epoch", []))]
                    )
                },
                "epoch",
                "accuracy",
            )
        )
    parts.append("</div>")
    debug = pipeline["debug_job"]
    parts.append("<h2>Debug and profile job</h2>")
    if debug is None:
        parts.append("<p>Not started.</p>")
    else:
        parts.append(
            f"<p>{html.escape(debug['name'])}: {html.escape(debug['status'])}, test_accuracy "
            f"{_fmt(debug['test_accuracy'])}.</p>"
        )
        if debug.get("failure_reason"):
            parts.append(f"<p>Failure: {html.escape(debug['failure_reason'])}</p>")
        if debug["rules"]:
            parts.append(
                table(
                    ["rule", "verdict", "details", "advice"],
                    [
                        [
                            r["RuleConfigurationName"],
                            r["RuleEvaluationStatus"]
                            + ("" if r.get("Judged", True) else " (not judged)"),
                            r.get("StatusDetails", ""),
                            _advice(r),
                        ]
                        for r in debug["rules"]
                    ],
                    [r["RuleEvaluationStatus"] for r in debug["rules"]],
                )
            )
        if debug.get("report"):
            link = Path(debug["report"]).resolve().as_uri()
            parts.append(f'<p><a href="{html.escape(link)}">Debug and profiler report</a></p>')
        zipped = _local_object(root, pipeline.get("dataset"))
        if debug.get("audit"):
            parts.append(_audit_html(Path(debug["audit"]), zipped))
        if debug.get("evaluation"):
            parts.append(_evaluation_html(Path(debug["evaluation"]), zipped))
    gate = pipeline["gate"]
    parts.append("<h2>Quality gate</h2>")
    if gate is None:
        parts.append("<p>No decision yet.</p>")
    else:
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in gate.get("reasons", []))
        parts.append(
            f"<p><strong>{html.escape(str(gate.get('decision')))}</strong>: "
            f"{html.escape(gate.get('summary', ''))}</p><ul>{reasons}</ul>"
        )
    parts.append(f"<p>Predictions made by this pipeline's model: {pipeline['predictions']}.</p>")
    return page(f"sagedrop {pipeline['name']}", parts)


def render_dataset(dataset: dict, root: Path) -> str:
    """One dataset's model versions side by side: approval, test accuracy, rule verdicts,
    which one serves, and each version's debug/profiler report."""
    serving = dataset["serving_version"]
    parts = [
        f"<h1>sagedrop dataset {html.escape(dataset['name'])}</h1>",
        f"<p>Endpoint <code>{html.escape(dataset['endpoint'])}</code>: "
        f"{html.escape(str(dataset['endpoint_status'] or 'not created'))}"
        + ("" if serving is None else f", serving version {serving}")
        + f". Uploads: {len(dataset['runs'])}; predictions: {dataset['predictions']}.</p>",
        "<h2>Versions</h2>",
    ]
    rows = [
        [
            f"v{v['number']}" + (" (serving)" if v["serving"] else ""),
            v["approval"],
            _fmt(v["test_accuracy"]),
            _fmt(v.get("macro_f1")),
            v.get("worst_class") or "-",
            v.get("data_audit") or "-",
            v["rules"].replace(" ", ", ") or "-",
            v["serving_kind"],
            v["debug_job"],
            str(v["created"])[:19],
            v["why"],
        ]
        for v in dataset["versions"]
    ]
    parts.append(
        table(
            [
                "version",
                "approval",
                "test accuracy",
                "macro-F1",
                "worst class",
                "data audit",
                "rules",
                "serving",
                "debug job",
                "created",
                "why",
            ],
            rows,
            [v["approval"] for v in dataset["versions"]],
        )
    )
    points = [(v["number"], v["test_accuracy"]) for v in dataset["versions"]
              if v["test_accuracy"] is not None]  # fmt: skip
    if points:
        parts.append(scatter("Test accuracy per version", points, "version", "test_accuracy"))
    links = []
    for v in dataset["versions"]:
        report = root / "jobs" / v["debug_job"] / "output" / "data" / "report.html"
        if v["debug_job"] and report.exists():
            links.append(
                f'<li><a href="{html.escape(report.resolve().as_uri())}">v{v["number"]}: '
                f"{html.escape(v['debug_job'])}</a></li>"
            )
    if links:
        parts.append("<h2>Debug and profiler reports</h2><ul>" + "".join(links) + "</ul>")
    shown = next((v for v in dataset["versions"] if v["serving"]), None) or next(
        iter(dataset["versions"]), None
    )
    if shown and shown["debug_job"]:
        evaluation = root / "jobs" / shown["debug_job"] / "output" / "data" / "evaluation.json"
        audit = evaluation.with_name("data_audit.json")
        upload = root / "buckets" / "sagedrop-data" / "datasets" / f"{dataset['name']}.zip"
        if evaluation.exists() or audit.exists():
            parts.append(f"<h2>Version {shown['number']}</h2>")
        if audit.exists():
            parts.append(_audit_html(audit, upload))
        if evaluation.exists():
            parts.append(_evaluation_html(evaluation, upload))
    return page(f"sagedrop {dataset['name']}", parts)


def _evaluation_html(path: Path, zipped: Path | None) -> str:
    """The evaluation section, its confidently wrong images as thumbnails read from the
    dataset's zip (the local bucket's copy)."""
    evaluation = json.loads(path.read_text())
    wanted = [item["file"] for item in evaluation.get("confidently_wrong", [])]
    return evaluation_section(evaluation, _thumbnails(zipped, wanted))


def _audit_html(path: Path, zipped: Path | None) -> str:
    """The data audit's section, its likely label errors as thumbnails from the zip."""
    audit = json.loads(path.read_text())
    return audit_section(audit, _thumbnails(zipped, wanted_thumbnails(audit)))


def _local_object(root: Path | None, uri: str | None) -> Path | None:
    if root is None or not uri or not uri.startswith("s3://"):
        return None
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return root / "buckets" / bucket / key


def _thumbnails(zipped: Path | None, files: list[str]) -> dict[str, str]:
    """Data URIs of ``files`` (as evaluation.json names them) from the dataset's zip; an
    image that cannot be found or read, or whose header declares a canvas too large to
    draw a thumbnail of cheaply (the zip is the uploader's), simply has none."""
    out: dict[str, str] = {}
    if zipped is None or not files or not zipped.is_file():
        return out
    try:
        archive = zipfile.ZipFile(zipped)
    except (OSError, zipfile.BadZipFile):
        return out
    with archive:
        names = archive.namelist()
        for file in files:
            member = next((n for n in names if n == file or n.endswith("/" + file)), None)
            if member is not None and archive.getinfo(member).file_size <= MAX_THUMBNAIL_SOURCE:
                picture = _thumbnail(archive.read(member))
                if picture:
                    out[file] = picture
    return out


def _thumbnail(data: bytes) -> str | None:
    try:
        opened = Image.open(io.BytesIO(data))
        width, height = opened.size
        if width * height > MAX_THUMBNAIL_PIXELS:
            return None
        opened.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG: decode at a reduced scale
        image = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _advice(rule: dict) -> str:
    return rule.get("Advice", "") if rule["RuleEvaluationStatus"] == "IssuesFound" else ""


def _by_epoch(values: list[float]) -> list[tuple[float, float]]:
    return [(epoch, value) for epoch, value in enumerate(values, 1)]
