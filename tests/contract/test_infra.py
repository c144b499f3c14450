"""The CloudFormation template: private, encrypted buckets and roles that allow exactly
what the pipeline calls. cfn-lint runs over it in ``make lint``; these checks are the
project's own rules on top."""

from __future__ import annotations

import pytest
from cfnlint.decode import cfn_yaml

from sagedrop.paths import REPO_ROOT

TEMPLATE = cfn_yaml.load(str(REPO_ROOT / "infra_templates" / "pipeline.yaml"))
RESOURCES = TEMPLATE["Resources"]
# Every AWS operation chalicelib.flow makes, as IAM actions.
LAMBDA_ACTIONS = {
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "sns:Publish",
    "sagemaker:CreateHyperParameterTuningJob",
    "sagemaker:DescribeHyperParameterTuningJob",
    "sagemaker:ListTrainingJobsForHyperParameterTuningJob",
    "sagemaker:CreateTrainingJob",
    "sagemaker:DescribeTrainingJob",
    "sagemaker:CreateModel",
    "sagemaker:DescribeModel",
    "sagemaker:ListTags",
    "sagemaker:AddTags",
    "sagemaker:CreateEndpointConfig",
    "sagemaker:DescribeEndpointConfig",
    "sagemaker:CreateEndpoint",
    "sagemaker:UpdateEndpoint",
    "sagemaker:DescribeEndpoint",
    "sagemaker:InvokeEndpoint",
    "sagemaker:CreateModelPackageGroup",
    "sagemaker:DescribeModelPackageGroup",
    "sagemaker:CreateModelPackage",
    "sagemaker:DescribeModelPackage",
    "sagemaker:UpdateModelPackage",
    "iam:PassRole",
}


# What MLflow's client calls to record runs (experiment_tracking), granted only on the
# one tracking server the stack was given.
MLFLOW_ACTIONS = {
    f"sagemaker-mlflow:{name}"
    for name in ("CreateExperiment", "GetExperiment", "GetExperimentByName", "SearchRuns",
                 "CreateRun", "GetRun", "UpdateRun", "LogBatch", "LogMetric", "LogParam",
                 "SetTag")
}  # fmt: skip


def statements(role: str) -> list[dict]:
    """The role's statements, a conditional one (``Fn::If``) as when its condition holds."""
    policies = RESOURCES[role]["Properties"]["Policies"]
    listed = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    return [s["Fn::If"][1] if "Fn::If" in s else s for s in listed]


def actions(statement: dict) -> list[str]:
    value = statement["Action"]
    return [value] if isinstance(value, str) else list(value)


@pytest.mark.parametrize("bucket", ["DataBucket", "InferenceBucket"])
def test_buckets_are_private_encrypted_and_tls_only(bucket):
    properties = RESOURCES[bucket]["Properties"]
    assert all(properties["PublicAccessBlockConfiguration"].values())
    [rule] = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    policy = next(
        r["Properties"]["PolicyDocument"]
        for r in RESOURCES.values()
        if r["Type"] == "AWS::S3::BucketPolicy" and r["Properties"]["Bucket"] == {"Ref": bucket}
    )
    [deny] = policy["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_data_bucket_keeps_versions():
    assert RESOURCES["DataBucket"]["Properties"]["VersioningConfiguration"]["Status"] == "Enabled"


def test_email_subscription_is_optional():
    subscription = RESOURCES["NotificationEmailSubscription"]
    assert subscription["Condition"] == "HasEmail"
    assert TEMPLATE["Parameters"]["NotificationEmail"]["Default"] == ""


def test_lambda_role_allows_every_call_the_flow_makes_and_nothing_wide():
    granted = {a for s in statements("LambdaRole") for a in actions(s)}
    assert granted - {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"} == (
        LAMBDA_ACTIONS | {"s3:ListBucket"} | MLFLOW_ACTIONS
    )
    for statement in statements("LambdaRole"):
        assert statement["Resource"] != "*", statement["Sid"]
        assert not any(a.endswith("*") for a in actions(statement)), statement["Sid"]


@pytest.mark.parametrize("role", ["LambdaRole", "SageMakerExecutionRole"])
def test_mlflow_is_granted_on_the_one_tracking_server_and_only_when_given(role):
    """Issue 23: the sagemaker-mlflow actions, on the stack's MlflowTrackingArn alone, and
    the statement gone (AWS::NoValue) when that parameter is empty (its default)."""
    policies = RESOURCES[role]["Properties"]["Policies"]
    listed = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    [conditional] = [s for s in listed if "Fn::If" in s]
    condition, statement, otherwise = conditional["Fn::If"]
    assert condition == "HasMlflowTracking" and otherwise == {"Ref": "AWS::NoValue"}
    assert set(actions(statement)) == MLFLOW_ACTIONS
    assert statement["Resource"] == {"Ref": "MlflowTrackingArn"}
    assert TEMPLATE["Parameters"]["MlflowTrackingArn"]["Default"] == ""
    assert TEMPLATE["Conditions"]["HasMlflowTracking"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "MlflowTrackingArn"}, ""]}]
    }
    other = [s for s in statements(role) if s is not statement]
    assert not any(a.startswith("sagemaker-mlflow:") for s in other for a in actions(s))


def test_pass_role_only_the_sagemaker_role_only_to_sagemaker():
    [statement] = [s for s in statements("LambdaRole") if "iam:PassRole" in actions(s)]
    assert statement["Resource"] == {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]}
    assert statement["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }


def test_sagemaker_role_writes_only_job_outputs():
    writes = [s for s in statements("SageMakerExecutionRole") if "s3:PutObject" in actions(s)]
    assert [s["Resource"] for s in writes] == [{"Fn::Sub": "${DataBucket.Arn}/jobs/*"}]
    trust = RESOURCES["SageMakerExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}


def test_outputs_cover_what_configure_reads():
    from sagedrop.aws_configure import _REQUIRED_OUTPUTS

    assert set(_REQUIRED_OUTPUTS) <= set(TEMPLATE["Outputs"])


def _operations_called_by_the_pipeline() -> set[str]:
    """Every AWS operation chalicelib calls (``client.<operation>(``), as an IAM action."""
    import re

    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    services = {"sagemaker": "sagemaker", "sagemaker-runtime": "sagemaker", "s3": "s3",
                "sns": "sns"}  # fmt: skip
    # S3 operations authorised by another action's name
    renamed = {"s3:HeadObject": "s3:GetObject", "s3:ListObjectsV2": "s3:ListBucket"}
    known: dict[str, str] = {}
    for service, prefix in services.items():
        for operation in session.get_service_model(service).operation_names:
            known.setdefault(xform_name(operation), f"{prefix}:{operation}")
    source = "".join(
        path.read_text() for path in (REPO_ROOT / "chalice_app" / "chalicelib").glob("*.py")
    )
    calls = re.findall(r"(?:(\w+)|[)\]])\.(\w+)\(", source)  # x.op( and client("s").op(
    # owners that are never clients: modules and compiled patterns (UPPER_CASE constants),
    # and MLflow's client (experiment_tracking's ``self.mlflow``; its grants: MLFLOW_ACTIONS)
    modules = {"re", "json", "os", "math", "hashlib", "zipfile", "tarfile", "mlflow"}
    called = {
        known[name]
        for owner, name in calls
        if name in known and owner not in modules and not owner.lstrip("_").isupper()
    }
    return {renamed.get(action, action) for action in called}


def test_every_operation_the_code_calls_is_granted_to_the_lambda_role():
    """Read from the code itself: a new call without its IAM action fails here, not on AWS."""
    called = _operations_called_by_the_pipeline()
    assert {"sagemaker:CreateModelPackage", "sagemaker:InvokeEndpoint", "s3:GetObject"} <= called
    granted = {a for s in statements("LambdaRole") for a in actions(s)}
    assert called - granted == set()
    assert called <= LAMBDA_ACTIONS | {"s3:ListBucket"}
