"""The data audit in a real job (issue 21): train.py finds planted copies across splits,
leaves the leaked test images out of evaluation and says how many, and ranks flipped
labels first; ``sagedrop dataset check`` says the same before upload."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from tests.helpers import colour_dataset, run_train

FLIPPED = 6  # of 120 training images: 5 %


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A colour dataset with planted copies and 5 % of red/blue training labels swapped,
    and the job's output on it."""
    folder = tmp_path_factory.mktemp("audit")
    root = colour_dataset(folder, per_split={"train": 40, "valid": 10, "test": 10})
    classes = sorted(p.name for p in (root / "train").iterdir())
    red, blue = classes[0], classes[2]
    flipped = []
    for n in range(FLIPPED):
        source, target = (red, blue) if n % 2 else (blue, red)
        image = sorted((root / "train" / source).glob("*.jpg"))[n]
        moved = root / "train" / target / f"flipped_{n}.jpg"
        shutil.move(image, moved)
        flipped.append(f"train/{target}/{moved.name}")
    planted = {}
    for n, kind in enumerate(("exact", "re-encoded", "resized")):
        original = sorted((root / "train" / classes[1]).glob("*.jpg"))[n]
        copy = root / "test" / classes[1] / f"copy_{kind}.jpg"
        if kind == "exact":
            shutil.copy(original, copy)
        elif kind == "re-encoded":
            Image.open(original).save(copy, quality=70)
        else:
            Image.open(original).resize((30, 30)).save(copy, quality=90)
        planted[f"test/{classes[1]}/{copy.name}"] = f"train/{classes[1]}/{original.name}"
    out = folder / "out"
    result = run_train(["--data", str(root), "--epochs", "2", "--pretrained", "false",
                        "--cache-features", "true", "--export-graph", "none", "--batch-size",
                        "16", "--model-dir", str(out / "model"), "--output-data-dir",
                        str(out / "data"), "--num-workers", "0"])  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {
        "root": root,
        "log": result.stdout,
        "audit": json.loads((out / "data" / "data_audit.json").read_text()),
        "evaluation": json.loads((out / "data" / "evaluation.json").read_text()),
        "flipped": flipped,
        "planted": planted,
    }


def test_every_planted_copy_is_found_and_no_distinct_image_paired(audited):
    audit = audited["audit"]
    assert {e["file"]: e["duplicates"] for e in audit["leaked"]["test"]} == audited["planted"]
    assert audit["headline"]["leaked"] == {"valid": 0, "test": 3}
    assert audit["headline"]["exact_duplicates"] == 1
    assert audit["headline"]["near_duplicates"] == 2
    assert len(audit["groups"]) == 3  # the planted pairs and nothing else


def test_the_evaluation_leaves_the_leaked_test_images_out_and_says_so(audited):
    evaluation = audited["evaluation"]
    assert evaluation["left_out"]["counts"] == {"valid": 0, "test": 3}
    assert sorted(evaluation["left_out"]["test_files"]) == sorted(audited["planted"])
    assert sum(map(sum, evaluation["confusion_matrix"])) == 30  # 33 test images, 3 left out
    assert "3 leaked test image(s) left out" in audited["log"]


def test_flipped_labels_are_among_the_top_candidates(audited):
    found = audited["audit"]["label_errors"]
    assert found["status"] == "found"
    top = [c["file"] for c in found["candidates"][: 2 * FLIPPED]]
    assert len(set(top) & set(audited["flipped"])) >= FLIPPED // 2, (top, audited["flipped"])
    assert audited["audit"]["headline"]["label_error_candidates"] == found["count"]


def test_dataset_check_says_before_upload_what_the_job_says(audited, capsys):
    from sagedrop.cli import main

    assert main(["dataset", "check", str(audited["root"]), "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)["pixel_audit"]
    assert checked["leaked"] == audited["audit"]["leaked"]
    assert checked["label_errors"]["status"] == "skipped"
