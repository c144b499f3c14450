"""Requests botocore accepts and SageMaker refuses (issue 11, item 4): refused where the user
can fix them, kept out of the requests the pipeline builds, and refused by the local
SageMaker as the service would."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from chalicelib import aws_limits, sagemaker_requests, vocabulary
from chalicelib.settings import Settings, SettingsError
from sagedrop.local.aws_shapes import validate


@pytest.mark.parametrize(
    "key",
    ["datasets/Dog Images (2024).zip", "datasets/cats&dogs.zip", "datasets/[test]#1.zip"],
)
def test_a_dataset_key_outside_the_tag_pattern_is_sanitised_not_refused(settings, key):
    request = sagemaker_requests.tuning_job_request(settings, vocabulary.Upload("bucket", key, "e"))
    for tag in request["Tags"]:
        assert aws_limits.tag_problem(tag) is None, tag
    validate("sagemaker", "create_hyper_parameter_tuning_job", request)
    [dataset] = [t["Value"] for t in request["Tags"] if t["Key"] == vocabulary.TAG_DATASET]
    assert dataset.startswith("s3://bucket/datasets/") and "_" in dataset


def test_the_local_sagemaker_refuses_a_tag_sagemaker_refuses():
    with pytest.raises(ClientError) as caught:
        validate(
            "sagemaker",
            "add_tags",
            {
                "ResourceArn": "arn:aws:sagemaker:x:1:model/m",
                "Tags": [{"Key": "k", "Value": "a&b"}],
            },
        )
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "tag value 'a&b'" in str(caught.value)


def test_grid_search_with_a_continuous_range_is_a_settings_error():
    with pytest.raises(SettingsError, match="only supports categorical parameter ranges; lr"):
        Settings(tuning_strategy="Grid")


@pytest.mark.parametrize(("name", "low", "high"), [("weight-decay", 0.5, 1.0), ("lr", 0.5, 2.0)])
def test_reverse_logarithmic_must_lie_within_zero_and_one(name, low, high):
    ranges = {name: {"type": "continuous", "min": low, "max": high,
                     "scaling": "ReverseLogarithmic"}}  # fmt: skip
    with pytest.raises(SettingsError, match="must lie within"):
        Settings(tuning_ranges=ranges)
    Settings(tuning_ranges={name: {**ranges[name], "min": 0.5, "max": 0.99}})


def test_more_than_30_categorical_values_is_a_settings_error():
    with pytest.raises(SettingsError, match="has 31 values; at most 30"):
        Settings(tuning_ranges={"seed": {"type": "categorical", "values": list(range(31))}})


@pytest.mark.parametrize(
    ("strategy", "ranges", "expected"),
    [
        ("Grid", {"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.1",
                                                 "MaxValue": "0.2"}]}, "Grid search"),
        ("Bayesian", {"CategoricalParameterRanges": [{"Name": f"p{i}", "Values": ["1"]}
                                                     for i in range(31)]}, "at most 30"),
        ("Bayesian", {"ContinuousParameterRanges": [{"Name": "m", "MinValue": "0.5",
                                                     "MaxValue": "1.5",
                                                     "ScalingType": "ReverseLogarithmic"}]},
         "within [0, 1)"),
    ],
)  # fmt: skip
def test_the_limits_the_local_sagemaker_applies(strategy, ranges, expected):
    assert expected in aws_limits.parameter_ranges_problem(strategy, ranges)
