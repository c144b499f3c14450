"""Every tuning trial and debug job as an MLflow run, recorded from the job's output.

Why here and not from ``train.py``: jobs run with SageMaker's network isolation (the
default), which no tracking server can reach through, and ``MlflowConfig`` on a training
job only tells the job which server to use; it records nothing by itself. The pipeline
steps that read a finished job's output already have the network, so they record what
the job left: its hyperparameters, its per-epoch history (``training_summary.json``),
its final metrics and, for the debug job, the rule verdicts, the report, the
evaluation and the audit. The runs are the same whether the jobs were isolated or not.

Layout: one experiment per dataset (``sagedrop-<dataset>``); a parent run per tuning job
with a nested run per trial (the tuner's best tagged ``sagedrop.best``); a run per debug
job tagged with its Model Registry version and approval. Run name = job name, and a
run is found again by its ``sagedrop.job`` tag, so a re-delivered event records nothing
twice. Tracking is never a reason to fail: an unreachable, throttling or refusing server
gives one warning per step and a line in its notice, and the pipeline goes on.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from chalicelib import bounded_json, job_reports
from sagedrop_contract import job_contract

log = logging.getLogger("sagedrop.tracking")

EXPERIMENT_PREFIX = "sagedrop-"
TAG_JOB, TAG_KIND, TAG_DATASET = job_contract.RUN_TAG_JOB, "sagedrop.kind", "sagedrop.dataset"
TAG_TUNING_JOB, TAG_BEST = "sagedrop.tuning_job", "sagedrop.best"
TAG_MODEL_PACKAGE, TAG_APPROVAL = "sagedrop.model_package", "sagedrop.approval"
TAG_ARTIFACTS_FAILED = "sagedrop.artifacts_not_uploaded"
# Set once the pipeline has recorded a finished job's run: a re-delivered event stops here.
TAG_RECORDED = "sagedrop.recorded"
# Who logged the per-epoch history: the job itself (network isolation off) or the pipeline.
TAG_LOGGED_BY = job_contract.RUN_TAG_LOGGED_BY
PARENT_TAG = job_contract.PARENT_RUN_TAG
SUMMARY = "training_summary.json"
ARTIFACTS = (job_reports.RULES, job_reports.REPORT, job_reports.EVALUATION, job_reports.AUDIT)
MAX_MEMBER_BYTES = job_reports.MAX_MEMBER_BYTES
# MLflow's LogBatch limits per request.
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
# A server that does not answer fails the step in seconds, not after MLflow's default
# seven retries with back-off (minutes), which would hold a Lambda to its timeout.
CLIENT_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip
EPOCH_METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")


@dataclass
class Recorded:
    """What a step recorded: run ids by job name, and why it could not (one line)."""

    runs: dict[str, str] = field(default_factory=dict)
    problem: str = ""

    def notice_line(self) -> list[str]:
        return [f"experiment tracking: {self.problem}"] if self.problem else []


@dataclass
class JobRecord:
    """One finished job as a run: what the pipeline read from SageMaker and the output."""

    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    history: list[dict]
    tags: dict[str, str]
    artifacts: dict[str, bytes] = field(default_factory=dict)
    problem: str = ""  # why the job could not log its own run (it was given a server)


def experiment_name(dataset: str) -> str:
    return f"{EXPERIMENT_PREFIX}{dataset}"


def params_of(hyperparameters: dict[str, str]) -> dict[str, str]:
    """The job's hyperparameters as MLflow params: the framework's keys left out, the
    SDK's JSON encoding undone (``"\\"crop\\""`` is ``crop``)."""
    out = {}
    for key, value in hyperparameters.items():
        if key.startswith(("sagemaker_", "_tuning")):
            continue
        try:
            decoded = json.loads(value)
        except (TypeError, ValueError):
            decoded = value
        out[key] = decoded if isinstance(decoded, str) else json.dumps(decoded)
    return out


def final_metrics(training: dict) -> dict[str, float]:
    return {m["MetricName"]: float(m["Value"]) for m in training.get("FinalMetricDataList", [])}


def read_output(s3, training: dict, names: Iterable[str]) -> dict[str, bytes]:
    """The named members of the job's ``output.tar.gz`` (bounded), streamed once; a job
    without one (failed before writing it) has none."""
    parsed = urlparse(job_reports.output_archive(training))
    wanted, found = set(names), {}
    try:
        body = s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
        with tarfile.open(fileobj=body, mode="r|gz") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name in wanted and member.size <= MAX_MEMBER_BYTES:
                    handle = archive.extractfile(member)
                    found[name] = handle.read() if handle else b""
    except (ClientError, tarfile.TarError, OSError, EOFError) as exc:
        log.info("no output to read for %s: %s", training.get("TrainingJobName"), exc)
    return found


def summary_of(members: dict[str, bytes]) -> dict:
    """``training_summary.json`` as ``train.py`` wrote it ({} when missing or unreadable)."""
    if SUMMARY not in members:
        return {}
    try:
        summary = bounded_json.loads(members[SUMMARY], SUMMARY)
    except ValueError:
        return {}
    return summary if isinstance(summary, dict) else {}


def history_of(summary: dict) -> list[dict]:
    """The per-epoch records of the job's summary."""
    history = summary.get("history")
    return [r for r in history if isinstance(r, dict)] if isinstance(history, list) else []


def job_problem(summary: dict) -> str:
    own = summary.get("experiment_tracking")
    problem = own.get("problem") if isinstance(own, dict) else ""
    return str(problem)[:300] if problem else ""


def job_record(
    s3, training: dict, tags: dict[str, str], artifacts: Iterable[str] = ()
) -> JobRecord:
    members = read_output(s3, training, [SUMMARY, *artifacts])
    summary = summary_of(members)
    return JobRecord(
        name=training["TrainingJobName"],
        status=training.get("TrainingJobStatus", ""),
        params=params_of(training.get("HyperParameters", {})),
        metrics=final_metrics(training),
        history=history_of(summary),
        tags={TAG_JOB: training["TrainingJobName"], **tags},
        artifacts={name: members[name] for name in artifacts if name in members},
        problem=job_problem(summary),
    )


class Tracker:
    """Runs in one MLflow tracking server or store, created once each."""

    def __init__(self, tracking_uri: str, client: Any = None):
        for name, value in CLIENT_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        if client is None:
            from mlflow.tracking import MlflowClient  # heavy: only when tracking is on

            client = MlflowClient(tracking_uri=tracking_uri)
        self.mlflow = client
        self.tracking_uri = tracking_uri

    def experiment(self, dataset: str, artifact_root: str | None = None) -> str:
        name = experiment_name(dataset)
        found = self.mlflow.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = f"{artifact_root.rstrip('/')}/{name}" if artifact_root else None
        try:
            return self.mlflow.create_experiment(
                name, artifact_location=location, tags={TAG_DATASET: dataset}
            )
        except Exception:  # created meanwhile by a concurrent step: take that one
            found = self.mlflow.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def find_run(self, experiment_id: str, job: str):
        runs = self.mlflow.search_runs(
            [experiment_id], filter_string=f"tags.`{TAG_JOB}` = '{job}'", max_results=1
        )
        return runs[0] if runs else None

    def start(self, experiment_id: str, name: str, tags: dict[str, str]) -> str:
        """A run for a job that has not finished (a tuning job, at its start), made once."""
        existing = self.find_run(experiment_id, name)
        if existing is not None:
            return existing.info.run_id
        return self.mlflow.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    def record(self, experiment_id: str, job: JobRecord, parent: str | None = None) -> str:
        """The finished job's run, recorded once (``sagedrop.recorded``).

        A run that exists already is completed, not duplicated: the tuning job's run made
        at its start, or a run the job logged itself (network isolation off), which gets
        what only the pipeline knows (the tuner's objective value, the best trial's tag,
        the artifacts) and no second copy of its per-epoch history."""
        existing = self.find_run(experiment_id, job.name)
        if existing is not None and existing.data.tags.get(TAG_RECORDED) == "true":
            return existing.info.run_id
        tags = {**job.tags, **({PARENT_TAG: parent} if parent else {})}
        if existing is None:
            made = {**tags, TAG_LOGGED_BY: "pipeline"}
            run_id = self.mlflow.create_run(experiment_id, run_name=job.name, tags=made).info.run_id
            self._log(run_id, job)
        else:
            run_id = existing.info.run_id
            logged_history = bool(existing.data.metrics)
            self._log(run_id, job, with_history=not logged_history)
        self._artifacts(run_id, job.artifacts)
        self.set_tags(run_id, {**tags, TAG_RECORDED: "true"})
        status = "FINISHED" if job.status in ("Completed", "Stopped", "") else "FAILED"
        self.mlflow.set_terminated(run_id, status=status)
        return run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for start in range(0, len(items), MAX_TAGS):
            self.mlflow.log_batch(run_id, tags=items[start : start + MAX_TAGS])

    def _log(self, run_id: str, job: JobRecord, with_history: bool = True) -> None:
        """Params, per-epoch metrics (step = epoch) and final metrics, in batches."""
        from mlflow.entities import Metric, Param

        # Timestamps in order, so each key's latest value is the job's final metric (a
        # job keeps its best epoch's weights: its final valid_accuracy is that epoch's).
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(record[key]), now + step, int(record.get("epoch", step)))
            for step, record in enumerate(job.history if with_history else [], start=1)
            for key in EPOCH_METRICS
            if isinstance(record.get(key), int | float)
        ]
        last_step = max((m.step for m in metrics), default=len(job.history))
        final_at = now + len(job.history) + 1
        # The per-epoch curves end where the history ends; of them only valid_accuracy
        # gets its final value again (the kept epoch's, the tuner's objective).
        curves = {k for k in EPOCH_METRICS if k != job_contract.OBJECTIVE_METRIC}
        final = {k: v for k, v in job.metrics.items() if not (job.history and k in curves)}
        metrics += [Metric(k, v, final_at, last_step) for k, v in final.items()]
        params = [Param(k, v[:6000]) for k, v in sorted(job.params.items())] if with_history else []
        for start in range(0, len(params), MAX_PARAMS):
            self.mlflow.log_batch(run_id, params=params[start : start + MAX_PARAMS])
        for start in range(0, len(metrics), MAX_METRICS):
            self.mlflow.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS])

    def _artifacts(self, run_id: str, artifacts: dict[str, bytes]) -> None:
        """Each file into the run's artifact store. A store this step cannot write to (a
        managed server's S3 bucket the role has no grant on) costs the files, not the
        run: the run says so in a tag, and its tags name the reports' S3 copies."""
        failed = []
        with tempfile.TemporaryDirectory() as folder:
            for name, data in artifacts.items():
                path = os.path.join(folder, name)
                with open(path, "wb") as handle:
                    handle.write(data)
                try:
                    self.mlflow.log_artifact(run_id, path)
                except Exception as exc:  # the store's own errors: boto3's, OSError ...
                    failed.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
        if failed:
            log.warning("artifacts of run %s not uploaded: %s", run_id, "; ".join(failed))
            self.set_tags(run_id, {TAG_ARTIFACTS_FAILED: "; ".join(failed)[:4000]})


def guarded(step: str, work: Callable[[], dict[str, str] | Recorded]) -> Recorded:
    """``work()`` → run ids; any failure is one warning and the notice's line, never a
    failed step (MLflow's own exceptions, the network's, a store's)."""
    try:
        result = work()
        return result if isinstance(result, Recorded) else Recorded(runs=result)
    except Exception as exc:  # tracking must never fail the pipeline
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        log.warning("MLflow tracking for %s failed; the pipeline goes on: %s", step, reason)
        return Recorded(problem=f"runs not recorded ({reason})")


def trial_summaries(sagemaker, tuning_job: str) -> list[dict]:
    """Every trial of the tuning job (all pages), in the order they were created."""
    summaries: list[dict] = []
    token = None
    while True:
        page = sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=tuning_job, SortBy="CreationTime",
            SortOrder="Ascending", MaxResults=100, **({"NextToken": token} if token else {}),
        )  # fmt: skip
        summaries += page.get("TrainingJobSummaries", [])
        token = page.get("NextToken")
        if not token:
            return summaries


def record_tuning(
    tracker: Tracker, sagemaker, s3, tuning: dict, dataset: str, artifact_root: str | None
) -> Recorded:
    """The tuning job as a parent run and each trial as a nested run under it; the
    trial's ``valid_accuracy`` is the tuner's objective value for it."""
    experiment = tracker.experiment(dataset, artifact_root)
    name = tuning["HyperParameterTuningJobName"]
    definition = tuning.get("TrainingJobDefinition", {})
    best = tuning.get("BestTrainingJob") or {}
    best_value = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
    config = tuning.get("HyperParameterTuningJobConfig", {})
    parent = JobRecord(
        name=name,
        status=tuning.get("HyperParameterTuningJobStatus", ""),
        params=params_of(definition.get("StaticHyperParameters", {})),
        metrics={f"best_{best_value['MetricName']}": float(best_value["Value"])}
        if "Value" in best_value else {},
        history=[],
        tags={TAG_JOB: name, TAG_KIND: "tuning", TAG_DATASET: dataset, TAG_TUNING_JOB: name,
              "sagedrop.strategy": str(config.get("Strategy", "")),
              "sagedrop.best_trial": str(best.get("TrainingJobName", ""))},
    )  # fmt: skip
    runs = {name: tracker.record(experiment, parent)}
    problems = []
    for summary in trial_summaries(sagemaker, name):
        trial = summary["TrainingJobName"]
        training = sagemaker.describe_training_job(TrainingJobName=trial)
        tags = {TAG_KIND: "trial", TAG_DATASET: dataset, TAG_TUNING_JOB: name}
        if trial == best.get("TrainingJobName"):
            tags[TAG_BEST] = "true"
        record = job_record(s3, training, tags)
        objective = summary.get("FinalHyperParameterTuningJobObjectiveMetric")
        if objective:
            record.metrics[objective["MetricName"]] = float(objective["Value"])
        runs[trial] = tracker.record(experiment, record, parent=runs[name])
        if record.problem:
            problems.append(f"{trial} could not log its own run ({record.problem}); recorded here")
    return Recorded(runs, "; ".join(problems[:3]))


def record_debug(
    tracker: Tracker,
    s3,
    training: dict,
    dataset: str,
    artifact_root: str | None,
    tags: dict[str, str],
    metrics: dict[str, float],
) -> Recorded:
    """The debug job as a run: its history, final and evaluation metrics, the rule
    verdicts, report, evaluation and audit as artifacts, and ``tags`` (its Model
    Registry version and approval), which are set again if the run was already made."""
    experiment = tracker.experiment(dataset, artifact_root)
    record = job_record(s3, training, {TAG_KIND: "debug", TAG_DATASET: dataset, **tags}, ARTIFACTS)
    record.metrics.update(metrics)
    run_id = tracker.record(experiment, record)
    tracker.set_tags(run_id, tags)
    problem = (
        f"{record.name} could not log its own run ({record.problem}); recorded here"
        if record.problem
        else ""
    )
    return Recorded({record.name: run_id}, problem)


def tag_version(
    tracker: Tracker, dataset: str, debug_job: str, tags: dict[str, str]
) -> dict[str, str]:
    """A version's new approval on its debug run (a person approved or rejected it)."""
    experiment = tracker.mlflow.get_experiment_by_name(experiment_name(dataset))
    run = tracker.find_run(experiment.experiment_id, debug_job) if experiment else None
    if run is None:
        return {}
    tracker.set_tags(run.info.run_id, tags)
    return {debug_job: run.info.run_id}
