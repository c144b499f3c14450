"""The one list of hyperparameters a dataset may set, each with the bounds its value keeps.

Whoever can write to the data bucket writes a dataset's ``sagedrop.json``, so nothing in
it may choose code (``sagemaker_program``, ``sagemaker_submit_directory``), paths
(``model-dir``, ``output-data-dir``, ``work-dir``, ``weights-path``...) or unbounded
resources (epochs, image size, workers). The same list is applied three times: to the
upload (``Settings.with_dataset_overrides``, before any job starts), to the operator's own
settings, and again in ``train.py`` to what SageMaker's toolkit hands it (defence in
depth: a request built some other way still cannot steer the job). Standard library only,
so the Lambda and the training container import the very same rules, by the same name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from sagedrop_contract.job_contract import FRAMEWORK_PREFIXES

# Keys that name places on the training host: never settable by anyone through a request.
PATH_KEYS = frozenset(
    {"data", "model-dir", "output-data-dir", "work-dir", "weights-path", "tensorboard-dir"}
)
# The pipeline decides these per job (tuning trials vs the debug job); a dataset may not.
PIPELINE_KEYS = frozenset({"debug", "device"})

# Upper bounds on what one dataset may ask for; the README lists them.
MAX_TRIALS = 100
MAX_PARALLEL_TRIALS = 10
MAX_EPOCHS = 100
MAX_IMAGE_SIZE = 512
MAX_TEXT_LENGTH = 2500  # SageMaker's limit on one hyperparameter value


class HyperparameterError(ValueError):
    """A hyperparameter is not settable or its value is out of bounds; the message names it."""


@dataclass(frozen=True)
class Bound:
    """What one hyperparameter's value may be."""

    kind: str  # "int" | "float" | "choice" | "text" | "json"
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: the value must be strictly above ``low``
    high_open: bool = False
    choices: tuple[str, ...] = ()
    pattern: str | None = None

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind in ("int", "float"):
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            kind = "an integer" if self.kind == "int" else "a finite number"
            return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        if self.kind == "json":
            return "a JSON object"
        return f"text matching {self.pattern}"

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float")


# Mirrors train.py's parser (a test holds the two equal): every hyperparameter a user may
# set, and nothing else.
SETTABLE: dict[str, Bound] = {
    "lr": Bound("float", 0.0, 10.0, low_open=True),
    "momentum": Bound("float", 0.0, 1.0, high_open=True),
    "batch-size": Bound("int", 1, 1024),
    "epochs": Bound("int", 1, MAX_EPOCHS),
    "backbone": Bound("choice", choices=("resnet18", "resnet34", "resnet50")),
    "pretrained": Bound("choice", choices=("auto", "true", "false")),
    "freeze": Bound("choice", choices=("auto", "none", "backbone", "all-but-last-stage")),
    "weight-decay": Bound("float", 0.0, 1.0),
    "image-size": Bound("int", 16, MAX_IMAGE_SIZE),
    "augment": Bound("choice", choices=("flip-crop", "crop", "none")),
    "lr-schedule": Bound("choice", choices=("cosine", "constant")),
    "seed": Bound("int", 0, 2**31 - 1),
    "num-workers": Bound("int", -1, 16),
    "cache-features": Bound("choice", choices=("auto", "true", "false")),
    "valid-fraction": Bound("float", 0.0, 0.5, low_open=True),
    "test-fraction": Bound("float", 0.0, 0.5, low_open=True),
    "top-k": Bound("int", 1, 100),
    "export-graph": Bound("choice", choices=("auto", "onnx", "none")),
    "quantise": Bound("choice", choices=("none", "int8")),
    "rules": Bound("json"),
    "debug-save-interval": Bound("int", 1, 100_000),
    # Each sample reads psutil (and NVML): 10 a second is plenty, 100 a second is a load.
    "profiler-interval-ms": Bound("int", 100, 60_000),
    "profiler-trace-steps": Bound("text", pattern=r"^(\d{1,6}-\d{1,6})?$"),
    # Valid/test images that duplicate a training image: left out of evaluation, or kept.
    "leakage": Bound("choice", choices=("leave-out", "keep")),
}
# What a job may receive: the settable ones plus what the pipeline sets per job.
JOB_KEYS = frozenset(SETTABLE) | PIPELINE_KEYS
_BOOLEAN = Bound("choice", choices=("true", "false"))
_JOB_BOUNDS = {**SETTABLE, "debug": _BOOLEAN, "device": Bound("choice", choices=("auto", "cpu"))}


def refusal(name: str, allowed: frozenset[str] | None = None) -> str | None:
    """Why ``name`` may not be set, or None when it may."""
    lowered = str(name).lower()
    if lowered.startswith(FRAMEWORK_PREFIXES):
        return f"'{name}' is reserved for SageMaker's toolkits and cannot be set"
    if lowered.lstrip("-") in PATH_KEYS:
        return f"'{name}' names a path on the training host and cannot be set"
    if name not in (SETTABLE if allowed is None else allowed):
        known = ", ".join(sorted(SETTABLE))
        return f"'{name}' is not a hyperparameter that can be set (settable: {known})"
    return None


def check_value(name: str, value, bound: Bound | None = None) -> str:
    """``value`` as the text SageMaker carries, after checking it against ``name``'s bound.

    Choices are matched case-insensitively and without the JSON quotes some tools add.
    """
    bound = bound or _JOB_BOUNDS[name]
    if isinstance(value, dict | list):
        if bound.kind != "json":
            raise HyperparameterError(f"'{name}' must be {bound.describe()}, not {value!r}")
        text = json.dumps(value, separators=(",", ":"))
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if len(text) > MAX_TEXT_LENGTH:
        raise HyperparameterError(f"'{name}' is longer than {MAX_TEXT_LENGTH} characters")
    if bound.kind == "choice":
        cleaned = text.strip().strip("\"'").lower()
        if cleaned not in bound.choices:
            raise HyperparameterError(f"'{name}' must be {bound.describe()}, not {text!r}")
        return cleaned
    if bound.kind == "json":
        try:
            parsed = json.loads(text) if isinstance(value, str) else value
        except RecursionError:  # a string of 2,500 '[' nests deeper than Python recurses
            raise HyperparameterError(f"'{name}' nests too deeply") from None
        except ValueError:
            raise HyperparameterError(f"'{name}' must be a JSON object") from None
        if not isinstance(parsed, dict):
            raise HyperparameterError(f"'{name}' must be a JSON object")
        return text
    if bound.kind == "text":
        if not re.fullmatch(bound.pattern or "", text.strip()):
            raise HyperparameterError(f"'{name}' must be {bound.describe()}, not {text!r}")
        return text.strip()
    number = _number(name, value, text, bound)
    return str(int(number)) if bound.kind == "int" else repr(float(number))


def _number(name: str, value, text: str, bound: Bound) -> float:
    try:
        number = float(text.strip().strip("\"'"))
    except ValueError:
        raise HyperparameterError(f"'{name}' must be {bound.describe()}, not {text!r}") from None
    if not math.isfinite(number):
        raise HyperparameterError(f"'{name}' must be a finite number, not {text!r}")
    if bound.kind == "int" and (isinstance(value, float) or number != int(number)):
        raise HyperparameterError(f"'{name}' must be {bound.describe()}, not {text!r}")
    low, high = cast(float, bound.low), cast(float, bound.high)  # a numeric Bound sets both
    below = number <= low if bound.low_open else number < low
    above = number >= high if bound.high_open else number > high
    if below or above:
        raise HyperparameterError(f"'{name}' must be {bound.describe()}, not {text!r}")
    return number


def check_settable(values: Mapping) -> dict[str, str]:
    """A dataset's (or the operator's) hyperparameters, every key allowed and value bounded."""
    if not isinstance(values, Mapping):
        raise HyperparameterError("hyperparameters must be a JSON object")
    checked = {}
    for name, value in values.items():
        reason = refusal(str(name))
        if reason:
            raise HyperparameterError(reason)
        checked[str(name)] = check_value(str(name), value, SETTABLE[str(name)])
        sdk_encoded(str(name), checked[str(name)])  # still within SageMaker's length limit
    return checked


def sdk_encoded(name: str, text: str) -> str:
    """One checked value as the SageMaker Python SDK sends it: JSON-encoded.

    SageMaker's training toolkit JSON-decodes every hyperparameter value before it builds
    the command line, and writes a decoded object as ``k=v,k2=v2``. So a number goes as a
    JSON number, text as a JSON string, and a JSON setting (``rules``) as a JSON *string*
    holding its text: decoded once, it reaches ``train.py`` as the JSON that was written.
    """
    bound = _JOB_BOUNDS.get(name)
    numeric = bound is not None and bound.numeric
    encoded = text if numeric else json.dumps(text)
    if len(encoded) > MAX_TEXT_LENGTH:
        raise HyperparameterError(
            f"'{name}' is longer than SageMaker allows once encoded "
            f"({len(encoded)} > {MAX_TEXT_LENGTH} characters)"
        )
    return encoded


def sdk_encoded_all(values: Mapping[str, str]) -> dict[str, str]:
    """``sdk_encoded`` for every entry of a checked mapping."""
    return {name: sdk_encoded(name, text) for name, text in values.items()}


def check_job_hyperparameters(values: Mapping[str, str]) -> dict[str, str]:
    """What a training job received (its ``SM_HPS``), minus what the toolkit consumed.

    Framework keys never reach the script (the toolkit removes them); anything else must
    be on the job's list, with a bounded value.
    """
    checked = {}
    for name, value in values.items():
        if str(name).lower().startswith(FRAMEWORK_PREFIXES):
            continue
        reason = refusal(str(name), JOB_KEYS)
        if reason:
            raise HyperparameterError(reason)
        checked[name] = check_value(name, value)
    return checked


def check_range(name: str, spec: Mapping) -> None:
    """A tuning range may only search a settable hyperparameter, within its bounds."""
    reason = refusal(str(name))
    if reason:
        raise HyperparameterError(f"tuning range: {reason}")
    bound = SETTABLE[name]
    kind = spec.get("type")
    if kind == "categorical":
        values = spec.get("values")
        for value in values if isinstance(values, list) else []:
            check_value(name, value, bound)
        return
    if not bound.numeric:
        raise HyperparameterError(
            f"range '{name}' must be categorical: {name} is {bound.describe()}"
        )
    wanted = "integer" if bound.kind == "int" else "continuous"
    if kind != wanted:
        raise HyperparameterError(f"range '{name}' must be {wanted}: {name} is {bound.describe()}")
    for end in ("min", "max"):
        if end in spec:
            check_value(name, spec[end], bound)
