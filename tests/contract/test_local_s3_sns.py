"""The local S3, SNS and event state against boto3 on moto: same shapes, same error codes."""

from __future__ import annotations

import json
import shutil
import time

import boto3
import pytest
from aws_lambda_powertools.utilities.data_classes import S3Event
from botocore.exceptions import ClientError, ParamValidationError

from sagedrop.local.s3 import FolderWatcher, LocalS3
from sagedrop.local.sns import LocalSNS, read_notifications
from sagedrop.local.state import State

BUCKET = "conformance"


@pytest.fixture
def local_s3(tmp_path):
    state = State(tmp_path / "state.sqlite")
    s3 = LocalS3(tmp_path, state)
    s3.ensure_bucket(BUCKET)
    yield s3
    state.close()


@pytest.fixture
def moto_s3(moto):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    return s3


def _error(call, **params) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return caught.value.response["Error"]["Code"], caught.value.response["ResponseMetadata"][
        "HTTPStatusCode"
    ]


def test_s3_matches_moto(local_s3, moto_s3):
    body = b"0123456789" * 100
    for s3 in (local_s3, moto_s3):
        s3.put_object(Bucket=BUCKET, Key="a/b c.bin", Body=body, ContentType="application/zip")
    answers = []
    for s3 in (local_s3, moto_s3):
        put = s3.put_object(Bucket=BUCKET, Key="a/x.txt", Body=b"x")
        head = s3.head_object(Bucket=BUCKET, Key="a/b c.bin")
        ranged = s3.get_object(Bucket=BUCKET, Key="a/b c.bin", Range="bytes=10-19")
        suffix = s3.get_object(Bucket=BUCKET, Key="a/b c.bin", Range="bytes=-5")
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="a/")
        answers.append(
            {
                "put_etag": put["ETag"],
                "etag": head["ETag"],
                "length": head["ContentLength"],
                "type": head["ContentType"],
                "range": (ranged["ContentRange"], ranged["Body"].read()),
                "range_status": ranged["ResponseMetadata"]["HTTPStatusCode"],
                "suffix": suffix["Body"].read(),
                "keys": [o["Key"] for o in listing["Contents"]],
                "sizes": [o["Size"] for o in listing["Contents"]],
                "missing_get": _error(s3.get_object, Bucket=BUCKET, Key="nope"),
                "missing_head": _error(s3.head_object, Bucket=BUCKET, Key="nope"),
                "missing_bucket": _error(s3.get_object, Bucket="no-such-bucket", Key="k")[0],
                "bad_range": _error(s3.get_object, Bucket=BUCKET, Key="a/x.txt", Range="bytes=5-9")[
                    0
                ],
            }
        )
    assert answers[0] == answers[1]


def test_s3_rejects_what_boto3_rejects(local_s3):
    with pytest.raises(ParamValidationError):
        local_s3.put_object(Bucket=BUCKET, Body=b"no key")


def test_every_write_fires_one_s3_event_with_an_encoded_key(local_s3):
    local_s3.put_object(Bucket=BUCKET, Key="datasets/my set+1.zip", Body=b"z")
    [(_, kind, body)] = local_s3.state.pending_events()
    assert kind == "s3"
    record = S3Event(body).record
    assert record.event_name == "ObjectCreated:Put"
    assert record.s3.get_object.key == "datasets/my+set%2B1.zip"
    assert record.s3.get_object.etag == local_s3.head_object(
        Bucket=BUCKET, Key="datasets/my set+1.zip"
    )["ETag"].strip('"')


def test_a_file_copied_in_by_hand_fires_once_when_complete(local_s3, tmp_path):
    watcher = FolderWatcher(local_s3)
    target = tmp_path / "buckets" / BUCKET / "images" / "hand.jpg"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half")
    assert watcher.scan() == []  # first sight: maybe still being written
    with open(target, "ab") as handle:
        handle.write(b" and the rest")
    assert watcher.scan() == []  # changed since: still not complete
    assert watcher.scan() == [(BUCKET, "images/hand.jpg")]
    assert watcher.scan() == []  # announced once
    events = local_s3.state.pending_events()
    assert len(events) == 1
    assert local_s3.get_object(Bucket=BUCKET, Key="images/hand.jpg")["Body"].read() == (
        b"half and the rest"
    )
    shutil.copy(target, target.with_name("copy.jpg"))
    watcher.scan()
    assert watcher.scan() == [(BUCKET, "images/copy.jpg")]


def test_sns_prints_one_line_and_appends_jsonl(tmp_path):
    lines = []
    sns = LocalSNS(tmp_path, say=lines.append)
    topic = "arn:aws:sns:local:000000000000:sagedrop"
    response = sns.publish(TopicArn=topic, Subject="hello", Message="first line\nmore")
    assert response["MessageId"]
    assert lines == ["[sns] hello | first line"]
    [stored] = read_notifications(sns.topic_file(topic))
    assert stored["Subject"] == "hello" and stored["Message"] == "first line\nmore"
    with pytest.raises(ParamValidationError):
        sns.publish(TopicArn=topic)


def test_state_delivers_each_event_once(tmp_path):
    state = State(tmp_path / "s.sqlite")
    other = State(tmp_path / "s.sqlite")  # e.g. `sagedrop drop` in another process
    event_id = other.add_event("s3", {"Records": []})
    assert [e[0] for e in state.pending_events()] == [event_id]
    assert state.claim_event(event_id) is True
    assert other.claim_event(event_id) is False
    assert state.pending_events() == []
    assert json.loads(json.dumps(state.event_outcomes()))[0]["id"] == event_id
    state.close()
    other.close()
    time.sleep(0)


def test_sns_keeps_one_message_per_notice_id_across_a_restart(tmp_path):
    """Issue 19: a handler re-run after a crash sent "rollback" and "ready" twice. The
    notice id (the same on every delivery of one event) is kept once, also by a new
    process reading the same topic file, and a line cut short by a kill is skipped."""
    from chalicelib.notify import DELIVERY, Notice, publish

    topic = "arn:aws:sns:local:000000000000:t"
    notice = Notice(stage="deploy", status="rollback", summary="back to version 1")
    sns = LocalSNS(tmp_path, say=lambda _: None)
    token = DELIVERY.set("the same event, delivered again")
    try:
        publish(sns, topic, notice)
        publish(sns, topic, notice)
        with open(sns.topic_file(topic), "a") as handle:
            handle.write('{"MessageId": "cut sho')  # killed mid-line
        again = LocalSNS(tmp_path, say=lambda _: None)
        publish(again, topic, notice)
        publish(again, topic, Notice(stage="deploy", status="rollback", summary="to version 2"))
    finally:
        DELIVERY.reset(token)
    summaries = [r["event"]["summary"] for r in read_notifications(sns.topic_file(topic))]
    assert summaries == ["back to version 1", "to version 2"]
    # outside any delivery, two notices that read alike are two notices
    publish(again, topic, notice)
    publish(again, topic, notice)
    assert len(read_notifications(sns.topic_file(topic))) == 4


def test_delivered_events_are_pruned_after_the_retention_and_nothing_else(tmp_path):
    """Issue 19: the state grew ~5.8 KB per image, never pruned."""
    state = State(tmp_path / "state.sqlite")
    for i in range(25):
        state.add_event("s3", {"n": i}, f"e{i}")
    for i in range(20):
        assert state.claim_event(f"e{i}")
        if i < 15:
            state.finish_event(f"e{i}", "done")
    old = time.time() + 3600  # an hour from now, everything delivered is an hour old
    assert state.prune_events(older_than=7200, now=old) == 0  # within the retention
    assert state.prune_events(older_than=1800, batch=4, now=old) == 15  # in batches of 4
    left = {e["id"]: e for e in state.event_outcomes()}
    assert sorted(left, key=lambda k: int(k[1:])) == [f"e{i}" for i in range(15, 25)]
    assert all(e["delivered"] is None for e in left.values())  # claimed and pending stay
