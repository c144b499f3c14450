"""The local event bus: routes S3 and EventBridge events to the Chalice handlers.

Routing reads ``app.event_sources``, the very configuration ``chalice deploy`` turns into
S3 notifications and EventBridge rules, and matches with EventBridge's semantics for the
operators patterns use (exact values, ``prefix``, ``suffix``, ``anything-but``,
``exists``, ``equals-ignore-case``, ``numeric``). Events come from the SQLite outbox and
are delivered at least once: claimed, handled, then marked delivered when every matching
handler has finished, so a crash in between hands the event out again at the next start
(handlers are idempotent). A handler that raises is retried twice, as Lambda retries
asynchronous invocations, before the failure is recorded.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from urllib.parse import unquote_plus

from chalice.app import CloudWatchEventConfig, S3EventConfig

from sagedrop.local.state import State

log = logging.getLogger("sagedrop.local.bus")
RETRY_DELAYS = (0.5, 2.0)  # Lambda retries a failed asynchronous invocation twice
# Delivered events are kept this long (``SAGEDROP_EVENT_RETENTION_DAYS``; status and the
# tests read them), then pruned, at start and hourly, so the state does not grow without
# end with every image.
RETENTION_DAYS = 7.0
PRUNE_EVERY_SECONDS = 3600.0


def retention_seconds() -> float:
    text = os.environ.get("SAGEDROP_EVENT_RETENTION_DAYS", "")
    try:
        days = float(text) if text else RETENTION_DAYS
    except ValueError:
        raise ValueError(
            f"SAGEDROP_EVENT_RETENTION_DAYS must be a number of days, not {text!r}"
        ) from None
    if not days >= 0:
        raise ValueError("SAGEDROP_EVENT_RETENTION_DAYS must be 0 or more")
    return days * 86400


# EventBridge pattern matching -------------------------------------------------------------
def matches(pattern: dict, event: dict) -> bool:
    """Does ``event`` match the EventBridge ``pattern``? All keys must match (AND); the
    values listed for one key are alternatives (OR)."""
    for key, expected in pattern.items():
        if key == "$or":
            if not any(matches(option, event) for option in expected):
                return False
            continue
        present = isinstance(event, dict) and key in event
        value = event.get(key) if present else None
        if isinstance(expected, dict):
            if not present or not isinstance(value, dict) or not matches(expected, value):
                return False
            continue
        if not _field_matches(expected, present, value):
            return False
    return True


def _field_matches(alternatives: list, present: bool, value) -> bool:
    values = value if isinstance(value, list) else [value]
    for alternative in alternatives:
        if isinstance(alternative, dict):
            if _operator_matches(alternative, present, values):
                return True
        elif present and any(_same(alternative, v) for v in values):
            return True
    return False


def _same(expected, actual) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(expected) == float(actual)
    return expected == actual


def _operator_matches(operator: dict, present: bool, values: list) -> bool:
    (name, argument), *_ = operator.items()
    if name == "exists":
        return present is bool(argument)
    if not present:
        return False
    strings = [v for v in values if isinstance(v, str)]
    if name == "prefix":
        if isinstance(argument, dict):  # {"prefix": {"equals-ignore-case": "..."}}
            wanted = argument["equals-ignore-case"].lower()
            return any(s.lower().startswith(wanted) for s in strings)
        return any(s.startswith(argument) for s in strings)
    if name == "suffix":
        if isinstance(argument, dict):
            wanted = argument["equals-ignore-case"].lower()
            return any(s.lower().endswith(wanted) for s in strings)
        return any(s.endswith(argument) for s in strings)
    if name == "equals-ignore-case":
        return any(s.lower() == argument.lower() for s in strings)
    if name == "wildcard":
        return any(fnmatch.fnmatchcase(s, argument) for s in strings)
    if name == "anything-but":
        if isinstance(argument, dict):
            return not any(_operator_matches(argument, True, [v]) for v in values)
        excluded = argument if isinstance(argument, list) else [argument]
        return not any(_same(e, v) for e in excluded for v in values)
    if name == "numeric":
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        return any(_numeric(argument, n) for n in numbers)
    raise ValueError(f"EventBridge operator {name!r} is not supported by the local bus")


def _numeric(conditions: list, number: float) -> bool:
    checks = {
        "=": lambda a, b: a == b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    pairs = zip(conditions[::2], conditions[1::2], strict=True)
    return all(checks[op](number, float(bound)) for op, bound in pairs)


def s3_rule_matches(config: S3EventConfig, record: dict) -> bool:
    """S3 notification filters: bucket, event type (with ``*``), key prefix and suffix."""
    if record["s3"]["bucket"]["name"] != config.bucket:
        return False
    event_name = "s3:" + record["eventName"]
    if not any(fnmatch.fnmatchcase(event_name, wanted) for wanted in config.events):
        return False
    key = unquote_plus(record["s3"]["object"]["key"])
    return key.startswith(config.prefix or "") and key.endswith(config.suffix or "")


# Delivery ---------------------------------------------------------------------------------
@dataclass
class LambdaContext:
    """The parts of Lambda's context object handlers and Powertools read."""

    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 512
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    started: float = field(default_factory=time.monotonic)
    timeout_seconds: float = 120.0

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        left = self.timeout_seconds - (time.monotonic() - self.started)
        return max(0, int(left * 1000))


@dataclass(frozen=True)
class Route:
    name: str
    config: S3EventConfig | CloudWatchEventConfig
    handler: Callable


def routes_of(app_module: ModuleType) -> list[Route]:
    routes = []
    for config in app_module.app.event_sources:
        if isinstance(config, S3EventConfig | CloudWatchEventConfig):
            function = config.handler_string.rsplit(".", 1)[-1]
            routes.append(Route(config.name, config, getattr(app_module, function)))
    return routes


def targets(routes: list[Route], kind: str, body: dict) -> list[Route]:
    if kind == "s3":
        return [
            r
            for r in routes
            if isinstance(r.config, S3EventConfig)
            and all(s3_rule_matches(r.config, record) for record in body.get("Records", []))
        ]
    return [
        r
        for r in routes
        if isinstance(r.config, CloudWatchEventConfig) and matches(r.config.event_pattern, body)
    ]


class EventBus:
    def __init__(
        self,
        state: State,
        app_module: ModuleType,
        say: Callable[[str], None],
        workers: int = 4,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
        on_failure: Callable[[str, str], None] | None = None,
    ):
        self.state = state
        self.routes = routes_of(app_module)
        self.say = say
        self.on_failure = on_failure
        self.retry_delays = retry_delays
        self.retention = retention_seconds()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lambda")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = 0
        self._busy_lock = threading.Lock()
        # event id -> [handlers still running, outcomes so far]
        self._running: dict[str, list] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="event-bus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.state.new_event.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=False)

    @property
    def idle(self) -> bool:
        with self._busy_lock:
            return self._busy == 0 and not self.state.pending_events(limit=1)

    def deliver_pending(self) -> int:
        delivered = 0
        for event_id, kind, body in self.state.pending_events():
            if not self.state.claim_event(event_id):
                continue  # another process got it first
            matched = targets(self.routes, kind, body)
            if not matched:
                self.state.finish_event(event_id, "no matching handler")
                continue
            with self._busy_lock:
                self._busy += len(matched)
                self._running[event_id] = [len(matched), []]
            for route in matched:
                self._pool.submit(self._invoke, event_id, route, body)
            delivered += 1
        return delivered

    def _finished(self, event_id: str, outcome: str) -> None:
        """One handler of the event is done; the event is delivered when all are."""
        with self._busy_lock:
            entry = self._running[event_id]
            entry[0] -= 1
            entry[1].append(outcome)
            done = entry[0] == 0
            if done:
                del self._running[event_id]
        if done:
            self.state.finish_event(event_id, "; ".join(entry[1]))

    def prune(self) -> int:
        """Forget the events delivered longer ago than the retention."""
        removed = self.state.prune_events(self.retention)
        if removed:
            log.info("pruned %d delivered event(s) older than the retention", removed)
        return removed

    def _loop(self) -> None:
        pruned = time.monotonic()
        while not self._stop.is_set():
            self.state.new_event.wait(timeout=0.1)
            self.state.new_event.clear()
            try:
                self.deliver_pending()
                if time.monotonic() - pruned >= PRUNE_EVERY_SECONDS:
                    pruned = time.monotonic()
                    self.prune()
            except Exception:  # the bus must outlive a bad event
                log.exception("event delivery failed")

    def _invoke(self, event_id: str, route: Route, body: dict) -> None:
        try:
            for attempt in range(len(self.retry_delays) + 1):
                context = LambdaContext(function_name=f"sagedrop-local-{route.name}")
                try:
                    outcome = route.handler(body, context)
                except Exception as exc:
                    detail = "".join(traceback.format_exception_only(exc)).strip()
                    if attempt < len(self.retry_delays):
                        self.say(f"[lambda] {route.name} failed ({detail}); retrying")
                        time.sleep(self.retry_delays[attempt])
                        continue
                    self.say(f"[lambda] {route.name} failed after retries: {detail}")
                    if self.on_failure is not None:
                        try:
                            self.on_failure(route.name, detail)
                        except Exception:  # the destination failing must not lose the event
                            log.exception("on-failure destination failed")
                    self._finished(event_id, f"{route.name}: error: {detail}")
                    return
                self._finished(event_id, f"{route.name}: {outcome}")
                return
        finally:
            with self._busy_lock:
                self._busy -= 1
