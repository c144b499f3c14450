"""At the end of training: the model as an ONNX graph, served only if it answers as the
eager model does on every validation image.

The export is judged on the validation split against the eager model on the CPU:
identical top-1 on every image and a largest probability difference of at most
``MAX_ABS_DPROB``. A graph that fails (or cannot be exported: the exporter missing from
the container, an operator it cannot translate) is not kept, and the artifact serves the
eager model; ``config.json`` and the training log say why, with the figures.

``--quantise int8`` (off by default) then quantises the graph (ONNX Runtime's static QDQ
quantisation: int8 weights per channel, uint8 activations calibrated on validation
images) and serves it instead only if its validation accuracy is within
``MAX_INT8_ACCURACY_DROP`` of the eager model's; its accuracy cost is recorded either way.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from sagedrop_contract import artifact_layout
from sagedrop_serving.graph_runtime import GRAPH_FILE, GraphModel, import_runtime, softmax

# train.py's --export-graph: auto exports for a model that can be deployed (not a trial).
EXPORT_MODES = ("auto", "onnx", "none")
QUANTISE_MODES = ("none", "int8")
MAX_ABS_DPROB = 1e-3
MAX_INT8_ACCURACY_DROP = 0.01
INT8_FILE = artifact_layout.INT8_GRAPH
CALIBRATION_IMAGES = 128
EAGER_SERVES = "the artifact serves the eager model"
FP32_SERVES = "the fp32 graph serves"
OPSET = 18
log = logging.getLogger("sagedrop.train")


def export_graph(model: nn.Module, example: torch.Tensor, path: str) -> None:
    """``model`` (a CPU copy in eval mode) as ONNX with a dynamic batch dimension."""
    cpu = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    example = example[:1].cpu().contiguous()
    batch = torch.export.Dim("batch", min=1, max=1024)
    for name in ("onnxscript", "onnx_ir"):  # their optimiser's pass-by-pass INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        torch.onnx.export(
            cpu,
            (example,),
            path,
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            external_data=False,
            optimize=True,
        )


def parity(model: nn.Module, graph: GraphModel, batches: Iterable) -> dict:
    """Top-1 agreement and the largest |Δprobability| of the graph against the eager
    model (fp32, CPU) over every image in ``batches``, and both accuracies where the
    batches carry labels."""
    cpu = copy.deepcopy(model).cpu().eval()
    images, agreeing, worst, labelled, eager_right, graph_right = 0, 0, 0.0, 0, 0, 0
    with torch.inference_mode():
        for inputs, labels, _errors in batches:
            if inputs is None:
                continue
            inputs = inputs.cpu().float().contiguous()
            eager = softmax(cpu(inputs).numpy())
            exported = softmax(graph.logits(inputs.numpy()))
            agreeing += int((eager.argmax(1) == exported.argmax(1)).sum())
            worst = max(worst, float(abs(eager - exported).max()))
            images += len(inputs)
            if labels is not None:
                truth = labels.cpu().numpy()
                eager_right += int((eager.argmax(1) == truth).sum())
                graph_right += int((exported.argmax(1) == truth).sum())
                labelled += len(truth)
    figures: dict = {
        "images": images,
        "top1_agreement": agreeing / images if images else None,
        "max_abs_dprob": worst if images else None,
    }
    if labelled:
        figures.update(eager_accuracy=eager_right / labelled, graph_accuracy=graph_right / labelled)
    return figures


@contextlib.contextmanager
def _private_temp() -> Iterator[None]:
    """The exporter and ONNX Runtime leave files in the temp folder (an inductor cache, a
    session id file): give them one of their own, removed afterwards, so a job leaves
    its host's temp folder as it found it."""
    saved = {key: os.environ.get(key) for key in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR")}
    saved_tempdir = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="sagedrop-export-") as private:
        os.environ["TMPDIR"] = private
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(private, "inductor")
        tempfile.tempdir = private
        try:
            yield
        finally:
            tempfile.tempdir = saved_tempdir
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def export_and_verify(
    model: nn.Module,
    model_dir: str,
    example: torch.Tensor,
    batches: Iterable,
    quantise: str = "none",
) -> dict:
    """Write ``model.onnx`` next to ``model.pt`` if it passes parity; the verdict for
    ``config.json`` either way (``served``, ``reason`` and the figures). ``quantise``
    "int8": then try the int8 graph too (``quantise_and_verify``)."""
    with _private_temp():
        verdict = _export_and_verify(model, model_dir, example, batches)
        if quantise == "int8" and verdict["served"]:
            verdict["int8"] = quantise_and_verify(model, model_dir, batches)
            if verdict["int8"]["served"]:
                os.remove(os.path.join(model_dir, GRAPH_FILE))  # one graph: the one served
                verdict.update(file=INT8_FILE, bytes=verdict["int8"]["bytes"])
        return verdict


def quantise_and_verify(model: nn.Module, model_dir: str, batches: Iterable) -> dict:
    """``model.int8.onnx`` from ``model.onnx``: served only if its validation accuracy is
    within ``MAX_INT8_ACCURACY_DROP`` of the eager model's (its cost is recorded)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = os.path.join(model_dir, GRAPH_FILE)
    prepared = os.path.join(tempfile.gettempdir(), "prepared.onnx")
    target = os.path.join(model_dir, INT8_FILE)
    runtime, _ = import_runtime()
    calibration: list = []
    for inputs, _labels, _errors in batches:
        if inputs is not None and sum(len(c) for c in calibration) < CALIBRATION_IMAGES:
            calibration.append(inputs.cpu().float().contiguous().numpy())

    class _Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {"images": batch}

    started = time.perf_counter()
    verdict: dict = {"format": "onnx-int8", "file": INT8_FILE, "served": False}
    verdict["calibration_images"] = sum(len(c) for c in calibration)
    try:
        quant_pre_process(source, prepared)
        quantize_static(
            prepared,
            target,
            _Calibration(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    except Exception as exc:  # the fp32 graph still serves
        reason = f"quantisation failed: {type(exc).__name__}: {exc}"[:500]
        return _refused(verdict, target, reason, FP32_SERVES)
    verdict["quantise_seconds"] = round(time.perf_counter() - started, 2)
    verdict.update(parity(model, GraphModel(runtime, target), batches))
    drop = (verdict.get("eager_accuracy") or 0.0) - (verdict.get("graph_accuracy") or 0.0)
    verdict["accuracy_drop"] = drop
    if "eager_accuracy" not in verdict or drop > MAX_INT8_ACCURACY_DROP:
        return _refused(
            verdict,
            target,
            f"int8 costs {drop:.4f} validation accuracy (allowed {MAX_INT8_ACCURACY_DROP})",
            FP32_SERVES,
        )
    verdict.update(served=True, reason="within the accuracy allowance")
    verdict["bytes"] = os.path.getsize(target)
    log.info(
        "int8 graph served: validation accuracy %.4f (eager %.4f), top-1 agreement %.4f",
        verdict["graph_accuracy"],
        verdict["eager_accuracy"],
        verdict["top1_agreement"],
    )
    return verdict


def _export_and_verify(
    model: nn.Module, model_dir: str, example: torch.Tensor, batches: Iterable
) -> dict:
    path = os.path.join(model_dir, GRAPH_FILE)
    verdict: dict = {"format": "onnx", "file": GRAPH_FILE, "served": False, "opset": OPSET}
    verdict["max_abs_dprob_allowed"] = MAX_ABS_DPROB
    runtime, missing = import_runtime()
    if runtime is None:
        return _refused(verdict, path, f"no runtime to check the graph with: {missing}")
    started = time.perf_counter()
    try:
        export_graph(model, example, path)
    except Exception as exc:  # any exporter failure leaves eager serving, said why
        return _refused(verdict, path, f"export failed: {type(exc).__name__}: {exc}"[:500])
    verdict["export_seconds"] = round(time.perf_counter() - started, 2)
    verdict["onnxruntime"] = runtime.__version__
    started = time.perf_counter()
    figures = parity(model, GraphModel(runtime, path), batches)
    verdict["check_seconds"] = round(time.perf_counter() - started, 2)
    verdict.update(figures)
    if not figures["images"]:
        return _refused(verdict, path, "no readable validation image to check the graph on")
    if figures["top1_agreement"] < 1.0 or figures["max_abs_dprob"] > MAX_ABS_DPROB:
        return _refused(
            verdict,
            path,
            f"parity failed on {figures['images']} validation images: top-1 agreement "
            f"{figures['top1_agreement']:.4f} (needs 1.0), max |Δprobability| "
            f"{figures['max_abs_dprob']:.2e} (allowed {MAX_ABS_DPROB:.0e})",
        )
    verdict.update(served=True, reason="passed parity", bytes=os.path.getsize(path))
    log.info(
        "optimised graph %s: top-1 identical on %d validation images, max |Δp| %.2e; "
        "exported in %.1fs, checked in %.1fs",
        GRAPH_FILE,
        figures["images"],
        figures["max_abs_dprob"],
        verdict["export_seconds"],
        verdict["check_seconds"],
    )
    return verdict


def _refused(verdict: dict, path: str, reason: str, instead: str = EAGER_SERVES) -> dict:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    verdict.update(served=False, reason=reason)
    log.warning("%s not served, %s: %s", verdict["file"], instead, reason)
    return verdict
