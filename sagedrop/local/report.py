"""``sagedrop report``: one self-contained HTML page per pipeline (inline SVG, no scripts).

Trials table, objective per trial, objective against each tuned hyperparameter, the best
job's learning curves, the debug job's rule verdicts and the gate decision, with a link to
the debug job's own report.
"""

from __future__ import annotations

import html
from pathlib import Path

from sagedrop.paths import ensure_training_code_importable

ensure_training_code_importable()
from offline_api import line_chart, page, scatter, table  # noqa: E402 - training_code/'s door


def render(pipeline: dict) -> str:
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
        + f". Uploads: {len(dataset['pipelines'])}; predictions: {dataset['predictions']}.</p>",
        "<h2>Versions</h2>",
    ]
    rows = [
        [
            f"v{v['number']}" + (" (serving)" if v["serving"] else ""),
            v["approval"],
            _fmt(v["test_accuracy"]),
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
    return page(f"sagedrop {dataset['name']}", parts)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _advice(rule: dict) -> str:
    return rule.get("Advice", "") if rule["RuleEvaluationStatus"] == "IssuesFound" else ""


def _by_epoch(values: list[float]) -> list[tuple[float, float]]:
    return [(epoch, value) for epoch, value in enumerate(values, 1)]
