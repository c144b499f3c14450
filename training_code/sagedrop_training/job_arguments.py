"""The job's arguments: SageMaker's hyperparameters as ``--name value``, the locations
from ``SM_*``, each checked, with a one-line reason naming the wrong one."""

from __future__ import annotations

import argparse
import json
import logging
import os

from sagedrop_contract.hyperparameter_rules import (
    SETTABLE,
    HyperparameterError,
    check_job_hyperparameters,
    check_value,
)
from sagedrop_debugging.debug_session import parse_trace_steps

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


def _choice_of(name: str):
    """The allow-list's choices for ``name``: the one list the upload, the request
    builder and this parser all read."""
    return choice(SETTABLE[name].choices)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=DESCRIPTION)
    hp = p.add_argument_group("hyperparameters (SageMaker passes these as --name value)")
    hp.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    hp.add_argument("--momentum", type=float, default=0.9)
    hp.add_argument("--batch-size", type=int, default=64, help="global batch, split over processes")
    hp.add_argument("--epochs", type=int, default=5)
    hp.add_argument("--backbone", type=_choice_of("backbone"), default="resnet18")
    hp.add_argument(
        "--pretrained",
        type=_choice_of("pretrained"),
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
        type=_choice_of("freeze"),
        default="auto",
        help="auto: backbone with ImageNet weights, none without",
    )
    hp.add_argument("--weight-decay", type=float, default=1e-4)
    hp.add_argument("--image-size", type=int, default=224)
    hp.add_argument("--augment", type=_choice_of("augment"), default="flip-crop")
    hp.add_argument("--lr-schedule", type=_choice_of("lr-schedule"), default="cosine")
    hp.add_argument("--seed", type=int, default=0)
    hp.add_argument("--num-workers", type=int, default=-1, help="-1: one per spare CPU, up to 8")
    hp.add_argument(
        "--cache-features",
        type=_choice_of("cache-features"),
        default="auto",
        help="auto: with a frozen backbone, train the head on features computed once",
    )
    hp.add_argument("--valid-fraction", type=float, default=0.1)
    hp.add_argument("--test-fraction", type=float, default=0.1)
    hp.add_argument("--top-k", type=int, default=5, help="labels the served model returns")
    hp.add_argument(
        "--leakage",
        type=_choice_of("leakage"),
        default="leave-out",
        help="valid/test images that duplicate a training image: left out of evaluation, "
        "or kept (the data audit counts them either way)",
    )
    hp.add_argument(
        "--export-graph",
        type=_choice_of("export-graph"),
        default="auto",
        help="an ONNX graph beside model.pt, served if it passes parity; auto: for a model "
        "that can be deployed (the debug job, a run by hand), not for tuning trials",
    )
    hp.add_argument(
        "--quantise",
        type=_choice_of("quantise"),
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
    if "SM_HPS" in os.environ:
        # A job a request started: every bound is the allow-list's (the only copy of the
        # numbers). A person running train.py by hand may go outside them on purpose
        # (a learning rate of 1e12 to see a rule fire); the choices hold either way.
        for name, bound in SETTABLE.items():
            value = getattr(args, name.replace("-", "_"))
            if name == "rules" and not value:
                continue  # no rule parameters: the defaults
            check_value(name, value, bound)
    try:
        parse_trace_steps(args.profiler_trace_steps)
    except ValueError as exc:
        raise HyperparameterError(f"profiler-trace-steps: {exc}") from None
    return args
