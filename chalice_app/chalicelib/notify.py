"""SNS notifications: a subject a person can scan, a readable body, and a JSON part.

Every stage, success or failure, sends one. Email subscribers read the text; programs
read the JSON after the ``---`` line (the same keys for every stage).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

SUBJECT_LIMIT = 100  # SNS: at most 100 printable ASCII characters, no newlines
# SNS refuses a message over 262,144 bytes (UTF-8). Notices stay well below it: the
# reasons are listed in the text and again in the JSON part, so each copy gets < half.
MESSAGE_LIMIT = 262_144
MESSAGE_BUDGET = 200_000
TEXT_FIELD_LIMIT = 4_000  # a summary or failure reason longer than this is cut
JSON_MARKER = "--- sagedrop event (JSON) ---"
# The event being handled, as ``flow.handle`` names it (a digest of its payload): Lambda
# hands a retried or re-delivered event over unchanged, so a notice it causes again gets
# the same id, and a subscriber (the local SNS among them) keeps it once.
DELIVERY: contextvars.ContextVar[str] = contextvars.ContextVar("delivery", default="")
NOTICE_ID_ATTRIBUTE = "sagedrop.notice_id"


# The words a subscriber filters on (the subject is "sagedrop <stage> <status>: <name>").
# "lambda" is the on-failure destination's notice of a handler that failed its retries.
Stage = Literal[
    "dataset", "tuning", "debug-training", "gate", "deploy", "endpoint", "prediction", "lambda"
]
NoticeStatus = Literal[
    "started",
    "failed",
    "error",
    "rejected",
    "blocked",
    "pending-approval",
    "approved",
    "deploying",
    "rollback",
    "kept-serving",
    "ready",
]


@dataclass
class Notice:
    stage: Stage
    status: NoticeStatus
    summary: str
    dataset: str | None = None
    jobs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    decision: str | None = None
    reasons: list[str] = field(default_factory=list)
    failure_reason: str | None = None

    def subject(self) -> str:
        name = (self.dataset or "").rsplit("/", 1)[-1]
        text = f"sagedrop {self.stage} {self.status}" + (f": {name}" if name else "")
        printable = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
        return printable[:SUBJECT_LIMIT]

    def body(self) -> str:
        lines = [self.summary, ""]
        if self.dataset:
            lines.append(f"Dataset: {self.dataset}")
        lines += [f"{kind}: {name}" for kind, name in self.jobs.items()]
        lines += [f"{name}: {_number(value)}" for name, value in self.metrics.items()]
        if self.decision:
            lines.append(f"Decision: {self.decision}")
        lines += [f"  - {reason}" for reason in self.reasons]
        if self.failure_reason:
            lines.append(f"Failure reason: {self.failure_reason}")
        lines += ["", JSON_MARKER, json.dumps(asdict(self), sort_keys=True)]
        return "\n".join(lines)

    def fitted(self, budget: int = MESSAGE_BUDGET) -> Notice:
        """This notice, small enough for SNS: long texts cut, and only as many reasons as
        fit, then "... and N more" (the caller logs the full list)."""
        fitted = replace(
            self,
            summary=_cut(self.summary),
            failure_reason=None if self.failure_reason is None else _cut(self.failure_reason),
            reasons=[_cut(r) for r in self.reasons],
        )
        keep = len(fitted.reasons)
        while len(fitted.body().encode()) > budget and keep > 0:
            keep //= 2
            dropped = len(self.reasons) - keep
            fitted.reasons = [
                *(_cut(r) for r in self.reasons[:keep]),
                f"... and {dropped} more (the full list is in the pipeline's log)",
            ]
        return fitted


def _cut(text: str) -> str:
    if len(text) <= TEXT_FIELD_LIMIT:
        return text
    return text[:TEXT_FIELD_LIMIT] + f"... ({len(text) - TEXT_FIELD_LIMIT} more characters)"


def notice_id(notice: Notice, delivery: str) -> str:
    """Deterministic: the same notice caused by the same delivery has the same id. A
    notice outside any delivery (no event behind it) gets an id of its own, so two that
    read alike are never taken for one."""
    if not delivery:
        return uuid.uuid4().hex
    what = json.dumps([delivery, notice.stage, notice.status, notice.summary], sort_keys=True)
    return hashlib.sha256(what.encode()).hexdigest()[:32]


def publish(sns, topic_arn: str, notice: Notice) -> None:
    """Publish with the notice's id as a message attribute (standard SNS topics deliver
    at least once and never deduplicate: subscribers that must see a notice once keep
    the first of each id, as the local SNS does)."""
    fitted = notice.fitted()
    sns.publish(
        TopicArn=topic_arn,
        Subject=fitted.subject(),
        Message=fitted.body(),
        MessageAttributes={
            NOTICE_ID_ATTRIBUTE: {
                "DataType": "String",
                "StringValue": notice_id(notice, DELIVERY.get()),
            }
        },
    )


def parse_message(message: str) -> dict:
    """The JSON part of a notification body (for tests, the local cloud and subscribers)."""
    return json.loads(message.split(JSON_MARKER, 1)[1])


def _number(value: float) -> str:
    """A count as a count (``3``), a measure to four places (``0.9312``)."""
    return f"{value:.0f}" if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4f}"
