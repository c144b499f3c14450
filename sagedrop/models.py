"""``sagedrop models``, ``approve`` and ``rollback``: a dataset's versions, by hand.

The same code works on the local cloud (``--root``: its SQLite state, whose events the
running ``sagedrop up`` delivers) and on AWS (``--stage``: boto3 with the stage's
settings). Nothing here deploys: it changes approvals in Model Registry, and the
pipeline's "Model Package State Change" handler makes the endpoint follow, with its
SNS notice, exactly as when a person approves a version in SageMaker Studio.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import naming, registry


class ModelsError(ValueError):
    """What the user asked cannot be done; the message says why."""


@dataclasses.dataclass
class Target:
    """Where the registry is: a SageMaker client and the stage's endpoint prefix."""

    sagemaker: Any  # a boto3 SageMaker client, or the local cloud's
    prefix: str
    close: Callable[[], None] | None = None

    def group(self, name: str) -> str:
        return naming.model_package_group(self.prefix, naming.dataset_slug(name))

    def endpoint(self, name: str) -> str:
        return naming.endpoint_name(self.prefix, naming.dataset_slug(name))


def local_target(root: Path) -> Target:
    """The local cloud under ``root``; its prefix is the one ``sagedrop up`` uses."""
    from sagedrop.local.aws_shapes import eventbridge_event
    from sagedrop.local.s3 import LocalS3
    from sagedrop.local.sagemaker import LocalSageMaker
    from sagedrop.local.state import State

    if not (Path(root) / "state.sqlite").exists():
        raise ModelsError(f"no local cloud under {root}")
    state = State(Path(root) / "state.sqlite")

    def emit(detail_type, detail, resources, event_id=None):
        state.add_event("eventbridge", eventbridge_event(detail_type, detail, resources), event_id)

    sagemaker = LocalSageMaker(Path(root), state, LocalS3(Path(root), state), emit, print)
    return Target(sagemaker, naming.endpoint_prefix(os.environ), state.close)


def aws_target(stage: str, config_path: Path | None = None) -> Target:
    """boto3, with the stage's ENDPOINT_PREFIX from ``.chalice/config.json``."""
    import boto3

    from sagedrop.aws_configure import CHALICE_CONFIG

    path = config_path or CHALICE_CONFIG
    stages = json.loads(path.read_text()).get("stages", {}) if path.exists() else {}
    if stage not in stages:
        raise ModelsError(f"stage {stage!r} is not configured: run `sagedrop aws configure`")
    prefix = naming.endpoint_prefix(stages[stage].get("environment_variables", {}))
    return Target(boto3.client("sagemaker"), prefix)


def _described_endpoint(target: Target, name: str) -> dict | None:
    try:
        return target.sagemaker.describe_endpoint(EndpointName=target.endpoint(name))
    except ClientError as exc:
        if "could not find" in exc.response.get("Error", {}).get("Message", "").lower():
            return None
        raise


def dataset_names(target: Target) -> list[str]:
    """Every dataset with a group in the registry (groups named ``<prefix>-<dataset>``)."""
    names, token = [], None
    while True:
        params = {"NameContains": f"{target.prefix}-", "MaxResults": 100, "SortBy": "Name"}
        if token:
            params["NextToken"] = token
        page = target.sagemaker.list_model_package_groups(**params)
        for group in page.get("ModelPackageGroupSummaryList", []):
            name = naming.pipeline_of_group(target.prefix, group["ModelPackageGroupName"])
            if name:
                names.append(name)
        token = page.get("NextToken")
        if not token:
            return names


def listing(target: Target, name: str) -> dict:
    """One dataset's versions (newest first) and the one its endpoint serves."""
    group = target.group(name)
    if not registry.group_exists(target.sagemaker, group):
        raise ModelsError(
            f"no dataset named {name!r} has registered versions (see sagedrop models)"
        )
    endpoint = _described_endpoint(target, name)
    serving = registry.serving_version(target.sagemaker, endpoint)
    versions = registry.versions(target.sagemaker, group)
    return {
        "dataset": naming.dataset_slug(name),
        "group": group,
        "endpoint": target.endpoint(name),
        "endpoint_status": endpoint.get("EndpointStatus") if endpoint else None,
        "serving_version": serving,
        "versions": [{**dataclasses.asdict(v), "serving": v.number == serving} for v in versions],
    }


def print_listing(entry: dict) -> None:
    status = entry["endpoint_status"] or "no endpoint"
    serving = entry["serving_version"]
    print(
        f"{entry['dataset']}  (endpoint {entry['endpoint']}: {status}"
        + ("" if serving is None else f", serving version {serving}")
        + ")"
    )
    for v in entry["versions"]:
        accuracy = "-" if v["test_accuracy"] is None else f"{v['test_accuracy']:.4f}"
        mark = "*" if v["serving"] else " "
        print(
            f" {mark} v{v['number']:<3} {v['approval']:<21} test_accuracy {accuracy:<7} "
            f"{v['created'][:19]}  {v['debug_job']}"
        )
        if v.get("macro_f1") is not None or v.get("worst_class"):
            macro = "-" if v.get("macro_f1") is None else f"{v['macro_f1']:.4f}"
            print(f"        macro-F1 {macro}; worst class {v.get('worst_class') or '-'}")
        if v.get("data_audit"):
            print(f"        data audit: {v['data_audit']}"
                  + ("" if v.get("label_error_candidates") is None else
                     f" label-error-candidates={v['label_error_candidates']}"))  # fmt: skip
        if v["rules"]:
            print(f"        rules: {v['rules']}")
        why = v["approval_description"] or v["description"]
        if why:
            print(f"        {why[:300]}")


def _version(target: Target, name: str, number: int) -> dict:
    package = registry.find(target.sagemaker, target.group(name), number)
    if package is None:
        raise ModelsError(f"{name} has no version {number} (see sagedrop models {name})")
    return package


def _over_the_gate(name: str, number: int, package: dict, why: str, override: bool) -> str:
    """The approval's reason; a version the gate Rejected is approved only with
    ``--override``, and its reason then quotes the gate's, for the deploy notice."""
    gate = registry.gate_rejection(package)
    if gate is None:
        return why
    if not override:
        raise ModelsError(
            f"{name} version {number} was Rejected by the quality gate: {gate}. To serve it "
            f"anyway, say so: sagedrop approve {name} --version {number} --override"
        )
    return f"{why}, over the quality gate's rejection ({gate})"


def approve(
    target: Target, name: str, number: int, why: str, reject: bool = False, override: bool = False
) -> str:
    """Approve (or reject) one version; the pipeline deploys the newest approved one."""
    package = _version(target, name, number)
    wanted = registry.REJECTED if reject else registry.APPROVED
    if package.get("ModelApprovalStatus") == wanted:
        return f"{name} version {number} is already {wanted}; nothing changed"
    if not reject:
        why = _over_the_gate(name, number, package, why, override)
    serving = registry.serving_version(target.sagemaker, _described_endpoint(target, name))
    registry.set_approval(target.sagemaker, package, wanted, why)
    newest = registry.latest_approved(target.sagemaker, target.group(name))
    warning = "" if reject or why.find("quality gate's rejection") < 0 else " (over the gate)"
    if wanted == registry.APPROVED and newest and newest["ModelPackageVersion"] > number:
        return (
            f"{name} version {number} is Approved{warning}; version "
            f"{newest['ModelPackageVersion']} is newer and approved, so it keeps serving (to "
            f"serve {number}: sagedrop rollback {name} --version {number})"
        )
    if newest is None:
        if reject and serving == number:
            return (
                f"{name} version {number} is Rejected, but no approved version is left, so "
                f"{target.endpoint(name)} keeps serving it: approve another version, or "
                "delete the endpoint to stop serving it (the pipeline sends a notice)"
            )
        return f"{name} version {number} is {wanted}; no approved version is left to serve"
    return (
        f"{name} version {number} is {wanted}{warning}; {target.endpoint(name)} is brought to "
        f"version {newest['ModelPackageVersion']} (the pipeline sends a notice)"
    )


def rollback(target: Target, name: str, number: int | None = None, override: bool = False) -> str:
    """Serve an earlier version again: it is approved (if it was not), and every approved
    version newer than it is rejected, oldest first, with the reason recorded."""
    group = target.group(name)
    serving = registry.serving_version(target.sagemaker, _described_endpoint(target, name))
    if serving is None:
        raise ModelsError(
            f"{target.endpoint(name)} serves no registered version: nothing to roll back"
        )
    versions = registry.versions(target.sagemaker, group)
    if number is None:
        earlier = [v for v in versions if v.number < serving and v.approval == registry.APPROVED]
        if not earlier:
            raise ModelsError(
                f"{name} has no approved version before {serving}; name one with --version"
            )
        number = earlier[0].number
    if number >= serving:
        raise ModelsError(
            f"version {number} is not earlier than the serving version {serving}; "
            f"to serve a newer one: sagedrop approve {name} --version {number}"
        )
    target_package = _version(target, name, number)
    why = f"rolled back from version {serving} to version {number} by sagedrop rollback"
    if target_package.get("ModelApprovalStatus") != registry.APPROVED:
        why = _over_the_gate(name, number, target_package, why, override)
        registry.set_approval(target.sagemaker, target_package, registry.APPROVED, why)
    newer = sorted(
        (v for v in versions if v.number > number and v.approval == registry.APPROVED),
        key=lambda v: v.number,
    )
    for version in newer:  # the serving one last: only then does the endpoint change
        package = registry.describe(target.sagemaker, version.arn)
        registry.set_approval(target.sagemaker, package, registry.REJECTED, why)
    rejected = ", ".join(str(v.number) for v in newer)
    return (
        f"{name}: version {number} serves again once {target.endpoint(name)} is updated "
        f"(rejected: {rejected}); the pipeline sends a notice"
    )
