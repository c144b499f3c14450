"""Pure builders for every SageMaker request the pipeline makes.

Each function returns the exact keyword arguments of one boto3 call, built from settings
and the triggering object alone (no I/O), so tests can validate every request against
botocore's service model, and the local cloud receives precisely what AWS would.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from chalicelib import aws_limits, experiment_tracking, naming
from chalicelib.vocabulary import (
    TAG_DATASET,
    TAG_MIN_CLASS_RECALL,
    TAG_SERVING,
    TAG_TUNING_JOB,
    Upload,
)
from sagedrop_contract import hyperparameter_rules, job_contract
from sagedrop_contract.job_contract import (
    DEBUG_METRIC_DEFINITIONS,
    METRIC_DEFINITIONS,
    OBJECTIVE_METRIC,
)

if TYPE_CHECKING:  # the builders read settings; settings never imports this module
    from chalicelib.settings import Settings

TRAINING_CHANNEL = "training"
# Under network isolation the code archive is an input channel, unpacked from here by the
# training toolkit (the SageMaker Python SDK's CONTAINER_CODE_CHANNEL_SOURCEDIR_PATH).
CODE_CHANNEL = "code"
WEIGHTS_CHANNEL = "weights"
WHEELS_CHANNEL = "wheels"
CONTAINER_CODE_PATH = "/opt/ml/input/data/code/sourcedir.tar.gz"
VARIANT_NAME = "AllTraffic"
# The debug job's input channel holding the serving version's model.tar.gz, evaluated on
# the job's own test split for the gate's paired comparison (SM_CHANNEL_SERVING).
SERVING_CHANNEL = "serving"
IMAGE_CONTENT_TYPES = ["image/jpeg", "image/png"]
# Hyperparameters SageMaker's script mode reads (JSON-encoded, as the SageMaker Python SDK
# sends them); the tuner adds its own ``_tuning_*`` ones.
SCRIPT_MODE = {"sagemaker_program": json.dumps("train.py"), "sagemaker_container_log_level": "20"}
_EARLY_STOPPING_STRATEGIES = ("Bayesian", "Random")


def _training_definition(settings: Settings, upload: Upload, job_name: str) -> dict:
    """Shared parts of the tuning job's definition and the debug training job."""
    return {
        "RoleArn": settings.sagemaker_role_arn,
        "EnableNetworkIsolation": settings.network_isolation,
        "InputDataConfig": [
            {
                "ChannelName": TRAINING_CHANNEL,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": upload.uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "ContentType": "application/zip",
                "CompressionType": "None",
                "InputMode": "File",
            },
            *_code_channel(settings),
            *_prefix_channel(WEIGHTS_CHANNEL, settings.weights_s3_uri),
            *_prefix_channel(WHEELS_CHANNEL, settings.wheels_s3_uri),
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{settings.data_bucket}/jobs/{job_name}"},
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_seconds},
    }


def _code_channel(settings: Settings) -> list[dict]:
    """The code archive as an input channel: what an isolated container runs."""
    if not settings.network_isolation:
        return []
    source = {"S3DataType": "S3Prefix", "S3Uri": settings.code_s3_uri,
              "S3DataDistributionType": "FullyReplicated"}  # fmt: skip
    return [{"ChannelName": CODE_CHANNEL, "DataSource": {"S3DataSource": source},
             "ContentType": "application/x-tar", "CompressionType": "None",
             "InputMode": "File"}]  # fmt: skip


def _prefix_channel(name: str, uri: str) -> list[dict]:
    """What ``sagedrop aws configure`` put in S3 for every job, as a channel: "weights"
    (each backbone's ImageNet file; ``SM_CHANNEL_WEIGHTS``, read by train.py instead of
    a download) or "wheels" (what requirements.txt installs with no index, and what the
    artifact carries). None without its URI."""
    if not uri:
        return []
    source = {"S3DataType": "S3Prefix", "S3Uri": uri,
              "S3DataDistributionType": "FullyReplicated"}  # fmt: skip
    return [{"ChannelName": name, "DataSource": {"S3DataSource": source},
             "CompressionType": "None", "InputMode": "File"}]  # fmt: skip


def resource_tags(upload: Upload, tuning_job: str, **extra: str) -> list[dict]:
    """The dataset's URI comes from an uploader's key (``Dog Images (2024).zip``): its
    characters outside SageMaker's tag pattern become ``_``, so the request stays valid."""
    tags = {TAG_DATASET: aws_limits.tag_value(upload.uri), TAG_TUNING_JOB: tuning_job, **extra}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def static_hyperparameters(settings: Settings) -> dict[str, str]:
    """The user's (allow-listed) values first, then the framework's keys, which always win:
    which code a job runs is decided here, never by a dataset.

    Every value is JSON-encoded as the SageMaker Python SDK does it, because SageMaker's
    training toolkit decodes every value before ``train.py`` sees it (``hyperparameters``).
    """
    values = {
        "epochs": str(settings.tuning_epochs),
        **hyperparameter_rules.check_settable(settings.static_hyperparameters),
    }
    # A tuned hyperparameter must not also be static: SageMaker rejects the request.
    values = {k: v for k, v in values.items() if k not in settings.tuning_ranges}
    # Under network isolation the container cannot fetch its code: it arrives as the
    # "code" channel and the toolkit unpacks it from there (as the SageMaker Python SDK
    # arranges it for an isolated estimator).
    code = CONTAINER_CODE_PATH if settings.network_isolation else settings.code_s3_uri
    return {
        **hyperparameter_rules.sdk_encoded_all(values),
        **SCRIPT_MODE,
        "sagemaker_submit_directory": json.dumps(code),
    }


def serving_tag(settings: Settings) -> str:
    """How the dataset's endpoint serves, as one tag value carried from the upload to the
    gate: ``serverless:<memory MB>:<max concurrency>`` or ``instance:<type>:<count>``."""
    serverless = settings.serverless_config()
    if serverless:
        return f"serverless:{serverless['MemorySizeInMB']}:{serverless['MaxConcurrency']}"
    return f"instance:{settings.inference_instance_type}:{settings.inference_instance_count}"


def serving_variant(tag: str) -> dict:
    """The production variant's capacity for a ``serving_tag`` value."""
    kind, first, second = tag.split(":")
    if kind == "serverless":
        return {"ServerlessConfig": {"MemorySizeInMB": int(first), "MaxConcurrency": int(second)}}
    if kind == "instance":
        return {
            "InstanceType": first,
            "InitialInstanceCount": int(second),
            "InitialVariantWeight": 1.0,
        }
    raise ValueError(f"unknown serving kind in {tag!r}")


def tuning_job_request(settings: Settings, upload: Upload, parent_run: str | None = None) -> dict:
    """``CreateHyperParameterTuningJob``: search the ranges, maximise validation accuracy."""
    name = upload.tuning_job_name
    strategy = settings.tuning_strategy
    limits = {"MaxParallelTrainingJobs": settings.tuning_max_parallel_jobs}
    if strategy != "Grid":  # Grid search runs every combination; SageMaker forbids a maximum
        limits["MaxNumberOfTrainingJobs"] = settings.tuning_max_jobs
    config = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": OBJECTIVE_METRIC},
        "ResourceLimits": limits,
        "ParameterRanges": aws_limits.parameter_ranges(settings.tuning_ranges),
        # Early stopping is only supported with Bayesian and Random search.
        "TrainingJobEarlyStoppingType": (
            settings.tuning_early_stopping if strategy in _EARLY_STOPPING_STRATEGIES else "Off"
        ),
    }
    if strategy == "Hyperband":
        config["StrategyConfig"] = {
            "HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": settings.tuning_epochs}
        }
    definition = {
        **_training_definition(settings, upload, name),
        **_tracking_environment(settings, upload, parent_run),
        "StaticHyperParameters": static_hyperparameters(settings),
        "AlgorithmSpecification": {
            "TrainingImage": settings.training_image,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "ResourceConfig": {
            "InstanceType": settings.training_instance_type,
            "InstanceCount": settings.training_instance_count,
            "VolumeSizeInGB": settings.volume_size_gb,
        },
    }
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
        "Tags": resource_tags(
            upload,
            name,
            **{
                TAG_SERVING: serving_tag(settings),
                TAG_MIN_CLASS_RECALL: f"{settings.gate_min_class_recall:g}",
            },
        ),
    }


def debug_training_job_request(
    settings: Settings,
    upload: Upload,
    tuning: dict,
    serving: str | None = None,
    serving_artifact: str | None = None,
    min_class_recall: str | None = None,
) -> dict:
    """``CreateTrainingJob``: the best trial's hyperparameters again, recorded and profiled.

    ``tuning`` is the ``DescribeHyperParameterTuningJob`` response: its definition's static
    hyperparameters plus ``BestTrainingJob.TunedHyperParameters``, and ``debug=true``.
    ``serving`` is the tuning job's ``sagedrop:serving`` tag (the dataset's choice), and
    ``min_class_recall`` its floor tag. ``serving_artifact``: the ``model.tar.gz`` of the
    version serving this dataset with the same classes, handed over as the ``serving``
    channel so the job evaluates it on its own test split (the gate's paired comparison).
    """
    tuning_job = tuning["HyperParameterTuningJobName"]
    name = naming.debug_job_name(tuning_job)
    definition = tuning["TrainingJobDefinition"]
    values = {
        k: v
        for k, v in definition.get("StaticHyperParameters", {}).items()
        if not k.startswith("_tuning")
    }
    # SageMaker passes the tuned values as it chose them ("0.0123", "resnet18"): the
    # toolkit decodes those as it decodes the SDK's encoding.
    values.update(tuning["BestTrainingJob"]["TunedHyperParameters"])
    values["debug"] = hyperparameter_rules.sdk_encoded("debug", "true")
    values.setdefault(
        "debug-save-interval",
        hyperparameter_rules.sdk_encoded("debug-save-interval", str(settings.debug_save_interval)),
    )
    rules = merged_rules(settings, values.pop("rules", None))
    if rules:
        text = json.dumps(rules, separators=(",", ":"))
        values["rules"] = hyperparameter_rules.sdk_encoded("rules", text)
    output_path = f"s3://{settings.data_bucket}/jobs/{name}"
    return {
        "TrainingJobName": name,
        **_mlflow_config(settings, upload, name),
        "HyperParameters": values,
        "AlgorithmSpecification": {
            "TrainingImage": definition["AlgorithmSpecification"]["TrainingImage"],
            "TrainingInputMode": "File",
            "MetricDefinitions": DEBUG_METRIC_DEFINITIONS,
        },
        "RoleArn": definition["RoleArn"],
        "EnableNetworkIsolation": definition.get("EnableNetworkIsolation", False),
        **_tracking_environment(settings, upload, None),
        "InputDataConfig": [*definition["InputDataConfig"], *_serving_channel(serving_artifact)],
        "OutputDataConfig": {"S3OutputPath": output_path},
        "ResourceConfig": {
            "InstanceType": settings.debug_instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": settings.volume_size_gb,
        },
        "StoppingCondition": definition["StoppingCondition"],
        "TensorBoardOutputConfig": {"S3OutputPath": f"{output_path}/tensorboard"},
        "Tags": resource_tags(
            upload,
            tuning_job,
            **{
                TAG_SERVING: serving or serving_tag(settings),
                TAG_MIN_CLASS_RECALL: min_class_recall or f"{settings.gate_min_class_recall:g}",
            },
        ),
    }


def _tracking_environment(settings: Settings, upload: Upload, parent_run: str | None) -> dict:
    """A job that can reach the tracking server logs its own run (``run_tracking`` in the
    training code): the server, the experiment and, for a trial, its tuning job's run.
    An isolated job gets none (it could not reach it); the pipeline records it instead."""
    if not settings.tracking_uri or settings.network_isolation:
        return {}
    experiment = experiment_tracking.experiment_name(naming.pipeline_name(upload.key))
    environment = {"MLFLOW_TRACKING_URI": settings.tracking_uri,
                   "MLFLOW_EXPERIMENT_NAME": experiment}  # fmt: skip
    if parent_run:
        environment[job_contract.PARENT_RUN_VARIABLE] = parent_run
    return {"Environment": environment}


def _mlflow_config(settings: Settings, upload: Upload, job: str) -> dict:
    """The job linked to the managed MLflow server its run is recorded in, under the same
    experiment and run names the pipeline records (experiment_tracking); none without an
    ARN. SageMaker records nothing by itself from this: the pipeline does, from the
    job's output, because an isolated job cannot reach the server."""
    if not settings.mlflow_tracking_arn:
        return {}
    experiment = experiment_tracking.experiment_name(naming.pipeline_name(upload.key))
    return {"MlflowConfig": {"MlflowResourceArn": settings.mlflow_tracking_arn,
                             "MlflowExperimentName": experiment,
                             "MlflowRunName": job}}  # fmt: skip


def _serving_channel(artifact: str | None) -> list[dict]:
    if not artifact:
        return []
    source = {
        "S3DataType": "S3Prefix",
        "S3Uri": artifact,
        "S3DataDistributionType": "FullyReplicated",
    }
    return [{"ChannelName": SERVING_CHANNEL, "DataSource": {"S3DataSource": source},
             "CompressionType": "None", "InputMode": "File"}]  # fmt: skip


def merged_rules(settings: Settings, dataset_rules: str | None) -> dict:
    """The debug job's rules: the stage's ``DEBUG_RULES``, then the dataset's own, except
    for the blocking rules, which keep the operator's configuration whatever the dataset's
    says (refused at upload already; this holds for a request built any other way)."""
    rules = dict(settings.debug_rules)
    if dataset_rules:
        try:
            text = json.loads(dataset_rules)  # SDK-encoded: a JSON string holding JSON
            given = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            given = {}
        if isinstance(given, dict):
            for name, value in given.items():
                if name not in settings.gate_blocking_rules:
                    rules[name] = value
    return rules
