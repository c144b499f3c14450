"""A dataset's versions on the local cloud: the newest approved one serves, a rollback
brings an earlier one back, and a serverless version throttles beyond its concurrency.

Versions are registered as the gate registers them (the gate's own decisions are tested
in contract/test_flow.py); everything after that is the pipeline itself: the registry's state
change events, the Chalice handler, the endpoint, the image handler, the CLI.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from chalicelib import registry, sagemaker_requests, vocabulary
from sagedrop import cli
from sagedrop.local.cloud import DATA_BUCKET, INFERENCE_BUCKET, LocalCloud
from sagedrop.local.s3 import LocalS3
from sagedrop.local.sagemaker.model_registry import PACKAGE_EVENT
from sagedrop.local.state import State
from sagedrop.local.status import status_object
from sagedrop.local.training import tar_gz
from tests.helpers import LETTERS, jpeg_bytes, relabelled

GROUP = ENDPOINT = "sagedrop-digits"


def register(
    cloud: LocalCloud,
    number: int,
    model_dir: Path,
    serving: str,
    approval="Approved",
    reasons: tuple[str, ...] = ("no blocking rule found issues",),
):
    """Version ``number`` of digits, as the gate registers a debug job's model."""
    job = f"sdd-digits-0000000{number}"
    key = f"jobs/{job}/{job}/output/model.tar.gz"
    cloud.s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=tar_gz(model_dir))
    container = {"Image": "local", "ModelDataUrl": f"s3://{DATA_BUCKET}/{key}",
                 "Environment": {"SAGEMAKER_PROGRAM": "inference.py"}}  # fmt: skip
    cloud.sagemaker.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelPackageDescription=registry.gate_description(approval, job, list(reasons)),
        InferenceSpecification={
            "Containers": [container],
            "SupportedContentTypes": sagemaker_requests.IMAGE_CONTENT_TYPES,
        },
        ModelApprovalStatus=approval,
        CustomerMetadataProperties={
            vocabulary.META_DATASET: "digits",
            vocabulary.META_DEBUG_JOB: job,
            vocabulary.META_SERVING: serving,
            vocabulary.META_TEST_ACCURACY: "0.900000",
        },
        ClientToken=job,
    )
    return f"{job}-config"


def serving_config(cloud: LocalCloud, config: str) -> bool:
    endpoint = cloud.state.get("endpoint", ENDPOINT)
    return bool(
        endpoint
        and endpoint["EndpointStatus"] == "InService"
        and endpoint["EndpointConfigName"] == config
    )


def predict(cloud: LocalCloud, name: str) -> dict:
    key = f"images/digits/{name}.jpg"
    cloud.s3.put_object(Bucket=INFERENCE_BUCKET, Key=key, Body=jpeg_bytes((20, 80, 160)))
    bucket = cloud.root / "buckets" / INFERENCE_BUCKET
    answer, error = bucket / f"{key}.json", bucket / f"{key}.error.json"
    assert cloud.wait_until(lambda: answer.exists() or error.exists(), 120)
    return json.loads((answer if answer.exists() else error).read_text())


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def cloud_events(root: Path) -> list[dict]:
    state = State(root / "state.sqlite")
    try:
        return [e["body"] for e in state.event_outcomes() if e["kind"] == "eventbridge"]
    finally:
        state.close()


def notices(cloud: LocalCloud) -> list[dict]:
    lines = cloud.topic_file.read_text().splitlines() if cloud.topic_file.exists() else []
    return [json.loads(line)["event"] for line in lines]


@pytest.fixture
def cloud(tmp_path):
    cloud = LocalCloud(tmp_path / "root", say=lambda _: None)
    cloud.start(watch=False)
    cloud.sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
    yield cloud
    cloud.stop()


def test_the_newest_approved_version_serves_and_a_rollback_brings_back_the_one_before(
    cloud, trained_job, tmp_path
):
    digits = [
        c["label"] for c in json.loads((trained_job["model_dir"] / "classes.json").read_text())
    ]
    first = register(cloud, 1, trained_job["model_dir"], "instance:ml.m5.large:1")
    assert cloud.wait_until(lambda: serving_config(cloud, first), 120)
    one = predict(cloud, "one")
    assert (one["dataset"], one["endpoint"], one["model_version"]) == ("digits", ENDPOINT, 1)

    letters = relabelled(trained_job["model_dir"], tmp_path / "letters", LETTERS)
    second = register(cloud, 2, letters, "instance:ml.m5.large:1")
    assert cloud.wait_until(lambda: serving_config(cloud, second), 120)
    two = predict(cloud, "two")
    assert two["model_version"] == 2 and {p["label"] for p in two["predictions"]} <= set(LETTERS)

    root = str(cloud.root)
    code, out, _ = run_cli("rollback", "digits", "--root", root)
    assert code == 0 and "version 1 serves again" in out
    assert cloud.wait_until(lambda: serving_config(cloud, first), 120)
    back = predict(cloud, "back")
    assert back["model_version"] == 1 and {p["label"] for p in back["predictions"]} <= set(digits)
    assert cloud.wait_until(lambda: any(n["status"] == "rollback" for n in notices(cloud)), 30)
    [rollback] = [n for n in notices(cloud) if n["status"] == "rollback"]
    assert "serve version 1 of digits: a rollback from version 2" in rollback["summary"]

    code, out, _ = run_cli("models", "digits", "--root", root, "--json")
    [listing] = json.loads(out)["datasets"]
    assert listing["serving_version"] == 1
    assert [(v["number"], v["approval"], v["serving"]) for v in listing["versions"]] == [
        (2, "Rejected", False),
        (1, "Approved", True),
    ]
    assert (
        "rolled back from version 2 to version 1" in listing["versions"][0]["approval_description"]
    )
    [dataset] = status_object(cloud.root)["datasets"]
    assert (dataset["name"], dataset["serving_version"]) == ("digits", 1)
    assert [v["number"] for v in dataset["versions"]] == [2, 1]
    assert dataset["predictions"] == 3
    code, out, _ = run_cli("report", "digits", "--root", root)
    page = (cloud.root / "reports" / "digits.html").read_text()
    assert code == 0 and "v1 (serving)" in page and "rolled back from version 2" in page
    # a second rollback has nowhere to go; an unknown dataset is said so
    code, _, err = run_cli("rollback", "digits", "--root", root)
    assert code == 1 and "no approved version before 1" in err
    code, _, err = run_cli("models", "cars", "--root", root)
    assert code == 1 and "no dataset named 'cars'" in err


def test_manual_approval_and_a_serverless_version_that_throttles(cloud, trained_job):
    pending = register(
        cloud, 1, trained_job["model_dir"], "serverless:1024:1", "PendingManualApproval"
    )
    assert cloud.wait_until(lambda: cloud.state.unfinished_events() == 0, 60)  # event handled
    assert cloud.state.get("endpoint", ENDPOINT) is None  # and nothing deployed
    code, out, _ = run_cli("approve", "digits", "--version", "1", "--root", str(cloud.root))
    assert code == 0 and "is brought to version 1" in out
    assert cloud.wait_until(lambda: serving_config(cloud, pending), 120)
    [variant] = cloud.sagemaker.describe_endpoint(EndpointName=ENDPOINT)["ProductionVariants"]
    assert variant["CurrentServerlessConfig"] == {"MemorySizeInMB": 1024, "MaxConcurrency": 1}

    cloud.bus.retry_delays = ()  # no Lambda retries: the first answer stays
    with cloud.sagemaker.invocation_slot(ENDPOINT):  # its one place is taken
        with pytest.raises(ClientError) as caught:
            cloud.runtime.invoke_endpoint(EndpointName=ENDPOINT, Body=jpeg_bytes(),
                                          ContentType="image/jpeg")  # fmt: skip
        assert caught.value.response["Error"]["Code"] == "ThrottlingException"
        throttled = predict(cloud, "busy")
    assert throttled["error"].startswith("ThrottlingException: (no message): sagedrop-digits is")
    assert "MaxConcurrency" in throttled["error"]
    free = predict(cloud, "free")
    assert free["model_version"] == 1


def test_a_version_whose_event_was_lost_to_a_crash_still_deploys(tmp_path, trained_job):
    """The worst moment: the version is recorded and the process dies before its state
    change event is queued. The next start sends it; the endpoint follows."""
    root = tmp_path / "root"
    cloud = LocalCloud(root, say=lambda _: None)
    cloud.start(watch=False)
    try:
        cloud.sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)

        def die(*_):
            raise KeyboardInterrupt("killed between the record and its event")

        cloud.sagemaker.registry.emit = die
        with pytest.raises(KeyboardInterrupt):
            register(cloud, 1, trained_job["model_dir"], "instance:ml.m5.large:1")
        assert cloud.wait_until(lambda: cloud.state.unfinished_events() == 0, 60)
        assert cloud.state.get("endpoint", ENDPOINT) is None
    finally:
        cloud.stop()
    cloud = LocalCloud(root, say=lambda _: None)
    cloud.start(watch=False)
    try:
        assert cloud.wait_until(lambda: serving_config(cloud, "sdd-digits-00000001-config"), 120)
        assert predict(cloud, "after")["model_version"] == 1
    finally:
        cloud.stop()
    cloud = LocalCloud(root, say=lambda _: None)
    cloud.start(watch=False)  # a third start announces nothing again
    cloud.stop()
    sent = [e for e in cloud_events(root) if e["detail-type"] == PACKAGE_EVENT]
    assert len(sent) == 1


def test_rejecting_the_only_serving_version_says_that_it_keeps_serving(
    cloud, trained_job, monkeypatch
):
    """Issue 19: rejecting the one serving version left it serving without a word."""
    first = register(cloud, 1, trained_job["model_dir"], "instance:ml.m5.large:1")
    assert cloud.wait_until(lambda: serving_config(cloud, first), 120)
    # the report of a relative --root, as the README writes it, links its versions' pages
    page = cloud.root / "jobs" / "sdd-digits-00000001" / "output" / "data" / "report.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    monkeypatch.chdir(cloud.root.parent)
    code, _, err = run_cli("report", "digits", "--root", cloud.root.name)
    assert code == 0, err
    assert page.as_uri() in (cloud.root / "reports" / "digits.html").read_text()
    root = str(cloud.root)
    code, out, _ = run_cli("approve", "digits", "--version", "1", "--reject", "--root", root)
    assert code == 0 and "no approved version is left, so sagedrop-digits keeps serving it" in out
    assert cloud.wait_until(lambda: any(n["status"] == "kept-serving" for n in notices(cloud)), 60)
    [kept] = [n for n in notices(cloud) if n["status"] == "kept-serving"]
    assert "Version 1 of digits is Rejected, but no approved version is left" in kept["summary"]
    assert "rejected by hand" in kept["reasons"][0]
    assert serving_config(cloud, first)


def test_approving_a_version_the_gate_rejected_needs_override_and_says_why(
    cloud, trained_job, tmp_path
):
    """Issue 19: a version the gate Rejected (accuracy 0.104 against 0.974) deployed on a
    plain approve, with no warning in the CLI or the notice."""
    first = register(cloud, 1, trained_job["model_dir"], "instance:ml.m5.large:1")
    assert cloud.wait_until(lambda: serving_config(cloud, first), 120)
    letters = relabelled(trained_job["model_dir"], tmp_path / "letters", LETTERS)
    why = "test accuracy 0.1040 is worse than the serving model's 0.9740"
    second = register(cloud, 2, letters, "instance:ml.m5.large:1", "Rejected", (why,))
    root = str(cloud.root)
    code, _, err = run_cli("approve", "digits", "--version", "2", "--root", root)
    assert code == 1 and "was Rejected by the quality gate: " + why in err and "--override" in err
    assert registry.find(cloud.sagemaker, GROUP, 2)["ModelApprovalStatus"] == "Rejected"
    code, out, _ = run_cli("approve", "digits", "--version", "2", "--override", "--root", root)
    assert code == 0 and "Approved (over the gate)" in out
    assert cloud.wait_until(lambda: serving_config(cloud, second), 120)
    assert cloud.wait_until(lambda: any(n["status"] == "deploying" for n in notices(cloud)), 30)
    deploying = [n for n in notices(cloud) if n["status"] == "deploying"][-1]
    assert "approved by hand over the quality gate's rejection" in deploying["summary"]
    assert f"the quality gate had Rejected this version: {why}" in deploying["reasons"]


# The "kill" is an exception that ends the deploying thread, which pytest reports.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_crash_during_an_endpoint_update_finishes_the_update_before_any_image(
    tmp_path, trained_job
):
    """Issue 19: killed while the endpoint was updating to a new version, the next start
    delivered the queued images before the endpoint was back (20 of 20 got a permanent
    error) and then served the old configuration. Now the interrupted update is finished,
    to the new version, before the bus delivers anything, and announced once."""
    root = tmp_path / "root"
    cloud = LocalCloud(root, say=lambda _: None)
    cloud.start(watch=False)
    try:
        cloud.sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        first = register(cloud, 1, trained_job["model_dir"], "instance:ml.m5.large:1")
        assert cloud.wait_until(lambda: serving_config(cloud, first), 120)

        def killed(*_):
            raise KeyboardInterrupt("killed while the model of the update was loading")

        cloud.sagemaker.hosting.deploy = killed  # the moment: Updating, the new model not up
        second = register(cloud, 2, trained_job["model_dir"], "instance:ml.m5.large:1")
        assert cloud.wait_until(
            lambda: cloud.state.get("endpoint", ENDPOINT)["EndpointStatus"] == "Updating", 60
        )
        assert cloud.wait_until(lambda: cloud.state.unfinished_events() == 0, 60)
    finally:
        cloud.stop()
    state = State(root / "state.sqlite")
    s3 = LocalS3(root, state)  # images dropped while `sagedrop up` is down
    keys = [f"images/digits/queued_{i:02d}.jpg" for i in range(20)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=INFERENCE_BUCKET, Key=key, Body=jpeg_bytes((i * 10, 80, 160)))
    state.close()
    cloud = LocalCloud(root, say=lambda _: None)
    cloud.start(watch=False)
    try:
        assert serving_config(cloud, second)  # before the bus delivered a single image
        bucket = cloud.root / "buckets" / INFERENCE_BUCKET
        assert cloud.wait_until(
            lambda: (
                all((bucket / f"{k}.json").exists() for k in keys)
                and cloud.state.unfinished_events() == 0
            ),
            120,
        )
        assert not list(bucket.rglob("*.error.json"))
        versions = {json.loads((bucket / f"{k}.json").read_text())["model_version"] for k in keys}
        assert versions == {2}
    finally:
        cloud.stop()
    ready = [n for n in notices(cloud) if n["status"] == "ready"]
    assert [n["summary"].count(second) for n in ready].count(1) == 1  # v2 announced once
    assert len([n for n in notices(cloud) if n["stage"] == "deploy"]) == 2  # v1, then v2
