"""What every debug and profiler rule shares: parameters, verdicts and SageMaker's words.

A rule is fed the trace's records one at a time, in order (``observe``), and can be asked
for its verdict at any moment. The training job and ``sagedrop rules evaluate`` drive the
very same objects with the very same records, so their verdicts cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

# SageMaker's status words and the codes the ``rule_<Name>=`` metric lines carry to the
# gate are the job contract's (one module for both sides).
from sagedrop_contract.job_contract import ERROR, ISSUES, NO_ISSUES, NOT_JUDGED, STATUS_CODES

__all__ = ["ERROR", "ISSUES", "NO_ISSUES", "Rule", "RuleConfigError", "Verdict"]


class RuleConfigError(ValueError):
    """A rule's configuration (the ``rules`` hyperparameter) is not usable."""


@dataclass
class Verdict:
    rule: str
    status: str
    details: str
    step: int | None = None
    tensor: str | None = None
    advice: str = ""
    kind: str = "debug"
    # False: "no issues" only because the job gave the rule too little data to judge.
    judged: bool = True

    @property
    def code(self) -> int:
        """The ``rule_<Name>=`` metric value."""
        if self.status == NO_ISSUES and not self.judged:
            return NOT_JUDGED
        return STATUS_CODES[self.status]

    def as_status(self) -> dict:
        """One entry of ``DebugRuleEvaluationStatuses`` / ``ProfilerRuleEvaluationStatuses``."""
        return {
            "RuleConfigurationName": self.rule,
            "RuleEvaluationStatus": self.status,
            "StatusDetails": self.details,
        }

    def as_record(self) -> dict:
        return {
            **self.as_status(),
            "Kind": self.kind,
            "Step": self.step,
            "Tensor": self.tensor,
            "Advice": self.advice,
            "Judged": self.judged,
        }


class Rule:
    """Base class. Subclasses set ``name``, ``defaults``, ``advice`` and ``on_<kind>`` methods.

    ``stop`` (debug rules, default false) asks the training job to stop when the rule
    finds issues, like Debugger's StopTraining action. Profiler rules judge the whole run
    at its end, so they refuse it rather than pretend.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "debug"
    defaults: ClassVar[dict[str, object]] = {}
    # What to do about an issue: the class's, or one a rule words for what it measured.
    advice: str = ""

    def __init__(self, **params):
        self.stop = _as_bool(params.pop("stop", False), f"{self.name}.stop")
        if self.stop and self.kind != "debug":
            raise RuleConfigError(
                f"{self.name} is judged when the job ends, so it cannot stop it; "
                "only the debug rules take stop"
            )
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise RuleConfigError(
                f"{self.name} has no parameter {', '.join(unknown)}; "
                f"it takes {', '.join(self.defaults) or 'none'} and stop"
            )
        self.params = {k: _coerce(k, v, self.defaults[k], self.name) for k, v in params.items()}
        # Parameters the user set are honoured as given; defaults may scale to the job.
        self.explicit = frozenset(self.params)
        self.params = {**self.defaults, **self.params}
        self.issue: Verdict | None = None
        self.occurrences = 0
        self.failure: str | None = None

    def observe(self, record: dict) -> None:
        if self.failure is not None:
            return
        handler = getattr(self, f"on_{record.get('kind')}", None)
        if handler is None:
            return
        try:
            handler(record)
        except Exception as exc:  # a rule's own bug must not take the training job down
            self.failure = f"{type(exc).__name__}: {exc}"

    def found(self, step: int | None, tensor: str | None, details: str) -> None:
        """The rule's condition is met; the first occurrence is the one reported."""
        self.occurrences += 1
        if self.issue is None:
            self.issue = Verdict(self.name, ISSUES, details, step, tensor, self.advice, self.kind)

    def verdict(self) -> Verdict:
        if self.failure is not None:
            return Verdict(
                self.name, ERROR, f"rule evaluation failed: {self.failure}", kind=self.kind
            )
        if self.issue is not None:
            issue = self.issue
            more = f" (condition met {self.occurrences} times)" if self.occurrences > 1 else ""
            return Verdict(
                self.name,
                ISSUES,
                issue.details + more,
                issue.step,
                issue.tensor,
                issue.advice,
                self.kind,
            )
        return Verdict(
            self.name, NO_ISSUES, self.quiet_details(), kind=self.kind, judged=self.had_data()
        )

    def quiet_details(self) -> str:
        """What was checked, so "no issues" also says how much evidence there was."""
        return "no issues found"

    def had_data(self) -> bool:
        """Whether the job gave this rule enough to judge; rules that can go without data
        say so, and their "no issues" is then reported as not judged."""
        return True


def finite(value) -> float:
    """A trace value as a float (the trace writes NaN and infinity as strings)."""
    return float(value)


def is_finite(value) -> bool:
    return math.isfinite(finite(value))


def _as_bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise RuleConfigError(f"{where} must be true or false, got {value!r}")


def _coerce(key: str, value, default, rule: str):
    """Parameters arrive as JSON (or strings, as Debugger's RuleParameters were)."""
    try:
        if isinstance(default, bool):
            return _as_bool(value, f"{rule}.{key}")
        if isinstance(default, int):
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise RuleConfigError(
            f"{rule}.{key} must be a {type(default).__name__}, got {value!r}"
        ) from None
