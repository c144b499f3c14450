"""Issue 10's unlucky operator: kill -9 in a burst, too many jobs at once, a burst of clients.

Nothing dropped is lost and nothing is done twice: every image ends with exactly one
``.json`` (or ``.error.json``) however the process died; training jobs beyond the local
cap wait as ``Pending``; the endpoint accepts a burst of new connections and answers
malformed requests with a 4xx instead of closing on them.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from sagedrop.local.cloud import DATA_BUCKET, INFERENCE_BUCKET, LocalCloud, wait_until
from sagedrop.local.endpoints import EndpointServer
from sagedrop.local.s3 import LocalS3
from sagedrop.local.sagemaker import LocalSageMaker
from sagedrop.local.state import State
from sagedrop.local.training import tar_gz
from tests.helpers import jpeg_bytes

ROLE = "arn:aws:iam::000000000000:role/sagedrop-local"
IMAGES = 150


def _serving_root(root: Path, model_dir: Path) -> None:
    """A root whose endpoint ``sagedrop-test`` (dataset ``test``) is in service with the
    trained test model."""
    cloud = LocalCloud(root, say=lambda _: None)
    cloud.start(watch=False)
    try:
        key = "jobs/test/model.tar.gz"
        cloud.s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=tar_gz(model_dir))
        container = {"Image": "local", "ModelDataUrl": f"s3://{DATA_BUCKET}/{key}"}
        cloud.sagemaker.create_model(
            ModelName="m", PrimaryContainer=container, ExecutionRoleArn=ROLE
        )
        cloud.sagemaker.create_endpoint_config(
            EndpointConfigName="c",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "m",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.large",
                }
            ],
        )
        cloud.sagemaker.create_endpoint(EndpointName="sagedrop-test", EndpointConfigName="c")
        assert cloud.wait_until(
            lambda: cloud.state.get("endpoint", "sagedrop-test")["EndpointStatus"] == "InService",
            60,
        )
        assert cloud.wait_until(lambda: cloud.bus.idle, 30)
    finally:
        cloud.stop()


def _up(root: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sagedrop", "up", "--root", str(root)],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _outputs(root: Path) -> dict[str, list[str]]:
    folder = root / "buckets" / INFERENCE_BUCKET / "images" / "test"
    found: dict[str, list[str]] = {}
    for path in folder.iterdir() if folder.is_dir() else []:
        for suffix in (".error.json", ".json"):
            if path.name.endswith(suffix):
                found.setdefault(path.name[: -len(suffix)], []).append(suffix)
                break
    return found


def _wait(predicate, timeout: float, interval: float = 0.05) -> bool:
    return wait_until(predicate, timeout, interval)


@pytest.mark.slow
def test_7_kill_9_during_a_burst_of_image_drops_loses_and_doubles_nothing(tmp_path, trained_job):
    root = tmp_path / "root"
    _serving_root(root, trained_job["model_dir"])
    # The burst is queued first (as `sagedrop drop` does while `up` is down), so the kill
    # lands while the handlers work through it, whatever the machine's speed.
    state = State(root / "state.sqlite")
    s3 = LocalS3(root, state)
    names = [f"img_{i:03d}.jpg" for i in range(IMAGES)]
    for i, name in enumerate(names):
        s3.put_object(
            Bucket=INFERENCE_BUCKET, Key=f"images/test/{name}", Body=jpeg_bytes((i, 80, 160))
        )
    log = tmp_path / "up.log"
    first = _up(root, log)
    try:
        assert _wait(lambda: len(_outputs(root)) >= 1, 120, interval=0.005), log.read_text()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    unfinished = state.unfinished_events()
    assert unfinished > 0  # the kill interrupted the burst
    second = _up(root, log)
    try:
        assert _wait(lambda: len(_outputs(root)) == IMAGES and state.unfinished_events() == 0, 300)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    outputs = _outputs(root)
    assert sorted(outputs) == sorted(names)
    assert all(kinds == [".json"] for kinds in outputs.values()), {
        k: v for k, v in outputs.items() if v != [".json"]
    }
    for name in names:
        result = json.loads(
            (root / "buckets" / INFERENCE_BUCKET / "images" / "test" / f"{name}.json").read_text()
        )
        assert result["predictions"] and result["endpoint"] == "sagedrop-test"
    notices = (root / "notifications" / "sagedrop.jsonl").read_text().splitlines()
    assert not any('"status": "error"' in line for line in notices)
    state.close()


def _waiting_code(tmp_path: Path, release: Path) -> bytes:
    """A sourcedir.tar.gz whose train.py runs until ``release`` exists: a training job
    that ends when the test says, not after some number of seconds."""
    script = tmp_path / "train.py"
    script.write_text(
        f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.01)\n"
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(script, arcname="train.py")
    return buffer.getvalue()


def test_5_training_processes_are_capped_and_the_rest_wait_as_pending(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEDROP_MAX_TRAINING_JOBS", "1")
    state = State(tmp_path / "state.sqlite")
    s3 = LocalS3(tmp_path, state)
    s3.ensure_bucket("data")
    release = tmp_path / "release"
    s3.put_object(Bucket="data", Key="code/sourcedir.tar.gz", Body=_waiting_code(tmp_path, release))
    s3.put_object(Bucket="data", Key="datasets/x.zip", Body=b"zip")
    sagemaker = LocalSageMaker(tmp_path, state, s3, lambda *a: None, lambda _: None, cpus=2)
    assert sagemaker.max_training_jobs == 1
    for name in ("first", "second"):
        sagemaker.create_training_job(
            TrainingJobName=name,
            HyperParameters={
                "sagemaker_program": "train.py",
                "sagemaker_submit_directory": "s3://data/code/sourcedir.tar.gz",
            },
            AlgorithmSpecification={"TrainingImage": "local", "TrainingInputMode": "File"},
            RoleArn=ROLE,
            InputDataConfig=[
                {
                    "ChannelName": "training",
                    "DataSource": {
                        "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://data/datasets/"}
                    },
                }
            ],
            OutputDataConfig={"S3OutputPath": "s3://data/jobs"},
            ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
            StoppingCondition={"MaxRuntimeInSeconds": 60},
        )
        if name == "first":
            assert _wait(
                lambda: state.get("training-job", "first")["SecondaryStatus"] == "Training", 30
            )

    def secondary(name):
        return state.get("training-job", name)["SecondaryStatus"]

    assert _wait(lambda: secondary("second") == "Pending", 30)
    assert secondary("first") == "Training"  # one process at a time
    release.touch()
    pending = state.get("training-job", "second")["SecondaryStatusTransitions"][-1]
    assert "SAGEDROP_MAX_TRAINING_JOBS" in pending["StatusMessage"]
    assert _wait(lambda: secondary("second") == "Completed", 60)
    first_end = state.get("training-job", "first")["TrainingEndTime"]
    second_training = next(
        t
        for t in state.get("training-job", "second")["SecondaryStatusTransitions"]
        if t["Status"] == "Training"
    )
    assert second_training["StartTime"] >= first_end  # it waited for the slot
    for name in ("first", "second"):  # 12: the input copy goes with the job, logs stay
        assert not (tmp_path / "jobs" / name / "input" / "data").exists()
        assert (tmp_path / "jobs" / name / "logs.txt").exists()
    sagemaker.shutdown()
    state.close()


class _EchoWorker:
    """Stands in for a model: the server's own path is what these tests exercise."""

    def invoke(self, body, content_type, accept):
        return 200, "application/json", json.dumps({"bytes": len(body)}).encode()

    def close(self):
        """Holds nothing that needs stopping."""


@pytest.fixture
def echo_server():
    server = EndpointServer("burst")
    server.swap(_EchoWorker())
    yield server
    server.close()


def test_10_a_burst_of_200_new_connections_is_served_not_reset(echo_server):
    count, answers, errors = 200, [], []
    barrier = threading.Barrier(count)

    def client():
        try:
            barrier.wait(timeout=30)
            with socket.create_connection(("127.0.0.1", echo_server.port), timeout=30) as sock:
                sock.sendall(
                    b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                    b"Content-Length: 3\r\nConnection: close\r\n\r\nabc"
                )
                answers.append(sock.recv(1024).split(b"\r\n", 1)[0])
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and answers == [b"HTTP/1.1 200 OK"] * count


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Length: banana\r\n", b"400"),
        (b"Content-Length: -5\r\n", b"400"),
        (b"", b"411"),
        (b"Transfer-Encoding: gzip\r\n", b"501"),
        (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
        (b"Content-Length: 99999999\r\n", b"413"),
    ],
)
def test_10_malformed_requests_get_a_4xx_reply(echo_server, headers, status):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        reply = sock.recv(1024)
    assert reply.startswith(b"HTTP/1.1 " + status), reply


def test_5_status_shows_jobs_waiting_for_a_slot(capsys):
    from sagedrop.local.status import print_status

    trial = {"name": "t-001", "status": "InProgress", "secondary_status": "Pending"}
    pipeline = {
        "name": "sdt-x",
        "dataset": "s3://d/datasets/x.zip",
        "tuning": {"status": "InProgress", "trials_started": 1, "trials_planned": 4,
                   "best_objective": None},
        "trials": [trial],
        "debug_job": None,
        "gate": None,
        "model": None,
        "predictions": 0,
    }  # fmt: skip
    print_status(
        {
            "datasets": [],
            "runs": [pipeline],
            "rejected_uploads": [],
            "endpoints": [],
            "predictions": 0,
        }
    )
    assert "1 trial(s) waiting for a free local training slot" in capsys.readouterr().out


def test_19_an_oversized_body_is_read_and_answered_413_not_a_broken_pipe(echo_server):
    """Issue 19: the endpoint replied 413 without reading the body and closed; the client
    saw a broken pipe, which the image Lambda took for a transient failure."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", echo_server.port, timeout=30)
    body = b"\0" * (7 * 1024 * 1024)
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": "image/png"})
    response = connection.getresponse()
    assert response.status == 413 and b"the limit is 6553500" in response.read()
    connection.close()


def test_22_the_endpoint_answers_as_torchserve_does(echo_server):
    """Issue 22, from the real stack: a chunked body is served, GET /invocations is 415,
    a body between InvokeEndpoint's 6 MiB and TorchServe's 6,553,500 bytes reaches the
    model, /ping answers TorchServe's JSON."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", echo_server.port, timeout=30)
    connection.request("POST", "/invocations", body=iter([b"ab", b"cd"]),
                       headers={"Content-Type": "image/jpeg"}, encode_chunked=True)  # fmt: skip
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"bytes": 4})
    connection.request("GET", "/invocations")
    response = connection.getresponse()
    assert response.status == 415 and response.read()
    body = b"\0" * (6 * 1024 * 1024 + 1000)
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": "image/png"})
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"bytes": len(body)})
    connection.request("GET", "/ping")
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read()) == {"status": "Healthy"}
    connection.close()
