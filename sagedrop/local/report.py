"""``sagedrop report``: one self-contained HTML page per pipeline (inline SVG, no scripts).

Trials table, objective per trial, objective against each tuned hyperparameter, the best
job's learning curves, the debug job's rule verdicts and the gate decision, with a link to
the debug job's own report.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

WIDTH, HEIGHT, PAD = 460, 260, 44
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def _scale(values: list[float], low_px: float, high_px: float, log: bool = False):
    data = [math.log10(v) if log else v for v in values]
    low, high = min(data), max(data)
    span = (high - low) or 1.0
    return lambda v: low_px + ((math.log10(v) if log else v) - low) / span * (high_px - low_px)


def _frame(title: str, body: str, x_label: str, y_label: str, ticks: str = "") -> str:
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{html.escape(title)}">'
        f'<rect x="{PAD}" y="10" width="{WIDTH - PAD - 10}" height="{HEIGHT - PAD - 10}" '
        'fill="none" stroke="#999"/>'
        f"{body}{ticks}"
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle" font-size="12">'
        f"{html.escape(x_label)}</text>"
        f'<text x="12" y="{HEIGHT / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {HEIGHT / 2})">{html.escape(y_label)}</text>'
        f"</svg><figcaption>{html.escape(title)}</figcaption></figure>"
    )


def _y_ticks(values: list[float]) -> str:
    low, high = min(values), max(values)
    y = _scale([low, high], HEIGHT - PAD, 10)
    return "".join(
        f'<text x="{PAD - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>'
        for v in sorted({low, high})
    )


def line_chart(title: str, series: dict[str, list[float]], x_label: str, y_label: str) -> str:
    series = {k: v for k, v in series.items() if v}
    if not series:
        return f"<p>{html.escape(title)}: no data.</p>"
    every = [v for values in series.values() for v in values if math.isfinite(v)]
    longest = max(len(v) for v in series.values())
    x = _scale([1, max(2, longest)], PAD, WIDTH - 10)
    y = _scale(every or [0, 1], HEIGHT - PAD, 10)
    body = ""
    for n, (name, values) in enumerate(series.items()):
        points = " ".join(
            f"{x(i + 1):.1f},{y(v):.1f}" for i, v in enumerate(values) if math.isfinite(v)
        )
        colour = COLOURS[n % len(COLOURS)]
        body += f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
        body += (
            f'<text x="{PAD + 8}" y="{24 + 14 * n}" font-size="11" fill="{colour}">'
            f"{html.escape(name)}</text>"
        )
    return _frame(title, body, x_label, y_label, _y_ticks(every or [0, 1]))


def scatter(title: str, points: list[tuple[float, float]], x_label: str, y_label: str,
            log_x: bool = False) -> str:  # fmt: skip
    points = [(a, b) for a, b in points if b is not None and math.isfinite(b)]
    if not points:
        return f"<p>{html.escape(title)}: no data.</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x = _scale(xs + xs[:1], PAD + 8, WIDTH - 18, log=log_x and min(xs) > 0)
    y = _scale(ys, HEIGHT - PAD - 8, 18)
    body = "".join(
        f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="5" fill="{COLOURS[0]}" opacity="0.8">'
        f"<title>{a:.4g} → {b:.4f}</title></circle>"
        for a, b in points
    )
    ticks = (
        f'<text x="{PAD + 8}" y="{HEIGHT - PAD + 14}" font-size="10">{min(xs):.3g}</text>'
        f'<text x="{WIDTH - 18}" y="{HEIGHT - PAD + 14}" font-size="10" text-anchor="end">'
        f"{max(xs):.3g}</text>"
    )
    return _frame(title, body, x_label + (" (log)" if log_x else ""), y_label,
                  _y_ticks(ys) + ticks)  # fmt: skip


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
    parts.append(_table(["trial", "status", *names, "valid_accuracy"], rows))
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
                    k: series.get(k, [])[: len(series.get("epoch", []))]
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
                    "valid_accuracy": series.get("valid_accuracy", [])[
                        : len(series.get("epoch", []))
                    ]
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
                _table(
                    ["rule", "verdict", "details"],
                    [
                        [
                            r["RuleConfigurationName"],
                            r["RuleEvaluationStatus"],
                            r.get("StatusDetails", ""),
                        ]
                        for r in debug["rules"]
                    ],
                )
            )
        if debug.get("report"):
            link = Path(debug["report"]).as_uri()
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
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
        ".plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>sagedrop "
        f"{html.escape(pipeline['name'])}</title><style>{style}</style></head><body>"
        + "".join(parts)
        + "</body></html>"
    )


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
