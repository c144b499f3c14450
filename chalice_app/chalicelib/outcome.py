"""How a pipeline step ends: one value that says what happened, published in one place.

A step returns an ``Outcome`` (its result word, the notices it owes, what it counts) and
``concluded`` logs each notice with every reason, publishes it to the topic and adds the
metrics. No step publishes or counts by itself, so no branch can end without its notice
or count one twice. A step that must be retried raises ``RetryLater`` with what it did
meanwhile (an image's "throttled" file is counted before Lambda tries again).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from chalicelib.clients import client
from chalicelib.notify import Notice, publish
from chalicelib.settings import Settings

logger = Logger(service="sagedrop")
metrics = Metrics(namespace="sagedrop", service="sagedrop")
# Every word a step may end with: what the handler returns, and what the tests assert.
Result = Literal[
    "started",
    "ignored",
    "duplicate",
    "failed",
    "failed-before",
    "rejected",
    "blocked",
    "pending-approval",
    "approved",
    "none-approved",
    "kept-serving",
    "creating",
    "updating",
    "unchanged",
    "waiting",
    "ready",
    "predicted",
    "error",
    "throttled",
]
RESULTS: frozenset[Result] = frozenset(get_args(Result))
# Results that owe nobody a notice: nothing happened (an event not ours, a duplicate, an
# endpoint already right or busy), or the answer is a file next to the image.
QUIET: frozenset[Result] = frozenset(
    {
        "ignored",
        "duplicate",
        "none-approved",
        "unchanged",
        "waiting",
        "failed-before",
        "predicted",
        "error",
        "throttled",
    }
)


@dataclass
class Outcome:
    result: Result
    notices: list[Notice] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)
    milliseconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"{self.result!r} is not a step's result ({sorted(RESULTS)})")
        if self.result not in QUIET and not self.notices:
            raise ValueError(f"a step that ends {self.result!r} owes a notice and gave none")

    def followed_by(self, later: Outcome) -> Outcome:
        """This step's outcome, then another's it led to (its result is this one's)."""
        return Outcome(
            self.result,
            [*self.notices, *later.notices],
            [*self.counts, *later.counts],
            {**self.milliseconds, **later.milliseconds},
        )


class RetryLater(Exception):
    """Raise ``cause`` for Lambda's retry once ``outcome`` has been concluded."""

    def __init__(self, cause: BaseException, outcome: Outcome):
        super().__init__(str(cause))
        self.cause = cause
        self.outcome = outcome


def conclude(settings: Settings, outcome: Outcome) -> Result:
    """Log and publish every notice, add every metric; the step's result word."""
    for notice in outcome.notices:
        logger.info(
            notice.summary,
            extra={"stage": notice.stage, "status": notice.status, "reasons": notice.reasons},
        )
        if settings.topic_arn:
            publish(client("sns"), settings.topic_arn, notice)
    for name in outcome.counts:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    for name, value in outcome.milliseconds.items():
        metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=value)
    return outcome.result


def concluded(step: Callable[..., Outcome]) -> Callable[..., str]:
    """A step that returns an ``Outcome``, as a function that concludes it.

    The step's ``settings`` argument may be left out (or None): the settings come from
    the environment then, as in a Lambda.
    """
    signature = inspect.signature(step)

    @functools.wraps(step)
    def run(*args, **kwargs) -> Result:
        bound = signature.bind_partial(*args, **kwargs)
        settings = bound.arguments.get("settings") or Settings.from_env()
        bound.arguments["settings"] = settings
        try:
            outcome = step(*bound.args, **bound.kwargs)
        except RetryLater as retry:
            conclude(settings, retry.outcome)
            raise retry.cause from None
        return conclude(settings, outcome)

    return run
