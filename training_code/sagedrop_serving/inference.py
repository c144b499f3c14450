"""SageMaker PyTorch serving handlers: image bytes in, top-k labels as JSON out.

The model artifact carries this file in ``code/`` together with ``image_io.py`` and
``model_def.py``, so SageMaker's PyTorch inference container and sagedrop's local
endpoint load exactly the preprocessing the model was trained with (read from the
artifact's ``config.json``, not from this file's defaults).

The handlers have exactly the signatures SageMaker's inference toolkit calls
(``sagemaker_inference.transformer``): ``model_fn(model_dir)``, ``input_fn(input_data,
content_type)``, ``predict_fn(data, model)``, ``output_fn(prediction, accept)``. The toolkit
counts parameters and passes its request context in an extra one, so none may have an
optional extra parameter. A client's mistake is raised as the toolkit's own error class
(``BaseInferenceToolkitError``), which it answers with that status (415 content type,
406 Accept, 400 bad image); anything else is a 500. Where the toolkit is not installed
(a benchmark, a notebook), the same classes stand on a local base with the same fields.

``predict_fn`` also takes a batch (N images stacked).

The artifact's optimised graph (``model.onnx``, kept only if it passed parity with the
eager model at export) serves when ONNX Runtime imports: the artifact's
``code/requirements.txt`` installs it from the artifact's own wheels, with no index,
before TorchServe starts (``graph_runtime``); otherwise the eager model serves, with
the same JSON. Which one serves is logged at load; ``SAGEDROP_SERVE_GRAPH=false`` forces eager.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from graph_runtime import GRAPH_FILE, GraphModel, import_runtime, softmax
from image_io import (
    FORMATS_OF_CONTENT_TYPE,
    ImageDecodeError,
    Preprocessing,
    decode_image,
    eval_transform,
)
from model_def import build_classifier

from sagedrop_contract import artifact_layout

log = logging.getLogger("sagedrop.serving")

JSON = "application/json"
# Each type must carry the format it names (``image_io`` checks the bytes); application/x-image
# takes any format training reads.
ACCEPTED_CONTENT_TYPES = tuple(FORMATS_OF_CONTENT_TYPE)
MAX_PIXELS = int(os.environ.get("SAGEDROP_MAX_IMAGE_PIXELS", "64000000"))


try:
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:  # outside the serving container: same fields, same meaning

    class _ToolkitError(Exception):  # type: ignore[no-redef]
        def __init__(self, status_code: int, message: str, phrase: str):
            self.status_code, self.message, self.phrase = status_code, message, phrase
            super().__init__(status_code, message, phrase)


class InferenceRequestError(_ToolkitError):
    """A client's mistake: the toolkit answers it with ``status`` and the message."""

    status = 400

    def __init__(self, message: str):
        super().__init__(self.status, message, message)

    def __str__(self) -> str:
        return self.message


class UnsupportedMediaType(InferenceRequestError):
    """The request's Content-Type is not one this model reads."""

    status = 415


class NotAcceptable(InferenceRequestError):
    """The request's Accept asks for a type this model does not write."""

    status = 406


class InvalidImage(InferenceRequestError):
    """The request body is not a usable image; the message says why."""

    status = 400


@dataclass
class LoadedModel:
    network: torch.nn.Module | None  # the eager model; None when the graph serves
    labels: list[str]
    transform: Callable[[Any], torch.Tensor]  # a PIL image → its tensor
    draft_size: int
    device: torch.device
    top_k: int
    info: dict
    graph: GraphModel | None = None
    runtime: str = "torch-eager"  # or "onnxruntime": what answers predict_fn


# SageMaker calls input_fn(body, content_type) without the model, but preprocessing is
# part of the model (its config); model_fn remembers the model it loaded for input_fn.
_current: LoadedModel | None = None


def model_fn(model_dir: str) -> LoadedModel:
    """Load the artifact in ``model_dir`` (SageMaker passes /opt/ml/model)."""
    global _current
    artifact = artifact_layout.read_descriptors(model_dir)
    config, labels = artifact.config, artifact.labels
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graph, why_eager = _load_graph(model_dir, artifact.graph_verdict, device)
    network = None
    if graph is None:
        network = build_classifier(artifact.backbone, len(labels))
        weights = os.path.join(model_dir, artifact_layout.WEIGHTS)
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        network.eval().to(device, memory_format=torch.channels_last)
        log.warning("serving the eager PyTorch model on %s: %s", device, why_eager)
    else:
        log.info("serving %s under ONNX Runtime %s (%s)", graph.path, graph.version,
                 ", ".join(graph.providers))  # fmt: skip
    pre = Preprocessing.from_dict(artifact.preprocessing)
    top_k = int(os.environ.get("SAGEDROP_TOP_K") or artifact.top_k())
    info = {
        "backbone": artifact.backbone,
        "num_classes": len(labels),
        "image_size": pre.image_size,
        "test_accuracy": artifact.test_accuracy,
        "created_at": config.get("created_at"),
        "training_job": config.get("training_job"),
        # What answers: the optimised graph, or the eager model (and the log says why).
        "runtime": "onnxruntime" if graph is not None else "torch-eager",
    }
    if os.environ.get("SAGEDROP_MODEL_NAME"):
        info["name"] = os.environ["SAGEDROP_MODEL_NAME"]
    if os.environ.get("SAGEDROP_MODEL_VERSION", "").isdigit():  # its Model Registry version
        info["version"] = int(os.environ["SAGEDROP_MODEL_VERSION"])
    _current = LoadedModel(
        network=network,
        labels=labels,
        transform=eval_transform(pre),
        draft_size=artifact.draft_size(pre.resize_size),
        device=device,
        top_k=max(1, min(top_k, len(labels))),
        info=info,
        graph=graph,
        runtime="onnxruntime" if graph is not None else "torch-eager",
    )
    return _current


def _load_graph(model_dir: str, verdict: dict, device: torch.device):
    """The artifact's ONNX graph in a session, or None and why the eager model serves."""
    path = os.path.join(model_dir, os.path.basename(verdict.get("file") or GRAPH_FILE))
    if os.environ.get("SAGEDROP_SERVE_GRAPH", "").lower() == "false":
        return None, "SAGEDROP_SERVE_GRAPH=false"
    if not verdict.get("served") or not os.path.isfile(path):
        return None, f"the artifact has no served graph ({verdict.get('reason', 'none exported')})"
    runtime, missing = import_runtime()
    if runtime is None:
        return None, missing
    try:
        return GraphModel(runtime, path, gpu=device.type == "cuda"), ""
    except Exception as exc:  # a graph the runtime refuses: the eager model still serves
        return None, f"ONNX Runtime cannot load {os.path.basename(path)}: {exc}"


def input_fn(input_data: bytes, content_type: str | None):
    """Decoded and preprocessed, shape (1, 3, H, W).

    The toolkit passes no model, but the preprocessing belongs to the model (its
    config), so ``model_fn`` keeps the model it loaded for this module's ``input_fn``.
    """
    request_body = input_data
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in ACCEPTED_CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not supported; send one of "
            f"{', '.join(ACCEPTED_CONTENT_TYPES)}"
        )
    if not request_body:
        raise InvalidImage("the request body is empty")
    loaded = _current
    if loaded is None:
        raise RuntimeError("model_fn must run before input_fn")
    try:
        image = decode_image(
            bytes(request_body),
            max_pixels=MAX_PIXELS,
            draft_size=loaded.draft_size,
            content_type=kind,
        )
    except ImageDecodeError as exc:
        raise InvalidImage(f"cannot decode the image: {exc}") from exc
    return loaded.transform(image).unsqueeze(0)


def predict_fn(input_data: torch.Tensor, model: LoadedModel) -> list[dict]:
    """Top-k for each image in the batch; one dict per image."""
    if model.graph is not None:
        probabilities = softmax(model.graph.logits(input_data.numpy()))
    else:
        probabilities = _eager_probabilities(input_data, model)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, : model.top_k]
    values = np.take_along_axis(probabilities, order, axis=1)
    results = []
    for row_values, row_indices in zip(values.tolist(), order.tolist(), strict=True):
        predictions = [
            {"label": model.labels[i], "index": i, "probability": round(p, 6)}
            for p, i in zip(row_values, row_indices, strict=True)
        ]
        results.append({"predictions": predictions, "model": model.info})
    return results


def _eager_probabilities(input_data: torch.Tensor, model: LoadedModel) -> np.ndarray:
    if model.network is None:  # model_fn loads it whenever no graph serves
        raise RuntimeError("neither the graph nor the eager model is loaded")
    images = input_data.to(model.device, memory_format=torch.channels_last)
    with torch.inference_mode():
        if model.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model.network(images)
        else:
            logits = model.network(images)
    return softmax(logits.float().cpu().numpy())


def output_fn(prediction: list[dict] | dict, accept: str | None = JSON) -> tuple[str, str]:
    """JSON for one image (a batch of one) or a list for several; returns (body, type)."""
    wanted = [a.split(";")[0].strip().lower() for a in (accept or JSON).split(",")]
    if not any(a in (JSON, "application/*", "*/*", "") for a in wanted):
        raise NotAcceptable(f"accept {accept!r} is not supported; this model returns {JSON}")
    if isinstance(prediction, list) and len(prediction) == 1:
        prediction = prediction[0]
    return json.dumps(prediction), JSON
