"""What the debug job's recorder and profiler cost per training step, at default settings.

The same loop (``fit_loop.train_epoch``, ResNet18, resident in-memory batches so the data
pipeline adds no noise) runs in alternating blocks with no probe and with a full
``DebugSession`` (tensors saved every 50 steps and every step of the first 10, per-step
loss and timeline, 500 ms system sampling, rules evaluated as it goes, TensorBoard
files). The overhead is the ratio of mean step times (saved steps included: that is
what a job pays), reported with the medians; block-to-block noise on a shared host is a
few percent, so the time spent inside the session's own calls is reported too.

    python bench/debug_overhead.py [--image-size 64] [--batch-size 32] [--steps 200]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "training_code")]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from sagedrop_debugging.debug_session import DebugOptions, DebugSession  # noqa: E402
from sagedrop_serving.model_def import build_classifier  # noqa: E402
from sagedrop_training import ddp_runtime, fit_loop  # noqa: E402


class _Batches:
    """``steps`` batches of one resident tensor, in the loader's (images, labels, errors) form."""

    def __init__(self, x, y, steps):
        self.x, self.y, self.steps = x, y, steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y, []


class _Clock:
    """A probe that notes each step's end, passes every call on to the debug session, and
    adds up the time spent inside the session's calls (its direct cost)."""

    def __init__(self, inner=None):
        self.inner, self.stamps, self.inside = inner, [], 0.0

    def _timed(self, call, *args):
        started = time.perf_counter()
        result = call(*args)
        self.inside += time.perf_counter() - started
        return result

    def batch_ready(self):
        if self.inner:
            self._timed(self.inner.batch_ready)

    def forward_done(self, loss):
        if self.inner:
            self._timed(self.inner.forward_done, loss)

    def backward_done(self):
        if self.inner:
            self._timed(self.inner.backward_done)

    def step_done(self):
        self.stamps.append(time.perf_counter())
        return self._timed(self.inner.step_done) if self.inner else False


def run_block(model, optimizer, batches, session) -> tuple[list[float], float]:
    """Step durations, and the seconds spent inside the session's calls."""
    runtime = ddp_runtime.Runtime(0, 1, 0, torch.device("cpu"))
    clock = _Clock(session)
    start = time.perf_counter()
    if session is not None:
        session.epoch_begin(1)
    fit_loop.train_epoch(model, batches, optimizer, nn.CrossEntropyLoss(), runtime, clock)
    stamps = [start, *clock.stamps]
    return [b - a for a, b in itertools.pairwise(stamps)], clock.inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200, help="steps per block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks of each kind, alternated")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_classifier("resnet18", 10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"ResNet18 at {args.image_size}px, batch {args.batch_size}, {args.steps} steps x "
        f"{args.blocks} blocks each"
    )
    run_block(model, optimizer, _Batches(x, y, 5), None)  # warm-up
    plain, debug, finish, inside = [], [], [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for block in range(args.blocks):
            plain += run_block(model, optimizer, _Batches(x, y, args.steps), None)[0]
            out = os.path.join(tmp, f"block{block}")
            session = DebugSession(
                model,
                out,
                DebugOptions(tensorboard_dir=os.path.join(out, "tensorboard")),
                torch.device("cpu"),
                {"job": "bench", "batch_size": args.batch_size, "num_workers": 0},
            )
            session.optimizer = optimizer
            durations, seconds = run_block(model, optimizer, _Batches(x, y, args.steps), session)
            debug += durations
            inside += seconds
            started = time.perf_counter()
            session.finish("bench")
            finish.append(time.perf_counter() - started)
    mean_plain, mean_debug = statistics.fmean(plain), statistics.fmean(debug)
    print(f"{'':22}{'median ms':>10}{'mean ms':>10}")
    print(f"{'no recorder':22}{1000 * statistics.median(plain):10.2f}{1000 * mean_plain:10.2f}")
    print(f"{'debug session':22}{1000 * statistics.median(debug):10.2f}{1000 * mean_debug:10.2f}")
    overhead = 100 * (mean_debug / mean_plain - 1)
    print(f"overhead (mean step time, saved steps included): {overhead:+.1f}%")
    print(f"median step ratio: {statistics.median(debug) / statistics.median(plain):.3f}")
    print(
        f"time inside the session's step calls (recorder, timeline, rules): "
        f"{100 * inside / sum(debug):.1f}% of debug step time "
        f"({1000 * inside / len(debug):.2f} ms per step); ReLU input hooks run inside forward"
    )
    print(
        f"finish (rules.json, report.html, TensorBoard system scalars), once per job: "
        f"median {statistics.median(finish):.2f}s"
    )


if __name__ == "__main__":
    main()
