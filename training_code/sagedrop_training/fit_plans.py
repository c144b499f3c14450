"""What one job trains, as a ``fit_loop.Fit`` plan: the whole model (or its unfrozen part)
on augmented images, or, with a frozen backbone, its head on features computed once per
image (and shared by tuning trials through ``SAGEDROP_FEATURE_CACHE``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from sagedrop_serving.image_io import Preprocessing, eval_transform, train_transform
from sagedrop_training import audit_pass, ddp_runtime, fit_loop
from sagedrop_training.data_audit import Fingerprint
from sagedrop_training.data_pipeline import (
    ImageFileDataset,
    PreparedDataset,
    collate_skipping_unreadable,
)
from sagedrop_training.fit_loop import Fit, feature_batches

log = logging.getLogger("sagedrop.train")


def image_fit(args, runtime, data: PreparedDataset, model: nn.Module, pre: Preprocessing):
    """Train the whole model (or its unfrozen part) on augmented images, epoch by epoch."""
    per_process_batch = max(1, args.batch_size // runtime.world_size)
    workers = num_workers(args.num_workers)
    draft = pre.resize_size
    train_set = ImageFileDataset(data.splits["train"], train_transform(pre, args.augment), draft)
    generator = torch.Generator().manual_seed(args.seed)
    sampler: DistributedSampler | None = (
        DistributedSampler(train_set, seed=args.seed, drop_last=False)
        if runtime.distributed
        else None
    )
    loader_options = dict(
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        persistent_workers=workers > 0,
        collate_fn=collate_skipping_unreadable,
        prefetch_factor=4 if workers > 0 else None,
    )
    train_loader = DataLoader(
        train_set,
        batch_size=per_process_batch,
        sampler=sampler,
        shuffle=sampler is None,
        generator=generator,
        drop_last=len(train_set) > per_process_batch * runtime.world_size,
        **loader_options,
    )

    def train_batches(epoch: int) -> DataLoader:
        if sampler is not None:
            sampler.set_epoch(epoch)
        return train_loader

    def eval_loader(split: str) -> DataLoader:
        items = ddp_runtime.shard(data.splits[split], runtime)
        dataset = ImageFileDataset(items, eval_transform(pre), draft)
        return DataLoader(
            dataset, batch_size=per_process_batch * 2, shuffle=False, **loader_options
        )

    valid_loader = eval_loader("valid")
    optimizer = _optimizer(args, model.parameters())
    plan = Fit(
        model=model,
        trained=DistributedDataParallel(model) if runtime.distributed else model,
        evaluated=model,
        train_batches=train_batches,
        valid_batches=lambda: valid_loader,
        optimizer=optimizer,
        scheduler=_scheduler(args, optimizer),
    )
    return plan, lambda: eval_loader("test"), set()


def cached_feature_fit(args, runtime, data, model: nn.Module, pre: Preprocessing):
    """Frozen backbone: its features never change, so compute them once per image.

    Each epoch is then a few matrix products on the head, through the same loop as
    images. Training images get the evaluation transform here (no augmentation): the
    price of computing them once.
    """
    workers = num_workers(args.num_workers)
    started = time.perf_counter()
    features, shard_prints = {}, {}
    for split in ("train", "valid", "test"):
        items = ddp_runtime.shard(data.splits[split], runtime)
        *features[split], shard_prints[split] = _cached_features(
            args, runtime, data, model, pre, split, items, workers
        )
    log.info(
        "backbone features computed once in %.1fs; augmentation is off on this path",
        time.perf_counter() - started,
    )
    features, unreadable, audit = audit_pass.audit_features(
        runtime, data, features, shard_prints, args.leakage, args.seed, served_later(args)
    )
    head = cast(nn.Module, model.fc)
    optimizer = _optimizer(args, head.parameters())
    generator = torch.Generator().manual_seed(args.seed + runtime.rank)
    per_process_batch = max(1, args.batch_size // runtime.world_size)
    x_train, y_train = features["train"]

    def in_order(split: str):
        x, y = features[split]
        return lambda: feature_batches(x, y, per_process_batch * 2)

    plan = Fit(
        model=model,
        trained=DistributedDataParallel(head) if runtime.distributed else head,
        evaluated=head,
        train_batches=lambda _: feature_batches(x_train, y_train, per_process_batch, generator),
        valid_batches=in_order("valid"),
        optimizer=optimizer,
        scheduler=_scheduler(args, optimizer),
    )
    return plan, in_order("test"), unreadable, audit


def _cached_features(args, runtime, data, model, pre, split, items, workers):
    """Features for one split, reused across runs through SAGEDROP_FEATURE_CACHE if set.

    Tuning trials on one host share the same frozen backbone and images; the local cloud
    points them at one cache so only the first trial pays for the forward passes.
    """
    cache_dir = os.environ.get("SAGEDROP_FEATURE_CACHE")
    cache_file = None
    if cache_dir and args.weights_path is None:
        key = hashlib.sha256(
            json.dumps(
                [
                    data.fingerprint(),
                    split,
                    args.backbone,
                    args.pretrained,
                    pre.to_dict(),
                    "pil-eval-transform",  # how those pixels are made (image_io.EvalTransform)
                    "fingerprints-1",  # what data_audit reads of each image
                    runtime.rank,
                    runtime.world_size,
                    torch.__version__,
                ]
            ).encode()
        ).hexdigest()[:24]
        cache_file = os.path.join(cache_dir, f"features-{key}.pt")
        if os.path.exists(cache_file):
            cached = torch.load(cache_file, map_location=runtime.device, weights_only=True)
            log.info("reusing cached %s features from %s", split, cache_file)
            loaded = [Fingerprint.from_dict(p) for p in cached["prints"]]
            return cached["x"], cached["y"], loaded
    dataset = ImageFileDataset(items, eval_transform(pre), pre.resize_size, fingerprints=True)
    loader = DataLoader(
        dataset,
        batch_size=128,
        shuffle=False,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        collate_fn=collate_skipping_unreadable,
    )
    prints: list[Fingerprint] = []
    x, y, _ = fit_loop.extract_features(model, loader, runtime, prints)
    if cache_file:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        tmp = f"{cache_file}.{os.getpid()}.tmp"
        saved = [p.to_dict() for p in prints]
        torch.save({"x": x.cpu(), "y": y.cpu(), "prints": saved}, tmp)
        os.replace(tmp, cache_file)
    return x, y, prints


def served_later(args) -> bool:
    """A run whose model can be deployed: the debug job, or a run by hand; not a trial."""
    return bool(args.debug) or "SM_HPS" not in os.environ


def _optimizer(args, params) -> torch.optim.Optimizer:
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.SGD(
        trainable, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )


def _scheduler(args, optimizer):
    if args.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def num_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    return max(0, min(8, (os.cpu_count() or 1) - 1))
