"""Training loop throughput against a raw model step, and the cached-feature fast path.

The real loop (JPEG files → DataLoader workers → transforms → channels_last → step, with
per-sample loss accounting) is timed step by step and compared with the bare step on a
tensor already in memory, same batch size, same image size, same model settings. The
ratio says how much the input pipeline and the bookkeeping cost: 1.0 means nothing.

    python bench/train_throughput.py [--image-size 224] [--batch-size 32] [--steps 8]
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
sys.path.insert(0, str(ROOT))  # this checkout first, even run with another Python

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from sagedrop.sample_data import write_sample_dataset  # noqa: E402
from sagedrop_serving.image_io import Preprocessing, eval_transform, train_transform  # noqa: E402
from sagedrop_serving.model_def import build_classifier  # noqa: E402
from sagedrop_training import ddp_runtime, fit_loop  # noqa: E402
from sagedrop_training.data_pipeline import (  # noqa: E402
    ImageFileDataset,
    collate_skipping_unreadable,
    prepare_dataset,
)


def raw_step_times(model, batch_size, image_size, steps, warmup=2) -> list[float]:
    """The floor: forward, loss, backward, optimizer step on a resident tensor."""
    model.train()
    x = torch.randn(batch_size, 3, image_size, image_size).to(memory_format=torch.channels_last)
    y = torch.randint(0, model.fc.out_features, (batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def loop_step_times(model, items, pre, batch_size, workers, warmup=2) -> list[float]:
    """The real loop (fit_loop.train_epoch) timed between consecutive optimizer steps."""
    dataset = ImageFileDataset(items, train_transform(pre, "flip-crop"), pre.resize_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        collate_fn=collate_skipping_unreadable,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    stamps: list[float] = []
    runtime = ddp_runtime.Runtime(0, 1, 0, torch.device("cpu"))
    fit_loop.train_epoch(
        model,
        loader,
        optimizer,
        nn.CrossEntropyLoss(),
        runtime,
        probe=_StepClock(stamps),
    )
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    return intervals[warmup:]


class _StepClock(fit_loop.NoProbe):
    """A probe that only notes when each step ends."""

    def __init__(self, stamps: list[float]):
        self.stamps = stamps

    def step_done(self) -> bool:
        self.stamps.append(time.perf_counter())
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--source-size", type=int, default=256, help="side of the JPEG files")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=max(0, (os.cpu_count() or 1) - 1))
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, {args.workers} loader worker(s)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        per_class = (args.steps + 3) * args.batch_size // 10 + 1
        folder = write_sample_dataset(tmp, size=args.source_size, per_class=per_class * 10 // 7 + 2)
        data = prepare_dataset(str(folder), tmp)
        pre = Preprocessing.for_size(args.image_size)
        items = data.splits["train"][: (args.steps + 3) * args.batch_size]
        model = build_classifier("resnet18", len(data.classes)).to(
            memory_format=torch.channels_last
        )

        raw = raw_step_times(model, args.batch_size, args.image_size, args.steps)
        loop = loop_step_times(model, items, pre, args.batch_size, args.workers)
        raw_median, loop_median = statistics.median(raw), statistics.median(loop)
        raw_rate, loop_rate = args.batch_size / raw_median, args.batch_size / loop_median
        print(
            f"\nresnet18, batch {args.batch_size}, {args.image_size}px, "
            f"JPEGs {args.source_size}px, median of {len(raw)} / {len(loop)} steps"
        )
        print(f"  raw step (tensor in memory)   {raw_median * 1000:8.1f} ms  {raw_rate:7.1f} img/s")
        print(
            f"  training loop (files)         {loop_median * 1000:8.1f} ms  {loop_rate:7.1f} img/s"
        )
        print(f"  ratio loop/raw                {loop_rate / raw_rate:8.3f}  (target >= 0.90)")

        # Frozen backbone: one feature pass, then head-only epochs on cached features.
        train_items = data.splits["train"]
        loader = DataLoader(
            ImageFileDataset(train_items, eval_transform(pre), pre.resize_size),
            batch_size=64,
            num_workers=args.workers,
            collate_fn=collate_skipping_unreadable,
        )
        runtime = ddp_runtime.Runtime(0, 1, 0, torch.device("cpu"))
        start = time.perf_counter()
        features, labels, _ = fit_loop.extract_features(model, loader, runtime)
        extract_seconds = time.perf_counter() - start
        head = model.fc
        optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        head_epochs = [
            fit_loop.train_epoch(
                head,
                fit_loop.feature_batches(features, labels, args.batch_size, generator),
                optimizer,
                nn.CrossEntropyLoss(),
                runtime,
            ).seconds
            for _ in range(7)
        ]
        head_epoch = statistics.median(head_epochs)
        full_epoch = loop_median * len(train_items) / args.batch_size
        print(f"\nfrozen backbone, {len(train_items)} training images")
        print(f"  feature pass (once)           {extract_seconds:8.2f} s")
        print(f"  head-only epoch (median of 7) {head_epoch * 1000:8.2f} ms")
        print(
            f"  full fine-tuning epoch (est.) {full_epoch:8.2f} s  "
            f"({full_epoch / head_epoch:,.0f}x the head-only epoch)"
        )


if __name__ == "__main__":
    main()
