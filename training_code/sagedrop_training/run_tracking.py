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
records the run from the output instead). One ``LogBatch`` per epoch.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from job_contract import PARENT_RUN_TAG, PARENT_RUN_VARIABLE, RUN_TAG_JOB, RUN_TAG_LOGGED_BY

log = logging.getLogger("sagedrop.train")

TAG_JOB, TAG_LOGGED_BY, PARENT_TAG = RUN_TAG_JOB, RUN_TAG_LOGGED_BY, PARENT_RUN_TAG
PARENT_VARIABLE = PARENT_RUN_VARIABLE
EPOCH_METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")
# Fail in seconds, not after MLflow's default seven retries with back-off.
CLIENT_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip


class JobRun:
    """One job's run; every method is a no-op once logging has failed."""

    def __init__(self, client: Any = None, run_id: str | None = None, problem: str = ""):
        self.client, self.run_id, self.problem = client, run_id, problem
        self.last_step = 0

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None and not self.problem

    @classmethod
    def from_environment(cls, job: str | None, params: dict[str, str], is_main: bool) -> JobRun:
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
        if not (uri and experiment_name and job and is_main):
            return cls()
        for name, value in CLIENT_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        run = cls()
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                raise RuntimeError(f"experiment {experiment_name!r} does not exist")
            found = client.search_runs([experiment.experiment_id],
                                       filter_string=f"tags.`{TAG_JOB}` = '{job}'",
                                       max_results=1)  # fmt: skip
            if found:  # this job ran before (a restarted trial): go on in its run
                run_id = found[0].info.run_id
            else:
                tags = {TAG_JOB: job, TAG_LOGGED_BY: "job"}
                if os.environ.get(PARENT_VARIABLE):
                    tags[PARENT_TAG] = os.environ[PARENT_VARIABLE]
                run_id = client.create_run(experiment.experiment_id, run_name=job,
                                           tags=tags).info.run_id  # fmt: skip
                items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
                for start in range(0, len(items), 100):
                    client.log_batch(run_id, params=items[start : start + 100])
            run.client, run.run_id = client, run_id
            log.info("logging this job to MLflow run %s at %s", run_id, _safe(uri))
        except Exception as exc:  # tracking must never stop training
            run._failed(exc)
        return run

    def epoch(self, record: dict) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record.get("epoch", 0))
        self.last_step = max(self.last_step, step)
        metrics = [Metric(key, float(record[key]), now, step) for key in EPOCH_METRICS
                   if isinstance(record.get(key), int | float)]  # fmt: skip
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as exc:
            self._failed(exc)

    def finish(self, final: dict[str, float], succeeded: bool) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # At the last epoch's step, later: each key's latest value is the final one (the
        # kept epoch's valid_accuracy, which the tuner takes as the objective).
        metrics = [Metric(k, float(v), now + 1, self.last_step) for k, v in final.items()
                   if v is not None]  # fmt: skip
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
            self.client.set_terminated(self.run_id, "FINISHED" if succeeded else "FAILED")
        except Exception as exc:
            self._failed(exc)

    def summary(self) -> dict:
        """What ``training_summary.json`` says of it, for the pipeline and the notice."""
        return {"run_id": self.run_id, "logged": self.active, "problem": self.problem}

    def _failed(self, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if not self.problem:
            log.warning("MLflow logging stopped for this job; training goes on: %s", reason)
        self.problem = self.problem or reason


def _safe(uri: str) -> str:
    """The URI without credentials a user may have put in it."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else uri
