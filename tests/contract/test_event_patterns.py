"""The handlers' EventBridge patterns, evaluated by moto's EventBridge.

Each ``on_cw_event`` pattern in ``app.py`` becomes a rule with an SQS target, exactly as
``chalice deploy`` creates it; then SageMaker-shaped events are put on the bus and we see
which handler would have run.
"""

from __future__ import annotations

import json

import boto3
import pytest
from chalice.app import CloudWatchEventConfig
from moto import mock_aws

import app as chalice_app

REGION = "eu-west-1"


def envelope(detail_type: str, detail: dict, source: str = "aws.sagemaker") -> dict:
    return {"Source": source, "DetailType": detail_type, "Detail": json.dumps(detail)}


TUNING = "SageMaker HyperParameter Tuning Job State Change"
TRAINING = "SageMaker Training Job State Change"
ENDPOINT = "SageMaker Endpoint State Change"
PACKAGE = "SageMaker Model Package State Change"
CASES = [
    (envelope(TUNING, {"HyperParameterTuningJobName": "sdt-digits-1a2b3c4d",
                       "HyperParameterTuningJobStatus": "Completed"}), "on_tuning_finished"),
    (envelope(TUNING, {"HyperParameterTuningJobName": "sdt-digits-1a2b3c4d",
                       "HyperParameterTuningJobStatus": "Failed"}), "on_tuning_finished"),
    (envelope(TUNING, {"HyperParameterTuningJobName": "sdt-digits-1a2b3c4d",
                       "HyperParameterTuningJobStatus": "InProgress"}), None),
    (envelope(TUNING, {"HyperParameterTuningJobName": "someone-elses-tuning",
                       "HyperParameterTuningJobStatus": "Completed"}), None),
    (envelope(TRAINING, {"TrainingJobName": "sdd-digits-1a2b3c4d",
                         "TrainingJobStatus": "Completed"}), "on_training_finished"),
    (envelope(TRAINING, {"TrainingJobName": "sdd-digits-1a2b3c4d",
                         "TrainingJobStatus": "Stopped"}), "on_training_finished"),
    # The tuner's own trials never start a deployment.
    (envelope(TRAINING, {"TrainingJobName": "sdt-digits-1a2b3c4d-001-0a1b2c3d",
                         "TrainingJobStatus": "Completed"}), None),
    (envelope(TRAINING, {"TrainingJobName": "nightly-etl", "TrainingJobStatus": "Completed"}),
     None),
    (envelope(ENDPOINT, {"EndpointName": "sagedrop-digits", "EndpointStatus": "IN_SERVICE"}),
     "on_endpoint_changed"),
    (envelope(ENDPOINT, {"EndpointName": "sagedrop-digits", "EndpointStatus": "InService"}),
     "on_endpoint_changed"),
    (envelope(ENDPOINT, {"EndpointName": "sagedrop-digits", "EndpointStatus": "UPDATING"}), None),
    (envelope(ENDPOINT, {"EndpointName": "other", "EndpointStatus": "IN_SERVICE"}), None),
    (envelope(ENDPOINT, {"EndpointName": "sagedropx", "EndpointStatus": "IN_SERVICE"}), None),
    (envelope(TRAINING, {"TrainingJobName": "sdd-x", "TrainingJobStatus": "Completed"},
              source="my.app"), None),
    # Approving or rejecting a dataset's version moves its endpoint; pending ones wait.
    (envelope(PACKAGE, {"ModelPackageGroupName": "sagedrop-digits", "ModelPackageVersion": 2,
                        "ModelApprovalStatus": "Approved"}), "on_model_package_changed"),
    (envelope(PACKAGE, {"ModelPackageGroupName": "sagedrop-digits", "ModelPackageVersion": 2,
                        "ModelApprovalStatus": "Rejected"}), "on_model_package_changed"),
    (envelope(PACKAGE, {"ModelPackageGroupName": "sagedrop-digits", "ModelPackageVersion": 2,
                        "ModelApprovalStatus": "PendingManualApproval"}), None),
    (envelope(PACKAGE, {"ModelPackageGroupName": "fraud-models", "ModelPackageVersion": 2,
                        "ModelApprovalStatus": "Approved"}), None),
]  # fmt: skip


@pytest.fixture(scope="module")
def bus():
    with mock_aws():
        events = boto3.client("events", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        queues = {}
        for source in chalice_app.app.event_sources:
            if not isinstance(source, CloudWatchEventConfig):
                continue
            url = sqs.create_queue(QueueName=source.name)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            events.put_rule(Name=source.name, EventPattern=json.dumps(source.event_pattern))
            events.put_targets(
                Rule=source.name, Targets=[{"Id": "1", "Arn": arn["Attributes"]["QueueArn"]}]
            )
            queues[source.name] = url
        yield events, sqs, queues


@pytest.mark.parametrize(("entry", "handler"), CASES)
def test_patterns_route_like_eventbridge(bus, entry, handler):
    events, sqs, queues = bus
    assert events.put_events(Entries=[entry])["FailedEntryCount"] == 0
    received = []
    for name, url in queues.items():
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        for message in messages:
            received.append(name)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert received == ([handler] if handler else [])


@pytest.mark.parametrize(("entry", "handler"), CASES)
def test_the_local_bus_routes_like_moto(entry, handler):
    """The local cloud's EventBridge gives the same answers as moto's for every case."""
    from sagedrop.local.bus import routes_of, targets

    delivered = {
        "version": "0",
        "source": entry["Source"],
        "detail-type": entry["DetailType"],
        "detail": json.loads(entry["Detail"]),
    }
    matched = targets(routes_of(chalice_app), "eventbridge", delivered)
    assert [r.name for r in matched] == ([handler] if handler else [])


@pytest.mark.parametrize(
    ("pattern", "event", "expected"),
    [
        ({"a": [{"anything-but": ["x", "y"]}]}, {"a": "z"}, True),
        ({"a": [{"anything-but": ["x", "y"]}]}, {"a": "x"}, False),
        ({"a": [{"anything-but": {"prefix": "sdt-"}}]}, {"a": "sdd-1"}, True),
        ({"a": [{"anything-but": {"prefix": "sdt-"}}]}, {"a": "sdt-1"}, False),
        ({"a": [{"anything-but": "x"}]}, {}, False),
        ({"a": [{"exists": False}]}, {}, True),
        ({"a": [{"numeric": [">", 0, "<=", 5]}]}, {"a": 5}, True),
        ({"a": ["x"]}, {"a": ["y", "x"]}, True),
        ({"a": {"b": ["1"]}}, {"a": {"b": "1"}}, True),
        ({"a": {"b": ["1"]}}, {"a": "1"}, False),
    ],
)
def test_eventbridge_operators(pattern, event, expected):
    from sagedrop.local.bus import matches

    assert matches(pattern, event) is expected
