"""``sagedrop aws configure`` against a moto stack made from the real template."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from sagedrop import aws_configure, cli, wheels_upload
from sagedrop.paths import CONTRACT, REPO_ROOT

REGION = "eu-west-1"
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")


@pytest.fixture
def session(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        template = (REPO_ROOT / "infra_templates" / "pipeline.yaml").read_text()
        session.client("cloudformation").create_stack(
            StackName="sd", TemplateBody=template, Capabilities=["CAPABILITY_IAM"]
        )
        yield session


def fake_images(region, training_type, inference_type):
    registry = f"763104351884.dkr.ecr.{region}.amazonaws.com"
    return (
        f"{registry}/pytorch-training:2.10.0-{training_type}-py313",
        f"{registry}/pytorch-inference:2.6.0-{inference_type}-py312",
    )


def fake_wheels(log: list | None = None):
    """Stands in for pip download: one wheel named after each request."""

    def fetch(requirements, python, destination, resolve_deps):
        if log is not None:
            log.append((requirements.name, python, resolve_deps))
        destination.mkdir(parents=True, exist_ok=True)
        tag = python.replace(".", "")
        (destination / f"pkg-1.0-cp{tag}-cp{tag}-manylinux_2_28_x86_64.whl").write_bytes(b"w")

    return fetch


def test_configure_writes_the_stage_and_uploads_the_code(session, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    fetched = []

    def fetch(url, destination, name):  # stands in for download.pytorch.org
        fetched.append(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(name.encode())

    config_path = tmp_path / "config.json"
    config_path.write_text(
        json.dumps(
            {
                "version": "2.0",
                "app_name": "sagedrop",
                "stages": {
                    "dev": {"environment_variables": {"X": "1"}},
                    "prod": {"environment_variables": {"TUNING_MAX_JOBS": "20"}},
                },
            }
        )
    )
    wheel_requests: list = []
    env = aws_configure.configure(
        "sd", "prod", session, config_path=config_path, image_resolver=fake_images,
        weights_fetch=fetch, wheels_fetch=fake_wheels(wheel_requests),
    )  # fmt: skip
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in session.client("cloudformation").describe_stacks(StackName="sd")["Stacks"][0][
            "Outputs"
        ]
    }
    config = json.loads(config_path.read_text())
    prod = config["stages"]["prod"]
    assert config["stages"]["dev"] == {"environment_variables": {"X": "1"}}
    assert prod["manage_iam_role"] is False
    assert prod["iam_role_arn"] == outputs["LambdaRoleArn"]
    variables = prod["environment_variables"]
    assert variables["TUNING_MAX_JOBS"] == "20"  # the user's own settings survive
    assert variables["DATA_BUCKET"] == outputs["DataBucketName"]
    assert variables["INFERENCE_BUCKET"] == outputs["InferenceBucketName"]
    assert variables["TOPIC_ARN"] == outputs["TopicArn"]
    assert variables["SAGEMAKER_ROLE_ARN"] == outputs["SageMakerRoleArn"]
    assert variables["TRAINING_IMAGE"].endswith("pytorch-training:2.10.0-ml.g4dn.xlarge-py313")
    assert variables["INFERENCE_IMAGE"].endswith("pytorch-inference:2.6.0-ml.m5.large-py312")
    assert variables == {**variables, **env}

    bucket, key = variables["CODE_S3_URI"][len("s3://") :].split("/", 1)
    body = session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        # The shared contract travels beside train.py, under its one import name.
        for name in ("__init__.py", "dataset_rules.py", "job_contract.py", "artifact_layout.py"):
            member = members[f"sagedrop_contract/{name}"]
            assert member.isfile()
            assert archive.extractfile(member).read() == (CONTRACT / name).read_bytes()
    serving = {f"sagedrop_serving/{n}" for n in ("inference.py", "model_def.py", "image_io.py")}
    assert {"train.py", "offline_api.py", *serving} <= set(members)
    assert not any("__pycache__" in name for name in members)

    # Every backbone's ImageNet weights, fetched once (issue 22): the jobs' weights channel.
    assert fetched == [
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "https://download.pytorch.org/models/resnet34-b627a593.pth",
        "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    ]
    bucket, prefix = variables["WEIGHTS_S3_URI"][len("s3://") :].split("/", 1)
    listed = session.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[-1] for o in listed) == [
        "resnet18-f37072fd.pth", "resnet34-b627a593.pth", "resnet50-11ad3fa6.pth"
    ]  # fmt: skip
    # The wheels, for each image's own Python (issue 22): the jobs' wheels channel.
    assert wheel_requests == [
        ("requirements.txt", "3.13", True),  # training_code's, with what it depends on
        ("runtime-requirements.txt", "3.12", False),  # the artifact's hash-pinned runtime
    ]
    bucket, prefix = variables["WHEELS_S3_URI"][len("s3://") :].split("/", 1)
    listed = session.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    assert sorted(o["Key"][len(prefix) :] for o in listed) == [
        "inference/pkg-1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "training/pkg-1.0-cp313-cp313-manylinux_2_28_x86_64.whl",
    ]
    again = aws_configure.configure(
        "sd", "prod", session, config_path=config_path, image_resolver=fake_images,
        weights_fetch=fetch, wheels_fetch=fake_wheels(),
    )  # fmt: skip
    assert len(fetched) == 3 and again["WEIGHTS_S3_URI"] == variables["WEIGHTS_S3_URI"]

    # The settings the Lambdas will read parse without error.
    from chalicelib.settings import Settings

    read = Settings.from_env(variables)
    assert read.code_s3_uri == variables["CODE_S3_URI"]
    assert read.weights_s3_uri == variables["WEIGHTS_S3_URI"]
    assert read.wheels_s3_uri == variables["WHEELS_S3_URI"] and read.network_isolation


def test_an_image_without_a_python_tag_stops_configure(session, tmp_path):
    def untagged(region, training_type, inference_type):
        return "custom/training:latest", "custom/inference:latest"

    with pytest.raises(aws_configure.ConfigureError, match="no Python version"):
        aws_configure.configure(
            "sd", "prod", session, config_path=tmp_path / "c.json", image_resolver=untagged,
            weights_fetch=None, wheels_fetch=fake_wheels(),
        )  # fmt: skip
    assert not (tmp_path / "c.json").exists()


def test_the_download_asks_pip_for_the_images_platform_not_this_machines(monkeypatch, tmp_path):
    """pip download is told the image's interpreter and platform and wheels only; it gets
    the requirements without the job's --no-index, which would stop it."""
    seen = {}

    def run(command, **kwargs):
        seen["command"] = command
        seen["listed"] = Path(command[command.index("-r") + 1]).read_text()
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(wheels_upload.subprocess, "run", run)
    wheels_upload.pip_download(
        wheels_upload.TRAINING_REQUIREMENTS, "3.13", tmp_path / "training", True
    )
    command = seen["command"]
    assert command[command.index("--python-version") + 1] == "3.13"
    assert command[command.index("--only-binary") + 1] == ":all:"
    assert "manylinux_2_28_x86_64" in command and "--no-deps" not in command
    assert "--no-index" not in seen["listed"] and "onnxruntime==" in seen["listed"]
    job_file = wheels_upload.TRAINING_REQUIREMENTS.read_text().splitlines()
    assert "--no-index" in job_file  # the job's own pip never reaches an index
    assert "--find-links ../input/data/wheels/training" in job_file


def test_code_archive_is_reproducible():
    assert aws_configure.pack_training_code() == aws_configure.pack_training_code()


def test_deploy_vendors_the_contract_into_the_lambda_package(tmp_path):
    """Chalice puts ``vendor/``'s contents at the top of the zip: ``sagedrop_contract`` there
    is what ``chalicelib`` imports. A module no longer in the contract does not linger."""
    stale = tmp_path / "vendor" / "sagedrop_contract" / "removed_module.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("x = 1\n")
    target = aws_configure.vendor_contract(tmp_path)
    assert target == tmp_path / "vendor" / "sagedrop_contract"
    copied = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert copied == sorted(p.name for p in CONTRACT.glob("*.py"))
    assert (target / "job_contract.py").read_bytes() == (CONTRACT / "job_contract.py").read_bytes()


def test_missing_stack_says_how_to_create_it(session, tmp_path, capsys, monkeypatch):
    with pytest.raises(aws_configure.ConfigureError, match="cloudformation deploy"):
        aws_configure.configure(
            "nope", "prod", session, config_path=tmp_path / "c.json", image_resolver=fake_images,
            weights_fetch=None,
        )  # fmt: skip
    assert not (tmp_path / "c.json").exists()


def test_images_resolve_offline_with_the_sagemaker_sdk():
    training, inference = aws_configure.resolve_images(REGION, "ml.g4dn.xlarge", "ml.m5.large")
    assert training.startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:")
    assert "-gpu-" in training
    assert inference.startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:")
    assert "-cpu-" in inference
    assert wheels_upload.image_python(training) == "3.13"
    assert wheels_upload.image_python(inference) == "3.12"


def test_deploy_exports_the_stage_variables_to_chalice(tmp_path):
    config_path = tmp_path / "config.json"
    aws_configure.write_chalice_stage(
        config_path, "prod", {"DATA_BUCKET": "d", "INFERENCE_BUCKET": "i"}, "arn:role"
    )
    command, environment = aws_configure.deploy_command("prod", config_path)
    assert command[-3:] == ["deploy", "--stage", "prod"]
    assert environment["DATA_BUCKET"] == "d" and environment["INFERENCE_BUCKET"] == "i"
    with pytest.raises(aws_configure.ConfigureError, match="configure"):
        aws_configure.deploy_command("staging", config_path)


def test_cli_reports_a_missing_stack(session, capsys):
    assert cli.main(["aws", "configure", "--stack", "nope", "--region", REGION]) == 1
    assert "not found" in capsys.readouterr().err


class _NoDependencies:
    """Chalice's dependency builder, minus pip: the Lambda's third-party packages are not
    what this test is about (and nothing downloads in tests)."""

    def build_site_packages(self, abi, requirements_filepath, target_directory) -> None:
        return None


def test_chalices_own_packager_puts_the_vendored_contract_where_chalicelib_imports_it(tmp_path):
    """The zip ``chalice deploy`` uploads, assembled by Chalice's packager from a copy of
    the app with the contract vendored: ``sagedrop_contract`` at the top, beside
    ``chalicelib``, and ``import app`` from the unpacked zip finds it there."""
    import zipfile

    from chalice.deploy.packager import LambdaDeploymentPackager
    from chalice.utils import UI, OSUtils

    app_dir = tmp_path / "app"
    shutil.copytree(REPO_ROOT / "chalice_app", app_dir,
                    ignore=shutil.ignore_patterns("__pycache__", ".chalice", "vendor"))  # fmt: skip
    aws_configure.vendor_contract(app_dir)
    packager = LambdaDeploymentPackager(OSUtils(), _NoDependencies(), UI())
    package = packager.create_deployment_package(str(app_dir), "python3.11")
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "lambda")
    assert {"app.py", "chalicelib/flow.py", "sagedrop_contract/job_contract.py"} <= names
    probe = "import app, sagedrop_contract, chalicelib; print(sagedrop_contract.__file__)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path / "lambda",
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "AWS_DEFAULT_REGION": REGION})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(tmp_path / "lambda")
