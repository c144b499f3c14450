"""A dataset's model versions in SageMaker Model Registry: find, list, choose, approve.

One model package group per dataset (``naming.model_package_group``); every debug job
that reaches the gate becomes one version, approved or rejected with the gate's reasons.
The endpoint serves the newest *approved* version: approving a version deploys it, and
rejecting the serving one (a rollback) brings back the newest approved before it.

Every function takes the SageMaker client, so the pipeline (``clients.client``), the CLI
on AWS (boto3) and the CLI on the local cloud share them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from botocore.exceptions import ClientError

from chalicelib import aws_errors, aws_limits, registry_requests, vocabulary

APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"


@dataclass(frozen=True)
class Version:
    """One registered version, as ``sagedrop models`` shows it."""

    number: int
    arn: str
    approval: str
    created: str
    debug_job: str
    test_accuracy: float | None
    rules: str
    serving: str
    description: str
    approval_description: str
    macro_f1: float | None = None
    worst_class: str = ""
    statistics: str = ""  # S3 URI of its model-quality statistics (ModelMetrics)
    evaluation: str = ""  # S3 URI of its evaluation.json
    data_audit: str = ""  # the audit's headline (registry_requests.audit_metadata)
    leaked_test_fraction: float | None = None
    label_error_candidates: int | None = None
    data_audit_report: str = ""  # S3 URI of its data_audit.json

    @classmethod
    def of(cls, package: dict) -> Version:
        properties = package.get("CustomerMetadataProperties", {})
        accuracy = properties.get(vocabulary.META_TEST_ACCURACY)
        macro_f1 = properties.get(vocabulary.META_MACRO_F1)
        created = package.get("CreationTime")
        return cls(
            number=int(package["ModelPackageVersion"]),
            arn=package["ModelPackageArn"],
            approval=package.get("ModelApprovalStatus", ""),
            created=created.isoformat() if isinstance(created, dt.datetime) else str(created),
            debug_job=properties.get(vocabulary.META_DEBUG_JOB, ""),
            test_accuracy=None if accuracy is None else float(accuracy),
            rules=properties.get(vocabulary.META_RULES, ""),
            serving=properties.get(vocabulary.META_SERVING, ""),
            description=package.get("ModelPackageDescription", ""),
            approval_description=package.get("ApprovalDescription", ""),
            macro_f1=None if macro_f1 is None else float(macro_f1),
            worst_class=properties.get(vocabulary.META_WORST_CLASS, ""),
            statistics=package.get("ModelMetrics", {})
            .get("ModelQuality", {})
            .get("Statistics", {})
            .get("S3Uri", ""),
            evaluation=properties.get(vocabulary.META_EVALUATION, ""),
            data_audit=properties.get(vocabulary.META_DATA_AUDIT, ""),
            leaked_test_fraction=_number(properties.get(vocabulary.META_LEAKED_TEST), float),
            label_error_candidates=_number(properties.get(vocabulary.META_LABEL_ERRORS), int),
            data_audit_report=properties.get(vocabulary.META_AUDIT_REPORT, ""),
        )


def _number(text: str | None, kind):
    """A metadata value as a number; None when absent or not one (a person may edit
    metadata in Studio)."""
    try:
        return None if text is None else kind(text)
    except ValueError:
        return None


def group_exists(sagemaker, group: str) -> bool:
    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as exc:
        if aws_errors.is_not_found(exc):
            return False
        raise
    return True


def ensure_group(sagemaker, group: str, pipeline: str) -> None:
    """Create the dataset's group unless it exists (a race with another gate is fine)."""
    if not group_exists(sagemaker, group):
        aws_errors.create_unless_exists(
            sagemaker.create_model_package_group,
            registry_requests.model_package_group_request(group, pipeline),
        )


def _group_arn(sagemaker, group: str) -> str | None:
    try:
        return sagemaker.describe_model_package_group(ModelPackageGroupName=group)[
            "ModelPackageGroupArn"
        ]
    except ClientError as exc:
        if aws_errors.is_not_found(exc):
            return None
        raise


def _version_arn(group_arn: str, number: int) -> str:
    """A version's ARN from its group's, as SageMaker spells both."""
    return group_arn.replace(":model-package-group/", ":model-package/", 1) + f"/{number}"


def _exists(sagemaker, group_arn: str, number: int) -> dict | None:
    try:
        return describe(sagemaker, _version_arn(group_arn, number))
    except ClientError as exc:
        if aws_errors.is_not_found(exc):
            return None
        raise


def newest_first(sagemaker, group: str, limit: int = 0):
    """The group's versions as ``DescribeModelPackage`` responses, newest first (at most
    ``limit``; 0: all). Versions are numbered 1, 2, ... and sagedrop never deletes one.

    Found by describing versions, not by ``ListModelPackages``: IAM grants that action
    only on every resource ("*"), DescribeModelPackage on this group's versions alone. The
    newest is found in about 2·log2(n) calls (doubling, then halving).
    """
    group_arn = _group_arn(sagemaker, group)
    if group_arn is None or _exists(sagemaker, group_arn, 1) is None:
        return
    low, high = 1, 2
    while _exists(sagemaker, group_arn, high) is not None:
        low, high = high, high * 2
    while high - low > 1:  # version `low` exists, `high` does not
        middle = (low + high) // 2
        if _exists(sagemaker, group_arn, middle) is not None:
            low = middle
        else:
            high = middle
    for count, number in enumerate(range(low, 0, -1)):
        if limit and count >= limit:
            return
        package = _exists(sagemaker, group_arn, number)
        if package is not None:
            yield package


def describe(sagemaker, arn: str) -> dict:
    return sagemaker.describe_model_package(ModelPackageName=arn)


def versions(sagemaker, group: str) -> list[Version]:
    """Every version of the group, newest first."""
    return [Version.of(package) for package in newest_first(sagemaker, group)]


def version_of_job(sagemaker, group: str, debug_job: str, newest: int = 20) -> dict | None:
    """The version registered for ``debug_job``, among the newest ``newest`` (a repeated
    event arrives soon after the first), or None."""
    for package in newest_first(sagemaker, group, limit=newest):
        if (
            package.get("CustomerMetadataProperties", {}).get(vocabulary.META_DEBUG_JOB)
            == debug_job
        ):
            return package
    return None


def latest_approved(sagemaker, group: str) -> dict | None:
    """The newest approved version, or None."""
    return next(
        (p for p in newest_first(sagemaker, group) if p.get("ModelApprovalStatus") == APPROVED),
        None,
    )


def find(sagemaker, group: str, number: int) -> dict | None:
    group_arn = _group_arn(sagemaker, group)
    return None if group_arn is None else _exists(sagemaker, group_arn, number)


def serving_version(sagemaker, endpoint: dict | None) -> int | None:
    """The version an endpoint (a ``DescribeEndpoint`` response, or None) serves: its
    model's ``sagedrop:model-package`` tag; None when nothing registered serves."""
    if not endpoint:
        return None
    _, tags = serving_model(sagemaker, endpoint)
    number = tags.get(vocabulary.TAG_MODEL_PACKAGE, "").rsplit("/", 1)[-1]
    return int(number) if number.isdigit() else None


def serving_model(sagemaker, endpoint: dict) -> tuple[str, dict[str, str]]:
    """The name and tags of the model an endpoint (a ``DescribeEndpoint`` response) serves."""
    name, tags, _ = serving_model_artifact(sagemaker, endpoint)
    return name, tags


def serving_model_artifact(sagemaker, endpoint: dict) -> tuple[str, dict[str, str], str | None]:
    """The name, tags and ``model.tar.gz`` URI of the model an endpoint serves."""
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    tags = sagemaker.list_tags(ResourceArn=model["ModelArn"]).get("Tags", [])
    artifact = model.get("PrimaryContainer", {}).get("ModelDataUrl")
    return model["ModelName"], {t["Key"]: t["Value"] for t in tags}, artifact


GATE_WORDS = " by the quality gate for "


def gate_description(approval: str, debug_job: str, reasons: list[str]) -> str:
    """A version's description as the gate writes it: its approval and every reason."""
    return f"{approval}{GATE_WORDS}{debug_job}: " + "; ".join(reasons)


def gate_rejection(package: dict) -> str | None:
    """The gate's reasons where the gate Rejected this version (whatever its approval is
    now), else None."""
    description = package.get("ModelPackageDescription") or ""
    head, found, reasons = description.partition(GATE_WORDS)
    if not found or head != REJECTED:
        return None
    return reasons.partition(": ")[2] or "no reason recorded"


def set_approval(sagemaker, package: dict, approval: str, why: str) -> None:
    """Approve or reject one version (a ``DescribeModelPackage`` response).

    Its metadata is sent again unchanged: SageMaker merges it, while moto (the tests'
    registry) replaces the properties with whatever the update carries.
    """
    params = {
        "ModelPackageArn": package["ModelPackageArn"],
        "ModelApprovalStatus": approval,
        "ApprovalDescription": aws_limits.description(why),
    }
    if package.get("CustomerMetadataProperties"):
        params["CustomerMetadataProperties"] = package["CustomerMetadataProperties"]
    sagemaker.update_model_package(**params)
