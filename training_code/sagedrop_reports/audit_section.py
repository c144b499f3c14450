"""The data audit as a report section: what the data hides, before what the model gets wrong.

Drawn from ``data_audit.json`` alone (``thumbnails`` maps an image's file, as the audit
names it, to a data URI where the caller could read the dataset), so the job's report,
the local pipeline report and the dataset page show the same numbers.
"""

from __future__ import annotations

import base64
import html
import io
import os

from sagedrop_reports.svg_charts import image_card, table

THUMBNAIL = 96


def audit_section(audit: dict, thumbnails: dict[str, str] | None = None) -> str:
    thumbnails = thumbnails or {}
    headline = audit.get("headline", {})
    images = audit.get("images", {})
    leaked, left_out = headline.get("leaked", {}), headline.get("left_out", {})
    parts = ["<h2>Data audit</h2>"]
    rows = [
        ["images (train / valid / test)",
         " / ".join(str(images.get(s, 0)) for s in ("train", "valid", "test"))],
        ["test images duplicating a training image",
         f"{leaked.get('test', 0)} ({headline.get('leaked_test_fraction', 0):.1%}); "
         f"{left_out.get('test', 0)} left out of evaluation"],
        ["valid images duplicating a training image",
         f"{leaked.get('valid', 0)}; {left_out.get('valid', 0)} left out"],
        ["exact / near duplicates", f"{headline.get('exact_duplicates', 0)} / "
         f"{headline.get('near_duplicates', 0)}"],
        ["label conflicts (one image, two labels)", str(headline.get("label_conflicts", 0))],
        ["unreadable images", str(headline.get("unreadable", 0))],
        ["imbalance (largest / smallest class, train)",
         "-" if headline.get("imbalance_train") is None else f"{headline['imbalance_train']:g}:1"],
    ]  # fmt: skip
    parts.append(table(["", ""], rows))
    sentences = audit.get("sentences", [])
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>")
    else:
        parts.append("<p>No duplicates, leakage or unreadable images were found.</p>")
    method = audit.get("method", {})
    if method:
        parts.append(
            "<p class=\"note\">" + "; ".join(
                f"{html.escape(k)}: {html.escape(str(v))}" for k, v in method.items()
            ) + "</p>"
        )  # fmt: skip
    groups = audit.get("groups", [])
    if groups:
        parts.append("<h3>Duplicate groups</h3>")
        parts.append(table(
            ["kind", "images", "splits", "labels", "files"],
            [[g["kind"], g["images"], ", ".join(g["splits"]), ", ".join(g["labels"]),
              ", ".join(g["files"][:4]) + (" ..." if len(g["files"]) > 4 else "")]
             for g in groups[:20]],
        ))  # fmt: skip
    parts.append(_label_errors(audit.get("label_errors", {}), thumbnails))
    return "".join(parts)


def _label_errors(found: dict, thumbnails: dict[str, str]) -> str:
    title = "<h3>Likely label errors</h3>"
    if found.get("status") != "found":
        reason = found.get("reason", "not looked for")
        return f"{title}<p>Not looked for: {html.escape(reason)}.</p>"
    candidates = found.get("candidates", [])
    if not candidates:
        return (
            f"{title}<p>None: every training image's label agrees with what a model that "
            "never saw it predicts.</p>"
        )
    cards = [
        image_card(thumbnails.get(item["file"]), item["file"], [
            f"filed as <b>{html.escape(item['given'])}</b>",
            f"looks like <b>{html.escape(item['suggested'])}</b> ({item['confidence']:.2f})",
        ])
        for item in candidates
    ]  # fmt: skip
    return (
        f"{title}<p>{found.get('count', len(candidates))} training image(s) whose label the "
        f"out-of-sample prediction contradicts ({html.escape(found.get('method', ''))}); the "
        f"top {len(candidates)} below. Nothing was removed or relabelled.</p>"
        f'<div class="cards">{"".join(cards)}</div>'
    )


def wanted_thumbnails(audit: dict) -> list[str]:
    """The files the section shows as pictures: label-error candidates."""
    return [c["file"] for c in audit.get("label_errors", {}).get("candidates", [])]


def thumbnails_from_folder(root: str, files: list[str], decode) -> dict[str, str]:
    """Data URIs of ``files`` (named as the audit names them) under ``root``, decoded by
    ``decode(path, draft_size)`` (the job's ``image_io.decode_image``); one that cannot be
    read has none."""
    out = {}
    for file in files:
        try:
            image = decode(os.path.join(root, file), THUMBNAIL)
        except (ValueError, OSError):
            continue
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        out[file] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return out
