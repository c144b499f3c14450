"""The whole pipeline on the local cloud: through the CLI, and across a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sagedrop.local.cloud import DATA_BUCKET, LocalCloud
from sagedrop.local.sns import read_notifications
from sagedrop.sample_data import pack_dataset
from sagedrop_contract.job_contract import RULE_NAMES
from tests.helpers import colour_dataset, make_zip

pytestmark = pytest.mark.slow
TINY = {
    "strategy": "Random",
    "max_jobs": 2,
    "max_parallel_jobs": 2,
    "epochs": 2,
    "early_stopping": "Off",
    "ranges": {
        "lr": {"type": "continuous", "min": 0.02, "max": 0.08, "scaling": "Logarithmic"},
        "batch-size": {"type": "categorical", "values": [16]},
    },
    "hyperparameters": {"image-size": 32, "augment": "crop", "pretrained": "false"},
}


def tiny_zip(folder: Path, config: dict) -> Path:
    """Three classes a tiny model learns in two epochs: the gate blocks a model that a
    constant answer does as well as, which is what 12 digits a class would give."""
    data = colour_dataset(folder, config)
    return pack_dataset(data, folder / "digits.zip")


def cli(*args: str, root: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sagedrop", *args, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status(root: Path) -> dict:
    result = cli("status", "--json", root=root)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def without_network() -> dict[str, str]:
    """This environment with every package index and the internet out of reach: pip has
    no index and a dead one, every HTTP client a proxy where nothing listens; only the
    local cloud's own loopback servers answer."""
    dead = "http://127.0.0.1:9"
    return {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": f"{dead}/simple",
        "PIP_FIND_LINKS": "",
        **{name: dead for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                                   "ALL_PROXY")},
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }  # fmt: skip


def endpoint_in_service(cloud: LocalCloud, name: str) -> bool:
    return (cloud.state.get("endpoint", name) or {}).get("EndpointStatus") == "InService"


def wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return False


def test_pipeline_through_the_cli(tmp_path):
    root = tmp_path / "root"
    dataset = tiny_zip(tmp_path / "data", TINY)
    hostile = make_zip(tmp_path / "evil.zip", {"../../escape.jpg": b"x"})
    image = next((tmp_path / "data" / "digits" / "test").rglob("*.jpg"))
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    # Dropped before `up` runs: delivered once it does. The same zip twice: one pipeline.
    assert cli("drop", str(dataset), str(hostile), root=root).returncode == 0
    assert cli("drop", str(dataset), root=root).returncode == 0
    up = subprocess.Popen(
        [sys.executable, "-m", "sagedrop", "up", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=without_network(),  # issue 22: tuning, debug job and endpoint need no index
    )
    try:
        assert wait(
            lambda: any(e["status"] == "InService" for e in status(root)["endpoints"]), 400
        ), "endpoint never came up"
        assert cli("drop", str(garbage), root=root).returncode == 0
        assert cli("drop", str(image), root=root).returncode == 0
        images = root / "buckets" / "sagedrop-inference" / "images" / "digits"
        assert wait(
            lambda: (
                (images / "garbage.jpg.error.json").exists()
                and (images / f"{image.name}.json").exists()
            ),
            60,
        )
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    snapshot = status(root)
    [upload_run] = snapshot["runs"]  # the duplicate drop started nothing
    assert upload_run["tuning"]["status"] == "Completed"
    assert upload_run["tuning"]["trials_started"] == 2
    debug = upload_run["debug_job"]
    assert debug["status"] == "Completed"
    # the debug job's rules, report and TensorBoard files, on the pipeline's own paths
    assert [r["RuleConfigurationName"] for r in debug["rules"]] == list(RULE_NAMES)
    assert debug["report"].endswith("report.html") and debug["tensorboard"]
    tensorboard = root / "buckets" / "sagedrop-data" / "jobs" / debug["name"] / "tensorboard"
    assert any(p.name.startswith("events.out.tfevents") for p in tensorboard.iterdir())
    assert upload_run["gate"]["decision"].startswith("deploy")
    assert upload_run["predictions"] == 1
    [rejected] = snapshot["rejected_uploads"]
    assert "escape" in " ".join(rejected["reasons"])
    assert snapshot["endpoints"] == [
        {**snapshot["endpoints"][0], "name": "sagedrop-digits", "status": "InService"}
    ]
    error = json.loads((images / "garbage.jpg.error.json").read_text())
    assert "cannot decode" in error["error"]
    prediction = json.loads((images / f"{image.name}.json").read_text())
    assert prediction["predictions"][0]["label"] in {"zero", "one", "two"}
    assert prediction["dataset"] == "digits" and prediction["endpoint"] == "sagedrop-digits"
    assert prediction["model_version"] == 1  # its version in Model Registry
    assert prediction["model"]["training_job"] == debug["name"]  # the job that made it
    assert prediction["model"]["runtime"] == "onnxruntime"  # the optimised graph answered
    [dataset] = snapshot["datasets"]
    assert (dataset["name"], dataset["serving_version"]) == ("digits", 1)
    [version] = dataset["versions"]
    assert (version["approval"], version["debug_job"]) == ("Approved", debug["name"])
    assert version["data_audit"].startswith("leaked-test=0/")  # the audit, on the version
    assert "trial" in output and "[sns]" in output
    report = cli("report", upload_run["name"], root=root)
    assert report.returncode == 0
    page = (root / "reports" / f"{upload_run['name']}.html").read_text()
    assert page.count("<svg") >= 3 and upload_run["tuning"]["best_job"] in page
    assert "VanishingGradient" in page and "report.html" in page
    assert "<h2>Data audit</h2>" in page and "Likely label errors" in page


def test_restart_during_tuning_runs_nothing_twice(tmp_path, monkeypatch):
    # Three epochs on three colours drive the loss, and so conv1's gradients, to ~0: the
    # operator's VanishingGradient would rightly block the model. This test is about
    # exactly-once delivery, so its operator lowers that rule's threshold.
    monkeypatch.setenv("DEBUG_RULES", '{"VanishingGradient": {"threshold": 1e-12}}')
    root = tmp_path / "root"
    config = {**TINY, "max_jobs": 3, "max_parallel_jobs": 1, "epochs": 3}
    dataset = tiny_zip(tmp_path / "data", config)
    cloud = LocalCloud(root, say=lambda _: None)
    cloud.start()
    cloud.s3.put_object(Bucket=DATA_BUCKET, Key="datasets/digits.zip", Body=dataset.read_bytes())

    def trials(state, status):
        return [
            j
            for j in state.all("training-job")
            if j.get("TuningJobArn") and j["TrainingJobStatus"] == status
        ]

    try:
        assert cloud.wait_until(
            lambda: trials(cloud.state, "Completed") and trials(cloud.state, "InProgress"), 300
        )
        [finished] = trials(cloud.state, "Completed")
        [running] = trials(cloud.state, "InProgress")
    finally:
        cloud.stop()  # the second trial is interrupted mid-run
    cloud = LocalCloud(root, say=lambda _: None)
    cloud.start()
    try:
        assert cloud.wait_until(lambda: endpoint_in_service(cloud, "sagedrop-digits"), 400)
        jobs = cloud.state.all("training-job")
    finally:
        cloud.stop()
    trial_jobs = [j for j in jobs if j.get("TuningJobArn")]
    again = next(j for j in trial_jobs if j["TrainingJobName"] == finished["TrainingJobName"])
    assert again["TrainingEndTime"] == finished["TrainingEndTime"]  # not run again
    # The interrupted trial ran again under its own name with its own parameters: the
    # budget of 3 jobs is kept, and every one of them completed.
    rerun = next(j for j in trial_jobs if j["TrainingJobName"] == running["TrainingJobName"])
    assert rerun["TrainingJobStatus"] == "Completed"
    assert rerun["_local"]["tuned"] == running["_local"]["tuned"]
    assert len(trial_jobs) == 3 and all(j["TrainingJobStatus"] == "Completed" for j in trial_jobs)
    assert len({j["TrainingJobName"] for j in jobs}) == len(jobs)
    debug_jobs = [j for j in jobs if j["TrainingJobName"].startswith("sdd-")]
    assert len(debug_jobs) == 1 and debug_jobs[0]["TrainingJobStatus"] == "Completed"
    notices = read_notifications(root / "notifications" / "sagedrop.jsonl")
    kinds = [(n["event"]["stage"], n["event"]["status"]) for n in notices]
    assert kinds.count(("tuning", "started")) == 1 and kinds.count(("endpoint", "ready")) == 1
