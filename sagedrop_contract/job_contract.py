"""The contract between a training job and the pipeline: what the job prints, what reads it.

One file for everything both sides must agree on: the metric names and the tuning
objective, the metric-line format and the ``MetricDefinitions`` regexes that read it, the
rule names with their verdict codes and the ``rule_`` prefix, and the hyperparameter
prefixes SageMaker's toolkits own. If any of these drifted, the gate would find no rule
results and deploy unchecked; with one file they cannot drift.

Standard library only: the Lambda package and ``sourcedir.tar.gz`` both carry this
package, so the container prints exactly what the Lambda parses, and the local cloud reads
metric lines with ``parse_metric_lines``, the same regexes SageMaker gets.
"""

from __future__ import annotations

import math
import re
import sys

# --- metrics ------------------------------------------------------------------------------
EPOCH_METRICS = ("train_loss", "valid_loss", "valid_accuracy")
FINAL_METRICS = ("test_loss", "test_accuracy")
# The tuning objective is always a validation metric, never a test one.
OBJECTIVE_METRIC = "valid_accuracy"
METRIC_LINE_PREFIX = "metrics: "
# A float as Python's repr prints it: sign, digits, optional fraction, optional exponent.
NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

# --- experiment tracking ---------------------------------------------------------------------
# A job's MLflow run is found by this tag, whoever made it: the job itself (network
# isolation off) or the pipeline, from the job's output.
RUN_TAG_JOB = "sagedrop.job"
RUN_TAG_LOGGED_BY = "sagedrop.logged_by"
# The tuning job's run, which each trial's own run nests under (MLflow's parent tag).
PARENT_RUN_VARIABLE = "SAGEDROP_MLFLOW_PARENT_RUN_ID"
PARENT_RUN_TAG = "mlflow.parentRunId"

# --- rules ----------------------------------------------------------------------------------
# The debug job's rules, in report order (training_code/rule_set.py checks its classes
# against these at import, so a rule added there and not here fails every job at once).
DEBUG_RULES = (
    "VanishingGradient",
    "ExplodingTensor",
    "Overfit",
    "Overtraining",
    "LossNotDecreasing",
    "PoorWeightInitialization",
)
PROFILER_RULES = (
    "CPUBottleneck",
    "IOBottleneck",
    "Dataloader",
    "LowGPUUtilization",
    "GPUMemoryIncrease",
    "BatchSize",
    "StepOutlier",
    "MaxInitializationTime",
)
RULE_NAMES = (*DEBUG_RULES, *PROFILER_RULES)
# SageMaker's RuleEvaluationStatus words.
NO_ISSUES = "NoIssuesFound"
ISSUES = "IssuesFound"
ERROR = "Error"
# Each verdict is a metric line ``rule_<Name>=<code>``, so the gate reads it from
# FinalMetricDataList without opening the output archive. Code 3: no issues, but only
# because the job gave the rule too little data to judge (a short job).
STATUS_CODES = {NO_ISSUES: 0, ISSUES: 1, ERROR: 2}
NOT_JUDGED = 3
RULE_STATUSES = {0: NO_ISSUES, 1: ISSUES, 2: ERROR, NOT_JUDGED: NO_ISSUES}
RULE_METRIC_PREFIX = "rule_"

# --- hyperparameters --------------------------------------------------------------------------
# Keys SageMaker's toolkits and tuner own; only the request builder sets them.
FRAMEWORK_PREFIXES = ("sagemaker_", "sagemaker-", "_tuning_")


def _definition(name: str) -> dict[str, str]:
    return {"Name": name, "Regex": f"{name}={NUMBER}"}


METRIC_DEFINITIONS: list[dict[str, str]] = [
    _definition(name) for name in ("epoch", *EPOCH_METRICS, *FINAL_METRICS)
]
DEBUG_METRIC_DEFINITIONS: list[dict[str, str]] = [
    *METRIC_DEFINITIONS,
    *(_definition(f"{RULE_METRIC_PREFIX}{name}") for name in RULE_NAMES),
]


# --- the job's side ---------------------------------------------------------------------------
def format_metrics(**values: float | int) -> str:
    """One metric line. Floats keep ``repr`` precision (``1e-07``) so a regex captures the
    whole number, exponent included; a non-finite value is printed ``nan``/``inf``, which
    the regexes skip rather than misread."""
    parts = []
    for name, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{name}={value}")
        elif math.isfinite(value):
            parts.append(f"{name}={float(value)!r}")
        else:
            parts.append(f"{name}={'nan' if math.isnan(value) else 'inf'}")
    return METRIC_LINE_PREFIX + " ".join(parts)


def emit_metrics(**values: float | int) -> None:
    print(format_metrics(**values), file=sys.stdout, flush=True)


def rule_metric_values(codes: dict[str, int]) -> dict[str, int]:
    """``{rule name: verdict code}`` as the ``rule_<Name>`` metrics a job prints."""
    return {f"{RULE_METRIC_PREFIX}{name}": code for name, code in codes.items()}


# --- the pipeline's side --------------------------------------------------------------------------
def parse_metric_lines(text: str, definitions: list[dict[str, str]] | None = None) -> dict:
    """Every value each regex finds, in log order: ``{name: [v1, v2, ...]}``.

    What SageMaker does with a job's logs: each definition's first group, as a float.
    """
    found: dict[str, list[float]] = {}
    for definition in definitions or METRIC_DEFINITIONS:
        pattern = re.compile(definition["Regex"])
        values = [float(m.group(1)) for m in pattern.finditer(text)]
        if values:
            found[definition["Name"]] = values
    return found


def rule_statuses(final_metrics: dict[str, float]) -> list[dict] | None:
    """``DebugRuleEvaluationStatuses``-shaped entries from a job's final metrics, or None
    when the job reported no rule at all."""
    statuses = []
    for name in RULE_NAMES:
        value = final_metrics.get(f"{RULE_METRIC_PREFIX}{name}")
        if value is None:
            continue
        statuses.append(
            {
                "RuleConfigurationName": name,
                "RuleEvaluationStatus": RULE_STATUSES.get(int(value), ERROR),
                "Judged": int(value) != NOT_JUDGED,
            }
        )
    return statuses or None


def expected_rules(rules_config: dict) -> tuple[str, ...]:
    """The rules a debug job runs, and so must report: all of them but those its ``rules``
    hyperparameter turns off with ``false``."""
    return tuple(name for name in RULE_NAMES if rules_config.get(name, True) is not False)
