"""The debug job's ``report.html``: one self-contained page a person can read in a minute.

Rule verdicts with advice first, then the plots that explain them: losses, gradient
magnitude per layer over steps, ReLU input variance per layer, system utilisation over
time and where each step's time went. Built from the trace alone, so ``sagedrop rules
evaluate`` can rebuild it offline.
"""

from __future__ import annotations

import html
import math
import statistics

from sagedrop_debugging.rule_base import ISSUES, Verdict
from sagedrop_reports.svg_charts import heatmap, line_chart, page, stacked_bars, table

PHASES = ("data", "forward", "backward", "optimizer", "recording")
MAX_HEATMAP_COLUMNS = 120


def render(
    records: list[dict],
    verdicts: list[Verdict],
    title: str = "debug job",
    sections: list[str] | None = None,
) -> str:
    """The report page; ``sections``: HTML the job adds after its own (the data audit)."""
    by_kind: dict[str, list[dict]] = {}
    for record in records:
        by_kind.setdefault(record.get("kind", ""), []).append(record)
    meta = (by_kind.get("meta") or [{}])[0]
    parts = [f"<h1>sagedrop debug and profiler report: {html.escape(title)}</h1>"]
    parts.append(_summary(meta, by_kind, verdicts))
    parts.append("<h2>Rules</h2>")
    parts.append(_rules_table(verdicts))
    parts.append("<h2>Training</h2><div class='plots'>")
    parts.append(_loss_chart(by_kind))
    parts.append(_accuracy_chart(by_kind))
    parts.append(_relu_chart(by_kind.get("tensors", [])))
    parts.append("</div>")
    parts.append(_gradient_heatmap(by_kind.get("tensors", [])))
    parts.append("<h2>Profile</h2><div class='plots'>")
    parts.append(_system_chart(by_kind.get("system", [])))
    parts.append(_gpu_chart(by_kind.get("system", [])))
    parts.append(_step_breakdown(by_kind.get("step", [])))
    parts.append(_step_durations(by_kind.get("step", [])))
    parts.append("</div>")
    parts.append(_top_operators(by_kind.get("operators", [])))
    parts.extend(sections or [])
    return page(f"sagedrop debug report {title}", parts)


def _summary(meta: dict, by_kind: dict, verdicts: list[Verdict]) -> str:
    found = [v.rule for v in verdicts if v.status == ISSUES]
    steps = by_kind.get("step", [])
    seconds = sum(float(s["total"]) for s in steps)
    init = (by_kind.get("init") or [{}])[0].get("seconds")
    facts = [
        f"{len(steps)} training steps timed ({seconds:.1f}s)",
        f"saved tensors every {meta.get('save_interval', '?')} steps "
        f"(every step for the first {meta.get('dense_steps', '?')})",
        f"{len(meta.get('layers', []))} trainable parameter tensors",
        f"device {meta.get('device', '?')}, {meta.get('cpu_count', '?')} CPUs, "
        f"{meta.get('num_workers', '?')} data-loader workers, batch {meta.get('batch_size', '?')}",
    ]
    if init is not None:
        facts.append(f"first step {float(init):.1f}s after process start")
    unjudged = [v.rule for v in verdicts if not v.judged]
    headline = (
        f"<p class='IssuesFound'>Issues found by: {html.escape(', '.join(found))}.</p>"
        if found
        else "<p>No rule found issues.</p>"
    )
    if unjudged:
        headline += (
            f"<p>Not judged, too little data in this job: {html.escape(', '.join(unjudged))}.</p>"
        )
    return headline + "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>"


def _rules_table(verdicts: list[Verdict]) -> str:
    rows = [
        [
            v.rule,
            v.kind,
            v.status if v.judged else f"{v.status} (not judged: too little data)",
            v.details,
            v.advice if v.status == ISSUES else "",
        ]
        for v in verdicts
    ]
    return table(
        ["rule", "kind", "verdict", "details", "advice"], rows, [v.status for v in verdicts]
    )


def _loss_chart(by_kind: dict) -> str:
    train = [(r["step"], float(r["loss"])) for r in by_kind.get("loss", [])]
    evals = by_kind.get("eval", [])
    valid = [(r["step"], float(r["valid_loss"])) for r in evals]
    epoch_train = [(r["step"], float(r["train_loss"])) for r in evals]
    return line_chart(
        "Training loss per step vs validation loss per epoch",
        {
            "train (step)": _thin(train),
            "train (epoch mean)": epoch_train,
            "validation": valid,
        },
        "step",
        "loss",
        log_y=all(v > 0 for _, v in train + valid if math.isfinite(v)),
        markers=("train (epoch mean)", "validation"),
    )


def _accuracy_chart(by_kind: dict) -> str:
    evals = by_kind.get("eval", [])
    return line_chart(
        "Accuracy per epoch",
        {
            "train": [(r["epoch"], float(r["train_accuracy"])) for r in evals],
            "validation": [(r["epoch"], float(r["valid_accuracy"])) for r in evals],
        },
        "epoch",
        "accuracy",
    )


def _relu_chart(tensors: list[dict]) -> str:
    first = next((r for r in tensors if r.get("relu")), None)
    if first is None:
        return "<p>ReLU input variance: no ReLU inputs were recorded.</p>"
    values = [float(v[1]) for v in first["relu"].values()]
    return line_chart(
        f"ReLU input variance per layer at step {first['step']} (PoorWeightInitialization)",
        {"variance": list(enumerate(values, 1))},
        "ReLU call, input → output",
        "variance",
        log_y=all(v > 0 for v in values),
        markers=("variance",),
    )


def _gradient_heatmap(tensors: list[dict]) -> str:
    saved = [r for r in tensors if r.get("grads")]
    if not saved:
        return "<p>Gradient magnitude: no gradients were recorded.</p>"
    if len(saved) > MAX_HEATMAP_COLUMNS:
        stride = math.ceil(len(saved) / MAX_HEATMAP_COLUMNS)
        saved = saved[::stride]
    layers = list(saved[0]["grads"])
    values = [[float(r["grads"].get(layer, [math.nan])[0]) for r in saved] for layer in layers]
    return heatmap(
        "Mean |gradient| per layer over steps (VanishingGradient, ExplodingTensor)",
        layers,
        [r["step"] for r in saved],
        values,
        "step",
        "mean |gradient|",
    )


def _system_chart(samples: list[dict]) -> str:
    series = {
        "CPU %": [(s["t"], float(s["cpu_total"])) for s in samples],
        "memory %": [(s["t"], float(s["memory_percent"])) for s in samples],
        "IO wait %": [(s["t"], float(s.get("iowait", 0.0))) for s in samples],
    }
    return line_chart("System utilisation over time", series, "seconds since start", "percent")


def _gpu_chart(samples: list[dict]) -> str:
    with_gpu = [s for s in samples if s.get("gpu_memory")]
    if not with_gpu:
        return "<p>GPU utilisation: this job ran without a GPU.</p>"
    series = {
        "GPU %": [
            (s["t"], statistics.fmean(map(float, s["gpu"]))) for s in with_gpu if s.get("gpu")
        ],
        "GPU memory %": [(s["t"], statistics.fmean(map(float, s["gpu_memory"]))) for s in with_gpu],
    }
    return line_chart("GPU utilisation over time", series, "seconds since start", "percent")


def _step_breakdown(steps: list[dict]) -> str:
    epochs = sorted({s["epoch"] for s in steps})
    parts = {
        phase: [
            1000 * statistics.fmean(float(s.get(phase, 0.0)) for s in steps if s["epoch"] == epoch)
            for epoch in epochs
        ]
        for phase in PHASES
    }
    return stacked_bars(
        "Mean step time by phase, per epoch", [f"epoch {e}" for e in epochs], parts, "ms per step"
    )


def _step_durations(steps: list[dict]) -> str:
    return line_chart(
        "Step duration (StepOutlier)",
        {"step time": _thin([(s["step"], 1000 * float(s["total"])) for s in steps])},
        "step",
        "ms",
    )


def _top_operators(operators: list[dict]) -> str:
    if not operators:
        return ""
    rows = [
        [o["name"], o["calls"], f"{o['self_ms']:.2f}", f"{o['total_ms']:.2f}"]
        for o in operators[0]["top"]
    ]
    steps = operators[0].get("steps", "")
    return (
        f"<h2>torch.profiler: top operators (steps {html.escape(str(steps))})</h2>"
        + table(["operator", "calls", "self ms", "total ms"], rows)
        + "<p>The full trace is <code>profiler/trace.json</code> (open it in "
        "chrome://tracing or Perfetto).</p>"
    )


def _thin(points: list[tuple[float, float]], limit: int = 1500) -> list[tuple[float, float]]:
    """Every n-th point of a long series, so the page stays small."""
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return points[::stride]
