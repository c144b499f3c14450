"""The local tuner: SageMaker's parameter ranges as Optuna distributions, and the
median rule that stops a trial behind the others."""

from __future__ import annotations

from sagedrop.local import tuner


def test_tuner_maps_sagemaker_ranges_to_optuna():
    ranges = {
        "ContinuousParameterRanges": [
            {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"},
            {
                "Name": "beta",
                "MinValue": "0.9",
                "MaxValue": "0.999",
                "ScalingType": "ReverseLogarithmic",
            },
        ],
        "IntegerParameterRanges": [
            {"Name": "epochs", "MinValue": "1", "MaxValue": "4", "ScalingType": "Linear"}
        ],
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["32", "64"]}],
    }
    dists = tuner.distributions(ranges)
    assert dists["lr"].log and dists["lr"].low == 0.001
    config = {
        "Strategy": "Random",
        "ParameterRanges": ranges,
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "m"},
    }
    study = tuner.make_study(config, seed=1)
    for _ in range(20):
        values = tuner.hyperparameters_of(study.ask(dists).params)
        assert 0.001 <= float(values["lr"]) <= 0.1
        assert 0.9 <= float(values["beta"]) <= 0.999
        assert values["epochs"] in {"1", "2", "3", "4"} and values["batch-size"] in {"32", "64"}
    assert tuner.grid_size(ranges) == 2
    name = tuner.trial_job_name("sdt-digits-1a2b3c4d", 7)
    assert name.startswith("sdt-digits-1a2b3c4d-007-") and len(name.rsplit("-", 1)[1]) == 8


def test_median_rule_stops_a_trial_behind_the_others():
    config = {
        "Strategy": "Bayesian",
        "TrainingJobEarlyStoppingType": "Auto",
        "ParameterRanges": {"CategoricalParameterRanges": [{"Name": "x", "Values": ["1"]}]},
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "acc"},
    }
    dists = tuner.distributions(config["ParameterRanges"])
    study = tuner.make_study(config, seed=0)
    tuner.replay(
        study,
        dists,
        [
            {
                "params": {"x": "1"},
                "state": "COMPLETE",
                "value": 0.9,
                "intermediate": {"1": 0.8, "2": 0.9},
            }
            for _ in range(3)
        ],
    )
    stopped = []
    reporter = tuner.TrialReporter(study.ask(dists), "acc", lambda: stopped.append(True))
    reporter({"epoch": 1.0, "acc": 0.5})
    reporter({"epoch": 2.0, "acc": 0.5})
    assert reporter.pruned and stopped == [True]
