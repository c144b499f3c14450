"""Deploying: make a dataset's endpoint serve the newest approved version of its model.

The decision reads the registry and the endpoint, never the event that triggered it, so
repeated or reordered events (an approval, a rollback, an endpoint coming into service)
all lead to the same endpoint, and the second of two identical calls changes nothing.
"""

from __future__ import annotations

from typing import Literal

from botocore.exceptions import ClientError

from chalicelib import (
    aws_errors,
    naming,
    registry,
    registry_requests,
    sagemaker_requests,
    vocabulary,
)
from chalicelib.clients import client
from chalicelib.notify import Notice
from chalicelib.outcome import Outcome, logger
from chalicelib.settings import Settings


def describe_endpoint(name: str) -> dict | None:
    """The endpoint, or None when it does not exist; any other error (access, throttling)
    propagates, so the gate never mistakes "cannot see it" for "nothing is serving"."""
    try:
        return client("sagemaker").describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if aws_errors.is_not_found(exc):
            return None
        raise


def deploy_latest(settings: Settings, pipeline: str, because: str = "") -> Outcome:
    """Serve the dataset's newest approved version; a notice when the endpoint changes
    (``because``: what changed in the registry). An endpoint busy creating or updating
    is left alone: its "in service" event calls this again."""
    sagemaker = client("sagemaker")
    group = naming.model_package_group(settings.endpoint_prefix, pipeline)
    endpoint = settings.endpoint_for(pipeline)
    package = registry.latest_approved(sagemaker, group)
    if package is None:
        logger.info("no approved version in %s: %s is left as it is", group, endpoint)
        return _kept_serving(sagemaker, pipeline, group, endpoint, because)
    properties = package.get("CustomerMetadataProperties", {})
    version = package["ModelPackageVersion"]
    if vocabulary.META_DEBUG_JOB not in properties:
        raise ValueError(
            f"version {version} of {group} has no {vocabulary.META_DEBUG_JOB} property: it was "
            "not registered by sagedrop's gate, so sagedrop does not deploy it"
        )
    model = registry_requests.model_request(settings, package)
    config = registry_requests.endpoint_config_request(
        properties[vocabulary.META_DEBUG_JOB],
        model["ModelName"],
        properties.get(vocabulary.META_SERVING) or sagemaker_requests.serving_tag(settings),
    )
    config_name = config["EndpointConfigName"]
    described = describe_endpoint(endpoint)
    if described and described["EndpointConfigName"] == config_name:
        return Outcome("unchanged")
    if described and described["EndpointStatus"] not in ("InService", "Failed"):
        logger.info("%s is %s: version %s follows when it is in service", endpoint,
                    described["EndpointStatus"], version)  # fmt: skip
        return Outcome("waiting")
    if described and config_name in (described.get("FailureReason") or ""):
        logger.warning("%s already failed to serve %s; not trying again", endpoint, config_name)
        return Outcome("failed-before")
    aws_errors.create_unless_exists(sagemaker.create_model, model)
    aws_errors.create_unless_exists(sagemaker.create_endpoint_config, config)
    previous = registry.serving_version(sagemaker, described)
    action = _create_or_update_endpoint(endpoint, config_name, described)
    rollback = previous is not None and previous > version
    description = package.get("ModelPackageDescription", "")
    overridden = registry.gate_rejection(package)  # approved by hand over the gate
    change = "" if previous is None else f", replacing version {previous}"
    if rollback:
        change = f": a rollback from version {previous}"
    notice = Notice(
        stage="deploy",
        status="rollback" if rollback else "deploying",
        dataset=properties.get(vocabulary.META_DATASET, pipeline),
        jobs={
            "model package": package["ModelPackageArn"],
            "model": model["ModelName"],
            "endpoint": endpoint,
        },
        decision=f"serve version {version} ({action} endpoint)",
        reasons=[because or package.get("ApprovalDescription") or description]
        + ([f"the quality gate had Rejected this version: {overridden}"] if overridden else []),
        summary=f"Endpoint {endpoint} {action} to serve version {version} of {pipeline}{change}"
        + (", approved by hand over the quality gate's rejection." if overridden else "."),
    )
    return Outcome(action, [notice], ["Rollbacks" if rollback else "Deployments"])


def _kept_serving(sagemaker, pipeline: str, group: str, endpoint: str, because: str) -> Outcome:
    """No approved version is left. Where the endpoint still serves a version that was
    just Rejected (the only one there was), it keeps serving it (AWS has nothing else to
    serve, and deleting the endpoint is the operator's call): a notice says so."""
    if not because:  # not a rejection: nothing changed in what may serve
        return Outcome("none-approved")
    serving = registry.serving_version(sagemaker, describe_endpoint(endpoint))
    package = None if serving is None else registry.find(sagemaker, group, serving)
    if package is None or package.get("ModelApprovalStatus") != registry.REJECTED:
        return Outcome("none-approved")
    notice = Notice(
        stage="deploy",
        status="kept-serving",
        dataset=pipeline,
        jobs={"model package": package["ModelPackageArn"], "endpoint": endpoint},
        decision=f"keep serving version {serving}",
        reasons=[because],
        summary=(
            f"Version {serving} of {pipeline} is Rejected, but no approved version is left, so "
            f"{endpoint} keeps serving it: approve another version (sagedrop approve "
            f"{pipeline} --version N) or delete the endpoint to stop serving it."
        ),
    )
    return Outcome("kept-serving", [notice], ["RejectedStillServing"])


def _create_or_update_endpoint(
    endpoint: str, endpoint_config: str, described: dict | None
) -> Literal["creating", "unchanged", "updating"]:
    sagemaker = client("sagemaker")
    if described is None:
        sagemaker.create_endpoint(
            **registry_requests.create_endpoint_request(endpoint, endpoint_config)
        )
        return "creating"
    if described["EndpointConfigName"] == endpoint_config:
        return "unchanged"
    sagemaker.update_endpoint(
        **registry_requests.update_endpoint_request(endpoint, endpoint_config)
    )
    return "updating"
