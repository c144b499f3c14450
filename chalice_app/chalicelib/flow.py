"""The pipeline's steps, one function per event; the Chalice handlers only decode and call.

Each step returns an ``Outcome`` (``chalicelib.outcome``): its result word and the notice
it owes, which ``@concluded`` publishes, logs and counts in one place; so every outcome,
good or bad, ends in one SNS notice by structure, not by each branch remembering to.
Each step is idempotent: names come from ``naming``, so a repeated event meets the
resource it made the first time (``aws_errors.create_unless_exists``) and does nothing twice.

Where the work is: ``judging`` (what the gate weighs), ``gate`` (its decision),
``deploying`` (which version serves), ``predictions`` (an image's answer file).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
import zipfile
from collections.abc import Callable
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import (
    aws_errors,
    bounded_json,
    judging,
    naming,
    predictions,
    registering,
    registry,
    run_recording,
    sagemaker_requests,
    training_failure,
    vocabulary,
)
from chalicelib.clients import client
from chalicelib.deploying import deploy_latest
from chalicelib.notify import DELIVERY, Notice, Stage, publish
from chalicelib.outcome import Outcome, Result, RetryLater, concluded, logger, metrics
from chalicelib.s3_ranged import S3RangedFile
from chalicelib.settings import Settings, SettingsError
from sagedrop_contract.dataset_rules import CONFIG_NAME, Limits, inspect_zip

TERMINAL = ("Completed", "Failed", "Stopped")
MAX_CONFIG_BYTES = 64 * 1024


@contextlib.contextmanager
def handling(context, **correlation: str):
    """Around every handler: Lambda context and correlation keys in logs, metrics flushed.

    ``@logger.inject_lambda_context`` does not fit Chalice handlers (one event argument),
    so the context comes from ``event.context``.
    """
    logger.clear_state()
    if context is not None:
        logger.append_keys(
            function_name=getattr(context, "function_name", None),
            request_id=getattr(context, "aws_request_id", None),
        )
    logger.append_keys(**correlation)
    try:
        yield
    except Exception:
        logger.exception("handler failed")
        raise
    finally:
        metrics.flush_metrics(raise_on_empty_metrics=False)


def handle(
    context,
    stage: Stage,
    step: Callable[..., Result],
    *args,
    delivery: str = "",
    **correlation: str,
) -> Result:
    """Run one pipeline step for a handler, so that no failure ends only in a log.

    A transient error is raised again, for Lambda's retries; any other failure (a bug,
    a hostile input no check foresaw) is published as an ``error`` notice, since a retry
    would fail the same way, and the handler returns ``"failed"``. ``delivery`` names the
    event (``app.delivery_of``): the notices it causes carry ids made from it, so a
    re-delivered event's notices are known as the same ones.
    """
    token = DELIVERY.set(delivery)
    try:
        return _handle(context, stage, step, args, correlation)
    finally:
        DELIVERY.reset(token)


def _handle(context, stage: Stage, step: Callable[..., Result], args, correlation) -> Result:
    with handling(context, **correlation):
        try:
            return step(*args)
        except Exception as exc:
            if aws_errors.is_transient(exc):
                logger.warning("transient failure, Lambda retries: %s", exc)
                raise
            logger.exception("%s step failed", stage)
            _notify_failure(stage, exc, correlation)
            return "failed"


def _notify_failure(stage: Stage, error: Exception, correlation: dict[str, str]) -> None:
    """The notice of a step that raised: it never reached its own outcome."""
    reason = "".join(traceback.format_exception_only(error)).strip()
    notice = Notice(
        stage=stage,
        status="error",
        dataset=correlation.get("dataset"),
        jobs={k: v for k, v in correlation.items() if k != "dataset"},
        summary=f"The {stage} step failed and was not retried: {reason}",
        failure_reason=reason,
    )
    topic = os.environ.get("TOPIC_ARN", "")
    if not topic:
        return
    try:
        publish(client("sns"), topic, notice)
    except (ClientError, BotoCoreError):  # the step's failure is logged above; so is this
        logger.exception("the failure notice for the %s step could not be published", stage)


# --- 1. a dataset zip arrives: validate, start tuning ------------------------------------------
@concluded
def dataset_uploaded(bucket: str, key: str, etag: str, settings: Settings) -> Outcome:
    """Validate the zip from its central directory, then start tuning."""
    upload = vocabulary.Upload(bucket, key, etag)
    logger.append_keys(dataset=upload.uri, tuning_job=upload.tuning_job_name)
    source = S3RangedFile(client("s3"), bucket, key)
    report = inspect_zip(source, Limits(min_class_images=settings.dataset_min_class_images))
    problems = list(report.problems)
    job_settings = settings
    if report.usable and report.has_config:
        try:
            job_settings = settings.with_dataset_overrides(_read_config(source, report.prefix))
        except (SettingsError, ValueError) as exc:
            problems.append(str(exc))
    if problems:
        rejected = Notice(
            stage="dataset",
            status="rejected",
            dataset=upload.uri,
            summary=f"{key} was not accepted: {len(problems)} problem(s); nothing was started.",
            reasons=problems,
        )
        return Outcome("rejected", [rejected], ["DatasetsRejected"])
    tracked, parent_run = run_recording.at_tuning_start(job_settings, upload)
    request = sagemaker_requests.tuning_job_request(job_settings, upload, parent_run)
    sagemaker = client("sagemaker")
    if not aws_errors.create_unless_exists(sagemaker.create_hyper_parameter_tuning_job, request):
        logger.info("tuning job already exists: duplicate event, nothing to do")
        return Outcome("duplicate")
    limits = request["HyperParameterTuningJobConfig"]["ResourceLimits"]
    started = Notice(
        stage="tuning",
        status="started",
        dataset=upload.uri,
        jobs={"tuning job": upload.tuning_job_name},
        summary=(
            f"Tuning started for {key}: {len(report.classes)} classes, {report.image_count()} "
            f"images, up to {limits.get('MaxNumberOfTrainingJobs', 'all')} trials "
            f"({limits['MaxParallelTrainingJobs']} at a time)."
        ),
        metrics=_listing_metrics(report.listing_audit),
        reasons=report.warnings + tracked.notice_line(),
    )
    return Outcome("started", [started], ["JobsStarted"])


def _listing_metrics(audit: dict) -> dict[str, float]:
    """The upload's data-quality numbers (from the zip's listing) for its notice."""
    metrics = {f"leaked {split} images": float(n) for split, n in audit.get("leaked", {}).items()}
    for split, ratio in audit.get("imbalance", {}).items():
        metrics[f"imbalance {split}"] = float(ratio)
    if "small_classes" in audit:
        metrics["classes under the minimum"] = float(len(audit["small_classes"]))
    return metrics


def _read_config(source, prefix: str) -> dict:
    with zipfile.ZipFile(source) as archive:
        for name in (CONFIG_NAME, prefix + CONFIG_NAME):
            if name in archive.namelist():
                info = archive.getinfo(name)
                if info.file_size > MAX_CONFIG_BYTES:
                    raise ValueError(f"{CONFIG_NAME} is larger than {MAX_CONFIG_BYTES} bytes")
                return bounded_json.loads(archive.read(info), CONFIG_NAME)
    return {}


# --- 2. tuning ended: a debug/profile run with the best hyperparameters ----------------------
@concluded
def tuning_finished(detail: dict, settings: Settings) -> Outcome:
    name = detail.get("HyperParameterTuningJobName", "")
    status = detail.get("HyperParameterTuningJobStatus", "")
    if not naming.is_pipeline_tuning_job(name) or status not in TERMINAL:
        return Outcome("ignored")
    logger.append_keys(tuning_job=name)
    sagemaker = client("sagemaker")
    tuning = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    upload = _upload_of(tuning["TrainingJobDefinition"])
    best = tuning.get("BestTrainingJob")
    if tuning["HyperParameterTuningJobStatus"] != "Completed" or not best:
        reason = tuning.get("FailureReason") or (
            "no training job completed" if not best else f"status {status}"
        )
        trial = _failed_trial_reason(sagemaker, name) if not best else None
        if trial and trial not in reason:  # "All training jobs failed" says nothing of why
            reason = f"{reason}; the first failed trial: {trial}"
        tracked = run_recording.tuning_ended(settings, sagemaker, tuning, upload)
        failed = Notice(
            stage="tuning",
            status="failed",
            dataset=upload.uri,
            jobs={"tuning job": name},
            summary=f"Tuning job {name} ended {tuning['HyperParameterTuningJobStatus']}: {reason}.",
            reasons=tracked.notice_line(),
            failure_reason=reason,
        )
        return Outcome("failed", [failed], ["JobsFailed"])
    tags = _tags_of(sagemaker, tuning.get("HyperParameterTuningJobArn"))
    endpoint = settings.endpoint_for(naming.pipeline_name(upload.key))
    request = sagemaker_requests.debug_training_job_request(
        settings,
        upload,
        tuning,
        tags.get(vocabulary.TAG_SERVING),
        judging.comparable_serving_artifact(endpoint, upload),
        tags.get(vocabulary.TAG_MIN_CLASS_RECALL),
    )
    created = aws_errors.create_unless_exists(sagemaker.create_training_job, request)
    # Recorded on a re-delivery too (idempotent): the first may have died in between.
    tracked = run_recording.tuning_ended(settings, sagemaker, tuning, upload)
    if not created:
        return Outcome("duplicate")
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
    started = Notice(
        stage="debug-training",
        status="started",
        dataset=upload.uri,
        jobs={
            "tuning job": name,
            "best trial": best["TrainingJobName"],
            "debug job": request["TrainingJobName"],
        },
        metrics={} if objective is None else {"best valid_accuracy": float(objective)},
        summary=(
            f"Tuning finished; debug/profile run {request['TrainingJobName']} started with "
            f"{json.dumps(best['TunedHyperParameters'], sort_keys=True)}."
        ),
        reasons=tracked.notice_line(),
    )
    return Outcome("started", [started], ["JobsStarted"])


def _failed_trial_reason(sagemaker, tuning_job: str) -> str | None:
    """Why the tuning job's first failed trial failed (its ``FailureReason``, summarised),
    or None when none failed or the listing cannot be read (the notice still goes)."""
    try:
        listed = sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=tuning_job,
            StatusEquals="Failed",
            SortBy="CreationTime",
            SortOrder="Ascending",
            MaxResults=1,
        )
    except ClientError as exc:
        logger.warning("cannot list the trials of %s: %s", tuning_job, exc)
        return None
    summaries = listed.get("TrainingJobSummaries", [])
    reason = summaries[0].get("FailureReason") if summaries else None
    return training_failure.summary(reason) if reason else None


def _upload_of(definition: dict) -> vocabulary.Upload:
    uri = definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    parsed = urlparse(uri)
    return vocabulary.Upload(parsed.netloc, parsed.path.lstrip("/"), "")


# --- 3. the debug job ended: judge it, register it as a version ------------------------------
@concluded
def training_finished(detail: dict, settings: Settings) -> Outcome:
    """Judge the debug job (``judging``) and register its model as a version of the
    dataset's group, approved or rejected by the gate. Deploying follows from the
    registry's own state-change event (``model_package_changed``)."""
    name = detail.get("TrainingJobName", "")
    status = detail.get("TrainingJobStatus", "")
    if not naming.is_pipeline_debug_job(name) or status not in TERMINAL:
        return Outcome("ignored")
    logger.append_keys(debug_job=name)
    sagemaker = client("sagemaker")
    training = sagemaker.describe_training_job(TrainingJobName=name)
    upload = _upload_of(training)
    if training["TrainingJobStatus"] != "Completed":
        reason = training.get("FailureReason") or f"status {training['TrainingJobStatus']}"
        failed = Notice(
            stage="debug-training",
            status="failed",
            dataset=upload.uri,
            jobs={"debug job": name},
            summary=(
                f"Debug job {name} ended {training['TrainingJobStatus']}: "
                f"{training_failure.summary(reason)}."
            ),
            failure_reason=reason,
        )
        return Outcome("failed", [failed], ["JobsFailed"])
    pipeline = naming.pipeline_name(upload.key)
    group = naming.model_package_group(settings.endpoint_prefix, pipeline)
    registry.ensure_group(sagemaker, group, pipeline)
    registered = registry.version_of_job(sagemaker, group, name)
    if registered is not None:
        logger.info("%s is already registered in %s: duplicate event", name, group)
        metrics = {k: float(v) for k, v in run_recording.debug_metrics(training).items()}
        run_recording.debug_registered(
            settings, training, upload, registered, metrics
        )  # idempotent
        return Outcome("duplicate")
    endpoint = settings.endpoint_for(pipeline)
    judgement = judging.judge(settings, training, upload, endpoint)
    return registering.register(settings, training, upload, group, endpoint, judgement)


def _tags_of(sagemaker, arn: str | None) -> dict[str, str]:
    """A SageMaker resource's tags ({} without an ARN)."""
    if not arn:
        return {}
    return {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=arn).get("Tags", [])}


# --- 4. a version was approved or rejected: serve the newest approved one ---------------------
@concluded
def model_package_changed(detail: dict, settings: Settings) -> Outcome:
    """Approving a version (the gate, a person in SageMaker Studio, ``sagedrop approve``)
    deploys it; rejecting the serving one (``sagedrop rollback``) brings back the newest
    approved before it. ``deploying`` reads the registry, not the event."""
    group = detail.get("ModelPackageGroupName", "")
    pipeline = naming.pipeline_of_group(settings.endpoint_prefix, group)
    if pipeline is None or detail.get("ModelApprovalStatus") not in (
        registry.APPROVED,
        registry.REJECTED,
    ):
        return Outcome("ignored")
    arn = detail.get("ModelPackageArn", "")
    logger.append_keys(model_package=arn)
    run_recording.approval_changed(settings, pipeline, arn, detail["ModelApprovalStatus"])
    because = ""
    if detail.get("ModelApprovalStatus") == registry.REJECTED and arn:
        rejected = registry.describe(client("sagemaker"), arn)
        why = rejected.get("ApprovalDescription") or rejected.get("ModelPackageDescription", "")
        because = f"version {rejected['ModelPackageVersion']} was rejected: {why}"
    return deploy_latest(settings, pipeline, because)


# --- 5. an endpoint changed state ---------------------------------------------------------------
@concluded
def endpoint_changed(detail: dict, settings: Settings) -> Outcome:
    endpoint = detail.get("EndpointName", "")
    pipeline = naming.pipeline_of_endpoint(settings.endpoint_prefix, endpoint)
    if pipeline is None:
        return Outcome("ignored")
    status = detail.get("EndpointStatus", "").replace("_", "").lower()
    if status == "inservice":
        ready = Notice(
            stage="endpoint",
            status="ready",
            jobs={"endpoint": endpoint},
            summary=f"Endpoint {endpoint} is in service for dataset {pipeline} "
            f"(config {detail.get('EndpointConfigName', '?')}); images go to "
            f"s3://{settings.inference_bucket}/{naming.IMAGES_PREFIX}{pipeline}/.",
        )
        # A version approved while the endpoint was busy is served now.
        ready_outcome = Outcome("ready", [ready], ["EndpointsReady"])
        return ready_outcome.followed_by(deploy_latest(settings, pipeline))
    if status == "failed":
        reason = detail.get("FailureReason", "no reason given")
        failed = Notice(
            stage="endpoint",
            status="failed",
            jobs={"endpoint": endpoint},
            summary=f"Endpoint {endpoint} failed: {reason}.",
            failure_reason=reason,
        )
        return Outcome("failed", [failed], ["EndpointsFailed"])
    return Outcome("ignored")


# --- 6. an image arrives: its prediction next to it ---------------------------------------------
@concluded
def image_uploaded(bucket: str, key: str, settings: Settings) -> Outcome:
    """Invoke the endpoint; write ``<key>.json`` (or ``<key>.error.json``) next to the image.

    Every image ends with exactly one final answer file. A failure that a retry may cure
    (throttling, an endpoint still coming into service) writes an error file that says it
    is retried and raises for Lambda's retries; the last attempt writes a final one that
    promises nothing (``predictions.Attempts``). The answers end in ``.json``, which this
    step ignores: the one ``images/`` rule that triggers it also sees them.
    """
    if predictions.is_answer(key):
        return Outcome("ignored")
    logger.append_keys(image=f"s3://{bucket}/{key}")
    s3 = client("s3")
    suffix, content_type = predictions.content_type_of(key)
    pipeline = naming.image_pipeline(key)
    endpoint = settings.endpoint_for(pipeline) if pipeline else None
    started = time.perf_counter()
    image: dict | None = None
    try:
        if content_type is None:
            raise ValueError(
                f"'{suffix}' is not an image type this pipeline serves (it serves "
                f"{', '.join(predictions.CONTENT_TYPES)}, in any case)"
            )
        if endpoint is None:
            raise ValueError(
                f"images go under {naming.IMAGES_PREFIX}<dataset>/ to reach that dataset's model"
            )
        image = s3.get_object(Bucket=bucket, Key=key)
        predictions.check_size(image["ContentLength"])
        body = image["Body"].read()
        result = predictions.invoke(endpoint, content_type, body, predictions.ENDPOINT_WAIT_SECONDS)
    except (ClientError, ValueError) as exc:
        waiting = predictions.worth_waiting_for(exc, endpoint)
        attempts = None  # counted only when a retry may help: no extra read on success
        if waiting and image is not None:
            attempts = predictions.Attempts.of_image(
                s3, bucket, key, image, settings.image_attempts
            )
        if waiting and attempts is not None and not attempts.last:
            # Lambda retries; until then the image says why it has no answer yet.
            predictions.put_error(s3, bucket, key, pipeline, endpoint,
                                  f"{waiting}; this image is retried (attempt "
                                  f"{attempts.number} of {attempts.limit}), and this file is "
                                  "replaced by its prediction when a retry succeeds",
                                  attempts)  # fmt: skip
            raise RetryLater(exc, Outcome("throttled", counts=["PredictionsThrottled"])) from exc
        if not waiting and aws_errors.is_transient(exc):
            raise  # Lambda retries; the image gets its answer then
        if predictions.exists(s3, bucket, f"{key}.json"):
            # A re-delivered event after a success: the image already has its answer.
            logger.info("prediction already written; not replacing it with an error")
            return Outcome("duplicate")
        if waiting and attempts is not None:
            reason = (
                f"{waiting}; no answer after {attempts.limit} attempts, and it is not "
                "retried again: upload the image again to ask once more"
            )
        else:
            reason = predictions.failure_reason(exc, settings, pipeline, endpoint, content_type)
        predictions.put_error(s3, bucket, key, pipeline, endpoint, reason, attempts)
        logger.warning("prediction failed", extra={"reason": reason})
        return Outcome("error", counts=["PredictionFailures"])
    latency_ms = (time.perf_counter() - started) * 1000
    model = result.get("model", {})
    output = {
        "image": f"s3://{bucket}/{key}",
        "dataset": pipeline,
        "endpoint": endpoint,
        "model_version": model.get("version"),  # its version in Model Registry
        "predictions": result.get("predictions", []),
        "model": model,
        "latency_ms": round(latency_ms, 2),
    }
    predictions.put_json(s3, bucket, f"{key}.json", output)
    if predictions.exists(s3, bucket, f"{key}.error.json"):
        # An earlier attempt failed (endpoint not ready yet); one answer per image.
        s3.delete_object(Bucket=bucket, Key=f"{key}.error.json")
    return Outcome(
        "predicted", counts=["Predictions"], milliseconds={"PredictionLatency": latency_ms}
    )
