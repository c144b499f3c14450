"""What SageMaker's platform gives a training container before its toolkit starts.

SageMaker mounts ``/opt/ml`` with the job's configuration and data and starts the image's
``train`` command: sagemaker-training's runner, which (through the PyTorch image's
framework module) unpacks the code, installs its ``requirements.txt``, turns the
hyperparameters into arguments and ``SM_*`` variables, runs the entry point and writes
``output/failure``. The local cloud runs that very runner; this module only lays out
what the platform would have laid out, in a job folder instead of ``/opt/ml``.

The one change to the request: ``sagemaker_submit_directory`` names a local copy of
the code archive instead of its S3 URI, because the runner would download an ``s3://``
URI with boto3 and the local buckets are folders, not an S3 endpoint. A network-isolated
job names the archive in its ``code`` channel by its container path
(``/opt/ml/input/data/code/...``); that path is the job folder's.

No job reaches a package index: the runner's pip is pointed at none (``PIP_NO_INDEX``),
and an isolated job's HTTP clients at a closed local port, so whatever a job would fetch
fails at once instead of working here and failing in an isolated SageMaker job.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# The PyTorch training images set this; the runner hands the job to that module.
PYTORCH_FRAMEWORK_MODULE = "sagemaker_pytorch_container.training:main"
# The image's ``train`` command.
RUNNER_COMMAND = (sys.executable, "-m", "sagemaker_training.cli.train")
SUBMIT_DIRECTORY = "sagemaker_submit_directory"
CONTAINER_ROOT = "/opt/ml/"
# What an isolated job's HTTP clients are pointed at: a port nothing listens on.
UNREACHABLE_PROXY = "http://127.0.0.1:9"
HOST = "algo-1"
GROUP = "homogeneousCluster"
# Variables of the machine running sagedrop that would leak into the job and change what
# the runner reads (SageMaker starts containers with a clean environment).
_INHERITED_PREFIXES = ("SM_", "SAGEMAKER_")


def write_config(base: Path, request: dict, code_archive: Path) -> None:
    """``input/config/*.json`` and the empty folders, as the platform writes them."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    for folder in ("model", "output/data", "code"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    _write(config / "hyperparameters.json", hyperparameters(request, code_archive))
    _write(config / "inputdataconfig.json", input_data_config(request))
    _write(config / "resourceconfig.json", resource_config(request))


def hyperparameters(request: dict, code_archive: Path) -> dict[str, str]:
    """The request's ``HyperParameters`` as given, but for where the code archive is.

    The SageMaker Python SDK JSON-encodes every value (``"\\"s3://…\\""``); a request
    built by hand may not. The local path keeps the encoding the request used.
    """
    values = dict(request.get("HyperParameters", {}))
    if SUBMIT_DIRECTORY in values:
        _, encoded = submit_directory(request)
        values[SUBMIT_DIRECTORY] = json.dumps(str(code_archive)) if encoded else str(code_archive)
    return values


def in_job_folder(base: Path, path: str) -> Path | None:
    """A container path (``/opt/ml/...``) as the job folder's, or None for another path."""
    if not path.startswith(CONTAINER_ROOT):
        return None
    return base / path[len(CONTAINER_ROOT) :]


def submit_directory(request: dict) -> tuple[str, bool]:
    """The code archive's URI, and whether the request JSON-encoded it (as the SDK does)."""
    given = request.get("HyperParameters", {}).get(SUBMIT_DIRECTORY)
    if not given:
        raise ValueError(f"hyperparameter {SUBMIT_DIRECTORY} is missing")
    try:
        decoded = json.loads(given)
    except ValueError:
        return given, False
    return (decoded, True) if isinstance(decoded, str) else (given, False)


def input_data_config(request: dict) -> dict:
    """``inputdataconfig.json``: one entry per channel, with the fields the platform sets."""
    out = {}
    for channel in request.get("InputDataConfig", []):
        source = channel["DataSource"]["S3DataSource"]
        entry = {
            "TrainingInputMode": channel.get(
                "InputMode",
                request["AlgorithmSpecification"].get("TrainingInputMode", "File"),
            ),
            "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": channel.get("RecordWrapperType", "None"),
        }
        if "ContentType" in channel:
            entry["ContentType"] = channel["ContentType"]
        out[channel["ChannelName"]] = entry
    return out


def resource_config(request: dict) -> dict:
    """``resourceconfig.json`` for one host, named as SageMaker names the first (algo-1)."""
    instance_type = request["ResourceConfig"]["InstanceType"]
    return {
        "current_host": HOST,
        "current_instance_type": instance_type,
        "current_group_name": GROUP,
        "hosts": [HOST],
        "instance_groups": [
            {"instance_group_name": GROUP, "instance_type": instance_type, "hosts": [HOST]}
        ],
        "network_interface_name": "eth0",
    }


def environment(
    base: Path, job_name: str, extra: dict[str, str], isolated: bool = False
) -> dict[str, str]:
    """The runner's environment: the image's variables, the platform's, and sagedrop's.

    ``SM_STUDIO_LOCAL_MODE`` is the toolkits' own switch for running outside SageMaker:
    it skips the wait until every host in ``resourceconfig.json`` resolves in DNS.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
    return {
        **inherited,
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_TRAINING_MODULE": PYTORCH_FRAMEWORK_MODULE,
        "SM_STUDIO_LOCAL_MODE": "true",
        "TRAINING_JOB_NAME": job_name,
        "PYTHONUNBUFFERED": "1",  # the log is read line by line for live metrics
        # The runner pip-installs the code's requirements.txt (satisfied here); pip's own
        # version check would reach for the network on every job start.
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        # No package index, ever: what a job needs is in its image (here: the environment)
        # or arrives with its code; a requirement not already met fails the job now.
        "PIP_NO_INDEX": "1",
        **(_isolation() if isolated else {}),
        **extra,
    }


def _isolation() -> dict[str, str]:
    """SageMaker's network isolation, as near as one process can have it: every HTTP(S)
    client that honours the proxy variables (pip, urllib, torch.hub, requests, boto3)
    meets a closed port; the job's own loopback (torchrun's rendezvous) is untouched."""
    return {
        **{name: UNREACHABLE_PROXY for name in
           ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")},
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }  # fmt: skip


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
