"""A stand-in AWS for the flow's tests: moto for S3, SNS, SQS and Model Registry (which
it implements, through botocore's real clients), Stubbers that validate every other
SageMaker call, and a debug job as DescribeTrainingJob returns it."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import boto3
from botocore.stub import Stubber

from chalicelib import notify
from chalicelib.settings import Settings
from sagedrop_contract import job_contract
from tests.helpers import evaluation_document, layout

REGION = "eu-west-1"
DATA, INFERENCE = "sagedrop-data", "sagedrop-inference"
ARN = "arn:aws:sagemaker:eu-west-1:123456789012"


REGISTRY_CALLS = frozenset(
    {
        "create_model_package_group",
        "describe_model_package_group",
        "create_model_package",
        "describe_model_package",
        "list_model_packages",
        "update_model_package",
    }
)


class SageMaker:
    """One SageMaker client for the flow: Model Registry calls go to moto (which
    implements them, through botocore's real client), the rest to the Stubber."""

    def __init__(self, stubbed, registry_client):
        self._stubbed, self._registry = stubbed, registry_client

    def __getattr__(self, name: str):
        return getattr(self._registry if name in REGISTRY_CALLS else self._stubbed, name)


class Cloud:
    """moto for S3/SNS/SQS and Model Registry, Stubbers for the rest of SageMaker, all
    handed to the flow via clients."""

    def __init__(self):
        self.s3 = boto3.client("s3", region_name=REGION)
        for bucket in (DATA, INFERENCE):
            self.s3.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
            )
        sns = boto3.client("sns", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        self.topic = sns.create_topic(Name="sagedrop")["TopicArn"]
        self.queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])
        sns.subscribe(TopicArn=self.topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"])
        self.sqs = sqs
        self.sagemaker = boto3.client("sagemaker", region_name=REGION)
        self.runtime = boto3.client("sagemaker-runtime", region_name=REGION)
        self.stub = Stubber(self.sagemaker)
        self.runtime_stub = Stubber(self.runtime)
        self.registry = boto3.client("sagemaker", region_name=REGION)
        self.clients = {
            "s3": self.s3,
            "sns": sns,
            "sagemaker": SageMaker(self.sagemaker, self.registry),
            "sagemaker-runtime": self.runtime,
        }
        self.settings = Settings(
            data_bucket=DATA,
            inference_bucket=INFERENCE,
            topic_arn=self.topic,
            sagemaker_role_arn="arn:aws:iam::123456789012:role/sm",
            training_image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6",
            inference_image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.6",
            code_s3_uri=f"s3://{DATA}/code/sourcedir.tar.gz",
        )

    def messages(self) -> list[dict]:
        out = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10)
            if not got.get("Messages"):
                return out
            for message in got["Messages"]:
                envelope = json.loads(message["Body"])
                out.append(
                    {
                        "subject": envelope["Subject"],
                        "text": envelope["Message"],
                        "notice_id": envelope.get("MessageAttributes", {})
                        .get(notify.NOTICE_ID_ATTRIBUTE, {})
                        .get("Value"),
                        **notify.parse_message(envelope["Message"]),
                    }
                )
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])

    def put_zip(self, key: str, members: dict[str, bytes]) -> str:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return self.s3.put_object(Bucket=DATA, Key=key, Body=buffer.getvalue())["ETag"]


def in_use(operation: str) -> dict:
    return {
        "service_error_code": "ResourceInUse",
        "service_message": f"{operation}: resource already exists",
        "http_status_code": 400,
    }


def model_archive(
    classes=("001.cat", "002.dog"),
    untested=(),
    omit=(),
    coverage=True,
    classes_json=None,
    config=None,
) -> bytes:
    """A model.tar.gz as train.py writes it (tiny stand-in weights); ``classes_json``
    replaces its classes.json with other bytes, ``config`` changes config.json's keys."""
    members = {
        "model.pt": b"weights",
        "code/inference.py": b"def model_fn(model_dir): ...\n",
        "classes.json": classes_json
        or json.dumps(
            [{"index": i, "folder": c, "label": c.split(".")[-1]} for i, c in enumerate(classes)]
        ).encode(),
        "config.json": json.dumps(
            {
                "format_version": 1,
                "backbone": "resnet18",
                "num_classes": len(classes),
                "preprocessing": {"image_size": 224},
                **(
                    {"test_coverage": {"classes": len(classes), "untested_classes": list(untested)}}
                    if coverage
                    else {}
                ),
                **(config or {}),
            }
        ).encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, data in members.items():
            if member in omit:
                continue
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def debug_job(
    cloud,
    test_accuracy,
    rules,
    archive=True,
    model=None,
    name="sdd-pets-1234abcd",
    reported_only=False,
    hyperparameters=None,
    evaluation=None,
    channels=(),
    audit=None,
):
    """A described debug job: verdicts as rule_<Name> final metrics (what the gate reads)
    and, when ``archive``, rules.json with the details in its output.tar.gz; its dataset
    zip and model artifact (``model``: the archive's bytes) are in the data bucket.

    Every rule the job ran reports a verdict, as a real debug job's do: ``rules`` are the
    ones that say something, the rest report NoIssuesFound (``reported_only``: none else)."""
    if not reported_only:
        named = {r["RuleConfigurationName"] for r in rules}
        rules = [
            *rules,
            *(
                {"RuleConfigurationName": n, "RuleEvaluationStatus": "NoIssuesFound"}
                for n in job_contract.RULE_NAMES
                if n not in named
            ),
        ]
    prefix = f"jobs/{name}"
    cloud.put_zip("datasets/pets.zip", layout())
    cloud.s3.put_object(
        Bucket=DATA,
        Key=f"{prefix}/{name}/output/model.tar.gz",
        Body=model_archive() if model is None else model,
    )
    if archive:
        buffer = io.BytesIO()
        if evaluation is None:
            evaluation = evaluation_document(test_accuracy if test_accuracy is not None else 0.0)
        members = {"rules.json": rules}
        if evaluation is not False:
            members["evaluation.json"] = evaluation
        if audit is not None:
            members["data_audit.json"] = audit
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for member, document in members.items():
                data = json.dumps(document).encode()
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        cloud.s3.put_object(
            Bucket=DATA, Key=f"{prefix}/{name}/output/output.tar.gz", Body=buffer.getvalue()
        )
    codes = {"NoIssuesFound": 0, "IssuesFound": 1, "Error": 2}
    rule_metrics = [
        {
            "MetricName": f"rule_{rule['RuleConfigurationName']}",
            "Value": codes[rule["RuleEvaluationStatus"]],
            "Timestamp": "2026-11-24T10:00:00Z",
        }
        for rule in rules
    ]
    return name, {
        "TrainingJobName": name,
        "TrainingJobArn": f"{ARN}:training-job/sdd",
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "HyperParameters": hyperparameters or {"debug": '"true"'},
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "img"},
        "InputDataConfig": [
            {
                "ChannelName": "training",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{DATA}/datasets/pets.zip",
                    }
                },
            },
            *channels,
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{DATA}/{prefix}"},
        "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 30, "InstanceType": "ml.m5.large"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": "2026-11-24T10:00:00Z",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{DATA}/{prefix}/{name}/output/model.tar.gz"},
        "FinalMetricDataList": [
            {
                "MetricName": "test_accuracy",
                "Value": test_accuracy,
                "Timestamp": "2026-11-24T10:00:00Z",
            },
            *rule_metrics,
        ],
    }
