"""The quality gate: may the debug job's model replace what is serving?

Pure: it takes the rule verdicts, the new model's test accuracy and the serving model's,
and returns the decision with every reason, so the notification can say exactly why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from sagedrop_contract.job_contract import ERROR, ISSUES


@dataclass
class GateDecision:
    deploy: bool
    reasons: list[str] = field(default_factory=list)
    rule: str = ""  # what decided the comparison with the serving version

    @property
    def verdict(self) -> Literal["deploy", "blocked"]:
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
    evidence: Evidence | None = None,
) -> GateDecision:
    """``artifact_problems`` are the reasons the model artifact cannot serve its dataset
    (``artifact_check``); any one of them blocks, whatever the accuracy.

    ``expected_rules`` are the rules the job ran (``job_contract.expected_rules``). A job
    that ran rules and reported none, or none of a blocking one, has lost its verdicts
    (a changed log format, a crashed session): the model is not deployed unchecked. A
    blocking rule the job did not run at all blocks too. ``None``: the rules reported are
    the rules that ran (a caller without the job's request).

    ``evidence`` is what ``judge_evaluation`` concluded from the job's ``evaluation.json``.
    Where it compared the new version with the serving one on the same images, that
    comparison decides; otherwise the tolerance rule on the two test accuracies does (each
    measured on its own test set), and the reasons say which rule decided.
    """
    ran_known = expected_rules is not None
    if expected_rules is None:
        expected_rules = tuple(r["RuleConfigurationName"] for r in rules or [])
    blocked: list[str] = list(artifact_problems or [])
    passed: list[str] = []
    decided_by = ""
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
            if status == ISSUES and name in blocking_rules:
                detail = rule.get("StatusDetails") or "issues found"
                blocked.append(f"blocking rule {name} found issues: {detail}")
        if not blocked:
            ran = [name for name in blocking_rules if name in reported]
            checked = ", ".join(ran) or "none configured"
            passed.append(f"no blocking rule found issues ({checked})")
            other = [
                r["RuleConfigurationName"] for r in rules if r["RuleEvaluationStatus"] == ISSUES
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
        if evidence is not None and evidence.compared:
            decided_by = evidence.rule
        elif serving_accuracy is None:
            passed.append("no model is serving yet")
            decided_by = "first version (nothing to compare with)"
        elif test_accuracy < serving_accuracy - tolerance:
            blocked.append(
                f"test accuracy {test_accuracy:.4f} is worse than the serving model's "
                f"{serving_accuracy:.4f} by more than the tolerance {tolerance:.4f} (the "
                "tolerance rule: the two were measured on different test sets)"
            )
            decided_by = "tolerance"
        else:
            passed.append(
                f"test accuracy {test_accuracy:.4f} vs serving {serving_accuracy:.4f} "
                f"(tolerance {tolerance:.4f}; the tolerance rule: measured on different test "
                "sets)"
            )
            decided_by = "tolerance"
    if evidence is not None:
        blocked += evidence.blocked
        passed += evidence.passed
    decided = f"decided by: {decided_by}" if decided_by else ""
    reasons = (blocked or passed) + (evidence.notes if evidence is not None else [])
    return GateDecision(deploy=not blocked, reasons=reasons, rule=decided)


# --- what the evaluation says (evaluation.json, written by the job) --------------------------
SIGNIFICANCE = 0.05  # McNemar's exact test, one-sided: is the new version worse?


def mcnemar_worse_p(new_only_right: int, serving_only_right: int) -> float:
    """One-sided exact McNemar p-value for "the new version is worse": the chance of at
    least ``serving_only_right`` of the discordant images going the serving version's way
    if both were equally good (a fair coin per discordant image)."""
    n = new_only_right + serving_only_right
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(serving_only_right, n + 1))
    return tail / 2**n


@dataclass
class Evidence:
    """What the gate concludes from ``evaluation.json``: reasons that block, reasons that
    pass, and the rule that decided the comparison with the serving version."""

    blocked: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said whatever the decision
    compared: bool = False  # a paired comparison decided (the tolerance rule is not used)
    rule: str = ""


def judge_evaluation(
    evaluation: dict | None, min_class_recall: float, stale_comparison: str = ""
) -> Evidence:
    """No version that a constant answer beats, none below the per-class floor, and none
    significantly worse than the serving version on the same images. ``stale_comparison``:
    why the version the job was compared with is not the one serving now ("" when it is)."""
    evidence = Evidence()
    if not evaluation or not evaluation.get("overall"):
        why = (evaluation or {}).get("problem") or "the job wrote no readable evaluation.json"
        evidence.blocked.append(
            f"{why}: what the model gets right and wrong per class is unknown, so it is not "
            "deployed unchecked"
        )
        return evidence
    _against_constant_answers(evaluation, evidence)
    _against_the_class_floor(evaluation, min_class_recall, evidence)
    _against_the_serving_version(evaluation, stale_comparison, evidence)
    return evidence


def _against_constant_answers(evaluation: dict, evidence: Evidence) -> None:
    overall, intervals = evaluation["overall"], evaluation.get("intervals", {})
    accuracy, constant = overall["accuracy"], overall["accuracy_best_constant_classifier"]
    low = intervals.get("accuracy", {}).get("low", accuracy)
    high = intervals.get("accuracy", {}).get("high", accuracy)
    if not low > constant:
        evidence.blocked.append(
            f"test accuracy {accuracy:.4f} (95% interval {low:.4f}-{high:.4f}) is not above "
            f"{constant:.4f}, what answering '{overall['best_constant_class']}' for every "
            "image scores: a constant answer does as well as this model"
        )
    balanced = overall["balanced_accuracy"]
    chance = overall["chance_balanced_accuracy"]
    balanced_low = intervals.get("balanced_accuracy", {}).get("low", balanced)
    if not balanced_low > chance:
        evidence.blocked.append(
            f"balanced accuracy {balanced:.4f} (95% interval from {balanced_low:.4f}) is not "
            f"above chance ({chance:.4f} for {round(1 / chance)} tested classes)"
        )
    if low > constant and balanced_low > chance:
        evidence.passed.append(
            f"test accuracy {accuracy:.4f} (95% interval {low:.4f}-{high:.4f}) beats the best "
            f"constant answer ({constant:.4f}); balanced accuracy {balanced:.4f} is above "
            f"chance ({chance:.4f})"
        )


def _against_the_class_floor(evaluation: dict, floor: float, evidence: Evidence) -> None:
    worst = evaluation.get("worst_class") or {}
    if floor <= 0:
        if worst:
            evidence.passed.append(
                f"worst class {worst['label']} (recall {worst['recall']:.4f}; no per-class "
                "floor set)"
            )
        return
    below = [
        c
        for c in evaluation.get("per_class", [])
        if c["recall"] is not None and c["recall"] < floor
    ]
    if below:
        below.sort(key=lambda c: c["recall"])
        taken_for: dict[str, str] = {}
        for pair in evaluation.get("most_confused", []):  # most confused first
            taken_for.setdefault(pair["true"], pair["predicted"])

        def named_class(c: dict) -> str:
            confused = taken_for.get(c["label"])
            also = f", most often taken for {confused}" if confused else ""
            return f"{c['label']} ({c['recall']:.4f}{also})"

        named = ", ".join(named_class(c) for c in below[:10])
        more = f" and {len(below) - 10} more" if len(below) > 10 else ""
        evidence.blocked.append(
            f"{len(below)} class(es) have test recall below the floor {floor:.4f} "
            f"(GATE_MIN_CLASS_RECALL): {named}{more}"
        )
    else:
        evidence.passed.append(
            f"every tested class has recall of at least {floor:.4f} (worst: {worst['label']}, "
            f"{worst['recall']:.4f})"
        )


def _against_the_serving_version(evaluation: dict, stale: str, evidence: Evidence) -> None:
    paired = evaluation.get("paired") or {}
    if paired.get("status") != "compared":
        evidence.rule = "tolerance"
        if paired.get("reason") and paired["reason"] != "no serving version was handed over":
            evidence.notes.append(f"no paired comparison: {paired['reason']}")
        return
    if stale:
        evidence.rule = "tolerance"
        evidence.notes.append(f"no paired comparison: {stale}")
        return
    new_only, old_only = paired["new_only_right"], paired["serving_only_right"]
    p = mcnemar_worse_p(new_only, old_only)
    evidence.compared, evidence.rule = True, "paired (McNemar's exact test)"
    said = (
        f"on the same {paired['images']} test images, accuracy {paired['new_accuracy']:.4f} "
        f"vs the serving version's {paired['serving_accuracy']:.4f}; {new_only} image(s) "
        f"only the new version gets right, {old_only} only the serving one; one-sided "
        f"McNemar exact p = {p:.4g}"
    )
    if p < SIGNIFICANCE:
        evidence.blocked.append(f"significantly worse than the serving version: {said}")
    elif new_only > old_only and mcnemar_worse_p(old_only, new_only) < SIGNIFICANCE:
        evidence.passed.append(f"significantly better than the serving version: {said}")
    else:
        evidence.passed.append(f"no significant difference from the serving version: {said}")


def judge_audit(audit: dict | None, max_leaked_fraction: float | None, evidence: Evidence) -> None:
    """The data audit (``job_reports.checked_audit``): its numbers are said whatever the
    decision; a test split that had more than ``max_leaked_fraction`` of its images
    duplicating training images *before* they were left out blocks (None: off). Counted
    before removal, so a dataset's ``"leakage": "keep"`` cannot lift the operator's floor."""
    if audit is None:
        if max_leaked_fraction is not None:
            evidence.blocked.append(
                "the job wrote no readable data_audit.json: how much of the test split "
                "duplicates the training images is unknown (GATE_MAX_LEAKED_FRACTION is set)"
            )
        return
    leaked, total = audit["leaked"]["test"], audit["test_images"]
    fraction = audit["leaked_test_fraction"]
    if max_leaked_fraction is not None:
        said = (
            f"{leaked} of {total} test image(s) ({fraction:.2%}) duplicated a training image "
            f"before any was left out"
        )
        if fraction > max_leaked_fraction:
            evidence.blocked.append(
                f"{said}: over GATE_MAX_LEAKED_FRACTION {max_leaked_fraction:.2%}, the test "
                "split does not measure what the model has not seen"
            )
        else:
            evidence.passed.append(f"{said}, within GATE_MAX_LEAKED_FRACTION")
    if leaked and audit.get("policy") == "keep":
        evidence.notes.append(
            f'{leaked} leaked test image(s) were kept in evaluation ("leakage": "keep"): its '
            "numbers are optimistic"
        )
