"""Contract: train.py under SageMaker's own training runner, with the requests we build.

The PyTorch training image runs ``train`` (sagemaker-training) with the framework module
of sagemaker-pytorch-training; the local cloud runs that very runner (``TrainingRun``).
These tests send it exactly what the request builders produce (a tuning trial: static
hyperparameters plus tuned values as SageMaker passes them; the debug job, with and
without rules) and read back what ``train.py`` parsed from the model's ``config.json``.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from sagemaker_training.mapping import to_cmd_args

from chalicelib import sagemaker_requests, training_failure, vocabulary
from chalicelib.settings import Settings
from sagedrop.aws_configure import pack_training_code
from sagedrop.local.s3 import LocalS3
from sagedrop.local.state import State
from sagedrop.local.training import TrainingRun
from sagedrop_contract.hyperparameter_rules import SETTABLE
from tests.helpers import TRAINING_CODE

ROLE = "arn:aws:iam::123456789012:role/sagedrop-sagemaker"
IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6.0-cpu-py312"
CODE = "s3://data/code/sourcedir.tar.gz"
# Every hyperparameter a dataset's sagedrop.json may set (but the tuned ones and epochs).
DATASET_HYPERPARAMETERS = {
    "backbone": "resnet18",
    "pretrained": "false",
    "freeze": "none",
    "image-size": 32,
    "augment": "crop",
    "num-workers": 0,
    "cache-features": "false",
    "top-k": 2,
    "export-graph": "none",
    "quantise": "none",
    "seed": 7,
    "weight-decay": 0.0005,
    "lr-schedule": "constant",
    "valid-fraction": 0.25,
    "test-fraction": 0.2,
    "rules": {"Overfit": {"patience": 3}, "StepOutlier": False},
    "debug-save-interval": 3,
    "profiler-interval-ms": 200,
    "profiler-trace-steps": "1-2",
    "leakage": "keep",
}
TUNED = {"lr": "0.0123", "momentum": "0.91", "batch-size": "8"}  # as SageMaker chose them


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, tiny_dataset) -> LocalS3:
    root = tmp_path_factory.mktemp("cloud")
    s3 = LocalS3(root, State(root / "state.sqlite"))
    s3.ensure_bucket("data")
    s3.put_object(Bucket="data", Key="code/sourcedir.tar.gz", Body=pack_training_code())
    s3.put_object(Bucket="data", Key="datasets/tiny.zip", Body=tiny_dataset["zip"].read_bytes())
    return s3


@pytest.fixture(scope="module")
def settings() -> Settings:
    base = Settings(
        data_bucket="data",
        sagemaker_role_arn=ROLE,
        training_image=IMAGE,
        code_s3_uri=CODE,
        tuning_epochs=1,
        debug_save_interval=2,  # the dataset's own 3 wins
        network_isolation=True,  # its code through the "code" channel, as isolated jobs get it
    )
    return base.with_dataset_overrides({"hyperparameters": DATASET_HYPERPARAMETERS})


@pytest.fixture(scope="module")
def upload() -> vocabulary.Upload:
    return vocabulary.Upload("data", "datasets/tiny.zip", '"0123abcd"')


def run_job(s3: LocalS3, folder: Path, request: dict):
    """One job through the real runner; its result, the parsed config and the log."""
    statuses = []
    run = TrainingRun(s3, folder, request, 1, on_status=lambda s, _: statuses.append(s))
    result = run.run()
    log = (folder / "logs.txt").read_text()
    assert result.status == "Completed" or result.failure_reason, log
    config = {}
    if result.model_uri:
        key = result.model_uri.removeprefix("s3://data/")
        with tarfile.open(s3.path_of("data", key, "GetObject")) as archive:
            config = json.load(archive.extractfile("config.json"))
    return result, config, log, statuses


def command_line(log: str) -> list[str]:
    """The arguments the runner gave train.py (it prints them as ``SM_USER_ARGS``)."""
    line = next(line for line in log.splitlines() if line.startswith("SM_USER_ARGS="))
    return json.loads(line.split("=", 1)[1])


def trial_request(settings: Settings, upload: vocabulary.Upload) -> dict:
    """A tuning trial as SageMaker starts it from the tuning job's definition."""
    definition = sagemaker_requests.tuning_job_request(settings, upload)["TrainingJobDefinition"]
    return {
        "TrainingJobName": "sagedrop-tiny-001-0a1b2c3d",
        "HyperParameters": {
            **definition["StaticHyperParameters"],
            **TUNED,
            "_tuning_objective_metric": "valid_accuracy",
        },
        **{k: definition[k] for k in ("AlgorithmSpecification", "RoleArn", "InputDataConfig")},
        **{k: definition[k] for k in ("OutputDataConfig", "ResourceConfig", "StoppingCondition")},
    }


def describe_tuning(settings: Settings, upload: vocabulary.Upload) -> dict:
    request = sagemaker_requests.tuning_job_request(settings, upload)
    return {
        "HyperParameterTuningJobName": request["HyperParameterTuningJobName"],
        "TrainingJobDefinition": request["TrainingJobDefinition"],
        "BestTrainingJob": {"TrainingJobName": "best", "TunedHyperParameters": TUNED},
    }


def test_a_tuning_trial_gets_every_hyperparameter_intact(bucket, settings, upload, tmp_path):
    result, config, log, statuses = run_job(bucket, tmp_path, trial_request(settings, upload))
    assert result.status == "Completed", result.failure_reason
    received = config["hyperparameters"]
    assert set(DATASET_HYPERPARAMETERS) | set(TUNED) | {"epochs"} == set(SETTABLE)
    for name, value in DATASET_HYPERPARAMETERS.items():
        got = received[name.replace("-", "_")]
        assert (json.loads(got) if name == "rules" else got) == value, name
    assert received["lr"] == 0.0123 and received["momentum"] == 0.91
    assert received["batch_size"] == 8 and received["epochs"] == 1
    assert received["debug"] is False
    # the runner read the request's hyperparameters, kept its own keys, ran train.py
    arguments = command_line(log)
    assert "--lr" in arguments and not any("sagemaker" in a or "_tuning" in a for a in arguments)
    # live metrics through the runner's output, as SageMaker reads them from the log
    assert 0.0 <= result.final_metrics["valid_accuracy"] <= 1.0
    assert statuses == ["Downloading", "Training", "Uploading"]


@pytest.mark.parametrize("where", ["none", "stage", "dataset"])
def test_the_debug_job_gets_its_rules_as_written(bucket, settings, upload, tmp_path, where):
    stage_rules = {"VanishingGradient": {"threshold": 1e-9}, "StepOutlier": False}
    chosen = replace(settings, debug_rules=stage_rules if where == "stage" else {})
    if where != "dataset":
        chosen = replace(
            chosen,
            static_hyperparameters={
                k: v for k, v in chosen.static_hyperparameters.items() if k != "rules"
            },
        )
    request = sagemaker_requests.debug_training_job_request(
        chosen, upload, describe_tuning(chosen, upload)
    )
    result, config, log, _ = run_job(bucket, tmp_path, request)
    assert result.status == "Completed", result.failure_reason
    received = config["hyperparameters"]
    assert received["debug"] is True and received["debug_save_interval"] == 3
    assert received["lr"] == 0.0123 and received["batch_size"] == 8
    expected = {"none": "", "stage": stage_rules, "dataset": DATASET_HYPERPARAMETERS["rules"]}
    assert (json.loads(received["rules"]) if received["rules"] else "") == expected[where]
    arguments = command_line(log)
    if where != "none":  # on the command line as JSON text, not the toolkit's k=v rendering
        assert json.loads(arguments[arguments.index("--rules") + 1]) == expected[where]
    else:
        assert "--rules" not in arguments
    assert "rule_VanishingGradient" in result.final_metrics


def test_train_py_s_reason_becomes_the_failure_reason(bucket, settings, upload, tmp_path):
    """The runner writes output/failure itself, from train.py's stderr."""
    request = trial_request(settings, upload)
    request["HyperParameters"]["model-dir"] = json.dumps("/tmp/elsewhere")
    result, _, _, _ = run_job(bucket, tmp_path, request)
    assert result.status == "Failed"
    reason = result.failure_reason
    assert reason.startswith("AlgorithmError: ExecuteUserScriptError:\nExitCode 2\n")
    assert training_failure.summary(reason) == (
        "exit code 2: ValueError: 'model-dir' names a path on the training host and cannot be set"
    )
    assert not Path("/tmp/elsewhere").exists()


def test_rules_sent_as_an_object_still_reach_train_py(monkeypatch):
    """A request made with the SageMaker Python SDK and ``rules`` as a dict: the toolkit
    puts ``Overfit={...},StepOutlier=False`` on the command line, SM_HPS keeps the object."""
    import sys

    monkeypatch.syspath_prepend(str(TRAINING_CODE))
    sys.modules.pop("train", None)
    import train

    rules = {"Overfit": {"patience": 3}, "StepOutlier": False}
    argv = to_cmd_args({"rules": rules, "epochs": 1})
    assert argv[argv.index("--rules") + 1].startswith("Overfit=")
    monkeypatch.setenv("SM_HPS", json.dumps({"rules": rules, "epochs": 1}))
    assert json.loads(train.parse_args(argv).rules) == rules


@pytest.mark.parametrize(
    ("return_code", "stderr", "info", "expected"),
    [
        (
            2,
            "ValueError: 'lr' must be a number",
            None,
            "exit code 2: ValueError: 'lr' must be a number",
        ),
        (
            1,
            'ValueError: rule "Overfit" fired\n  at step 3',
            None,
            'exit code 1: ValueError: rule "Overfit" fired at step 3',
        ),
        (
            137,
            "",
            "OutOfMemory: Process killed by SIGKILL (signal 9)",
            "exit code 137: the script printed no error "
            "(OutOfMemory: Process killed by SIGKILL (signal 9))",
        ),
    ],
)
def test_the_failure_summary_reads_the_toolkit_s_own_error_text(
    return_code, stderr, info, expected
):
    """The format comes from sagemaker-training's ExecuteUserScriptError itself."""
    from sagemaker_training.errors import ExecuteUserScriptError

    error = ExecuteUserScriptError(
        cmd="/usr/bin/python3 -- train.py --lr 0.1",
        return_code=return_code,
        output=stderr,
        info=info,
    )
    reason = f"AlgorithmError: {error}"
    assert training_failure.summary(reason) == expected
    # SageMaker cuts a FailureReason at 1,024 characters, in the middle of the message
    long = ExecuteUserScriptError(cmd="x", return_code=1, output="ValueError: " + "y" * 2000)
    cut = f"AlgorithmError: {long}"[:1024]
    assert training_failure.summary(cut).startswith("exit code 1: ValueError: yyy")
    assert training_failure.summary("ClientError: no objects under s3://x") == (
        "ClientError: no objects under s3://x"
    )
