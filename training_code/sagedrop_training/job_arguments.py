"""The job's arguments: SageMaker's hyperparameters as ``--name value``, the locations
from ``SM_*``, each checked, with a one-line reason naming the wrong one."""

from __future__ import annotations

import argparse
import json
import logging
import os

from hyperparameter_rules import HyperparameterError, check_job_hyperparameters
from sagedrop_debugging.debug_session import parse_trace_steps
from sagedrop_serving.image_io import AUGMENTATIONS
from sagedrop_serving.model_def import BACKBONES, FREEZE_MODES, PRETRAINED_MODES
from sagedrop_training import graph_export
from sagedrop_training.data_audit import LEAKAGE_POLICIES

log = logging.getLogger("sagedrop.train")
DESCRIPTION = "Transfer-learn a ResNet on a dogImages-style dataset (SageMaker script mode)."


def boolean(text: str) -> bool:
    value = str(text).strip().strip("\"'").lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def choice(options):
    """A choices= that also accepts the JSON-quoted strings SageMaker tools sometimes pass."""

    def parse(text: str) -> str:
        value = str(text).strip().strip("\"'").lower()
        if value not in options:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(options)}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse prints its usage text and exits 2 on a bad value; a job's failure reason
    should be the one line that says which hyperparameter was wrong."""

    def error(self, message: str):
        raise HyperparameterError(f"invalid hyperparameter: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=DESCRIPTION)
    hp = p.add_argument_group("hyperparameters (SageMaker passes these as --name value)")
    hp.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    hp.add_argument("--momentum", type=float, default=0.9)
    hp.add_argument("--batch-size", type=int, default=64, help="global batch, split over processes")
    hp.add_argument("--epochs", type=int, default=5)
    hp.add_argument("--backbone", type=choice(tuple(BACKBONES)), default="resnet18")
    hp.add_argument(
        "--pretrained",
        type=choice(PRETRAINED_MODES),
        default="auto",
        help="auto: ImageNet weights when a file is there; true: required; false: never "
        "(nothing is ever downloaded)",
    )
    hp.add_argument(
        "--weights-path",
        default=None,
        help="local ImageNet weights (default: the weights channel, then the torch hub cache)",
    )
    hp.add_argument(
        "--freeze",
        type=choice(FREEZE_MODES),
        default="auto",
        help="auto: backbone with ImageNet weights, none without",
    )
    hp.add_argument("--weight-decay", type=float, default=1e-4)
    hp.add_argument("--image-size", type=int, default=224)
    hp.add_argument("--augment", type=choice(AUGMENTATIONS), default="flip-crop")
    hp.add_argument("--lr-schedule", type=choice(("cosine", "constant")), default="cosine")
    hp.add_argument("--seed", type=int, default=0)
    hp.add_argument("--num-workers", type=int, default=-1, help="-1: one per spare CPU, up to 8")
    hp.add_argument(
        "--cache-features",
        type=choice(("auto", "true", "false")),
        default="auto",
        help="auto: with a frozen backbone, train the head on features computed once",
    )
    hp.add_argument("--valid-fraction", type=float, default=0.1)
    hp.add_argument("--test-fraction", type=float, default=0.1)
    hp.add_argument("--top-k", type=int, default=5, help="labels the served model returns")
    hp.add_argument(
        "--leakage",
        type=choice(LEAKAGE_POLICIES),
        default="leave-out",
        help="valid/test images that duplicate a training image: left out of evaluation, "
        "or kept (the data audit counts them either way)",
    )
    hp.add_argument(
        "--export-graph",
        type=choice(graph_export.EXPORT_MODES),
        default="auto",
        help="an ONNX graph beside model.pt, served if it passes parity; auto: for a model "
        "that can be deployed (the debug job, a run by hand), not for tuning trials",
    )
    hp.add_argument(
        "--quantise",
        type=choice(graph_export.QUANTISE_MODES),
        default="none",
        help="int8: serve an int8 graph if it costs at most 0.01 validation accuracy",
    )
    hp.add_argument(
        "--debug",
        type=boolean,
        default=False,
        help="record tensors and profile the run (the debug/profile job)",
    )
    dbg = p.add_argument_group("debug job (with --debug true)")
    dbg.add_argument(
        "--rules",
        default="",
        help='JSON: rule parameters by rule name, e.g. {"Overfit": {"patience": 3}, '
        '"StepOutlier": false, "VanishingGradient": {"stop": true}}',
    )
    dbg.add_argument("--debug-save-interval", type=int, default=50, help="steps between saves")
    dbg.add_argument("--profiler-interval-ms", type=int, default=500)
    dbg.add_argument(
        "--profiler-trace-steps", default="", help="torch.profiler trace of these steps, e.g. 5-8"
    )
    dbg.add_argument(
        "--tensorboard-dir",
        default=None,
        help="default: SM_OUTPUT_DIR/tensorboard (what TensorBoardOutputConfig uploads)",
    )
    io = p.add_argument_group("locations (SageMaker sets these through SM_* variables)")
    io.add_argument("--data", default=None, help="zip or folder; default: SM_CHANNEL_TRAINING")
    io.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    io.add_argument("--output-data-dir", default=os.environ.get("SM_OUTPUT_DATA_DIR", "output"))
    io.add_argument("--work-dir", default=None, help="where a zip is extracted (default: temp)")
    io.add_argument("--device", type=choice(("auto", "cpu", "cuda")), default="auto")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Arguments, checked; raises ``HyperparameterError`` naming the one that is wrong.

    In a SageMaker job (``SM_HPS`` set by the toolkit) every hyperparameter must also be
    on the shared allow-list with a bounded value: a request that slipped a path or a
    framework key past the upload checks still cannot steer this job.
    """
    received = {}
    if "SM_HPS" in os.environ:
        try:
            received = json.loads(os.environ["SM_HPS"])
        except ValueError:
            raise HyperparameterError("SM_HPS is not a JSON object") from None
        received = received if isinstance(received, dict) else {}
        check_job_hyperparameters(received)
    args, unknown = build_parser().parse_known_args(argv)
    if isinstance(received.get("rules"), dict):
        # A request that passed rules as a JSON object (not as JSON text) reaches the
        # command line as the toolkit's "Overfit={...},StepOutlier=False"; SM_HPS still
        # holds the object itself.
        args.rules = json.dumps(received["rules"])
    if unknown:
        log.warning("ignoring arguments this script does not know: %s", " ".join(unknown))
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.image_size < 16:
        raise HyperparameterError("epochs and batch-size must be >= 1, lr > 0, image-size >= 16")
    if args.debug_save_interval < 1 or args.profiler_interval_ms < 10:
        raise HyperparameterError("debug-save-interval must be >= 1 and profiler-interval-ms >= 10")
    try:
        parse_trace_steps(args.profiler_trace_steps)
    except ValueError as exc:
        raise HyperparameterError(f"profiler-trace-steps: {exc}") from None
    return args
