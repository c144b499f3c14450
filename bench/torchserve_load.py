"""Model load per worker under the real PyTorch inference stack (TorchServe 0.12.0).

Trains one small artifact (resnet18 from scratch, 64 px, 1 epoch on the sample digits),
then serves it with ``sagemaker_pytorch_serving_container.serving.main()`` through
``sagedrop.torchserve_stack`` (127.0.0.1, every package index unreachable), ``--repeats``
times each way:

1. the optimised graph, ONNX Runtime already in the environment (as the artifact's
   ``code/requirements.txt`` leaves it, installed once per container before TorchServe);
2. the eager model (``SAGEDROP_SERVE_GRAPH=false``): what a worker loads when the runtime
   is not there.

It prints TorchServe's own ``WorkerLoadTime`` per worker (median over all workers of all
repeats) and the start-to-READY time of the whole container (median over repeats), and
the ratio of the two ways, all measured in one run. Needs Java 17.

    python bench/torchserve_load.py [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout first, even run with another Python

from sagedrop import torchserve_stack  # noqa: E402
from sagedrop.paths import TRAIN_SCRIPT  # noqa: E402
from sagedrop.sample_data import pack_dataset, write_sample_dataset  # noqa: E402

TRAIN_ARGS = ["--epochs", "1", "--batch-size", "32", "--image-size", "64",
              "--pretrained", "false", "--augment", "crop", "--num-workers", "0"]  # fmt: skip


def train_artifact(base: Path) -> tuple[Path, Path]:
    dataset = write_sample_dataset(base / "dataset", per_class=12, classes=4)
    archive = pack_dataset(dataset, base / "data.zip")
    model = base / "model"
    command = [sys.executable, str(TRAIN_SCRIPT), "--data", str(archive), *TRAIN_ARGS,
               "--model-dir", str(model), "--output-data-dir", str(base / "out")]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=TRAIN_SCRIPT.parent)
    return model, dataset


def measure(model: Path, base: Path, repeats: int, workers: int, environment: dict):
    loads, ready = [], []
    for i in range(repeats):
        folder = base / f"serve-{len(environment)}-{i}"
        folder.mkdir()
        with torchserve_stack.serve(model, folder, workers, environment) as served:
            loads += served.worker_load_seconds()
            ready.append(served.ready_s)
            answer = torchserve_stack.request(
                f"{served.url}/invocations", (base / "probe.jpg").read_bytes(),
                {"Content-Type": "image/jpeg"},
            )  # fmt: skip
            runtime = json.loads(answer[1])["model"]["runtime"]
    return statistics.median(loads), statistics.median(ready), runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    why = torchserve_stack.missing()
    if why:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model, dataset = train_artifact(base)
        probe = next((dataset / "test").rglob("*.jpg"))
        (base / "probe.jpg").write_bytes(probe.read_bytes())
        print(f"TorchServe model load, {args.repeats} repeats x {args.workers} workers, medians")
        rows = []
        for label, environment in (
            ("optimised graph (ONNX Runtime there)", {}),
            ("eager model (SAGEDROP_SERVE_GRAPH=false)", {"SAGEDROP_SERVE_GRAPH": "false"}),
        ):
            load, ready, runtime = measure(model, base, args.repeats, args.workers, environment)
            rows.append((load, ready))
            print(f"{label:<42} worker load {load:6.2f} s   start to READY {ready:6.2f} s"
                  f"   answered by {runtime}")  # fmt: skip
        (graph_load, graph_ready), (eager_load, eager_ready) = rows
        print(f"graph/eager: worker load x{graph_load / eager_load:4.2f}, "
              f"start to READY x{graph_ready / eager_ready:4.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
