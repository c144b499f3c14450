"""The job's own MLflow run, when the pipeline handed it a tracking server.

Only a job that can reach the server logs itself: the pipeline passes
``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` (and, for a trial, its tuning
job's run as ``SAGEDROP_MLFLOW_PARENT_RUN_ID``) in the job's ``Environment`` when
network isolation is off. An isolated job gets none of them and logs nothing; the
pipeline then records its run from the output (``chalicelib/experiment_tracking.py``).
Either way the run is found by its ``sagedrop.job`` tag and completed once.

Logging never stops training: the first failure (server unreachable, throttling,
refusing) is one warning, logging stops for the rest of the job, and the problem is
written to ``training_summary.json`` so the pipeline says it in the job's notice (and
records the run from the output instead). One ``LogBatch`` per epoch, sent by a thread
of its own, so a slow server costs the training loop nothing.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from sagedrop_contract.job_contract import (
    PARENT_RUN_TAG,
    PARENT_RUN_VARIABLE,
    RUN_TAG_JOB,
    RUN_TAG_LOGGED_BY,
)

log = logging.getLogger("sagedrop.train")

TAG_JOB, TAG_LOGGED_BY, PARENT_TAG = RUN_TAG_JOB, RUN_TAG_LOGGED_BY, PARENT_RUN_TAG
PARENT_VARIABLE = PARENT_RUN_VARIABLE
EPOCH_METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")
# Fail in seconds, not after MLflow's default seven retries with back-off.
CLIENT_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip
# How long the end of a job waits for the last batches (the thread logs while it trains).
FINISH_TIMEOUT_S = 60


class JobRun:
    """One job's run, logged from a thread of its own: training never waits on the server
    (a slow or throttling one included) except at the end, for at most FINISH_TIMEOUT_S.
    After the first failure the thread stops and the rest is dropped."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.problem = ""
        self.last_step = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_environment(cls, job: str | None, params: dict[str, str], is_main: bool) -> JobRun:
        run = cls()
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
        if not (uri and experiment and job and is_main):
            return run
        for name, value in CLIENT_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        run._thread = threading.Thread(
            target=run._work, args=(uri, experiment, job, params), name="mlflow", daemon=True
        )
        run._thread.start()
        return run

    def epoch(self, record: dict) -> None:
        if self._thread is None:
            return
        now, step = int(time.time() * 1000), int(record.get("epoch", 0))
        self.last_step = max(self.last_step, step)
        self._queue.put([(key, float(record[key]), now, step) for key in EPOCH_METRICS
                         if isinstance(record.get(key), int | float)])  # fmt: skip

    def finish(self, final: dict[str, float], succeeded: bool) -> None:
        """The final metrics (at the last epoch's step, later: each key's latest value is
        the final one, the kept epoch's valid_accuracy), the run ended, the thread done."""
        if self._thread is None:
            return
        now = int(time.time() * 1000) + 1
        self._queue.put([(k, float(v), now, self.last_step) for k, v in final.items()
                         if v is not None])  # fmt: skip
        self._queue.put("FINISHED" if succeeded else "FAILED")
        self._thread.join(FINISH_TIMEOUT_S)
        if self._thread.is_alive():
            self._failed(TimeoutError(f"the server took over {FINISH_TIMEOUT_S} s"))

    def summary(self) -> dict:
        """What ``training_summary.json`` says of it, for the pipeline and the notice."""
        return {"run_id": self.run_id, "logged": bool(self.run_id) and not self.problem,
                "problem": self.problem}  # fmt: skip

    def _work(self, uri: str, experiment_name: str, job: str, params: dict[str, str]) -> None:
        try:
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            run_id = self._open(client, experiment_name, job, params)
            log.info("logging this job to MLflow run %s at %s", run_id, _safe(uri))
            while True:
                item = self._queue.get()
                if isinstance(item, str):
                    client.set_terminated(run_id, item)
                    return
                if item:
                    client.log_batch(run_id, metrics=[Metric(*m) for m in item])
        except Exception as exc:  # tracking must never stop training
            self._failed(exc)

    def _open(self, client, experiment_name: str, job: str, params: dict) -> str:
        """The job's run (found again after a restart), its params logged once."""
        from mlflow.entities import Param

        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise RuntimeError(f"experiment {experiment_name!r} does not exist")
        found = client.search_runs([experiment.experiment_id],
                                   filter_string=f"tags.`{TAG_JOB}` = '{job}'",
                                   max_results=1)  # fmt: skip
        if found:  # this job ran before (a restarted trial): go on in its run
            self.run_id = found[0].info.run_id
            return self.run_id
        tags = {TAG_JOB: job, TAG_LOGGED_BY: "job"}
        if os.environ.get(PARENT_VARIABLE):
            tags[PARENT_TAG] = os.environ[PARENT_VARIABLE]
        run_id = client.create_run(experiment.experiment_id, run_name=job, tags=tags).info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            client.log_batch(run_id, params=items[start : start + 100])
        self.run_id = run_id
        return run_id

    def _failed(self, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if not self.problem:
            log.warning("MLflow logging stopped for this job; training goes on: %s", reason)
        self.problem = self.problem or reason


def _safe(uri: str) -> str:
    """The URI without credentials a user may have put in it."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else uri
