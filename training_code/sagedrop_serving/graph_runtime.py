"""The optimised inference graph: ``model.onnx`` under ONNX Runtime, the same for the
export's parity check (in training) and for serving (in the endpoint).

Why ONNX Runtime: it ran a ResNet18 batch-1 forward fastest of the three candidates on
a 2-core host (eager PyTorch, a frozen TorchScript graph, ONNX Runtime:
``bench/inference_latency.py`` measures all three in one run, the README quotes them),
and it needs no torch at all.

The runtime is optional. An endpoint whose container lacks it installs the pinned wheels
(hashes checked, no source distribution, no dependency beyond the list) from
``code/runtime-requirements.txt`` once, within a bounded time, and otherwise serves
the eager model: a container that cannot reach a package index (a VPC without egress)
still starts and answers the same JSON. The file is deliberately not ``requirements.txt``:
SageMaker's inference toolkit installs that one at container start and exits the
container when pip fails, so a model carrying it could never serve without egress.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import threading
from typing import Any

import numpy as np

GRAPH_FILE = "model.onnx"
RUNTIME_REQUIREMENTS = "runtime-requirements.txt"
INSTALL_SECONDS = 120
# Wheels only (a source distribution's build hooks would run code from the index at model
# load), each pinned with its hash, and no dependency resolved beyond the pinned list.
INSTALL_COMMAND = ("-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   "--only-binary", ":all:", "--require-hashes", "--no-deps",
                   "--timeout", "10", "--retries", "0")  # fmt: skip
log = logging.getLogger("sagedrop.serving")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (parity is judged on these numbers)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def import_runtime(code_dir: str | None = None) -> tuple[Any | None, str]:
    """``onnxruntime`` and "" when it imports; else None and why.

    With ``code_dir`` holding ``runtime-requirements.txt`` and the runtime missing, pip
    installs it once (``SAGEDROP_RUNTIME_INSTALL=never`` forbids that), with short network
    timeouts and at most ``INSTALL_SECONDS``, so a host without an index fails fast.
    """
    try:
        return importlib.import_module("onnxruntime"), ""
    except ImportError as exc:
        missing = f"onnxruntime is not installed ({exc})"
    requirements = os.path.join(code_dir or "", RUNTIME_REQUIREMENTS)
    if not code_dir or not os.path.isfile(requirements):
        return None, missing
    if os.environ.get("SAGEDROP_RUNTIME_INSTALL", "").lower() == "never":
        return None, f"{missing}; SAGEDROP_RUNTIME_INSTALL=never forbids installing it"
    command = [sys.executable, *INSTALL_COMMAND, "-r", requirements]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_SECONDS)
    except subprocess.TimeoutExpired:
        return None, f"{missing}; installing it took over {INSTALL_SECONDS} s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1][:300]
        return None, f"{missing}; installing it failed (no package index reachable?): {last}"
    importlib.invalidate_caches()
    try:
        return importlib.import_module("onnxruntime"), ""
    except ImportError as exc:
        return None, f"{missing}; installed, but it still does not import ({exc})"


class GraphModel:
    """``model.onnx`` in an ONNX Runtime session: logits for a float32 NCHW batch."""

    def __init__(self, runtime: Any, path: str, threads: int | None = None, gpu: bool = False):
        options = runtime.SessionOptions()
        options.intra_op_num_threads = threads or int(
            os.environ.get("SAGEDROP_GRAPH_THREADS", os.cpu_count() or 1)
        )
        # One request at a time per call; inter-op parallelism only adds thread hand-offs.
        options.inter_op_num_threads = 1
        options.graph_optimization_level = runtime.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = runtime.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        self.path = os.path.basename(path)
        self.session = runtime.InferenceSession(path, options, providers=providers)
        # One forward at a time on the session's threads: concurrent requests still decode
        # and preprocess in parallel, but two forwards would split the same cores between
        # twice the threads (measured: 0.94 of eager batch-8 throughput, against 1.1 with
        # this lock, for 8 clients; bench/local_serving.py).
        self._lock = threading.Lock()
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        self.version = runtime.__version__

    def logits(self, images: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(images)}
        with self._lock:
            return self.session.run(None, feed)[0]
