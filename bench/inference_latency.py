"""Serving latency: input_fn → predict_fn → output_fn against the raw forward pass.

A real artifact is trained (one short epoch at 224 px, so the weights are real ones and
``code/inference.py`` is the artifact's own copy), then one photo-sized JPEG
(500x375, like dogImages) goes through the whole handler chain, and the bare batch-1
forward pass on a ready tensor is timed in the same process for comparison.

    python bench/inference_latency.py [--runs 50]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "chalice_app")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sagedrop.artifacts import load_inference_code  # noqa: E402
from sagedrop.paths import TRAIN_SCRIPT, TRAINING_CODE  # noqa: E402
from sagedrop.sample_data import pack_dataset, write_sample_dataset  # noqa: E402


def photo_jpeg(width=500, height=375) -> bytes:
    """A smooth photo-like JPEG (gradients plus mild noise), not a flat test card."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], -1)
    pixels = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def timed(fn, runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_sample_dataset(tmp, size=64, per_class=6)
        archive = pack_dataset(folder, Path(tmp) / "d.zip")
        model_dir = Path(tmp) / "model"
        command = [
            sys.executable,
            str(TRAIN_SCRIPT),
            "--data",
            str(archive),
            "--epochs",
            "1",
            "--pretrained",
            "false",
            "--image-size",
            "224",
            "--batch-size",
            "16",
            "--model-dir",
            str(model_dir),
            "--output-data-dir",
            str(Path(tmp) / "out"),
            "--work-dir",
            str(Path(tmp) / "work"),
        ]
        subprocess.run(command, cwd=TRAINING_CODE, check=True, capture_output=True)

        inference = load_inference_code(model_dir / "code")
        model = inference.model_fn(str(model_dir))
        body = photo_jpeg()

        def handler_chain():
            data = inference.input_fn(body, "image/jpeg")
            return inference.output_fn(inference.predict_fn(data, model), "application/json")

        ready = inference.input_fn(body, "image/jpeg").to(memory_format=torch.channels_last)

        def raw_forward():
            with torch.inference_mode():
                return model.network(ready)

        decode = timed(lambda: inference.input_fn(body, "image/jpeg"), args.runs)
        # Alternate the two measurements so drift on a shared machine hits both alike.
        chain, raw = [], []
        for _ in range(5):
            chain += timed(handler_chain, args.runs // 5, warmup=1)
            raw += timed(raw_forward, args.runs // 5, warmup=1)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"resnet18, 224 px, one 500x375 JPEG of {len(body):,} bytes, {len(chain)} runs each\n")
    print(f"{'':28}{'p50 ms':>10}{'p95 ms':>10}")
    for name, values in (
        ("input_fn (decode+preprocess)", decode),
        ("input_fn→output_fn", chain),
        ("raw forward (batch 1)", raw),
    ):
        print(
            f"{name:28}{percentile(values, 50) * 1000:10.2f}{percentile(values, 95) * 1000:10.2f}"
        )
    ratio = statistics.median(chain) / statistics.median(raw)
    print(f"\nhandler chain / raw forward (p50): {ratio:.3f}")


if __name__ == "__main__":
    main()
