"""Finding the data, deterministic stratified splits, and surviving unreadable images."""

from __future__ import annotations

import os
import random

import pytest
import torch

from sagedrop_serving.image_io import Preprocessing, eval_transform
from sagedrop_training.data_pipeline import (
    DatasetError,
    ImageFileDataset,
    collate_skipping_unreadable,
    find_data_source,
    prepare_dataset,
)
from tests.helpers import jpeg_bytes, layout, make_zip


def write_folder(root, members):
    for name, data in members.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_missing_splits_are_carved_out_stratified_and_deterministically(tmp_path):
    members = layout(classes=("001.a", "002.b", "003.c"), splits=("train",), n=20)
    first = prepare_dataset(str(write_folder(tmp_path / "one", members)), str(tmp_path / "w1"))
    # Same files, listed in another order on another machine: the same split.
    shuffled = dict(random.Random(7).sample(sorted(members.items()), len(members)))
    second = prepare_dataset(str(write_folder(tmp_path / "two", shuffled)), str(tmp_path / "w2"))

    for split in ("train", "valid", "test"):
        a = [os.path.basename(p) + str(y) for p, y in first.splits[split]]
        b = [os.path.basename(p) + str(y) for p, y in second.splits[split]]
        assert sorted(a) == sorted(b)
    for label in range(3):  # every class is in every split, about 10% each
        assert sum(1 for _, y in first.splits["valid"] if y == label) == 2
        assert sum(1 for _, y in first.splits["test"] if y == label) == 2
        assert sum(1 for _, y in first.splits["train"] if y == label) == 16
    all_paths = [p for s in first.splits.values() for p, _ in s]
    assert len(all_paths) == len(set(all_paths)) == 60
    assert any("'valid' split made from 10%" in note for note in first.notes)


def test_zip_is_validated_then_extracted_once(tmp_path):
    archive = make_zip(tmp_path / "d.zip", layout(prefix="dogImages/"))
    prepared = prepare_dataset(str(archive), str(tmp_path / "work"))
    assert prepared.classes == ["001.cat", "002.dog"]
    assert all(os.path.exists(p) for p, _ in prepared.splits["train"])
    marker = tmp_path / "work" / "extracted" / ".complete"
    assert marker.exists()
    again = prepare_dataset(str(archive), str(tmp_path / "work"))
    assert again.splits == prepared.splits


def test_hostile_zip_is_refused_before_extraction(tmp_path):
    archive = make_zip(tmp_path / "d.zip", {**layout(), "../../escape.jpg": jpeg_bytes()})
    with pytest.raises(DatasetError, match=r"escape\.jpg"):
        prepare_dataset(str(archive), str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_channel_folder_holding_one_zip_means_that_zip(tmp_path, monkeypatch):
    channel = tmp_path / "training"
    channel.mkdir()
    make_zip(channel / "upload.zip", layout())
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(channel))
    assert find_data_source() == str(channel / "upload.zip")


def test_separate_split_channels(tmp_path, monkeypatch):
    members = layout()
    for split in ("train", "valid", "test"):
        sub = {k.split("/", 1)[1]: v for k, v in members.items() if k.startswith(split + "/")}
        write_folder(tmp_path / split, sub)
        monkeypatch.setenv(f"SM_CHANNEL_{split.upper()}", str(tmp_path / split))
    monkeypatch.delenv("SM_CHANNEL_TRAINING", raising=False)
    source = find_data_source()
    assert set(source) == {"train", "valid", "test"}
    prepared = prepare_dataset(source, str(tmp_path / "work"))
    assert prepared.classes == ["001.cat", "002.dog"]
    assert all(len(prepared.splits[s]) == 4 for s in ("train", "valid", "test"))
    assert all(os.path.isfile(p) for p, _ in prepared.splits["valid"])


def test_no_data_is_a_clear_error(monkeypatch):
    for name in ("SM_CHANNEL_TRAINING", "SM_CHANNEL_TRAIN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DatasetError, match="pass --data"):
        find_data_source()


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes())
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg_bytes(size=(64, 64))[:150])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"definitely not a jpeg")
    dataset = ImageFileDataset(
        [(str(good), 0), (str(truncated), 1), (str(garbage), 1)],
        eval_transform(Preprocessing.for_size(32)),
        draft_size=None,
    )
    images, labels, errors = collate_skipping_unreadable([dataset[i] for i in range(3)])
    assert images.shape == (1, 3, 32, 32)
    assert labels.tolist() == [0]
    assert len(errors) == 2
    assert any("truncated.jpg" in e for e in errors) and any("garbage.jpg" in e for e in errors)
    assert collate_skipping_unreadable([dataset[2]]) == (None, None, [dataset[2][2]])


def test_eval_transform_is_deterministic_and_imagenet_normalised(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg_bytes(color=(124, 116, 104), size=(40, 30)))
    dataset = ImageFileDataset([(str(path), 0)], eval_transform(Preprocessing.for_size(32)), None)
    first, second = dataset[0][0], dataset[0][0]
    assert torch.equal(first, second)
    # ImageNet's mean colour normalises to about zero in every channel.
    assert first.abs().mean() < 0.05


def test_eval_transform_gives_torchvisions_pixels_on_a_pil_image():
    """The serving path's own resize/crop/normalise is torchvision's on a PIL image (PIL's
    antialiased bilinear) to within one grey level (it resizes only the cropped region)."""
    from PIL import Image
    from torchvision.transforms import v2

    pre = Preprocessing.for_size(32)
    image = Image.effect_mandelbrot((53, 41), (-2, -1.5, 1, 1.5), 60).convert("RGB")
    torchvision = v2.Compose(
        [
            v2.Resize(pre.resize_size, antialias=True),
            v2.CenterCrop(pre.image_size),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre.mean, pre.std),
        ]
    )
    ours = eval_transform(pre)(image)
    assert ours.shape == (3, 32, 32) and ours.dtype == torch.float32
    one_grey_level = 1 / 255 / min(pre.std) + 1e-6
    assert (ours - torchvision(image)).abs().max() <= one_grey_level
