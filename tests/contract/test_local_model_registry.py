"""The local Model Registry against moto's, request for request, and against the API
reference where moto is silent or differs."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError, ParamValidationError

from chalicelib import registry, registry_requests
from sagedrop.local.sagemaker.model_registry import PACKAGE_EVENT, LocalModelRegistry
from sagedrop.local.state import State

SPEC = {
    "Containers": [{"Image": "img", "ModelDataUrl": "s3://b/jobs/x/model.tar.gz",
                    "Environment": {"SAGEMAKER_PROGRAM": "inference.py"}}],
    "SupportedContentTypes": ["image/jpeg", "image/png"],
    "SupportedResponseMIMETypes": ["application/json"],
}  # fmt: skip
SUMMARY_KEYS = {
    "ModelPackageGroupName",
    "ModelPackageVersion",
    "ModelPackageArn",
    "CreationTime",
    "ModelPackageStatus",
    "ModelApprovalStatus",
}


@pytest.fixture
def local(tmp_path):
    events: list[tuple] = []
    state = State(tmp_path / "state.sqlite")
    yield LocalModelRegistry(state, lambda *event: events.append(event)), events
    state.close()


@pytest.fixture
def moto_client(moto):
    return boto3.client("sagemaker", region_name="us-east-1")


def scenario(sagemaker) -> dict:
    """The calls the pipeline and the CLI make, in order; what each answered."""
    out: dict = {}
    out["group"] = sagemaker.create_model_package_group(
        ModelPackageGroupName="sagedrop-pets", ModelPackageGroupDescription="pets"
    )
    out["created"] = [
        sagemaker.create_model_package(
            ModelPackageGroupName="sagedrop-pets",
            ModelPackageDescription=f"version by the gate ({status})",
            InferenceSpecification=SPEC,
            ModelApprovalStatus=status,
            CustomerMetadataProperties={"sagedrop:debug-job": f"sdd-pets-{i}"},
            ClientToken=f"sdd-pets-{i}",
        )
        for i, status in enumerate(("Approved", "Rejected", "Approved"), start=1)
    ]
    out["approved"] = sagemaker.list_model_packages(
        ModelPackageGroupName="sagedrop-pets",
        ModelApprovalStatus="Approved",
        ModelPackageType="Versioned",
        SortBy="CreationTime",
        SortOrder="Descending",
    )["ModelPackageSummaryList"]
    third = out["created"][2]["ModelPackageArn"]
    out["described"] = sagemaker.describe_model_package(ModelPackageName=third)
    sagemaker.update_model_package(
        ModelPackageArn=third,
        ModelApprovalStatus="Rejected",
        ApprovalDescription="rolled back to version 1",
        CustomerMetadataProperties={"sagedrop:debug-job": "sdd-pets-3"},
    )
    out["updated"] = sagemaker.describe_model_package(ModelPackageName=third)
    out["latest"] = registry.latest_approved(sagemaker, "sagedrop-pets")
    out["versions"] = registry.versions(sagemaker, "sagedrop-pets")
    out["errors"] = {}
    for name, call in {
        "describe missing package": lambda: sagemaker.describe_model_package(
            ModelPackageName=third.rsplit("/", 1)[0] + "/9"
        ),
        "describe missing group": lambda: sagemaker.describe_model_package_group(
            ModelPackageGroupName="sagedrop-cars"
        ),
        "package in a missing group": lambda: sagemaker.create_model_package(
            ModelPackageGroupName="sagedrop-cars", InferenceSpecification=SPEC
        ),
    }.items():
        with pytest.raises(ClientError) as caught:
            call()
        out["errors"][name] = caught.value.response["Error"]["Code"]
    return out


def test_the_local_registry_answers_as_moto_does(local, moto_client):
    ours, theirs = scenario(local[0]), scenario(moto_client)
    assert [c["ModelPackageArn"].rsplit("/", 2)[1:] for c in ours["created"]] == [
        c["ModelPackageArn"].rsplit("/", 2)[1:] for c in theirs["created"]
    ]
    for mine, moto_summary in zip(ours["approved"], theirs["approved"], strict=True):
        assert set(mine) >= SUMMARY_KEYS and set(moto_summary) >= SUMMARY_KEYS
        assert mine["ModelPackageVersion"] == moto_summary["ModelPackageVersion"]
    assert [s["ModelPackageVersion"] for s in ours["approved"]] == [3, 1]
    shared = set(theirs["described"]) - {"CreatedBy", "ResponseMetadata"}
    assert shared <= set(ours["described"])
    compared = (
        "ModelPackageVersion",
        "ModelApprovalStatus",
        "InferenceSpecification",
        "CustomerMetadataProperties",
        "ModelPackageStatus",
        "ModelPackageDescription",
    )
    for key in compared:
        assert ours["described"][key] == theirs["described"][key], key
    for key in ("ModelApprovalStatus", "ApprovalDescription", "CustomerMetadataProperties"):
        assert ours["updated"][key] == theirs["updated"][key], key
    assert ours["latest"]["ModelPackageVersion"] == theirs["latest"]["ModelPackageVersion"] == 1
    assert [(v.number, v.approval) for v in ours["versions"]] == [
        (v.number, v.approval) for v in theirs["versions"]
    ]
    assert ours["errors"] == theirs["errors"]
    assert set(ours["errors"].values()) == {"ValidationException"}


def test_every_registry_request_is_validated_by_botocore(local, moto_client):
    for sagemaker in (local[0], moto_client):
        with pytest.raises(ParamValidationError):
            sagemaker.update_model_package(ModelApprovalStatus="Approved")
        with pytest.raises(ParamValidationError):
            sagemaker.list_model_packages(ModelPackageGroupName="g", MaxResults="ten")
        with pytest.raises(ParamValidationError):
            sagemaker.create_model_package_group(ModelPackageGroupName="")


def test_enums_and_maxima_are_checked_as_the_service_does(local):
    """botocore's validator checks neither; SageMaker answers ValidationException."""
    sagemaker = local[0]
    with pytest.raises(ClientError, match=r"Member must satisfy enum value set: \[Approved"):
        sagemaker.list_model_packages(ModelPackageGroupName="g", ModelApprovalStatus="Maybe")
    with pytest.raises(ClientError, match="length less than or equal to 63"):
        sagemaker.create_model_package_group(ModelPackageGroupName="x" * 64)
    with pytest.raises(ClientError, match="value less than or equal to 100"):
        sagemaker.list_model_packages(ModelPackageGroupName="g", MaxResults=101)


def test_what_the_api_reference_adds_and_moto_does_not_check(local):
    """A repeated ClientToken is the same package; a group's name is taken once; a
    description holds no control characters; at most 50 metadata properties."""
    sagemaker, events = local
    sagemaker.create_model_package_group(ModelPackageGroupName="sagedrop-pets")
    with pytest.raises(ClientError, match="already exists"):
        sagemaker.create_model_package_group(ModelPackageGroupName="sagedrop-pets")
    request = {"ModelPackageGroupName": "sagedrop-pets", "InferenceSpecification": SPEC,
               "ClientToken": "sdd-pets-1", "ModelApprovalStatus": "Approved"}  # fmt: skip
    first = sagemaker.create_model_package(**request)["ModelPackageArn"]
    assert sagemaker.create_model_package(**request)["ModelPackageArn"] == first
    assert first.endswith(":model-package/sagedrop-pets/1")
    with pytest.raises(ClientError, match="characters SageMaker refuses"):
        sagemaker.create_model_package(**{**request, "ClientToken": "t2",
                                          "ModelPackageDescription": "a\nb"})  # fmt: skip
    many = {f"k{i}": "v" for i in range(51)}
    with pytest.raises(
        ClientError, match="customerMetadataProperties' failed to satisfy constraint"
    ):
        sagemaker.create_model_package(**{**request, "ClientToken": "t3",
                                          "CustomerMetadataProperties": many})  # fmt: skip
    # versions are numbered without gaps: refused requests took no number
    second = sagemaker.create_model_package(**{**request, "ClientToken": "t4"})["ModelPackageArn"]
    assert second.endswith("/2")
    sagemaker.update_model_package(ModelPackageArn=second, ModelApprovalStatus="Rejected")
    kinds = [(event[0], event[1]["ModelPackageVersion"], event[1]["ModelApprovalStatus"])
             for event in events]  # fmt: skip
    assert kinds == [
        (PACKAGE_EVENT, 1, "Approved"),
        (PACKAGE_EVENT, 2, "Approved"),
        (PACKAGE_EVENT, 2, "Rejected"),
    ]
    assert isinstance(events[0][1]["CreationTime"], int)  # EventBridge's epoch milliseconds


def test_a_serverless_endpoint_config_as_moto_keeps_it_and_the_api_limits(tmp_path, moto_client):
    from sagedrop.local.s3 import LocalS3
    from sagedrop.local.sagemaker import LocalSageMaker

    state = State(tmp_path / "sm.sqlite")
    local = LocalSageMaker(tmp_path, state, LocalS3(tmp_path, state), lambda *e: None, print)
    model = {"ModelName": "sdd-pets-1-model", "ExecutionRoleArn": "arn:aws:iam::1:role/r",
             "PrimaryContainer": {"Image": "img", "ModelDataUrl": "s3://b/m.tar.gz"}}  # fmt: skip
    config = registry_requests.endpoint_config_request(
        "sdd-pets-1", "sdd-pets-1-model", "serverless:2048:5"
    )
    described = []
    for sagemaker in (local, moto_client):
        sagemaker.create_model(**model)
        sagemaker.create_endpoint_config(**config)
        described.append(
            sagemaker.describe_endpoint_config(EndpointConfigName=config["EndpointConfigName"])
        )
    assert described[0]["ProductionVariants"] == described[1]["ProductionVariants"]
    for variant, message in (
        ({"ServerlessConfig": {"MemorySizeInMB": 1536, "MaxConcurrency": 5}}, "MemorySizeInMB"),
        (
            {
                "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5},
                "InstanceType": "ml.m5.large",
            },
            "cannot be combined",
        ),
        ({"ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 201}}, "less than or"),
    ):
        bad = {"VariantName": "AllTraffic", "ModelName": "sdd-pets-1-model", **variant}
        with pytest.raises(ClientError, match=message):
            local.create_endpoint_config(EndpointConfigName="bad", ProductionVariants=[bad])
    state.close()


def test_models_and_rollback_on_aws_through_boto3(tmp_path, moto_client, monkeypatch):
    """``--stage``: the same commands through boto3 (moto here), with the stage's prefix."""
    import contextlib
    import io
    import json

    from chalicelib import vocabulary
    from sagedrop import aws_configure, cli

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"stages": {"test": {"environment_variables": {
        "ENDPOINT_PREFIX": "team-a"}}}}))  # fmt: skip
    monkeypatch.setattr(aws_configure, "CHALICE_CONFIG", config)
    sm = moto_client
    sm.create_model_package_group(ModelPackageGroupName="team-a-digits")
    arns = [
        sm.create_model_package(
            ModelPackageGroupName="team-a-digits", InferenceSpecification=SPEC,
            ModelApprovalStatus="Approved",
            CustomerMetadataProperties={vocabulary.META_DEBUG_JOB: f"sdd-digits-{n}",
                                        vocabulary.META_TEST_ACCURACY: "0.900000"},
        )["ModelPackageArn"]
        for n in (1, 2)
    ]  # fmt: skip
    sm.create_model(
        ModelName="sdd-digits-2-model", ExecutionRoleArn="arn:aws:iam::123456789012:role/r",
        PrimaryContainer={"Image": "img", "ModelDataUrl": "s3://b/m.tar.gz"},
        Tags=[{"Key": vocabulary.TAG_MODEL_PACKAGE, "Value": arns[1]}],
    )  # fmt: skip
    sm.create_endpoint_config(
        **registry_requests.endpoint_config_request(
            "sdd-digits-2", "sdd-digits-2-model", "instance:ml.m5.large:1"
        )
    )
    sm.create_endpoint(EndpointName="team-a-digits", EndpointConfigName="sdd-digits-2-config")

    def run(*argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(list(argv))
        return code, out.getvalue()

    code, out = run("models", "--stage", "test", "--json")
    [listing] = json.loads(out)["datasets"]
    assert code == 0 and (listing["dataset"], listing["serving_version"]) == ("digits", 2)
    code, out = run("rollback", "digits", "--stage", "test")
    assert code == 0 and "version 1 serves again" in out
    [newest, first] = registry.versions(sm, "team-a-digits")
    assert (newest.approval, first.approval) == ("Rejected", "Approved")
    assert newest.approval_description.startswith("rolled back from version 2 to version 1")
