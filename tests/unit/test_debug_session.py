"""The recorder and the rules on real training: crafted runs that have each problem, and a
healthy run where none fires. Small networks on scikit-learn's digits (8x8), through the
same ``fit_loop`` and ``DebugSession`` that ``train.py`` uses; seconds each.
"""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from sagedrop_contract.job_contract import DEBUG_RULES as DEBUG_RULE_NAMES
from sagedrop_debugging.debug_session import DebugOptions, DebugSession
from sagedrop_debugging.debug_trace import read_trace
from sagedrop_debugging.rule_base import ISSUES, NO_ISSUES
from sagedrop_debugging.rule_set import evaluate_records
from sagedrop_training import ddp_runtime, fit_loop

CPU = ddp_runtime.Runtime(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def digits_tensors():
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(data.target)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=generator)
    return x[order], y[order]


def batches(x, y, size):
    return [(x[i : i + size], y[i : i + size], []) for i in range(0, len(y), size)]


def mlp(depth, activation=nn.ReLU, init_std=None, width=64, seed=0):
    """Seeded here, so the same net whatever ran before it in the session."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    features = 64
    for _ in range(depth):
        linear = nn.Linear(features, width)
        if init_std is None:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        else:
            nn.init.normal_(linear.weight, std=init_std)
        nn.init.zeros_(linear.bias)
        layers += [linear, activation()]
        features = width
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers)


def train(model, train_batches, valid_batches, epochs, lr, tmp_path, rules=None):
    torch.manual_seed(0)
    out = tmp_path / "output"
    session = DebugSession(
        model,
        str(out),
        DebugOptions(rules_config=rules or {}, save_interval=5, profiler_interval_s=0.05),
        torch.device("cpu"),
        {"job": "crafted", "num_workers": 0, "batch_size": len(train_batches[0][1])},
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9 if lr else 0.0)
    session.optimizer = optimizer
    for epoch in range(1, epochs + 1):
        session.epoch_begin(epoch)
        result = fit_loop.train_epoch(
            model, train_batches, optimizer, nn.CrossEntropyLoss(), CPU, session
        )
        valid = fit_loop.evaluate(model, valid_batches, CPU, session)
        session.evaluated(epoch, result, valid)
        if session.stopping_rule() is not None:
            break
    verdicts = session.finish("crafted")
    return {v.rule: v for v in verdicts}, out, session


def test_a_healthy_run_is_quiet(digits_tensors, tmp_path):
    """Kaiming init, 1,400 training images, a modest learning rate, two epochs: across
    init seeds 0-5 the validation/training loss ratio stays between -0.47 and -0.21, far
    from Overfit's 0.1, so this is quiet by a margin, not by luck."""
    x, y = digits_tensors
    net = mlp(3, width=32)
    verdicts, out, _ = train(
        net, batches(x[:1400], y[:1400], 32), batches(x[1400:], y[1400:], 64), 2, 0.01, tmp_path
    )
    assert {name: verdicts[name].status for name in DEBUG_RULE_NAMES} == dict.fromkeys(
        DEBUG_RULE_NAMES, NO_ISSUES
    ), {n: verdicts[n].details for n in DEBUG_RULE_NAMES}
    # what the recorder kept: every step's loss, saved steps' tensors, the timeline
    records = read_trace(out)
    kinds = [r["kind"] for r in records]
    steps = kinds.count("step")
    assert kinds.count("loss") == steps == 2 * 44
    saved = [r["step"] for r in records if r["kind"] == "tensors"]
    assert saved[:10] == list(range(10)) and all(s % 5 == 0 for s in saved[10:])
    first = next(r for r in records if r["kind"] == "tensors")
    assert set(first["grads"]) == {n for n, _ in mlp(3).named_parameters()}
    assert len(first["relu"]) == 3 and kinds.count("eval") == 2 and kinds.count("system") > 0


def test_vanishing_gradient_on_a_deep_sigmoid_net(digits_tensors, tmp_path):
    x, y = digits_tensors
    net = mlp(10, activation=nn.Sigmoid, init_std=0.05)
    verdicts, _, _ = train(
        net, batches(x[:320], y[:320], 32), batches(x[1400:], y[1400:], 64), 1, 0.01, tmp_path
    )
    verdict = verdicts["VanishingGradient"]
    assert verdict.status == ISSUES and verdict.step == 0
    assert verdict.tensor.startswith("gradient/1.")  # the first Linear, furthest from the loss


def test_exploding_tensor_on_a_huge_learning_rate_stops_training(digits_tensors, tmp_path):
    x, y = digits_tensors
    verdicts, out, session = train(
        mlp(3),
        batches(x[:1400], y[:1400], 32),
        batches(x[1400:], y[1400:], 64),
        3,
        1e6,
        tmp_path,
        rules={"ExplodingTensor": {"stop": True}},
    )
    verdict = verdicts["ExplodingTensor"]
    assert verdict.status == ISSUES and session.stopping_rule().name == "ExplodingTensor"
    assert session.step < 44  # stopped inside the first epoch
    statuses = json.loads((out / "rules.json").read_text())
    assert {
        "RuleConfigurationName": "ExplodingTensor",
        "RuleEvaluationStatus": "IssuesFound",
        "StatusDetails": verdict.details,
    } in statuses


def memorise_a_tiny_train_set(digits_tensors, tmp_path, epochs, rules=None):
    """24 training images, 400 validation images: the textbook overfit."""
    x, y = digits_tensors
    return train(
        mlp(2, width=128),
        batches(x[:24], y[:24], 8),
        batches(x[1400:], y[1400:], 64),
        epochs,
        0.05,
        tmp_path,
        rules,
    )


def test_overfit_and_overtraining_on_a_tiny_train_set(digits_tensors, tmp_path):
    verdicts, _, _ = memorise_a_tiny_train_set(digits_tensors, tmp_path, 40)
    assert verdicts["Overfit"].status == ISSUES, verdicts["Overfit"].details
    assert verdicts["Overtraining"].status == ISSUES, verdicts["Overtraining"].details
    assert verdicts["VanishingGradient"].status == NO_ISSUES


def test_poor_weight_initialization_on_a_tiny_init(digits_tensors, tmp_path):
    x, y = digits_tensors
    verdicts, _, _ = train(
        mlp(5, init_std=1e-3),
        batches(x[:320], y[:320], 32),
        batches(x[1400:], y[1400:], 64),
        1,
        0.01,
        tmp_path,
    )
    verdict = verdicts["PoorWeightInitialization"]
    assert verdict.status == ISSUES and verdict.tensor.startswith("relu_input/")
    assert verdict.step == 0


def test_loss_not_decreasing_when_nothing_learns(digits_tensors, tmp_path):
    x, y = digits_tensors
    fixed = batches(x[:32], y[:32], 32) * 30
    verdicts, _, _ = train(mlp(3), fixed, batches(x[1400:], y[1400:], 64), 1, 0.0, tmp_path)
    verdict = verdicts["LossNotDecreasing"]
    assert verdict.status == ISSUES and "short of the 0.1% decrease" in verdict.details


def test_offline_evaluation_gives_the_in_training_verdicts(digits_tensors, tmp_path):
    verdicts, out, _ = memorise_a_tiny_train_set(
        digits_tensors,
        tmp_path,
        15,
        rules={"Overtraining": {"patience_validation": 3}, "StepOutlier": False},
    )
    replayed = evaluate_records(read_trace(out))
    assert [v.as_record() for v in replayed] == [v.as_record() for v in verdicts.values()]
    assert "StepOutlier" not in {v.rule for v in replayed}
    assert json.loads((out / "rules.json").read_text()) == [v.as_status() for v in replayed]


class _StopAfterFirstStep(fit_loop.NoProbe):
    def step_done(self) -> bool:
        return True


def test_an_epoch_stopped_by_a_rule_averages_over_the_samples_it_saw():
    """A rule's stop mid-epoch: loss and accuracy are of the steps taken, not divided by
    the whole epoch's samples (which once under-reported both)."""
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    features, labels = torch.randn(40, 4), torch.randint(0, 3, (40,))
    optimizer = torch.optim.SGD(head.parameters(), lr=0.0)  # weights stay put
    batches = fit_loop.feature_batches(features, labels, 8)
    result = fit_loop.train_epoch(
        head, batches, optimizer, nn.CrossEntropyLoss(), CPU, _StopAfterFirstStep()
    )
    expected = nn.functional.cross_entropy(head(features[:8]), labels[:8]).item()
    assert result.samples == 8
    assert result.loss == pytest.approx(expected)
    correct = (head(features[:8]).argmax(1) == labels[:8]).sum().item()
    assert result.accuracy == pytest.approx(correct / 8)
