"""A model artifact served by SageMaker's own PyTorch handler service, as TorchServe calls it.

SageMaker's PyTorch inference image runs TorchServe, whose Python worker hands each
request to ``sagemaker_pytorch_serving_container.handler_service.HandlerService``: first
``initialize(context)`` with the model directory, then ``handle([request], context)`` per
request, reading the response's status and content type back from the context. The
handler service (``sagemaker_inference.transformer``) imports the artifact's
``code/inference.py``, calls ``model_fn``/``input_fn``/``predict_fn``/``output_fn`` with its
own signatures, and turns ``BaseInferenceToolkitError`` into that error's status and
anything else into 500. This module runs that very code in process.

What is imitated, because it is TorchServe's (a Java server) and not a Python library:
the context object (``TorchServeContext``), and the worker process: TorchServe gives each
model its own process, so here each artifact's ``inference`` module and helpers are
imported under isolation (``sagedrop.artifacts.artifact_code_importable``) and two
artifacts in one process never share module state.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from sagemaker_pytorch_serving_container.handler_service import HandlerService

from sagedrop.artifacts import artifact_code_importable
from sagedrop_contract import artifact_layout

log = logging.getLogger("sagedrop.local.endpoint")


class _RequestProcessor:
    """TorchServe's per-request header holder, as the toolkit reads it."""

    def __init__(self, headers: dict[str, str]):
        self._headers = headers

    def get_request_properties(self) -> dict[str, str]:
        return self._headers


class TorchServeContext:
    """The parts of TorchServe's ``Context`` the handler service uses."""

    def __init__(self, model_dir: Path, headers: dict[str, str] | None = None):
        self.system_properties = {
            "model_dir": str(model_dir),
            "gpu_id": 0 if torch.cuda.is_available() else None,
        }
        self.request_processor = [_RequestProcessor(headers or {})]
        self.status = 200
        self.phrase = ""
        self.content_type: str | None = None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status, self.phrase = int(code), phrase

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type = value


def start_handler_service(model_dir: Path, environment: dict[str, str]) -> HandlerService:
    """``HandlerService().initialize(context)`` on ``model_dir``, in the container's
    environment (``SAGEMAKER_PROGRAM`` names the entry module), with the artifact's
    modules imported in isolation (``sagedrop.artifacts``)."""
    service = HandlerService()
    code_dir = Path(model_dir) / artifact_layout.CODE
    with artifact_code_importable(code_dir):
        saved_environment = {k: os.environ.get(k) for k in (*environment, "PYTHONPATH")}
        os.environ.update(environment)
        try:
            service.initialize(TorchServeContext(Path(model_dir)))
        finally:
            for key, value in saved_environment.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return service


def invoke(
    service: HandlerService,
    model_dir: Path,
    body: bytes,
    content_type: str | None,
    accept: str | None,
) -> tuple[int, str, bytes]:
    """One request through ``handle``, as a TorchServe worker passes it (a list of one):
    the status, content type and body the container would answer with."""
    headers = {"Content-Type": content_type or ""}
    if accept:
        headers["Accept"] = accept
    context = TorchServeContext(model_dir, headers)
    [response] = service.handle([{"body": body}], context)
    data = response.encode() if isinstance(response, str) else bytes(response)
    returned = context.content_type or ("text/plain" if context.status >= 400 else "")
    if context.status >= 400:
        # The toolkit answers an error with its message and then the Python traceback;
        # the client gets the one-line reason, the traceback stays in the server's log.
        text = data.decode(errors="replace")
        log.warning("model answered %s: %s", context.status, text)
        data = (text.strip().splitlines() or [context.phrase or "error"])[0].encode()
    return context.status, returned, data
