"""The optimised inference graph: ``model.onnx`` under ONNX Runtime, the same for the
export's parity check (in training) and for serving (in the endpoint).

Why ONNX Runtime: it ran a ResNet18 batch-1 forward fastest of the three candidates on
a 2-core host (eager PyTorch, a frozen TorchScript graph, ONNX Runtime:
``bench/inference_latency.py`` measures all three in one run, the README quotes them),
and it needs no torch at all.

The runtime is optional, and nothing installs it at model load: a pip run inside
``model_fn`` would hang each TorchServe worker on a slow index past its 120 s load
timeout, and race the other workers into one site-packages. The artifact instead
carries the runtime's wheels (``code/wheels``, from the jobs' ``wheels`` channel) and a
``code/requirements.txt`` that installs them with no index; SageMaker's inference
toolkit runs that once per container, before TorchServe starts a worker. Where the
runtime still does not import (an artifact made without the wheels), the eager model
serves the same JSON and the log says why, once per worker.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any

import numpy as np

from sagedrop_contract import artifact_layout

GRAPH_FILE = artifact_layout.GRAPH
log = logging.getLogger("sagedrop.serving")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (parity is judged on these numbers)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def import_runtime() -> tuple[Any | None, str]:
    """``onnxruntime`` and "" when it imports; else None and why (never installs it)."""
    try:
        return importlib.import_module("onnxruntime"), ""
    except ImportError as exc:
        return None, f"onnxruntime is not installed ({exc}): the artifact carries no wheels for it"


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
