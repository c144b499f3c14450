"""The rules on hand-made records: each one fires on its problem and stays quiet otherwise.

Debug rules get loss, tensor and evaluation records; profiler rules get synthetic system
samples and step timelines. The records have exactly the shape the recorder writes.
"""

from __future__ import annotations

import random

import pytest

from sagedrop_contract import job_contract
from sagedrop_debugging import debug_rules, profiler_rules
from sagedrop_debugging.rule_base import ERROR, ISSUES, NO_ISSUES, RuleConfigError
from sagedrop_debugging.rule_set import (
    ALL_RULES,
    RuleSet,
    evaluate_records,
    metric_values,
    parse_rules_config,
)


def judge(rule, records):
    for record in records:
        rule.observe(record)
    return rule.verdict()


def tensors(step, grads=None, weights=None, relu=None, spread=None):
    return {
        "kind": "tensors",
        "step": step,
        "grads": grads or {"fc.weight": [1e-3, 0.1, 0.01, 0, 0]},
        "weights": weights or {"fc.weight": [0.0, 0.05, 1.0, 0, 0]},
        "relu": relu or {},
        "grad_spread": spread,
    }


def evals(train, valid):
    return [
        {
            "kind": "eval",
            "step": 10 * (i + 1),
            "epoch": i + 1,
            "train_loss": t,
            "valid_loss": v,
            "train_accuracy": 0.5,
            "valid_accuracy": 0.5,
            "lr": 0.01,
        }
        for i, (t, v) in enumerate(zip(train, valid, strict=True))
    ]


def losses(values, start=0):
    return [
        {"kind": "loss", "step": start + i, "epoch": 1, "loss": v, "lr": 0.01}
        for i, v in enumerate(values)
    ]


def test_the_pipeline_and_the_training_code_know_the_same_rules():
    assert tuple(ALL_RULES) == job_contract.RULE_NAMES
    assert [r.name for r in debug_rules.DEBUG_RULES] == list(job_contract.DEBUG_RULES)
    assert [r.name for r in profiler_rules.PROFILER_RULES] == list(job_contract.PROFILER_RULES)


@pytest.mark.parametrize(
    ("rule", "defaults"),
    [
        ("VanishingGradient", {"threshold": 1e-7}),
        ("Overfit", {"start_step": 0, "patience": 1, "ratio_threshold": 0.1}),
        ("Overtraining", {"patience_train": 5, "patience_validation": 10, "delta": 0.01}),
        (
            "LossNotDecreasing",
            {"num_steps": 10, "diff_percent": 0.1, "increase_threshold_percent": 5.0},
        ),
        (
            "PoorWeightInitialization",
            {"threshold": 10.0, "distribution_range": 0.001, "patience": 5, "steps": 10},
        ),
        (
            "CPUBottleneck",
            {"threshold": 50.0, "gpu_threshold": 10.0, "cpu_threshold": 90.0, "patience": 1000},
        ),
        ("LowGPUUtilization", {"threshold_p95": 70.0, "threshold_p5": 10.0, "window": 500}),
        ("StepOutlier", {"stddev": 3.0, "n_outliers": 10}),
        ("MaxInitializationTime", {"threshold": 20.0}),
    ],
)
def test_defaults_are_sagemakers(rule, defaults):
    params = ALL_RULES[rule]().params
    assert {k: params[k] for k in defaults} == defaults


def test_vanishing_gradient_names_the_step_and_the_tensor():
    healthy = [tensors(s) for s in range(5)]
    assert judge(debug_rules.VanishingGradient(), healthy).status == NO_ISSUES
    tiny = {"layer1.0.conv1.weight": [3e-9, 1e-6, 1e-8, 0, 0], "fc.weight": [1e-3, 1, 1, 0, 0]}
    verdict = judge(debug_rules.VanishingGradient(), [*healthy, tensors(5, grads=tiny)])
    assert verdict.status == ISSUES and verdict.step == 5
    assert verdict.tensor == "gradient/layer1.0.conv1.weight"
    assert "3e-09" in verdict.details and "1e-07" in verdict.details
    # a per-job threshold
    assert (
        judge(debug_rules.VanishingGradient(threshold=1e-10), [tensors(5, grads=tiny)]).status
        == NO_ISSUES
    )


def test_exploding_tensor_on_loss_gradients_and_weights():
    assert judge(debug_rules.ExplodingTensor(), losses([2.0, 1.5])).status == NO_ISSUES
    verdict = judge(debug_rules.ExplodingTensor(), losses([2.0, "nan"]))
    assert verdict.status == ISSUES and verdict.step == 1 and verdict.tensor == "loss"
    bad = {"fc.weight": [1e-3, "inf", "inf", 0, 4]}
    verdict = judge(debug_rules.ExplodingTensor(), [tensors(7, grads=bad)])
    assert verdict.tensor == "gradient/fc.weight" and "4 infinite" in verdict.details
    assert (
        judge(debug_rules.ExplodingTensor(only_nan=True), [tensors(7, grads=bad)]).status
        == NO_ISSUES
    )
    nan_weights = {"fc.weight": [0.0, "nan", "nan", 3, 0]}
    assert (
        judge(debug_rules.ExplodingTensor(), [tensors(2, weights=nan_weights)]).tensor
        == "weight/fc.weight"
    )


def test_overfit_ratio_patience_and_start_step():
    healthy = evals([1.0, 0.8, 0.6], [0.95, 0.82, 0.64])
    assert judge(debug_rules.Overfit(), healthy).status == NO_ISSUES
    overfit = evals([1.0, 0.5, 0.2], [1.0, 0.7, 0.9])
    verdict = judge(debug_rules.Overfit(), overfit)
    assert verdict.status == ISSUES and verdict.step == 20 and "ratio 0.4" in verdict.details
    assert judge(debug_rules.Overfit(patience=2), overfit).step == 30
    assert judge(debug_rules.Overfit(start_step=40), overfit).status == NO_ISSUES


def test_overtraining_when_validation_stops_improving():
    improving = evals([1.0 - 0.05 * i for i in range(12)], [1.2 - 0.05 * i for i in range(12)])
    assert judge(debug_rules.Overtraining(), improving).status == NO_ISSUES
    stalled = evals([1.0 - 0.05 * i for i in range(12)], [0.5] + [0.6] * 11)
    verdict = judge(debug_rules.Overtraining(), stalled)
    assert verdict.status == ISSUES and verdict.tensor == "valid_loss" and verdict.step == 110
    assert "10 validation passes" in verdict.details


def test_loss_not_decreasing_tells_noise_from_a_stuck_or_diverging_loss():
    rng = random.Random(0)
    noisy_but_falling = [2.0 * 0.99**i * (1 + 0.3 * (rng.random() - 0.5)) for i in range(200)]
    assert judge(debug_rules.LossNotDecreasing(), losses(noisy_but_falling)).status == NO_ISSUES
    converged_noise = [0.05 * (1 + 0.6 * (rng.random() - 0.5)) for _ in range(200)]
    assert judge(debug_rules.LossNotDecreasing(), losses(converged_noise)).status == NO_ISSUES
    stuck = judge(debug_rules.LossNotDecreasing(), losses([2.302585] * 30))
    assert stuck.status == ISSUES and stuck.step == 19 and "short of the 0.1%" in stuck.details
    diverging = judge(debug_rules.LossNotDecreasing(), losses([1.0 * 1.05**i for i in range(30)]))
    assert diverging.status == ISSUES and "a rise beyond 5%" in diverging.details


def test_poor_weight_initialization_on_relu_input_variances():
    balanced = {f"layer{i}.relu": [0.0, 1.0 + 0.2 * i] for i in range(6)}
    assert (
        judge(
            debug_rules.PoorWeightInitialization(), [tensors(s, relu=balanced) for s in range(10)]
        ).status
        == NO_ISSUES
    )
    shrinking = {f"layer{i}.relu": [0.0, 10.0**-i] for i in range(6)}
    verdict = judge(debug_rules.PoorWeightInitialization(), [tensors(0, relu=shrinking)])
    assert verdict.status == ISSUES and verdict.tensor == "relu_input/layer5.relu"
    # only the first `steps` steps are judged
    assert (
        judge(debug_rules.PoorWeightInitialization(), [tensors(10, relu=shrinking)]).status
        == NO_ISSUES
    )


def test_poor_weight_initialization_on_flat_gradients_and_a_stuck_loss():
    flat = [tensors(s, spread=[-1e-5, 1e-5]) for s in range(8)]
    stuck = judge(debug_rules.PoorWeightInitialization(), [*losses([2.3] * 8), *flat])
    assert stuck.status == ISSUES and stuck.tensor == "gradients"
    learning = judge(
        debug_rules.PoorWeightInitialization(), [*losses([2.3 - 0.1 * i for i in range(8)]), *flat]
    )
    assert learning.status == NO_ISSUES


# profiler rules -------------------------------------------------------------------------
def system(n, cpu=50.0, gpu=None, gpu_memory=None, iowait=0.0):
    samples = []
    for i in range(n):
        sample = {
            "kind": "system",
            "t": 0.5 * i,
            "cpu": [cpu],
            "cpu_total": cpu,
            "iowait": iowait,
            "memory_percent": 40.0,
        }
        if gpu is not None:
            sample["gpu"] = [gpu(i) if callable(gpu) else gpu]
        if gpu_memory is not None:
            sample["gpu_memory"] = [gpu_memory(i) if callable(gpu_memory) else gpu_memory]
        samples.append(sample)
    return samples


def test_profiler_rules_scale_their_patience_to_the_job_and_say_when_not_judged():
    # A 20-second job (40 samples) with the problem: the default patience (SageMaker's
    # 1,000 samples) scales to a tenth of the job, so the rule judges and fires.
    short = judge(profiler_rules.CPUBottleneck(), system(40, cpu=99, gpu=1))
    assert short.status == ISSUES and short.judged
    assert "of 36 samples" in short.details  # 4 skipped: a tenth of 40
    # A patience the user sets is used as given: nothing left to judge, and it says so.
    patient = judge(profiler_rules.CPUBottleneck(patience=1000), system(40, cpu=99, gpu=1))
    assert patient.status == NO_ISSUES and not patient.judged and patient.code == 3
    assert patient.details.startswith("not judged") and "patience of 1000" in patient.details
    tiny = judge(profiler_rules.IOBottleneck(), system(6, iowait=90))
    assert tiny.status == NO_ISSUES and not tiny.judged and "at least 10" in tiny.details
    no_gpu = judge(profiler_rules.LowGPUUtilization(patience=0), system(20))
    assert no_gpu.status == NO_ISSUES and not no_gpu.judged
    assert "no GPU utilisation readings" in no_gpu.details


@pytest.mark.parametrize(
    ("rule", "samples"),
    [
        (profiler_rules.CPUBottleneck, system(40, cpu=99, gpu=2)),
        (profiler_rules.IOBottleneck, system(40, iowait=80)),
        (profiler_rules.LowGPUUtilization, system(40, gpu=20)),
        (profiler_rules.GPUMemoryIncrease, system(40, gpu=90, gpu_memory=lambda i: 20 + i)),
        (profiler_rules.BatchSize, system(40, cpu=20, gpu=20, gpu_memory=20)),
    ],
)
def test_every_system_rule_fires_with_its_defaults_on_a_20_second_job(rule, samples):
    verdict = judge(rule(), samples)
    assert verdict.status == ISSUES, verdict.details


def test_step_rules_fire_with_their_defaults_on_a_short_job():
    steps = [
        {"kind": "step", "epoch": 1, "step": i, "data": 0.01, "total": 1.0 if i % 12 == 5 else 0.1}
        for i in range(60)
    ]
    assert judge(profiler_rules.StepOutlier(), steps).status == ISSUES  # 5 of 60 steps stall
    waiting = [{**s, "data": 0.08, "total": 0.1} for s in steps]
    assert judge(profiler_rules.Dataloader(), waiting).status == ISSUES
    few = judge(profiler_rules.StepOutlier(), steps[:8])
    assert few.status == NO_ISSUES and not few.judged


def test_cpu_bottleneck():
    busy = judge(profiler_rules.CPUBottleneck(patience=0), system(100, cpu=97, gpu=3))
    assert busy.status == ISSUES and "100% of 100 samples" in busy.details
    assert "num-workers" in busy.advice
    fed = judge(profiler_rules.CPUBottleneck(patience=0), system(100, cpu=97, gpu=85))
    assert fed.status == NO_ISSUES


def test_io_bottleneck():
    waiting = judge(profiler_rules.IOBottleneck(patience=0), system(50, iowait=70))
    assert waiting.status == ISSUES
    assert judge(profiler_rules.IOBottleneck(patience=0), system(50, iowait=5)).status == NO_ISSUES


def test_low_gpu_utilization_idle_or_fluctuating():
    idle = judge(profiler_rules.LowGPUUtilization(patience=0), system(100, gpu=30))
    assert idle.status == ISSUES and "p95 30%" in idle.details
    spiky = judge(
        profiler_rules.LowGPUUtilization(patience=0), system(100, gpu=lambda i: 95 if i % 2 else 0)
    )
    assert spiky.status == ISSUES and "fluctuates" in spiky.details
    busy = judge(profiler_rules.LowGPUUtilization(patience=0), system(100, gpu=92))
    assert busy.status == NO_ISSUES


def test_gpu_memory_increase():
    leak = system(100, gpu=90, gpu_memory=lambda i: 20 + 0.5 * i)
    assert judge(profiler_rules.GPUMemoryIncrease(patience=0), leak).status == ISSUES
    steady = system(100, gpu=90, gpu_memory=lambda i: 40 + (i % 3))
    assert judge(profiler_rules.GPUMemoryIncrease(patience=0), steady).status == NO_ISSUES


def test_batch_size():
    idle = judge(profiler_rules.BatchSize(patience=0), system(100, cpu=20, gpu=25, gpu_memory=10))
    assert idle.status == ISSUES and "raise the batch size" in idle.advice
    full = judge(profiler_rules.BatchSize(patience=0), system(100, cpu=20, gpu=95, gpu_memory=10))
    assert full.status == NO_ISSUES


def steps(data, compute, n=40, epochs=1):
    out = []
    for i in range(n):
        d = data(i) if callable(data) else data
        c = compute(i) if callable(compute) else compute
        out.append(
            {
                "kind": "step",
                "step": i,
                "epoch": 1 + i * epochs // n,
                "data": d,
                "forward": c / 3,
                "backward": c / 2,
                "optimizer": c / 6,
                "total": d + c,
            }
        )
    return out


def test_dataloader_advice_follows_the_worker_count():
    meta = {"kind": "meta", "num_workers": 1, "cpu_count": 8}
    starving = judge(profiler_rules.Dataloader(), [meta, *steps(0.08, 0.02)])
    assert starving.status == ISSUES and "80% of step time" in starving.details
    assert "raise --num-workers towards 8" in starving.advice
    many = {"kind": "meta", "num_workers": 32, "cpu_count": 8}
    assert (
        "lower --num-workers"
        in judge(profiler_rules.Dataloader(), [many, *steps(0.08, 0.02)]).advice
    )
    fed = judge(profiler_rules.Dataloader(), [meta, *steps(0.001, 0.05)])
    assert fed.status == NO_ISSUES and "2% of step time" in fed.details


def test_step_outlier_ignores_each_epochs_first_step():
    regular = steps(0.001, lambda i: 0.05 + 0.001 * (i % 5), n=200, epochs=4)
    assert judge(profiler_rules.StepOutlier(), regular).status == NO_ISSUES
    hiccups = steps(0.001, lambda i: 1.0 if i % 15 == 7 else 0.05, n=200, epochs=4)
    verdict = judge(profiler_rules.StepOutlier(), hiccups)
    assert verdict.status == ISSUES and "took 1001 ms" in verdict.details


def test_max_initialization_time():
    assert (
        judge(profiler_rules.MaxInitializationTime(), [{"kind": "init", "seconds": 30}]).status
        == NO_ISSUES
    )
    slow = judge(
        profiler_rules.MaxInitializationTime(threshold=1), [{"kind": "init", "seconds": 90}]
    )
    assert slow.status == ISSUES and "1.5 minutes" in slow.details


# configuration, errors, the offline evaluator --------------------------------------------
def test_rule_configuration_is_checked():
    assert parse_rules_config('{"Overfit": {"patience": "3"}, "StepOutlier": false}') == {
        "Overfit": {"patience": "3"},
        "StepOutlier": False,
    }
    rules = RuleSet({"Overfit": {"patience": "3"}, "StepOutlier": False})
    assert (
        "StepOutlier" not in rules.parameters() and rules.parameters()["Overfit"]["patience"] == 3
    )
    with pytest.raises(RuleConfigError, match="unknown rule"):
        parse_rules_config('{"Overfitting": {}}')
    with pytest.raises(RuleConfigError, match="has no parameter ratio"):
        RuleSet({"Overfit": {"ratio": 0.2}})
    with pytest.raises(RuleConfigError, match="must be a int"):
        RuleSet({"Overfit": {"patience": 1.5}})
    with pytest.raises(RuleConfigError, match="cannot stop it"):
        RuleSet({"StepOutlier": {"stop": True}})
    with pytest.raises(RuleConfigError, match="not JSON"):
        parse_rules_config("{patience: 3}")


def test_a_broken_rule_reports_error_without_stopping_the_others():
    rules = RuleSet()
    rules.observe({"kind": "eval", "step": 1, "epoch": 1})  # no losses: a malformed record
    verdicts = {v.rule: v for v in rules.verdicts()}
    assert verdicts["Overfit"].status == ERROR and "KeyError" in verdicts["Overfit"].details
    assert verdicts["VanishingGradient"].status == NO_ISSUES
    assert metric_values(list(verdicts.values()))["rule_Overfit"] == 2


def test_stop_action_and_offline_replay():
    config = {"ExplodingTensor": {"stop": True}}
    rules = RuleSet(config)
    records = [{"kind": "meta", "rules_config": config}, *losses([2.0, 1.9, "nan"])]
    for record in records:
        rules.observe(record)
    assert rules.stopping_rule().name == "ExplodingTensor"
    live = [v.as_status() for v in rules.verdicts()]
    assert [v.as_status() for v in evaluate_records(records)] == live
    # other parameters offline: the same trace judged with ExplodingTensor off
    assert "ExplodingTensor" not in {
        v.rule for v in evaluate_records(records, {"ExplodingTensor": False})
    }
