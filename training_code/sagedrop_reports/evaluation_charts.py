"""What a model gets wrong, drawn for a page: ``evaluation.json`` as HTML and inline SVG.

Standard library only (no scripts, no plotting library), so ``sagedrop report`` draws it
with the code the job ships. The confusion matrix stays readable at 133 classes: beyond
``MAX_MATRIX_CLASSES`` it shows the classes most involved in mistakes, most confused
first, and says how many it left out.
"""

from __future__ import annotations

import html

from sagedrop_reports.svg_charts import image_card

MAX_MATRIX_CLASSES = 40
CELL = 14


def evaluation_section(evaluation: dict, thumbnails: dict[str, str] | None = None) -> str:
    """The whole "what the model gets wrong" section; ``thumbnails`` maps an image's file
    (as ``evaluation.json`` names it) to a data URI."""
    overall = evaluation.get("overall")
    if not overall:
        reason = evaluation.get("problem", "no evaluation")
        return f"<h2>What the model gets wrong</h2><p>{html.escape(reason)}</p>"
    intervals = evaluation.get("intervals", {})
    parts = ["<h2>What the model gets wrong (test split)</h2>", _headline(evaluation, intervals)]
    parts.append("<h3>Per class, worst first</h3>" + _per_class_table(evaluation))
    parts.append('<div class="plots">')
    parts.append(confusion_heatmap(evaluation))
    parts.append(reliability_diagram(evaluation.get("calibration", {})))
    parts.append("</div>")
    if evaluation.get("most_confused"):
        rows = "".join(
            f"<tr><td>{html.escape(p['true'])}</td><td>{html.escape(p['predicted'])}</td>"
            f"<td>{p['count']}</td></tr>"
            for p in evaluation["most_confused"]
        )
        parts.append("<h3>Most confused pairs</h3><table><tr><th>true</th><th>taken for</th>"
                     f"<th>images</th></tr>{rows}</table>")  # fmt: skip
    parts.append(_confidently_wrong(evaluation.get("confidently_wrong", []), thumbnails or {}))
    return "\n".join(parts)


def _headline(evaluation: dict, intervals: dict) -> str:
    overall = evaluation["overall"]

    def with_interval(name: str) -> str:
        value = overall[name]
        bounds = intervals.get(name)
        if not bounds:
            return f"{value:.4f}"
        return f"{value:.4f} (95% interval {bounds['low']:.4f}-{bounds['high']:.4f})"

    worst = evaluation.get("worst_class") or {}
    untested = evaluation.get("untested_classes") or []
    lines = [
        f"{evaluation['item_count']} test images, {len(evaluation['classes'])} classes",
        f"accuracy {with_interval('accuracy')}; top-5 {overall['top5_accuracy']:.4f}",
        f"macro-F1 {with_interval('macro_f1')}; balanced accuracy "
        f"{with_interval('balanced_accuracy')}",
        f"best constant answer ('{html.escape(overall['best_constant_class'])}' for every "
        f"image) {overall['accuracy_best_constant_classifier']:.4f}",
        f"expected calibration error {evaluation.get('calibration', {}).get('ece', 0):.4f}",
    ]
    if worst:
        lines.append(f"worst class {html.escape(worst['label'])}: recall {worst['recall']:.4f} "
                     f"on {worst['support']} images")  # fmt: skip
    if untested:
        lines.append("untested (no readable test image): " + html.escape(", ".join(untested)))
    return "<ul>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"


def _per_class_table(evaluation: dict) -> str:
    tested = [c for c in evaluation.get("per_class", []) if c["recall"] is not None]
    tested.sort(key=lambda c: (c["recall"], c["f1"], c["label"]))
    rows = "".join(
        f'<tr class="{"IssuesFound" if c["recall"] < 0.5 else ""}"><td>{html.escape(c["label"])}'
        f"</td><td>{c['support']}</td><td>{c['precision']:.3f}</td><td>{c['recall']:.3f}</td>"
        f"<td>{c['f1']:.3f}</td></tr>"
        for c in tested
    )
    return ('<div class="scroll"><table><tr><th>class</th><th>test images</th><th>precision</th>'
            f"<th>recall</th><th>F1</th></tr>{rows}</table></div>")  # fmt: skip


def _matrix_classes(evaluation: dict) -> tuple[list[int], int]:
    """Which classes the heat map shows (in order), and how many it leaves out."""
    matrix = evaluation["confusion_matrix"]
    count = len(matrix)
    if count <= MAX_MATRIX_CLASSES:
        return list(range(count)), 0
    errors = [sum(matrix[i]) - matrix[i][i] + sum(row[i] for row in matrix) - matrix[i][i]
              for i in range(count)]  # fmt: skip
    chosen = sorted(range(count), key=lambda i: (-errors[i], i))[:MAX_MATRIX_CLASSES]
    return chosen, count - len(chosen)


def confusion_heatmap(evaluation: dict) -> str:
    """Rows: true class; columns: predicted; each cell shaded by the share of its row."""
    labels, matrix = evaluation["classes"], evaluation["confusion_matrix"]
    shown, left_out = _matrix_classes(evaluation)
    cell = max(CELL, min(32, 480 // len(shown)))
    margin = 8 + 6 * max(len(labels[i][:24]) for i in shown)  # room for the longest name
    size = cell * len(shown)
    cells = []
    for r, t in enumerate(shown):
        total = sum(matrix[t]) or 1
        for c, p in enumerate(shown):
            count = matrix[t][p]
            share = count / total
            colour = _shade(share, right=t == p)
            cells.append(
                f'<rect x="{margin + c * cell}" y="{margin + r * cell}" width="{cell}" '
                f'height="{cell}" fill="{colour}" stroke="#eee"><title>'
                f"{html.escape(labels[t])} taken for {html.escape(labels[p])}: {count}"
                "</title></rect>"
            )
    names = []
    for k, i in enumerate(shown):
        name = html.escape(labels[i][:24])
        y = margin + k * cell + cell / 2 + 3
        names.append(f'<text x="{margin - 4}" y="{y}" text-anchor="end" font-size="10">'
                     f"{name}</text>")  # fmt: skip
        x = margin + k * cell + cell / 2 + 3
        names.append(f'<text x="{x}" y="{margin - 4}" font-size="10" '
                     f'transform="rotate(-60 {x} {margin - 4})">{name}</text>')  # fmt: skip
    note = (
        f"the {len(shown)} classes most involved in mistakes, most confused first; "
        f"{left_out} more left out"
        if left_out
        else "every class"
    )
    width = height = margin + size + 10
    return (
        f"<figure><figcaption>Confusion matrix (rows: true class, columns: predicted; "
        f"shaded by the share of the row; {note})</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(names)}{"".join(cells)}</svg></figure>'
    )


def _shade(share: float, right: bool) -> str:
    """Blue for the diagonal (right answers), red off it; darker for a larger share."""
    if right:
        return f"rgb({255 - round(200 * share)},{255 - round(120 * share)},255)"
    fade = 255 - round(220 * share)
    return f"rgb(255,{fade},{fade})"


def reliability_diagram(calibration: dict) -> str:
    """Accuracy against confidence per bin; the diagonal is a calibrated model."""
    side, pad = 240, 30
    bars = []
    for b in calibration.get("bins", []):
        if not b["count"]:
            continue
        x = pad + b["lower"] * side
        width = (b["upper"] - b["lower"]) * side
        height = b["accuracy"] * side
        bars.append(
            f'<rect x="{x:.1f}" y="{pad + side - height:.1f}" width="{width - 1:.1f}" '
            f'height="{height:.1f}" fill="#4a7bd0"><title>confidence {b["confidence"]:.3f}, '
            f"accuracy {b['accuracy']:.3f}, {b['count']} images</title></rect>"
        )
    ece = calibration.get("ece", 0.0)
    return (
        f"<figure><figcaption>Reliability diagram (ECE {ece:.4f}, "
        f"{len(calibration.get('bins', []))} bins)</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{side + 2 * pad}" '
        f'height="{side + 2 * pad}">'
        f'<rect x="{pad}" y="{pad}" width="{side}" height="{side}" fill="none" stroke="#999"/>'
        f"{''.join(bars)}"
        f'<line x1="{pad}" y1="{pad + side}" x2="{pad + side}" y2="{pad}" stroke="#c33" '
        f'stroke-dasharray="4"/>'
        f'<text x="{pad + side / 2}" y="{2 * pad + side - 6}" text-anchor="middle" '
        f'font-size="11">confidence</text>'
        f'<text x="12" y="{pad + side / 2}" font-size="11" '
        f'transform="rotate(-90 12 {pad + side / 2})">accuracy</text></svg></figure>'
    )


def _confidently_wrong(wrong: list[dict], thumbnails: dict[str, str]) -> str:
    if not wrong:
        return "<h3>Most confidently wrong</h3><p>No test image was answered wrongly.</p>"
    cards = [
        image_card(thumbnails.get(item["file"]), item["file"], [
            f"true <b>{html.escape(item['true'])}</b>",
            f"answered <b>{html.escape(item['predicted'])}</b> ({item['probability']:.3f})",
        ])
        for item in wrong
    ]  # fmt: skip
    return ("<h3>Most confidently wrong test images</h3>"
            f'<div class="cards">{"".join(cards)}</div>')  # fmt: skip
