"""The pipeline steps against moto (S3, SNS) and Stubbers that validate SageMaker calls."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.stub import ANY

from chalicelib import (
    flow,
    naming,
    predictions,
    registry,
    registry_requests,
    sagemaker_requests,
    vocabulary,
)
from chalicelib.gate import quality_gate
from chalicelib.s3_ranged import S3RangedFile
from sagedrop_contract import job_contract
from sagedrop_contract.dataset_rules import inspect_zip
from tests.helpers import evaluation_document, jpeg_bytes, layout
from tests.stubbed_aws import ARN, DATA, INFERENCE, debug_job, in_use


def test_hostile_zip_starts_nothing_and_says_why(cloud):
    etag = cloud.put_zip("datasets/evil.zip", {**layout(), "../../escape.jpg": b"x"})
    assert flow.dataset_uploaded(DATA, "datasets/evil.zip", etag, cloud.settings) == "rejected"
    cloud.stub.assert_no_pending_responses()  # no SageMaker call was made (or stubbed)
    [message] = cloud.messages()
    assert message["subject"] == "sagedrop dataset rejected: evil.zip"
    assert message["stage"] == "dataset" and message["status"] == "rejected"
    assert any("../../escape.jpg" in r for r in message["reasons"])


def test_valid_zip_starts_one_tuning_job_even_if_delivered_twice(cloud):
    etag = cloud.put_zip("datasets/pets.zip", layout(prefix="pets/"))
    upload = vocabulary.Upload(DATA, "datasets/pets.zip", etag)
    expected = sagemaker_requests.tuning_job_request(cloud.settings, upload)
    cloud.stub.add_response(
        "create_hyper_parameter_tuning_job",
        {"HyperParameterTuningJobArn": f"{ARN}:hyper-parameter-tuning-job/sdt-pets"},
        expected,
    )
    cloud.stub.add_client_error(
        "create_hyper_parameter_tuning_job",
        expected_params=expected,
        **in_use("CreateHyperParameterTuningJob"),
    )
    assert flow.dataset_uploaded(DATA, "datasets/pets.zip", etag, cloud.settings) == "started"
    assert flow.dataset_uploaded(DATA, "datasets/pets.zip", etag, cloud.settings) == "duplicate"
    [message] = cloud.messages()
    assert message["status"] == "started"
    assert message["jobs"]["tuning job"] == upload.tuning_job_name


def test_dataset_config_overrides_tuning_and_bad_config_is_rejected(cloud):
    members = {**layout(prefix="pets/"), "pets/sagedrop.json": b'{"max_jobs": 3, "epochs": 2}'}
    etag = cloud.put_zip("datasets/pets.zip", members)
    cloud.stub.add_response(
        "create_hyper_parameter_tuning_job",
        {"HyperParameterTuningJobArn": f"{ARN}:hyper-parameter-tuning-job/sdt-pets"},
    )
    assert flow.dataset_uploaded(DATA, "datasets/pets.zip", etag, cloud.settings) == "started"
    bad = {**layout(), "sagedrop.json": b'{"max_jobz": 3}'}
    etag = cloud.put_zip("datasets/bad.zip", bad)
    assert flow.dataset_uploaded(DATA, "datasets/bad.zip", etag, cloud.settings) == "rejected"
    rejected = [m for m in cloud.messages() if m["status"] == "rejected"]
    assert "unknown key(s) max_jobz" in rejected[0]["reasons"][0]


def test_zip_is_judged_through_a_few_ranged_reads(cloud):
    members = layout(n=40)
    members["train/001.cat/big.jpg"] = bytes(range(256)) * 16_000  # 4 MB of incompressible-ish data
    cloud.put_zip("datasets/big.zip", members)
    source = S3RangedFile(cloud.s3, DATA, "datasets/big.zip", block_size=256 * 1024)
    from sagedrop_contract.dataset_rules import inspect_zip

    report = inspect_zip(source)
    assert report.usable and report.image_count() == 241
    assert source.requests <= 2  # the directory lives in the last block; no member data read


def tuning_description(cloud, status="Completed", best=True):
    upload = vocabulary.Upload(DATA, "datasets/pets.zip", '"e1"')
    request = sagemaker_requests.tuning_job_request(cloud.settings, upload)
    response = {
        "HyperParameterTuningJobName": request["HyperParameterTuningJobName"],
        "HyperParameterTuningJobArn": f"{ARN}:hyper-parameter-tuning-job/x",
        "HyperParameterTuningJobConfig": request["HyperParameterTuningJobConfig"],
        "TrainingJobDefinition": request["TrainingJobDefinition"],
        "HyperParameterTuningJobStatus": status,
        "CreationTime": "2026-11-24T10:00:00Z",
        "TrainingJobStatusCounters": {},
        "ObjectiveStatusCounters": {},
    }
    if best:
        response["BestTrainingJob"] = {
            "TrainingJobName": request["HyperParameterTuningJobName"] + "-002-0a1b2c3d",
            "TrainingJobArn": f"{ARN}:training-job/y",
            "CreationTime": "2026-11-24T10:00:00Z",
            "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"lr": "0.02", "momentum": "0.9", "batch-size": "32"},
            "FinalHyperParameterTuningJobObjectiveMetric": {
                "MetricName": "valid_accuracy",
                "Value": 0.95,
            },
        }
    if status != "Completed":
        response["FailureReason"] = "All training jobs failed"
    return response


def test_tuning_completed_starts_the_debug_job(cloud):
    described = tuning_description(cloud)
    name = described["HyperParameterTuningJobName"]
    cloud.stub.add_response(
        "describe_hyper_parameter_tuning_job", described, {"HyperParameterTuningJobName": name}
    )
    serverless = {"Key": vocabulary.TAG_SERVING, "Value": "serverless:2048:4"}
    cloud.stub.add_response(
        "list_tags",
        {"Tags": [serverless]},
        {"ResourceArn": described["HyperParameterTuningJobArn"]},
    )
    upload = vocabulary.Upload(DATA, "datasets/pets.zip", "")
    expected = sagemaker_requests.debug_training_job_request(
        cloud.settings, upload, described, "serverless:2048:4"
    )
    assert serverless in expected["Tags"]  # the dataset's choice travels to the gate
    cloud.stub.add_response(
        "create_training_job",
        {"TrainingJobArn": f"{ARN}:training-job/sdd-pets"},
        expected,
    )
    detail = {"HyperParameterTuningJobName": name, "HyperParameterTuningJobStatus": "Completed"}
    assert flow.tuning_finished(detail, cloud.settings) == "started"
    [message] = cloud.messages()
    assert message["jobs"]["debug job"] == naming.debug_job_name(name)
    assert message["metrics"] == {"best valid_accuracy": 0.95}


def test_failed_tuning_notifies_with_the_reason(cloud):
    described = tuning_description(cloud, status="Failed", best=False)
    cloud.stub.add_response("describe_hyper_parameter_tuning_job", described)
    detail = {
        "HyperParameterTuningJobName": described["HyperParameterTuningJobName"],
        "HyperParameterTuningJobStatus": "Failed",
    }
    cloud.stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job",
        {
            "TrainingJobSummaries": [
                {
                    "TrainingJobName": "sdt-pets-17c1cf2d-001-0a1b2c3d",
                    "TrainingJobArn": f"{ARN}:training-job/sdt-pets-17c1cf2d-001-0a1b2c3d",
                    "CreationTime": "2026-11-20T10:00:00Z",
                    "TrainingJobStatus": "Failed",
                    "TunedHyperParameters": {"lr": "0.01"},
                    "FailureReason": "ValueError: no readable image in 'train': 24 of 24 "
                    "files could not be decoded",
                }
            ]
        },
        {
            "HyperParameterTuningJobName": described["HyperParameterTuningJobName"],
            "StatusEquals": "Failed",
            "SortBy": "CreationTime",
            "SortOrder": "Ascending",
            "MaxResults": 1,
        },
    )
    assert flow.tuning_finished(detail, cloud.settings) == "failed"
    # issue 19: a dataset whose every image is unreadable was told only "no job succeeded"
    assert cloud.messages()[0]["failure_reason"] == (
        "All training jobs failed; the first failed trial: ValueError: no readable image in "
        "'train': 24 of 24 files could not be decoded"
    )


@pytest.mark.parametrize(
    "detail",
    [
        {"TrainingJobName": "sdt-pets-1234abcd-001-0a1b2c3d", "TrainingJobStatus": "Completed"},
        {"TrainingJobName": "someone-elses-job", "TrainingJobStatus": "Completed"},
        {"TrainingJobName": "sdd-pets-1234abcd", "TrainingJobStatus": "InProgress"},
    ],
)
def test_unrelated_training_events_are_ignored(cloud, detail):
    assert flow.training_finished(detail, cloud.settings) == "ignored"
    assert cloud.messages() == []


SERVING_ARTIFACT = f"s3://{DATA}/jobs/sdd-pets-0000aaaa/sdd-pets-0000aaaa/output/model.tar.gz"


def endpoint_description(status: str = "InService") -> dict:
    """DescribeEndpoint of sagedrop-pets with the config 'old-config', in ``status``."""
    return {
        "EndpointName": "sagedrop-pets",
        "EndpointArn": f"{ARN}:endpoint/sagedrop-pets",
        "EndpointConfigName": "old-config",
        "EndpointStatus": status,
        "CreationTime": "2026-11-20T10:00:00Z",
        "LastModifiedTime": "2026-11-20T10:00:00Z",
    }


def stub_serving_endpoint(cloud):
    """DescribeEndpoint: the endpoint exists and serves the config 'old-config'."""
    cloud.stub.add_response("describe_endpoint", endpoint_description())


def serving_model(cloud, package_version: int | None, tags=()):
    """DescribeEndpointConfig, DescribeModel and ListTags of the model serving 'old-config'
    (registered as ``package_version``, or from before the registry)."""
    cloud.stub.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": "old-config",
            "EndpointConfigArn": f"{ARN}:endpoint-config/old-config",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "old-model"}],
            "CreationTime": "2026-11-20T10:00:00Z",
        },
    )
    cloud.stub.add_response(
        "describe_model",
        {
            "ModelName": "old-model",
            "ModelArn": f"{ARN}:model/old-model",
            "CreationTime": "2026-11-20T10:00:00Z",
            "PrimaryContainer": {"Image": "img", "ModelDataUrl": SERVING_ARTIFACT},
        },
    )
    tags = list(tags)
    if package_version is not None:
        package = f"{ARN}:model-package/sagedrop-pets/{package_version}"
        tags.append({"Key": vocabulary.TAG_MODEL_PACKAGE, "Value": package})
    cloud.stub.add_response("list_tags", {"Tags": tags})


def serving(cloud, accuracy, same_classes=True):
    """The pets endpoint serves a model of ``accuracy`` (of the same classes, or not)."""
    stub_serving_endpoint(cloud)
    zipped = cloud.s3.get_object(Bucket=DATA, Key="datasets/pets.zip")["Body"].read()
    classes = inspect_zip(io.BytesIO(zipped)).classes if same_classes else ["other"]
    tags = [
        {"Key": vocabulary.TAG_TEST_ACCURACY, "Value": f"{accuracy:.6f}"},
        {"Key": vocabulary.TAG_CLASSES, "Value": registry_requests.classes_digest(classes)},
    ]
    serving_model(cloud, None, tags)


def training_tags(cloud, tags=()):
    """ListTags of the debug job: its sagedrop:serving tag (none: the stage's setting)."""
    cloud.stub.add_response("list_tags", {"Tags": list(tags)})


def gate(cloud, name, settings=None) -> str:
    detail = {"TrainingJobName": name, "TrainingJobStatus": "Completed"}
    return flow.training_finished(detail, settings or cloud.settings)


def versions(cloud) -> list[registry.Version]:
    return registry.versions(cloud.registry, "sagedrop-pets")


def approval_event(cloud, version: int, status: str, settings=None) -> str:
    """The "SageMaker Model Package State Change" event for one version."""
    [package] = [v for v in versions(cloud) if v.number == version]
    detail = {
        "ModelPackageGroupName": "sagedrop-pets",
        "ModelPackageArn": package.arn,
        "ModelPackageVersion": version,
        "ModelApprovalStatus": status,
    }
    return flow.model_package_changed(detail, settings or cloud.settings)


def test_gate_registers_a_worse_model_as_rejected(cloud):
    name, described = debug_job(
        cloud,
        0.80,
        [{"RuleConfigurationName": "VanishingGradient", "RuleEvaluationStatus": "NoIssuesFound"}],
    )
    cloud.stub.add_response("describe_training_job", described, {"TrainingJobName": name})
    serving(cloud, 0.90)
    training_tags(cloud)
    assert gate(cloud, name) == "blocked"
    [message] = cloud.messages()
    assert message["decision"] == "blocked"
    assert "worse than the serving model's 0.9000" in message["reasons"][0]
    [version] = versions(cloud)
    assert (version.number, version.approval, version.debug_job) == (1, "Rejected", name)
    assert "worse than the serving model's 0.9000" in version.description
    assert version.test_accuracy == 0.8
    assert version.rules.startswith("VanishingGradient=NoIssuesFound ExplodingTensor=")
    # a Rejected version deploys nothing (and nothing serves it, so nothing is kept)
    missing_endpoint(cloud)
    assert approval_event(cloud, 1, "Rejected") == "none-approved"


def test_a_repeated_gate_event_registers_one_version(cloud):
    name, described = debug_job(cloud, 0.95, [])
    cloud.stub.add_response("describe_training_job", described)
    missing_endpoint(cloud)
    training_tags(cloud)
    assert gate(cloud, name) == "approved"
    cloud.stub.add_response("describe_training_job", described)
    assert gate(cloud, name) == "duplicate"
    assert [v.number for v in versions(cloud)] == [1]
    assert len(cloud.messages()) == 1


def test_gate_blocks_on_a_blocking_rule_and_a_good_model_is_deployed(cloud):
    name, described = debug_job(
        cloud,
        0.95,
        [
            {
                "RuleConfigurationName": "ExplodingTensor",
                "RuleEvaluationStatus": "IssuesFound",
                "StatusDetails": "NaN in fc.weight at step 12",
            }
        ],
    )
    cloud.stub.add_response("describe_training_job", described)
    serving(cloud, 0.90)
    training_tags(cloud)
    assert gate(cloud, name) == "blocked"
    assert "NaN in fc.weight" in cloud.messages()[0]["reasons"][0]

    name, described = debug_job(cloud, 0.95, [], name="sdd-pets-5678abcd")
    cloud.stub.add_response("describe_training_job", described)
    serving(cloud, 0.90)
    training_tags(cloud)
    assert gate(cloud, name) == "approved"
    [message] = cloud.messages()
    assert message["status"] == "approved" and "version 2 of sagedrop-pets" in message["summary"]
    [good, blocked] = versions(cloud)
    assert (good.approval, blocked.approval) == ("Approved", "Rejected")
    package = registry.describe(cloud.registry, good.arn)
    model = registry_requests.model_request(cloud.settings, package)
    config = registry_requests.endpoint_config_request(
        name, model["ModelName"], "instance:ml.m5.large:1"
    )
    assert model["PrimaryContainer"]["Environment"]["SAGEDROP_MODEL_VERSION"] == "2"
    stub_serving_endpoint(cloud)
    cloud.stub.add_response("create_model", {"ModelArn": f"{ARN}:model/new-model"}, model)
    cloud.stub.add_response(
        "create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/c"}, config
    )
    serving_model(cloud, package_version=None)
    cloud.stub.add_response(
        "update_endpoint",
        {"EndpointArn": f"{ARN}:endpoint/sagedrop-pets"},
        registry_requests.update_endpoint_request("sagedrop-pets", config["EndpointConfigName"]),
    )
    assert approval_event(cloud, 2, "Approved") == "updating"
    [message] = cloud.messages()
    assert (message["stage"], message["status"]) == ("deploy", "deploying")
    assert message["decision"] == "serve version 2 (updating endpoint)"


def test_endpoint_states_in_both_spellings(cloud):
    for status in ("InService", "IN_SERVICE"):
        assert (
            flow.endpoint_changed(
                {"EndpointName": "sagedrop-pets", "EndpointStatus": status}, cloud.settings
            )
            == "ready"
        )
    assert (
        flow.endpoint_changed(
            {"EndpointName": "other", "EndpointStatus": "InService"}, cloud.settings
        )
        == "ignored"
    )
    failed = {
        "EndpointName": "sagedrop-pets",
        "EndpointStatus": "FAILED",
        "FailureReason": "no capacity",
    }
    assert flow.endpoint_changed(failed, cloud.settings) == "failed"
    assert [m["status"] for m in cloud.messages()] == ["ready", "ready", "failed"]


def test_image_prediction_written_next_to_the_image(cloud):
    cloud.s3.put_object(Bucket=INFERENCE, Key="images/pets/cat 1.jpg", Body=jpeg_bytes())
    answer = json.dumps(
        {
            "predictions": [{"label": "cat", "index": 0, "probability": 0.9}],
            "model": {"backbone": "resnet18"},
        }
    ).encode()
    cloud.runtime_stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
        {
            "EndpointName": "sagedrop-pets",
            "ContentType": "image/jpeg",
            "Accept": "application/json",
            "Body": ANY,
        },
    )
    assert flow.image_uploaded(INFERENCE, "images/pets/cat 1.jpg", cloud.settings) == "predicted"
    written = json.loads(
        cloud.s3.get_object(Bucket=INFERENCE, Key="images/pets/cat 1.jpg.json")["Body"].read()
    )
    assert written["predictions"][0]["label"] == "cat" and written["endpoint"] == "sagedrop-pets"
    assert written["latency_ms"] >= 0


def failed_prediction(cloud, key: str, body: bytes, code: str, message: str, status: int):
    """Drop ``key``; InvokeEndpoint answers with that error; the image's .error.json."""
    cloud.s3.put_object(Bucket=INFERENCE, Key=key, Body=body)
    cloud.runtime_stub.add_client_error(
        "invoke_endpoint",
        service_error_code=code,
        service_message=message,
        http_status_code=status,
    )
    assert flow.image_uploaded(INFERENCE, key, cloud.settings) == "error"
    return json.loads(cloud.s3.get_object(Bucket=INFERENCE, Key=f"{key}.error.json")["Body"].read())


def test_failed_invocation_writes_an_error_file(cloud):
    message = "cannot decode the image: not a recognised image format"
    error = failed_prediction(
        cloud, "images/pets/bad.png", b"not a png", "ModelError", message, 424
    )
    assert "ModelError" in error["error"] and "not a recognised image" in error["error"]


MISSING_ENDPOINT = {
    "service_error_code": "ValidationException",
    "service_message": 'Could not find endpoint "sagedrop-pets".',
    "http_status_code": 400,
}


def missing_endpoint(cloud):
    cloud.stub.add_client_error("describe_endpoint", **MISSING_ENDPOINT)


def stub_first_deployment(cloud):
    """No endpoint yet: model, config, then CreateEndpoint."""
    missing_endpoint(cloud)
    cloud.stub.add_response("create_model", {"ModelArn": f"{ARN}:model/m"})
    cloud.stub.add_response(
        "create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/c"}
    )
    cloud.stub.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/sagedrop-pets"})


def test_gate_reads_verdicts_from_metrics_even_without_the_archive(cloud):
    """The verdict comes from FinalMetricDataList; a missing output.tar.gz only costs the
    details, and the notice says where to look."""
    issue = {"RuleConfigurationName": "VanishingGradient", "RuleEvaluationStatus": "IssuesFound"}
    name, described = debug_job(cloud, 0.95, [issue], archive=False)
    cloud.stub.add_response("describe_training_job", described)
    serving(cloud, 0.90)
    training_tags(cloud)
    assert gate(cloud, name) == "blocked"
    reasons = cloud.messages()[0]["reasons"]
    assert "VanishingGradient found issues: see rules.json and report.html in s3://" in reasons[0]
    assert "output.tar.gz cannot be read" in reasons[-1]


def test_non_blocking_rule_issues_are_reported_but_deploy(cloud):
    rules = [
        {
            "RuleConfigurationName": "Overfit",
            "RuleEvaluationStatus": "IssuesFound",
            "StatusDetails": "epoch 3: ratio 0.4 > 0.1",
        },
        {"RuleConfigurationName": "VanishingGradient", "RuleEvaluationStatus": "NoIssuesFound"},
    ]
    name, described = debug_job(cloud, 0.95, rules)
    cloud.stub.add_response("describe_training_job", described)
    missing_endpoint(cloud)
    training_tags(cloud)
    assert gate(cloud, name) == "approved"
    reasons = cloud.messages()[0]["reasons"]
    assert "non-blocking rules found issues: Overfit" in reasons
    package = registry.describe(cloud.registry, versions(cloud)[0].arn)
    rules_uri = package["ModelMetrics"]["ModelQuality"]["Constraints"]["S3Uri"]
    key = rules_uri.removeprefix(f"s3://{DATA}/")
    copied = json.loads(cloud.s3.get_object(Bucket=DATA, Key=key)["Body"].read())
    assert copied[0]["StatusDetails"] == "epoch 3: ratio 0.4 > 0.1"
    statistics = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    key = statistics.removeprefix(f"s3://{DATA}/")
    quality = json.loads(cloud.s3.get_object(Bucket=DATA, Key=key)["Body"].read())
    assert quality["multiclass_classification_metrics"]["accuracy"]["value"] == 0.95


def test_gate_refuses_a_debug_job_whose_verdicts_were_lost(cloud):
    """A job that ran rules and printed no rule_<Name> line (a changed log format, a
    crashed session) would otherwise deploy unchecked: it is registered Rejected."""
    name, described = debug_job(cloud, 0.99, [], reported_only=True)
    cloud.stub.add_response("describe_training_job", described)
    missing_endpoint(cloud)
    training_tags(cloud)
    assert gate(cloud, name) == "blocked"
    [message] = cloud.messages()
    assert message["reasons"][0].startswith(
        f"the debug job ran {len(job_contract.RULE_NAMES)} rule(s) and reported no verdict"
    )
    assert [v.approval for v in versions(cloud)] == ["Rejected"]


def test_gate_refuses_when_a_blocking_rule_reported_nothing(cloud):
    others = [
        {"RuleConfigurationName": n, "RuleEvaluationStatus": "NoIssuesFound"}
        for n in job_contract.RULE_NAMES
        if n != "ExplodingTensor"
    ]
    name, described = debug_job(cloud, 0.99, others, reported_only=True)
    cloud.stub.add_response("describe_training_job", described)
    missing_endpoint(cloud)
    training_tags(cloud)
    assert gate(cloud, name) == "blocked"
    assert (
        "blocking rule(s) ran but reported no verdict: ExplodingTensor"
        in (cloud.messages()[0]["reasons"][0])
    )


@pytest.mark.parametrize(
    ("blocking", "result", "reason"),
    [
        ((), "approved", "no rules ran (the job's rules setting turned them all off)"),
        (
            ("VanishingGradient", "ExplodingTensor"),
            "blocked",
            "blocking rule(s) did not run: VanishingGradient, ExplodingTensor (the job's "
            "rules setting turned them off), so the model is not deployed unchecked",
        ),
    ],
)
def test_gate_expects_no_verdict_from_rules_the_job_turned_off(cloud, blocking, result, reason):
    """The job's own rules setting (SDK-encoded, as requests sends it) says which rules
    ran: all turned off, none is expected. With no blocking rules the minimum accuracy
    alone decides; a blocking rule that did not run blocks (issue 19: an uploader's
    settings switched off the operator's rules and a model at test loss 1e25 deployed)."""
    off = json.dumps(dict.fromkeys(job_contract.RULE_NAMES, False))
    hyperparameters = {"debug": '"true"', "rules": json.dumps(off)}
    name, described = debug_job(
        cloud, 0.99, [], reported_only=True, hyperparameters=hyperparameters
    )
    cloud.stub.add_response("describe_training_job", described)
    missing_endpoint(cloud)
    training_tags(cloud)
    assert gate(cloud, name, replace(cloud.settings, gate_blocking_rules=blocking)) == result
    assert reason in cloud.messages()[0]["reasons"]


def test_gate_does_not_mistake_access_denied_for_no_endpoint(cloud):
    name, described = debug_job(cloud, 0.95, [])
    cloud.stub.add_response("describe_training_job", described)
    cloud.stub.add_client_error(
        "describe_endpoint",
        service_error_code="AccessDeniedException",
        service_message="not authorized",
        http_status_code=400,
    )
    with pytest.raises(ClientError, match="AccessDenied"):
        gate(cloud, name)
    assert cloud.messages() == []  # nothing registered, nothing claimed
    assert versions(cloud) == []


def test_first_model_creates_the_endpoint(cloud):
    name, described = debug_job(cloud, 0.95, [])
    cloud.stub.add_response("describe_training_job", described)
    missing_endpoint(cloud)
    training_tags(cloud)
    assert gate(cloud, name) == "approved"
    assert "no model is serving yet" in cloud.messages()[0]["reasons"]
    stub_first_deployment(cloud)
    assert approval_event(cloud, 1, "Approved") == "creating"
    assert cloud.messages()[0]["summary"] == (
        "Endpoint sagedrop-pets creating to serve version 1 of pets."
    )


def test_manual_approval_deploys_on_approval_only(cloud):
    manual = replace(cloud.settings, model_approval="manual")
    name, described = debug_job(cloud, 0.95, [])
    cloud.stub.add_response("describe_training_job", described)
    missing_endpoint(cloud)
    training_tags(cloud)
    assert gate(cloud, name, manual) == "pending-approval"
    [message] = cloud.messages()
    assert "sagedrop approve pets --version 1" in message["summary"]
    assert versions(cloud)[0].approval == "PendingManualApproval"
    assert approval_event(cloud, 1, "PendingManualApproval", manual) == "ignored"
    cloud.stub.assert_no_pending_responses()  # nothing was deployed
    package = registry.describe(cloud.registry, versions(cloud)[0].arn)
    registry.set_approval(cloud.registry, package, "Approved", "looked fine")
    stub_first_deployment(cloud)
    assert approval_event(cloud, 1, "Approved", manual) == "creating"


def test_rejecting_the_serving_version_rolls_back_to_the_one_before(cloud):
    for job in ("sdd-pets-1111aaaa", "sdd-pets-2222bbbb"):
        name, described = debug_job(cloud, 0.95, [], name=job)
        cloud.stub.add_response("describe_training_job", described)
        missing_endpoint(cloud)
        training_tags(cloud)
        assert gate(cloud, name) == "approved"
    v2 = versions(cloud)[0]
    package = registry.describe(cloud.registry, v2.arn)
    registry.set_approval(cloud.registry, package, "Rejected", "rolled back to version 1")
    stub_serving_endpoint(cloud)  # serving version 2 on 'old-config'
    cloud.stub.add_response("create_model", {"ModelArn": f"{ARN}:model/m"})
    cloud.stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:ec/c"})
    serving_model(cloud, package_version=2)
    cloud.stub.add_response(
        "update_endpoint",
        {"EndpointArn": f"{ARN}:endpoint/sagedrop-pets"},
        registry_requests.update_endpoint_request(
            "sagedrop-pets", naming.endpoint_config_name("sdd-pets-1111aaaa")
        ),
    )
    cloud.messages()
    assert approval_event(cloud, 2, "Rejected") == "updating"
    [message] = cloud.messages()
    assert message["status"] == "rollback"
    assert "version 1 of pets: a rollback from version 2" in message["summary"]
    assert message["reasons"] == ["version 2 was rejected: rolled back to version 1"]


def test_gate_says_which_blocking_rules_could_not_be_evaluated():
    errored = [{"RuleConfigurationName": "VanishingGradient", "RuleEvaluationStatus": "Error"}]
    decision = quality_gate(errored, 0.9, None, ("VanishingGradient", "ExplodingTensor"), 0.01)
    assert decision.deploy
    assert "could not be evaluated (Error): VanishingGradient" in " ".join(decision.reasons)


def test_the_gate_never_compares_models_of_other_classes(cloud):
    """A worse accuracy on another class list answers another question: not compared."""
    name, described = debug_job(cloud, 0.70, [])
    cloud.stub.add_response("describe_training_job", described)
    serving(cloud, 0.99, same_classes=False)
    training_tags(cloud)
    assert gate(cloud, name) == "approved"
    reasons = " ".join(cloud.messages()[0]["reasons"])
    assert "not compared with the model serving sagedrop-pets (old-model): its classes differ" in (
        reasons
    )


def test_a_throttled_image_says_so_and_is_retried(cloud):
    """SageMaker's throttling (a serverless endpoint at its MaxConcurrency) is worth
    Lambda's retries; meanwhile the image's .error.json says why it has no answer."""
    cloud.s3.put_object(Bucket=INFERENCE, Key="images/pets/a.jpg", Body=jpeg_bytes())
    cloud.runtime_stub.add_client_error(
        "invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400
    )
    with pytest.raises(ClientError, match="ThrottlingException"):
        flow.image_uploaded(INFERENCE, "images/pets/a.jpg", cloud.settings)
    error = json.loads(
        cloud.s3.get_object(Bucket=INFERENCE, Key="images/pets/a.jpg.error.json")["Body"].read()
    )
    assert error["error"].startswith("ThrottlingException: ")
    assert "MaxConcurrency" in error["error"] and "retried" in error["error"]
    answer = json.dumps({"predictions": [], "model": {"version": 2}}).encode()
    cloud.runtime_stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
    )
    assert flow.image_uploaded(INFERENCE, "images/pets/a.jpg", cloud.settings) == "predicted"
    listed = cloud.s3.list_objects_v2(Bucket=INFERENCE, Prefix="images/pets/a.jpg.")
    assert [o["Key"] for o in listed["Contents"]] == ["images/pets/a.jpg.json"]


def test_an_image_outside_a_dataset_folder_is_told_which_datasets_serve(cloud):
    cloud.put_zip("datasets/pets.zip", layout())
    cloud.put_zip("datasets/Dog Images.zip", layout())
    cloud.s3.put_object(Bucket=INFERENCE, Key="images/cat.jpg", Body=jpeg_bytes())
    # DescribeEndpoint per dataset: sagedrop-dog-images is not found, sagedrop-pets serves
    missing = {
        "service_error_code": "ValidationException",
        "service_message": 'Could not find endpoint "sagedrop-dog-images".',
        "http_status_code": 400,
    }
    cloud.stub.add_client_error("describe_endpoint", **missing)
    stub_serving_endpoint(cloud)
    assert flow.image_uploaded(INFERENCE, "images/cat.jpg", cloud.settings) == "error"
    error = json.loads(
        cloud.s3.get_object(Bucket=INFERENCE, Key="images/cat.jpg.error.json")["Body"].read()
    )
    assert error["dataset"] is None and error["endpoint"] is None
    assert "images go under images/<dataset>/" in error["error"]
    assert "serving: pets (images/pets/)" in error["error"]


def test_an_image_for_a_dataset_that_serves_nothing_says_so(cloud):
    message = "Endpoint sagedrop-cars of account 123456789012 not found."
    missing = {**MISSING_ENDPOINT, "service_message": 'Could not find endpoint "sagedrop-cars".'}
    cloud.stub.add_client_error("describe_endpoint", **missing)
    error = failed_prediction(
        cloud, "images/cars/a.jpg", jpeg_bytes(), "ValidationError", message, 400
    )
    assert error["dataset"] == "cars" and error["endpoint"] == "sagedrop-cars"
    assert error["error"] == "no dataset named 'cars' is serving; no dataset is serving yet"


def test_an_unlistable_data_bucket_still_leaves_the_image_its_error_file(cloud):
    """The list of serving datasets is a courtesy: when it cannot be read, the image still
    gets its answer, and the answer says why the list is missing."""
    settings = replace(cloud.settings, data_bucket="no-such-bucket")
    cloud.s3.put_object(Bucket=INFERENCE, Key="images/cat.jpg", Body=jpeg_bytes())
    assert flow.image_uploaded(INFERENCE, "images/cat.jpg", settings) == "error"
    error = json.loads(
        cloud.s3.get_object(Bucket=INFERENCE, Key="images/cat.jpg.error.json")["Body"].read()
    )
    assert "the serving datasets cannot be listed (NoSuchBucket" in error["error"]


def _answer(cloud) -> None:
    answer = json.dumps({"predictions": [], "model": {"version": 1}}).encode()
    cloud.runtime_stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
    )


def _files(cloud, key: str) -> list[str]:
    listed = cloud.s3.list_objects_v2(Bucket=INFERENCE, Prefix=f"{key}.")
    return [o["Key"] for o in listed.get("Contents", [])]


def _error_file(cloud, key: str) -> dict:
    return json.loads(cloud.s3.get_object(Bucket=INFERENCE, Key=f"{key}.error.json")["Body"].read())


def test_a_throttled_image_last_attempt_writes_a_final_answer(cloud):
    """Issue 19: after the last of Lambda's attempts the error file promised a retry that
    never came. Each attempt is counted in the file; the last one says it is final."""
    key = "images/pets/a.jpg"
    cloud.s3.put_object(Bucket=INFERENCE, Key=key, Body=jpeg_bytes())
    for attempt in (1, 2, 3):
        cloud.runtime_stub.add_client_error(
            "invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400
        )
        if attempt < 3:
            with pytest.raises(ClientError, match="ThrottlingException"):
                flow.image_uploaded(INFERENCE, key, cloud.settings)
            error = _error_file(cloud, key)
            assert f"attempt {attempt} of 3" in error["error"] and "retried" in error["error"]
        else:
            assert flow.image_uploaded(INFERENCE, key, cloud.settings) == "error"
    final = _error_file(cloud, key)["error"]
    assert "no answer after 3 attempts, and it is not retried again" in final
    assert "this image is retried" not in final


def test_an_image_written_again_counts_its_attempts_afresh(cloud):
    key = "images/pets/a.jpg"
    cloud.s3.put_object(Bucket=INFERENCE, Key=key, Body=jpeg_bytes())
    cloud.runtime_stub.add_client_error(
        "invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400
    )
    with pytest.raises(ClientError):
        flow.image_uploaded(INFERENCE, key, replace(cloud.settings, image_attempts=2))
    cloud.s3.put_object(Bucket=INFERENCE, Key=key, Body=jpeg_bytes((1, 2, 3)))
    cloud.runtime_stub.add_client_error(
        "invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400
    )
    with pytest.raises(ClientError):  # attempt 1 of the new image, not 2 of the old one
        flow.image_uploaded(INFERENCE, key, replace(cloud.settings, image_attempts=2))
    assert _error_file(cloud, key)["attempt"]["number"] == 1


def test_an_image_waits_for_an_endpoint_coming_into_service(cloud, monkeypatch):
    """Issue 19: images queued while an endpoint was updating got a permanent error.
    An endpoint that is Creating or Updating is waited for, and the image answered."""
    monkeypatch.setattr(predictions, "POLL_SECONDS", 0)
    key = "images/pets/a.jpg"
    cloud.s3.put_object(Bucket=INFERENCE, Key=key, Body=jpeg_bytes())
    cloud.runtime_stub.add_client_error(
        "invoke_endpoint",
        service_error_code="ValidationError",
        service_message="Endpoint sagedrop-pets of account 123456789012 not found.",
        http_status_code=400,
    )
    for status in ("Creating", "InService"):
        cloud.stub.add_response("describe_endpoint", endpoint_description(status))
    _answer(cloud)
    assert flow.image_uploaded(INFERENCE, key, cloud.settings) == "predicted"
    assert _files(cloud, key) == [f"{key}.json"]


def test_an_endpoint_that_stays_creating_leaves_a_retried_then_final_answer(cloud, monkeypatch):
    monkeypatch.setattr(predictions, "ENDPOINT_WAIT_SECONDS", 0)  # the wait is over at once
    key = "images/pets/a.jpg"
    cloud.s3.put_object(Bucket=INFERENCE, Key=key, Body=jpeg_bytes())
    settings = replace(cloud.settings, image_attempts=2)
    for attempt in (1, 2):
        cloud.runtime_stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ValidationError",
            service_message="Endpoint sagedrop-pets of account 123456789012 not found.",
            http_status_code=400,
        )
        cloud.stub.add_response("describe_endpoint", endpoint_description("Creating"))
        if attempt == 1:
            with pytest.raises(predictions.EndpointNotServing):
                flow.image_uploaded(INFERENCE, key, settings)
            assert "sagedrop-pets is Creating" in _error_file(cloud, key)["error"]
        else:
            assert flow.image_uploaded(INFERENCE, key, settings) == "error"
    final = _error_file(cloud, key)["error"]
    assert final.startswith("sagedrop-pets is Creating, not yet in service; no answer after 2")


def test_an_image_over_the_payload_limit_gets_a_final_answer_without_a_call(cloud):
    """Issue 19: a 7 MB image was sent, met a broken pipe, was retried as transient and
    never answered. It is refused with a sentence before InvokeEndpoint."""
    key = "images/pets/big.png"
    cloud.s3.put_object(Bucket=INFERENCE, Key=key, Body=b"\0" * (predictions.MAX_INVOKE_BYTES + 1))
    assert flow.image_uploaded(INFERENCE, key, cloud.settings) == "error"
    assert "an endpoint takes at most 6,291,456 bytes" in _error_file(cloud, key)["error"]


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("a.gif", "image/gif"), ("a.webp", "image/webp"), ("a.tif", "image/tiff"),
     ("a.TIFF", "image/tiff"), ("a.Jpg", "image/jpeg"), ("a.bmp", "image/bmp")],
)  # fmt: skip
def test_every_image_type_training_reads_is_answered_in_any_case(cloud, name, content_type):
    key = f"images/pets/{name}"
    cloud.s3.put_object(Bucket=INFERENCE, Key=key, Body=jpeg_bytes())
    answer = json.dumps({"predictions": [], "model": {}}).encode()
    cloud.runtime_stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
        {"EndpointName": "sagedrop-pets", "ContentType": content_type,
         "Accept": "application/json", "Body": ANY},
    )  # fmt: skip
    assert flow.image_uploaded(INFERENCE, key, cloud.settings) == "predicted"


def test_the_answers_themselves_are_ignored(cloud):
    for key in ("images/pets/a.jpg.json", "images/pets/a.jpg.error.json", "images/pets/x.JSON"):
        assert flow.image_uploaded(INFERENCE, key, cloud.settings) == "ignored"
    assert not cloud.s3.list_objects_v2(Bucket=INFERENCE).get("Contents")


def test_a_model_error_reaches_the_answer_file_as_one_line(cloud):
    """Issue 19: the toolkit's 4xx body carries a traceback with host paths."""
    message = (
        'Received client error (400) from primary with message "cannot decode the image: '
        "not a recognised image format\nTraceback (most recent call last):\n  File "
        '"/opt/ml/model/code/inference.py", line 1\n". See the logs.'
    )
    error = failed_prediction(cloud, "images/pets/bad.png", b"x", "ModelError", message, 424)
    assert "\n" not in error["error"] and "Traceback" not in error["error"]
    assert "not a recognised image format" in error["error"]


# --- issue 20: the evaluation decides what the gate lets through ------------------------------
def _serving_channel(uri: str = SERVING_ARTIFACT) -> dict:
    source = {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
    return {
        "ChannelName": sagemaker_requests.SERVING_CHANNEL,
        "DataSource": {"S3DataSource": source},
    }


def _paired(new_only: int, serving_only: int, images: int = 200) -> dict:
    both_right = images - 20 - new_only - serving_only
    return {"status": "compared", "images": images, "both_right": both_right,
            "new_only_right": new_only, "serving_only_right": serving_only, "both_wrong": 20,
            "new_accuracy": (both_right + new_only) / images,
            "serving_accuracy": (both_right + serving_only) / images}  # fmt: skip


def _gate_with(
    cloud, evaluation, accuracy=0.9, serving_accuracy=None, channels=(), settings=None, audit=None
):
    name, described = debug_job(
        cloud, accuracy, [], evaluation=evaluation, channels=channels, audit=audit
    )
    cloud.stub.add_response("describe_training_job", described)
    if serving_accuracy is None:
        missing_endpoint(cloud)
    else:
        serving(cloud, serving_accuracy)
    training_tags(cloud)
    result = gate(cloud, name, settings)
    return result, cloud.messages()[0]


def test_tuning_hands_the_comparable_serving_version_to_the_debug_job(cloud):
    """The debug job receives the serving version's artifact (same dataset, same classes)
    as its ``serving`` channel, to evaluate it on its own test split."""
    cloud.put_zip("datasets/pets.zip", layout())
    described = tuning_description(cloud)
    cloud.stub.add_response("describe_hyper_parameter_tuning_job", described)
    cloud.stub.add_response("list_tags", {"Tags": []})
    serving(cloud, 0.9)
    upload = vocabulary.Upload(DATA, "datasets/pets.zip", "")
    expected = sagemaker_requests.debug_training_job_request(
        cloud.settings, upload, described, None, SERVING_ARTIFACT
    )
    assert expected["InputDataConfig"][-1]["ChannelName"] == "serving"
    cloud.stub.add_response("create_training_job", {"TrainingJobArn": f"{ARN}:training-job/d"},
                            expected)  # fmt: skip
    detail = {"HyperParameterTuningJobName": described["HyperParameterTuningJobName"],
              "HyperParameterTuningJobStatus": "Completed"}  # fmt: skip
    assert flow.tuning_finished(detail, cloud.settings) == "started"


def test_the_paired_gate_blocks_a_significantly_worse_version(cloud):
    evaluation = evaluation_document(0.80, paired=_paired(new_only=3, serving_only=20))
    result, message = _gate_with(cloud, evaluation, 0.80, 0.78, [_serving_channel()])
    assert result == "blocked"
    [reason] = [r for r in message["reasons"] if "significantly worse" in r]
    assert "on the same 200 test images, accuracy 0.8000 vs the serving version's 0.8850" in reason
    assert "3 image(s) only the new version gets right, 20 only the serving one" in reason
    assert "one-sided McNemar exact p = 0.000" in reason
    assert "decided by: paired (McNemar's exact test)" in message["reasons"]
    # the tolerance rule (0.80 vs 0.78: it would pass) did not decide
    assert not any("tolerance" in r for r in message["reasons"])


def test_the_paired_gate_passes_two_equal_versions_and_says_so(cloud):
    evaluation = evaluation_document(0.90, paired=_paired(new_only=6, serving_only=7))
    result, message = _gate_with(cloud, evaluation, 0.90, 0.95, [_serving_channel()])
    assert result == "approved"  # 0.90 vs 0.95 would fail the tolerance rule
    assert any("no significant difference from the serving version" in r
               for r in message["reasons"])  # fmt: skip
    assert "decided by: paired (McNemar's exact test)" in message["reasons"]


def test_a_comparison_with_a_version_no_longer_serving_falls_back_and_says_so(cloud):
    evaluation = evaluation_document(0.90, paired=_paired(new_only=6, serving_only=7))
    elsewhere = _serving_channel(f"s3://{DATA}/jobs/other/model.tar.gz")
    result, message = _gate_with(cloud, evaluation, 0.90, 0.95, [elsewhere])
    assert result == "blocked"
    assert "decided by: tolerance" in message["reasons"]
    assert any("no paired comparison: the version it was compared with no longer serves" in r
               for r in message["reasons"])  # fmt: skip


def test_an_unreadable_serving_artifact_falls_back_to_the_tolerance_rule(cloud):
    paired = {"status": "not-compared", "reason": "its artifact cannot be read: truncated"}
    result, message = _gate_with(cloud, evaluation_document(0.9, paired=paired), 0.9, 0.9)
    assert result == "approved"
    assert "no paired comparison: its artifact cannot be read: truncated" in message["reasons"]
    assert "decided by: tolerance" in message["reasons"]


def test_a_majority_class_model_on_imbalanced_data_is_blocked(cloud):
    """Issue 20: on a 1:100 dataset a model answering the majority class scored 0.99."""
    from sagedrop_training.evaluation import SplitOutcomes, evaluate

    true = np.array([0] * 198 + [1] * 2)
    constant = np.tile([0.99, 0.01], (200, 1))
    evaluation = evaluate(["common", "rare"], SplitOutcomes([f"i{i}" for i in range(200)],
                                                           true, constant))  # fmt: skip
    evaluation["paired"] = {
        "status": "not-compared",
        "reason": "no serving version was handed over",
    }
    result, message = _gate_with(cloud, evaluation, 0.99)
    assert result == "blocked"
    assert any("what answering 'common' for every image scores: a constant answer does as well"
               in r for r in message["reasons"])  # fmt: skip
    assert any("balanced accuracy 0.5000" in r and "is not above chance (0.5000 for 2" in r
               for r in message["reasons"])  # fmt: skip


def test_a_chance_level_200_class_model_is_blocked(cloud):
    labels = tuple(f"class{i:03d}" for i in range(200))
    evaluation = evaluation_document(0.005, labels=labels, n=400)
    result, message = _gate_with(cloud, evaluation, 0.005)
    assert result == "blocked"
    assert any("a constant answer does as well" in r for r in message["reasons"])


def test_the_per_class_floor_names_the_classes_below_it(cloud):
    from sagedrop_training.evaluation import SplitOutcomes, evaluate

    true = np.array([0] * 50 + [1] * 50 + [2] * 50)
    predicted = true.copy()
    predicted[50:80] = 2  # 30 of 50 "dog" images taken for "fox"
    evaluation = evaluate(["cat", "dog", "fox"], SplitOutcomes(
        [f"i{i}" for i in range(150)], true, np.eye(3)[predicted]))  # fmt: skip
    evaluation["paired"] = {
        "status": "not-compared",
        "reason": "no serving version was handed over",
    }
    floor = replace(cloud.settings, gate_min_class_recall=0.5)
    result, message = _gate_with(cloud, evaluation, 0.8, settings=floor)
    assert result == "blocked"
    assert ("1 class(es) have test recall below the floor 0.5000 (GATE_MIN_CLASS_RECALL): dog "
            "(0.4000, most often taken for fox)") in message["reasons"]  # fmt: skip
    assert message["metrics"]["test_macro_f1"] == pytest.approx(evaluation["overall"]["macro_f1"])
    assert "worst class: dog (recall 0.4000 on 50 test images)" in message["reasons"]


def test_a_job_without_an_evaluation_is_not_deployed_unchecked(cloud):
    result, message = _gate_with(cloud, False, 0.95)
    assert result == "blocked"
    assert any("the job wrote no readable evaluation.json" in r for r in message["reasons"])


def test_an_evaluation_over_the_gates_size_bound_is_refused_by_name(cloud, monkeypatch):
    from chalicelib import job_reports

    monkeypatch.setattr(job_reports, "MAX_MEMBER_BYTES", 1000)
    result, message = _gate_with(cloud, evaluation_document(0.95), 0.95)
    assert result == "blocked"
    assert any("evaluation.json is" in r and "over the gate's bound of 1,000: refused" in r
               for r in message["reasons"])  # fmt: skip


def test_the_versions_statistics_are_model_monitors_multiclass_layout(cloud):
    evaluation = evaluation_document(0.85, labels=("cat", "dog", "fox"), n=300)
    result, _ = _gate_with(cloud, evaluation, 0.85)
    assert result == "approved"
    [version] = versions(cloud)
    assert version.macro_f1 == pytest.approx(evaluation["overall"]["macro_f1"], abs=1e-6)
    assert version.worst_class.startswith(evaluation["worst_class"]["label"] + ": recall ")
    bucket, key = version.statistics.removeprefix("s3://").split("/", 1)
    statistics = json.loads(cloud.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    metrics = statistics["multiclass_classification_metrics"]
    assert statistics["dataset"]["item_count"] == 300
    matrix = metrics["confusion_matrix"]
    assert set(matrix) == {"cat", "dog", "fox"}
    assert sum(sum(row.values()) for row in matrix.values()) == 300
    assert metrics["accuracy"]["value"] == pytest.approx(0.85)  # the job's test_accuracy
    for name in ("accuracy", "weighted_recall", "weighted_precision", "weighted_f0_5",
                 "weighted_f1", "weighted_f2"):  # fmt: skip
        for key in (name, f"{name}_best_constant_classifier"):
            assert set(metrics[key]) == {"value", "standard_deviation"}, key
            assert isinstance(metrics[key]["standard_deviation"], float), key
    assert metrics["accuracy_best_constant_classifier"]["value"] == pytest.approx(1 / 3)
    assert version.evaluation.endswith("/reports/evaluation.json")


def test_mcnemar_exact_one_sided_p_values():
    from chalicelib.gate import mcnemar_worse_p

    assert mcnemar_worse_p(0, 5) == pytest.approx(1 / 32)
    assert mcnemar_worse_p(5, 5) == pytest.approx(638 / 1024)
    assert mcnemar_worse_p(0, 0) == 1.0
    assert mcnemar_worse_p(10, 0) == 1.0


# --- the data audit (issue 21) ----------------------------------------------------------------
def test_the_upload_notice_names_cross_split_copies_from_the_directory_alone(cloud, monkeypatch):
    """Byte-identical images in train and test are named from the central directory's
    CRC-32s and sizes: the Lambda reads no byte of any image."""
    members = layout(n=6)
    for i in range(3):
        members[f"test/001.cat/copy_{i}.jpg"] = members[f"train/001.cat/img_{i}.jpg"]
    big = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    members["train/002.dog/big.jpg"] = big  # member data far before the directory
    etag = cloud.put_zip("datasets/pets.zip", members)
    reads: list[tuple[int, int]] = []
    original = S3RangedFile.readinto

    def recording(self, buffer):
        start = self.tell()
        count = original(self, buffer)
        reads.append((start, start + count))
        return count

    monkeypatch.setattr(S3RangedFile, "readinto", recording)
    cloud.stub.add_response(
        "create_hyper_parameter_tuning_job",
        {"HyperParameterTuningJobArn": f"{ARN}:hyper-parameter-tuning-job/sdt-pets"},
    )
    assert flow.dataset_uploaded(DATA, "datasets/pets.zip", etag, cloud.settings) == "started"
    [message] = cloud.messages()
    assert message["metrics"]["leaked test images"] == 3
    assert message["metrics"]["leaked valid images"] == 0
    [leak] = [r for r in message["reasons"] if "byte-identical to a training image" in r]
    assert leak.startswith("3 of 15 'test' image(s)")
    assert "test/001.cat/copy_0.jpg = train/001.cat/img_0.jpg" in leak
    zipped = io.BytesIO(cloud.s3.get_object(Bucket=DATA, Key="datasets/pets.zip")["Body"].read())
    import zipfile

    with zipfile.ZipFile(zipped) as archive:
        data = []
        for info in archive.infolist():
            header = 30 + len(info.filename.encode()) + len(info.extra)
            data.append(
                (info.header_offset + header, info.header_offset + header + info.compress_size)
            )
    touched = [(a, b) for a, b in reads for lo, hi in data if a < hi and lo < b]
    assert reads and not touched, touched


def audit_document(leaked_test=0, test_images=100, policy="leave-out", **counts):
    """``data_audit.json`` as the job writes it (only what the gate reads)."""
    left = leaked_test if policy == "leave-out" else 0
    return {
        "format": 1,
        "leakage_policy": policy,
        "images": {"train": 800, "valid": 100, "test": test_images},
        "headline": {
            "images": 800 + 100 + test_images,
            "leaked": {"valid": counts.get("leaked_valid", 0), "test": leaked_test},
            "leaked_test_fraction": leaked_test / test_images,
            "left_out": {"valid": 0, "test": left},
            "exact_duplicates": counts.get("exact", leaked_test),
            "near_duplicates": counts.get("near", 0),
            "label_conflicts": 0,
            "unreadable": 0,
            "imbalance_train": 1.5,
            "label_error_candidates": counts.get("label_errors", 7),
        },
    }


def test_the_audit_reaches_the_notice_and_the_version(cloud):
    result, message = _gate_with(cloud, evaluation_document(0.9), audit=audit_document(4))
    assert result == "approved"  # the floor is off by default: said, not blocking
    assert message["metrics"]["leaked test images"] == 4
    assert message["metrics"]["label-error candidates"] == 7
    line = next(r for r in message["reasons"] if r.startswith("data audit: "))
    assert "leaked test 4/100 (4.0%; 4 left out)" in line and "likely label errors 7" in line
    [version] = versions(cloud)
    assert version.data_audit.startswith("leaked-test=4/100 left-out-test=4 leaked-valid=0")
    assert version.leaked_test_fraction == pytest.approx(0.04)
    assert version.label_error_candidates == 7
    assert version.data_audit_report.endswith("/reports/data_audit.json")


@pytest.mark.parametrize(
    ("leaked", "policy", "result"),
    [(4, "leave-out", "approved"), (6, "leave-out", "blocked"), (6, "keep", "blocked")],
)
def test_the_leaked_fraction_floor_is_the_operators(cloud, leaked, policy, result):
    """GATE_MAX_LEAKED_FRACTION counts before removal: "leakage": "keep" cannot lift it."""
    floor = replace(cloud.settings, gate_max_leaked_fraction=0.05)
    audit = audit_document(leaked, policy=policy)
    got, message = _gate_with(cloud, evaluation_document(0.9), settings=floor, audit=audit)
    assert got == result
    said = f"{leaked} of 100 test image(s) ({leaked / 100:.2%}) duplicated a training image"
    assert any(said in r for r in message["reasons"]), message["reasons"]
    if result == "blocked":
        assert any("over GATE_MAX_LEAKED_FRACTION 5.00%" in r for r in message["reasons"])


def test_a_floor_without_an_audit_blocks(cloud):
    floor = replace(cloud.settings, gate_max_leaked_fraction=0.05)
    result, message = _gate_with(cloud, evaluation_document(0.9), settings=floor)
    assert result == "blocked"
    assert any("no readable data_audit.json" in r for r in message["reasons"])


def test_a_broken_audit_is_refused_by_name_and_loses_no_model(cloud):
    broken = audit_document(2)
    broken["headline"]["leaked"]["test"] = "2"
    result, message = _gate_with(cloud, evaluation_document(0.9), audit=broken)
    assert result == "approved"  # no floor: a broken audit is said, never a lost model
    assert any("data_audit.json is not a data audit" in r for r in message["reasons"])


def test_an_unreachable_tracking_server_never_stops_the_pipeline(cloud, caplog):
    """Issue 23: MLflow at a closed port. The debug job still starts, the notice says the
    runs were not recorded, and the log warns once for the step (no retries for minutes)."""
    settings = replace(cloud.settings, mlflow_tracking_uri="http://127.0.0.1:9")
    described = tuning_description(cloud)
    name = described["HyperParameterTuningJobName"]
    cloud.stub.add_response("describe_hyper_parameter_tuning_job", described)
    cloud.stub.add_response("list_tags", {"Tags": []})
    cloud.stub.add_response(
        "create_training_job",
        {"TrainingJobArn": f"{ARN}:training-job/sdd-pets"},
        sagemaker_requests.debug_training_job_request(
            settings, vocabulary.Upload(DATA, "datasets/pets.zip", ""), described
        ),
    )
    detail = {"HyperParameterTuningJobName": name, "HyperParameterTuningJobStatus": "Completed"}
    with caplog.at_level("WARNING", logger="sagedrop.tracking"):
        assert flow.tuning_finished(detail, settings) == "started"
    warnings = [r for r in caplog.records if r.name == "sagedrop.tracking"]
    assert len(warnings) == 1 and f"tuning job {name}" in warnings[0].getMessage()
    [message] = cloud.messages()
    [line] = [r for r in message["reasons"] if r.startswith("experiment tracking:")]
    assert "runs not recorded" in line
