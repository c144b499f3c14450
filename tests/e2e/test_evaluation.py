"""What a real job says it gets wrong (issue 20): train.py's evaluation.json on crafted
data, and the gate's judgement of it, with the serving version compared on the same
images through the ``serving`` channel."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chalicelib.gate import judge_evaluation
from sagedrop.sample_data import pack_dataset
from tests.helpers import run_train

pytestmark = pytest.mark.slow
# red and crimson are drawn from the same distribution; green and blue are distinct
COLOURS = {"001.red": (200, 30, 30), "002.green": (30, 200, 30), "003.blue": (30, 30, 200),
           "004.crimson": (200, 30, 30)}  # fmt: skip
SPLITS = {"train": 40, "valid": 12, "test": 20}


@pytest.fixture(scope="module")
def look_alikes(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("look-alikes")
    rng = np.random.default_rng(0)
    for split, count in SPLITS.items():
        for name, rgb in COLOURS.items():
            folder = base / "colours" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (16, 16, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name[4:]}_{i}.png")
    return pack_dataset(base / "colours", base / "colours.zip")


def train(data: Path, out: Path, epochs: int = 4, lr: float = 0.05, serving: Path | None = None):
    env = {"SM_MODEL_DIR": str(out / "model"), "SM_OUTPUT_DATA_DIR": str(out / "output")}
    if serving is not None:
        env["SM_CHANNEL_SERVING"] = str(serving)
    arguments = ["--data", str(data), "--epochs", str(epochs), "--batch-size", "16",
                 "--image-size", "16", "--pretrained", "false", "--augment", "none",
                 "--lr", str(lr), "--num-workers", "0", "--export-graph", "none",
                 "--work-dir", str(out / "work")]  # fmt: skip
    result = run_train(arguments, env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((out / "output" / "evaluation.json").read_text()), result


def artifact(model_dir: Path, channel: Path) -> Path:
    channel.mkdir(parents=True)
    with tarfile.open(channel / "model.tar.gz", "w:gz") as archive:
        for path in model_dir.iterdir():
            archive.add(path, path.name)
    return channel


@pytest.fixture(scope="module")
def first(look_alikes, tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    evaluation, result = train(look_alikes, out)
    return out, evaluation, result


def test_two_classes_from_one_distribution_are_named_the_most_confused(first):
    _, evaluation, result = first
    pair = evaluation["most_confused"][0]
    assert {pair["true"], pair["predicted"]} == {"red", "crimson"}
    recall = {c["label"]: c["recall"] for c in evaluation["per_class"]}
    assert (recall["red"] + recall["crimson"]) / 2 <= 0.75  # the pair is a coin toss
    assert min(recall["red"], recall["crimson"]) <= 0.5
    assert recall["green"] >= 0.9 and recall["blue"] >= 0.9
    # the evaluation's accuracy is the job's test_accuracy metric (the same forward pass)
    [line] = [x for x in (result.stdout + result.stderr).splitlines() if "test_accuracy=" in x]
    reported = float(line.split("test_accuracy=")[1].split(";")[0].split()[0])
    assert evaluation["overall"]["accuracy"] == pytest.approx(reported, abs=1e-4)
    evidence = judge_evaluation(evaluation, min_class_recall=0.6)
    [floor] = [r for r in evidence.blocked if "GATE_MIN_CLASS_RECALL" in r]
    worse = min(("red", "crimson"), key=recall.get)
    other = "crimson" if worse == "red" else "red"
    assert f"{worse} (" in floor and f"most often taken for {other}" in floor


def test_the_serving_version_is_compared_on_the_same_images(first, look_alikes, tmp_path):
    out, served, _ = first
    channel = artifact(out / "model", tmp_path / "serving")
    same, _ = train(look_alikes, tmp_path / "same", serving=channel)
    paired = same["paired"]
    assert paired["status"] == "compared" and paired["images"] == served["item_count"]
    assert paired["serving_accuracy"] == pytest.approx(served["overall"]["accuracy"])
    equal = judge_evaluation(same, 0.0)
    assert equal.compared and not equal.blocked
    assert any("no significant difference" in r for r in equal.passed)
    # a much worse new version (one epoch at a tiny learning rate) on the same images
    worse, _ = train(look_alikes, tmp_path / "worse", epochs=1, lr=0.0005, serving=channel)
    judged = judge_evaluation(worse, 0.0)
    assert judged.compared
    assert any("significantly worse than the serving version" in r for r in judged.blocked)


def test_an_unreadable_serving_artifact_is_said_and_never_fails_the_job(look_alikes, tmp_path):
    channel = tmp_path / "serving"
    channel.mkdir()
    (channel / "model.tar.gz").write_bytes(b"not a tar")
    evaluation, _ = train(look_alikes, tmp_path / "job", epochs=1, serving=channel)
    assert evaluation["paired"]["status"] == "not-compared"
    assert "its artifact cannot be read" in evaluation["paired"]["reason"]
    assert not judge_evaluation(evaluation, 0.0).compared
