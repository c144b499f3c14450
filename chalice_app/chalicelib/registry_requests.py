"""The requests that register a judged model and serve it, each the exact keyword
arguments of one boto3 call, validated against botocore's model by the tests:
Model Registry's group and version (with the version's metadata), the model, its
endpoint config, and creating or updating the endpoint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chalicelib import aws_limits, naming
from chalicelib.sagemaker_requests import (
    IMAGE_CONTENT_TYPES,
    VARIANT_NAME,
    resource_tags,
    serving_variant,
)
from chalicelib.vocabulary import (
    META_AUDIT_REPORT,
    META_CLASSES,
    META_DATA_AUDIT,
    META_DATASET,
    META_DEBUG_JOB,
    META_EVALUATION,
    META_LABEL_ERRORS,
    META_LEAKED_TEST,
    META_MACRO_F1,
    META_REPORT,
    META_RULES,
    META_SERVING,
    META_TEST_ACCURACY,
    META_WORST_CLASS,
    TAG_CLASSES,
    TAG_DATASET,
    TAG_MODEL_PACKAGE,
    TAG_TEST_ACCURACY,
    TAG_TUNING_JOB,
    Upload,
)

if TYPE_CHECKING:
    from chalicelib.settings import Settings


def classes_digest(classes: list[str]) -> str:
    """A short fingerprint of a class list (folder names, in index order), for a tag."""
    return hashlib.sha256(json.dumps(list(classes)).encode()).hexdigest()[:16]


def model_package_group_request(group: str, pipeline: str) -> dict:
    """``CreateModelPackageGroup``: one per dataset, named as its endpoint."""
    return {
        "ModelPackageGroupName": group,
        "ModelPackageGroupDescription": aws_limits.description(
            f"sagedrop: versions of the classifier for dataset {pipeline}"
        ),
        "Tags": [{"Key": TAG_DATASET, "Value": aws_limits.tag_value(pipeline)}],
    }


def audit_metadata(audit: dict) -> dict[str, str]:
    """The data audit's headline as ``CustomerMetadataProperties`` (values in the tag
    character set, at most 256 characters: ``job_reports.checked_audit``'s numbers)."""
    leaked, left = audit["leaked"], audit.get("left_out", {})
    fields = [
        f"leaked-test={leaked['test']}/{audit['test_images']}",
        f"left-out-test={left.get('test', 0)}",
        f"leaked-valid={leaked['valid']}",
        f"exact={audit['exact_duplicates']}",
        f"near={audit['near_duplicates']}",
        f"conflicts={audit['label_conflicts']}",
        f"unreadable={audit['unreadable']}",
    ]
    if audit.get("imbalance_train") is not None:
        fields.append(f"imbalance={audit['imbalance_train']:g}")
    metadata = {
        META_DATA_AUDIT: aws_limits.tag_value(" ".join(fields)),
        META_LEAKED_TEST: f"{audit['leaked_test_fraction']:.6f}",
    }
    if audit.get("label_error_candidates") is not None:
        metadata[META_LABEL_ERRORS] = str(audit["label_error_candidates"])
    return metadata


@dataclass(frozen=True)
class Evidence:
    """What the gate found in the debug job, as the version records it."""

    test_accuracy: float | None
    rules: list[dict] | None
    classes: list[str] | None
    reports: dict[str, str]  # kind → S3 URI (job_reports)
    evaluation: dict | None = None
    audit: dict | None = None


def model_package_request(
    settings: Settings,
    upload: Upload,
    training: dict,
    group: str,
    *,
    approval: str,
    description: str,
    serving: str,
    evidence: Evidence,
) -> dict:
    """``CreateModelPackage``: the debug job's model as one version of its dataset's group.

    ``reports`` maps ``metrics``/``rules``/``report`` to the S3 objects ``job_reports``
    wrote: ModelQuality's statistics and constraints, and the debugger/profiler page
    (Explainability's report: the one MetricsSource slot meant for a readable report).
    ``ClientToken`` is the debug job's name: SageMaker's own guard against a second
    version from a repeated event, under the flow's lookup by that name.
    """
    test_accuracy, rules, classes = evidence.test_accuracy, evidence.rules, evidence.classes
    reports, evaluation, audit = evidence.reports, evidence.evaluation, evidence.audit
    job = training["TrainingJobName"]
    container = _inference_container(settings, training["ModelArtifacts"]["S3ModelArtifacts"])
    properties = {
        META_DATASET: naming.pipeline_name(upload.key),
        META_DEBUG_JOB: job,
        META_SERVING: serving,
    }
    if test_accuracy is not None:
        properties[META_TEST_ACCURACY] = f"{test_accuracy:.6f}"
    if classes is not None:
        properties[META_CLASSES] = classes_digest(classes)
    if rules:
        verdicts = " ".join(
            f"{r['RuleConfigurationName']}={r['RuleEvaluationStatus']}" for r in rules
        )
        properties[META_RULES] = aws_limits.tag_value(verdicts)
    if reports.get("report"):
        properties[META_REPORT] = aws_limits.tag_value(reports["report"])
    if reports.get("evaluation"):
        properties[META_EVALUATION] = aws_limits.tag_value(reports["evaluation"])
    overall, worst = (evaluation or {}).get("overall"), (evaluation or {}).get("worst_class")
    if overall:
        properties[META_MACRO_F1] = f"{overall['macro_f1']:.6f}"
    if worst:
        properties[META_WORST_CLASS] = aws_limits.tag_value(
            f"{worst['label']}: recall {worst['recall']:.4f} on {worst['support']} test images"
        )
    if audit:
        properties.update(audit_metadata(audit))
    if reports.get("audit"):
        properties[META_AUDIT_REPORT] = aws_limits.tag_value(reports["audit"])
    request = {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": aws_limits.description(description),
        "InferenceSpecification": {
            "Containers": [container],
            "SupportedContentTypes": IMAGE_CONTENT_TYPES,
            "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": [settings.inference_instance_type],
        },
        "ModelApprovalStatus": approval,
        "CustomerMetadataProperties": properties,
        "ClientToken": job,
        "Tags": resource_tags(upload, naming.tuning_job_of(job)),
    }
    metrics = {}
    if reports.get("metrics") or reports.get("rules"):
        quality = {}
        if reports.get("metrics"):
            quality["Statistics"] = {"ContentType": "application/json", "S3Uri": reports["metrics"]}
        if reports.get("rules"):
            quality["Constraints"] = {"ContentType": "application/json", "S3Uri": reports["rules"]}
        metrics["ModelQuality"] = quality
    if reports.get("report"):
        metrics["Explainability"] = {
            "Report": {"ContentType": "text/html", "S3Uri": reports["report"]}
        }
    if metrics:
        request["ModelMetrics"] = metrics
    return request


def _inference_container(settings: Settings, model_data_url: str) -> dict:
    return {
        "Image": settings.inference_image,
        "ModelDataUrl": model_data_url,
        "Environment": {
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        },
    }


def model_request(settings: Settings, package: dict) -> dict:
    """``CreateModel`` for one registered version (a ``DescribeModelPackage`` response):
    its container as registered, plus its name and version for the prediction JSON; the
    tags carry what the next gate compares with (test accuracy, the classes' digest)."""
    properties = package.get("CustomerMetadataProperties", {})
    job = properties[META_DEBUG_JOB]
    name = naming.model_name(job)
    [container] = package["InferenceSpecification"]["Containers"]
    environment = {
        **container.get("Environment", {}),
        "SAGEDROP_MODEL_NAME": name,
        "SAGEDROP_MODEL_VERSION": str(package["ModelPackageVersion"]),
    }
    extra = {TAG_MODEL_PACKAGE: package["ModelPackageArn"]}
    if META_TEST_ACCURACY in properties:
        extra[TAG_TEST_ACCURACY] = properties[META_TEST_ACCURACY]
    if META_CLASSES in properties:
        extra[TAG_CLASSES] = properties[META_CLASSES]
    tags = {
        TAG_DATASET: properties.get(META_DATASET, ""),
        TAG_TUNING_JOB: naming.tuning_job_of(job),
    }
    return {
        "ModelName": name,
        "PrimaryContainer": {
            "Image": container["Image"],
            "ModelDataUrl": container["ModelDataUrl"],
            "Environment": environment,
        },
        "ExecutionRoleArn": settings.sagemaker_role_arn,
        "EnableNetworkIsolation": settings.network_isolation,
        "Tags": [{"Key": k, "Value": v} for k, v in {**tags, **extra}.items()],
    }


def endpoint_config_request(training_job: str, model: str, serving: str) -> dict:
    """``CreateEndpointConfig`` serving ``model`` as the dataset chose (``serving_tag``)."""
    return {
        "EndpointConfigName": naming.endpoint_config_name(training_job),
        "ProductionVariants": [
            {
                "VariantName": VARIANT_NAME,
                "ModelName": model,
                **serving_variant(serving),
            }
        ],
    }


def create_endpoint_request(endpoint: str, endpoint_config: str) -> dict:
    return {"EndpointName": endpoint, "EndpointConfigName": endpoint_config}


def update_endpoint_request(endpoint: str, endpoint_config: str) -> dict:
    return {"EndpointName": endpoint, "EndpointConfigName": endpoint_config}
