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
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout first, even run with another Python

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from timing import timed  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from sagedrop.artifacts import load_inference_code  # noqa: E402
from sagedrop.paths import TRAIN_SCRIPT, TRAINING_CODE  # noqa: E402
from sagedrop.sample_data import pack_dataset, write_sample_dataset  # noqa: E402
from sagedrop_serving.graph_runtime import GraphModel, import_runtime  # noqa: E402
from sagedrop_serving.image_io import eval_transform  # noqa: E402
from sagedrop_training import graph_export  # noqa: E402
from sagedrop_training.data_pipeline import (  # noqa: E402
    ImageFileDataset,
    collate_skipping_unreadable,
    prepare_dataset,
)


def photo_jpeg(width=500, height=375) -> bytes:
    """A smooth photo-like JPEG (gradients plus mild noise), not a flat test card."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], -1)
    pixels = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _p50_p95(values: list[float]) -> str:
    return f"{percentile(values, 50) * 1000:10.2f}{percentile(values, 95) * 1000:10.2f}"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


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

        os.environ["SAGEDROP_SERVE_GRAPH"] = "false"
        eager_code = load_inference_code(model_dir / "code")
        eager = eager_code.model_fn(str(model_dir))
        os.environ.pop("SAGEDROP_SERVE_GRAPH")
        inference = load_inference_code(model_dir / "code")
        model = inference.model_fn(str(model_dir))
        assert model.runtime == "onnxruntime", "the artifact's graph did not load"
        body = photo_jpeg()
        draft = model.draft_size
        image = inference.decode_image(body, draft_size=draft)
        ready = inference.input_fn(body, "image/jpeg")
        prediction = inference.predict_fn(ready, model)
        logits = model.graph.logits(ready.numpy())
        scripted = torch.jit.freeze(torch.jit.script(eager.network.eval()))
        # The optional int8 graph (--quantise int8), calibrated on the sample's images.
        quantised = Path(tmp) / "int8"
        shutil.copytree(model_dir, quantised)
        pre = inference.Preprocessing.from_dict(
            json.loads((model_dir / "config.json").read_text())["preprocessing"]
        )
        loader = DataLoader(
            ImageFileDataset(
                prepare_dataset(str(folder), tmp).splits["valid"],
                eval_transform(pre),
                pre.resize_size,
            ),
            batch_size=16,
            collate_fn=collate_skipping_unreadable,
        )
        int8_verdict = graph_export.quantise_and_verify(eager.network, str(quantised), loader)
        int8 = GraphModel(import_runtime()[0], str(quantised / graph_export.INT8_FILE))
        channels_last = ready.to(memory_format=torch.channels_last)

        def eager_forward():
            with torch.inference_mode():
                return eager.network(channels_last)

        def script_forward():
            with torch.inference_mode():
                return scripted(channels_last)

        def chain(code, loaded):
            data = code.input_fn(body, "image/jpeg")
            return code.output_fn(code.predict_fn(data, loaded), "application/json")

        stages = {
            "decode (JPEG draft)": lambda: inference.decode_image(
                body, draft_size=model.draft_size
            ),
            "preprocess (resize, crop, normalise)": lambda: model.transform(image).unsqueeze(0),
            "forward (ONNX Runtime)": lambda: model.graph.logits(ready.numpy()),
            "softmax + top-k": lambda: inference.softmax(logits),
            "predict_fn (forward + top-k)": lambda: inference.predict_fn(ready, model),
            "output_fn (JSON)": lambda: inference.output_fn(prediction, "application/json"),
        }
        breakdown = {name: timed(fn, args.runs) for name, fn in stages.items()}
        # Alternate the measurements so drift on a shared machine hits all alike.
        runs = {k: [] for k in ("eager", "script", "graph", "int8", "chain eager", "chain graph")}
        for _ in range(5):
            runs["eager"] += timed(eager_forward, args.runs // 5, warmup=1)
            runs["script"] += timed(script_forward, args.runs // 5, warmup=1)
            runs["graph"] += timed(lambda: model.graph.logits(ready.numpy()), args.runs // 5, 1)
            runs["int8"] += timed(lambda: int8.logits(ready.numpy()), args.runs // 5, 1)
            runs["chain eager"] += timed(lambda: chain(eager_code, eager), args.runs // 5, 1)
            runs["chain graph"] += timed(lambda: chain(inference, model), args.runs // 5, 1)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"resnet18, 224 px, one 500x375 JPEG of {len(body):,} bytes, {args.runs} runs each\n")
    print(f"{'per-request breakdown (graph serving)':40}{'p50 ms':>10}{'p95 ms':>10}")
    for name, values in breakdown.items():
        print(
            f"  {name:38}{percentile(values, 50) * 1000:10.2f}{percentile(values, 95) * 1000:10.2f}"
        )
    print(f"\n{'batch-1 forward, by runtime':40}{'p50 ms':>10}{'p95 ms':>10}")
    for name, key in (("eager PyTorch", "eager"), ("frozen TorchScript", "script"),
                      ("ONNX Runtime (served)", "graph"),
                      ("ONNX Runtime int8 (--quantise)", "int8")):  # fmt: skip
        values = runs[key]
        print(
            f"  {name:38}{percentile(values, 50) * 1000:10.2f}{percentile(values, 95) * 1000:10.2f}"
        )
    raw = statistics.median(runs["eager"])
    print(
        f"int8 on {int8_verdict['images']} validation images: top-1 agreement "
        f"{int8_verdict['top1_agreement']:.4f}, accuracy {int8_verdict['graph_accuracy']:.4f} "
        f"vs eager {int8_verdict['eager_accuracy']:.4f} (a 1-epoch model: see the README)"
    )
    for key in ("script", "graph", "int8"):
        print(f"{key}_forward_over_eager={statistics.median(runs[key]) / raw:.3f}")
    for key in ("chain eager", "chain graph"):
        name = key.replace(" ", "_")
        print(f"{name}_p50_ms={statistics.median(runs[key]) * 1000:.2f}")
        print(f"{name}_over_raw_eager={statistics.median(runs[key]) / raw:.3f}")


if __name__ == "__main__":
    main()
