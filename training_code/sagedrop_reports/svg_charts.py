"""Small inline-SVG charts for self-contained HTML reports (no scripts, no files, no network).

Used by the debug job's ``report.html`` (in the training container, where nothing but the
standard library can be assumed for this) and by ``sagedrop report``.
"""

from __future__ import annotations

import html
import math

WIDTH, HEIGHT, PAD = 460, 260, 44
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
    "vertical-align:top}.plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}"
    ".IssuesFound{color:#b00020;font-weight:bold}.Error{color:#a05a00;font-weight:bold}"
    ".cards{display:flex;flex-wrap:wrap;gap:8px}.card{width:150px;font-size:12px;"
    "border:1px solid #ddd;padding:4px}.card img{image-rendering:pixelated;display:block}"
    ".missing{width:96px;height:96px;background:#eee;font-size:11px}"
    ".scroll{max-height:420px;overflow-y:auto;display:inline-block}"
)


def _scale(values: list[float], low_px: float, high_px: float, log: bool = False):
    data = [math.log10(v) if log else v for v in values]
    low, high = min(data), max(data)
    span = (high - low) or 1.0
    return lambda v: low_px + ((math.log10(v) if log else v) - low) / span * (high_px - low_px)


def _frame(
    title: str,
    body: str,
    x_label: str,
    y_label: str,
    ticks: str = "",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">'
        f'<rect x="{PAD}" y="10" width="{width - PAD - 10}" height="{height - PAD - 10}" '
        'fill="none" stroke="#999"/>'
        f"{body}{ticks}"
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="12">'
        f"{html.escape(x_label)}</text>"
        f'<text x="12" y="{height / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {height / 2})">{html.escape(y_label)}</text>'
        f"</svg><figcaption>{html.escape(title)}</figcaption></figure>"
    )


def _ticks(xs: list[float], ys: list[float], x, y, log_y: bool = False) -> str:
    out = ""
    for v in sorted({min(ys), max(ys)}):
        out += (
            f'<text x="{PAD - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{v:.3g}</text>"
        )
    for v in sorted({min(xs), max(xs)}):
        out += (
            f'<text x="{x(v):.1f}" y="{HEIGHT - PAD + 14}" font-size="10" '
            f'text-anchor="middle">{v:.4g}</text>'
        )
    return out


def image_card(picture: str | None, file: str, lines: list[str]) -> str:
    """One image as a report card: its thumbnail (a data URI) or a placeholder, its file
    name, then ``lines`` (HTML, already escaped by the caller)."""
    image = (f'<img src="{picture}" width="96" height="96" alt="">' if picture
             else '<div class="missing">no thumbnail</div>')  # fmt: skip
    name = html.escape(file.rsplit("/", 1)[-1])
    return (
        f'<div class="card">{image}<div>{name}</div>'
        + "".join(f"<div>{line}</div>" for line in lines)
        + "</div>"
    )


def no_data(title: str) -> str:
    return f"<p>{html.escape(title)}: no data.</p>"


def line_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    x_label: str,
    y_label: str,
    log_y: bool = False,
    markers: tuple[str, ...] = (),
) -> str:
    """Lines through (x, y) points; series named in ``markers`` are drawn as dots."""
    keep = lambda v: math.isfinite(v) and (v > 0 or not log_y)  # noqa: E731
    series = {k: [(a, b) for a, b in v if keep(b)] for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return no_data(title)
    xs = [a for points in series.values() for a, _ in points]
    ys = [b for points in series.values() for _, b in points]
    x = _scale([*xs, min(xs) + 1], PAD + 4, WIDTH - 14)
    y = _scale(ys, HEIGHT - PAD - 4, 14, log=log_y)
    body = ""
    for n, (name, points) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        if name in markers or len(points) == 1:
            body += "".join(
                f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="3.5" fill="{colour}">'
                f"<title>{html.escape(name)} {a:.4g}: {b:.4g}</title></circle>"
                for a, b in points
            )
        else:
            coords = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in points)
            body += (
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{coords}"/>'
            )
        body += (
            f'<text x="{PAD + 8}" y="{24 + 14 * n}" font-size="11" fill="{colour}">'
            f"{html.escape(name)}</text>"
        )
    return _frame(title, body, x_label, y_label + (" (log)" if log_y else ""), _ticks(xs, ys, x, y))


def scatter(
    title: str, points: list[tuple[float, float]], x_label: str, y_label: str, log_x: bool = False
) -> str:
    points = [(a, b) for a, b in points if b is not None and math.isfinite(b)]
    if not points:
        return no_data(title)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    log_x = log_x and min(xs) > 0
    x = _scale(xs + xs[:1], PAD + 8, WIDTH - 18, log=log_x)
    y = _scale(ys, HEIGHT - PAD - 8, 18)
    body = "".join(
        f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="5" fill="{COLOURS[0]}" opacity="0.8">'
        f"<title>{a:.4g} → {b:.4f}</title></circle>"
        for a, b in points
    )
    return _frame(title, body, x_label + (" (log)" if log_x else ""), y_label, _ticks(xs, ys, x, y))


def heatmap(
    title: str,
    rows: list[str],
    columns: list[float],
    values: list[list[float]],
    x_label: str,
    legend: str,
) -> str:
    """One row per layer, one column per step, colour = log10 of the value (dark = small)."""
    cells = [v for row in values for v in row if math.isfinite(v) and v > 0]
    if not rows or not columns or not cells:
        return no_data(title)
    low, high = math.log10(min(cells)), math.log10(max(cells))
    span = (high - low) or 1.0
    row_h = max(3.0, min(14.0, 420 / len(rows)))
    width, height = 760, int(row_h * len(rows)) + PAD + 24
    col_w = (width - PAD - 10) / len(columns)
    body = ""
    for r, (name, row) in enumerate(zip(rows, values, strict=True)):
        for c, value in enumerate(row):
            if math.isfinite(value) and value > 0:
                level = (math.log10(value) - low) / span
                colour = f"rgb({int(255 * level)},{int(200 * level)},{int(90 + 100 * (1 - level))})"
            else:
                colour = "#d00" if not math.isfinite(value) else "#000"
            body += (
                f'<rect x="{PAD + c * col_w:.1f}" y="{10 + r * row_h:.1f}" '
                f'width="{col_w + 0.5:.1f}" '
                f'height="{row_h + 0.5:.1f}" fill="{colour}"><title>{html.escape(name)} step '
                f"{columns[c]:g}: {value:.3g}</title></rect>"
            )
    ticks = (
        f'<text x="{PAD}" y="{height - PAD + 14}" font-size="10">{columns[0]:g}</text>'
        f'<text x="{width - 10}" y="{height - PAD + 14}" font-size="10" text-anchor="end">'
        f"{columns[-1]:g}</text>"
        f'<text x="{PAD + 4}" y="{height - PAD + 26}" font-size="10">{html.escape(legend)}: '
        f"dark {10**low:.2g} … light {10**high:.2g}; red = NaN/inf, black = 0</text>"
    )
    return _frame(title, body, x_label, "layers (input → output)", ticks, width, height)


def stacked_bars(title: str, labels: list[str], parts: dict[str, list[float]], x_label: str) -> str:
    """Horizontal bars, one per label, split into the named parts (e.g. step phases)."""
    totals = [sum(values) for values in zip(*parts.values(), strict=True)] if parts else []
    if not labels or not totals or max(totals) <= 0:
        return no_data(title)
    bar_h = max(6.0, min(22.0, 180 / len(labels)))
    height = int(bar_h * 1.3 * len(labels)) + PAD + 40
    scale = (WIDTH - PAD - 20) / max(totals)
    body = ""
    for i, label in enumerate(labels):
        left, top = float(PAD), 30 + i * bar_h * 1.3
        for n, (name, values) in enumerate(parts.items()):
            width = values[i] * scale
            body += (
                f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{bar_h:.1f}" '
                f'fill="{COLOURS[n % len(COLOURS)]}"><title>{html.escape(label)} '
                f"{html.escape(name)}: {values[i]:.4g}</title></rect>"
            )
            left += width
        body += (
            f'<text x="{PAD - 4}" y="{top + bar_h * 0.8:.1f}" font-size="10" '
            f'text-anchor="end">{html.escape(label)}</text>'
        )
    legend = "".join(
        f'<text x="{PAD + 8 + 80 * n}" y="22" font-size="11" fill="{COLOURS[n % len(COLOURS)]}">'
        f"{html.escape(name)}</text>"
        for n, name in enumerate(parts)
    )
    ticks = (
        f'<text x="{WIDTH - 10}" y="{height - PAD + 14}" font-size="10" text-anchor="end">'
        f"{max(totals):.3g}</text>"
    )
    return _frame(title, legend + body, x_label, "", ticks, WIDTH, height)


def table(header: list[str], rows: list[list], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = ""
    for i, row in enumerate(rows):
        css = f' class="{html.escape(row_classes[i])}"' if row_classes else ""
        body += f"<tr{css}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, parts: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{STYLE}</style></head><body>" + "".join(parts) + "</body></html>"
    )
