"""Tuning jobs: the CreateHyperParameterTuningJob family, and each job's run with Optuna.

``TuningJobs`` answers the API; ``TuningRun`` is one job while it runs (its Optuna study,
the lock around it, the trial counters and the trials a restart interrupted), as
``TrainingRun`` is for one training job. A trial's early stopping (median rule or
Hyperband) is decided in ``sagedrop.local.tuner.TrialReporter``, fed from here.
"""

from __future__ import annotations

import hashlib
import json
import threading

import optuna

from chalicelib import aws_limits, training_failure
from sagedrop.local import tuner
from sagedrop.local.aws_shapes import arn, event_detail, metadata, public, stamp, validate
from sagedrop.local.sagemaker import errors
from sagedrop.local.sagemaker.common import TRAINING, TUNING, TUNING_EVENT, Context
from sagedrop.local.sagemaker.training_jobs import INTERRUPTED, TrainingJobs
from sagedrop.local.training import JobResult, TrainingRun

NOT_FOUND = "Amazon SageMaker can't find a tuning job with name {}"


class TuningJobs:
    def __init__(self, context: Context, training: TrainingJobs):
        self.context = context
        self.state = context.state
        self.training = training
        self._stops: dict[str, threading.Event] = {}

    # the API -------------------------------------------------------------------------------
    def create_hyper_parameter_tuning_job(self, **params) -> dict:
        operation = "CreateHyperParameterTuningJob"
        validate("sagemaker", "create_hyper_parameter_tuning_job", params)
        name = params["HyperParameterTuningJobName"]
        config = params["HyperParameterTuningJobConfig"]
        definition = params.get("TrainingJobDefinition")
        if definition is None:
            raise errors.validation(
                operation,
                "TrainingJobDefinition is required (TrainingJobDefinitions is not supported "
                "locally)",
            )
        problem = _request_problem(config, definition)
        if problem:
            raise errors.validation(operation, problem)
        job_arn = arn("hyper-parameter-tuning-job", name)
        record = {
            "HyperParameterTuningJobName": name,
            "HyperParameterTuningJobArn": job_arn,
            "HyperParameterTuningJobConfig": config,
            "TrainingJobDefinition": definition,
            "HyperParameterTuningJobStatus": "InProgress",
            "CreationTime": stamp(),
            "LastModifiedTime": stamp(),
            "TrainingJobStatusCounters": _counters([]),
            "ObjectiveStatusCounters": {"Succeeded": 0, "Pending": 0, "Failed": 0},
            "_local": {"trials": []},
        }
        if not self.state.insert(TUNING, name, record):
            raise errors.resource_in_use(
                operation,
                f"Hyperparameter tuning job names must be unique within an AWS account and "
                f"region, and a tuning job with this name already exists ({job_arn})",
            )
        self.context.tag(job_arn, params.get("Tags", []))
        self.emit(record)
        self.context.background(self.run, name)
        return {**metadata(), "HyperParameterTuningJobArn": job_arn}

    def describe_hyper_parameter_tuning_job(self, **params) -> dict:
        validate("sagemaker", "describe_hyper_parameter_tuning_job", params)
        return public(self._get(params, "DescribeHyperParameterTuningJob"))

    def list_training_jobs_for_hyper_parameter_tuning_job(self, **params) -> dict:
        validate("sagemaker", "list_training_jobs_for_hyper_parameter_tuning_job", params)
        record = self._get(params, "ListTrainingJobsForHyperParameterTuningJob")
        summaries = [s for s in self.summaries(record) if s]
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
        response = {**metadata(), "TrainingJobSummaries": [public(s) for s in page]}
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
            raise errors.validation("StopHyperParameterTuningJob", f"{name} is not running")
        self.state.update(TUNING, name, HyperParameterTuningJobStatus="Stopping")
        self.stop_event(name).set()
        for trial in record["_local"]["trials"]:
            run = self.training.runs.get(trial)
            if run:
                run.stop()
        return metadata()

    # lifecycle -----------------------------------------------------------------------------
    def resume(self) -> None:
        for job in self.state.all(TUNING):
            if job["HyperParameterTuningJobStatus"] in ("InProgress", "Stopping"):
                name = job["HyperParameterTuningJobName"]
                self.context.say(f"[sagemaker] resuming tuning job {name}")
                self.context.background(self.run, name)
            else:
                self.emit(job)

    def run(self, name: str) -> None:
        TuningRun(self, name).run()

    def stop_event(self, name: str) -> threading.Event:
        return self._stops.setdefault(name, threading.Event())

    # the record ------------------------------------------------------------------------------
    def _get(self, params: dict, operation: str) -> dict:
        name = params["HyperParameterTuningJobName"]
        record = self.state.get(TUNING, name)
        if record is None:
            raise errors.resource_not_found(operation, NOT_FOUND.format(name))
        return record

    def summaries(self, tuning: dict) -> list[dict | None]:
        return [self.trial_summary(tuning, t) for t in tuning["_local"]["trials"]]

    def trial_summary(self, tuning: dict, trial_name: str) -> dict | None:
        """One ``HyperParameterTrainingJobSummary``; None for a trial not recorded yet."""
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
                "Succeeded" if objective["MetricName"] in final else "Failed"
            )
        elif job["TrainingJobStatus"] == "InProgress":
            summary["ObjectiveStatus"] = "Pending"
        else:
            summary["ObjectiveStatus"] = "Failed"
        return summary

    def update_counters(self, name: str) -> dict:
        record = self.state.record(TUNING, name)
        jobs = [self.state.get(TRAINING, t) for t in record["_local"]["trials"]]
        objective_counts = {"Succeeded": 0, "Pending": 0, "Failed": 0}
        for summary in self.summaries(record):
            if summary:
                objective_counts[summary["ObjectiveStatus"]] += 1
        return self.state.update(
            TUNING,
            name,
            TrainingJobStatusCounters=_counters([j for j in jobs if j]),
            ObjectiveStatusCounters=objective_counts,
            LastModifiedTime=stamp(),
        )

    def finish(self, name: str, stopped: bool) -> None:
        record = self.update_counters(name)
        objective = record["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        candidates = [
            s
            for s in self.summaries(record)
            if s
            and s["TrainingJobStatus"] == "Completed"
            and "FinalHyperParameterTuningJobObjectiveMetric" in s
        ]
        changes: dict = {"HyperParameterTuningEndTime": stamp(), "LastModifiedTime": stamp()}
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
        self.emit(record)

    def emit(self, record: dict) -> None:
        detail = event_detail(record)
        detail.pop("TrainingJobDefinition", None)
        status = record["HyperParameterTuningJobStatus"]
        event_id = None
        if status in ("Completed", "Failed", "Stopped"):
            event_id = f"tuning:{record['HyperParameterTuningJobName']}:{status}"
        self.context.emit(TUNING_EVENT, detail, [record["HyperParameterTuningJobArn"]], event_id)


class TuningRun:
    """One tuning job while it runs: its study, the lock around it, and its counters.

    ``MaxParallelTrainingJobs`` workers each ask the study for the next trial, run it as
    a training job, and tell the study how it ended, until the budget is spent or the job
    is stopped. Trials a restart interrupted run again first, under their own names and
    with their own parameters, so the budget is spent once.
    """

    def __init__(self, jobs: TuningJobs, name: str):
        self.jobs = jobs
        self.context = jobs.context
        self.state = jobs.state
        self.name = name
        record = self.state.record(TUNING, name)
        config = record["HyperParameterTuningJobConfig"]
        self.definition = record["TrainingJobDefinition"]
        self.objective = config["HyperParameterTuningJobObjective"]["MetricName"]
        limits = config["ResourceLimits"]
        self.max_jobs = limits.get("MaxNumberOfTrainingJobs") or tuner.grid_size(
            config["ParameterRanges"]
        )
        self.parallel = max(1, min(limits["MaxParallelTrainingJobs"], self.max_jobs))
        self.threads_per_job = max(1, self.context.cpus // self.parallel)
        self.dists = tuner.distributions(config["ParameterRanges"])
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        self.study = tuner.make_study(config, seed)
        self.lock = threading.Lock()
        self.stop = jobs.stop_event(name)
        self.interrupted: list[str] = []
        self.launched = self._replay(record["_local"]["trials"])

    def _replay(self, trials: list[str]) -> int:
        """Tell the study what earlier runs of this job learned; the trials launched so far
        (interrupted ones not counted: they are launched again)."""
        finished, counted = [], 0
        for trial in trials:
            job = self.state.record(TRAINING, trial)
            local = job["_local"]
            if "optuna" in local:
                counted += 1
                finished.append(local["optuna"])
            elif job["TrainingJobStatus"] == "InProgress" and "params" in local:
                # Its process ended with the last `up`: run it again, same name and params.
                counted += 1
                self.interrupted.append(trial)
                self.study.enqueue_trial(local["params"])
            elif job["TrainingJobStatus"] == "InProgress":
                self.jobs.training.finish(trial, JobResult("Failed", INTERRUPTED))
        tuner.replay(self.study, self.dists, finished)
        return counted - len(self.interrupted)

    def run(self) -> None:
        workers = [threading.Thread(target=self._work, daemon=True) for _ in range(self.parallel)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        if self.context.stopping.is_set():
            return  # resumes on restart
        self.jobs.finish(self.name, stopped=self.stop.is_set())

    def _work(self) -> None:
        while not self.stop.is_set() and not self.context.stopping.is_set():
            picked = self._next_trial()
            if picked is None:
                return
            self._run_trial(*picked)
            self.jobs.update_counters(self.name)

    def _next_trial(self) -> tuple[optuna.Trial, str, bool] | None:
        """The next trial and its job name (an interrupted one first), or None when the
        budget is spent."""
        with self.lock:
            rerun = bool(self.interrupted)
            if not rerun and self.launched + len(self.interrupted) >= self.max_jobs:
                return None
            self.launched += 1
            trial = self.study.ask(self.dists)  # an interrupted trial's parameters come first
            if rerun:
                job_name = self.interrupted.pop(0)
                self.context.say(f"[tuning] {self.name}: re-running interrupted trial {job_name}")
            else:
                trials = self.state.record(TUNING, self.name)["_local"]["trials"]
                job_name = tuner.trial_job_name(self.name, len(trials) + 1)
                self.state.update(TUNING, self.name, _local={"trials": [*trials, job_name]})
                self.context.say(
                    f"[tuning] {self.name}: trial {self.launched}/{self.max_jobs} is {job_name}"
                )
        return trial, job_name, rerun

    def _run_trial(self, trial: optuna.Trial, job_name: str, rerun: bool) -> None:
        tuned = tuner.hyperparameters_of(trial.params)
        definition = self.definition
        request = {
            "TrainingJobName": job_name,
            "HyperParameters": {
                **definition.get("StaticHyperParameters", {}),
                **tuned,
                "_tuning_objective_metric": self.objective,
            },
            "AlgorithmSpecification": definition["AlgorithmSpecification"],
            "RoleArn": definition["RoleArn"],
            "EnableNetworkIsolation": definition.get("EnableNetworkIsolation", False),
            **({"Environment": definition["Environment"]} if "Environment" in definition else {}),
            "InputDataConfig": definition.get("InputDataConfig", []),
            "OutputDataConfig": definition["OutputDataConfig"],
            "ResourceConfig": definition["ResourceConfig"],
            "StoppingCondition": definition["StoppingCondition"],
        }
        training = self.jobs.training
        training.record_new(
            request, parent=self.name, local={"tuned": tuned, "params": trial.params}, replace=rerun
        )
        reporter: tuner.TrialReporter | None = None

        def ready(run: TrainingRun) -> None:
            nonlocal reporter
            reporter = tuner.TrialReporter(trial, self.objective, lambda: run.stop())

        def on_metrics(metrics: dict) -> None:
            if reporter is not None:
                with self.lock:
                    reporter(metrics)

        result = training.run(job_name, on_metrics, self.threads_per_job, ready=ready)
        if self.context.stopping.is_set() and result.status == "Stopped":
            return
        self._tell(trial, job_name, tuned, result, reporter)

    def _tell(self, trial, job_name: str, tuned: dict, result: JobResult, reporter) -> None:
        """The study learns how the trial ended; the job's record keeps it for a restart."""
        value = result.final_metrics.get(self.objective)
        with self.lock:
            if result.status == "Completed" and value is not None:
                self.study.tell(trial, value)
                state = "COMPLETE"
            elif reporter is not None and reporter.pruned:
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                state = "PRUNED"
            else:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                state = "FAIL"
        job = self.state.record(TRAINING, job_name)
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
        shown = f"{self.objective}={value:.4f}" if value is not None else result.status
        if state == "PRUNED":
            shown = f"stopped early by the median rule after epoch {max(reporter.intermediate)}"
        elif state == "FAIL" and result.failure_reason:
            shown = f"failed: {training_failure.summary(result.failure_reason)[:200]}"
        self.context.say(
            f"[tuning] trial {job_name}: {json.dumps(tuned, sort_keys=True)} -> {shown}"
        )


def _request_problem(config: dict, definition: dict) -> str | None:
    """What SageMaker refuses in a tuning request beyond botocore's shapes."""
    ranges = config["ParameterRanges"]
    tuned = {r["Name"] for group in ranges.values() for r in group}
    clash = tuned & set(definition.get("StaticHyperParameters", {}))
    if clash:
        return f"hyperparameters both static and tuned: {', '.join(sorted(clash))}"
    problem = aws_limits.parameter_ranges_problem(config["Strategy"], ranges)
    if problem:
        return problem
    limits = config.get("ResourceLimits", {})
    if config["Strategy"] == "Grid" and "MaxNumberOfTrainingJobs" in limits:
        return "MaxNumberOfTrainingJobs must not be set for Grid search"
    if config["Strategy"] != "Grid" and not limits.get("MaxNumberOfTrainingJobs"):
        return "MaxNumberOfTrainingJobs is required"
    return None


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
