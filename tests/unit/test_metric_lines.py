"""Metric lines and the regexes that read them agree on every number, exponents included."""

from __future__ import annotations

import math

import pytest

from sagedrop_contract.job_contract import METRIC_DEFINITIONS, format_metrics, parse_metric_lines


@pytest.mark.parametrize(
    "value", [0.0, 1.0, 0.1, 1e-07, 3.5e-12, 1.5e20, -2.25, 0.8333333333333334]
)
def test_every_number_is_read_back_exactly(value):
    line = format_metrics(epoch=3, train_loss=value, valid_loss=value, valid_accuracy=value)
    found = parse_metric_lines(line)
    assert found["epoch"] == [3.0]
    assert found["train_loss"] == found["valid_loss"] == found["valid_accuracy"] == [value]


def test_non_finite_values_are_not_misread():
    line = format_metrics(train_loss=math.nan, valid_loss=math.inf, valid_accuracy=0.5)
    assert line == "metrics: train_loss=nan valid_loss=inf valid_accuracy=0.5"
    assert parse_metric_lines(line) == {"valid_accuracy": [0.5]}


def test_definitions_have_sagemaker_shape_and_distinct_names():
    names = [d["Name"] for d in METRIC_DEFINITIONS]
    assert len(names) == len(set(names))
    assert set(names) >= {
        "train_loss",
        "valid_loss",
        "valid_accuracy",
        "test_loss",
        "test_accuracy",
    }
    for definition in METRIC_DEFINITIONS:
        assert set(definition) == {"Name", "Regex"}
        assert 1 <= len(definition["Regex"]) <= 500  # SageMaker's limit on Regex
    line = format_metrics(test_loss=0.25, test_accuracy=0.75)
    assert parse_metric_lines(line) == {"test_loss": [0.25], "test_accuracy": [0.75]}
