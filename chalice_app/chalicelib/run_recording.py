"""The pipeline steps' MLflow runs (``experiment_tracking``), with the step's settings
and clients: the tuning job's run at its start (only when its trials log themselves),
the tuning job and its trials when it ends, the debug job with its Model Registry
version, and a version's later approval. Each returns what to say in the notice and
never raises: tracking is never a reason for a step to fail."""

from __future__ import annotations

from chalicelib import experiment_tracking, naming, registry, vocabulary
from chalicelib.clients import client
from chalicelib.settings import Settings


def at_tuning_start(settings: Settings, upload) -> tuple[experiment_tracking.Recorded, str | None]:
    """The tuning job's run, made at its start when its trials will log themselves
    (network isolation off): they nest under it. Otherwise it is made when tuning ends."""
    if not settings.tracking_uri or settings.network_isolation:
        return experiment_tracking.Recorded(), None
    name = upload.tuning_job_name
    dataset = naming.pipeline_name(upload.key)

    def work() -> dict[str, str]:
        tracker = experiment_tracking.Tracker(settings.tracking_uri)
        experiment = tracker.experiment(dataset, settings.mlflow_artifact_root or None)
        tags = {experiment_tracking.TAG_JOB: name, experiment_tracking.TAG_KIND: "tuning",
                experiment_tracking.TAG_DATASET: dataset,
                experiment_tracking.TAG_TUNING_JOB: name}  # fmt: skip
        return {name: tracker.start(experiment, name, tags)}

    recorded = experiment_tracking.guarded(f"tuning job {name}", work)
    return recorded, recorded.runs.get(name)


def tuning_ended(
    settings: Settings, sagemaker, tuning: dict, upload
) -> experiment_tracking.Recorded:
    """The tuning job and its trials as MLflow runs (off without a tracking URI)."""
    if not settings.tracking_uri:
        return experiment_tracking.Recorded()
    name = tuning["HyperParameterTuningJobName"]
    return experiment_tracking.guarded(
        f"tuning job {name}",
        lambda: experiment_tracking.record_tuning(
            experiment_tracking.Tracker(settings.tracking_uri), sagemaker, client("s3"), tuning,
            naming.pipeline_name(upload.key), settings.mlflow_artifact_root or None,
        ),
    )  # fmt: skip


def debug_registered(
    settings: Settings,
    training: dict,
    upload,
    package: dict,
    metrics: dict[str, float],
    reports: dict[str, str] | None = None,
) -> experiment_tracking.Recorded:
    """The debug job as an MLflow run, tagged with the version the gate registered."""
    if not settings.tracking_uri:
        return experiment_tracking.Recorded()
    tags = {
        experiment_tracking.TAG_MODEL_PACKAGE: package["ModelPackageArn"],
        experiment_tracking.TAG_APPROVAL: package["ModelApprovalStatus"],
        "sagedrop.model_version": str(package["ModelPackageVersion"]),
        **_tuning_tag(training),
        **{f"sagedrop.{kind}_uri": uri for kind, uri in (reports or {}).items()},
    }
    return experiment_tracking.guarded(
        f"debug job {training['TrainingJobName']}",
        lambda: experiment_tracking.record_debug(
            experiment_tracking.Tracker(settings.tracking_uri), client("s3"), training,
            naming.pipeline_name(upload.key), settings.mlflow_artifact_root or None, tags,
            metrics,
        ),
    )  # fmt: skip


def _tuning_tag(training: dict) -> dict[str, str]:
    return {experiment_tracking.TAG_TUNING_JOB: naming.tuning_job_of(training["TrainingJobName"])}


def debug_metrics(training: dict) -> dict[str, float]:
    return experiment_tracking.final_metrics(training)


def approval_changed(settings: Settings, dataset: str, arn: str, approval: str) -> None:
    """A version approved or rejected later (a person, a rollback): its debug run's tag."""
    if not settings.tracking_uri or not arn:
        return

    def work() -> dict[str, str]:
        described = registry.describe(client("sagemaker"), arn)
        debug_job = described.get("CustomerMetadataProperties", {}).get(vocabulary.META_DEBUG_JOB)
        if not debug_job:
            return {}
        tracker = experiment_tracking.Tracker(settings.tracking_uri)
        tags = {experiment_tracking.TAG_APPROVAL: approval}
        return experiment_tracking.tag_version(tracker, dataset, debug_job, tags)

    experiment_tracking.guarded(f"version {arn}", work)
