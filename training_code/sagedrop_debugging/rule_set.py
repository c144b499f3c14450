"""All rules of a debug job, configured from the ``rules`` hyperparameter, fed one trace.

The hyperparameter is a JSON object keyed by rule name: ``{"Overfit": {"patience": 3},
"StepOutlier": false, "VanishingGradient": {"threshold": 1e-6, "stop": true}}``. A rule
that is not named runs with SageMaker's defaults; ``false`` turns a rule off.
"""

from __future__ import annotations

import json
import os

from sagedrop_contract import job_contract
from sagedrop_debugging.debug_rules import DEBUG_RULES
from sagedrop_debugging.profiler_rules import PROFILER_RULES
from sagedrop_debugging.rule_base import Rule, RuleConfigError, Verdict

ALL_RULES: dict[str, type[Rule]] = {rule.name: rule for rule in (*DEBUG_RULES, *PROFILER_RULES)}
if tuple(ALL_RULES) != job_contract.RULE_NAMES:
    # The gate reads verdicts by the contract's names: a rule it does not know would be
    # judged and never read. Fail every job at once instead.
    raise ImportError(
        f"rule classes {tuple(ALL_RULES)} differ from the job contract's {job_contract.RULE_NAMES}"
    )
RULES_FILE = "rules.json"
VERDICTS_FILE = "rule_verdicts.json"


def parse_rules_config(text: str | dict | None) -> dict[str, dict | bool]:
    """The ``rules`` hyperparameter, checked: every name known, every value an object or bool."""
    if text in (None, ""):
        return {}
    config = text
    if isinstance(text, str):
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise RuleConfigError(f"the rules hyperparameter is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise RuleConfigError("the rules hyperparameter must be a JSON object keyed by rule name")
    unknown = sorted(set(config) - set(ALL_RULES))
    if unknown:
        raise RuleConfigError(
            f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(ALL_RULES)}"
        )
    for name, value in config.items():
        if not isinstance(value, dict | bool):
            raise RuleConfigError(f"{name} must be an object of parameters, true or false")
    return config


class RuleSet:
    def __init__(self, config: dict[str, dict | bool] | None = None):
        config = parse_rules_config(config or {})
        self.rules: list[Rule] = []
        for name, rule_class in ALL_RULES.items():
            setting = config.get(name, True)
            if setting is False:
                continue
            self.rules.append(rule_class(**(setting if isinstance(setting, dict) else {})))
        self.config = config

    def parameters(self) -> dict[str, dict]:
        return {r.name: {**r.params, "stop": r.stop} for r in self.rules}

    def observe(self, record: dict) -> list[Rule]:
        """Feed one record; returns the rules that found their first issue on it."""
        newly = []
        for rule in self.rules:
            before = rule.issue is None
            rule.observe(record)
            if before and rule.issue is not None:
                newly.append(rule)
        return newly

    def stopping_rule(self) -> Rule | None:
        return next((r for r in self.rules if r.stop and r.issue is not None), None)

    def verdicts(self) -> list[Verdict]:
        return [rule.verdict() for rule in self.rules]


def evaluate_records(records: list[dict], config: dict | None = None) -> list[Verdict]:
    """The offline evaluator: the job's own rule configuration (from the trace's ``meta``
    record) unless ``config`` overrides it, fed the same records in the same order."""
    if config is None:
        meta = next((r for r in records if r.get("kind") == "meta"), {})
        config = meta.get("rules_config", {})
    rules = RuleSet(config)
    for record in records:
        rules.observe(record)
    return rules.verdicts()


def metric_values(verdicts: list[Verdict]) -> dict[str, int]:
    """``rule_<Name>`` = 0 (NoIssuesFound), 1 (IssuesFound), 2 (Error) or 3 (no issues,
    but too little data to judge) for the log lines."""
    return job_contract.rule_metric_values({v.rule: v.code for v in verdicts})


def write_verdicts(output_dir: str, verdicts: list[Verdict]) -> None:
    """``rules.json`` in the shape of DebugRuleEvaluationStatuses, and a fuller file with
    step, tensor and advice for the report and ``sagedrop status``."""
    os.makedirs(output_dir, exist_ok=True)
    for name, rows in (
        (RULES_FILE, [v.as_status() for v in verdicts]),
        (VERDICTS_FILE, [v.as_record() for v in verdicts]),
    ):
        tmp = os.path.join(output_dir, f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, os.path.join(output_dir, name))
