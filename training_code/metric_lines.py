"""Metric log lines in the one format the job's ``MetricDefinitions`` regexes read.

SageMaker (and the local cloud) turn log lines into metrics with regexes declared in
``chalicelib/training_metrics.py``. Every value is printed with ``repr``-style precision
(``1e-07``, ``0.8333333333333334``) so a regex captures the whole number, exponent
included; a non-finite value is printed as ``nan``/``inf``, which the regexes skip rather
than misread.
"""

from __future__ import annotations

import math
import sys


def format_metrics(**values: float | int) -> str:
    parts = []
    for name, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{name}={value}")
        elif math.isfinite(value):
            parts.append(f"{name}={float(value)!r}")
        else:
            parts.append(f"{name}={'nan' if math.isnan(value) else 'inf'}")
    return "metrics: " + " ".join(parts)


def emit_metrics(**values: float | int) -> None:
    print(format_metrics(**values), file=sys.stdout, flush=True)
