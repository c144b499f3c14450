"""SageMaker's profiler rules, with its documented default thresholds, on our trace.

System rules read the ``system`` samples (every 500 ms); ``patience`` is, as in
SageMaker, the number of samples skipped before a rule starts judging. SageMaker's
default (1,000 samples, about 8 minutes) would leave every shorter job unjudged, so the
default scales to the job: the first tenth of its samples, at most 1,000. A patience the
user sets is used as given. A rule with fewer than ``MIN_SAMPLES`` samples (or steps)
left to judge reports "no issues" as *not judged*, which the metric line (code 3), the
gate's notice and the report all show. Rules that compare CPU with GPU activity have
nothing to judge on a host without a GPU, and say so the same way. Step rules read the
``step`` timeline.
"""

from __future__ import annotations

import math
import statistics
from abc import ABC, abstractmethod

from sagedrop_debugging.rule_base import Rule, finite

MIN_SAMPLES = 10  # fewer judged samples (5 s at 500 ms) or steps is too little evidence
DEFAULT_PATIENCE_SHARE = 0.1  # a default patience skips at most this share of a job


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class _SystemRule(Rule, ABC):
    kind = "profiler"
    # The sample field this rule cannot judge without ("gpu": utilisation, "gpu_memory").
    needs: str | None = None

    def __init__(self, **params):
        super().__init__(**params)
        self.samples: list[dict] = []

    def on_system(self, record: dict) -> None:
        self.samples.append(record)

    @property
    def patience(self) -> int:
        """Samples skipped at the start: as set, or by default scaled to the job."""
        configured = int(self.params.get("patience", 0))
        if "patience" in self.explicit:
            return configured
        return min(configured, int(len(self.samples) * DEFAULT_PATIENCE_SHARE))

    def judged(self) -> list[dict]:
        return self.samples[self.patience :]

    def had_data(self) -> bool:
        samples = self.judged()
        return len(samples) >= MIN_SAMPLES and not (self.needs and not samples[0].get(self.needs))

    def verdict(self):
        if self.failure is None and self.issue is None:
            self.evaluate()
        return super().verdict()

    def evaluate(self) -> None:
        if not self.had_data():
            return
        samples = self.judged()
        try:
            self.judge(samples)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"

    @abstractmethod
    def judge(self, samples: list[dict]) -> None:
        """Call ``self.found`` when the samples beyond the patience show the problem."""

    def quiet_details(self) -> str:
        skipped = self.patience
        left = len(self.samples) - skipped
        if not self.samples:
            return "not judged: no system samples were recorded"
        if self.needs and not self.samples[-1].get(self.needs):
            what = "utilisation" if self.needs == "gpu" else "memory"
            return f"not judged: no GPU {what} readings in this job"
        if left < MIN_SAMPLES:
            return (
                f"not judged: {len(self.samples)} samples, {max(0, left)} after a patience of "
                f"{skipped}; at least {MIN_SAMPLES} are needed (a longer job, or a lower "
                "patience, gives this rule data)"
            )
        return f"{left} samples judged (patience {skipped}); within the thresholds"


def _gpu_mean(sample: dict, field: str = "gpu") -> float:
    values = sample.get(field) or []
    return statistics.fmean(finite(v) for v in values) if values else math.nan


class CPUBottleneck(_SystemRule):
    """Share of samples with CPU above ``cpu_threshold`` % while the GPU is below
    ``gpu_threshold`` % exceeds ``threshold`` %."""

    name = "CPUBottleneck"
    needs = "gpu"
    defaults = {"threshold": 50.0, "gpu_threshold": 10.0, "cpu_threshold": 90.0, "patience": 1000}
    advice = (
        "The CPU is saturated while the GPU waits: raise --num-workers, move augmentation "
        "to the GPU, or cache decoded images (a frozen backbone caches its features)."
    )

    def judge(self, samples):
        busy = [
            s
            for s in samples
            if finite(s["cpu_total"]) > self.params["cpu_threshold"]
            and _gpu_mean(s) < self.params["gpu_threshold"]
        ]
        share = 100 * len(busy) / len(samples)
        if share > self.params["threshold"]:
            self.found(
                None,
                "cpu",
                f"CPU bottleneck in {share:.0f}% of {len(samples)} samples "
                f"(threshold {self.params['threshold']:g}%)",
            )


class IOBottleneck(_SystemRule):
    """Share of samples with IO wait above ``io_threshold`` % (and the GPU, when there is
    one, below ``gpu_threshold`` %) exceeds ``threshold`` %."""

    name = "IOBottleneck"
    defaults = {"threshold": 50.0, "io_threshold": 50.0, "gpu_threshold": 10.0, "patience": 1000}
    advice = (
        "Training waits for storage: use faster storage (FSx, instance store), fewer larger "
        "files, or copy the dataset to local disk first."
    )

    def judge(self, samples):
        waiting = [
            s
            for s in samples
            if finite(s.get("iowait", 0.0)) > self.params["io_threshold"]
            and (not s.get("gpu") or _gpu_mean(s) < self.params["gpu_threshold"])
        ]
        share = 100 * len(waiting) / len(samples)
        if share > self.params["threshold"]:
            self.found(
                None,
                "iowait",
                f"IO wait above {self.params['io_threshold']:g}% in "
                f"{share:.0f}% of {len(samples)} samples",
            )


class LowGPUUtilization(_SystemRule):
    """In any window of ``window`` samples: GPU p95 below ``threshold_p95`` % (idle), or
    p95 above it with p5 below ``threshold_p5`` % (fluctuating)."""

    name = "LowGPUUtilization"
    needs = "gpu"
    defaults = {"threshold_p95": 70.0, "threshold_p5": 10.0, "window": 500, "patience": 1000}
    advice = (
        "The GPU is under-used: raise the batch size, raise --num-workers, or use a smaller "
        "(cheaper) instance type."
    )

    def judge(self, samples):
        size = max(1, self.params["window"])
        for begin in range(0, len(samples), size):
            utilisation = [_gpu_mean(s) for s in samples[begin : begin + size]]
            p95, p5 = percentile(utilisation, 95), percentile(utilisation, 5)
            if p95 < self.params["threshold_p95"]:
                self.found(
                    None,
                    "gpu",
                    f"GPU utilisation p95 {p95:.0f}% < "
                    f"{self.params['threshold_p95']:g}% (samples {begin}-)",
                )
                return
            if p5 < self.params["threshold_p5"]:
                self.found(
                    None,
                    "gpu",
                    f"GPU utilisation fluctuates: p95 {p95:.0f}%, p5 "
                    f"{p5:.0f}% < {self.params['threshold_p5']:g}%",
                )
                return


class GPUMemoryIncrease(_SystemRule):
    """The moving average (over ``window`` samples) of GPU memory use rises by more than
    ``increase`` percentage points above its first value."""

    name = "GPUMemoryIncrease"
    needs = "gpu_memory"
    defaults = {"increase": 5.0, "patience": 1000, "window": 10}
    advice = (
        "GPU memory keeps growing: look for tensors kept across steps (losses appended "
        "without .item()/.detach(), caches), or the job may run out of memory."
    )

    def judge(self, samples):
        memory = [_gpu_mean(s, "gpu_memory") for s in samples]
        size = max(1, self.params["window"])
        if len(memory) < size:
            return
        averages = [statistics.fmean(memory[i : i + size]) for i in range(len(memory) - size + 1)]
        rise = max(averages) - averages[0]
        if rise > self.params["increase"]:
            self.found(
                None,
                "gpu_memory",
                f"GPU memory use rose by {rise:.1f} points "
                f"(from {averages[0]:.1f}% to {max(averages):.1f}%)",
            )


class BatchSize(_SystemRule):
    """p95 of CPU, GPU and GPU memory utilisation all below their thresholds: the batch
    is too small to keep the machine busy."""

    name = "BatchSize"
    needs = "gpu"
    defaults = {
        "cpu_threshold_p95": 70.0,
        "gpu_threshold_p95": 70.0,
        "gpu_memory_threshold_p95": 70.0,
        "patience": 1000,
        "window": 500,
    }
    advice = (
        "The machine is mostly idle: raise the batch size (and the learning rate with it), "
        "or choose a smaller instance type."
    )

    def judge(self, samples):
        window = samples[-max(1, self.params["window"]) :]
        cpu = percentile([finite(s["cpu_total"]) for s in window], 95)
        gpu = percentile([_gpu_mean(s) for s in window], 95)
        memory = percentile([_gpu_mean(s, "gpu_memory") for s in window], 95)
        if (
            cpu < self.params["cpu_threshold_p95"]
            and gpu < self.params["gpu_threshold_p95"]
            and memory < self.params["gpu_memory_threshold_p95"]
        ):
            self.found(
                None,
                "utilisation",
                f"p95 utilisation: CPU {cpu:.0f}%, GPU {gpu:.0f}%, "
                f"GPU memory {memory:.0f}%, all below 70%",
            )


class Dataloader(Rule):
    """Share of training step time spent waiting for the next batch above
    ``wait_threshold`` %. The advice compares the number of data-loader workers with the
    CPU count, as SageMaker's rule does: below ``min_threshold`` % or above
    ``max_threshold`` % of the cores is a likely cause."""

    name = "Dataloader"
    kind = "profiler"
    defaults = {"min_threshold": 70.0, "max_threshold": 200.0, "wait_threshold": 25.0}

    def __init__(self, **params):
        super().__init__(**params)
        self.data = 0.0
        self.total = 0.0
        self.steps = 0
        self.workers: int | None = None
        self.cpus: int | None = None

    def on_meta(self, record: dict) -> None:
        self.workers, self.cpus = record.get("num_workers"), record.get("cpu_count")

    def on_step(self, record: dict) -> None:
        self.data += finite(record["data"])
        self.total += finite(record["total"])
        self.steps += 1

    def verdict(self):
        if self.failure is None and self.issue is None and self.had_data():
            share = 100 * self.data / self.total
            if share > self.params["wait_threshold"]:
                self.advice = self._advice()
                self.found(
                    None,
                    "data_wait",
                    f"{share:.0f}% of step time ({self.data:.1f}s of "
                    f"{self.total:.1f}s over {self.steps} steps) was spent waiting for "
                    "data",
                )
        return super().verdict()

    def _advice(self) -> str:
        if self.workers is None or not self.cpus:
            return "Raise --num-workers, or cache decoded images."
        share = 100 * self.workers / self.cpus
        if share < self.params["min_threshold"]:
            return (
                f"{self.workers} data-loader workers for {self.cpus} CPUs: raise --num-workers "
                f"towards {self.cpus}."
            )
        if share > self.params["max_threshold"]:
            return (
                f"{self.workers} data-loader workers for {self.cpus} CPUs is too many: lower "
                f"--num-workers to about {self.cpus}."
            )
        return (
            "The workers are as many as the CPUs, so decoding itself is slow: use a smaller "
            "--image-size, pre-resize the dataset, or use an instance with more CPUs."
        )

    def had_data(self) -> bool:
        return self.steps >= MIN_SAMPLES and self.total > 0

    def quiet_details(self) -> str:
        if not self.had_data():
            return f"not judged: {self.steps} training steps timed; at least {MIN_SAMPLES} needed"
        return (
            f"{100 * self.data / self.total:.0f}% of step time waiting for data over "
            f"{self.steps} steps (threshold {self.params['wait_threshold']:g}%)"
        )


class StepOutlier(Rule):
    """More than ``n_outliers`` training steps longer than mean + ``stddev`` standard
    deviations. Each epoch's first step (data-loader start-up) is left out."""

    name = "StepOutlier"
    kind = "profiler"
    defaults = {"stddev": 3.0, "n_outliers": 10}
    advice = (
        "Some steps take far longer than the rest: look for periodic work in the loop "
        "(checkpointing, logging, garbage collection) or a slow data source."
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.durations: list[tuple[int, float]] = []
        self.epoch = None

    def on_step(self, record: dict) -> None:
        first_of_epoch = record.get("epoch") != self.epoch
        self.epoch = record.get("epoch")
        if not first_of_epoch:
            self.durations.append((record["step"], finite(record["total"])))

    @property
    def n_outliers(self) -> int:
        """As set, or by default 1 per 100 steps (1 to SageMaker's 10): a short job cannot
        have more than 10 steps beyond 3 standard deviations unless it has ~100 steps."""
        if "n_outliers" in self.explicit:
            return int(self.params["n_outliers"])
        return min(int(self.params["n_outliers"]), max(1, len(self.durations) // 100))

    def had_data(self) -> bool:
        return len(self.durations) >= 2 * MIN_SAMPLES

    def verdict(self):
        if self.failure is None and self.issue is None and self.had_data():
            values = [d for _, d in self.durations]
            mean, spread = statistics.fmean(values), statistics.pstdev(values)
            limit = mean + self.params["stddev"] * spread
            outliers = [(s, d) for s, d in self.durations if d > limit]
            if len(outliers) > self.n_outliers:
                step, longest = max(outliers, key=lambda o: o[1])
                self.found(
                    step,
                    "step_time",
                    f"{len(outliers)} steps took longer than "
                    f"{limit * 1000:.0f} ms (mean {mean * 1000:.0f} ms); the longest, "
                    f"step {step}, took {longest * 1000:.0f} ms",
                )
        return super().verdict()

    def quiet_details(self) -> str:
        if not self.had_data():
            return (
                f"not judged: {len(self.durations)} steps timed; at least {2 * MIN_SAMPLES} needed"
            )
        return (
            f"at most {self.n_outliers} outliers beyond {self.params['stddev']:g} "
            f"standard deviations in {len(self.durations)} steps"
        )


class MaxInitializationTime(Rule):
    """From process start to the first training step longer than ``threshold`` minutes."""

    name = "MaxInitializationTime"
    kind = "profiler"
    defaults = {"threshold": 20.0}
    advice = (
        "Start-up is slow: check dataset download and extraction (File mode copies it all "
        "first), image checks, and weights downloads."
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.seconds: float | None = None

    def on_init(self, record: dict) -> None:
        self.seconds = finite(record["seconds"])
        if self.seconds > self.params["threshold"] * 60:
            self.found(
                0,
                "initialization",
                f"the first step started {self.seconds / 60:.1f} "
                f"minutes after start, over {self.params['threshold']:g}",
            )

    def had_data(self) -> bool:
        return self.seconds is not None

    def quiet_details(self) -> str:
        if self.seconds is None:
            return "not judged: training never reached its first step"
        return f"the first step started {self.seconds:.1f}s after start"


PROFILER_RULES: tuple[type[Rule], ...] = (
    CPUBottleneck,
    IOBottleneck,
    Dataloader,
    LowGPUUtilization,
    GPUMemoryIncrease,
    BatchSize,
    StepOutlier,
    MaxInitializationTime,
)
