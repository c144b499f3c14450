"""The local SageMaker's hosting part (models, endpoint configs, endpoints) against
boto3 on moto: same shapes, same error codes."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError, ParamValidationError

from sagedrop.local.s3 import LocalS3
from sagedrop.local.sagemaker import LocalSageMaker
from sagedrop.local.state import State

BUCKET = "conformance"


def _error(call, **params) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return caught.value.response["Error"]["Code"], caught.value.response["ResponseMetadata"][
        "HTTPStatusCode"
    ]


@pytest.fixture
def local_sagemaker(tmp_path):
    state = State(tmp_path / "state.sqlite")
    s3 = LocalS3(tmp_path, state)
    events = []
    sagemaker = LocalSageMaker(
        tmp_path, state, s3, emit=lambda *a: events.append(a), say=lambda _: None
    )
    yield sagemaker
    sagemaker.shutdown()
    state.close()


@pytest.fixture
def moto_sagemaker(moto):
    return boto3.client("sagemaker", region_name="us-east-1")


MODEL = {
    "ModelName": "sdd-x-model",
    "PrimaryContainer": {"Image": "img", "ModelDataUrl": "s3://b/model.tar.gz"},
    "ExecutionRoleArn": "arn:aws:iam::123456789012:role/sm",
    "Tags": [{"Key": "sagedrop:test-accuracy", "Value": "0.9"}],
}


def test_sagemaker_models_match_moto(local_sagemaker, moto_sagemaker):
    results = []
    for sagemaker in (local_sagemaker, moto_sagemaker):
        created = sagemaker.create_model(**MODEL)
        described = sagemaker.describe_model(ModelName=MODEL["ModelName"])
        tags = sagemaker.list_tags(ResourceArn=created["ModelArn"])["Tags"]
        with pytest.raises(ClientError) as missing:
            sagemaker.describe_model(ModelName="absent")
        results.append(
            {
                "keys": {"ModelName", "ModelArn", "PrimaryContainer", "CreationTime"}
                <= set(described),
                "arn_tail": described["ModelArn"].rsplit(":", 1)[-1],
                "container": described["PrimaryContainer"]["ModelDataUrl"],
                "tags": tags,
                "missing": missing.value.response["Error"]["Code"],
                "created": type(described["CreationTime"]).__name__,
            }
        )
    assert results[0] == results[1]


def test_sagemaker_refuses_what_aws_refuses(local_sagemaker):
    with pytest.raises(ParamValidationError):
        local_sagemaker.create_model(PrimaryContainer={"Image": "i"})  # no ModelName
    local_sagemaker.create_model(**MODEL)
    with pytest.raises(ClientError, match="already existing"):
        local_sagemaker.create_model(**MODEL)
    with pytest.raises(ClientError, match="Could not find endpoint"):
        local_sagemaker.describe_endpoint(EndpointName="sagedrop")
    with pytest.raises(ClientError, match="Could not find model"):
        local_sagemaker.create_endpoint_config(
            EndpointConfigName="c",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "absent",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.large",
                }
            ],
        )
