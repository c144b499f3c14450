"""What the data audit costs at dogImages' size (issue 21), timed in one run on this machine.

A synthetic dataset of 8,351 JPEG photos of 500x375 px (dogImages' count and typical size:
smooth random scenes with grain, 133 classes, 80/10/10 splits), with planted duplicates:
exact copies and re-encoded or resized copies of training images in valid and test. Prints

* the stand-alone audit (``sagedrop dataset check``, the image-training path): decode,
  hash and search, over 2 processes; target at most 60 s;
* what it adds to a debug job with a frozen backbone, where the feature pass decodes every
  image anyway: the fingerprint's cost on top of that decode, against the pass's cost per
  image (measured on a sample), and so the audit's share of the pass;
* the near-duplicate search alone at 1,000 to 8,471 images, with the hash comparisons it
  makes per image (a count): about 68 N / 65,536, the images in the 68 buckets an image
  probes, and never more than 68 x ``BUCKET_CAP``; comparing all pairs makes (N - 1) / 2;
* recall on the planted pairs and false pairs among the distinct images.

Run: .venv/bin/python bench/data_audit.py [--images 8351] [--sample 256]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from torch.utils.data import DataLoader

import sagedrop  # noqa: F401 - import paths
from sagedrop_serving.image_io import Preprocessing, decode_image, eval_transform
from sagedrop_serving.model_def import build_classifier
from sagedrop_training import ddp_runtime, fit_loop
from sagedrop_training.data_audit import (
    audit,
    duplicate_groups,
    fingerprint_all,
    fingerprint_pixels,
    named_images,
)
from sagedrop_training.data_pipeline import (
    ImageFileDataset,
    collate_skipping_unreadable,
    prepare_dataset,
)

CLASSES = 133
PLANTED = 40  # per kind: exact copies, re-encoded copies, resized copies


def photo(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    scene = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 4, scene.shape)
    return Image.fromarray(np.clip(scene + grain, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_dataset(root: Path, images: int) -> dict[str, list[tuple[str, str]]]:
    """The dataset, and the planted (copy, original) pairs by kind. Fewer images than
    dogImages: fewer classes, so that every class is in every split."""
    classes = CLASSES if images >= 8351 else max(2, images // 70)
    rng = np.random.default_rng(0)
    planted: dict[str, list[tuple[str, str]]] = {"exact": [], "re-encoded": [], "resized": []}
    originals = []
    for n in range(images):
        k = n // classes  # the class's k-th image: 8 in 10 train, 1 valid, 1 test
        split = "train" if k % 10 < 8 else ("valid" if k % 10 == 8 else "test")
        label = f"{n % classes:03d}.class{n % classes}"
        path = root / split / label / f"img_{n:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = photo(rng)
        path.write_bytes(jpeg(picture))
        if split == "train" and len(originals) < 3 * PLANTED:
            originals.append((path, picture))
    for k, (path, picture) in enumerate(originals):
        kind = ("exact", "re-encoded", "resized")[k % 3]
        split = "test" if k % 2 else "valid"
        copy = root / split / path.parent.name / f"copy_{kind}_{k:03d}.jpg"
        if kind == "exact":
            copy.write_bytes(path.read_bytes())
        elif kind == "re-encoded":
            copy.write_bytes(jpeg(picture, quality=70))
        else:
            copy.write_bytes(jpeg(picture.resize((450, 338))))
        planted[kind].append((f"{split}/{path.parent.name}/{copy.name}",
                              f"train/{path.parent.name}/{path.name}"))  # fmt: skip
    return planted


def feature_pass(items, pre, fingerprints: bool, workers: int) -> float:
    """Seconds of the cached-feature pass over ``items`` (``train.py``'s frozen path)."""
    model = build_classifier("resnet18", CLASSES)
    runtime = ddp_runtime.Runtime(0, 1, 0, torch.device("cpu"))
    loader = DataLoader(
        ImageFileDataset(items, eval_transform(pre), pre.resize_size, fingerprints),
        batch_size=64,
        num_workers=workers,
        collate_fn=collate_skipping_unreadable,
    )
    prints: list = []
    started = time.perf_counter()
    fit_loop.extract_features(model, loader, runtime, prints if fingerprints else None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8351)
    parser.add_argument("--sample", type=int, default=256, help="images in the feature pass")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(max(1, args.workers))
    with tempfile.TemporaryDirectory(prefix="sagedrop-bench-audit-") as folder:
        root = Path(folder) / "data"
        started = time.perf_counter()
        planted = make_dataset(root, args.images)
        print(f"made {args.images} images of 500x375 + {3 * PLANTED} planted copies in "
              f"{time.perf_counter() - started:.0f}s")  # fmt: skip
        data = prepare_dataset(str(root), folder)
        pre = Preprocessing.for_size(224)
        all_items = [item for split in ("train", "valid", "test") for item in data.splits[split]]

        started = time.perf_counter()
        prints = {s: fingerprint_all([p for p, _ in data.splits[s]], pre.resize_size,
                                     args.workers) for s in data.splits}  # fmt: skip
        fingerprinted = time.perf_counter() - started
        result = audit(named_images(data.splits, data.labels, data.root), prints, data.labels)
        total = time.perf_counter() - started
        print(f"stand-alone audit of {len(all_items)} images on {args.workers} processes: "
              f"{total:.1f}s (decode + hash {fingerprinted:.1f}s, search + judge "
              f"{total - fingerprinted:.2f}s); target <= 60s")  # fmt: skip

        flat = [p for s in ("train", "valid", "test") for p in prints[s]]
        names = [image.file for s in ("train", "valid", "test")
                 for image in named_images(data.splits, data.labels, data.root)[s]]  # fmt: skip
        groups, _ = duplicate_groups(flat)
        group_of = {names[k]: n for n, group in enumerate(groups) for k in group}
        for kind, pairs in planted.items():
            hits = sum(1 for a, b in pairs if a in group_of and group_of.get(b) == group_of[a])
            print(f"  planted {kind} copies found: {hits}/{len(pairs)}")
        planted_files = {c for pairs in planted.values() for pair in pairs for c in pair}
        false = [g for g in groups if not {names[k] for k in g} <= planted_files]
        headline = result.document["headline"]
        print(f"  groups holding a distinct image (false pairs): {len(false)}; leaked test "
              f"{headline['leaked']['test']}, valid {headline['leaked']['valid']}")  # fmt: skip

        for size in [n for n in (1000, 2000, 4000) if n < len(flat)] + [len(flat)]:
            runs, work = [], {}
            for _ in range(3):
                work = {}
                begun = time.perf_counter()
                duplicate_groups(flat[:size], work)
                runs.append(time.perf_counter() - begun)
            median = statistics.median(runs)
            per_image = work.get("comparisons", 0) / size
            print(f"  near-duplicate search, {size} images: {median * 1000:.0f} ms, "
                  f"{per_image:.2f} hash comparisons per image (all pairs: "
                  f"{(size - 1) / 2:,.0f})")  # fmt: skip

        sample = all_items[: args.sample]
        decode, hashing = [], []
        for path, _ in sample:  # what fingerprinting adds to the decode the pass makes
            begun = time.perf_counter()
            data = Path(path).read_bytes()
            image = decode_image(data, draft_size=pre.resize_size)
            decoded = time.perf_counter()
            fingerprint_pixels(hashlib.sha256(data).hexdigest(), image)
            hashing.append(time.perf_counter() - decoded)
            decode.append(decoded - begun)
        feature_pass(sample[:32], pre, False, args.workers)  # warm up
        plain = statistics.median(feature_pass(sample, pre, False, args.workers) for _ in range(3))
        per_image = plain / len(sample)
        added = statistics.median(hashing)
        print(f"feature pass (resnet18, 224 px, {args.workers} workers) over {len(sample)} "
              f"images: {per_image * 1000:.1f} ms an image; in it, the decode the audit "
              f"shares {statistics.median(decode) * 1000:.2f} ms, the fingerprint it adds "
              f"{added * 1000:.2f} ms (median, one process)")  # fmt: skip
        search = total - fingerprinted
        job = per_image * len(all_items)
        extra = added * len(all_items) / args.workers + search
        print(f"  at {len(all_items)} images: the feature pass ~{job:.0f}s (the bulk of a "
              f"frozen-backbone debug job); the audit in it ~{extra:.1f}s "
              f"= {extra / job:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
