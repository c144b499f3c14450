"""``sagedrop aws configure`` and ``sagedrop aws deploy``: from a CloudFormation stack to Chalice.

The stack (``infra_templates/pipeline.yaml``) owns the buckets, the topic and the roles;
Chalice owns the Lambdas and their event sources. This module joins them: it reads the
stack's outputs, resolves the Deep Learning Container images for the region, uploads the
training code as ``sourcedir.tar.gz`` and writes the stage into ``.chalice/config.json``.
The Lambdas themselves never import the SageMaker SDK (about 1 GB); only this step does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from sagedrop.paths import CHALICE_APP, CONTRACT, TRAINING_CODE
from sagedrop.weights_upload import download, environment_value, upload_weights
from sagedrop.wheels_upload import Fetch, WheelsError, pip_download, upload_wheels

CHALICE_CONFIG = CHALICE_APP / ".chalice" / "config.json"
APP_NAME = "sagedrop"
# The newest PyTorch Deep Learning Containers sagemaker-core knows; train.py and
# inference.py only use APIs that these versions have.
TRAINING_FRAMEWORK = ("2.10.0", "py313")
INFERENCE_FRAMEWORK = ("2.6.0", "py312")
CODE_PREFIX = "code/"
# The handler that reads output.tar.gz and deploys needs more than Lambda's 3 s default.
LAMBDA_TIMEOUT_SECONDS = 120
LAMBDA_MEMORY_MB = 512
_REQUIRED_OUTPUTS = (
    "DataBucketName",
    "InferenceBucketName",
    "TopicArn",
    "SageMakerRoleArn",
    "LambdaRoleArn",
    "EndpointPrefix",
)
_FINISHED_STATES = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE"}


class ConfigureError(RuntimeError):
    """The stack or the environment is not ready; the message says what to do."""


@dataclass(frozen=True)
class StackOutputs:
    data_bucket: str
    inference_bucket: str
    topic_arn: str
    sagemaker_role_arn: str
    lambda_role_arn: str
    endpoint_prefix: str


def read_stack_outputs(cloudformation, stack: str) -> StackOutputs:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        raise ConfigureError(
            f"stack {stack!r} not found ({exc.response['Error'].get('Message', exc)}); create "
            "it with: aws cloudformation deploy --template-file infra_templates/pipeline.yaml "
            f"--stack-name {stack} --capabilities CAPABILITY_IAM"
        ) from exc
    status = stacks[0]["StackStatus"]
    if status not in _FINISHED_STATES:
        raise ConfigureError(f"stack {stack!r} is {status}; wait until it is CREATE_COMPLETE")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    missing = [name for name in _REQUIRED_OUTPUTS if name not in outputs]
    if missing:
        raise ConfigureError(
            f"stack {stack!r} lacks output(s) {', '.join(missing)}: was it made from "
            "infra_templates/pipeline.yaml?"
        )
    return StackOutputs(
        data_bucket=outputs["DataBucketName"],
        inference_bucket=outputs["InferenceBucketName"],
        topic_arn=outputs["TopicArn"],
        sagemaker_role_arn=outputs["SageMakerRoleArn"],
        lambda_role_arn=outputs["LambdaRoleArn"],
        endpoint_prefix=outputs["EndpointPrefix"],
    )


def resolve_images(
    region: str, training_instance_type: str, inference_instance_type: str
) -> tuple[str, str]:
    """PyTorch training and inference image URIs for the region and instance types."""
    from sagemaker.core import image_uris  # heavy; only this command needs it

    training, inference = (
        image_uris.retrieve(
            "pytorch",
            region=region,
            version=version,
            py_version=python,
            instance_type=instance_type,
            image_scope=scope,
        )
        for scope, (version, python), instance_type in (
            ("training", TRAINING_FRAMEWORK, training_instance_type),
            ("inference", INFERENCE_FRAMEWORK, inference_instance_type),
        )
    )
    return training, inference


def pack_training_code(source: Path = TRAINING_CODE, contract: Path = CONTRACT) -> bytes:
    """``training_code/`` with the shared contract beside it, as a reproducible
    ``sourcedir.tar.gz``.

    The container puts the archive's root on the path, so ``sagedrop_contract/`` there is
    imported by the same name as everywhere else. Caches are left out, and timestamps and
    owners are fixed, so unchanged code gives the same bytes and the same S3 key.
    """
    files = [(path, path.relative_to(source)) for path in _code_files(source)] + [
        (path, Path(contract.name) / path.relative_to(contract)) for path in _code_files(contract)
    ]
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as archive,
    ):
        for path, relative in sorted(files, key=lambda pair: pair[1].as_posix()):
            data = path.read_bytes()
            info = tarfile.TarInfo(relative.as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _code_files(folder: Path) -> list[Path]:
    """The files under ``folder`` that code needs: no caches, no build metadata, no folders."""
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.suffix != ".pyc"
        and not any(
            part == "__pycache__" or part.endswith(".egg-info")
            for part in path.relative_to(folder).parts
        )
    ]


def vendor_contract(app_dir: Path = CHALICE_APP, contract: Path = CONTRACT) -> Path:
    """Copy the shared contract into the Chalice app's ``vendor/`` folder, whose contents
    Chalice puts at the top of the Lambda package: there it is ``sagedrop_contract``, the
    name ``chalicelib`` imports. Replaced whole each time, so a deleted module leaves no
    stale copy; ``vendor/`` is not committed."""
    target = app_dir / "vendor" / contract.name
    shutil.rmtree(target, ignore_errors=True)
    for path in _code_files(contract):
        destination = target / path.relative_to(contract)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
    return target


def upload_training_code(s3, bucket: str, archive: bytes) -> str:
    """Upload under a content-addressed key: jobs already running keep the code they had."""
    digest = hashlib.sha256(archive).hexdigest()[:16]
    key = f"{CODE_PREFIX}{digest}/sourcedir.tar.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=archive, ContentType="application/gzip")
    return f"s3://{bucket}/{key}"


def stage_environment(
    outputs: StackOutputs, training_image: str, inference_image: str, code_s3_uri: str
) -> dict[str, str]:
    return {
        "DATA_BUCKET": outputs.data_bucket,
        "INFERENCE_BUCKET": outputs.inference_bucket,
        "TOPIC_ARN": outputs.topic_arn,
        "SAGEMAKER_ROLE_ARN": outputs.sagemaker_role_arn,
        "TRAINING_IMAGE": training_image,
        "INFERENCE_IMAGE": inference_image,
        "CODE_S3_URI": code_s3_uri,
        "ENDPOINT_PREFIX": outputs.endpoint_prefix,
        "POWERTOOLS_SERVICE_NAME": APP_NAME,
    }


def write_chalice_stage(
    config_path: Path, stage: str, environment: Mapping[str, str], lambda_role_arn: str
) -> dict:
    """Add or replace one stage; other stages and the user's own settings stay as they are.

    Variables the user added to the stage's environment (instance types, tuning settings)
    are kept; the ones this step owns are overwritten.
    """
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config.setdefault("version", "2.0")
    config.setdefault("app_name", APP_NAME)
    stages = config.setdefault("stages", {})
    previous = stages.get(stage, {})
    stages[stage] = {
        **previous,
        "environment_variables": {**previous.get("environment_variables", {}), **environment},
        "iam_role_arn": lambda_role_arn,
        "manage_iam_role": False,
        "lambda_timeout": previous.get("lambda_timeout", LAMBDA_TIMEOUT_SECONDS),
        "lambda_memory_size": previous.get("lambda_memory_size", LAMBDA_MEMORY_MB),
    }
    config_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = config_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, config_path)
    return config


def configure(
    stack: str,
    stage: str,
    session,
    config_path: Path = CHALICE_CONFIG,
    training_instance_type: str = "ml.g4dn.xlarge",
    inference_instance_type: str = "ml.m5.large",
    image_resolver: Callable[[str, str, str], tuple[str, str]] = resolve_images,
    weights_fetch: Callable[[str, Path, str], None] | None = download,
    wheels_fetch: Fetch = pip_download,
) -> dict[str, str]:
    """Do the whole step with a boto3 ``session``; returns the stage's environment.

    It also puts in S3 what jobs would otherwise download: every backbone's ImageNet
    weights (``weights_upload``) and the wheels for both images' Python (``wheels_upload``),
    the jobs' "weights" and "wheels" channels, so that a job isolated from the network
    (``EnableNetworkIsolation``, the default) has all it needs."""
    region = session.region_name
    if not region:
        raise ConfigureError("no AWS region: pass --region or set AWS_REGION")
    outputs = read_stack_outputs(session.client("cloudformation"), stack)
    training_image, inference_image = image_resolver(
        region, training_instance_type, inference_instance_type
    )
    s3 = session.client("s3")
    code_uri = upload_training_code(s3, outputs.data_bucket, pack_training_code())
    environment = stage_environment(outputs, training_image, inference_image, code_uri)
    environment.update(environment_value(upload_weights(s3, outputs.data_bucket, weights_fetch)))
    try:
        environment["WHEELS_S3_URI"] = upload_wheels(
            s3, outputs.data_bucket, training_image, inference_image, wheels_fetch
        )
    except WheelsError as exc:
        raise ConfigureError(f"{exc}; run configure on a machine that reaches PyPI") from exc
    environment["TRAINING_INSTANCE_TYPE"] = training_instance_type
    environment["DEBUG_INSTANCE_TYPE"] = training_instance_type
    environment["INFERENCE_INSTANCE_TYPE"] = inference_instance_type
    write_chalice_stage(config_path, stage, environment, outputs.lambda_role_arn)
    return environment


def deploy_command(stage: str, config_path: Path = CHALICE_CONFIG) -> tuple[list[str], dict]:
    """``chalice deploy`` with the stage's variables also in the deploying process.

    Chalice imports ``app.py`` to find the event sources, and the S3 handlers' bucket names
    come from ``DATA_BUCKET``/``INFERENCE_BUCKET``; ``environment_variables`` only reach
    the Lambdas at run time, so without this the notifications would go to the defaults.
    """
    if not config_path.exists():
        raise ConfigureError(f"{config_path} is missing: run `sagedrop aws configure` first")
    stages = json.loads(config_path.read_text()).get("stages", {})
    if stage not in stages:
        raise ConfigureError(f"stage {stage!r} is not configured: run `sagedrop aws configure`")
    environment = {**os.environ, **stages[stage].get("environment_variables", {})}
    installed = Path(sys.executable).with_name("chalice")
    program = str(installed) if installed.exists() else "chalice"
    return [program, "deploy", "--stage", stage], environment


def deploy(stage: str, config_path: Path = CHALICE_CONFIG) -> int:
    """``chalice deploy`` of the stage, with the shared contract vendored first."""
    command, environment = deploy_command(stage, config_path)
    vendor_contract()
    return subprocess.run(command, cwd=CHALICE_APP, env=environment, check=False).returncode
