"""System utilisation sampled every 500 ms on a background thread, for the profiler rules.

CPU per core and in total, IO wait, memory, this process's resident memory, disk and
network throughput (psutil), and per-GPU utilisation and memory when there are GPUs
(NVML through torch, else ``nvidia-smi``, else memory alone from the CUDA runtime).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

import psutil
import torch

log = logging.getLogger("sagedrop.profiler")
MB = 1024 * 1024


class SystemMonitor:
    def __init__(self, emit: Callable[[dict], None], interval_s: float = 0.5, started_at=None):
        self.emit = emit
        self.interval_s = interval_s
        self.started_at = started_at if started_at is not None else time.perf_counter()
        self._stop = threading.Event()
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="system-monitor", daemon=True)
        self._process = psutil.Process()
        self._gpu = _GpuReader() if torch.cuda.is_available() else None

    def start(self) -> None:
        psutil.cpu_percent(percpu=True)  # the first call only sets the reference point
        psutil.cpu_times_percent()
        self._last = (time.perf_counter(), _io_counters())
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, and take one last sample of the time since the previous one:
        a run shorter than one interval still has a sample, whatever the machine's speed."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._thread.ident is not None and not self._failed:
            self._emit_sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self._emit_sample():
                return

    def _emit_sample(self) -> bool:
        try:
            self.emit(self.sample())
        except Exception as exc:  # sampling must never break training
            log.warning("system sampling stopped: %s", exc)
            self._failed = True
            return False
        return True

    def sample(self) -> dict:
        now, counters = time.perf_counter(), _io_counters()
        elapsed = max(now - self._last[0], 1e-6)
        rates = {
            key: max(0.0, (counters[key] - self._last[1][key]) / MB / elapsed) for key in counters
        }
        self._last = (now, counters)
        per_core = psutil.cpu_percent(percpu=True)
        times = psutil.cpu_times_percent()
        memory = psutil.virtual_memory()
        record = {
            "kind": "system",
            "t": round(now - self.started_at, 3),
            "cpu": per_core,
            "cpu_total": round(sum(per_core) / max(1, len(per_core)), 2),
            "iowait": getattr(times, "iowait", 0.0),
            "memory_percent": memory.percent,
            "rss_mb": round(self._process.memory_info().rss / MB, 1),
            **{key: round(value, 3) for key, value in rates.items()},
        }
        if self._gpu is not None:
            record.update(self._gpu.read())
        return record


def _io_counters() -> dict[str, float]:
    disk = psutil.disk_io_counters()
    net = psutil.net_io_counters()
    return {
        "disk_read_mb_s": float(disk.read_bytes if disk else 0),
        "disk_write_mb_s": float(disk.write_bytes if disk else 0),
        "net_recv_mb_s": float(net.bytes_recv if net else 0),
        "net_sent_mb_s": float(net.bytes_sent if net else 0),
    }


class _GpuReader:
    """Utilisation needs NVML; torch uses it when ``pynvml`` is installed."""

    def __init__(self):
        self.count = torch.cuda.device_count()
        self.smi = shutil.which("nvidia-smi")
        self.source = "nvml"
        try:
            torch.cuda.utilization(0)
        except Exception:
            self.source = "nvidia-smi" if self.smi else "memory-only"

    def read(self) -> dict:
        if self.source == "nvidia-smi":
            return self._from_smi()
        memory = []
        for index in range(self.count):
            free, total = torch.cuda.mem_get_info(index)
            memory.append(round(100 * (total - free) / total, 2))
        if self.source == "memory-only":
            return {"gpu_memory": memory}
        utilisation = [float(torch.cuda.utilization(i)) for i in range(self.count)]
        return {"gpu": utilisation, "gpu_memory": memory}

    def _from_smi(self) -> dict:
        out = subprocess.run(
            [
                self.smi or "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used,memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        utilisation, memory = [], []
        for line in out.strip().splitlines():
            used_pct, used, total = (float(x) for x in line.split(","))
            utilisation.append(used_pct)
            memory.append(round(100 * used / total, 2) if total else 0.0)
        return {"gpu": utilisation, "gpu_memory": memory}
