"""SageMaker on one machine: the operations the pipeline calls, with AWS's shapes.

Every request is validated against botocore's service model first, so a request that
AWS would refuse is refused here too. Records live in the SQLite state in the shape
``Describe…`` returns; the parts only the local cloud needs sit under ``_local``. Every
status change emits the EventBridge event SageMaker would send.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import optuna

from chalicelib import aws_limits, training_failure
from sagedrop.local import tuner
from sagedrop.local.aws_shapes import arn, client_error, metadata, validate
from sagedrop.local.aws_shapes import event_detail as _event_detail
from sagedrop.local.aws_shapes import public as _public
from sagedrop.local.aws_shapes import stamp as _stamp
from sagedrop.local.endpoints import EndpointServer, ModelWorker, shutdown_all, unpack_model
from sagedrop.local.registry import LocalModelRegistry
from sagedrop.local.s3 import LocalS3
from sagedrop.local.state import State
from sagedrop.local.training import JobResult, TrainingRun

TRAINING, TUNING, MODEL, CONFIG, ENDPOINT, TAGS = (
    "training-job",
    "tuning-job",
    "model",
    "endpoint-config",
    "endpoint",
    "tags",
)
TRAINING_EVENT = "SageMaker Training Job State Change"
TUNING_EVENT = "SageMaker HyperParameter Tuning Job State Change"
ENDPOINT_EVENT = "SageMaker Endpoint State Change"
REGISTRY_OPERATIONS = frozenset(
    {
        "create_model_package_group",
        "describe_model_package_group",
        "list_model_package_groups",
        "create_model_package",
        "describe_model_package",
        "list_model_packages",
        "update_model_package",
    }
)
INTERRUPTED = "the local cloud stopped while this job ran; it was not finished"


class LocalSageMaker:
    def __init__(
        self,
        root: Path,
        state: State,
        s3: LocalS3,
        emit: Callable[[str, dict, list[str]], None],
        say: Callable[[str], None],
        cpus: int | None = None,
    ):
        self.root = Path(root)
        self.state = state
        self.s3 = s3
        self.emit = emit
        self.say = say
        self.cpus = cpus or os.cpu_count() or 1
        # However many pipelines run, at most this many training processes at once; the
        # rest wait as SecondaryStatus "Pending" (SAGEDROP_MAX_TRAINING_JOBS overrides).
        self.max_training_jobs = _max_training_jobs(self.cpus)
        self._slots = threading.BoundedSemaphore(self.max_training_jobs)
        self.servers: dict[str, EndpointServer] = {}
        self._runs: dict[str, TrainingRun] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._tuning_stops: dict[str, threading.Event] = {}
        self._endpoint_lock = threading.Lock()
        self.registry = LocalModelRegistry(state, emit)
        # A serverless endpoint takes at most MaxConcurrency invocations at once.
        self._invocation_limits: dict[str, threading.BoundedSemaphore] = {}

    def __getattr__(self, name: str):
        """Model Registry operations are the registry's (one client, as boto3's)."""
        if name in REGISTRY_OPERATIONS:
            return getattr(self.registry, name)
        raise AttributeError(name)

    # lifecycle ---------------------------------------------------------------------------
    def resume(self) -> None:
        """After a restart: finish what was running, exactly once.

        Standalone jobs run again from the start; a tuning job re-runs its interrupted
        trials under their own names (its budget is not spent twice); endpoints that were
        serving start serving again without announcing themselves a second time. Terminal
        state-change events are queued again under their deterministic ids, so one lost
        to a crash between the state change and its event is sent, and one already sent
        is not.
        """
        for job in self.state.all(TRAINING):
            if job["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
                self._emit_training(job)
            elif job["TrainingJobStatus"] == "InProgress" and not job.get("TuningJobArn"):
                self.say(f"[sagemaker] resuming training job {job['TrainingJobName']}")
                self._background(self._run_training, job["TrainingJobName"], None, self.cpus)
        for job in self.state.all(TUNING):
            if job["HyperParameterTuningJobStatus"] in ("InProgress", "Stopping"):
                self.say(f"[sagemaker] resuming tuning job {job['HyperParameterTuningJobName']}")
                self._background(self._run_tuning, job["HyperParameterTuningJobName"])
            else:
                self._emit_tuning(job)
        self.registry.resume()
        for endpoint in self.state.all(ENDPOINT):
            name, config = endpoint["EndpointName"], endpoint["EndpointConfigName"]
            if endpoint["EndpointStatus"] == "InService":
                # Serving again before the bus delivers a single image event: on AWS the
                # endpoint never went away, so no image may meet a missing one here.
                self._deploy(name, config, announce=False)
            elif endpoint["EndpointStatus"] in ("Creating", "Updating"):
                self._background(self._deploy, name, config)

    def shutdown(self) -> None:
        self._stopping.set()
        for run in list(self._runs.values()):
            run.stop("Shutdown")
        for thread in self._threads:
            thread.join(timeout=30)
        shutdown_all(self.servers)

    def _background(self, target, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    # training jobs -----------------------------------------------------------------------
    def create_training_job(self, **params) -> dict:
        validate("sagemaker", "create_training_job", params)
        self._create_training(params, parent=None)
        self._background(self._run_training, params["TrainingJobName"], None, self.cpus)
        return {**metadata(), "TrainingJobArn": arn("training-job", params["TrainingJobName"])}

    def _create_training(
        self, params: dict, parent: str | None, local: dict | None = None, replace: bool = False
    ):
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
            CreationTime=_stamp(),
            LastModifiedTime=_stamp(),
            SecondaryStatusTransitions=[],
            _local={"request": params, **(local or {})},
        )
        if parent:
            record["TuningJobArn"] = arn("hyper-parameter-tuning-job", parent)
        if replace:
            self.state.put(TRAINING, name, record)
        elif not self.state.insert(TRAINING, name, record):
            raise client_error(
                "CreateTrainingJob",
                "ResourceInUse",
                "Training job names must be unique within an AWS account and region, and a "
                f"training job with this name already exists ({job_arn})",
            )
        self._tag(job_arn, params.get("Tags", []))

    def describe_training_job(self, **params) -> dict:
        validate("sagemaker", "describe_training_job", params)
        record = self.state.get(TRAINING, params["TrainingJobName"])
        if record is None:
            raise client_error(
                "DescribeTrainingJob",
                "ValidationException",
                f"Requested resource not found: {params['TrainingJobName']}",
            )
        return _public(record)

    def stop_training_job(self, **params) -> dict:
        validate("sagemaker", "stop_training_job", params)
        name = params["TrainingJobName"]
        record = self.state.get(TRAINING, name)
        if record is None or record["TrainingJobStatus"] != "InProgress":
            raise client_error(
                "StopTrainingJob", "ValidationException", f"Training job {name} is not running"
            )
        self.state.update(TRAINING, name, TrainingJobStatus="Stopping")
        run = self._runs.get(name)
        if run:
            run.stop()
        return metadata()

    def _run_training(
        self,
        name: str,
        on_metrics: Callable[[dict], None] | None,
        threads: int,
        ready: Callable[[TrainingRun], None] | None = None,
    ) -> JobResult:
        request = self.state.get(TRAINING, name)["_local"]["request"]
        epochs = request.get("HyperParameters", {}).get("epochs", "?")

        def progress(metrics: dict) -> None:
            if "epoch" in metrics:
                shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
                self.say(f"[training] {name} epoch {int(metrics['epoch'])}/{epochs}: {shown}")
            if on_metrics:
                on_metrics(metrics)

        run = TrainingRun(
            self.s3,
            self.root / "jobs" / name,
            request,
            threads,
            on_status=lambda secondary, message: self._set_secondary(name, secondary, message),
            on_metrics=progress,
            extra_env={"SAGEDROP_FEATURE_CACHE": str(self.root / "feature-cache")},
        )
        self._runs[name] = run
        if ready:
            ready(run)
        try:
            if self._take_slot(name, run):
                try:
                    self._set_secondary(name, "Starting", "Preparing the instances for training")
                    result = run.run()
                finally:
                    self._slots.release()
            else:
                result = JobResult("Stopped", None, "Stopped")
        except Exception as exc:  # a bug here must still end the job, not leave it running
            result = JobResult("Failed", f"InternalServerError: {exc}", "Failed")
        finally:
            self._runs.pop(name, None)
        if self._stopping.is_set() and result.status == "Stopped":
            return result  # shutting down: the job stays InProgress and resumes on restart
        self._finish_training(name, result, series=run.reader.series)
        return result

    def _take_slot(self, name: str, run: TrainingRun) -> bool:
        """Wait for one of the ``max_training_jobs`` slots; False when stopped meanwhile."""
        if self._slots.acquire(blocking=False):
            return True
        self._set_secondary(
            name,
            "Pending",
            f"Waiting for a free local training slot ({self.max_training_jobs} training "
            "jobs run at once; SAGEDROP_MAX_TRAINING_JOBS sets it)",
        )
        while not self._slots.acquire(timeout=0.5):
            if run.stopped or self._stopping.is_set():
                return False
        if run.stopped or self._stopping.is_set():
            self._slots.release()
            return False
        return True

    def _set_secondary(self, name: str, secondary: str, message: str) -> None:
        record = self.state.get(TRAINING, name)
        transitions = record.get("SecondaryStatusTransitions", [])
        if transitions and transitions[-1]["Status"] == secondary:
            return
        stamp = _stamp()
        if transitions:
            transitions[-1]["EndTime"] = stamp
        transitions.append({"Status": secondary, "StartTime": stamp, "StatusMessage": message})
        changes = {"SecondaryStatus": secondary, "SecondaryStatusTransitions": transitions}
        if secondary == "Training":
            changes["TrainingStartTime"] = stamp
        record = self.state.update(TRAINING, name, LastModifiedTime=stamp, **changes)
        self._emit_training(record)

    def _finish_training(self, name: str, result: JobResult, series: dict | None = None) -> None:
        record = self.state.get(TRAINING, name)
        stamp = _stamp()
        transitions = record.get("SecondaryStatusTransitions", [])
        if transitions:
            transitions[-1].setdefault("EndTime", stamp)
        transitions.append(
            {
                "Status": result.secondary_status,
                "StartTime": stamp,
                "EndTime": stamp,
                "StatusMessage": result.failure_reason or f"Training job {result.status.lower()}",
            }
        )
        changes = {
            "TrainingJobStatus": result.status,
            "SecondaryStatus": result.secondary_status,
            "SecondaryStatusTransitions": transitions,
            "TrainingEndTime": stamp,
            "LastModifiedTime": stamp,
            "FinalMetricDataList": [
                {"MetricName": k, "Value": v, "Timestamp": stamp}
                for k, v in result.final_metrics.items()
            ],
            "_local": {**record["_local"], "series": series or {}},
        }
        if result.failure_reason:
            changes["FailureReason"] = result.failure_reason
        if result.model_uri:
            changes["ModelArtifacts"] = {"S3ModelArtifacts": result.model_uri}
        record = self.state.update(TRAINING, name, **changes)
        self._emit_training(record)

    def _emit_training(self, record: dict) -> None:
        status = record["TrainingJobStatus"]
        event_id = None
        if status in ("Completed", "Failed", "Stopped"):  # once per job and outcome
            event_id = f"training:{record['TrainingJobName']}:{status}"
        self.emit(TRAINING_EVENT, _event_detail(record), [record["TrainingJobArn"]], event_id)

    # tuning jobs -------------------------------------------------------------------------
    def create_hyper_parameter_tuning_job(self, **params) -> dict:
        validate("sagemaker", "create_hyper_parameter_tuning_job", params)
        name = params["HyperParameterTuningJobName"]
        config = params["HyperParameterTuningJobConfig"]
        definition = params.get("TrainingJobDefinition")
        if definition is None:
            raise client_error(
                "CreateHyperParameterTuningJob",
                "ValidationException",
                "TrainingJobDefinition is required (TrainingJobDefinitions is not supported "
                "locally)",
            )
        self._check_tuning_request(config, definition)
        job_arn = arn("hyper-parameter-tuning-job", name)
        record = {
            "HyperParameterTuningJobName": name,
            "HyperParameterTuningJobArn": job_arn,
            "HyperParameterTuningJobConfig": config,
            "TrainingJobDefinition": definition,
            "HyperParameterTuningJobStatus": "InProgress",
            "CreationTime": _stamp(),
            "LastModifiedTime": _stamp(),
            "TrainingJobStatusCounters": _counters([]),
            "ObjectiveStatusCounters": {"Succeeded": 0, "Pending": 0, "Failed": 0},
            "_local": {"trials": []},
        }
        if not self.state.insert(TUNING, name, record):
            raise client_error(
                "CreateHyperParameterTuningJob",
                "ResourceInUse",
                f"Hyperparameter tuning job names must be unique within an AWS account and "
                f"region, and a tuning job with this name already exists ({job_arn})",
            )
        self._tag(job_arn, params.get("Tags", []))
        self._emit_tuning(record)
        self._background(self._run_tuning, name)
        return {**metadata(), "HyperParameterTuningJobArn": job_arn}

    @staticmethod
    def _check_tuning_request(config: dict, definition: dict) -> None:
        ranges = config["ParameterRanges"]
        tuned = {r["Name"] for group in ranges.values() for r in group}
        clash = tuned & set(definition.get("StaticHyperParameters", {}))
        problem = None
        if clash:
            problem = f"hyperparameters both static and tuned: {', '.join(sorted(clash))}"
        elif aws_limits.parameter_ranges_problem(config["Strategy"], ranges):
            problem = aws_limits.parameter_ranges_problem(config["Strategy"], ranges)
        elif config["Strategy"] == "Grid" and "MaxNumberOfTrainingJobs" in config.get(
            "ResourceLimits", {}
        ):
            problem = "MaxNumberOfTrainingJobs must not be set for Grid search"
        elif config["Strategy"] != "Grid" and not config["ResourceLimits"].get(
            "MaxNumberOfTrainingJobs"
        ):
            problem = "MaxNumberOfTrainingJobs is required"
        if problem:
            raise client_error("CreateHyperParameterTuningJob", "ValidationException", problem)

    def describe_hyper_parameter_tuning_job(self, **params) -> dict:
        validate("sagemaker", "describe_hyper_parameter_tuning_job", params)
        record = self.state.get(TUNING, params["HyperParameterTuningJobName"])
        if record is None:
            raise client_error(
                "DescribeHyperParameterTuningJob",
                "ResourceNotFound",
                f"Amazon SageMaker can't find a tuning job with name "
                f"{params['HyperParameterTuningJobName']}",
            )
        return _public(record)

    def list_training_jobs_for_hyper_parameter_tuning_job(self, **params) -> dict:
        validate("sagemaker", "list_training_jobs_for_hyper_parameter_tuning_job", params)
        record = self.state.get(TUNING, params["HyperParameterTuningJobName"])
        if record is None:
            raise client_error(
                "ListTrainingJobsForHyperParameterTuningJob",
                "ResourceNotFound",
                f"Amazon SageMaker can't find a tuning job with name "
                f"{params['HyperParameterTuningJobName']}",
            )
        summaries = [self._trial_summary(record, n) for n in record["_local"]["trials"]]
        summaries = [s for s in summaries if s]
        if params.get("StatusEquals"):
            summaries = [s for s in summaries if s["TrainingJobStatus"] == params["StatusEquals"]]
        sort_by = params.get("SortBy", "Name")
        reverse = params.get("SortOrder", "Ascending") == "Descending"

        def key(summary):
            if sort_by == "FinalObjectiveMetricValue":
                metric = summary.get("FinalHyperParameterTuningJobObjectiveMetric")
                return float("-inf") if metric is None else metric["Value"]
            field = {"Name": "TrainingJobName", "Status": "TrainingJobStatus"}.get(
                sort_by, "CreationTime"
            )
            return summary[field]

        summaries.sort(key=key, reverse=reverse)
        start = int(params.get("NextToken") or 0)
        limit = params.get("MaxResults", 10)
        page = summaries[start : start + limit]
        response = {**metadata(), "TrainingJobSummaries": [_public(s) for s in page]}
        for summary in response["TrainingJobSummaries"]:
            summary.pop("ResponseMetadata", None)
        if start + limit < len(summaries):
            response["NextToken"] = str(start + limit)
        return response

    def stop_hyper_parameter_tuning_job(self, **params) -> dict:
        validate("sagemaker", "stop_hyper_parameter_tuning_job", params)
        name = params["HyperParameterTuningJobName"]
        record = self.state.get(TUNING, name)
        if record is None or record["HyperParameterTuningJobStatus"] != "InProgress":
            raise client_error(
                "StopHyperParameterTuningJob", "ValidationException", f"{name} is not running"
            )
        self.state.update(TUNING, name, HyperParameterTuningJobStatus="Stopping")
        self._tuning_stops.setdefault(name, threading.Event()).set()
        for trial in record["_local"]["trials"]:
            run = self._runs.get(trial)
            if run:
                run.stop()
        return metadata()

    def _trial_summary(self, tuning: dict, trial_name: str) -> dict | None:
        job = self.state.get(TRAINING, trial_name)
        if job is None:
            return None
        objective = tuning["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        summary = {
            "TrainingJobName": job["TrainingJobName"],
            "TrainingJobArn": job["TrainingJobArn"],
            "TuningJobName": tuning["HyperParameterTuningJobName"],
            "CreationTime": job["CreationTime"],
            "TrainingJobStatus": job["TrainingJobStatus"],
            "TunedHyperParameters": job["_local"].get("tuned", {}),
        }
        for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
            if key in job:
                summary[key] = job[key]
        final = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
        if objective["MetricName"] in final:
            summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "Type": objective["Type"],
                "MetricName": objective["MetricName"],
                "Value": final[objective["MetricName"]],
            }
        if job["TrainingJobStatus"] == "Completed":
            summary["ObjectiveStatus"] = (
                "Succeeded" if objective["MetricName"] in final else ("Failed")
            )
        elif job["TrainingJobStatus"] == "InProgress":
            summary["ObjectiveStatus"] = "Pending"
        else:
            summary["ObjectiveStatus"] = "Failed"
        return summary

    def _run_tuning(self, name: str) -> None:
        record = self.state.get(TUNING, name)
        config = record["HyperParameterTuningJobConfig"]
        definition = record["TrainingJobDefinition"]
        objective = config["HyperParameterTuningJobObjective"]["MetricName"]
        limits = config["ResourceLimits"]
        max_jobs = limits.get("MaxNumberOfTrainingJobs") or tuner.grid_size(
            config["ParameterRanges"]
        )
        parallel = max(1, min(limits["MaxParallelTrainingJobs"], max_jobs))
        dists = tuner.distributions(config["ParameterRanges"])
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        study = tuner.make_study(config, seed)
        finished, interrupted, counted = [], [], 0
        for trial in record["_local"]["trials"]:
            job = self.state.get(TRAINING, trial)
            local = job["_local"]
            if "optuna" in local:
                counted += 1
                finished.append(local["optuna"])
            elif job["TrainingJobStatus"] == "InProgress" and "params" in local:
                # Its process ended with the last `up`: run it again under its own name
                # with its own parameters, so the budget is spent once.
                counted += 1
                interrupted.append(trial)
                study.enqueue_trial(local["params"])
            elif job["TrainingJobStatus"] == "InProgress":
                self._finish_training(trial, JobResult("Failed", INTERRUPTED))
        tuner.replay(study, dists, finished)
        stop = self._tuning_stops.setdefault(name, threading.Event())
        lock = threading.Lock()
        threads_per_job = max(1, self.cpus // parallel)
        launched = [counted - len(interrupted)]

        def worker() -> None:
            while not stop.is_set() and not self._stopping.is_set():
                with lock:
                    rerun = bool(interrupted)
                    if not rerun and launched[0] + len(interrupted) >= max_jobs:
                        return
                    launched[0] += 1
                    trial = study.ask(dists)  # an interrupted trial's parameters come first
                    if rerun:
                        job_name = interrupted.pop(0)
                        self.say(f"[tuning] {name}: re-running interrupted trial {job_name}")
                    else:
                        trials = self.state.get(TUNING, name)["_local"]["trials"]
                        job_name = tuner.trial_job_name(name, len(trials) + 1)
                        self.state.update(TUNING, name, _local={"trials": [*trials, job_name]})
                        self.say(f"[tuning] {name}: trial {launched[0]}/{max_jobs} is {job_name}")
                self._run_trial(
                    name,
                    definition,
                    objective,
                    study,
                    trial,
                    job_name,
                    lock,
                    threads_per_job,
                    rerun,
                )
                self._update_tuning_counters(name)

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        if self._stopping.is_set():
            return  # resumes on restart
        self._finish_tuning(name, stopped=stop.is_set())

    def _run_trial(
        self, name, definition, objective, study, trial, job_name, lock, threads, rerun=False
    ):
        tuned = tuner.hyperparameters_of(trial.params)
        request = {
            "TrainingJobName": job_name,
            "HyperParameters": {
                **definition.get("StaticHyperParameters", {}),
                **tuned,
                "_tuning_objective_metric": objective,
            },
            "AlgorithmSpecification": definition["AlgorithmSpecification"],
            "RoleArn": definition["RoleArn"],
            "InputDataConfig": definition.get("InputDataConfig", []),
            "OutputDataConfig": definition["OutputDataConfig"],
            "ResourceConfig": definition["ResourceConfig"],
            "StoppingCondition": definition["StoppingCondition"],
        }
        self._create_training(
            request, parent=name, local={"tuned": tuned, "params": trial.params}, replace=rerun
        )
        reporter_box: list = []

        def on_metrics(metrics: dict) -> None:
            if reporter_box:
                with lock:
                    reporter_box[0](metrics)

        def ready(run: TrainingRun) -> None:
            reporter_box.append(tuner.TrialReporter(trial, objective, lambda: run.stop()))

        result = self._run_training(job_name, on_metrics, threads, ready=ready)
        if self._stopping.is_set() and result.status == "Stopped":
            return
        reporter = reporter_box[0] if reporter_box else None
        value = result.final_metrics.get(objective)
        with lock:
            if result.status == "Completed" and value is not None:
                study.tell(trial, value)
                state = "COMPLETE"
            elif reporter is not None and reporter.pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                state = "PRUNED"
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                state = "FAIL"
        job = self.state.get(TRAINING, job_name)
        self.state.update(
            TRAINING,
            job_name,
            _local={
                **job["_local"],
                "optuna": {
                    "params": trial.params,
                    "state": state,
                    "value": value,
                    "intermediate": reporter.intermediate if reporter else {},
                },
            },
        )
        shown = f"{objective}={value:.4f}" if value is not None else result.status
        if state == "PRUNED":
            shown = f"stopped early by the median rule after epoch {max(reporter.intermediate)}"
        elif state == "FAIL" and result.failure_reason:
            shown = f"failed: {training_failure.summary(result.failure_reason)[:200]}"
        self.say(f"[tuning] trial {job_name}: {json.dumps(tuned, sort_keys=True)} -> {shown}")

    def _update_tuning_counters(self, name: str) -> dict:
        record = self.state.get(TUNING, name)
        jobs = [self.state.get(TRAINING, t) for t in record["_local"]["trials"]]
        summaries = [self._trial_summary(record, t) for t in record["_local"]["trials"]]
        objective_counts = {"Succeeded": 0, "Pending": 0, "Failed": 0}
        for summary in summaries:
            if summary:
                objective_counts[summary["ObjectiveStatus"]] += 1
        return self.state.update(
            TUNING,
            name,
            TrainingJobStatusCounters=_counters([j for j in jobs if j]),
            ObjectiveStatusCounters=objective_counts,
            LastModifiedTime=_stamp(),
        )

    def _finish_tuning(self, name: str, stopped: bool) -> None:
        record = self._update_tuning_counters(name)
        objective = record["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        candidates = [
            s
            for s in (self._trial_summary(record, t) for t in record["_local"]["trials"])
            if s
            and s["TrainingJobStatus"] == "Completed"
            and "FinalHyperParameterTuningJobObjectiveMetric" in s
        ]
        changes: dict = {"HyperParameterTuningEndTime": _stamp(), "LastModifiedTime": _stamp()}
        if candidates:
            pick = max if objective["Type"] == "Maximize" else min
            changes["BestTrainingJob"] = pick(
                candidates, key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
            )
        if stopped:
            changes["HyperParameterTuningJobStatus"] = "Stopped"
        elif candidates:
            changes["HyperParameterTuningJobStatus"] = "Completed"
        else:
            changes["HyperParameterTuningJobStatus"] = "Failed"
            reasons = sorted(
                {
                    training_failure.summary(
                        (self.state.get(TRAINING, t) or {}).get("FailureReason", "")
                    )
                    for t in record["_local"]["trials"]
                }
                - {""}
            )
            changes["FailureReason"] = (
                "No training job succeeded: " + "; ".join(reasons)[:900]
                if reasons
                else "No training job succeeded"
            )
        record = self.state.update(TUNING, name, **changes)
        self._emit_tuning(record)

    def _emit_tuning(self, record: dict) -> None:
        detail = _event_detail(record)
        detail.pop("TrainingJobDefinition", None)
        status = record["HyperParameterTuningJobStatus"]
        event_id = None
        if status in ("Completed", "Failed", "Stopped"):
            event_id = f"tuning:{record['HyperParameterTuningJobName']}:{status}"
        self.emit(TUNING_EVENT, detail, [record["HyperParameterTuningJobArn"]], event_id)

    # models, endpoint configs, endpoints ----------------------------------------------------
    def create_model(self, **params) -> dict:
        validate("sagemaker", "create_model", params)
        name = params["ModelName"]
        model_arn = arn("model", name)
        record = {
            "ModelName": name,
            "ModelArn": model_arn,
            "PrimaryContainer": params.get("PrimaryContainer", {}),
            "ExecutionRoleArn": params.get("ExecutionRoleArn", ""),
            "CreationTime": _stamp(),
            "EnableNetworkIsolation": params.get("EnableNetworkIsolation", False),
        }
        if not self.state.insert(MODEL, name, record):
            raise client_error(
                "CreateModel",
                "ValidationException",
                f'Cannot create already existing model "{model_arn}".',
            )
        self._tag(model_arn, params.get("Tags", []))
        return {**metadata(), "ModelArn": model_arn}

    def describe_model(self, **params) -> dict:
        validate("sagemaker", "describe_model", params)
        return _public(self._get(MODEL, params["ModelName"], "DescribeModel", "model"))

    def delete_model(self, **params) -> dict:
        validate("sagemaker", "delete_model", params)
        self._get(MODEL, params["ModelName"], "DeleteModel", "model")
        self.state.delete(MODEL, params["ModelName"])
        return metadata()

    def create_endpoint_config(self, **params) -> dict:
        validate("sagemaker", "create_endpoint_config", params)
        name = params["EndpointConfigName"]
        for variant in params["ProductionVariants"]:
            self._get(MODEL, variant["ModelName"], "CreateEndpointConfig", "model")
            problem = _capacity_problem(variant)
            if problem:
                raise client_error("CreateEndpointConfig", "ValidationException", problem)
        config_arn = arn("endpoint-config", name)
        record = {
            "EndpointConfigName": name,
            "EndpointConfigArn": config_arn,
            "ProductionVariants": params["ProductionVariants"],
            "CreationTime": _stamp(),
        }
        if not self.state.insert(CONFIG, name, record):
            raise client_error(
                "CreateEndpointConfig",
                "ValidationException",
                f'Cannot create already existing endpoint configuration "{config_arn}".',
            )
        self._tag(config_arn, params.get("Tags", []))
        return {**metadata(), "EndpointConfigArn": config_arn}

    def describe_endpoint_config(self, **params) -> dict:
        validate("sagemaker", "describe_endpoint_config", params)
        name = params["EndpointConfigName"]
        return _public(self._get(CONFIG, name, "DescribeEndpointConfig", "endpoint configuration"))

    def delete_endpoint_config(self, **params) -> dict:
        validate("sagemaker", "delete_endpoint_config", params)
        name = params["EndpointConfigName"]
        self._get(CONFIG, name, "DeleteEndpointConfig", "endpoint configuration")
        self.state.delete(CONFIG, name)
        return metadata()

    def create_endpoint(self, **params) -> dict:
        validate("sagemaker", "create_endpoint", params)
        name, config = params["EndpointName"], params["EndpointConfigName"]
        self._get(CONFIG, config, "CreateEndpoint", "endpoint configuration")
        endpoint_arn = arn("endpoint", name)
        record = {
            "EndpointName": name,
            "EndpointArn": endpoint_arn,
            "EndpointConfigName": config,
            "EndpointStatus": "Creating",
            "CreationTime": _stamp(),
            "LastModifiedTime": _stamp(),
        }
        if not self.state.insert(ENDPOINT, name, record):
            raise client_error(
                "CreateEndpoint",
                "ValidationException",
                f'Cannot create already existing endpoint "{endpoint_arn}".',
            )
        self._tag(endpoint_arn, params.get("Tags", []))
        self._emit_endpoint(record, "CREATING")
        self._background(self._deploy, name, config)
        return {**metadata(), "EndpointArn": endpoint_arn}

    def update_endpoint(self, **params) -> dict:
        validate("sagemaker", "update_endpoint", params)
        name, config = params["EndpointName"], params["EndpointConfigName"]
        record = self._get(ENDPOINT, name, "UpdateEndpoint", "endpoint")
        self._get(CONFIG, config, "UpdateEndpoint", "endpoint configuration")
        if record["EndpointStatus"] not in ("InService", "Failed"):
            raise client_error(
                "UpdateEndpoint",
                "ValidationException",
                f'Cannot update in-progress endpoint "{record["EndpointArn"]}".',
            )
        record = self.state.update(
            ENDPOINT, name, EndpointStatus="Updating", LastModifiedTime=_stamp()
        )
        self._emit_endpoint(record, "UPDATING")
        self._background(self._deploy, name, config)
        return {**metadata(), "EndpointArn": record["EndpointArn"]}

    def describe_endpoint(self, **params) -> dict:
        validate("sagemaker", "describe_endpoint", params)
        return _public(self._get(ENDPOINT, params["EndpointName"], "DescribeEndpoint", "endpoint"))

    def delete_endpoint(self, **params) -> dict:
        validate("sagemaker", "delete_endpoint", params)
        name = params["EndpointName"]
        self._get(ENDPOINT, name, "DeleteEndpoint", "endpoint")
        server = self.servers.pop(name, None)
        if server:
            server.close()
        self.state.delete(ENDPOINT, name)
        return metadata()

    def list_tags(self, **params) -> dict:
        validate("sagemaker", "list_tags", params)
        tags = self.state.get(TAGS, params["ResourceArn"]) or {"Tags": []}
        return {**metadata(), "Tags": tags["Tags"]}

    def endpoint_port(self, name: str) -> int | None:
        server = self.servers.get(name)
        record = self.state.get(ENDPOINT, name)
        if (
            server is None
            or record is None
            or record["EndpointStatus"]
            not in (
                "InService",
                "Updating",
            )
        ):
            return None
        return server.port

    @contextlib.contextmanager
    def invocation_slot(self, name: str):
        """One of a serverless endpoint's MaxConcurrency places, for one invocation; none
        free → ``ThrottlingException`` (HTTP 400, no message), as SageMaker answers."""
        limit = self._invocation_limits.get(name)
        if limit is None:
            yield
            return
        if not limit.acquire(blocking=False):
            raise client_error("InvokeEndpoint", "ThrottlingException", None)
        try:
            yield
        finally:
            limit.release()

    def _deploy(self, name: str, config_name: str, announce: bool = True) -> None:
        """Load the config's model and serve it; ``announce=False`` (a restart bringing
        back an endpoint that was already in service) sends no state-change event, so no
        second "endpoint ready" notice."""
        with self._endpoint_lock:
            try:
                config = self.state.get(CONFIG, config_name)
                variant = config["ProductionVariants"][0]
                model = self.state.get(MODEL, variant["ModelName"])
                container = model["PrimaryContainer"]
                parsed = urlparse(container["ModelDataUrl"])
                body = self.s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
                folder = self.root / "endpoints" / name / config_name
                unpack_model(body["Body"].read(), folder)
                worker = ModelWorker(folder, container.get("Environment", {}))
            except Exception as exc:
                reason = f"Failed to start the model of {config_name}: {exc}"
                record = self.state.get(ENDPOINT, name)
                serving = name in self.servers and record["EndpointStatus"] == "Updating"
                record = self.state.update(
                    ENDPOINT,
                    name,
                    EndpointStatus="InService" if serving else "Failed",
                    FailureReason=reason,
                    LastModifiedTime=_stamp(),
                )
                self._emit_endpoint(record, "FAILED")
                return
            server = self.servers.get(name)
            if server is None:
                server = self.servers[name] = EndpointServer(name)
            server.swap(worker)
            serverless = variant.get("ServerlessConfig")
            if serverless:
                limit = threading.BoundedSemaphore(serverless["MaxConcurrency"])
                self._invocation_limits[name] = limit
            else:
                self._invocation_limits.pop(name, None)
            summary = {
                "VariantName": variant["VariantName"],
                "CurrentWeight": variant.get("InitialVariantWeight", 1.0),
                "DesiredWeight": variant.get("InitialVariantWeight", 1.0),
            }
            if serverless:
                summary["CurrentServerlessConfig"] = serverless
                summary["DesiredServerlessConfig"] = serverless
            else:
                summary["CurrentInstanceCount"] = variant.get("InitialInstanceCount", 1)
                summary["DesiredInstanceCount"] = variant.get("InitialInstanceCount", 1)
            record = self.state.update(
                ENDPOINT,
                name,
                EndpointStatus="InService",
                EndpointConfigName=config_name,
                ProductionVariants=[summary],
                LastModifiedTime=_stamp(),
                _local={"port": server.port, "model_dir": str(folder)},
            )
            record.pop("FailureReason", None)
            self.say(f"[endpoint] {name} in service on 127.0.0.1:{server.port} ({config_name})")
            if announce:
                self._emit_endpoint(record, "IN_SERVICE")

    def _emit_endpoint(self, record: dict, status: str) -> None:
        detail = {
            "EndpointName": record["EndpointName"],
            "EndpointArn": record["EndpointArn"],
            "EndpointConfigName": record["EndpointConfigName"],
            "EndpointStatus": status,
            "CreationTime": record["CreationTime"],
            "LastModifiedTime": record["LastModifiedTime"],
        }
        if status == "FAILED" and record.get("FailureReason"):
            detail["FailureReason"] = record["FailureReason"]
        self.emit(ENDPOINT_EVENT, _event_detail(detail), [record["EndpointArn"]])

    # helpers -------------------------------------------------------------------------------
    def _get(self, kind: str, name: str, operation: str, what: str) -> dict:
        record = self.state.get(kind, name)
        if record is None:
            resource = {"endpoint configuration": "endpoint-config"}.get(what, what)
            raise client_error(
                operation,
                "ValidationException",
                f'Could not find {what} "{arn(resource, name)}".',
            )
        return record

    def _tag(self, resource_arn: str, tags: list[dict]) -> None:
        if tags:
            self.state.put(TAGS, resource_arn, {"Tags": tags})


def _capacity_problem(variant: dict) -> str | None:
    """A variant is served by instances or serverless, never both; a serverless one
    within the API's limits."""
    serverless = variant.get("ServerlessConfig")
    if serverless is None:
        if not variant.get("InstanceType"):
            return f"variant {variant['VariantName']} needs an InstanceType or a ServerlessConfig"
        return None
    if variant.get("InstanceType") or variant.get("InitialInstanceCount"):
        return (
            f"variant {variant['VariantName']}: ServerlessConfig cannot be combined with "
            "InstanceType or InitialInstanceCount"
        )
    return aws_limits.serverless_problem(serverless)


def _max_training_jobs(cpus: int) -> int:
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


def _counters(jobs: list[dict]) -> dict:
    counters = {
        "Completed": 0,
        "InProgress": 0,
        "RetryableError": 0,
        "NonRetryableError": 0,
        "Stopped": 0,
    }
    for job in jobs:
        status = job["TrainingJobStatus"]
        if status == "Failed":
            counters["NonRetryableError"] += 1
        elif status in counters:
            counters[status] += 1
    return counters
