"""train.py for real: the container contract, the artifact, metrics, DDP, accuracy on digits."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from sagedrop_contract.job_contract import (
    EPOCH_METRICS,
    METRIC_DEFINITIONS,
    OBJECTIVE_METRIC,
    parse_metric_lines,
)
from sagedrop_serving.model_def import build_classifier
from tests.helpers import TINY_HYPERPARAMETERS, failure_line, probe_wheel, run_train

pytestmark = pytest.mark.slow


def test_artifact_is_self_contained(trained_job):
    model_dir = trained_job["model_dir"]
    for name in (
        "model.pt",
        "classes.json",
        "config.json",
        "code/inference.py",
        "code/image_io.py",
        "code/model_def.py",
    ):
        assert (model_dir / name).is_file(), name
    classes = json.loads((model_dir / "classes.json").read_text())
    assert [c["label"] for c in classes] == ["zero", "one", "two"]
    assert [c["folder"] for c in classes] == ["001.zero", "002.one", "003.two"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["backbone"] == "resnet18"
    assert config["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert config["preprocessing"]["std"] == [0.229, 0.224, 0.225]
    assert config["preprocessing"]["image_size"] == 32
    assert config["hyperparameters"]["lr"] == 0.05
    state = torch.load(model_dir / "model.pt", weights_only=True)
    build_classifier("resnet18", 3).load_state_dict(state)


def test_metric_definitions_read_the_real_log(trained_job):
    """The pipeline's own regexes, applied to what train.py actually printed."""
    found = parse_metric_lines(trained_job["log"], METRIC_DEFINITIONS)
    summary = json.loads((trained_job["output_dir"] / "training_summary.json").read_text())
    assert found["epoch"] == [1.0, 2.0]
    for name in EPOCH_METRICS:
        per_epoch = found[name][: len(summary["history"])]
        assert per_epoch == [record[name] for record in summary["history"]], name
    # The final line repeats the kept epoch's valid_accuracy: the tuner's objective.
    assert found["valid_accuracy"][-1] == max(r["valid_accuracy"] for r in summary["history"])
    assert found["test_accuracy"] == [summary["test_accuracy"]]
    assert found["test_loss"] == [summary["test_loss"]]
    assert OBJECTIVE_METRIC.startswith("valid_")
    assert all(0.0 <= v <= 1.0 for v in found["valid_accuracy"])


def test_unreadable_and_stray_files_do_not_stop_training(trained_job):
    summary = json.loads((trained_job["output_dir"] / "training_summary.json").read_text())
    assert summary["data_audit"]["unreadable"] == 1
    assert trained_job["truncated"] in summary["unreadable_images"][0]
    assert summary["dataset"]["ignored_files"] == 1
    assert "1 unreadable image(s) were skipped" in trained_job["log"]


def test_hostile_dataset_fails_the_job_with_a_reason(tmp_path):
    from tests.helpers import layout, make_zip

    archive = make_zip(tmp_path / "d.zip", {**layout(), "../escape.jpg": b"x"})
    (tmp_path / "output").mkdir()
    result = run_train(
        ["--data", str(archive), "--model-dir", str(tmp_path / "m")],
        {"SM_OUTPUT_DIR": str(tmp_path / "output")},
    )
    assert result.returncode == 1
    reason = failure_line(result)
    assert reason.startswith("ValueError: ") and "escape.jpg" in reason and "'..'" in reason
    assert not (tmp_path / "m" / "model.pt").exists()


def test_frozen_backbone_trains_head_on_cached_features(tmp_path, tiny_dataset):
    weights = tmp_path / "imagenet-stand-in.pt"
    torch.save(build_classifier("resnet18", 1000).state_dict(), weights)
    cache = tmp_path / "cache"
    args = [
        *TINY_HYPERPARAMETERS,
        "--data",
        str(tiny_dataset["zip"]),
        "--pretrained",
        "true",
        "--weights-path",
        str(weights),
        "--epochs",
        "3",
        "--work-dir",
        str(tmp_path / "w"),
        "--model-dir",
        str(tmp_path / "m"),
        "--output-data-dir",
        str(tmp_path / "o"),
    ]
    first = run_train(args, {"SAGEDROP_FEATURE_CACHE": str(cache)})
    assert first.returncode == 0, first.stderr + first.stdout
    assert "frozen=backbone, cached features=True" in first.stdout
    assert len(parse_metric_lines(first.stdout)["valid_accuracy"]) == 3 + 1  # epochs + final
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    assert summary["pretrained"] is True and summary["cached_features"] is True
    # Only the head moved: every backbone tensor is still the loaded one.
    trained = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    original = torch.load(weights, weights_only=True)
    assert torch.equal(trained["layer3.0.conv1.weight"], original["layer3.0.conv1.weight"])
    assert not torch.equal(trained["fc.weight"][:3], original["fc.weight"][:3])


def test_required_weights_that_do_not_exist_fail_clearly(tmp_path, tiny_dataset):
    (tmp_path / "tmp").mkdir()
    result = run_train(
        [
            *TINY_HYPERPARAMETERS,
            "--data",
            str(tiny_dataset["zip"]),
            "--pretrained",
            "true",
            "--weights-path",
            str(tmp_path / "missing.pt"),
            "--model-dir",
            str(tmp_path / "m"),
        ],
        {"TMPDIR": str(tmp_path / "tmp")},
    )
    assert result.returncode == 1
    assert "ImageNet weights for resnet18 could not be obtained" in result.stdout
    # Issue 10, 12: it failed after extracting the zip, and its folder went with it.
    assert "dataset: 3 classes" in result.stdout and list((tmp_path / "tmp").iterdir()) == []


def test_ddp_with_two_cpu_processes(tmp_path, tiny_dataset):
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    result = run_train(
        [
            *TINY_HYPERPARAMETERS,
            "--data",
            str(tiny_dataset["zip"]),
            "--work-dir",
            str(tmp_path / "w"),
            "--model-dir",
            str(tmp_path / "m"),
            "--output-data-dir",
            str(tmp_path / "o"),
        ],
        {"OMP_NUM_THREADS": "1"},
        launcher=launcher,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "processes=2" in result.stdout
    metrics = parse_metric_lines(result.stdout)
    assert metrics["epoch"] == [1.0, 2.0]  # only rank 0 prints metrics
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    # Both ranks' shards are counted: the whole validation split, no padding duplicates.
    valid_images = summary["dataset"]["images"]["valid"]
    assert [r["valid_samples"] for r in summary["history"]] == [valid_images] * 2
    assert (tmp_path / "m" / "model.pt").is_file()


def test_digits_reach_90_percent_from_scratch(tmp_path, digits):
    result = run_train(
        [
            "--data",
            str(digits["zip"]),
            "--pretrained",
            "false",
            "--image-size",
            "32",
            "--epochs",
            "8",
            "--batch-size",
            "32",
            "--lr",
            "0.05",
            "--augment",
            "crop",
            "--work-dir",
            str(tmp_path / "w"),
            "--model-dir",
            str(tmp_path / "m"),
            "--output-data-dir",
            str(tmp_path / "o"),
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    test_accuracy = parse_metric_lines(result.stdout)["test_accuracy"][-1]
    assert test_accuracy >= 0.90, result.stdout[-2000:]


def test_ddp_with_cached_features_leaves_the_same_leaked_images_out(tmp_path, tiny_dataset):
    """Each process fingerprints its shard; all reach the same audit, and the features of
    the images left are dealt out again, so both shards together are the split without
    the leaked images (an unreadable one among them counted once)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset["folder"], data)
    originals = sorted((data / "train" / "002.one").glob("*.jpg"))
    shutil.copy(originals[0], data / "valid" / "002.one" / "leak.jpg")
    shutil.copy(originals[1], data / "test" / "002.one" / "leak_a.jpg")
    shutil.copy(originals[2], data / "test" / "002.one" / "leak_b.jpg")
    (data / "test" / "001.zero" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2"]  # fmt: skip
    result = run_train(
        [*TINY_HYPERPARAMETERS, "--cache-features", "true", "--data", str(data),
         "--model-dir", str(tmp_path / "m"), "--output-data-dir", str(tmp_path / "o")],
        {"OMP_NUM_THREADS": "1"},
        launcher=launcher,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    images = summary["dataset"]["images"]
    assert summary["data_audit"]["left_out"] == {"valid": 1, "test": 2}
    assert [r["valid_samples"] for r in summary["history"]] == [images["valid"] - 1] * 2
    evaluation = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    tested = sum(map(sum, evaluation["confusion_matrix"]))
    assert tested == images["test"] - 2 - 1  # two left out, one unreadable
    assert sorted(evaluation["left_out"]["test_files"]) == [
        "test/002.one/leak_a.jpg",
        "test/002.one/leak_b.jpg",
    ]
    assert summary["data_audit"]["unreadable"] == 1


def test_a_weights_channel_file_that_is_not_torchvisions_fails_the_job(tmp_path, tiny_dataset):
    """Issue 22: the job reads its backbone's weights from the weights channel, never from
    the internet, and refuses a file whose SHA-256 is not the one its name publishes."""
    channel = tmp_path / "weights"
    channel.mkdir()
    (channel / "resnet18-f37072fd.pth").write_bytes(b"not the weights")
    result = run_train(
        [*TINY_HYPERPARAMETERS, "--pretrained", "auto", "--data", str(tiny_dataset["zip"]),
         "--model-dir", str(tmp_path / "m"), "--output-data-dir", str(tmp_path / "o")],
        {"SM_CHANNEL_WEIGHTS": str(channel)},
    )  # fmt: skip
    assert result.returncode == 1
    assert "not torchvision's published f37072fd" in failure_line(result)


def test_the_artifact_carries_the_wheels_channels_graph_runtime(tmp_path, tiny_dataset):
    """Issue 22: with a "wheels" channel, train.py packs its inference/ wheels into the
    artifact with the requirements file the inference toolkit installs, index-free."""
    channel = tmp_path / "wheels"
    (channel / "inference").mkdir(parents=True)
    wheel = probe_wheel(channel / "inference")
    result = run_train(
        [*TINY_HYPERPARAMETERS, "--data", str(tiny_dataset["zip"]),
         "--model-dir", str(tmp_path / "m"), "--output-data-dir", str(tmp_path / "o")],
        {"SM_CHANNEL_WHEELS": str(channel)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    code = tmp_path / "m" / "code"
    assert (code / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    lines = (code / "requirements.txt").read_text().splitlines()
    assert {"--no-index", "--find-links wheels", "--only-binary :all:"} <= set(lines)
    assert any(line.startswith("onnxruntime==1.31.1") for line in lines)
