"""The pipeline's steps, one function per event; the Chalice handlers only decode and call.

Each step is idempotent: names come from ``naming``, so a repeated event meets
``ResourceInUse`` (or an endpoint already on the right config) and does nothing twice.
Every outcome, good or bad, ends in one SNS notice.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import time
import traceback
import zipfile
from collections.abc import Callable
from urllib.parse import urlparse

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import bounded_json, job_reports, naming, registry, requests, training_failure
from chalicelib.artifact_check import artifact_problems, read_artifact
from chalicelib.clients import client
from chalicelib.datasets import CONFIG_NAME, inspect_zip
from chalicelib.gate import ISSUES_FOUND, quality_gate
from chalicelib.notify import Notice, publish
from chalicelib.s3_ranged import S3RangedFile
from chalicelib.settings import Settings, SettingsError
from chalicelib.training_metrics import rule_statuses

logger = Logger(service="sagedrop")
metrics = Metrics(namespace="sagedrop", service="sagedrop")
TERMINAL_TUNING = ("Completed", "Failed", "Stopped")
TERMINAL_TRAINING = ("Completed", "Failed", "Stopped")
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
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


# Errors worth Lambda's retries: the next attempt may well succeed.
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "InternalError",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def is_transient(error: BaseException) -> bool:
    """Would retrying help? Throttling, a service's 5xx, or the network; not our own bugs
    or a bad input, which fail the same way every time."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_CODES or status >= 500
    return isinstance(error, BotoCoreError | ConnectionError | TimeoutError)


def handle(context, stage: str, step: Callable[..., str], *args, **correlation: str) -> str:
    """Run one pipeline step for a handler, so that no failure ends only in a log.

    A transient error is raised again, for Lambda's retries; any other failure (a bug,
    a hostile input no check foresaw) is published as an ``error`` notice, since a retry
    would fail the same way, and the handler returns ``"failed"``.
    """
    with handling(context, **correlation):
        try:
            return step(*args)
        except Exception as exc:
            if is_transient(exc):
                logger.warning("transient failure, Lambda retries: %s", exc)
                raise
            logger.exception("%s step failed", stage)
            _notify_failure(stage, exc, correlation)
            return "failed"


def _notify_failure(stage: str, error: Exception, correlation: dict[str, str]) -> None:
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


def _notify(settings: Settings, notice: Notice) -> None:
    """Log every reason (a notice may list only the first ones), then publish."""
    logger.info(
        notice.summary,
        extra={"stage": notice.stage, "status": notice.status, "reasons": notice.reasons},
    )
    if settings.topic_arn:
        publish(client("sns"), settings.topic_arn, notice)


def _already_exists(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    return code == "ResourceInUse" or "already exist" in message.lower()


def dataset_uploaded(bucket: str, key: str, etag: str, settings: Settings | None = None) -> str:
    """Validate the zip from its central directory, then start tuning. Returns the outcome."""
    settings = settings or Settings.from_env()
    upload = requests.Upload(bucket, key, etag)
    logger.append_keys(dataset=upload.uri, tuning_job=upload.tuning_job_name)
    source = S3RangedFile(client("s3"), bucket, key)
    report = inspect_zip(source)
    problems = list(report.problems)
    job_settings = settings
    if report.usable and report.has_config:
        try:
            job_settings = settings.with_dataset_overrides(_read_config(source, report.prefix))
        except (SettingsError, ValueError) as exc:
            problems.append(str(exc))
    if problems:
        metrics.add_metric(name="DatasetsRejected", unit=MetricUnit.Count, value=1)
        _notify(
            settings,
            Notice(
                stage="dataset",
                status="rejected",
                dataset=upload.uri,
                summary=f"{key} was not accepted: {len(problems)} problem(s); nothing was started.",
                reasons=problems,
            ),
        )
        return "rejected"
    request = requests.tuning_job_request(job_settings, upload)
    try:
        client("sagemaker").create_hyper_parameter_tuning_job(**request)
    except ClientError as exc:
        if _already_exists(exc):
            logger.info("tuning job already exists: duplicate event, nothing to do")
            return "duplicate"
        raise
    metrics.add_metric(name="JobsStarted", unit=MetricUnit.Count, value=1)
    limits = request["HyperParameterTuningJobConfig"]["ResourceLimits"]
    _notify(
        settings,
        Notice(
            stage="tuning",
            status="started",
            dataset=upload.uri,
            jobs={"tuning job": upload.tuning_job_name},
            summary=(
                f"Tuning started for {key}: {len(report.classes)} classes, {report.image_count()} "
                f"images, up to {limits.get('MaxNumberOfTrainingJobs', 'all')} trials "
                f"({limits['MaxParallelTrainingJobs']} at a time)."
            ),
            reasons=report.warnings,
        ),
    )
    return "started"


def _read_config(source, prefix: str) -> dict:
    with zipfile.ZipFile(source) as archive:
        for name in (CONFIG_NAME, prefix + CONFIG_NAME):
            if name in archive.namelist():
                info = archive.getinfo(name)
                if info.file_size > MAX_CONFIG_BYTES:
                    raise ValueError(f"{CONFIG_NAME} is larger than {MAX_CONFIG_BYTES} bytes")
                return bounded_json.loads(archive.read(info), CONFIG_NAME)
    return {}


def tuning_finished(detail: dict, settings: Settings | None = None) -> str:
    settings = settings or Settings.from_env()
    name = detail.get("HyperParameterTuningJobName", "")
    status = detail.get("HyperParameterTuningJobStatus", "")
    if not naming.is_pipeline_tuning_job(name) or status not in TERMINAL_TUNING:
        return "ignored"
    logger.append_keys(tuning_job=name)
    sagemaker = client("sagemaker")
    tuning = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    upload = _upload_of(tuning["TrainingJobDefinition"])
    best = tuning.get("BestTrainingJob")
    if tuning["HyperParameterTuningJobStatus"] != "Completed" or not best:
        reason = tuning.get("FailureReason") or (
            "no training job completed" if not best else f"status {status}"
        )
        metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
        _notify(
            settings,
            Notice(
                stage="tuning",
                status="failed",
                dataset=upload.uri,
                jobs={"tuning job": name},
                summary=(
                    f"Tuning job {name} ended {tuning['HyperParameterTuningJobStatus']}: {reason}."
                ),
                failure_reason=reason,
            ),
        )
        return "failed"
    serving = _tag(sagemaker, tuning.get("HyperParameterTuningJobArn"), requests.TAG_SERVING)
    request = requests.debug_training_job_request(settings, upload, tuning, serving)
    try:
        sagemaker.create_training_job(**request)
    except ClientError as exc:
        if _already_exists(exc):
            return "duplicate"
        raise
    metrics.add_metric(name="JobsStarted", unit=MetricUnit.Count, value=1)
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
    _notify(
        settings,
        Notice(
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
        ),
    )
    return "started"


def _upload_of(definition: dict) -> requests.Upload:
    uri = definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    parsed = urlparse(uri)
    return requests.Upload(parsed.netloc, parsed.path.lstrip("/"), "")


def training_finished(detail: dict, settings: Settings | None = None) -> str:
    settings = settings or Settings.from_env()
    name = detail.get("TrainingJobName", "")
    status = detail.get("TrainingJobStatus", "")
    if not naming.is_pipeline_debug_job(name) or status not in TERMINAL_TRAINING:
        return "ignored"
    logger.append_keys(debug_job=name)
    sagemaker = client("sagemaker")
    training = sagemaker.describe_training_job(TrainingJobName=name)
    upload = _upload_of(training)
    jobs = {"debug job": name}
    if training["TrainingJobStatus"] != "Completed":
        reason = training.get("FailureReason") or f"status {training['TrainingJobStatus']}"
        metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
        _notify(
            settings,
            Notice(
                stage="debug-training",
                status="failed",
                dataset=upload.uri,
                jobs=jobs,
                summary=(
                    f"Debug job {name} ended {training['TrainingJobStatus']}: "
                    f"{training_failure.summary(reason)}."
                ),
                failure_reason=reason,
            ),
        )
        return "failed"
    final = {m["MetricName"]: m["Value"] for m in training.get("FinalMetricDataList", [])}
    pipeline = naming.pipeline_name(upload.key)
    group = naming.model_package_group(settings.endpoint_prefix, pipeline)
    registry.ensure_group(sagemaker, group, pipeline)
    if registry.version_of_job(sagemaker, group, name) is not None:
        logger.info("%s is already registered in %s: duplicate event", name, group)
        return "duplicate"
    test_accuracy = final.get("test_accuracy")
    rules = rule_statuses(final)
    reports = job_reports.publish(client("s3"), training, final)
    for problem in reports.problems:
        logger.warning("debug job reports: %s", problem)
    for rule in rules or []:
        if rule["RuleEvaluationStatus"] == ISSUES_FOUND:
            fallback = f"see rules.json and report.html in {job_reports.output_archive(training)}"
            rule["StatusDetails"] = reports.details.get(rule["RuleConfigurationName"]) or fallback
    endpoint = settings.endpoint_for(pipeline)
    problems, classes = _unservable(training, upload)
    serving_accuracy, not_compared = _serving_accuracy(endpoint, classes)
    decision = quality_gate(
        rules,
        test_accuracy,
        serving_accuracy,
        settings.gate_blocking_rules,
        settings.gate_tolerance,
        settings.gate_min_test_accuracy,
        artifact_problems=problems,
    )
    if not_compared:
        decision.reasons.append(not_compared)
    if not decision.deploy:
        approval = registry.REJECTED
    elif settings.model_approval == "manual":
        approval = registry.PENDING
    else:
        approval = registry.APPROVED
    serving = _tag(sagemaker, training.get("TrainingJobArn"), requests.TAG_SERVING)
    request = requests.model_package_request(
        settings,
        upload,
        training,
        group,
        approval,
        f"{approval} by the quality gate for {name}: " + "; ".join(decision.reasons),
        test_accuracy,
        rules,
        classes,
        reports.uris,
        serving or requests.serving_tag(settings),
    )
    arn = sagemaker.create_model_package(**request)["ModelPackageArn"]
    version = arn.rsplit("/", 1)[-1]
    metrics.add_metric(name=f"ModelVersions{approval}", unit=MetricUnit.Count, value=1)
    jobs.update({"model package": arn, "endpoint": endpoint})
    shown = {k: v for k, v in final.items() if k.startswith(("test_", "valid_"))}
    outcome = {
        registry.REJECTED: (
            "blocked",
            f"Model from {name} is version {version} of {group}, Rejected: the quality gate "
            f"blocked it; {endpoint} keeps serving what it serves.",
        ),
        registry.PENDING: (
            "pending-approval",
            f"Model from {name} passed the gate and is version {version} of {group}, waiting "
            f"for approval: `sagedrop approve {pipeline} --version {version}` (or approve it "
            "in SageMaker Studio) deploys it.",
        ),
        registry.APPROVED: (
            "approved",
            f"Model from {name} passed the gate and is version {version} of {group}, Approved: "
            f"{endpoint} will serve it.",
        ),
    }
    status, summary = outcome[approval]
    _notify(
        settings,
        Notice(
            stage="gate",
            status=status,
            dataset=upload.uri,
            jobs=jobs,
            metrics=shown,
            decision=decision.verdict,
            reasons=decision.reasons + [f"report: {p}" for p in reports.problems],
            summary=summary,
        ),
    )
    return status


def _tag(sagemaker, arn: str | None, key: str) -> str | None:
    """One tag of a SageMaker resource, or None (no ARN, or no such tag)."""
    if not arn:
        return None
    tags = sagemaker.list_tags(ResourceArn=arn).get("Tags", [])
    return next((t["Value"] for t in tags if t["Key"] == key), None)


def model_package_changed(detail: dict, settings: Settings | None = None) -> str:
    """A version was registered, approved or rejected: serve the newest approved one.

    Approving a version (the gate, a person in SageMaker Studio, ``sagedrop approve``)
    deploys it; rejecting the serving one (``sagedrop rollback``) brings back the newest
    approved before it. The decision reads the registry, not the event, so repeated or
    reordered events all lead to the same endpoint.
    """
    settings = settings or Settings.from_env()
    group = detail.get("ModelPackageGroupName", "")
    pipeline = naming.pipeline_of_group(settings.endpoint_prefix, group)
    if pipeline is None or detail.get("ModelApprovalStatus") not in (
        registry.APPROVED,
        registry.REJECTED,
    ):
        return "ignored"
    arn = detail.get("ModelPackageArn", "")
    logger.append_keys(model_package=arn)
    because = ""
    if detail.get("ModelApprovalStatus") == registry.REJECTED and arn:
        rejected = registry.describe(client("sagemaker"), arn)
        why = rejected.get("ApprovalDescription") or rejected.get("ModelPackageDescription", "")
        because = f"version {rejected['ModelPackageVersion']} was rejected: {why}"
    return deploy_latest(settings, pipeline, because)


def deploy_latest(settings: Settings, pipeline: str, because: str = "") -> str:
    """Make the dataset's endpoint serve its newest approved version; say so when it
    changes (``because``: what changed in the registry, for the notice). An endpoint busy
    creating or updating is left alone: its "in service" event calls this again."""
    sagemaker = client("sagemaker")
    group = naming.model_package_group(settings.endpoint_prefix, pipeline)
    endpoint = settings.endpoint_for(pipeline)
    package = registry.latest_approved(sagemaker, group)
    if package is None:
        logger.info("no approved version in %s: %s is left as it is", group, endpoint)
        return "none-approved"
    properties = package.get("CustomerMetadataProperties", {})
    version = package["ModelPackageVersion"]
    if requests.META_DEBUG_JOB not in properties:
        raise ValueError(
            f"version {version} of {group} has no {requests.META_DEBUG_JOB} property: it was "
            "not registered by sagedrop's gate, so sagedrop does not deploy it"
        )
    model = requests.model_request(settings, package)
    config = requests.endpoint_config_request(
        properties[requests.META_DEBUG_JOB],
        model["ModelName"],
        properties.get(requests.META_SERVING) or requests.serving_tag(settings),
    )
    config_name = config["EndpointConfigName"]
    described = _describe_endpoint(endpoint)
    if described and described["EndpointConfigName"] == config_name:
        return "unchanged"
    if described and described["EndpointStatus"] not in ("InService", "Failed"):
        logger.info("%s is %s: version %s follows when it is in service", endpoint,
                    described["EndpointStatus"], version)  # fmt: skip
        return "waiting"
    if described and config_name in (described.get("FailureReason") or ""):
        logger.warning("%s already failed to serve %s; not trying again", endpoint, config_name)
        return "failed-before"
    for create, request in (
        (sagemaker.create_model, model),
        (sagemaker.create_endpoint_config, config),
    ):
        try:
            create(**request)
        except ClientError as exc:
            if not _already_exists(exc):
                raise
    previous = registry.serving_version(sagemaker, described)
    action = _create_or_update_endpoint(endpoint, config_name, described)
    change = "" if previous is None else f", replacing version {previous}"
    if previous is not None and previous > version:
        change = f": a rollback from version {previous}"
    _notify(
        settings,
        Notice(
            stage="deploy",
            status="rollback" if previous is not None and previous > version else "deploying",
            dataset=properties.get(requests.META_DATASET, pipeline),
            jobs={
                "model package": package["ModelPackageArn"],
                "model": model["ModelName"],
                "endpoint": endpoint,
            },
            decision=f"serve version {version} ({action} endpoint)",
            reasons=[
                because
                or package.get("ApprovalDescription")
                or package.get("ModelPackageDescription", "")
            ],
            summary=(
                f"Endpoint {endpoint} {action} to serve version {version} of {pipeline}{change}."
            ),
        ),
    )
    return action


def _unservable(training: dict, upload: requests.Upload) -> tuple[list[str], list[str] | None]:
    """Why the job's artifact cannot serve its dataset ([] when it can), and the dataset's
    classes (folder names in index order; None when they cannot be read).

    The dataset's classes come from the zip itself (its central directory, by ranged
    reads), not from the job, so a job that went wrong cannot vouch for itself.
    """
    uri = training.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if not uri:
        return ["the job produced no model artifact"], None
    try:
        sizes, documents = read_artifact(client("s3"), uri)
    except (ClientError, tarfile.TarError, OSError, EOFError) as exc:
        return [f"the model artifact {uri} cannot be read: {exc}"], None
    try:
        report = inspect_zip(S3RangedFile(client("s3"), upload.bucket, upload.key))
    except ClientError as exc:
        reason = f"the dataset {upload.uri} cannot be read to check the model's classes: {exc}"
        return [reason], None
    if not report.usable:
        problems = "; ".join(report.problems[:3])
        return [f"the dataset {upload.uri} can no longer be checked: {problems}"], None
    return artifact_problems(sizes, documents, report.classes), list(report.classes)


def _serving_accuracy(endpoint: str, classes: list[str] | None) -> tuple[float | None, str]:
    """Test accuracy of the model the dataset's endpoint serves now (from its sagedrop
    tag), and why it was not compared ("" when it was, or when nothing serves).

    A model of other classes answers another question: its accuracy says nothing about
    the new one, so the gate applies its minimum alone and says so.
    """
    sagemaker = client("sagemaker")
    described = _describe_endpoint(endpoint)
    if described is None:
        return None, ""
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    tags = {
        t["Key"]: t["Value"]
        for t in sagemaker.list_tags(ResourceArn=model["ModelArn"]).get("Tags", [])
    }
    if classes is None or tags.get(requests.TAG_CLASSES) != requests.classes_digest(classes):
        why = "differ" if requests.TAG_CLASSES in tags else "are not recorded on it"
        return None, (
            f"not compared with the model serving {endpoint} ({model['ModelName']}): its "
            f"classes {why}, so only the minimum test accuracy applies"
        )
    if requests.TAG_TEST_ACCURACY in tags:
        return float(tags[requests.TAG_TEST_ACCURACY]), ""
    return None, ""


def _describe_endpoint(name: str) -> dict | None:
    """The endpoint, or None when it does not exist; any other error (access, throttling)
    propagates, so the gate never mistakes "cannot see it" for "nothing is serving"."""
    try:
        return client("sagemaker").describe_endpoint(EndpointName=name)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationException" and "could not find" in (
            error.get("Message", "").lower()
        ):
            return None
        raise


def _create_or_update_endpoint(endpoint: str, endpoint_config: str, described: dict | None) -> str:
    sagemaker = client("sagemaker")
    if described is None:
        sagemaker.create_endpoint(**requests.create_endpoint_request(endpoint, endpoint_config))
        return "creating"
    if described["EndpointConfigName"] == endpoint_config:
        return "unchanged"
    sagemaker.update_endpoint(**requests.update_endpoint_request(endpoint, endpoint_config))
    return "updating"


def endpoint_changed(detail: dict, settings: Settings | None = None) -> str:
    settings = settings or Settings.from_env()
    endpoint = detail.get("EndpointName", "")
    pipeline = naming.pipeline_of_endpoint(settings.endpoint_prefix, endpoint)
    if pipeline is None:
        return "ignored"
    status = detail.get("EndpointStatus", "").replace("_", "").lower()
    if status == "inservice":
        _notify(
            settings,
            Notice(
                stage="endpoint",
                status="ready",
                jobs={"endpoint": endpoint},
                summary=f"Endpoint {endpoint} is in service for dataset {pipeline} "
                f"(config {detail.get('EndpointConfigName', '?')}); images go to "
                f"s3://{settings.inference_bucket}/{naming.IMAGES_PREFIX}{pipeline}/.",
            ),
        )
        # A version approved while the endpoint was busy is served now.
        deploy_latest(settings, pipeline)
        return "ready"
    if status == "failed":
        reason = detail.get("FailureReason", "no reason given")
        _notify(
            settings,
            Notice(
                stage="endpoint",
                status="failed",
                jobs={"endpoint": endpoint},
                summary=f"Endpoint {endpoint} failed: {reason}.",
                failure_reason=reason,
            ),
        )
        return "failed"
    return "ignored"


def image_uploaded(bucket: str, key: str, settings: Settings | None = None) -> str:
    """Invoke the endpoint; write ``<key>.json`` (or ``<key>.error.json``) next to the image.

    The outputs end in ``.json``, which no image trigger's suffix matches: no recursion.
    """
    settings = settings or Settings.from_env()
    logger.append_keys(image=f"s3://{bucket}/{key}")
    s3 = client("s3")
    suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key else ""
    content_type = CONTENT_TYPES.get(suffix)
    pipeline = naming.image_pipeline(key)
    endpoint = settings.endpoint_for(pipeline) if pipeline else None
    started = time.perf_counter()
    try:
        if content_type is None:
            raise ValueError(f"'{suffix}' is not an image type this pipeline serves")
        if endpoint is None:
            raise ValueError(
                f"images go under {naming.IMAGES_PREFIX}<dataset>/ to reach that dataset's model"
            )
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        response = client("sagemaker-runtime").invoke_endpoint(
            EndpointName=endpoint,
            ContentType=content_type,
            Accept="application/json",
            Body=body,
        )
        result = json.loads(response["Body"].read())
    except (ClientError, ValueError) as exc:
        if _throttled(exc):
            # Lambda retries (the image gets its answer then, and this file goes); until
            # then the image says why it has none.
            _put_error(s3, bucket, key, pipeline, endpoint, _throttling_reason(exc, endpoint))
            metrics.add_metric(name="PredictionsThrottled", unit=MetricUnit.Count, value=1)
            raise
        if is_transient(exc):
            raise  # Lambda retries; the image gets its answer then
        if _exists(s3, bucket, f"{key}.json"):
            # A re-delivered event after a success: the image already has its answer.
            logger.info("prediction already written; not replacing it with an error")
            return "duplicate"
        reason = _reason(exc)
        if endpoint is None and content_type is not None:
            reason = f"{reason}; {_serving_now(settings)}"
        if endpoint and _endpoint_missing(exc):
            reason = f"no dataset named {pipeline!r} is serving; {_serving_now(settings)}"
        metrics.add_metric(name="PredictionFailures", unit=MetricUnit.Count, value=1)
        _put_error(s3, bucket, key, pipeline, endpoint, reason)
        logger.warning("prediction failed", extra={"reason": reason})
        return "error"
    latency_ms = (time.perf_counter() - started) * 1000
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="PredictionLatency", unit=MetricUnit.Milliseconds, value=latency_ms)
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
    s3.put_object(
        Bucket=bucket,
        Key=f"{key}.json",
        Body=json.dumps(output, indent=2),
        ContentType="application/json",
    )
    if _exists(s3, bucket, f"{key}.error.json"):
        # An earlier attempt failed (endpoint not ready yet); one answer per image.
        s3.delete_object(Bucket=bucket, Key=f"{key}.error.json")
    return "predicted"


def _put_error(s3, bucket: str, key: str, pipeline, endpoint, reason: str) -> None:
    error = {"image": f"s3://{bucket}/{key}", "dataset": pipeline, "endpoint": endpoint,
             "error": reason}  # fmt: skip
    s3.put_object(
        Bucket=bucket,
        Key=f"{key}.error.json",
        Body=json.dumps(error, indent=2),
        ContentType="application/json",
    )


def _throttled(exc: Exception) -> bool:
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
        "ThrottlingException",
        "Throttling",
    )


def _throttling_reason(exc: ClientError, endpoint: str | None) -> str:
    return (
        f"{_reason(exc)}: {endpoint} is taking as many requests as it may at once (a "
        "serverless endpoint's MaxConcurrency); this image is retried, and this file is "
        "replaced by its prediction when a retry succeeds"
    )


def _endpoint_missing(exc: Exception) -> bool:
    """sagemaker-runtime's answer for an endpoint that does not exist."""
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    return error.get("Code") in ("ValidationError", "ValidationException") and (
        "not found" in error.get("Message", "").lower()
    )


def _serving_now(settings: Settings, limit: int = 50) -> str:
    """Which datasets have an endpoint in service, for an image that found none.

    Read from the data bucket's ``datasets/`` and one ``DescribeEndpoint`` each (both
    allowed on named resources), not ``ListEndpoints``, which IAM grants only on ``*``.
    """
    try:
        listing = client("s3").list_objects_v2(
            Bucket=settings.data_bucket, Prefix=naming.DATASETS_PREFIX, MaxKeys=1000
        )
        names = sorted(
            {
                naming.pipeline_name(item["Key"])
                for item in listing.get("Contents", [])
                if item["Key"].lower().endswith(".zip")
            }
        )[:limit]
        serving = []
        for name in names:
            described = _describe_endpoint(settings.endpoint_for(name))
            if described and described.get("EndpointStatus") in ("InService", "Updating"):
                serving.append(name)
    except ClientError as exc:
        if is_transient(exc):
            raise
        # The image still gets its error file; the list is a courtesy.
        logger.warning("cannot list the serving datasets: %s", exc)
        return f"the serving datasets cannot be listed ({_reason(exc)})"
    if not serving:
        return "no dataset is serving yet"
    return "serving: " + ", ".join(f"{n} ({naming.IMAGES_PREFIX}{n}/)" for n in serving)


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        message = error.get("Message") or "(no message)"
        return f"{error.get('Code', 'Error')}: {message}"
    return str(exc)
