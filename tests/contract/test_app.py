"""The Chalice handlers as Lambda invokes them: decoding, routing config, no recursion."""

from __future__ import annotations

from urllib.parse import quote_plus

import pytest
from chalice.test import Client

import app as chalice_app
from tests.helpers import layout
from tests.stubbed_aws import DATA, INFERENCE


@pytest.fixture
def env(cloud, monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", DATA)
    monkeypatch.setenv("INFERENCE_BUCKET", INFERENCE)
    monkeypatch.setenv("TOPIC_ARN", cloud.topic)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "sagedrop-test")
    return cloud


def s3_event(client, bucket, key, etag):
    event = client.events.generate_s3_event(bucket=bucket, key=quote_plus(key, safe="/"))
    event["Records"][0]["s3"]["object"]["eTag"] = etag.strip('"')
    return event


def test_url_encoded_hostile_upload_is_decoded_and_rejected(env):
    key = "datasets/my evil+set.zip"
    etag = env.put_zip(key, {**layout(), "../escape.jpg": b"x"})
    with Client(chalice_app.app) as client:
        response = client.lambda_.invoke("on_dataset_uploaded", s3_event(client, DATA, key, etag))
    assert response.payload == "rejected"
    [message] = env.messages()
    assert message["dataset"] == f"s3://{DATA}/{key}"


def test_sagemaker_events_reach_the_flow(env):
    with Client(chalice_app.app) as client:
        event = client.events.generate_cw_event(
            source="aws.sagemaker", detail_type="SageMaker Endpoint State Change",
            detail={"EndpointName": "sagedrop-digits", "EndpointStatus": "IN_SERVICE"},
            resources=[],
        )  # fmt: skip
        assert client.lambda_.invoke("on_endpoint_changed", event).payload == "ready"
        event["detail"] = {
            "TrainingJobName": "sdt-x-12345678-001-0a1b2c3d",
            "TrainingJobStatus": "Completed",
        }
        assert client.lambda_.invoke("on_training_finished", event).payload == "ignored"


def test_event_sources_never_match_the_pipeline_outputs():
    """Predictions end in .json: no image rule's suffix matches them, so no recursion."""
    sources = {s.name: s for s in chalice_app.app.event_sources}
    image_rules = [s for s in sources.values() if getattr(s, "bucket", None) == INFERENCE]
    assert sorted(s.suffix for s in image_rules) == [
        ".JPEG", ".JPG", ".PNG", ".jpeg", ".jpg", ".png"
    ]  # fmt: skip
    for output in ("images/x.jpg.json", "images/x.png.error.json"):
        assert not any(
            output.startswith(r.prefix) and output.endswith(r.suffix) for r in image_rules
        )
    dataset = sources["on_dataset_uploaded"]
    assert (dataset.bucket, dataset.prefix, dataset.suffix) == (DATA, "datasets/", ".zip")
    training = sources["on_training_finished"].event_pattern["detail"]
    assert training["TrainingJobName"] == [{"prefix": "sdd-"}]
