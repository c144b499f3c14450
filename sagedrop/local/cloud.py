"""The local cloud: the services wired together and the Chalice app running on them.

``chalicelib.clients.use_factory`` hands the flow these local clients instead of boto3's;
the app module is imported with the local environment, so its S3 handlers listen to the
local buckets; the bus routes the outbox's events to it. One ``up`` per root (a lock file
says so); ``sagedrop drop`` and ``status`` work on the same root from other processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from chalicelib import naming
from chalicelib.notify import Notice, publish
from sagedrop.aws_configure import pack_training_code, upload_training_code
from sagedrop.local import tracking_store
from sagedrop.local.aws_shapes import ACCOUNT, eventbridge_event
from sagedrop.local.bus import EventBus
from sagedrop.local.runtime import LocalSageMakerRuntime
from sagedrop.local.s3 import FolderWatcher, LocalS3
from sagedrop.local.sagemaker import LocalSageMaker
from sagedrop.local.sns import LocalSNS
from sagedrop.local.state import State
from sagedrop.paths import CHALICE_APP
from sagedrop.weights_upload import environment_value, upload_weights

DATA_BUCKET = "sagedrop-data"
INFERENCE_BUCKET = "sagedrop-inference"
TOPIC_ARN = f"arn:aws:sns:local:{ACCOUNT}:sagedrop"
# What the Lambdas read on AWS, with local values. Other settings (tuning, gate) keep
# their documented defaults unless set in the environment of `sagedrop up`.
FIXED_ENVIRONMENT = {
    "DATA_BUCKET": DATA_BUCKET,
    "INFERENCE_BUCKET": INFERENCE_BUCKET,
    "TOPIC_ARN": TOPIC_ARN,
    "SAGEMAKER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/sagedrop-local",
    "TRAINING_IMAGE": "local/sagedrop-training:current-python",
    "INFERENCE_IMAGE": "local/sagedrop-inference:current-python",
    "POWERTOOLS_SERVICE_NAME": "sagedrop",
    "POWERTOOLS_METRICS_DISABLED": "true",  # EMF lines are for CloudWatch; status counts here
}
DEFAULT_ENVIRONMENT = {
    "ENDPOINT_PREFIX": naming.DEFAULT_ENDPOINT_PREFIX,
    "INFERENCE_INSTANCE_TYPE": "ml.m5.large",
    # Local jobs need no network (the environment holds every package): run them isolated,
    # so one that would fetch anything fails here first.
    "NETWORK_ISOLATION": "true",
}


class AlreadyRunning(RuntimeError):
    """Another ``sagedrop up`` holds this root's lock."""


class LocalCloud:
    def __init__(
        self, root: str | os.PathLike, say: Callable[[str], None] = print, cpus: int | None = None
    ):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.state = State(self.root / "state.sqlite")
        self.s3 = LocalS3(self.root, self.state)
        for bucket in (DATA_BUCKET, INFERENCE_BUCKET):
            self.s3.ensure_bucket(bucket)
        self.sns = LocalSNS(self.root, say)
        self.sagemaker = LocalSageMaker(self.root, self.state, self.s3, self._emit, say, cpus)
        self.runtime = LocalSageMakerRuntime(self.sagemaker)
        self.bus: EventBus | None = None
        self.watcher: FolderWatcher | None = None
        self._lock_file: TextIO | None = None
        self._saved_environment: dict[str, str | None] = {}
        self._replaced_streams: list = []
        self._log_stream: TextIO | None = None

    def client(self, service: str):
        services = {
            "s3": self.s3,
            "sns": self.sns,
            "sagemaker": self.sagemaker,
            "sagemaker-runtime": self.runtime,
        }
        if service not in services:
            raise ValueError(f"the local cloud has no {service!r} service")
        return services[service]

    def _emit(
        self, detail_type: str, detail: dict, resources: list[str], event_id: str | None = None
    ) -> None:
        event = eventbridge_event(detail_type, detail, resources)
        self.state.add_event("eventbridge", event, event_id)

    def _handler_failed(self, function: str, detail: str) -> None:
        """Lambda's on-failure destination, pointed at the topic: a handler that failed
        after its retries is never only a log line."""
        notice = Notice(
            stage="lambda",
            status="error",
            jobs={"function": function},
            summary=f"{function} failed after Lambda's retries: {detail}",
            failure_reason=detail,
        )
        publish(self.sns, TOPIC_ARN, notice)

    @property
    def topic_file(self) -> Path:
        return self.sns.topic_file(TOPIC_ARN)

    # lifecycle -----------------------------------------------------------------------------
    def start(self, watch: bool = True) -> None:
        self._take_lock()
        code_uri = upload_training_code(self.s3, DATA_BUCKET, pack_training_code())
        environment = {**FIXED_ENVIRONMENT, "CODE_S3_URI": code_uri}
        # The jobs' weights channel, from the torch hub cache only: nothing downloads here.
        environment.update(environment_value(upload_weights(self.s3, DATA_BUCKET, fetch=None)))
        # Experiment tracking in the root's own MLflow store, unless one is named already.
        defaults = {**DEFAULT_ENVIRONMENT, **tracking_store.prepare(self.root)}
        for key, value in defaults.items():
            environment.setdefault(key, os.environ.get(key) or value)
        self._saved_environment = {k: os.environ.get(k) for k in environment}
        os.environ.update(environment)
        from chalicelib import clients, flow

        clients.use_factory(self.client)
        self._log_to_file(flow)
        app_module = _import_app()
        self.bus = EventBus(self.state, app_module, self.say, on_failure=self._handler_failed)
        self.bus.prune()
        unfinished = self.state.release_claims()
        if unfinished:
            self.say(f"[bus] {unfinished} event(s) whose handlers did not finish: delivering again")
        self.sagemaker.resume()
        self.bus.start()
        if watch:
            self.watcher = FolderWatcher(self.s3)
            self.watcher.start()

    def stop(self) -> None:
        if self.watcher:
            self.watcher.stop()
        if self.bus:
            self.bus.stop()
        self.sagemaker.shutdown()
        from chalicelib import clients

        clients.use_factory(None)
        for handler, previous in self._replaced_streams:
            if previous is not None:
                handler.setStream(previous)
        self._replaced_streams.clear()
        if self._log_stream:
            self._log_stream.close()
        for key, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._lock_file:
            self._lock_file.close()
            self._lock_file = None
        self.state.close()

    def __enter__(self) -> LocalCloud:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_until(self, predicate: Callable[[], bool], timeout: float, interval=0.2) -> bool:
        return wait_until(predicate, timeout, interval)

    def _take_lock(self) -> None:
        handle = open(self.root / "up.lock", "w")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise AlreadyRunning(f"a local cloud is already running on {self.root}") from exc
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _log_to_file(self, flow_module) -> None:
        """The handlers' structured JSON logs go to ``<root>/logs/lambda.log``."""
        (self.root / "logs").mkdir(exist_ok=True)
        stream = open(self.root / "logs" / "lambda.log", "a")  # noqa: SIM115 - lives with the logger
        for handler in flow_module.logger._logger.handlers:
            # Powertools' own handler only: not a subclass someone attached (pytest's
            # log capture is one), whose stream is theirs to manage.
            if type(handler) is logging.StreamHandler:
                with contextlib.suppress(ValueError):
                    self._replaced_streams.append((handler, handler.setStream(stream)))
        self._log_stream = stream


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """True as soon as ``predicate()`` is; its last answer once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _import_app():
    """``app.py`` reads its bucket names at import: (re)import it with the local ones."""
    loaded = sys.modules.get("app")
    if loaded is not None and all(
        getattr(loaded, name, None) == os.environ.get(name)
        for name in ("DATA_BUCKET", "INFERENCE_BUCKET", "ENDPOINT_PREFIX")
    ):
        return loaded
    if loaded is not None:
        return importlib.reload(loaded)
    # Loaded from its file under the name Lambda gives it: no folder joins sys.path,
    # and chalicelib is the installed package, as it is beside app.py in the zip.
    spec = importlib.util.spec_from_file_location("app", CHALICE_APP / "app.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {CHALICE_APP / 'app.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("app", None)
        raise
    return module
