"""What the local SageMaker's parts share: the record kinds, the event names, and one
``Context`` with the state, the buckets, the event outlet and the background threads."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sagedrop.local.s3 import LocalS3
from sagedrop.local.state import State

TRAINING, TUNING, MODEL, CONFIG, ENDPOINT, TAGS = (
    "training-job",
    "tuning-job",
    "model",
    "endpoint-config",
    "endpoint",
    "tags",
)
TERMINAL = ("Completed", "Failed", "Stopped")
TRAINING_EVENT = "SageMaker Training Job State Change"
TUNING_EVENT = "SageMaker HyperParameter Tuning Job State Change"
ENDPOINT_EVENT = "SageMaker Endpoint State Change"
Emit = Callable[..., None]  # (detail_type, detail, resources, event_id=None)


@dataclass
class Context:
    """The one local SageMaker's surroundings, handed to each of its parts."""

    root: Path
    state: State
    s3: LocalS3
    emit: Emit
    say: Callable[[str], None]
    cpus: int
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def background(self, target: Callable, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def tag(self, resource_arn: str, tags: list[dict]) -> None:
        if tags:
            self.state.put(TAGS, resource_arn, {"Tags": tags})

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout=timeout)


def max_training_jobs(cpus: int) -> int:
    """How many training processes run at once: SAGEDROP_MAX_TRAINING_JOBS, or half the
    CPUs (at least 2)."""
    configured = os.environ.get("SAGEDROP_MAX_TRAINING_JOBS", "")
    if configured:
        try:
            value = int(configured)
        except ValueError:
            raise ValueError(
                f"SAGEDROP_MAX_TRAINING_JOBS must be a whole number, not {configured!r}"
            ) from None
        if value < 1:
            raise ValueError("SAGEDROP_MAX_TRAINING_JOBS must be at least 1")
        return value
    return max(2, cpus // 2)
