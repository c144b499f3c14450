"""``train.py --debug true`` for real: what a debug job leaves for the pipeline and for people.

rules.json in the shape of DebugRuleEvaluationStatuses, rule verdicts as metric lines the
job's MetricDefinitions read, a self-contained report.html with its plots, TensorBoard
event files where TensorBoardOutputConfig looks, a torch.profiler trace, the stop action,
and ``sagedrop rules evaluate`` agreeing with the job.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from sagedrop import cli
from sagedrop_contract.job_contract import (
    DEBUG_METRIC_DEFINITIONS,
    RULE_NAMES,
    RULE_STATUSES,
    parse_metric_lines,
    rule_statuses,
)
from sagedrop_debugging.debug_trace import read_trace
from tests.helpers import TINY_HYPERPARAMETERS, failure_line, run_train

pytestmark = pytest.mark.slow


def debug_run(job, dataset, *extra: str, hyperparameters=TINY_HYPERPARAMETERS):
    """train.py --debug true in a container-shaped folder ``job``."""
    (job / "output").mkdir(parents=True, exist_ok=True)
    env = {
        "SM_MODEL_DIR": str(job / "model"),
        "SM_OUTPUT_DATA_DIR": str(job / "output" / "data"),
        "SM_OUTPUT_DIR": str(job / "output"),
    }
    args = [*hyperparameters, "--data", str(dataset["zip"]), "--work-dir", str(job / "work")]
    return run_train([*args, "--debug", "true", *extra], env)


@pytest.fixture(scope="module")
def debug_job(tmp_path_factory, tiny_dataset):
    job = tmp_path_factory.mktemp("debug-job")
    rules = {"CPUBottleneck": {"patience": 0}, "StepOutlier": {"n_outliers": 0}}
    result = debug_run(
        job,
        tiny_dataset,
        "--debug-save-interval",
        "2",
        "--profiler-interval-ms",
        "100",
        "--profiler-trace-steps",
        "1-2",
        "--rules",
        json.dumps(rules),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {"dir": job, "out": job / "output" / "data", "log": result.stdout + result.stderr}


def test_rules_json_has_every_rule_in_sagemakers_shape(debug_job):
    statuses = json.loads((debug_job["out"] / "rules.json").read_text())
    assert [s["RuleConfigurationName"] for s in statuses] == list(RULE_NAMES)
    for status in statuses:
        assert set(status) == {"RuleConfigurationName", "RuleEvaluationStatus", "StatusDetails"}
        assert status["RuleEvaluationStatus"] in ("NoIssuesFound", "IssuesFound", "Error")
        assert status["StatusDetails"]
    by_name = {s["RuleConfigurationName"]: s for s in statuses}
    details = by_name["CPUBottleneck"]["StatusDetails"]  # a CPU host has no GPU readings
    assert details.startswith("not judged") and "no GPU" in details
    verdicts = json.loads((debug_job["out"] / "rule_verdicts.json").read_text())
    assert {v["RuleConfigurationName"]: v["Judged"] for v in verdicts}["CPUBottleneck"] is False


def test_verdicts_reach_the_gate_through_metric_lines(debug_job):
    found = parse_metric_lines(debug_job["log"], DEBUG_METRIC_DEFINITIONS)
    final = {name: values[-1] for name, values in found.items()}
    statuses = json.loads((debug_job["out"] / "rules.json").read_text())
    from_metrics = rule_statuses(final)
    assert [(s["RuleConfigurationName"], s["RuleEvaluationStatus"]) for s in from_metrics] == [
        (s["RuleConfigurationName"], s["RuleEvaluationStatus"]) for s in statuses
    ]
    assert set(RULE_STATUSES.values()) >= {s["RuleEvaluationStatus"] for s in statuses}
    assert "test_accuracy" in final


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.captions: list[str] = []
        self.rows = 0
        self.external: list[str] = []
        self.text = ""
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self._in_caption = tag == "figcaption"
        self.rows += tag == "tr"
        for name, value in attrs:
            if name in ("src", "href") and value and "://" in value:
                self.external.append(value)

    def handle_data(self, data):
        self.text += data
        if self._in_caption:
            self.captions.append(data)
            self._in_caption = False


def test_report_is_one_self_contained_page_with_its_plots(debug_job):
    page = _Page()
    page.feed((debug_job["out"] / "report.html").read_text())
    assert page.tags.get("script", 0) == 0 and page.external == []
    audit = json.loads((debug_job["out"] / "data_audit.json").read_text())
    groups = min(len(audit["groups"]), 20)
    audit_rows = 1 + 7 + (1 + groups if groups else 0)  # headline table, duplicate groups
    assert page.rows == 1 + len(RULE_NAMES) + 1 + 15 + audit_rows  # rules, operators, audit
    assert "Data audit" in page.text and "Likely label errors" in page.text
    captions = " | ".join(page.captions)
    for title in (
        "Training loss per step vs validation loss per epoch",
        "Mean |gradient| per layer over steps",
        "ReLU input variance per layer",
        "System utilisation over time",
        "Mean step time by phase, per epoch",
        "Step duration",
    ):
        assert title in captions
    assert page.tags["svg"] >= 7 and page.tags["polyline"] >= 4 and page.tags["rect"] > 100


def test_tensorboard_files_and_the_torch_profiler_trace(debug_job):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(debug_job["dir"] / "output" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {
        "train/loss",
        "epoch/valid_loss",
        "gradients/fc.weight/norm",
        "system/cpu_total",
    } <= set(scalars)
    records = read_trace(debug_job["out"])
    losses = [r["loss"] for r in records if r["kind"] == "loss"]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)
    trace = json.loads((debug_job["out"] / "profiler" / "trace.json").read_text())
    assert trace["traceEvents"]


def test_sagedrop_rules_evaluate_agrees_with_the_job(debug_job, capsys, tmp_path):
    def evaluate(*extra: str) -> int:
        return cli.main(["rules", "evaluate", str(debug_job["out"]), "--json", *extra])

    assert evaluate("--report", str(tmp_path / "again.html")) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert replayed == json.loads((debug_job["out"] / "rule_verdicts.json").read_text())
    assert (tmp_path / "again.html").read_text().count("<svg") >= 7
    # other parameters, judged offline without re-training
    assert evaluate("--rules", '{"StepOutlier": false}') == 0
    assert "StepOutlier" not in capsys.readouterr().out
    assert cli.main(["rules", "evaluate", str(tmp_path / "nowhere")]) == 1


def test_a_bad_rules_hyperparameter_fails_fast_with_the_reason(tiny_dataset, tmp_path):
    result = debug_run(tmp_path, tiny_dataset, "--rules", '{"Overfitting": {"patience": 2}}')
    assert result.returncode == 1
    assert "unknown rule(s) Overfitting" in failure_line(result)


def test_a_stop_rule_ends_the_job_with_its_report(tiny_dataset, tmp_path):
    huge_lr = [a if a != "0.05" else "1e12" for a in TINY_HYPERPARAMETERS]  # --lr 1e12
    result = debug_run(
        tmp_path,
        tiny_dataset,
        "--debug-save-interval",
        "1",
        "--rules",
        '{"ExplodingTensor": {"stop": true}}',
        hyperparameters=huge_lr,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert failure_line(result).startswith("Exception: training stopped by rule ExplodingTensor: ")
    statuses = json.loads((tmp_path / "output" / "data" / "rules.json").read_text())
    assert {
        "RuleConfigurationName": "ExplodingTensor",
        "RuleEvaluationStatus": "IssuesFound",
    }.items() <= statuses[1].items()
    assert (tmp_path / "output" / "data" / "report.html").is_file()
    assert not (tmp_path / "model" / "model.pt").exists()
    assert "rule_ExplodingTensor=1" in result.stdout


def test_both_training_paths_record_the_same_trace(tmp_path, tiny_dataset):
    """One loop for images and cached features: the debug trace of each has the same
    kinds of record, validation losses included (the cached path once recorded none)."""
    kinds = {}
    for path, extra in {
        "images": ("--cache-features", "false"),
        "cached features": ("--freeze", "backbone", "--cache-features", "true"),
    }.items():
        job = tmp_path / path.replace(" ", "-")
        result = debug_run(job, tiny_dataset, "--debug-save-interval", "1", *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert ("cached features=True" in result.stdout) is (path == "cached features")
        records = read_trace(job / "output" / "data" / "debug_trace.jsonl")
        kinds[path] = {r["kind"] for r in records} - {"operators", "system"}
        eval_epochs = {r["epoch"] for r in records if r["kind"] == "eval_loss"}
        assert eval_epochs == {1, 2}, path
    assert kinds["images"] == kinds["cached features"]
    assert {"eval_loss", "loss", "step", "tensors", "eval"} <= kinds["images"]
