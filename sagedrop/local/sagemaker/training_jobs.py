"""Training jobs: CreateTrainingJob, DescribeTrainingJob, StopTrainingJob, and the run.

A job runs as SageMaker's own training runner in a job folder (``sagedrop.local.training``);
this part keeps its record in the shape ``DescribeTrainingJob`` returns, walks its
secondary statuses, holds one of the limited training slots while it runs, and sends the
"SageMaker Training Job State Change" event at every change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sagedrop.local.aws_shapes import arn, event_detail, metadata, public, stamp, validate
from sagedrop.local.sagemaker import errors
from sagedrop.local.sagemaker.common import (
    TERMINAL,
    TRAINING,
    TRAINING_EVENT,
    Context,
    max_training_jobs,
)
from sagedrop.local.training import JobResult, TrainingRun

INTERRUPTED = "the local cloud stopped while this job ran; it was not finished"


class TrainingJobs:
    def __init__(self, context: Context):
        self.context = context
        self.state = context.state
        # However many runs are in flight, at most this many training processes at once; the
        # rest wait as SecondaryStatus "Pending" (SAGEDROP_MAX_TRAINING_JOBS overrides).
        self.max_training_jobs = max_training_jobs(context.cpus)
        self._slots = threading.BoundedSemaphore(self.max_training_jobs)
        self.runs: dict[str, TrainingRun] = {}

    # the API -------------------------------------------------------------------------------
    def create_training_job(self, **params) -> dict:
        validate("sagemaker", "create_training_job", params)
        self.record_new(params, parent=None)
        self.context.background(self.run, params["TrainingJobName"], None, self.context.cpus)
        return {**metadata(), "TrainingJobArn": arn("training-job", params["TrainingJobName"])}

    def describe_training_job(self, **params) -> dict:
        validate("sagemaker", "describe_training_job", params)
        record = self.state.get(TRAINING, params["TrainingJobName"])
        if record is None:
            raise errors.validation(
                "DescribeTrainingJob", f"Requested resource not found: {params['TrainingJobName']}"
            )
        return public(record)

    def stop_training_job(self, **params) -> dict:
        validate("sagemaker", "stop_training_job", params)
        name = params["TrainingJobName"]
        record = self.state.get(TRAINING, name)
        if record is None or record["TrainingJobStatus"] != "InProgress":
            raise errors.validation("StopTrainingJob", f"Training job {name} is not running")
        self.state.update(TRAINING, name, TrainingJobStatus="Stopping")
        run = self.runs.get(name)
        if run:
            run.stop()
        return metadata()

    # lifecycle -----------------------------------------------------------------------------
    def resume(self) -> None:
        """Terminal jobs announce themselves again (deterministic ids: a lost event is
        sent, a sent one is not); a standalone job that was running runs again."""
        for job in self.state.all(TRAINING):
            if job["TrainingJobStatus"] in TERMINAL:
                self.emit(job)
            elif job["TrainingJobStatus"] == "InProgress" and not job.get("TuningJobArn"):
                self.context.say(f"[sagemaker] resuming training job {job['TrainingJobName']}")
                self.context.background(self.run, job["TrainingJobName"], None, self.context.cpus)

    def shutdown(self) -> None:
        for run in list(self.runs.values()):
            run.stop("Shutdown")

    def record_new(
        self, params: dict, parent: str | None, local: dict | None = None, replace: bool = False
    ) -> None:
        """Record a new training job (``replace``: start an interrupted one afresh)."""
        name = params["TrainingJobName"]
        job_arn = arn("training-job", name)
        record = {
            key: value for key, value in params.items() if key not in ("Tags", "TrainingJobName")
        }
        record.update(
            TrainingJobName=name,
            TrainingJobArn=job_arn,
            TrainingJobStatus="InProgress",
            SecondaryStatus="Starting",
            CreationTime=stamp(),
            LastModifiedTime=stamp(),
            SecondaryStatusTransitions=[],
            _local={"request": params, **(local or {})},
        )
        if parent:
            record["TuningJobArn"] = arn("hyper-parameter-tuning-job", parent)
        if replace:
            self.state.put(TRAINING, name, record)
        elif not self.state.insert(TRAINING, name, record):
            raise errors.resource_in_use(
                "CreateTrainingJob",
                "Training job names must be unique within an AWS account and region, and a "
                f"training job with this name already exists ({job_arn})",
            )
        self.context.tag(job_arn, params.get("Tags", []))

    def run(
        self,
        name: str,
        on_metrics: Callable[[dict], None] | None,
        threads: int,
        ready: Callable[[TrainingRun], None] | None = None,
    ) -> JobResult:
        """Run a recorded job to its end (``ready``: told the run before it starts)."""
        request = self.state.record(TRAINING, name)["_local"]["request"]
        epochs = request.get("HyperParameters", {}).get("epochs", "?")
        say = self.context.say

        def progress(metrics: dict) -> None:
            if "epoch" in metrics:
                shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
                say(f"[training] {name} epoch {int(metrics['epoch'])}/{epochs}: {shown}")
            if on_metrics:
                on_metrics(metrics)

        run = TrainingRun(
            self.context.s3,
            self.context.root / "jobs" / name,
            request,
            threads,
            on_status=lambda secondary, message: self.set_secondary(name, secondary, message),
            on_metrics=progress,
            extra_env={"SAGEDROP_FEATURE_CACHE": str(self.context.root / "feature-cache")},
        )
        self.runs[name] = run
        if ready:
            ready(run)
        try:
            if self._take_slot(name, run):
                try:
                    self.set_secondary(name, "Starting", "Preparing the instances for training")
                    result = run.run()
                finally:
                    self._slots.release()
            else:
                result = JobResult("Stopped", None, "Stopped")
        except Exception as exc:  # a bug here must still end the job, not leave it running
            result = JobResult("Failed", f"InternalServerError: {exc}", "Failed")
        finally:
            self.runs.pop(name, None)
        if self.context.stopping.is_set() and result.status == "Stopped":
            return result  # shutting down: the job stays InProgress and resumes on restart
        self.finish(name, result, series=run.reader.series)
        return result

    def _take_slot(self, name: str, run: TrainingRun) -> bool:
        """Wait for one of the ``max_training_jobs`` slots; False when stopped meanwhile."""
        if self._slots.acquire(blocking=False):
            return True
        self.set_secondary(
            name,
            "Pending",
            f"Waiting for a free local training slot ({self.max_training_jobs} training "
            "jobs run at once; SAGEDROP_MAX_TRAINING_JOBS sets it)",
        )
        stopping = self.context.stopping
        while not self._slots.acquire(timeout=0.5):
            if run.stopped or stopping.is_set():
                return False
        if run.stopped or stopping.is_set():
            self._slots.release()
            return False
        return True

    def set_secondary(self, name: str, secondary: str, message: str) -> None:
        record = self.state.record(TRAINING, name)
        transitions = record.get("SecondaryStatusTransitions", [])
        if transitions and transitions[-1]["Status"] == secondary:
            return
        now = stamp()
        if transitions:
            transitions[-1]["EndTime"] = now
        transitions.append({"Status": secondary, "StartTime": now, "StatusMessage": message})
        changes = {"SecondaryStatus": secondary, "SecondaryStatusTransitions": transitions}
        if secondary == "Training":
            changes["TrainingStartTime"] = now
        record = self.state.update(TRAINING, name, LastModifiedTime=now, **changes)
        self.emit(record)

    def finish(self, name: str, result: JobResult, series: dict | None = None) -> None:
        record = self.state.record(TRAINING, name)
        now = stamp()
        transitions = record.get("SecondaryStatusTransitions", [])
        if transitions:
            transitions[-1].setdefault("EndTime", now)
        transitions.append(
            {
                "Status": result.secondary_status,
                "StartTime": now,
                "EndTime": now,
                "StatusMessage": result.failure_reason or f"Training job {result.status.lower()}",
            }
        )
        changes = {
            "TrainingJobStatus": result.status,
            "SecondaryStatus": result.secondary_status,
            "SecondaryStatusTransitions": transitions,
            "TrainingEndTime": now,
            "LastModifiedTime": now,
            "FinalMetricDataList": [
                {"MetricName": k, "Value": v, "Timestamp": now}
                for k, v in result.final_metrics.items()
            ],
            "_local": {**record["_local"], "series": series or {}},
        }
        if result.failure_reason:
            changes["FailureReason"] = result.failure_reason
        if result.model_uri:
            changes["ModelArtifacts"] = {"S3ModelArtifacts": result.model_uri}
        record = self.state.update(TRAINING, name, **changes)
        self.emit(record)

    def emit(self, record: dict) -> None:
        status = record["TrainingJobStatus"]
        event_id = None
        if status in TERMINAL:  # once per job and outcome
            event_id = f"training:{record['TrainingJobName']}:{status}"
        self.context.emit(
            TRAINING_EVENT, event_detail(record), [record["TrainingJobArn"]], event_id
        )
