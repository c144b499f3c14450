"""A debug job's recording, profiling and rule evaluation, attached to the training loops.

``train.py --debug true`` creates one ``DebugSession`` (on rank 0) and passes it to the
loops as their probe. Every record goes to the trace file and, in the same order and
under the same lock, to the rules; so ``sagedrop rules evaluate`` on the trace gives the
verdicts the job gave. At the end it writes ``rules.json``, ``rule_verdicts.json``,
``report.html`` and the ``rule_<Name>=`` metric lines the pipeline's gate reads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import psutil
import torch
from torch import nn

from sagedrop_contract.job_contract import emit_metrics
from sagedrop_debugging.debug_trace import TRACE_FILE, TraceWriter, read_trace
from sagedrop_debugging.rule_base import Rule, Verdict
from sagedrop_debugging.rule_set import RuleSet, metric_values, write_verdicts
from sagedrop_debugging.system_monitor import SystemMonitor
from sagedrop_debugging.tensor_recorder import TensorRecorder
from sagedrop_reports import debug_report

log = logging.getLogger("sagedrop.debug")
REPORT_FILE = "report.html"
TOP_OPERATORS = 15


@dataclass
class DebugOptions:
    rules_config: dict = field(default_factory=dict)
    save_interval: int = 50
    profiler_interval_s: float = 0.5
    trace_steps: tuple[int, int] | None = None  # torch.profiler over these steps, inclusive
    tensorboard_dir: str | None = None


def parse_trace_steps(text: str) -> tuple[int, int] | None:
    """``"5-8"`` → (5, 8); empty → None."""
    text = (text or "").strip()
    if not text:
        return None
    first, _, last = text.partition("-")
    try:
        start, end = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"profiler trace steps must look like 5-8, got {text!r}") from None
    if start < 0 or end < start:
        raise ValueError(f"profiler trace steps must look like 5-8, got {text!r}")
    return start, end


class DebugSession:
    def __init__(
        self,
        model: nn.Module,
        output_dir: str,
        options: DebugOptions,
        device: torch.device,
        meta: dict,
        stop_within_epoch: bool = True,
    ):
        self.output_dir = output_dir
        self.sections: list[str] = []
        self.options = options
        self.device = device
        self.stop_within_epoch = stop_within_epoch
        self.rules = RuleSet(options.rules_config)
        dense = self.rules.parameters().get("PoorWeightInitialization", {}).get("steps", 0)
        self.recorder = TensorRecorder(model, options.save_interval, int(dense))
        self.writer = TraceWriter(os.path.join(output_dir, TRACE_FILE))
        self.tensorboard = _tensorboard_writer(options.tensorboard_dir)
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.epoch = 0
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, torch.Tensor, float]] = []
        self._eval_pending: list[tuple[torch.Tensor, int]] = []
        self._eval_step = 0
        self._marks: dict[str, float] = {}
        self._profiler: torch.profiler.profile | None = None
        self._started_init = False
        self._emit(
            {
                "kind": "meta",
                **meta,
                "layers": self.recorder.layer_names,
                "save_interval": self.recorder.save_interval,
                "dense_steps": self.recorder.dense_steps,
                "cpu_count": os.cpu_count(),
                "rules_config": options.rules_config,
                "rules": self.rules.parameters(),
            }
        )
        self.monitor = SystemMonitor(self._emit, options.profiler_interval_s)
        self.monitor.start()

    # the probe the loops call ---------------------------------------------------------
    def epoch_begin(self, epoch: int) -> None:
        self.epoch = epoch
        self._marks["end"] = time.perf_counter()

    def batch_ready(self) -> None:
        now = self._now()
        if not self._started_init:
            self._started_init = True
            self._emit({"kind": "init", "seconds": time.time() - psutil.Process().create_time()})
        self._marks.update(data=now - self._marks.get("end", now), begin=now)
        self.recorder.begin_step(self.step)
        trace = self.options.trace_steps
        if trace and self.step == trace[0] and self._profiler is None:
            self._start_torch_profiler()

    def forward_done(self, loss: torch.Tensor) -> None:
        self._marks["forward"] = self._now()
        self._pending.append((self.step, self.epoch, loss.detach().float(), self._lr()))

    def backward_done(self) -> None:
        self._marks["backward"] = self._now()
        self._marks["recording"] = 0.0
        if self.recorder.capturing:
            self._flush_losses()
            record = self.recorder.collect(self.step)
            self._emit(record)
            if self.tensorboard is not None:
                self.tensorboard.put(record)
            self._marks["recording"] = self._now() - self._marks["backward"]

    def step_done(self) -> bool:
        """Records the step's timeline; True when a stop rule asks to end training now."""
        now = self._now()
        marks = self._marks
        self._emit(
            {
                "kind": "step",
                "step": self.step,
                "epoch": self.epoch,
                "data": marks["data"],
                "forward": marks["forward"] - marks["begin"],
                "backward": marks["backward"] - marks["forward"],
                "optimizer": now - marks["backward"] - marks["recording"],
                # the recorder's own time is its own phase, never the training's
                "recording": marks["recording"],
                "total": now - marks["begin"] + marks["data"] - marks["recording"],
            }
        )
        trace = self.options.trace_steps
        if self._profiler is not None and trace and self.step >= trace[1]:
            self._stop_torch_profiler()
        self.step += 1
        marks["end"] = time.perf_counter()
        return self.stop_within_epoch and self.rules.stopping_rule() is not None

    def eval_batch(self, loss_sum: torch.Tensor, count: int) -> None:
        self._eval_pending.append((loss_sum.detach().double(), count))

    def evaluated(self, epoch: int, train, valid) -> None:
        """One validation pass done: its mean loss next to the epoch's mean training loss."""
        self._flush_losses()
        if self._eval_pending:
            values = torch.stack([s for s, _ in self._eval_pending]).tolist()
            for value, (_, count) in zip(values, self._eval_pending, strict=True):
                self._record_eval_loss(epoch, value / max(count, 1))
                self._eval_step += 1
            self._eval_pending = []
        record = {
            "kind": "eval",
            "step": self.step,
            "epoch": epoch,
            "train_loss": train.loss,
            "train_accuracy": train.accuracy,
            "valid_loss": valid.loss,
            "valid_accuracy": valid.accuracy,
            "lr": self._lr(),
        }
        self._emit(record)
        if self.tensorboard is not None:
            self.tensorboard.put(record)
        self.writer.flush()

    def stopping_rule(self) -> Rule | None:
        return self.rules.stopping_rule()

    # the end ----------------------------------------------------------------------------
    def add_section(self, section: str) -> None:
        """HTML the job adds to the report (the data audit): drawn after the job's own."""
        self.sections.append(section)

    def finish(self, title: str) -> list[Verdict]:
        """Verdicts, rules.json, report.html and metric lines; safe to call after a failure."""
        self.monitor.stop()
        if self._profiler is not None:
            self._stop_torch_profiler()
        self._flush_losses()
        self.recorder.close()
        verdicts = self.rules.verdicts()
        write_verdicts(self.output_dir, verdicts)
        self.writer.close()
        records = read_trace(self.writer.path)
        with open(os.path.join(self.output_dir, REPORT_FILE), "w", encoding="utf-8") as handle:
            handle.write(debug_report.render(records, verdicts, title, self.sections))
        if self.tensorboard is not None:
            for record in records:
                if record.get("kind") == "system":
                    self.tensorboard.put(record)
            self.tensorboard.close()
        emit_metrics(**metric_values(verdicts))
        for verdict in verdicts:
            log.info("rule %s: %s - %s", verdict.rule, verdict.status, verdict.details)
        return verdicts

    # helpers ----------------------------------------------------------------------------
    def _emit(self, record: dict) -> None:
        with self._lock:
            self.writer.write(record)
            newly = self.rules.observe(record)
        for rule in newly:
            verdict = rule.verdict()
            log.warning("rule %s found issues: %s", rule.name, verdict.details)
            emit_metrics(**metric_values([verdict]))

    def _record_eval_loss(self, epoch: int, loss: float) -> None:
        record = {"kind": "eval_loss", "step": self._eval_step, "epoch": epoch, "loss": loss}
        self._emit(record)
        if self.tensorboard is not None:
            self.tensorboard.put(record)

    def _flush_losses(self) -> None:
        if not self._pending:
            return
        values = torch.stack([loss for _, _, loss, _ in self._pending]).tolist()
        for value, (step, epoch, _, lr) in zip(values, self._pending, strict=True):
            record = {"kind": "loss", "step": step, "epoch": epoch, "loss": value, "lr": lr}
            self._emit(record)
            if self.tensorboard is not None:
                self.tensorboard.put(record)
        self._pending = []

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer else float("nan")

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # phase times need the GPU work finished
        return time.perf_counter()

    def _start_torch_profiler(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.start()

    def _stop_torch_profiler(self) -> None:
        profiler, self._profiler = self._profiler, None
        if profiler is None:
            return
        profiler.stop()
        folder = os.path.join(self.output_dir, "profiler")
        os.makedirs(folder, exist_ok=True)
        profiler.export_chrome_trace(os.path.join(folder, "trace.json"))
        averages = sorted(
            profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True
        )[:TOP_OPERATORS]
        start, end = self.options.trace_steps or (0, 0)  # set: the profiler ran for them
        self._emit(
            {
                "kind": "operators",
                "steps": f"{start}-{end}",
                "top": [
                    {
                        "name": e.key,
                        "calls": e.count,
                        "self_ms": e.self_cpu_time_total / 1000,
                        "total_ms": e.cpu_time_total / 1000,
                    }
                    for e in averages
                ],
            }
        )


class _TensorBoard:
    """TensorBoard event files written on a thread of their own.

    Building the summaries costs tens of milliseconds per saved step; on this thread it
    overlaps with the next steps' tensor work instead of adding to it.
    """

    def __init__(self, writer):
        self.writer = writer
        self.system_index = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tensorboard", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> None:
        self._queue.put(record)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
        self.writer.close()

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            try:
                self._write(record)
            except Exception as exc:  # event files are a convenience; training goes on
                log.warning("TensorBoard writing stopped: %s", exc)
                return

    def _write(self, record: dict) -> None:
        add, kind = self.writer.add_scalar, record["kind"]
        if kind == "loss":
            add("train/loss", record["loss"], record["step"])
            add("train/lr", record["lr"], record["step"])
        elif kind == "eval_loss":
            add("eval/loss", record["loss"], record["step"])
        elif kind == "eval":
            for key in ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy", "lr"):
                add(f"epoch/{key}", record[key], record["epoch"])
        elif kind == "tensors":
            step = record["step"]
            for name, (mean_abs, norm, *_rest) in record["grads"].items():
                add(f"gradients/{name}/mean_abs", mean_abs, step)
                add(f"gradients/{name}/norm", norm, step)
            for name, (_mean, std, norm, *_rest) in record["weights"].items():
                add(f"weights/{name}/norm", norm, step)
                add(f"weights/{name}/std", std, step)
            for name, (_mean, variance) in record["relu"].items():
                add(f"relu_input/{name}/variance", variance, step)
        elif kind == "system":
            for key in ("cpu_total", "memory_percent", "iowait"):
                add(f"system/{key}", float(record[key]), self.system_index)
            self.system_index += 1


def _tensorboard_writer(folder: str | None) -> _TensorBoard | None:
    """TensorBoard event files when ``tensorboard`` is installed (it is in requirements)."""
    if not folder:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.warning("TensorBoard event files are off: %s", exc)
        return None
    os.makedirs(folder, exist_ok=True)
    return _TensorBoard(SummaryWriter(log_dir=folder))
