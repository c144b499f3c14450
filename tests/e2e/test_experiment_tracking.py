"""Issue 23: every trial and debug job an MLflow run, both ways, read back with MLflow's
own client. With network isolation (the default; the demo's test) the pipeline records
each run from the job's output; without it, each job logs its own run and the pipeline
completes it. Either way: one run per job, nested under its tuning job's, the tuner's
objective as ``valid_accuracy``, and tracking that fails never fails a job."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from sagedrop.local.cloud import DATA_BUCKET, LocalCloud
from sagedrop.local.status import status_object
from tests.e2e.test_local_pipeline import TINY, endpoint_in_service, tiny_zip
from tests.helpers import TINY_HYPERPARAMETERS, run_train

pytestmark = pytest.mark.slow


def test_jobs_that_reach_the_server_log_their_own_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NETWORK_ISOLATION", "false")
    root = tmp_path / "root"
    dataset = tiny_zip(tmp_path / "data", TINY)
    cloud = LocalCloud(root, say=lambda _: None)
    cloud.start()
    cloud.s3.put_object(Bucket=DATA_BUCKET, Key="datasets/digits.zip", Body=dataset.read_bytes())
    try:
        assert cloud.wait_until(lambda: endpoint_in_service(cloud, "sagedrop-digits"), 400)
    finally:
        cloud.stop()
    snapshot = status_object(root)
    [upload_run] = snapshot["runs"]
    store = MlflowClient(tracking_uri=snapshot["mlflow_tracking_uri"])
    experiment = store.get_experiment_by_name("sagedrop-digits")
    runs = {r.info.run_name: r for r in store.search_runs([experiment.experiment_id])}
    tuning = runs.pop(upload_run["name"])
    debug = runs.pop(upload_run["debug_job"]["name"])
    trials = {t["name"]: t for t in upload_run["trials"]}
    assert set(runs) == set(trials)
    for name, run in runs.items():
        assert run.data.tags["sagedrop.logged_by"] == "job"  # the trial logged itself
        assert run.data.tags["sagedrop.recorded"] == "true"  # and the pipeline completed it
        assert run.data.tags["mlflow.parentRunId"] == tuning.info.run_id
        assert run.data.metrics["valid_accuracy"] == trials[name]["objective"]
        history = store.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == [1, 2]  # once per epoch, not twice
        assert run.info.status == "FINISHED"
    assert tuning.info.status == "FINISHED"
    assert tuning.data.tags["sagedrop.best_trial"] == upload_run["tuning"]["best_job"]
    assert debug.data.tags["sagedrop.logged_by"] == "job"
    assert debug.data.tags["sagedrop.approval"] == "Approved"
    assert {"rules.json", "evaluation.json"} <= {
        a.path for a in store.list_artifacts(debug.info.run_id)
    }


def test_a_job_whose_tracking_server_is_down_trains_and_warns_once(tmp_path, tiny_dataset):
    """A closed port: the job completes, one warning, and its summary says why (the
    pipeline then records the run from the output and says it in the notice)."""
    env = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_EXPERIMENT_NAME": "sagedrop-digits",
        "TRAINING_JOB_NAME": "sdt-digits-0123abcd-001-0a1b2c3d",
    }
    result = run_train(
        [*TINY_HYPERPARAMETERS, "--data", str(tiny_dataset["zip"]),
         "--model-dir", str(tmp_path / "m"), "--output-data-dir", str(tmp_path / "o")],
        env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("MLflow logging stopped for this job") == 1
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    assert summary["experiment_tracking"]["logged"] is False
    assert (
        "ConnectionError" in summary["experiment_tracking"]["problem"]
        or summary["experiment_tracking"]["problem"]
    )
