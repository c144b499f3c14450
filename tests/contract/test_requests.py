"""Every SageMaker request the pipeline builds is valid against botocore's service model."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import botocore.session
import pytest
from botocore.validate import ParamValidator

from chalicelib import aws_limits, naming, registry_requests, sagemaker_requests, vocabulary
from chalicelib.settings import Settings, SettingsError
from sagedrop_contract.job_contract import METRIC_DEFINITIONS, RULE_NAMES

SAGEMAKER = botocore.session.get_session().get_service_model("sagemaker")


def assert_valid(operation: str, params: dict) -> None:
    shape = SAGEMAKER.operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()
    _assert_patterns(shape, params, operation)


def _python_pattern(pattern: str):
    """AWS writes patterns for Java; the few using Unicode classes (\\p{...}) are skipped."""
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _assert_patterns(shape, value, path):
    """botocore checks types and required keys; names must also fit AWS's length and pattern."""
    if shape.type_name == "structure":
        for key, member in shape.members.items():
            if key in value:
                _assert_patterns(member, value[key], f"{path}.{key}")
    elif shape.type_name == "list":
        for i, item in enumerate(value):
            _assert_patterns(shape.member, item, f"{path}[{i}]")
    elif shape.type_name == "map":
        for k, v in value.items():
            _assert_patterns(shape.value, v, f"{path}[{k}]")
    elif shape.type_name == "string":
        meta = shape.metadata
        assert meta.get("min", 0) <= len(value) <= meta.get("max", 10**9), path
        compiled = _python_pattern(meta["pattern"]) if "pattern" in meta else None
        if compiled is not None:
            assert compiled.fullmatch(value), f"{path}={value!r} vs {meta['pattern']}"


@pytest.fixture
def upload():
    return vocabulary.Upload("sagedrop-data", "datasets/Dog Images (v2).zip", '"0123abcd"')


@pytest.mark.parametrize("strategy", ["Bayesian", "Random", "Hyperband"])
def test_tuning_job_request(settings, upload, strategy):
    request = sagemaker_requests.tuning_job_request(
        replace(settings, tuning_strategy=strategy), upload
    )
    assert_valid("CreateHyperParameterTuningJob", request)
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Maximize",
        "MetricName": "valid_accuracy",
    }
    ranges = config["ParameterRanges"]
    assert {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"} in (
        ranges["ContinuousParameterRanges"]
    )
    assert ranges["CategoricalParameterRanges"] == [
        {"Name": "batch-size", "Values": ["32", "64", "128"]}
    ]
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    # JSON-encoded, as the SageMaker Python SDK sends every value (the toolkit decodes them)
    assert definition["StaticHyperParameters"]["sagemaker_program"] == '"train.py"'
    assert "lr" not in definition["StaticHyperParameters"]
    assert definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == (
        "s3://sagedrop-data/datasets/Dog Images (v2).zip"
    )
    expected_stopping = "Auto" if strategy != "Hyperband" else "Off"
    assert config["TrainingJobEarlyStoppingType"] == expected_stopping


def test_grid_search_has_no_job_maximum(settings, upload):
    grid = replace(
        settings,
        tuning_strategy="Grid",
        tuning_ranges={"batch-size": {"type": "categorical", "values": [32, 64]}},
    )
    request = sagemaker_requests.tuning_job_request(grid, upload)
    assert_valid("CreateHyperParameterTuningJob", request)
    assert (
        "MaxNumberOfTrainingJobs" not in request["HyperParameterTuningJobConfig"]["ResourceLimits"]
    )


def describe_tuning(settings, upload):
    """The parts of a DescribeHyperParameterTuningJob response the flow reads."""
    request = sagemaker_requests.tuning_job_request(settings, upload)
    name = request["HyperParameterTuningJobName"]
    static = dict(request["TrainingJobDefinition"]["StaticHyperParameters"])
    static["_tuning_objective_metric"] = "valid_accuracy"
    return {
        "HyperParameterTuningJobName": name,
        "TrainingJobDefinition": {
            **request["TrainingJobDefinition"],
            "StaticHyperParameters": static,
        },
        "BestTrainingJob": {
            "TrainingJobName": f"{name}-003-0a1b2c3d",
            "TunedHyperParameters": {"lr": "0.0123", "momentum": "0.91", "batch-size": "64"},
        },
    }


def test_debug_training_job_request(settings, upload):
    request = sagemaker_requests.debug_training_job_request(
        settings, upload, describe_tuning(settings, upload)
    )
    assert_valid("CreateTrainingJob", request)
    assert request["TrainingJobName"].startswith(naming.DEBUG_PREFIX)
    hp = request["HyperParameters"]
    # tuned values as SageMaker chose them; the pipeline's own JSON-encoded like the SDK's
    assert hp["lr"] == "0.0123" and hp["batch-size"] == "64" and hp["debug"] == '"true"'
    assert hp["sagemaker_program"] == '"train.py"'
    assert not any(k.startswith("_tuning") for k in hp)
    assert hp["debug-save-interval"] == "50" and "rules" not in hp
    # every rule's verdict is a metric the gate reads from FinalMetricDataList
    names = {d["Name"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]}
    assert {f"rule_{rule}" for rule in RULE_NAMES} <= names and "test_accuracy" in names
    assert request["TensorBoardOutputConfig"]["S3OutputPath"].endswith("/tensorboard")


def test_debug_rules_reach_the_debug_job_and_a_datasets_own_win(settings, upload):
    staged = replace(settings, debug_rules={"Overfit": {"patience": 3}, "StepOutlier": False})
    request = sagemaker_requests.debug_training_job_request(
        staged, upload, describe_tuning(staged, upload)
    )
    assert_valid("CreateTrainingJob", request)
    # a JSON string holding the rules' JSON: the toolkit decodes it once, to that text
    assert json.loads(json.loads(request["HyperParameters"]["rules"])) == {
        "Overfit": {"patience": 3},
        "StepOutlier": False,
    }
    own = staged.with_dataset_overrides({"hyperparameters": {"rules": {"Overfit": {"stop": True}}}})
    assert own.static_hyperparameters["rules"] == '{"Overfit":{"stop":true}}'
    request = sagemaker_requests.debug_training_job_request(
        own, upload, describe_tuning(own, upload)
    )
    rules = json.loads(json.loads(request["HyperParameters"]["rules"]))
    assert rules == {"Overfit": {"stop": True}, "StepOutlier": False}


@pytest.mark.parametrize(
    "rules",
    [
        {"ExplodingTensor": False, "VanishingGradient": False},  # issue 19's exploit
        {"VanishingGradient": {"threshold": 1e-30}},  # weakened, not turned off
    ],
)
def test_a_dataset_cannot_turn_off_or_weaken_the_operators_blocking_rules(settings, rules):
    with pytest.raises(SettingsError, match="the operator made them blocking"):
        settings.with_dataset_overrides({"hyperparameters": {"rules": rules}})


def test_a_request_built_around_the_upload_check_still_keeps_the_blocking_rules(settings, upload):
    """Defence in depth: static hyperparameters that turn a blocking rule off (a request
    built some other way) do not reach the debug job."""
    turned_off = replace(settings, static_hyperparameters={"rules": '{"ExplodingTensor":false}'})
    request = sagemaker_requests.debug_training_job_request(
        turned_off, upload, describe_tuning(turned_off, upload)
    )
    assert "rules" not in request["HyperParameters"]  # every rule runs, as by default


def test_the_operator_cannot_turn_off_a_rule_it_made_blocking():
    with pytest.raises(SettingsError, match="a blocking rule must run"):
        Settings.from_env({"DEBUG_RULES": '{"ExplodingTensor": false}'})
    Settings.from_env(
        {"DEBUG_RULES": '{"ExplodingTensor": false}', "GATE_BLOCKING_RULES": "Overfit"}
    )


def test_rule_settings_are_checked_where_they_are_given(settings):
    with pytest.raises(SettingsError, match="unknown rule"):
        Settings.from_env({"DEBUG_RULES": '{"Overfitting": {}}'})
    with pytest.raises(SettingsError, match="GATE_BLOCKING_RULES: unknown rule"):
        Settings.from_env({"GATE_BLOCKING_RULES": "VanishingGradients"})
    with pytest.raises(SettingsError, match=r"hyperparameters\.rules: unknown rule"):
        settings.with_dataset_overrides({"hyperparameters": {"rules": {"Overfitt": {}}}})
    with pytest.raises(SettingsError, match="must be a JSON object"):
        settings.with_dataset_overrides({"hyperparameters": {"rules": "Overfit"}})


def registered_version(settings, upload, approval="Approved", serving=None) -> dict:
    """A CreateModelPackage request as the gate builds it, and the package as described."""
    debug = sagemaker_requests.debug_training_job_request(
        settings, upload, describe_tuning(settings, upload)
    )
    training = {
        "TrainingJobName": debug["TrainingJobName"],
        "ModelArtifacts": {"S3ModelArtifacts": "s3://sagedrop-data/jobs/x/output/model.tar.gz"},
    }
    rules = [{"RuleConfigurationName": "Overfit", "RuleEvaluationStatus": "IssuesFound"}]
    reports = {
        "metrics": "s3://sagedrop-data/jobs/x/reports/metrics.json",
        "rules": "s3://sagedrop-data/jobs/x/reports/rules.json",
        "report": "s3://sagedrop-data/jobs/x/reports/report.html",
    }
    request = registry_requests.model_package_request(
        settings, upload, training, "sagedrop-pets", approval=approval,
        description="Approved by the quality gate:\nline two\t" + "x" * 2000,
        serving=serving or sagemaker_requests.serving_tag(settings),
        evidence=registry_requests.Evidence(0.9123, rules, ["001.cat", "002.dog"], reports),
    )  # fmt: skip
    package = {
        **{k: v for k, v in request.items() if k not in ("ClientToken", "Tags")},
        "ModelPackageArn": "arn:aws:sagemaker:eu-west-1:123456789012:model-package/sagedrop-pets/3",
        "ModelPackageVersion": 3,
    }
    return request, package


def test_model_package_and_model_requests(settings, upload):
    request, package = registered_version(settings, upload)
    assert_valid("CreateModelPackage", request)
    assert aws_limits.description_problem("description", request["ModelPackageDescription"]) is None
    assert len(request["ModelPackageDescription"]) == aws_limits.DESCRIPTION_MAX
    assert aws_limits.metadata_problem(request["CustomerMetadataProperties"]) is None
    assert request["CustomerMetadataProperties"][vocabulary.META_RULES] == "Overfit=IssuesFound"
    assert (
        request["ClientToken"] == request["CustomerMetadataProperties"][vocabulary.META_DEBUG_JOB]
    )
    assert_valid(
        "CreateModelPackageGroup",
        registry_requests.model_package_group_request("sagedrop-pets", "pets"),
    )
    model = registry_requests.model_request(settings, package)
    assert_valid("CreateModel", model)
    env = model["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_PROGRAM"] == "inference.py"
    assert env["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert env["SAGEDROP_MODEL_VERSION"] == "3"
    # isolated: the graph's runtime comes in the artifact (code/wheels), never from an index
    assert model["EnableNetworkIsolation"] is True
    online = registry_requests.model_request(replace(settings, network_isolation=False), package)
    assert online["EnableNetworkIsolation"] is False
    assert {"Key": vocabulary.TAG_TEST_ACCURACY, "Value": "0.912300"} in model["Tags"]
    assert {"Key": vocabulary.TAG_MODEL_PACKAGE, "Value": package["ModelPackageArn"]} in model[
        "Tags"
    ]
    config = registry_requests.endpoint_config_request(
        "sdd-pets-1", model["ModelName"], "instance:ml.m5.large:2"
    )
    assert_valid("CreateEndpointConfig", config)
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2
    assert_valid(
        "CreateEndpoint",
        registry_requests.create_endpoint_request("sagedrop-pets", config["EndpointConfigName"]),
    )
    assert_valid(
        "UpdateEndpoint",
        registry_requests.update_endpoint_request("sagedrop-pets", config["EndpointConfigName"]),
    )


def test_a_serverless_dataset_gets_a_serverless_endpoint_config(settings, upload):
    chosen = settings.with_dataset_overrides(
        {"serverless": {"memory_mb": 2048, "max_concurrency": 4}}
    )
    assert sagemaker_requests.serving_tag(chosen) == "serverless:2048:4"
    tuning = sagemaker_requests.tuning_job_request(chosen, upload)
    assert {"Key": vocabulary.TAG_SERVING, "Value": "serverless:2048:4"} in tuning["Tags"]
    config = registry_requests.endpoint_config_request("sdd-pets-1", "m", "serverless:2048:4")
    assert_valid("CreateEndpointConfig", config)
    [variant] = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 4}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    assert aws_limits.serverless_problem(variant["ServerlessConfig"]) is None


@pytest.mark.parametrize(
    ("serverless", "message"),
    [
        ({"memory_mb": 1500, "max_concurrency": 2}, "MemorySizeInMB must be one of 1024, 2048"),
        ({"memory_mb": 8192, "max_concurrency": 2}, "MemorySizeInMB must be one of"),
        ({"memory_mb": 2048, "max_concurrency": 0}, "MaxConcurrency must be between 1 and 200"),
        ({"memory_mb": 2048, "max_concurrency": 201}, "MaxConcurrency must be between 1 and 200"),
        ({"memory_mb": 2048, "max_concurrency": 50}, "above this stage's SERVERLESS_CONCURRENCY"),
        ({"memory_mb": 2048}, "exactly memory_mb and max_concurrency"),
        ({"memory_mb": "2048", "max_concurrency": 2}, "serverless.memory_mb must be a whole"),
        (True, "must be false or an object"),
    ],
)
def test_a_dataset_cannot_ask_for_a_serverless_endpoint_beyond_the_limits(
    settings, serverless, message
):
    with pytest.raises(SettingsError, match=message):
        settings.with_dataset_overrides({"serverless": serverless})


def test_approval_and_serverless_settings_from_the_environment():
    settings = Settings.from_env({"MODEL_APPROVAL": "manual", "SERVERLESS_MEMORY_MB": "1024",
                                  "SERVERLESS_MAX_CONCURRENCY": "3"})  # fmt: skip
    assert settings.model_approval == "manual"
    assert sagemaker_requests.serving_tag(settings) == "serverless:1024:3"
    assert sagemaker_requests.serving_tag(
        settings.with_dataset_overrides({"serverless": False})
    ) == ("instance:ml.m5.large:1")
    with pytest.raises(SettingsError, match="MODEL_APPROVAL 'sometimes' is not one of auto"):
        Settings.from_env({"MODEL_APPROVAL": "sometimes"})
    with pytest.raises(SettingsError, match="SERVERLESS_CONCURRENCY_LIMIT must be between"):
        Settings.from_env({"SERVERLESS_CONCURRENCY_LIMIT": "500"})


def test_names_are_deterministic_and_within_limits():
    a = naming.tuning_job_name("b", "datasets/a-very-long-dataset-name-indeed.zip", '"etag1"')
    assert a == naming.tuning_job_name("b", "datasets/a-very-long-dataset-name-indeed.zip", "etag1")
    assert a != naming.tuning_job_name("b", "datasets/a-very-long-dataset-name-indeed.zip", "etag2")
    assert len(a) <= 32 and a.startswith("sdt-")
    debug = naming.debug_job_name(a)
    assert naming.tuning_job_of(debug) == a
    assert naming.is_pipeline_debug_job(debug)
    assert not naming.is_pipeline_debug_job(f"{a}-001-0a1b2c3d")  # a tuner trial
    assert naming.dataset_slug("datasets/Dog Images.zip") == "dog-images"
    assert naming.dataset_slug("datasets/###.zip") == "dataset"


def test_settings_from_environment_and_dataset_overrides():
    settings = Settings.from_env(
        {
            "DATA_BUCKET": "d",
            "TUNING_MAX_JOBS": "4",
            "GATE_BLOCKING_RULES": "Overfit, ExplodingTensor",
        }
    )
    assert settings.data_bucket == "d" and settings.tuning_max_jobs == 4
    assert settings.gate_blocking_rules == ("Overfit", "ExplodingTensor")
    changed = settings.with_dataset_overrides({"epochs": 3, "hyperparameters": {"image-size": 64}})
    assert changed.tuning_epochs == 3
    assert changed.static_hyperparameters == {"image-size": "64"}
    with pytest.raises(SettingsError, match="unknown key"):
        settings.with_dataset_overrides({"epoch": 3})
    with pytest.raises(SettingsError, match="'max_jobs' must be a int"):
        settings.with_dataset_overrides({"max_jobs": "many"})
    with pytest.raises(SettingsError, match="parallel jobs"):
        settings.with_dataset_overrides({"max_parallel_jobs": 9})
    with pytest.raises(SettingsError, match="TUNING_MAX_JOBS"):
        Settings.from_env({"TUNING_MAX_JOBS": "lots"})
    with pytest.raises(SettingsError, match="log-scaled"):
        Settings(
            tuning_ranges={
                "momentum": {"type": "continuous", "min": 0, "max": 0.9, "scaling": "Logarithmic"}
            }
        )


def test_values_are_json_encoded_as_the_sagemaker_sdk_sends_them(settings, upload):
    """SageMaker's training toolkit JSON-decodes every value; numbers stay numbers, text
    becomes a JSON string, and rules a JSON string holding their JSON."""
    own = settings.with_dataset_overrides(
        {"hyperparameters": {"augment": "crop", "image-size": 64, "weight-decay": 0.001}}
    )
    static = sagemaker_requests.static_hyperparameters(own)
    assert static["augment"] == '"crop"' and static["image-size"] == "64"
    assert static["weight-decay"] == "0.001" and static["epochs"] == str(own.tuning_epochs)
    # isolated (the default): the code is the "code" channel, unpacked in the container
    assert (
        json.loads(static["sagemaker_submit_directory"]) == sagemaker_requests.CONTAINER_CODE_PATH
    )
    online = sagemaker_requests.static_hyperparameters(replace(own, network_isolation=False))
    assert json.loads(online["sagemaker_submit_directory"]) == own.code_s3_uri


def test_the_length_limit_counts_the_encoding(settings):
    """Rules that fit SageMaker's 2,500 characters as written but not once encoded."""
    params, index = {}, 0
    while len(json.dumps({"Overfit": params}, separators=(",", ":"))) < 2300:
        params[f"p{index}"] = 1
        index += 1
    assert len(json.dumps({"Overfit": params}, separators=(",", ":"))) <= 2500
    with pytest.raises(SettingsError, match="longer than SageMaker allows once encoded"):
        settings.with_dataset_overrides({"hyperparameters": {"rules": {"Overfit": params}}})
    with pytest.raises(SettingsError, match=r"DEBUG_RULES: .* once encoded"):
        Settings.from_env({"DEBUG_RULES": json.dumps({"Overfit": params})})


def test_a_retired_setting_is_refused_by_name():
    """ENDPOINT_NAME (one endpoint for every dataset) would otherwise be ignored silently."""
    with pytest.raises(SettingsError, match=r"ENDPOINT_NAME is no longer read: .*ENDPOINT_PREFIX"):
        Settings.from_env({"ENDPOINT_NAME": "sagedrop"})
    with pytest.raises(SettingsError, match="ENDPOINT_PREFIX: endpoint prefix"):
        Settings.from_env({"ENDPOINT_PREFIX": "x" * 45})


def test_the_debug_job_takes_the_serving_version_as_its_serving_channel(settings, upload):
    artifact = "s3://sagedrop-data/jobs/sdd-x/sdd-x/output/model.tar.gz"
    request = sagemaker_requests.debug_training_job_request(
        settings, upload, describe_tuning(settings, upload), None, artifact, "0.3"
    )
    assert_valid("CreateTrainingJob", request)
    [channel] = [c for c in request["InputDataConfig"] if c["ChannelName"] == "serving"]
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == artifact
    assert {"Key": vocabulary.TAG_MIN_CLASS_RECALL, "Value": "0.3"} in request["Tags"]
    without = sagemaker_requests.debug_training_job_request(
        settings, upload, describe_tuning(settings, upload)
    )
    assert [c["ChannelName"] for c in without["InputDataConfig"]] == ["training", "code"]


def test_a_dataset_may_raise_the_class_floor_never_lower_it(settings):
    floor = replace(settings, gate_min_class_recall=0.2)
    assert floor.with_dataset_overrides({"min_class_recall": 0.5}).gate_min_class_recall == 0.5
    with pytest.raises(SettingsError, match="may raise the floor, never lower it"):
        floor.with_dataset_overrides({"min_class_recall": 0.1})
    with pytest.raises(SettingsError, match="GATE_MIN_CLASS_RECALL must be between 0 and 1"):
        Settings.from_env({"GATE_MIN_CLASS_RECALL": "1.5"})


def test_a_datasets_leakage_choice_reaches_its_jobs_and_nothing_else(settings, upload):
    """``"leakage": "keep"`` in sagedrop.json is a static hyperparameter of the tuning job
    (and so of the debug job); it cannot touch the operator's leaked-fraction floor."""
    floor = replace(settings, gate_max_leaked_fraction=0.02)
    kept = floor.with_dataset_overrides({"leakage": "keep", "hyperparameters": {"seed": 3}})
    assert kept.gate_max_leaked_fraction == 0.02
    request = sagemaker_requests.tuning_job_request(kept, upload)
    assert_valid("CreateHyperParameterTuningJob", request)
    static = request["TrainingJobDefinition"]["StaticHyperParameters"]
    assert json.loads(static["leakage"]) == "keep" and json.loads(static["seed"]) == 3
    debug = sagemaker_requests.debug_training_job_request(
        kept, upload, describe_tuning(kept, upload)
    )
    assert json.loads(debug["HyperParameters"]["leakage"]) == "keep"
    with pytest.raises(SettingsError, match="'leakage' must be one of leave-out, keep"):
        settings.with_dataset_overrides({"leakage": "hide"})


def test_the_audit_settings_are_read_and_bounded():
    env = {"GATE_MAX_LEAKED_FRACTION": "0.05", "DATASET_MIN_CLASS_IMAGES": "10"}
    read = Settings.from_env(env)
    assert (read.gate_max_leaked_fraction, read.dataset_min_class_images) == (0.05, 10)
    assert Settings().gate_max_leaked_fraction is None  # off by default
    with pytest.raises(SettingsError, match="GATE_MAX_LEAKED_FRACTION must be between 0 and 1"):
        Settings.from_env({"GATE_MAX_LEAKED_FRACTION": "2"})
    with pytest.raises(SettingsError, match="DATASET_MIN_CLASS_IMAGES must be at least 1"):
        Settings.from_env({"DATASET_MIN_CLASS_IMAGES": "0"})


def test_an_isolated_stage_isolates_every_job_and_model(settings, upload):
    """Issue 22: with NETWORK_ISOLATION, tuning trials, the debug job and every model run
    with SageMaker's network isolation; their code arrives as the "code" channel (the
    toolkit unpacks it from there); off, neither."""
    request = sagemaker_requests.tuning_job_request(settings, upload)
    assert_valid("CreateHyperParameterTuningJob", request)
    definition = request["TrainingJobDefinition"]
    assert definition["EnableNetworkIsolation"] is True
    [code] = [c for c in definition["InputDataConfig"] if c["ChannelName"] == "code"]
    assert code["DataSource"]["S3DataSource"]["S3Uri"] == settings.code_s3_uri
    debug = sagemaker_requests.debug_training_job_request(
        settings, upload, describe_tuning(settings, upload)
    )
    assert_valid("CreateTrainingJob", debug)
    assert debug["EnableNetworkIsolation"] is True
    assert "code" in [c["ChannelName"] for c in debug["InputDataConfig"]]
    assert Settings.from_env({}).network_isolation is True  # AWS's default, as locally
    assert Settings.from_env({"NETWORK_ISOLATION": "false"}).network_isolation is False
    request = sagemaker_requests.tuning_job_request(
        replace(settings, network_isolation=False), upload
    )
    assert request["TrainingJobDefinition"]["EnableNetworkIsolation"] is False
    assert [c["ChannelName"] for c in request["TrainingJobDefinition"]["InputDataConfig"]] == [
        "training"
    ]
    with pytest.raises(SettingsError, match="NETWORK_ISOLATION"):
        Settings.from_env({"NETWORK_ISOLATION": "maybe"})
    weighted = replace(settings, weights_s3_uri="s3://sagedrop-data/code/weights/")
    request = sagemaker_requests.tuning_job_request(weighted, upload)
    assert_valid("CreateHyperParameterTuningJob", request)
    [weights] = [c for c in request["TrainingJobDefinition"]["InputDataConfig"]
                 if c["ChannelName"] == "weights"]  # fmt: skip
    assert weights["DataSource"]["S3DataSource"]["S3Uri"] == "s3://sagedrop-data/code/weights/"
    uri = Settings.from_env({"WHEELS_S3_URI": "s3://sagedrop-data/code/wheels/"}).wheels_s3_uri
    assert uri == "s3://sagedrop-data/code/wheels/"
    wheeled = replace(settings, wheels_s3_uri=uri)
    tuning = sagemaker_requests.tuning_job_request(wheeled, upload)
    debug = sagemaker_requests.debug_training_job_request(
        wheeled, upload, describe_tuning(wheeled, upload)
    )
    assert_valid("CreateHyperParameterTuningJob", tuning)
    assert_valid("CreateTrainingJob", debug)
    for definition in (tuning["TrainingJobDefinition"], debug):
        [wheels] = [c for c in definition["InputDataConfig"] if c["ChannelName"] == "wheels"]
        assert wheels["DataSource"]["S3DataSource"]["S3Uri"] == uri


def test_a_managed_mlflow_server_is_named_on_the_debug_job(settings, upload):
    """Issue 23: with MLFLOW_TRACKING_ARN, the debug job carries MlflowConfig (valid for
    botocore, and for the API reference's stricter name pattern, which botocore lacks)
    naming the experiment and run the pipeline records; without it, none."""
    import re

    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/sagedrop"
    tracked = replace(settings, mlflow_tracking_arn=arn)
    request = sagemaker_requests.debug_training_job_request(
        tracked, upload, describe_tuning(tracked, upload)
    )
    assert_valid("CreateTrainingJob", request)
    config = request["MlflowConfig"]
    assert config == {"MlflowResourceArn": arn, "MlflowExperimentName": "sagedrop-dog-images-v2",
                      "MlflowRunName": request["TrainingJobName"]}  # fmt: skip
    names = re.compile(r"[a-zA-Z0-9\-_./]+")  # AIMlflowConfig's, in the API reference
    assert names.fullmatch(config["MlflowExperimentName"]) and names.fullmatch(
        config["MlflowRunName"]
    )
    untracked = sagemaker_requests.debug_training_job_request(
        settings, upload, describe_tuning(settings, upload)
    )
    assert "MlflowConfig" not in untracked
    with pytest.raises(SettingsError, match="MLFLOW_TRACKING_ARN"):
        Settings.from_env({"MLFLOW_TRACKING_ARN": "arn:aws:s3:::not-mlflow"})
