"""``sagedrop dataset sample|check|pack`` as a person runs them."""

from __future__ import annotations

import json
import subprocess
import sys

from sagedrop.cli import main
from tests.helpers import layout, make_zip


def test_sample_writes_folder_and_zip(tmp_path, capsys):
    assert main(["dataset", "sample", str(tmp_path), "--per-class", "5", "--classes", "3"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "digits.zip").is_file()
    assert sorted(p.name for p in (tmp_path / "digits" / "train").iterdir()) == [
        "001.zero",
        "002.one",
        "003.two",
    ]
    assert "usable, 3 classes, 15 images" in out


def test_check_reports_counts_and_passes_good_data(tmp_path, capsys):
    archive = make_zip(tmp_path / "d.zip", layout(n=3))
    assert main(["dataset", "check", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "usable, 2 classes, 18 images" in out
    assert "001.cat" in out and "train" in out


def test_check_fails_hostile_zip_and_names_the_entry(tmp_path, capsys):
    archive = make_zip(tmp_path / "d.zip", {**layout(), "../../etc/cron.d/x.jpg": b"x"})
    assert main(["dataset", "check", str(archive)]) == 1
    assert "problem: Entry '../../etc/cron.d/x.jpg' climbs out" in capsys.readouterr().out


def test_check_json(tmp_path, capsys):
    archive = make_zip(tmp_path / "d.zip", layout(splits=("train",), n=4))
    assert main(["dataset", "check", str(archive), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] is True
    assert report["missing_splits"] == ["valid", "test"]
    assert report["counts"]["train"] == {"001.cat": 4, "002.dog": 4}


def test_pack_is_deterministic_and_refuses_broken_folders(tmp_path, capsys):
    main(["dataset", "sample", str(tmp_path / "s"), "--per-class", "3", "--classes", "2"])
    folder = tmp_path / "s" / "digits"
    assert main(["dataset", "pack", str(folder), str(tmp_path / "a.zip")]) == 0
    assert main(["dataset", "pack", str(folder), str(tmp_path / "b.zip")]) == 0
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    for jpg in (folder / "valid" / "002.one").iterdir():
        jpg.unlink()
    capsys.readouterr()
    assert main(["dataset", "pack", str(folder), str(tmp_path / "c.zip")]) == 1
    assert "Class '002.one' is in 'train' but has no images in 'valid'." in capsys.readouterr().out
    assert not (tmp_path / "c.zip").exists()


def test_python_dash_m_sagedrop():
    result = subprocess.run(
        [sys.executable, "-m", "sagedrop", "dataset", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "sample" in result.stdout and "check" in result.stdout and "pack" in result.stdout


def test_demo_runs_the_whole_local_pipeline_from_a_relative_root(tmp_path, monkeypatch):
    """What `make demo` runs (relative root like its default), on a smaller sample."""
    from sagedrop import demo

    monkeypatch.chdir(tmp_path)
    # Small, yet enough for a model the gate lets through: it blocks one that answering
    # the most frequent class for every image does as well as (12 digits a class did).
    ranges = {**demo.DEMO_CONFIG["ranges"], "batch-size": {"type": "categorical",
                                                           "values": [16]}}  # fmt: skip
    tiny = {**demo.DEMO_CONFIG, "max_jobs": 2, "epochs": 4, "ranges": ranges}
    lines: list[str] = []
    code = demo.run_demo("demo-root", config=tiny, per_class=80, classes=3, say=lines.append)
    assert code == 0, "\n".join(lines)
    out = "\n".join(lines)
    assert "Quality gate:    deploy" in out
    assert "Held-out images: " in out
    reports = list((tmp_path / "demo-root" / "reports").glob("sdt-digits-*.html"))
    assert len(reports) == 1 and "<svg" in reports[0].read_text()
    assert "MLflow runs:     sagedrop mlflow --root" in out
    _the_demos_runs_are_in_mlflow(tmp_path / "demo-root")


def _the_demos_runs_are_in_mlflow(root):
    """Issue 23, read back with MLflow's own client: one experiment for the dataset, the
    tuning job's run with one nested run per trial (valid_accuracy = the tuner's objective
    for it, the best one tagged), and the debug job's run with test_accuracy, the rule
    verdicts as an artifact and its Model Registry version."""
    from mlflow.tracking import MlflowClient

    from sagedrop.local.status import status_object

    snapshot = status_object(root)
    store = MlflowClient(tracking_uri=snapshot["mlflow_tracking_uri"])
    [upload_run] = snapshot["runs"]
    [experiment] = [e for e in store.search_experiments() if e.name != "Default"]
    assert experiment.name == "sagedrop-digits"
    runs = {r.info.run_name: r for r in store.search_runs([experiment.experiment_id])}
    tuning = runs.pop(upload_run["name"])
    debug = runs.pop(upload_run["debug_job"]["name"])
    assert tuning.data.tags["sagedrop.kind"] == "tuning"
    trials = {t["name"]: t for t in upload_run["trials"]}
    assert set(runs) == set(trials)  # nothing else, nothing twice
    for name, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == tuning.info.run_id
        assert run.data.metrics["valid_accuracy"] == trials[name]["objective"]
        assert len(store.get_metric_history(run.info.run_id, "train_loss")) >= 2  # per epoch
        assert run.data.params["lr"] == trials[name]["hyperparameters"]["lr"]
    best = [n for n, r in runs.items() if r.data.tags.get("sagedrop.best") == "true"]
    assert best == [upload_run["tuning"]["best_job"]]
    assert debug.data.metrics["test_accuracy"] == upload_run["debug_job"]["test_accuracy"]
    assert "test_macro_f1" in debug.data.metrics
    assert debug.data.tags["sagedrop.approval"] == "Approved"
    assert debug.data.tags["sagedrop.model_package"].endswith("/sagedrop-digits/1")
    artifacts = {a.path for a in store.list_artifacts(debug.info.run_id)}
    assert {"rules.json", "report.html", "evaluation.json"} <= artifacts
