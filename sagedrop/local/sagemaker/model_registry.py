"""SageMaker Model Registry on one machine: model package groups and versioned packages.

The operations the pipeline and the CLI use (create, describe and list groups and
packages; update a package's approval), each request validated by botocore first and
then by what the API reference adds (``aws_limits``). Responses and errors have AWS's
shapes; every package created or updated sends the "SageMaker Model Package State
Change" event, whose detail is the package as ``DescribeModelPackage`` shows it.

Where moto differs (it ignores ``ClientToken``, and accepts a second group of the same
name), this follows the API reference;
``tests/contract/test_local_model_registry.py`` holds both to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from chalicelib import aws_limits
from sagedrop.local.aws_shapes import arn, event_detail, metadata, public, stamp
from sagedrop.local.aws_shapes import validate as validate_shape
from sagedrop.local.sagemaker import errors
from sagedrop.local.state import State

GROUP, PACKAGE = "model-package-group", "model-package"
PACKAGE_EVENT = "SageMaker Model Package State Change"
APPROVALS = ("Approved", "Rejected", "PendingManualApproval")


def validate(method: str, params: dict) -> None:
    validate_shape("sagemaker", method, params)
    operation = "".join(part.title() for part in method.split("_"))
    for field in ("ModelPackageDescription", "ApprovalDescription", "ModelPackageGroupDescription"):
        problem = field in params and aws_limits.description_problem(field, params[field])
        if problem:
            raise errors.validation(operation, problem)
    if "CustomerMetadataProperties" in params:
        problem = aws_limits.metadata_problem(params["CustomerMetadataProperties"])
        if problem:
            raise errors.validation(operation, problem)


class LocalModelRegistry:
    def __init__(self, state: State, emit: Callable[..., None]):
        self.state = state
        self.emit = emit
        self._lock = threading.Lock()  # version numbers are handed out one at a time

    # groups ------------------------------------------------------------------------------
    def create_model_package_group(self, **params) -> dict:
        validate("create_model_package_group", params)
        name = params["ModelPackageGroupName"]
        group_arn = arn(GROUP, name)
        record = {
            "ModelPackageGroupName": name,
            "ModelPackageGroupArn": group_arn,
            "ModelPackageGroupDescription": params.get("ModelPackageGroupDescription", ""),
            "CreationTime": stamp(),
            "ModelPackageGroupStatus": "Completed",
        }
        if not self.state.insert(GROUP, name, record):
            raise errors.validation(
                "CreateModelPackageGroup",
                f"Model Package Group already exists: {group_arn}",
            )
        if params.get("Tags"):
            self.state.put("tags", group_arn, {"Tags": params["Tags"]})
        return {**metadata(), "ModelPackageGroupArn": group_arn}

    def describe_model_package_group(self, **params) -> dict:
        validate("describe_model_package_group", params)
        return public(self._group(params["ModelPackageGroupName"], "DescribeModelPackageGroup"))

    def list_model_package_groups(self, **params) -> dict:
        validate("list_model_package_groups", params)
        groups = [
            g
            for g in self.state.all(GROUP)
            if params.get("NameContains", "") in g["ModelPackageGroupName"]
        ]
        key = "ModelPackageGroupName" if params.get("SortBy") == "Name" else "CreationTime"
        groups.sort(
            key=lambda g: g[key], reverse=params.get("SortOrder", "Ascending") == "Descending"
        )
        page, token = _page(groups, params)
        summaries = []
        for group in page:
            summary = public(group)
            summary.pop("ResponseMetadata")
            summaries.append(summary)
        response = {**metadata(), "ModelPackageGroupSummaryList": summaries}
        if token:
            response["NextToken"] = token
        return response

    # packages ----------------------------------------------------------------------------
    def create_model_package(self, **params) -> dict:
        validate("create_model_package", params)
        group = params.get("ModelPackageGroupName")
        if not group:
            raise errors.validation(
                "CreateModelPackage",
                "the local Model Registry keeps versioned packages only: give "
                "ModelPackageGroupName",
            )
        if self.state.get(GROUP, group) is None:
            raise errors.validation("CreateModelPackage", "Model Package Group does not exist.")
        approval = params.get("ModelApprovalStatus", "PendingManualApproval")
        with self._lock:
            mine = [p for p in self.state.all(PACKAGE) if p["ModelPackageGroupName"] == group]
            token = params.get("ClientToken")
            for package in mine:
                if token and package.get("_local", {}).get("client_token") == token:
                    # The same request again: the same package, as an idempotency token promises.
                    return {**metadata(), "ModelPackageArn": package["ModelPackageArn"]}
            version = len(mine) + 1
            package_arn = f"{arn(PACKAGE, group)}/{version}"
            record = {
                "ModelPackageName": group,
                "ModelPackageGroupName": group,
                "ModelPackageVersion": version,
                "ModelPackageArn": package_arn,
                "CreationTime": stamp(),
                "InferenceSpecification": params.get("InferenceSpecification", {}),
                "ModelPackageStatus": "Completed",
                "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
                "CertifyForMarketplace": params.get("CertifyForMarketplace", False),
                "ModelApprovalStatus": approval,
                "LastModifiedTime": stamp(),
                "_local": {"client_token": token},
            }
            for optional in (
                "ModelPackageDescription",
                "ModelMetrics",
                "CustomerMetadataProperties",
            ):
                if optional in params:
                    record[optional] = params[optional]
            self.state.put(PACKAGE, package_arn, record)
        if params.get("Tags"):
            self.state.put("tags", package_arn, {"Tags": params["Tags"]})
        self._emit(record)
        return {**metadata(), "ModelPackageArn": package_arn}

    def describe_model_package(self, **params) -> dict:
        validate("describe_model_package", params)
        return public(self._package(params["ModelPackageName"], "DescribeModelPackage"))

    def list_model_packages(self, **params) -> dict:
        validate("list_model_packages", params)
        kind = params.get("ModelPackageType", "Both")
        packages = [
            p
            for p in self.state.all(PACKAGE)
            if kind in ("Versioned", "Both")
            and params.get("ModelPackageGroupName", p["ModelPackageGroupName"])
            == p["ModelPackageGroupName"]
            and params.get("ModelApprovalStatus", p["ModelApprovalStatus"])
            == p["ModelApprovalStatus"]
            and params.get("NameContains", "") in p["ModelPackageName"]
        ]
        if params.get("SortBy") == "Name":
            order = lambda p: (p["ModelPackageName"], p["ModelPackageVersion"])  # noqa: E731
        else:
            order = lambda p: (p["CreationTime"], p["ModelPackageVersion"])  # noqa: E731
        packages.sort(key=order, reverse=params.get("SortOrder", "Ascending") == "Descending")
        page, token = _page(packages, params)
        fields = (
            "ModelPackageName",
            "ModelPackageGroupName",
            "ModelPackageVersion",
            "ModelPackageArn",
            "ModelPackageDescription",
            "CreationTime",
            "ModelPackageStatus",
            "ModelApprovalStatus",
        )
        summaries = []
        for package in page:
            summary = public({k: package[k] for k in fields if k in package})
            summary.pop("ResponseMetadata")
            summaries.append(summary)
        response = {**metadata(), "ModelPackageSummaryList": summaries}
        if token:
            response["NextToken"] = token
        return response

    def update_model_package(self, **params) -> dict:
        validate("update_model_package", params)
        package_arn = params["ModelPackageArn"]
        record = self._package(package_arn, "UpdateModelPackage")
        changes: dict[str, object] = {"LastModifiedTime": stamp()}
        for field in ("ModelApprovalStatus", "ApprovalDescription"):
            if field in params:
                changes[field] = params[field]
        if "CustomerMetadataProperties" in params:  # merged into what is there, as on AWS
            changes["CustomerMetadataProperties"] = {
                **record.get("CustomerMetadataProperties", {}),
                **params["CustomerMetadataProperties"],
            }
        record = self.state.update(PACKAGE, record["ModelPackageArn"], **changes)
        self._emit(record)
        return {**metadata(), "ModelPackageArn": record["ModelPackageArn"]}

    # helpers -----------------------------------------------------------------------------
    def _group(self, name: str, operation: str) -> dict:
        record = self.state.get(GROUP, name)
        if record is None:
            raise errors.validation(
                operation,
                f"ModelPackageGroup {arn(GROUP, name)} does not exist.",
            )
        return record

    def _package(self, name: str, operation: str) -> dict:
        """A versioned package is named by its ARN (a group name alone names none)."""
        record = self.state.get(PACKAGE, name.lower()) or self.state.get(PACKAGE, name)
        if record is None:
            raise errors.validation(operation, f"ModelPackage {name} does not exist.")
        return record

    def resume(self) -> None:
        """After a restart: each version's latest state change is queued again under its
        deterministic id, so an event lost between a change and its event (a crash) is
        sent, and one already sent is not."""
        for record in self.state.all(PACKAGE):
            self._emit(record)

    def _emit(self, record: dict) -> None:
        detail = event_detail(record)
        event_id = f"model-package:{record['ModelPackageArn']}:{record['LastModifiedTime']}"
        self.emit(PACKAGE_EVENT, detail, [record["ModelPackageArn"]], event_id)


def _page(items: list, params: dict) -> tuple[list, str | None]:
    start = int(params.get("NextToken") or 0)
    size = params.get("MaxResults", 100)
    end = start + size
    return items[start:end], str(end) if end < len(items) else None
