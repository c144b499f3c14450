"""The quality gate: may the debug job's model replace what is serving?

Pure: it takes the rule verdicts, the new model's test accuracy and the serving model's,
and returns the decision with every reason, so the notification can say exactly why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chalicelib.job_contract import ERROR, ISSUES

ISSUES_FOUND = ISSUES


@dataclass
class GateDecision:
    deploy: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "deploy" if self.deploy else "blocked"


def quality_gate(
    rules: list[dict] | None,
    test_accuracy: float | None,
    serving_accuracy: float | None,
    blocking_rules: tuple[str, ...],
    tolerance: float,
    min_test_accuracy: float = 0.0,
    artifact_problems: list[str] | None = None,
    expected_rules: tuple[str, ...] | None = None,
) -> GateDecision:
    """``artifact_problems`` are the reasons the model artifact cannot serve its dataset
    (``artifact_check``); any one of them blocks, whatever the accuracy.

    ``expected_rules`` are the rules the job ran (``job_contract.expected_rules``). A job
    that ran rules and reported none, or none of a blocking one, has lost its verdicts
    (a changed log format, a crashed session): the model is not deployed unchecked. A
    blocking rule the job did not run at all blocks too. ``None``: the rules reported are
    the rules that ran (a caller without the job's request).
    """
    ran_known = expected_rules is not None
    if expected_rules is None:
        expected_rules = tuple(r["RuleConfigurationName"] for r in rules or [])
    blocked: list[str] = list(artifact_problems or [])
    passed: list[str] = []
    reported = {r["RuleConfigurationName"] for r in rules or []}
    if rules is None and expected_rules:
        blocked.append(
            f"the debug job ran {len(expected_rules)} rule(s) and reported no verdict (no "
            "rule_<Name> metric line): nothing was checked, so the model is not deployed"
        )
    skipped = [n for n in blocking_rules if n not in expected_rules] if ran_known else []
    if skipped:
        blocked.append(
            f"blocking rule(s) did not run: {', '.join(skipped)} (the job's rules setting "
            "turned them off), so the model is not deployed unchecked"
        )
    missing = [name for name in expected_rules if name in blocking_rules and name not in reported]
    if rules is not None and missing:
        blocked.append(
            f"blocking rule(s) ran but reported no verdict: {', '.join(missing)}; "
            "the model is not deployed unchecked"
        )
    if rules is None:
        if not expected_rules:
            passed.append("no rules ran (the job's rules setting turned them all off)")
    else:
        for rule in rules:
            name, status = rule["RuleConfigurationName"], rule["RuleEvaluationStatus"]
            if status == ISSUES_FOUND and name in blocking_rules:
                detail = rule.get("StatusDetails") or "issues found"
                blocked.append(f"blocking rule {name} found issues: {detail}")
        if not blocked:
            ran = [name for name in blocking_rules if name in reported]
            checked = ", ".join(ran) or "none configured"
            passed.append(f"no blocking rule found issues ({checked})")
            other = [
                r["RuleConfigurationName"]
                for r in rules
                if r["RuleEvaluationStatus"] == ISSUES_FOUND
            ]
            if other:
                passed.append(f"non-blocking rules found issues: {', '.join(other)}")
            unchecked = [
                r["RuleConfigurationName"]
                for r in rules
                if r["RuleEvaluationStatus"] == ERROR
                and r["RuleConfigurationName"] in blocking_rules
            ]
            if unchecked:
                passed.append(
                    f"blocking rules that could not be evaluated (Error): {', '.join(unchecked)}"
                )
            unjudged = [r["RuleConfigurationName"] for r in rules if r.get("Judged") is False]
            if unjudged:
                passed.append(
                    "rules not judged, for want of data (a short job, or no GPU on its host): "
                    + ", ".join(unjudged)
                )
    if test_accuracy is None:
        blocked.append("the job reported no test_accuracy metric")
    else:
        if test_accuracy < min_test_accuracy:
            blocked.append(
                f"test accuracy {test_accuracy:.4f} is below the minimum {min_test_accuracy:.4f}"
            )
        if serving_accuracy is None:
            passed.append("no model is serving yet")
        elif test_accuracy < serving_accuracy - tolerance:
            blocked.append(
                f"test accuracy {test_accuracy:.4f} is worse than the serving model's "
                f"{serving_accuracy:.4f} by more than the tolerance {tolerance:.4f}"
            )
        else:
            passed.append(
                f"test accuracy {test_accuracy:.4f} vs serving {serving_accuracy:.4f} "
                f"(tolerance {tolerance:.4f})"
            )
    return GateDecision(deploy=not blocked, reasons=blocked or passed)
