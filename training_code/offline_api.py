"""The one door from ``sagedrop`` into the container code: offline rules and reports.

``sagedrop rules evaluate`` judges a debug job's trace again, and ``sagedrop report``
draws its charts, with the very code the job ran; they import this module and nothing
else of ``training_code/`` (a test holds them to it), so the job's internals can move
without breaking the CLI. Standard library only: no torch is needed to read a trace.
"""

from __future__ import annotations

from sagedrop_debugging.debug_trace import read_trace
from sagedrop_debugging.rule_base import ISSUES, Verdict
from sagedrop_debugging.rule_set import evaluate_records, parse_rules_config
from sagedrop_reports.audit_section import audit_section, wanted_thumbnails
from sagedrop_reports.debug_report import render as render_debug_report
from sagedrop_reports.evaluation_charts import evaluation_section
from sagedrop_reports.svg_charts import line_chart, page, scatter, table


def audit_dataset(path: str, workers: int | None = None, progress=None) -> dict:
    """The job's pixel audit of a dataset zip or folder (``data_audit.json``); imported
    on use: it decodes images, so it needs torch and imagehash, which reading a trace
    does not."""
    from sagedrop_training.dataset_check import audit_dataset as audit

    return audit(path, workers, progress)


def imagenet_weight_files() -> list[tuple[str, str]]:
    """(file name, URL) of every offered backbone's ImageNet weights, as torchvision names
    them: what ``sagedrop aws deploy`` uploads for the jobs' weights channel."""
    from sagedrop_serving.model_def import BACKBONES
    from sagedrop_training.imagenet_weights import file_name, url

    return [(file_name(backbone), url(backbone)) for backbone in BACKBONES]


def dataset_error() -> type[Exception]:
    """The error a dataset that cannot be used at all raises (its message lists why)."""
    from sagedrop_training.data_pipeline import DatasetError

    return DatasetError


__all__ = [
    "ISSUES",
    "Verdict",
    "audit_dataset",
    "audit_section",
    "dataset_error",
    "evaluate_records",
    "evaluation_section",
    "imagenet_weight_files",
    "line_chart",
    "page",
    "parse_rules_config",
    "read_trace",
    "render_debug_report",
    "scatter",
    "table",
    "wanted_thumbnails",
]
