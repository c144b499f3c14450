"""What ``sagedrop status`` and ``sagedrop report`` show: per dataset (its pipeline), and
per run.

A pipeline belongs to a dataset (its name, endpoint and registry versions); a run is one
upload of it: its tuning job, trials, debug job, rule verdicts, gate
decision, endpoint and predictions, gathered from the state, the job folders and the
notification log. Read-only, so it works while ``sagedrop up`` runs in another process.
"""

from __future__ import annotations

import json
from pathlib import Path

from chalicelib import naming, vocabulary
from sagedrop.local.aws_shapes import arn
from sagedrop.local.sns import read_notifications
from sagedrop.local.state import State


def notifications(root: Path) -> list[dict]:
    folder = root / "notifications"
    found = []
    for path in sorted(folder.glob("*.jsonl")) if folder.exists() else []:
        found += read_notifications(path)
    return found


def predictions(root: Path, inference_bucket: str = "sagedrop-inference") -> list[dict]:
    folder = root / "buckets" / inference_bucket
    out = []
    for path in sorted(folder.rglob("*.json")) if folder.exists() else []:
        try:
            out.append({"path": str(path), **json.loads(path.read_text())})
        except (ValueError, OSError):
            continue
    return out


def rules_of(root: Path, job: str) -> list[dict]:
    """The debug job's verdicts: rule_verdicts.json (with step, tensor and advice) when the
    job wrote it, else the plain rules.json."""
    folder = root / "jobs" / job / "output" / "data"
    for name in ("rule_verdicts.json", "rules.json"):
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
    return []


def runs(root: Path, state: State) -> list[dict]:
    """One summary per upload's run, oldest first; a run is named by its tuning job."""
    root = Path(root)
    notices = notifications(root)
    made = predictions(root)
    out = []
    for tuning in state.all("tuning-job"):
        name = tuning["HyperParameterTuningJobName"]
        tags = {
            t["Key"]: t["Value"]
            for t in (state.get("tags", tuning["HyperParameterTuningJobArn"]) or {}).get("Tags", [])
        }
        limits = tuning["HyperParameterTuningJobConfig"]["ResourceLimits"]
        trials = []
        for trial_name in tuning["_local"]["trials"]:
            job = state.get("training-job", trial_name) or {}
            final = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
            trials.append(
                {
                    "name": trial_name,
                    "status": job.get("TrainingJobStatus"),
                    "secondary_status": job.get("SecondaryStatus"),
                    "hyperparameters": job.get("_local", {}).get("tuned", {}),
                    "objective": final.get("valid_accuracy"),
                    "early_stopped": job.get("_local", {}).get("optuna", {}).get("state")
                    == "PRUNED",
                    "failure_reason": job.get("FailureReason"),
                    "series": job.get("_local", {}).get("series", {}),
                }
            )
        best = tuning.get("BestTrainingJob")
        debug_name = naming.debug_job_name(name)
        debug = state.get("training-job", debug_name)
        debug_final = {
            m["MetricName"]: m["Value"] for m in (debug or {}).get("FinalMetricDataList", [])
        }
        model_name = naming.model_name(debug_name)
        gate = [
            n["event"]
            for n in notices
            if n.get("event", {}).get("stage") == "gate"
            and n["event"].get("jobs", {}).get("debug job") == debug_name
        ]
        failures = [
            n["event"]
            for n in notices
            if n.get("event", {}).get("status") in ("failed", "rejected")
            and (
                n["event"].get("dataset") == tags.get(vocabulary.TAG_DATASET)
                or name in n["event"].get("jobs", {}).values()
            )
        ]
        out.append(
            {
                "name": name,
                "dataset": tags.get(vocabulary.TAG_DATASET),
                "tuning": {
                    "status": tuning["HyperParameterTuningJobStatus"],
                    "strategy": tuning["HyperParameterTuningJobConfig"]["Strategy"],
                    "trials_started": len(trials),
                    "trials_planned": limits.get("MaxNumberOfTrainingJobs", len(trials)),
                    "counters": tuning.get("TrainingJobStatusCounters", {}),
                    "best_job": best["TrainingJobName"] if best else None,
                    "best_objective": (
                        best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
                        if best
                        else None
                    ),
                    "best_hyperparameters": best["TunedHyperParameters"] if best else None,
                    "failure_reason": tuning.get("FailureReason"),
                },
                "trials": trials,
                "debug_job": None
                if debug is None
                else {
                    "name": debug_name,
                    "status": debug["TrainingJobStatus"],
                    "secondary_status": debug.get("SecondaryStatus"),
                    "test_accuracy": debug_final.get("test_accuracy"),
                    "failure_reason": debug.get("FailureReason"),
                    "rules": rules_of(root, debug_name),
                    "report": _existing(
                        root / "jobs" / debug_name / "output" / "data" / "report.html"
                    ),
                    "evaluation": _existing(
                        root / "jobs" / debug_name / "output" / "data" / "evaluation.json"
                    ),
                    "audit": _existing(
                        root / "jobs" / debug_name / "output" / "data" / "data_audit.json"
                    ),
                    "log": _existing(root / "jobs" / debug_name / "logs.txt"),
                    "tensorboard": _existing(root / "jobs" / debug_name / "output" / "tensorboard"),
                    "series": debug.get("_local", {}).get("series", {}),
                },
                "gate": gate[-1] if gate else None,
                "failures": failures,
                "model": model_name if state.get("model", model_name) else None,
                "predictions": sum(
                    1 for p in made if (p.get("model") or {}).get("name") == model_name
                ),
            }
        )
    return out


def endpoints(state: State) -> list[dict]:
    out = []
    for endpoint in state.all("endpoint"):
        config = state.get("endpoint-config", endpoint["EndpointConfigName"]) or {}
        variants = config.get("ProductionVariants", [{}])
        out.append(
            {
                "name": endpoint["EndpointName"],
                "status": endpoint["EndpointStatus"],
                "config": endpoint["EndpointConfigName"],
                "model": variants[0].get("ModelName"),
                "port": endpoint.get("_local", {}).get("port"),
                "failure_reason": endpoint.get("FailureReason"),
                "arn": arn("endpoint", endpoint["EndpointName"]),
            }
        )
    return out


def datasets(root: Path, state: State, runs_seen: list[dict], prefix: str) -> list[dict]:
    """Per dataset: its runs (one per upload), its registry versions newest first, the one
    its endpoint serves, and how many predictions it made."""
    names = {naming.pipeline_name(p["dataset"] or p["name"]) for p in runs_seen}
    packages: dict[str, list[dict]] = {}
    for package in state.all("model-package"):
        pipeline = naming.pipeline_of_group(prefix, package["ModelPackageGroupName"])
        if pipeline:
            packages.setdefault(pipeline, []).append(package)
            names.add(pipeline)
    made = predictions(Path(root))
    out = []
    for name in sorted(names):
        endpoint_name = naming.endpoint_name(prefix, name)
        endpoint = state.get("endpoint", endpoint_name)
        serving = _serving_version(state, endpoint)
        versions = sorted(packages.get(name, []), key=lambda p: -p["ModelPackageVersion"])
        out.append(
            {
                "name": name,
                "runs": [
                    p["name"]
                    for p in runs_seen
                    if naming.pipeline_name(p["dataset"] or p["name"]) == name
                ],
                "endpoint": endpoint_name,
                "endpoint_status": endpoint["EndpointStatus"] if endpoint else None,
                "serving_version": serving,
                "versions": [_version_row(p, serving) for p in versions],
                "predictions": sum(1 for p in made if p.get("dataset") == name),
            }
        )
    return out


def _version_row(package: dict, serving: int | None) -> dict:
    properties = package.get("CustomerMetadataProperties", {})
    accuracy = properties.get(vocabulary.META_TEST_ACCURACY)
    macro_f1 = properties.get(vocabulary.META_MACRO_F1)
    return {
        "number": package["ModelPackageVersion"],
        "approval": package["ModelApprovalStatus"],
        "test_accuracy": None if accuracy is None else float(accuracy),
        "rules": properties.get(vocabulary.META_RULES, ""),
        "debug_job": properties.get(vocabulary.META_DEBUG_JOB, ""),
        "serving_kind": properties.get(vocabulary.META_SERVING, ""),
        "created": package["CreationTime"],
        "why": package.get("ApprovalDescription") or package.get("ModelPackageDescription", ""),
        "serving": package["ModelPackageVersion"] == serving,
        "macro_f1": None if macro_f1 is None else float(macro_f1),
        "worst_class": properties.get(vocabulary.META_WORST_CLASS, ""),
        "data_audit": properties.get(vocabulary.META_DATA_AUDIT, ""),
    }


def _serving_version(state: State, endpoint: dict | None) -> int | None:
    if not endpoint:
        return None
    config = state.get("endpoint-config", endpoint["EndpointConfigName"]) or {}
    model_name = (config.get("ProductionVariants") or [{}])[0].get("ModelName", "")
    model = state.get("model", model_name) or {}
    tags = (state.get("tags", model.get("ModelArn", "")) or {}).get("Tags", [])
    package = next((t["Value"] for t in tags if t["Key"] == vocabulary.TAG_MODEL_PACKAGE), "")
    number = package.rsplit("/", 1)[-1]
    return int(number) if number.isdigit() else None


def rejected_uploads(root: Path) -> list[dict]:
    return [
        n["event"]
        for n in notifications(root)
        if n.get("event", {}).get("stage") == "dataset" and n["event"].get("status") == "rejected"
    ]


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None
