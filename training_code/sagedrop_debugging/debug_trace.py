"""The debug job's record: one JSON object per line in ``SM_OUTPUT_DATA_DIR/debug_trace.jsonl``.

Everything the rules, the report and ``sagedrop rules evaluate`` need is in this one file,
in the order it happened, so an offline evaluation replays exactly what the in-training
evaluation saw. Record kinds:

- ``meta``: the run's configuration (layers, save interval, rule parameters, CPU count).
- ``loss``: one training step's loss and learning rate (every step).
- ``tensors``: per-layer gradient, weight and ReLU-input statistics at a saved step.
- ``eval``: one validation pass (mean loss, accuracy) and the mean training loss since the
  previous pass.
- ``step``: one step's timeline (data wait, forward, backward, optimizer, and the
  recorder's own time at saved steps), seconds.
- ``eval_loss``: one validation batch's mean loss.
- ``operators``: the top operators of a ``torch.profiler`` trace, when one was asked for.
- ``system``: one sample of CPU, memory, IO and GPU utilisation.
- ``init``: seconds from process start to the first training step.

Only the standard library is used, so the local cloud and tests can read traces without
the training dependencies.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
import threading
from pathlib import Path

TRACE_FILE = "debug_trace.jsonl"


class TraceWriter:
    """Appends records from the training loop and the system sampler thread alike."""

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self._handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(_finite_json(record), separators=(",", ":"))
        with self._lock:
            if not self._handle.closed:
                self._handle.write(line + "\n")

    def flush(self) -> None:
        with self._lock:
            if not self._handle.closed:
                self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.close()


def read_trace(source: str | os.PathLike) -> list[dict]:
    """Records from a trace file, a folder holding one, or a job's ``output.tar.gz``."""
    path = Path(source)
    if path.is_dir():
        candidates = [path / TRACE_FILE, path / "output" / "data" / TRACE_FILE]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"no {TRACE_FILE} in {path}")
        return _parse(found.read_text(encoding="utf-8"), str(found))
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path, mode="r:gz") as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.lstrip("./") == TRACE_FILE:
                    handle = archive.extractfile(member)
                    if handle is None:
                        continue
                    text = io.TextIOWrapper(handle, encoding="utf-8").read()
                    return _parse(text, f"{path}:{TRACE_FILE}")
        raise FileNotFoundError(f"no {TRACE_FILE} in {path}")
    return _parse(path.read_text(encoding="utf-8"), str(path))


def _parse(text: str, where: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(text.splitlines()):
                break  # a job killed mid-write leaves a partial last line
            raise ValueError(f"{where}: line {number} is not JSON") from None
    return records


def _finite_json(value):
    """NaN and infinity as strings, so the file stays strict JSON that any reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value
