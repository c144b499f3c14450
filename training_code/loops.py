"""The training and evaluation loops, for full images and for cached backbone features.

Losses are averaged per sample (a batch's mean loss weighted by its size), evaluation
runs in ``eval()`` under ``inference_mode`` so no autograd graph is kept, and the running
training loss is accumulated on the device without a host sync per step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

import distributed
from model_def import backbone_features, frozen_modules


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    samples: int
    unreadable: list[str]
    seconds: float


class StepProbe(Protocol):
    """What a debug session sees of each training step (``debug_session.DebugSession``).

    ``step_done`` returns True when training must stop now (a rule's stop action).
    """

    def batch_ready(self) -> None: ...
    def forward_done(self, loss: torch.Tensor) -> None: ...
    def backward_done(self) -> None: ...
    def step_done(self) -> bool: ...


class EvalProbe(Protocol):
    def eval_batch(self, loss_sum: torch.Tensor, count: int) -> None: ...


def autocast(device: torch.device):
    """bf16 autocast on CUDA; on CPU full fp32 (CPU bf16 is slower on most hosts)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    non_blocking = device.type == "cuda"
    images = images.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=non_blocking)


def train_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    runtime: distributed.Runtime,
    probe: StepProbe | None = None,
) -> EpochResult:
    model.train()
    for module in frozen_modules(model):
        module.eval()
    device = runtime.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    unreadable: list[str] = []
    # BatchNorm cannot normalise a single sample whose feature map is 1x1 (late ResNet
    # stages on small images); a batch cut to one by unreadable images is skipped instead.
    needs_pairs = any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()
    )
    start = time.perf_counter()
    for images, labels, errors in loader:
        unreadable.extend(errors)
        if images is None or (needs_pairs and labels.numel() < 2):
            continue
        images, labels = to_device(images, labels, device)
        if probe is not None:
            probe.batch_ready()
        with autocast(device):
            logits = model(images)
            loss = criterion(logits, labels)
        if probe is not None:
            probe.forward_done(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if probe is not None:
            probe.backward_done()
        optimizer.step()
        with torch.no_grad():
            loss_sum += loss.detach().double() * labels.numel()
            correct += (logits.argmax(1) == labels).sum()
        seen += labels.numel()
        if probe is not None and probe.step_done():
            break
    totals = distributed.sum_across(runtime, loss_sum, correct, seen)
    return _result(totals, unreadable, start)


def evaluate(
    model: nn.Module,
    loader: Iterable,
    runtime: distributed.Runtime,
    probe: EvalProbe | None = None,
) -> EpochResult:
    """Per-sample mean loss and accuracy over this process's shard, summed over all."""
    model.eval()
    device = runtime.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    unreadable: list[str] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for images, labels, errors in loader:
            unreadable.extend(errors)
            if images is None:
                continue
            images, labels = to_device(images, labels, device)
            with autocast(device):
                logits = model(images)
            batch_loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            loss_sum += batch_loss.double()
            if probe is not None:
                probe.eval_batch(batch_loss, labels.numel())
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.numel()
    totals = distributed.sum_across(runtime, loss_sum, correct, seen)
    return _result(totals, unreadable, start)


def _result(totals: list[float], unreadable: list[str], start: float) -> EpochResult:
    loss_sum, correct, seen = totals
    return EpochResult(
        loss=loss_sum / seen if seen else float("nan"),
        accuracy=correct / seen if seen else float("nan"),
        samples=int(seen),
        unreadable=unreadable,
        seconds=time.perf_counter() - start,
    )


def extract_features(
    model: nn.Module, loader: DataLoader, runtime: distributed.Runtime
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Backbone features of every readable image, computed once (the frozen fast path)."""
    model.eval()
    feats, labels_out, unreadable = [], [], []
    with torch.inference_mode():
        for images, labels, errors in loader:
            unreadable.extend(errors)
            if images is None:
                continue
            images, labels = to_device(images, labels, runtime.device)
            with autocast(runtime.device):
                feats.append(backbone_features(model, images).float())
            labels_out.append(labels)
    if not feats:
        empty = torch.empty(0, model.fc.in_features, device=runtime.device)
        return empty, torch.empty(0, dtype=torch.long, device=runtime.device), unreadable
    return torch.cat(feats), torch.cat(labels_out), unreadable


def train_head_epoch(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    batch_size: int,
    generator: torch.Generator,
    runtime: distributed.Runtime,
    probe: StepProbe | None = None,
) -> EpochResult:
    head.train()
    start = time.perf_counter()
    order = torch.randperm(len(labels), generator=generator).to(features.device)
    loss_sum = torch.zeros((), device=features.device, dtype=torch.float64)
    correct = torch.zeros((), device=features.device, dtype=torch.long)
    for begin in range(0, len(order), batch_size):
        idx = order[begin : begin + batch_size]
        x, y = features[idx], labels[idx]
        if probe is not None:
            probe.batch_ready()
        logits = head(x)
        loss = criterion(logits, y)
        if probe is not None:
            probe.forward_done(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if probe is not None:
            probe.backward_done()
        optimizer.step()
        with torch.no_grad():
            loss_sum += loss.detach().double() * len(idx)
            correct += (logits.argmax(1) == y).sum()
        if probe is not None and probe.step_done():
            break
    totals = distributed.sum_across(runtime, loss_sum, correct, len(labels))
    return _result(totals, [], start)


def evaluate_head(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, runtime: distributed.Runtime
) -> EpochResult:
    head.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        logits = head(features)
        loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct = (logits.argmax(1) == labels).sum()
    totals = distributed.sum_across(runtime, loss_sum, correct, len(labels))
    return _result(totals, [], start)
