"""A real, small dataset in the dogImages layout, made offline from scikit-learn's digits.

1,797 handwritten digits (8x8, 16 grey levels) upscaled and written as JPEG files, split
70/15/15 per class with a fixed seed. It is what the demo and the tests train on: real
images, ten classes, no download.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_FRACTIONS = (("train", 0.70), ("valid", 0.15), ("test", 0.15))


def write_sample_dataset(
    out_dir: str | os.PathLike,
    size: int = 32,
    per_class: int | None = None,
    classes: int = 10,
    seed: int = 0,
    config: dict | None = None,
) -> Path:
    """Write ``out_dir/digits/{train,valid,test}/NNN.name/*.jpg``; return the folder.

    ``per_class`` caps the images per class (tiny datasets for tests); ``config`` is
    written as the dataset's ``sagedrop.json`` (per-dataset tuning settings).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(out_dir) / "digits"
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    for label in range(classes):
        indices = [i for i, t in enumerate(digits.target) if t == label]
        rng.shuffle(indices)
        if per_class:
            indices = indices[:per_class]
        folder = f"{label + 1:03d}.{DIGIT_NAMES[label]}"
        start = 0
        for n, (split, fraction) in enumerate(SPLIT_FRACTIONS):
            last = n == len(SPLIT_FRACTIONS) - 1
            count = len(indices) - start if last else max(1, round(len(indices) * fraction))
            target = root / split / folder
            target.mkdir(parents=True, exist_ok=True)
            for i in indices[start : start + count]:
                _digit_image(digits.images[i], size).save(
                    target / f"{DIGIT_NAMES[label]}_{i:04d}.jpg", quality=95
                )
            start += count
    if config:
        (root / "sagedrop.json").write_text(json.dumps(config, indent=2) + "\n")
    return root


def _digit_image(pixels: np.ndarray, size: int) -> Image.Image:
    grey = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink, white paper
    return Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC)


def pack_dataset(folder: str | os.PathLike, out_zip: str | os.PathLike) -> Path:
    """Zip a dataset folder under its own name as the single top-level folder.

    Entries are sorted and stored with fixed timestamps, so the same folder always packs
    to the same bytes (and so the same S3 ETag: a re-upload is recognised as a duplicate).
    """
    folder = Path(folder)
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_suffix(out_zip.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            name = f"{folder.name}/{path.relative_to(folder).as_posix()}"
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            # JPEG and PNG are already compressed; deflating them again only costs time.
            compress = (
                zipfile.ZIP_STORED
                if path.suffix.lower() in (".jpg", ".jpeg", ".png")
                else zipfile.ZIP_DEFLATED
            )
            info.compress_type = compress
            archive.writestr(info, path.read_bytes())
    os.replace(tmp, out_zip)
    return out_zip
