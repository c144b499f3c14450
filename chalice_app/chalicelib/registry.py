"""A dataset's model versions in SageMaker Model Registry: find, list, choose, approve.

One model package group per dataset (``naming.model_package_group``); every debug job
that reaches the gate becomes one version, approved or rejected with the gate's reasons.
The endpoint serves the newest *approved* version: approving a version deploys it, and
rejecting the serving one (a rollback) brings back the newest approved before it.

Every function takes the SageMaker client, so the pipeline (``clients.client``), the CLI
on AWS (boto3) and the CLI on the local cloud share them.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import ClientError

from chalicelib import aws_limits, requests

APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"
LIST_PAGE = 100


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

    @classmethod
    def of(cls, package: dict) -> Version:
        properties = package.get("CustomerMetadataProperties", {})
        accuracy = properties.get(requests.META_TEST_ACCURACY)
        created = package.get("CreationTime")
        return cls(
            number=int(package["ModelPackageVersion"]),
            arn=package["ModelPackageArn"],
            approval=package.get("ModelApprovalStatus", ""),
            created=created.isoformat() if hasattr(created, "isoformat") else str(created),
            debug_job=properties.get(requests.META_DEBUG_JOB, ""),
            test_accuracy=None if accuracy is None else float(accuracy),
            rules=properties.get(requests.META_RULES, ""),
            serving=properties.get(requests.META_SERVING, ""),
            description=package.get("ModelPackageDescription", ""),
            approval_description=package.get("ApprovalDescription", ""),
        )


def _not_found(error: ClientError) -> bool:
    message = error.response.get("Error", {}).get("Message", "").lower()
    return error.response.get("Error", {}).get("Code") == "ValidationException" and (
        "does not exist" in message or "not found" in message or "could not find" in message
    )


def group_exists(sagemaker, group: str) -> bool:
    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as exc:
        if _not_found(exc):
            return False
        raise
    return True


def ensure_group(sagemaker, group: str, pipeline: str) -> None:
    """Create the dataset's group unless it exists (a race with another gate is fine)."""
    if group_exists(sagemaker, group):
        return
    try:
        sagemaker.create_model_package_group(
            **requests.model_package_group_request(group, pipeline)
        )
    except ClientError as exc:
        if "already exist" not in exc.response.get("Error", {}).get("Message", "").lower():
            raise


def summaries(sagemaker, group: str, approval: str | None = None, limit: int = 0) -> list[dict]:
    """The group's versions, newest first (``ListModelPackages``, every page, or the first
    ``limit``); [] when the group does not exist."""
    params = {
        "ModelPackageGroupName": group,
        "ModelPackageType": "Versioned",
        "SortBy": "CreationTime",
        "SortOrder": "Descending",
        "MaxResults": min(limit, LIST_PAGE) if limit else LIST_PAGE,
    }
    if approval:
        params["ModelApprovalStatus"] = approval
    found: list[dict] = []
    while True:
        try:
            page = sagemaker.list_model_packages(**params)
        except ClientError as exc:
            if _not_found(exc):
                return []
            raise
        found += page.get("ModelPackageSummaryList", [])
        token = page.get("NextToken")
        if not token or (limit and len(found) >= limit):
            break
        params["NextToken"] = token
    found.sort(key=lambda s: int(s["ModelPackageVersion"]), reverse=True)
    return found[:limit] if limit else found


def describe(sagemaker, arn: str) -> dict:
    return sagemaker.describe_model_package(ModelPackageName=arn)


def versions(sagemaker, group: str) -> list[Version]:
    """Every version of the group, newest first, fully described."""
    return [
        Version.of(describe(sagemaker, s["ModelPackageArn"])) for s in summaries(sagemaker, group)
    ]


def version_of_job(sagemaker, group: str, debug_job: str, newest: int = 20) -> dict | None:
    """The version registered for ``debug_job``, among the newest ``newest`` (a repeated
    event arrives soon after the first), or None."""
    for summary in summaries(sagemaker, group, limit=newest):
        package = describe(sagemaker, summary["ModelPackageArn"])
        if package.get("CustomerMetadataProperties", {}).get(requests.META_DEBUG_JOB) == debug_job:
            return package
    return None


def latest_approved(sagemaker, group: str) -> dict | None:
    """The newest approved version (``DescribeModelPackage``), or None."""
    found = summaries(sagemaker, group, approval=APPROVED, limit=1)
    return describe(sagemaker, found[0]["ModelPackageArn"]) if found else None


def find(sagemaker, group: str, number: int) -> dict | None:
    for summary in summaries(sagemaker, group):
        if int(summary["ModelPackageVersion"]) == number:
            return describe(sagemaker, summary["ModelPackageArn"])
    return None


def serving_version(sagemaker, endpoint: dict | None) -> int | None:
    """The version an endpoint (a ``DescribeEndpoint`` response, or None) serves: its
    model's ``sagedrop:model-package`` tag; None when nothing registered serves."""
    if not endpoint:
        return None
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    tags = sagemaker.list_tags(ResourceArn=model["ModelArn"]).get("Tags", [])
    arn = next((t["Value"] for t in tags if t["Key"] == requests.TAG_MODEL_PACKAGE), "")
    number = arn.rsplit("/", 1)[-1]
    return int(number) if number.isdigit() else None


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
