"""The one training loop: epochs of steps over batches, for images and cached features alike.

A batch is ``(inputs, labels, unreadable)``: a DataLoader of images yields it, and so does
``feature_batches`` over backbone features computed once. One step body, one evaluation
body and one epoch loop serve both, so the debug trace, the metrics and a rule's stop
mid-epoch behave the same on either path. Losses are averaged per sample actually seen
(a batch's mean loss weighted by its size); evaluation runs in ``eval()`` under
``inference_mode``; the running training loss stays on the device without a host sync.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sagedrop_serving.model_def import backbone_features, frozen_modules
from sagedrop_training import ddp_runtime

Batch = tuple[torch.Tensor | None, torch.Tensor | None, list[str]]


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    samples: int
    unreadable: list[str]
    seconds: float


class StopTraining(Exception):
    """A rule configured with ``"stop": true`` found issues."""

    def __init__(self, verdict: Any | None):
        text = f"{verdict.rule}: {verdict.details}" if verdict else "a rule on rank 0 found issues"
        super().__init__(f"training stopped by rule {text}")
        self.verdict = verdict


class NoProbe:
    """The probe of a run that records nothing: every hook a no-op.

    A debug run's probe is a ``debug_session.DebugSession``, which has these methods;
    the loop calls them unconditionally instead of asking whether a probe is there.
    """

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return None

    @optimizer.setter
    def optimizer(self, value: torch.optim.Optimizer | None) -> None:
        """Nothing records the learning rate here."""

    def epoch_begin(self, epoch: int) -> None: ...
    def add_section(self, section: str) -> None: ...
    def batch_ready(self) -> None: ...
    def forward_done(self, loss: torch.Tensor) -> None: ...
    def backward_done(self) -> None: ...
    def step_done(self) -> bool:
        """True when a stop rule asks to end training now (never, here)."""
        return False

    def eval_batch(self, loss_sum: torch.Tensor, count: int) -> None: ...
    def evaluated(self, epoch: int, train: EpochResult, valid: EpochResult) -> None: ...
    def stopping_rule(self) -> Any | None:
        return None

    def finish(self, title: str) -> list:
        return []


NO_PROBE = NoProbe()


def autocast(device: torch.device):
    """bf16 autocast on CUDA; on CPU full fp32 (CPU bf16 is slower on most hosts)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(inputs: torch.Tensor, labels: torch.Tensor, device: torch.device):
    """Images go channels-last (what the convolutions run fastest on); features as they are."""
    non_blocking = device.type == "cuda"
    if inputs.dim() == 4:
        inputs = inputs.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
    else:
        inputs = inputs.to(device, non_blocking=non_blocking)
    return inputs, labels.to(device, non_blocking=non_blocking)


def feature_batches(
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[Batch]:
    """Cached features in batches, shuffled by ``generator`` (in order without one)."""
    if generator is None:
        order = torch.arange(len(labels), device=features.device)
    else:
        order = torch.randperm(len(labels), generator=generator).to(features.device)
    for begin in range(0, len(order), batch_size):
        idx = order[begin : begin + batch_size]
        yield features[idx], labels[idx], []


def train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    runtime: ddp_runtime.Runtime,
    probe: NoProbe = NO_PROBE,
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
    for inputs, labels, errors in batches:
        unreadable.extend(errors)
        if inputs is None or labels is None or (needs_pairs and labels.numel() < 2):
            continue
        inputs, labels = to_device(inputs, labels, device)
        probe.batch_ready()
        with autocast(device):
            logits = model(inputs)
            loss = criterion(logits, labels)
        probe.forward_done(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        probe.backward_done()
        optimizer.step()
        with torch.no_grad():
            loss_sum += loss.detach().double() * labels.numel()
            correct += (logits.argmax(1) == labels).sum()
        seen += labels.numel()
        if probe.step_done():
            break
    totals = ddp_runtime.sum_across(runtime, loss_sum, correct, seen)
    return _result(totals, unreadable, start)


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    runtime: ddp_runtime.Runtime,
    probe: NoProbe = NO_PROBE,
    outputs: list | None = None,
) -> EpochResult:
    """Per-sample mean loss and accuracy over this process's shard, summed over all.

    ``outputs``, when given, receives each batch's (labels, probabilities) on the CPU, in
    order: the per-image outcomes of ``evaluation.json`` come from this very pass."""
    model.eval()
    device = runtime.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    unreadable: list[str] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for inputs, labels, errors in batches:
            unreadable.extend(errors)
            if inputs is None or labels is None:
                continue
            inputs, labels = to_device(inputs, labels, device)
            with autocast(device):
                logits = model(inputs)
            batch_loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            loss_sum += batch_loss.double()
            probe.eval_batch(batch_loss, labels.numel())
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.numel()
            if outputs is not None:
                outputs.append((labels.cpu(), logits.float().softmax(1).cpu()))
    totals = ddp_runtime.sum_across(runtime, loss_sum, correct, seen)
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
    model: nn.Module,
    loader: DataLoader,
    runtime: ddp_runtime.Runtime,
    fingerprints: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Backbone features of every readable image, computed once (the frozen fast path);
    a fingerprinting loader's fingerprints are appended to ``fingerprints``."""
    model.eval()
    feats, labels_out, unreadable = [], [], []
    with torch.inference_mode():
        for batch in loader:
            images, labels, errors = batch[:3]
            if fingerprints is not None and len(batch) == 4:
                fingerprints.extend(batch[3])
            unreadable.extend(errors)
            if images is None:
                continue
            images, labels = to_device(images, labels, runtime.device)
            with autocast(runtime.device):
                feats.append(backbone_features(model, images).float())
            labels_out.append(labels)
    if not feats:
        head: Any = model.fc  # a torchvision ResNet's Linear head
        empty = torch.empty(0, head.in_features, device=runtime.device)
        return empty, torch.empty(0, dtype=torch.long, device=runtime.device), unreadable
    return torch.cat(feats), torch.cat(labels_out), unreadable


class BestSoFar:
    """Keeps the weights of the epoch with the best validation accuracy (then lowest loss)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.key: tuple[float, float] | None = None
        self.state: dict | None = None
        self.accuracy = float("nan")

    def offer(self, epoch: int, valid: EpochResult, state: dict) -> None:
        key = (_finite_or(valid.accuracy, -1.0), -_finite_or(valid.loss, math.inf))
        if self.key is None or key > self.key:
            self.epoch, self.key, self.accuracy = epoch, key, valid.accuracy
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in state.items()})

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def _finite_or(value: float, fallback: float) -> float:
    return value if math.isfinite(value) else fallback


@dataclass
class Fit:
    """What to train and how: the same for images and for cached features."""

    model: nn.Module  # whose weights are kept (the whole classifier)
    trained: nn.Module  # what the steps run (the model, its head, or their DDP wrappers)
    evaluated: nn.Module  # what validation runs (the model or its head, unwrapped)
    train_batches: Callable[[int], Iterable[Batch]]  # epoch -> that epoch's batches
    valid_batches: Callable[[], Iterable[Batch]]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)


@dataclass
class FitResult:
    history: list[dict]
    best: BestSoFar
    unreadable: set[str]


def fit(
    plan: Fit,
    epochs: int,
    runtime: ddp_runtime.Runtime,
    probe: NoProbe = NO_PROBE,
    on_epoch: Callable[[int, EpochResult, EpochResult], dict] | None = None,
) -> FitResult:
    """Train for ``epochs``, validate after each, keep the best epoch's weights (restored
    into ``plan.model`` at the end), and stop early when a rule with ``stop`` says so."""
    history: list[dict] = []
    unreadable: set[str] = set()
    best = BestSoFar()
    probe.optimizer = plan.optimizer
    for epoch in range(1, epochs + 1):
        probe.epoch_begin(epoch)
        batches = plan.train_batches(epoch)
        train = train_epoch(plan.trained, batches, plan.optimizer, plan.criterion, runtime, probe)
        valid = evaluate(plan.evaluated, plan.valid_batches(), runtime, probe)
        probe.evaluated(epoch, train, valid)
        plan.scheduler.step()
        unreadable.update(train.unreadable + valid.unreadable)
        history.append(on_epoch(epoch, train, valid) if on_epoch else {"epoch": epoch})
        best.offer(epoch, valid, plan.model.state_dict())
        stop_if_a_rule_says_so(runtime, probe)
    best.restore(plan.model)
    return FitResult(history, best, unreadable)


def stop_if_a_rule_says_so(runtime: ddp_runtime.Runtime, probe: NoProbe) -> None:
    """A rule's stop action, agreed by every process at the epoch's end (rank 0 judges)."""
    rule = probe.stopping_rule()
    if ddp_runtime.sum_across(runtime, 1.0 if rule is not None else 0.0)[0] > 0:
        raise StopTraining(rule.verdict() if rule is not None else None)
