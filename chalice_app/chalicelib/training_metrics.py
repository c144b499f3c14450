"""The one list of ``MetricDefinitions`` for every training job the pipeline starts.

``training_code/metric_lines.py`` prints ``metrics: name=value ...`` lines; these regexes
read them, on SageMaker (CloudWatch metrics, tuning objective) and in the local cloud alike.
A test runs ``train.py`` and applies these very regexes to its real output.
"""

from __future__ import annotations

import re

# A float as Python's repr prints it: sign, digits, optional fraction, optional exponent.
NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

EPOCH_METRICS = ("train_loss", "valid_loss", "valid_accuracy")
FINAL_METRICS = ("test_loss", "test_accuracy")
# The tuning objective is always a validation metric, never a test one.
OBJECTIVE_METRIC = "valid_accuracy"

METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": f"{name}={NUMBER}"}
    for name in ("epoch", *EPOCH_METRICS, *FINAL_METRICS)
]

# The debug job's rules (training_code/rule_set.py; a test keeps the two lists equal).
# Each verdict is a metric line ``rule_<Name>=0|1|2``, so the gate reads it from
# FinalMetricDataList without opening the output archive.
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
RULE_STATUSES = {0: "NoIssuesFound", 1: "IssuesFound", 2: "Error", 3: "NoIssuesFound"}
# Code 3: no issues because the job gave the rule too little data (a short job).
NOT_JUDGED = 3
RULE_METRIC_PREFIX = "rule_"
DEBUG_METRIC_DEFINITIONS: list[dict[str, str]] = [
    *METRIC_DEFINITIONS,
    *(
        {"Name": f"{RULE_METRIC_PREFIX}{name}", "Regex": f"{RULE_METRIC_PREFIX}{name}={NUMBER}"}
        for name in RULE_NAMES
    ),
]


def rule_statuses(final_metrics: dict[str, float]) -> list[dict] | None:
    """``DebugRuleEvaluationStatuses``-shaped entries from a job's final metrics, or None
    when the job reported no rule at all (it was not a debug run)."""
    statuses = []
    for name in RULE_NAMES:
        value = final_metrics.get(f"{RULE_METRIC_PREFIX}{name}")
        if value is None:
            continue
        statuses.append(
            {
                "RuleConfigurationName": name,
                "RuleEvaluationStatus": RULE_STATUSES.get(int(value), "Error"),
                "Judged": int(value) != NOT_JUDGED,
            }
        )
    return statuses or None


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
