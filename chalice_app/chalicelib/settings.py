"""Pipeline configuration from environment variables, and per-dataset overrides.

Chalice puts ``environment_variables`` from ``.chalice/config.json`` into each Lambda's
environment; the local cloud sets the same variables. Every setting has a default that
follows the seed project and does better (log-scaled learning rate, Bayesian search,
early stopping). A dataset zip may carry ``sagedrop.json`` to change the tuning settings
for that dataset alone; unknown keys there are errors, not silently ignored.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from chalicelib import aws_limits, naming
from sagedrop_contract import hyperparameter_rules
from sagedrop_contract.hyperparameter_rules import HyperparameterError
from sagedrop_contract.job_contract import RULE_NAMES

DEFAULT_RANGES: dict[str, dict] = {
    "lr": {"type": "continuous", "min": 0.001, "max": 0.1, "scaling": "Logarithmic"},
    "momentum": {"type": "continuous", "min": 0.5, "max": 0.99, "scaling": "Linear"},
    "batch-size": {"type": "categorical", "values": [32, 64, 128]},
}
STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")
EARLY_STOPPING = ("Auto", "Off")
RANGE_TYPES = ("continuous", "integer", "categorical")
SCALINGS = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
# What a dataset's sagedrop.json may set, with the type each value must have; which
# hyperparameters (and ranges) it may name is ``hyperparameter_rules.SETTABLE``.
DATASET_OVERRIDES: dict[str, Any] = {  # key -> the JSON type its value must have
    "strategy": str,
    "max_jobs": int,
    "max_parallel_jobs": int,
    "early_stopping": str,
    "epochs": int,
    "ranges": dict,
    "hyperparameters": dict,
    "serverless": (dict, bool),
    "min_class_recall": (float, int),
    # "keep": leaked valid/test images stay in evaluation (the audit still counts them).
    "leakage": str,
}
APPROVALS = ("auto", "manual")
SERVERLESS_KEYS = {
    "memory_mb": "serverless_memory_mb",
    "max_concurrency": "serverless_max_concurrency",
}
# Upper bounds of a dataset's own limits (the README lists them).
DATASET_MAXIMA = {
    "max_jobs": hyperparameter_rules.MAX_TRIALS,
    "max_parallel_jobs": hyperparameter_rules.MAX_PARALLEL_TRIALS,
    "epochs": hyperparameter_rules.MAX_EPOCHS,
}


# MlflowConfig.MlflowResourceArn's pattern in the API reference (AIMlflowConfig's, which
# names the two kinds; botocore's MlflowConfig allows any "mlflow-*" resource).
MLFLOW_ARN = re.compile(
    r"arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:mlflow-(app|tracking-server)/.*"
)


class SettingsError(ValueError):
    """A setting or a dataset's sagedrop.json is invalid; the message names it."""


@dataclass(frozen=True)
class Settings:
    data_bucket: str = ""
    inference_bucket: str = ""
    topic_arn: str = ""
    sagemaker_role_arn: str = ""
    training_image: str = ""
    inference_image: str = ""
    code_s3_uri: str = ""
    # The ImageNet weights of every backbone (``sagedrop aws deploy`` puts them there): the
    # jobs' "weights" channel, so no job downloads them ("": jobs train without them).
    weights_s3_uri: str = ""
    # The wheels the jobs install and the artifact carries (``sagedrop aws configure``
    # puts them there): the jobs' "wheels" channel; training_code/requirements.txt
    # installs from it with no index, and train.py packs its inference/ part into the
    # artifact ("": the image must already have them, as the local environment does).
    wheels_s3_uri: str = ""
    # Each dataset's pipeline is served by the endpoint "<prefix>-<dataset>".
    endpoint_prefix: str = naming.DEFAULT_ENDPOINT_PREFIX
    training_instance_type: str = "ml.g4dn.xlarge"
    training_instance_count: int = 1
    debug_instance_type: str = "ml.g4dn.xlarge"
    inference_instance_type: str = "ml.m5.large"
    inference_instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_seconds: int = 3 * 3600
    tuning_strategy: str = "Bayesian"
    tuning_max_jobs: int = 8
    tuning_max_parallel_jobs: int = 2
    tuning_early_stopping: str = "Auto"
    tuning_epochs: int = 5
    tuning_ranges: dict = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_RANGES)))
    static_hyperparameters: dict = field(default_factory=dict)
    gate_blocking_rules: tuple[str, ...] = ("VanishingGradient", "ExplodingTensor")
    debug_rules: dict = field(default_factory=dict)
    debug_save_interval: int = 50
    gate_tolerance: float = 0.01
    gate_min_test_accuracy: float = 0.0
    # A version whose worst tested class has recall below this is Rejected (0: off). A
    # dataset may raise it for itself (sagedrop.json "min_class_recall"), never lower it.
    gate_min_class_recall: float = 0.0
    # A version whose test split had more than this fraction of images duplicating a
    # training image (before they were left out) is Rejected (None: off). The dataset's
    # "leakage": "keep" cannot lift it: the fraction is counted before any removal.
    gate_max_leaked_fraction: float | None = None
    # Fewer training images than this in a class earns a warning at upload.
    dataset_min_class_images: int = 5
    # SageMaker's network isolation for every training job, tuning job and model: the
    # code arrives as the "code" channel, the weights and wheels as the "weights" and
    # "wheels" ones, and nothing reaches the internet. Off only for an account that needs
    # a job to reach the network (a private index, a hub); the README says what it costs.
    network_isolation: bool = True
    # "manual": the gate registers passing models as PendingManualApproval; a person's
    # approval (console, API, `sagedrop approve`) deploys them.
    model_approval: str = "auto"
    # A serverless endpoint when both are set (0: an instance endpoint); a dataset may
    # ask for one in its sagedrop.json, with at most serverless_concurrency_limit.
    serverless_memory_mb: int = 0
    serverless_max_concurrency: int = 0
    serverless_concurrency_limit: int = 20
    # How many times Lambda runs the image handler for one image: 1 + the function's
    # MaximumRetryAttempts (2 by default, as the local bus retries). The last attempt at a
    # throttled image writes a final answer instead of promising a retry.
    image_attempts: int = 3
    # MLflow experiment tracking (off when both are empty): a SageMaker managed MLflow
    # tracking server or MLflow App (its ARN, through the sagemaker-mlflow plugin), or any
    # MLflow tracking URI (the local cloud's SQLite store). The pipeline records each
    # tuning trial and debug job as a run from the job's output (experiment_tracking).
    mlflow_tracking_arn: str = ""
    mlflow_tracking_uri: str = ""
    # Where a new experiment keeps its artifacts ("": the tracking server's own store).
    mlflow_artifact_root: str = ""

    @property
    def tracking_uri(self) -> str:
        """Where runs go: the ARN when set (the plugin resolves it), else the URI."""
        return self.mlflow_tracking_arn or self.mlflow_tracking_uri

    def __post_init__(self) -> None:
        problem = naming.check_endpoint_prefix(self.endpoint_prefix)
        if problem:
            raise SettingsError(f"ENDPOINT_PREFIX: {problem}")
        if self.mlflow_tracking_arn and not MLFLOW_ARN.fullmatch(self.mlflow_tracking_arn):
            raise SettingsError(
                "MLFLOW_TRACKING_ARN must be a SageMaker MLflow tracking server or MLflow App "
                f"ARN (arn:aws:sagemaker:<region>:<account>:mlflow-tracking-server/<name>), "
                f"not {self.mlflow_tracking_arn!r}"
            )
        _check_choice("tuning strategy", self.tuning_strategy, STRATEGIES)
        _check_choice("early stopping", self.tuning_early_stopping, EARLY_STOPPING)
        if not 1 <= self.tuning_max_parallel_jobs <= self.tuning_max_jobs:
            raise SettingsError(
                f"parallel jobs ({self.tuning_max_parallel_jobs}) must be between 1 and the "
                f"maximum number of jobs ({self.tuning_max_jobs})"
            )
        if self.tuning_epochs < 1:
            raise SettingsError("epochs must be at least 1")
        validate_ranges(self.tuning_ranges)
        self._check_ranges_for_strategy()
        try:
            hyperparameter_rules.check_settable(self.static_hyperparameters)
        except HyperparameterError as exc:
            raise SettingsError(f"hyperparameters: {exc}") from None
        if not 0 <= self.gate_tolerance <= 1:
            raise SettingsError("GATE_TOLERANCE must be between 0 and 1")
        if not 0 <= self.gate_min_class_recall <= 1:
            raise SettingsError("GATE_MIN_CLASS_RECALL must be between 0 and 1")
        if self.gate_max_leaked_fraction is not None and not (
            0 <= self.gate_max_leaked_fraction <= 1
        ):
            raise SettingsError("GATE_MAX_LEAKED_FRACTION must be between 0 and 1")
        if self.dataset_min_class_images < 1:
            raise SettingsError("DATASET_MIN_CLASS_IMAGES must be at least 1")
        _check_rule_names("GATE_BLOCKING_RULES", self.gate_blocking_rules)
        _check_rule_names("DEBUG_RULES", tuple(self.debug_rules))
        off = [n for n in self.gate_blocking_rules if self.debug_rules.get(n, True) is False]
        if off:
            raise SettingsError(
                f"DEBUG_RULES turns off {', '.join(off)}, which GATE_BLOCKING_RULES makes "
                "blocking: a blocking rule must run"
            )
        try:
            hyperparameter_rules.sdk_encoded(
                "rules", json.dumps(self.debug_rules, separators=(",", ":"))
            )
        except HyperparameterError as exc:
            raise SettingsError(f"DEBUG_RULES: {exc}") from None
        if self.debug_save_interval < 1:
            raise SettingsError("DEBUG_SAVE_INTERVAL must be at least 1")
        _check_choice("MODEL_APPROVAL", self.model_approval, APPROVALS)
        if not 1 <= self.image_attempts <= 3:
            raise SettingsError(
                "IMAGE_ATTEMPTS must be between 1 and 3 (Lambda retries an asynchronous "
                f"invocation at most twice), not {self.image_attempts}"
            )
        self._check_serverless()

    def _check_serverless(self) -> None:
        limit = self.serverless_concurrency_limit
        if not 1 <= limit <= aws_limits.SERVERLESS_CONCURRENCY_MAX:
            raise SettingsError(
                f"SERVERLESS_CONCURRENCY_LIMIT must be between 1 and "
                f"{aws_limits.SERVERLESS_CONCURRENCY_MAX}, not {limit}"
            )
        if not (self.serverless_memory_mb or self.serverless_max_concurrency):
            return
        problem = aws_limits.serverless_problem(self.serverless_config() or {})
        if problem:
            raise SettingsError(f"serverless endpoint: {problem}")
        if self.serverless_max_concurrency > limit:
            raise SettingsError(
                f"serverless endpoint: max_concurrency {self.serverless_max_concurrency} is "
                f"above this stage's SERVERLESS_CONCURRENCY_LIMIT ({limit})"
            )

    def _raised_floor(self, value) -> float:
        """A dataset's own per-class recall floor: at least the operator's, at most 1."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(
                f"sagedrop.json: 'min_class_recall' must be a number, not {value!r}"
            )
        if not self.gate_min_class_recall <= value <= 1:
            raise SettingsError(
                f"sagedrop.json: 'min_class_recall' must be between the operator's "
                f"GATE_MIN_CLASS_RECALL ({self.gate_min_class_recall}) and 1, not {value}: a "
                "dataset may raise the floor, never lower it"
            )
        return float(value)

    def serverless_config(self) -> dict | None:
        """``ServerlessConfig`` of the dataset's endpoint, or None for an instance one."""
        if not (self.serverless_memory_mb or self.serverless_max_concurrency):
            return None
        return {
            "MemorySizeInMB": self.serverless_memory_mb,
            "MaxConcurrency": self.serverless_max_concurrency,
        }

    def endpoint_for(self, pipeline: str) -> str:
        """The endpoint that serves ``pipeline`` (a dataset's name, ``naming.pipeline_name``)."""
        return naming.endpoint_name(self.endpoint_prefix, pipeline)

    def _check_ranges_for_strategy(self) -> None:
        """What SageMaker refuses in a tuning job (``aws_limits``, the very check the local
        SageMaker applies), refused here, where the setting can still be fixed."""
        problem = aws_limits.parameter_ranges_problem(
            self.tuning_strategy, aws_limits.parameter_ranges(self.tuning_ranges)
        )
        if problem:
            raise SettingsError(f"tuning ranges: {problem}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        for retired, successor in RETIRED.items():
            if env.get(retired):
                raise SettingsError(f"{retired} is no longer read: {successor}")
        values: dict = {}
        for name, spec in ENVIRONMENT.items():
            if name in env and env[name] != "":
                attribute, parse = spec
                try:
                    values[attribute] = parse(env[name])
                except (ValueError, TypeError) as exc:
                    raise SettingsError(
                        f"environment variable {name}={env[name]!r}: {exc}"
                    ) from exc
        return cls(**values)

    def with_dataset_overrides(self, overrides: Mapping) -> Settings:
        """Apply a dataset's sagedrop.json; every key and value is checked first."""
        if not isinstance(overrides, Mapping):
            raise SettingsError("sagedrop.json must hold a JSON object")
        unknown = sorted(set(overrides) - set(DATASET_OVERRIDES))
        if unknown:
            raise SettingsError(
                f"sagedrop.json: unknown key(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(DATASET_OVERRIDES)}"
            )
        changes: dict = {}
        leakage: str | None = None
        for key, value in overrides.items():
            if key == "serverless":
                changes.update(_serverless_override(value))
                continue
            if key == "min_class_recall":
                changes["gate_min_class_recall"] = self._raised_floor(value)
                continue
            if key == "leakage":
                try:
                    leakage = hyperparameter_rules.check_value("leakage", value)
                except HyperparameterError as exc:
                    raise SettingsError(f"sagedrop.json: {exc}") from None
                continue
            expected = DATASET_OVERRIDES[key]
            if not isinstance(value, expected) or isinstance(value, bool):
                raise SettingsError(
                    f"sagedrop.json: '{key}' must be a {expected.__name__}, not {value!r}"
                )
            if key in DATASET_MAXIMA and not 1 <= value <= DATASET_MAXIMA[key]:
                raise SettingsError(
                    f"sagedrop.json: '{key}' must be between 1 and {DATASET_MAXIMA[key]}, "
                    f"not {value}"
                )
            attribute = "static_hyperparameters" if key == "hyperparameters" else f"tuning_{key}"
            changes[attribute] = value
        if "static_hyperparameters" in changes:
            try:
                given = hyperparameter_rules.check_settable(changes["static_hyperparameters"])
            except HyperparameterError as exc:
                raise SettingsError(f"sagedrop.json: hyperparameters: {exc}") from None
            if "rules" in given:
                _check_rules_hyperparameter(given["rules"], self.gate_blocking_rules)
            changes["static_hyperparameters"] = {**self.static_hyperparameters, **given}
        if leakage is not None:
            base = changes.get("static_hyperparameters", self.static_hyperparameters)
            changes["static_hyperparameters"] = {**base, "leakage": leakage}
        try:
            return replace(self, **changes)
        except SettingsError as exc:
            raise SettingsError(f"sagedrop.json: {exc}") from exc


def _serverless_override(value) -> dict:
    """``"serverless": {"memory_mb": 2048, "max_concurrency": 5}`` asks for a serverless
    endpoint, ``false`` for an instance one; the limits are checked with the rest."""
    if value is False:
        return {"serverless_memory_mb": 0, "serverless_max_concurrency": 0}
    if not isinstance(value, Mapping) or set(value) != set(SERVERLESS_KEYS):
        raise SettingsError(
            "sagedrop.json: 'serverless' must be false or an object with exactly "
            f"{' and '.join(SERVERLESS_KEYS)}, not {value!r}"
        )
    changes = {}
    for key, attribute in SERVERLESS_KEYS.items():
        number = value[key]
        if not isinstance(number, int) or isinstance(number, bool):
            raise SettingsError(f"sagedrop.json: serverless.{key} must be a whole number")
        changes[attribute] = number
    return changes


def validate_ranges(ranges: Mapping) -> None:
    """Every range well formed, naming a settable hyperparameter, within its bounds."""
    if not isinstance(ranges, Mapping) or not ranges:
        raise SettingsError("tuning ranges must be a non-empty JSON object")
    for name, spec in ranges.items():
        if not isinstance(spec, Mapping) or spec.get("type") not in RANGE_TYPES:
            raise SettingsError(f"range '{name}' needs a type: one of {', '.join(RANGE_TYPES)}")
        try:
            hyperparameter_rules.check_range(str(name), spec)
        except HyperparameterError as exc:
            raise SettingsError(str(exc)) from None
        if spec["type"] == "categorical":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise SettingsError(f"categorical range '{name}' needs a non-empty 'values' list")
            continue
        low: Any = spec.get("min")  # numbers once checked below
        high: Any = spec.get("max")
        numbers = all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in (low, high)
        )
        if not numbers or low > high:
            raise SettingsError(
                f"range '{name}' needs finite numbers min <= max, not {low}, {high}"
            )
        scaling = spec.get("scaling", "Auto")
        _check_choice(f"scaling of range '{name}'", scaling, SCALINGS)
        if scaling == "Logarithmic" and low <= 0:
            raise SettingsError(f"range '{name}' is log-scaled, so min must be > 0")


def _check_rules_hyperparameter(text: str, blocking: tuple[str, ...]) -> None:
    """A dataset's own debug rule parameters, checked at upload rather than in the job.

    The rules the operator made blocking (``GATE_BLOCKING_RULES``) are the operator's: a
    dataset may tune or turn off the others, never those (whoever uploads could otherwise
    switch off the very checks meant to stop a broken model).
    """
    try:
        rules = json.loads(text)
    except ValueError:
        raise SettingsError("sagedrop.json: hyperparameters.rules must be a JSON object") from None
    if not isinstance(rules, dict):
        raise SettingsError("sagedrop.json: hyperparameters.rules must be a JSON object")
    _check_rule_names("sagedrop.json: hyperparameters.rules", tuple(rules))
    named = [name for name in rules if name in blocking]
    if named:
        raise SettingsError(
            f"sagedrop.json: hyperparameters.rules may not change {', '.join(named)}: the "
            "operator made them blocking (GATE_BLOCKING_RULES), so a dataset can neither "
            "turn them off nor change their parameters"
        )


def _check_rule_names(what: str, names: tuple[str, ...]) -> None:
    unknown = sorted(set(names) - set(RULE_NAMES))
    if unknown:
        raise SettingsError(
            f"{what}: unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULE_NAMES)}"
        )


def _check_choice(what: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise SettingsError(f"{what} {value!r} is not one of {', '.join(options)}")


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError("expected true or false")
    return value == "true"


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# Settings an older sagedrop read: set, they would be ignored without a word.
RETIRED = {
    "ENDPOINT_NAME": "each dataset now has its own endpoint <ENDPOINT_PREFIX>-<dataset>; "
    "set ENDPOINT_PREFIX instead",
}
# Environment variable → (attribute, parser). The README lists them with their defaults.
ENVIRONMENT: dict[str, tuple[str, Callable[[str], object]]] = {
    "DATA_BUCKET": ("data_bucket", str),
    "INFERENCE_BUCKET": ("inference_bucket", str),
    "TOPIC_ARN": ("topic_arn", str),
    "SAGEMAKER_ROLE_ARN": ("sagemaker_role_arn", str),
    "TRAINING_IMAGE": ("training_image", str),
    "INFERENCE_IMAGE": ("inference_image", str),
    "CODE_S3_URI": ("code_s3_uri", str),
    "WEIGHTS_S3_URI": ("weights_s3_uri", str),
    "WHEELS_S3_URI": ("wheels_s3_uri", str),
    "MLFLOW_TRACKING_ARN": ("mlflow_tracking_arn", str),
    "MLFLOW_TRACKING_URI": ("mlflow_tracking_uri", str),
    "MLFLOW_ARTIFACT_ROOT": ("mlflow_artifact_root", str),
    "ENDPOINT_PREFIX": ("endpoint_prefix", str),
    "TRAINING_INSTANCE_TYPE": ("training_instance_type", str),
    "TRAINING_INSTANCE_COUNT": ("training_instance_count", int),
    "DEBUG_INSTANCE_TYPE": ("debug_instance_type", str),
    "INFERENCE_INSTANCE_TYPE": ("inference_instance_type", str),
    "INFERENCE_INSTANCE_COUNT": ("inference_instance_count", int),
    "TRAINING_VOLUME_SIZE_GB": ("volume_size_gb", int),
    "TRAINING_MAX_RUNTIME_SECONDS": ("max_runtime_seconds", int),
    "TUNING_STRATEGY": ("tuning_strategy", str),
    "TUNING_MAX_JOBS": ("tuning_max_jobs", int),
    "TUNING_MAX_PARALLEL_JOBS": ("tuning_max_parallel_jobs", int),
    "TUNING_EARLY_STOPPING": ("tuning_early_stopping", str),
    "TUNING_EPOCHS": ("tuning_epochs", int),
    "TUNING_RANGES": ("tuning_ranges", _json_object),
    "STATIC_HYPERPARAMETERS": ("static_hyperparameters", _json_object),
    "GATE_BLOCKING_RULES": ("gate_blocking_rules", _names),
    "DEBUG_RULES": ("debug_rules", _json_object),
    "DEBUG_SAVE_INTERVAL": ("debug_save_interval", int),
    "GATE_TOLERANCE": ("gate_tolerance", float),
    "GATE_MIN_TEST_ACCURACY": ("gate_min_test_accuracy", float),
    "GATE_MIN_CLASS_RECALL": ("gate_min_class_recall", float),
    "GATE_MAX_LEAKED_FRACTION": ("gate_max_leaked_fraction", float),
    "DATASET_MIN_CLASS_IMAGES": ("dataset_min_class_images", int),
    "NETWORK_ISOLATION": ("network_isolation", _boolean),
    "MODEL_APPROVAL": ("model_approval", str),
    "SERVERLESS_MEMORY_MB": ("serverless_memory_mb", int),
    "SERVERLESS_MAX_CONCURRENCY": ("serverless_max_concurrency", int),
    "SERVERLESS_CONCURRENCY_LIMIT": ("serverless_concurrency_limit", int),
    "IMAGE_ATTEMPTS": ("image_attempts", int),
}
