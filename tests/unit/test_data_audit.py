"""The pixel audit (issue 21): planted duplicates found, distinct photos never paired, and
every hostile dataset said in a sentence, never a crash or a hidden number."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sagedrop_training import data_audit, label_errors
from sagedrop_training.data_audit import AuditedImage, audit, duplicate_groups, fingerprint_image


def photo(seed: int, size=(200, 150)) -> Image.Image:
    """A photo-like scene: smooth random colour fields with grain; no two seeds alike."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    scene = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC))
    return Image.fromarray(np.clip(scene + rng.normal(0, 4, scene.shape), 0, 255).astype("uint8"))


def save(image: Image.Image, path: Path, quality: int = 90) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=quality)
    return str(path)


def fingerprints(paths):
    return [fingerprint_image(p, 256)[0] for p in paths]


def dataset(tmp_path: Path, layout: dict[str, list[tuple[str, Image.Image | bytes]]]):
    """``{split: [(label, picture)]}`` on disk: the audit's images and fingerprints."""
    images, prints = {}, {}
    for split, entries in layout.items():
        images[split], paths = [], []
        for n, (label, picture) in enumerate(entries):
            path = tmp_path / split / label / f"{n:03d}.jpg"
            if isinstance(picture, bytes):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(picture)
            else:
                save(picture, path)
            images[split].append(AuditedImage(split, f"{split}/{label}/{n:03d}.jpg", label))
            paths.append(str(path))
        prints[split] = fingerprints(paths)
    return images, prints


def test_planted_copies_are_found_and_distinct_photos_never_paired(tmp_path):
    originals = [photo(seed) for seed in range(60)]
    paths = [save(p, tmp_path / f"o{i}.jpg") for i, p in enumerate(originals)]
    copies = {
        "exact": (tmp_path / "o3.jpg").read_bytes(),
        "re-encoded": None,
        "resized": None,
    }
    (tmp_path / "c_exact.jpg").write_bytes(copies["exact"])
    save(originals[5], tmp_path / "c_reencoded.jpg", quality=60)
    save(originals[7].resize((180, 135)), tmp_path / "c_resized.jpg")
    save(originals[9].resize((100, 75)).resize((200, 150)), tmp_path / "c_halved.jpg")
    extra = [str(tmp_path / n) for n in
             ("c_exact.jpg", "c_reencoded.jpg", "c_resized.jpg", "c_halved.jpg")]  # fmt: skip
    prints = fingerprints(paths + extra)
    groups, exact = duplicate_groups(prints)
    n = len(paths)
    assert sorted(groups) == [[3, n], [5, n + 1], [7, n + 2], [9, n + 3]]
    assert exact == {3, n}


def test_colour_tells_apart_what_structure_alone_would_pair(tmp_path):
    """The same scene in other colours hashes alike (phash is grey); the thumbnail check
    keeps them apart, while a mere re-encoding stays paired."""
    scene = np.asarray(photo(1))
    swapped = Image.fromarray(scene[:, :, ::-1].copy())
    paths = [save(photo(1), tmp_path / "a.jpg"), save(swapped, tmp_path / "b.jpg"),
             save(photo(1), tmp_path / "c.jpg", quality=50)]  # fmt: skip
    prints = fingerprints(paths)
    assert (prints[0].phash ^ prints[1].phash).bit_count() <= data_audit.NEAR_BITS
    groups, _ = duplicate_groups(prints)
    assert groups == [[0, 2]]


def test_leaked_images_are_left_out_named_and_counted(tmp_path):
    train = [("cat", photo(i)) for i in range(6)] + [("dog", photo(10 + i)) for i in range(6)]
    layout = {
        "train": train,
        "valid": [("cat", photo(1).resize((190, 142))), ("dog", photo(20))],
        "test": [("cat", photo(0)), ("dog", photo(21)), ("dog", photo(22))],
    }
    images, prints = dataset(tmp_path, layout)
    result = audit(images, prints, ["cat", "dog"])
    assert result.left_out == {"valid": {0}, "test": {0}}
    document = result.document
    assert document["headline"]["leaked"] == {"valid": 1, "test": 1}
    assert document["headline"]["leaked_test_fraction"] == pytest.approx(1 / 3)
    assert document["left_out"]["test"] == ["test/cat/000.jpg"]
    assert document["leaked"]["test"][0]["duplicates"] == "train/cat/000.jpg"
    assert any("1 of 3 'test' image(s)" in s and "left out" in s for s in document["sentences"])
    kept = audit(images, prints, ["cat", "dog"], leakage="keep")
    assert kept.left_out == {"valid": set(), "test": set()}
    assert kept.document["headline"]["leaked"] == {"valid": 1, "test": 1}  # still counted
    assert any("optimistic" in s for s in kept.document["sentences"])


def test_duplicates_within_a_split_and_label_conflicts(tmp_path):
    layout = {
        "train": [
            ("cat", photo(0)),
            ("cat", photo(0)),
            ("dog", photo(1)),
            ("cat", photo(1)),
            ("dog", photo(2)),
        ],
        "valid": [("cat", photo(3)), ("dog", photo(4))],
        "test": [("cat", photo(5)), ("dog", photo(6))],
    }
    images, prints = dataset(tmp_path, layout)
    document = audit(images, prints, ["cat", "dog"]).document
    assert document["duplicates_within_split"]["train"] == 2
    assert document["headline"]["label_conflicts"] == 1
    assert document["label_conflicts"][0]["labels"] == ["cat", "dog"]
    assert any("label conflict" in s for s in document["sentences"])


def test_every_hostile_dataset_gets_a_sentence(tmp_path):
    same = photo(0)
    # All images identical.
    images, prints = dataset(
        tmp_path / "same",
        {s: [("a", same), ("b", same)] for s in ("train", "valid", "test")},
    )
    document = audit(images, prints, ["a", "b"]).document
    assert any(s.startswith("All 6 readable images are copies of one image")
               for s in document["sentences"])  # fmt: skip
    # Every test image leaked.
    train = [("a", photo(i)) for i in range(3)] + [("b", photo(10 + i)) for i in range(3)]
    images, prints = dataset(
        tmp_path / "leaked",
        {
            "train": train,
            "valid": [("a", photo(40)), ("b", photo(41))],
            "test": [("a", photo(0)), ("b", photo(10))],
        },
    )
    result = audit(images, prints, ["a", "b"])
    assert result.left_out["test"] == {0, 1}
    assert any("Every one of them duplicates the training set" in s
               for s in result.document["sentences"])  # fmt: skip
    # A class whose every image duplicates another class's.
    images, prints = dataset(
        tmp_path / "twin",
        {"train": [("a", photo(0)), ("a", photo(1)), ("b", photo(0)), ("b", photo(1))],
         "valid": [("a", photo(2)), ("b", photo(2))], "test": [("a", photo(3)), ("b", photo(3))]},
    )  # fmt: skip
    document = audit(images, prints, ["a", "b"]).document
    assert any("Every image of class 'a' duplicates an image of another class" in s
               for s in document["sentences"])  # fmt: skip
    # Images of 1 x 1 pixels; an unreadable and a truncated file.
    whole = io.BytesIO()
    photo(7).save(whole, "JPEG")
    images, prints = dataset(
        tmp_path / "tiny",
        {"train": [("a", Image.new("RGB", (1, 1), (9, 9, 9))), ("a", b"not an image"),
                   ("b", whole.getvalue()[:400]), ("b", photo(8))],
         "valid": [("a", photo(9)), ("b", photo(10))],
         "test": [("a", photo(11)), ("b", photo(12))]},
    )  # fmt: skip
    document = audit(images, prints, ["a", "b"]).document
    assert document["headline"]["unreadable"] == 2
    assert {u["file"] for u in document["unreadable"]} == {"train/a/001.jpg", "train/b/002.jpg"}
    assert document["too_small"] == ["train/a/000.jpg"]
    assert any("smaller than 8x8" in s for s in document["sentences"])
    assert any("cannot be read" in s for s in document["sentences"])


def test_two_hundred_classes_of_one_image_each():
    """Too few images per class to judge labels: said, with the class count small."""
    labels = np.arange(200)
    found = label_errors.find(torch.randn(200, 16), labels, [f"f{i}" for i in range(200)],
                              [f"c{i}" for i in range(200)])  # fmt: skip
    assert found["status"] == "skipped"
    assert "5 training images" in found["reason"]
    images = {"train": [AuditedImage("train", f"train/c{i}/x.jpg", f"c{i}") for i in range(200)],
              "valid": [], "test": []}  # fmt: skip
    blank = data_audit.Fingerprint(sha256="", error="unreadable")
    prints = {"train": [blank] * 200, "valid": [], "test": []}
    document = audit(images, prints, [f"c{i}" for i in range(200)]).document
    assert len(document["small_classes"]) == 200
    assert any("200 class(es) have fewer than 5 training images" in s
               for s in document["sentences"])  # fmt: skip


def test_the_search_stays_linear_when_every_image_looks_alike():
    """10,000 fingerprints with one hash: each is compared with the looks its buckets hold
    (at most a bucket's cap), not with all the others (counted, not timed)."""
    compared = 0
    original = data_audit.thumbnail_distance

    def counting(a, b):
        nonlocal compared
        compared += 1
        return original(a, b)

    alike = [data_audit.Fingerprint(f"{i:064x}", 0xABCDEF, bytes([i % 256]) * 192, 64, 64)
             for i in range(10_000)]  # fmt: skip
    data_audit.thumbnail_distance = counting
    try:
        groups, _ = duplicate_groups(alike)
    finally:
        data_audit.thumbnail_distance = original
    assert compared <= len(alike) * data_audit.BUCKET_CAP
    assert sum(len(g) for g in groups) == len(alike)  # grey levels 8 apart chain together


def test_label_errors_are_ranked_from_out_of_sample_probabilities():
    """5 % of labels flipped between two well-separated classes: the flipped rank first."""
    rng = np.random.default_rng(0)
    true = np.repeat([0, 1], 100)
    features = torch.tensor(np.where(true[:, None] == 0, -1.0, 1.0) + rng.normal(0, 0.5, (200, 8)),
                            dtype=torch.float32)  # fmt: skip
    given = true.copy()
    flipped = rng.choice(200, 10, replace=False)
    given[flipped] = 1 - given[flipped]
    found = label_errors.find(features, given, [f"f{i}" for i in range(200)], ["cat", "dog"])
    assert found["status"] == "found"
    top = {int(c["file"][1:]) for c in found["candidates"][: len(flipped)]}
    assert len(top & set(flipped.tolist())) >= len(flipped) // 2
    first = found["candidates"][0]
    assert first["suggested"] != first["given"] and 0.5 < first["confidence"] <= 1


def test_a_failure_ranking_label_errors_is_said_and_never_fails_the_job(monkeypatch):
    import cleanlab.filter

    def broken(*args, **kwargs):
        raise ValueError("pred_probs rows must sum to 1")

    monkeypatch.setattr(cleanlab.filter, "find_label_issues", broken)
    labels = np.repeat([0, 1], 10)
    found = label_errors.find(torch.randn(20, 4), labels, [f"f{i}" for i in range(20)], ["a", "b"])
    assert found == {
        "status": "skipped",
        "reason": "ranking failed (ValueError: pred_probs rows must sum to 1)",
    }
