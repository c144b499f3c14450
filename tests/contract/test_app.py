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
    """One rule for everything under images/ (issue 19: a rule per suffix left .gif,
    .webp, .tif and .Jpg unanswered); the answers it also sees are ignored by the handler."""
    sources = {s.name: s for s in chalice_app.app.event_sources}
    image_rules = [s for s in sources.values() if getattr(s, "bucket", None) == INFERENCE]
    assert [(r.name, r.prefix, r.suffix) for r in image_rules] == [
        ("on_image_uploaded", "images/", None)
    ]
    dataset = sources["on_dataset_uploaded"]
    assert (dataset.bucket, dataset.prefix, dataset.suffix) == (DATA, "datasets/", ".zip")
    training = sources["on_training_finished"].event_pattern["detail"]
    assert training["TrainingJobName"] == [{"prefix": "sdd-"}]


def test_an_answer_written_next_to_an_image_triggers_nothing_but_an_ignore(env):
    with Client(chalice_app.app) as client:
        for key in ("images/pets/x.jpg.json", "images/pets/x.jpg.error.json"):
            event = s3_event(client, INFERENCE, key, "abc")
            assert client.lambda_.invoke("on_image_uploaded", event).payload == "ignored"
    assert env.messages() == []


def test_a_redelivered_event_names_its_notices_the_same(env):
    """Issue 19: after a kill -9 the same event ran again and its notice went out twice.
    Its notices carry an id made from the event, the same on every delivery."""
    key = "datasets/evil.zip"
    etag = env.put_zip(key, {**layout(), "../escape.jpg": b"x"})
    with Client(chalice_app.app) as client:
        event = s3_event(client, DATA, key, etag)
        for _ in range(2):
            client.lambda_.invoke("on_dataset_uploaded", event)
        other = s3_event(client, DATA, key, etag)
        other["Records"][0]["eventTime"] = "2026-12-01T00:00:00.000Z"
        client.lambda_.invoke("on_dataset_uploaded", other)
    ids = [m["notice_id"] for m in env.messages()]
    assert len(ids) == 3 and ids[0] == ids[1] != ids[2]
