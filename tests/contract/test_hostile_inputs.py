"""Issue 10, as an attacker and an unlucky operator would try it: one test per finding.

Each test builds its own hostile input and shows the check firing on it; the number in a
test's name is the finding's number in the issue.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from botocore.exceptions import ClientError
from torch import nn

from chalicelib import flow, notify, sagemaker_requests
from chalicelib.artifact_check import artifact_problems
from chalicelib.settings import Settings, SettingsError
from sagedrop.local.s3 import LocalS3
from sagedrop.local.sns import LocalSNS
from sagedrop.local.state import State
from sagedrop_contract import artifact_layout, hyperparameter_rules
from sagedrop_contract.dataset_rules import inspect_entries, inspect_zip
from sagedrop_contract.hyperparameter_rules import HyperparameterError
from sagedrop_training import fit_loop
from sagedrop_training.ddp_runtime import Runtime
from tests.helpers import failure_line, jpeg_bytes, layout, make_zip, run_train
from tests.stubbed_aws import DATA, debug_job, model_archive

NO_ISSUES = [
    {"RuleConfigurationName": "VanishingGradient", "RuleEvaluationStatus": "NoIssuesFound"}
]


def config_zip(cloud, config: dict | bytes, key: str = "datasets/pets.zip") -> str:
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    return cloud.put_zip(key, {**layout(), "sagedrop.json": raw})


def rejection(cloud) -> dict:
    [message] = cloud.messages()
    assert message["status"] == "rejected", message
    return message


# 1. framework keys -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config",
    [
        {"hyperparameters": {"sagemaker_program": "__main__.py"}},
        {"hyperparameters": {"sagemaker_submit_directory": "s3://evil/code.tar.gz"}},
        {"hyperparameters": {"SAGEMAKER_PROGRAM": "x.py"}},
        {"hyperparameters": {"_tuning_objective_metric": "x"}},
        {"ranges": {"sagemaker_program": {"type": "categorical", "values": ["x.py"]}}},
    ],
)
def test_1_a_dataset_cannot_choose_the_code_a_job_runs(cloud, config):
    etag = config_zip(cloud, config)
    assert flow.dataset_uploaded(DATA, "datasets/pets.zip", etag, cloud.settings) == "rejected"
    reasons = " ".join(rejection(cloud)["reasons"])
    assert "reserved for SageMaker's toolkits" in reasons


def test_1_framework_keys_in_a_request_are_always_the_builders():
    settings = Settings(code_s3_uri="s3://data/code/sourcedir.tar.gz")
    static = sagemaker_requests.static_hyperparameters(settings)
    assert json.loads(static["sagemaker_program"]) == "train.py"
    # isolated (the default): the code channel's copy of that very archive
    assert (
        json.loads(static["sagemaker_submit_directory"]) == sagemaker_requests.CONTAINER_CODE_PATH
    )
    online = sagemaker_requests.static_hyperparameters(replace(settings, network_isolation=False))
    assert json.loads(online["sagemaker_submit_directory"]) == "s3://data/code/sourcedir.tar.gz"
    with pytest.raises(SettingsError, match="reserved"):
        Settings(static_hyperparameters={"sagemaker_program": "evil.py"})


# 2. path keys ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key", ["model-dir", "output-data-dir", "work-dir", "weights-path", "tensorboard-dir", "data"]
)
def test_2_a_dataset_cannot_choose_paths(cloud, key):
    etag = config_zip(cloud, {"hyperparameters": {key: "/tmp/elsewhere"}})
    assert flow.dataset_uploaded(DATA, "datasets/pets.zip", etag, cloud.settings) == "rejected"
    assert f"'{key}' names a path" in " ".join(rejection(cloud)["reasons"])


def test_2_train_py_refuses_a_path_it_was_handed_as_a_hyperparameter(tmp_path, tiny_dataset):
    """Defence in depth: a request built some other way still cannot move the model."""
    output = tmp_path / "output"
    output.mkdir()
    env = {
        "SM_HPS": json.dumps({"epochs": "1", "model-dir": str(tmp_path / "stolen")}),
        "SM_OUTPUT_DIR": str(output),
    }
    result = run_train(
        ["--data", str(tiny_dataset["zip"]), "--model-dir", str(tmp_path / "stolen")], env
    )
    assert result.returncode == 2
    assert "'model-dir' names a path" in failure_line(result)
    assert not (tmp_path / "stolen").exists()


@pytest.mark.parametrize(
    ("archive", "expected"),
    [
        ({"omit": ("code/inference.py",)}, "has no code/inference.py"),
        ({"omit": ("model.pt",)}, "has no model.pt"),
        (
            {"omit": ("model.pt", "code/inference.py", "classes.json", "config.json")},
            "has no model.pt",
        ),
        ({"classes_json": b'{"0": "cat"}'}, "classes.json is not a list of classes"),
        ({"coverage": False}, "does not say which classes its test split covered"),
        # what the endpoint's model_fn reads with the same parser (artifact_layout)
        ({"config": {"format_version": 2}}, "config.json is format 2; this code reads format 1"),
        ({"config": {"num_classes": 3}}, "config.json says 3 classes, classes.json lists 2"),
    ],
)
def test_2_the_gate_refuses_an_artifact_that_cannot_serve(cloud, archive, expected):
    name, described = debug_job(cloud, 0.99, NO_ISSUES, model=model_archive(**archive))
    cloud.stub.add_response("describe_training_job", described)
    cloud.stub.add_client_error(
        "describe_endpoint", "ValidationException", 'Could not find endpoint "x".'
    )
    cloud.stub.add_response("list_tags", {"Tags": []})  # the debug job's: no serving choice
    detail = {"TrainingJobName": name, "TrainingJobStatus": "Completed"}
    assert flow.training_finished(detail, cloud.settings) == "blocked"
    assert any(expected in reason for reason in cloud.messages()[0]["reasons"])


def test_2_the_gate_refuses_classes_that_differ_from_the_datasets(cloud):
    archive = model_archive(classes=("001.cat", "003.fish"))
    name, described = debug_job(cloud, 0.99, NO_ISSUES, model=archive)
    cloud.stub.add_response("describe_training_job", described)
    cloud.stub.add_client_error(
        "describe_endpoint", "ValidationException", 'Could not find endpoint "x".'
    )
    cloud.stub.add_response("list_tags", {"Tags": []})  # the debug job's: no serving choice
    detail = {"TrainingJobName": name, "TrainingJobStatus": "Completed"}
    assert flow.training_finished(detail, cloud.settings) == "blocked"
    reason = cloud.messages()[0]["reasons"][0]
    assert "missing 002.dog" in reason and "not in the dataset 003.fish" in reason


# 3. bucket names ---------------------------------------------------------------------------
@pytest.mark.parametrize("bucket", ["..", "/etc", "b/../other", "sagedrop-data/../x", "UPPER", "a"])
def test_3_a_bucket_name_is_never_a_path(tmp_path, bucket):
    state = State(tmp_path / "state.sqlite")
    s3 = LocalS3(tmp_path, state)
    (tmp_path / "secret.txt").write_text("secret")
    for call, params in (
        (s3.get_object, {"Key": "secret.txt"}),
        (s3.put_object, {"Key": "x", "Body": b"x"}),
        (s3.list_objects_v2, {}),
    ):
        with pytest.raises(ClientError) as caught:
            call(Bucket=bucket, **params)
        assert caught.value.response["Error"]["Code"] == "InvalidBucketName"
    assert not (tmp_path / "x").exists()
    state.close()


def test_3_a_symlink_in_a_bucket_folder_is_neither_read_nor_announced(tmp_path):
    from sagedrop.local.s3 import FolderWatcher

    state = State(tmp_path / "state.sqlite")
    s3 = LocalS3(tmp_path, state)
    s3.ensure_bucket("sagedrop-data")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    folder = tmp_path / "buckets" / "sagedrop-data"
    (folder / "datasets").mkdir()
    os.symlink(outside / "passwd", folder / "datasets" / "link.zip")
    os.symlink(outside, folder / "dir")
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket="sagedrop-data", Key="datasets/link.zip")
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError):
        s3.get_object(Bucket="sagedrop-data", Key="dir/passwd")
    assert "Contents" not in s3.list_objects_v2(Bucket="sagedrop-data")
    watcher = FolderWatcher(s3)
    assert watcher.scan() == [] and watcher.scan() == []
    assert state.pending_events() == []
    with pytest.raises(ClientError):  # writing through the linked folder is refused too
        s3.put_object(Bucket="sagedrop-data", Key="dir/new.txt", Body=b"x")
    assert not (outside / "new.txt").exists()
    state.close()


# 4. many entries just under the per-entry bomb check ----------------------------------------
def test_4_a_bomb_spread_over_many_entries_is_caught_as_a_whole(tmp_path):
    members = {**layout()}
    for i in range(40):  # each just under the 1 MiB where the per-entry ratio check starts
        members[f"train/001.cat/zeros_{i}.bmp"] = bytes(1024 * 1024 - 1)
    path = make_zip(tmp_path / "bomb.zip", members)
    assert path.stat().st_size < 1024 * 1024  # 40 MiB of zeros in a small archive
    report = inspect_zip(path)
    assert any("as a whole" in p and "zip bomb" in p for p in report.problems), report.problems


# 5. unbounded resources ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"max_jobs": 10_000}, "'max_jobs' must be between 1 and 100"),
        ({"max_parallel_jobs": 50}, "'max_parallel_jobs' must be between 1 and 10"),
        ({"epochs": 10_000}, "'epochs' must be between 1 and 100"),
        ({"hyperparameters": {"epochs": 10_000}}, "'epochs' must be an integer in"),
        ({"hyperparameters": {"image-size": 4096}}, "'image-size' must be an integer in"),
        ({"hyperparameters": {"num-workers": 512}}, "'num-workers' must be an integer in"),
        (
            {"ranges": {"image-size": {"type": "integer", "min": 64, "max": 8192}}},
            "'image-size' must be an integer in",
        ),
    ],
)
def test_5_limits_are_bounded_and_the_refusal_names_the_key(config, match):
    with pytest.raises(SettingsError, match=match):
        Settings().with_dataset_overrides(config)


# 6. a deeply nested sagedrop.json and a handler failure ---------------------------------
def test_6_deeply_nested_config_is_refused_with_a_reason(cloud):
    nested = b"[" * 30_000 + b"]" * 30_000  # 60 KB: RecursionError in plain json.loads
    etag = config_zip(cloud, nested)
    assert flow.dataset_uploaded(DATA, "datasets/pets.zip", etag, cloud.settings) == "rejected"
    assert "nests 30000 levels deep" in " ".join(rejection(cloud)["reasons"])


def test_6_rules_given_as_a_deeply_nested_string_are_refused(cloud):
    etag = config_zip(cloud, {"hyperparameters": {"rules": "[" * 2400 + "]" * 100}})
    assert flow.dataset_uploaded(DATA, "datasets/pets.zip", etag, cloud.settings) == "rejected"
    assert "'rules' nests too deeply" in " ".join(rejection(cloud)["reasons"])


def test_6_a_handler_failure_ends_in_a_notice_not_only_a_log(cloud, monkeypatch):
    monkeypatch.setenv("TOPIC_ARN", cloud.topic)

    def broken(*args):
        raise RecursionError("maximum recursion depth exceeded")

    result = flow.handle(None, "dataset", broken, dataset=f"s3://{DATA}/datasets/x.zip")
    assert result == "failed"
    [message] = cloud.messages()
    assert message["status"] == "error" and "RecursionError" in message["failure_reason"]
    assert message["dataset"] == f"s3://{DATA}/datasets/x.zip"


def test_6_transient_errors_are_left_to_lambdas_retries(cloud, monkeypatch):

    monkeypatch.setenv("TOPIC_ARN", cloud.topic)
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}}, "X")

    def busy(*args):
        raise throttled

    with pytest.raises(ClientError):
        flow.handle(None, "tuning", busy)
    assert cloud.messages() == []


# 8. a class whose every test image is unreadable -----------------------------------------
@pytest.mark.slow
def test_8_a_class_without_readable_test_images_is_named_and_blocks(tmp_path, tiny_dataset):
    members = {}
    with zipfile.ZipFile(tiny_dataset["zip"]) as archive:
        for info in archive.infolist():
            members[info.filename] = archive.read(info)
    victims = [n for n in members if "/test/" in f"/{n}" and "/002." in n]
    assert victims
    for name in victims:
        members[name] = b"not a jpeg at all"
    dataset = make_zip(tmp_path / "broken.zip", members)
    model = tmp_path / "model"
    env = {"TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    args = ["--data", str(dataset), "--model-dir", str(model), "--output-data-dir"]
    args += [str(tmp_path / "out"), "--epochs", "1", "--batch-size", "8", "--image-size", "32"]
    args += ["--pretrained", "false", "--num-workers", "0"]
    result = run_train(args, env)
    assert result.returncode == 0, result.stdout + result.stderr
    sizes, documents = _artifact_of(model)
    folders = [c["folder"] for c in documents["classes.json"]]
    problems = artifact_problems(sizes, documents, folders)
    assert len(problems) == 1 and "have no readable test image" in problems[0]
    victim = next(c for c in documents["classes.json"] if c["folder"].startswith("002."))
    assert f": {victim['label']}." in problems[0]
    # 12: the run's extraction folder is gone with the run
    assert list((tmp_path / "tmp").iterdir()) == []


def _artifact_of(model_dir: Path) -> tuple[dict, dict]:
    sizes = {
        p.relative_to(model_dir).as_posix(): p.stat().st_size
        for p in model_dir.rglob("*")
        if p.is_file()
    }
    documents = {n: json.loads((model_dir / n).read_text()) for n in artifact_layout.DESCRIPTORS}
    return sizes, documents


# 11. notices ------------------------------------------------------------------------------
def test_11_a_notice_with_20000_reasons_fits_sns_and_says_how_many_more(tmp_path):
    reasons = [
        f"Entry 'train/x/{i:05d}.jpg' is encrypted; it cannot be read." for i in range(20_000)
    ]
    notice = notify.Notice(stage="dataset", status="rejected", summary="no", reasons=reasons)
    assert len(notice.body().encode()) > notify.MESSAGE_LIMIT  # what used to be sent
    fitted = notice.fitted()
    assert len(fitted.body().encode()) <= notify.MESSAGE_BUDGET < notify.MESSAGE_LIMIT
    assert fitted.reasons[0] == reasons[0]
    assert fitted.reasons[-1].startswith("... and ") and "more" in fitted.reasons[-1]
    dropped = int(fitted.reasons[-1].split()[2])
    assert len(fitted.reasons) - 1 + dropped == len(reasons)
    sns = LocalSNS(tmp_path, say=lambda _: None)
    topic = "arn:aws:sns:local:000000000000:t"
    with pytest.raises(ClientError) as caught:  # SNS's own limit, as AWS enforces it
        sns.publish(TopicArn=topic, Message=notice.body())
    assert caught.value.response["Error"]["Code"] == "InvalidParameter"
    notify.publish(sns, topic, notice)  # what the pipeline sends
    assert sns.topic_file(topic).exists()


# 13. the smaller ones ------------------------------------------------------------------------
def test_13_upper_case_image_and_dataset_names_have_triggers():
    import app as chalice_app

    suffixes = {s.suffix for s in chalice_app.app.event_sources if hasattr(s, "suffix")}
    assert {".zip", ".ZIP"} <= suffixes
    # images: one rule for the whole prefix, the type decided in the handler in any case
    assert None in suffixes


@pytest.mark.parametrize(
    ("key", "code"),
    [("images/a\x00b.jpg", "InvalidArgument"), ("images/" + "x" * 1020, "KeyTooLongError")],
)
def test_13_nul_and_over_long_keys_are_s3_errors_and_leave_no_temp_file(tmp_path, key, code):
    state = State(tmp_path / "state.sqlite")
    s3 = LocalS3(tmp_path, state)
    s3.ensure_bucket("sagedrop-inference")
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket="sagedrop-inference", Key=key, Body=b"x")
    assert caught.value.response["Error"]["Code"] == code
    assert list((tmp_path / "tmp").iterdir()) == []
    state.close()


def test_13_a_name_too_long_for_a_folder_is_an_s3_error_then_a_notice(tmp_path):
    state = State(tmp_path / "state.sqlite")
    s3 = LocalS3(tmp_path, state)
    s3.ensure_bucket("sagedrop-inference")
    image = "images/" + "y" * 247 + ".jpg"  # 251 characters: the image fits, `.json` does not
    s3.put_object(Bucket="sagedrop-inference", Key=image, Body=jpeg_bytes())
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket="sagedrop-inference", Key=image + ".json", Body=b"{}")
    assert caught.value.response["Error"]["Code"] == "InvalidArgument"
    assert list((tmp_path / "tmp").iterdir()) == []
    state.close()


def test_13_a_batch_cut_to_one_image_does_not_crash_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4))
    model.append(nn.Flatten())
    batches = [(torch.randn(1, 3, 8, 8), torch.tensor([1]), ["x.jpg: unreadable"])]
    batches.append((torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), []))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    result = fit_loop.train_epoch(model, batches, optimizer, nn.CrossEntropyLoss(), runtime)
    assert result.samples == 4 and result.unreadable == ["x.jpg: unreadable"]


def test_13_a_bad_value_fails_with_one_line_not_a_usage_dump(tmp_path, tiny_dataset):
    output = tmp_path / "output"
    output.mkdir()
    result = run_train(
        ["--data", str(tiny_dataset["zip"]), "--lr", "fast"], {"SM_OUTPUT_DIR": str(output)}
    )
    assert result.returncode == 2
    reason = failure_line(result)
    expected = "invalid hyperparameter: argument --lr: invalid float value: 'fast'"
    assert reason == f"ValueError: {expected}"
    assert "usage:" not in result.stdout + result.stderr


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_13_non_finite_numbers_in_a_config_are_refused_by_name(cloud, bad):
    raw = b'{"ranges": {"lr": {"type": "continuous", "min": 0.001, "max": ' + bad.encode() + b"}}}"
    etag = config_zip(cloud, raw)
    assert flow.dataset_uploaded(DATA, "datasets/pets.zip", etag, cloud.settings) == "rejected"
    assert f"{bad} is not a JSON number" in " ".join(rejection(cloud)["reasons"])


@pytest.mark.parametrize(
    "pair",
    [("001.Cat", "002.cat"), ("caf\u00e9", "cafe\u0301"), ("Dog", "DOG")],
)
def test_13_names_differing_only_in_case_or_normalisation_are_one_class(pair):
    entries = []
    for split in ("train", "valid", "test"):
        for folder in pair:
            entries.append(_entry(f"{split}/{folder}/a.jpg"))
    entries += [_entry(f"{s}/other/a.jpg") for s in ("train", "valid", "test")]
    report = inspect_entries(entries)
    assert any(
        "differ only in case or Unicode" in p or "all give the label" in p for p in report.problems
    ), report.problems


def _entry(name: str):
    from sagedrop_contract.dataset_rules import Entry

    return Entry(name=name, size=100, compressed_size=90)


def test_hyperparameter_allow_list_mirrors_train_py():
    """The shared list and train.py's parser name the same hyperparameters."""
    from sagedrop_training.job_arguments import build_parser

    options = {
        a.option_strings[-1][2:]
        for a in build_parser()._actions
        if a.option_strings and a.option_strings[-1].startswith("--")
    } - {"help"}
    listed = set(hyperparameter_rules.SETTABLE) | hyperparameter_rules.PATH_KEYS
    assert listed | hyperparameter_rules.PIPELINE_KEYS == options
    # ...and the same choices: a backbone added to train.py is settable only once listed.
    from sagedrop_serving.image_io import AUGMENTATIONS
    from sagedrop_serving.model_def import BACKBONES, FREEZE_MODES, PRETRAINED_MODES
    from sagedrop_training import graph_export
    from sagedrop_training.data_audit import LEAKAGE_POLICIES

    choices = {n: b.choices for n, b in hyperparameter_rules.SETTABLE.items() if b.kind == "choice"}
    assert choices == {
        "backbone": tuple(BACKBONES),
        "pretrained": PRETRAINED_MODES,
        "freeze": FREEZE_MODES,
        "augment": AUGMENTATIONS,
        "lr-schedule": ("cosine", "constant"),
        "cache-features": ("auto", "true", "false"),
        "export-graph": graph_export.EXPORT_MODES,
        "quantise": graph_export.QUANTISE_MODES,
        "leakage": LEAKAGE_POLICIES,
    }
    # A job's own list: the toolkit's keys pass through (it consumed them), paths never do.
    assert hyperparameter_rules.check_job_hyperparameters(
        {"sagemaker_program": "train.py", "_tuning_objective_metric": "x", "lr": "0.1"}
    ) == {"lr": "0.1"}
    with pytest.raises(HyperparameterError, match="names a path"):
        hyperparameter_rules.check_job_hyperparameters({"work-dir": "/"})


# 14. rules that had too little data say so, through the metrics, to the gate ----------------
def test_14_a_not_judged_rule_reaches_the_gate_as_such():
    from chalicelib.gate import quality_gate
    from sagedrop_contract.job_contract import rule_statuses

    rules = rule_statuses({"rule_VanishingGradient": 0.0, "rule_CPUBottleneck": 3.0})
    assert [(r["RuleEvaluationStatus"], r["Judged"]) for r in rules] == [
        ("NoIssuesFound", True),
        ("NoIssuesFound", False),
    ]
    decision = quality_gate(rules, 0.9, None, ("VanishingGradient",), 0.01)
    assert decision.deploy
    assert any("not judged" in r and "CPUBottleneck" in r for r in decision.reasons)
