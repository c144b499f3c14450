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
from sagedrop_reports.debug_report import render as render_debug_report
from sagedrop_reports.evaluation_charts import evaluation_section
from sagedrop_reports.svg_charts import line_chart, page, scatter, table

__all__ = [
    "ISSUES",
    "Verdict",
    "evaluate_records",
    "evaluation_section",
    "line_chart",
    "page",
    "parse_rules_config",
    "read_trace",
    "render_debug_report",
    "scatter",
    "table",
]
