"""The jobs' ``wheels`` channel: every package a job or a model installs, in S3 once.

SageMaker's PyTorch images lack some of what sagedrop's jobs import (onnx, the data
audit's imagehash and cleanlab ...) and what its artifact's optimised graph needs
(ONNX Runtime). An isolated job, or one in a VPC without egress, cannot fetch them, so
``sagedrop aws configure`` (run by the operator, on a machine with internet) downloads
the wheels for each image's own Python and platform and uploads them under
``code/wheels/``:

- ``training/``: ``training_code/requirements.txt`` with its dependencies, for the
  training image. The job's ``requirements.txt`` installs them with ``--no-index``
  from the ``wheels`` channel; what the image already has stays as it is.
- ``inference/``: ``sagedrop_serving/runtime-requirements.txt`` (hash-pinned, no
  dependency beyond the list), for the inference image. ``train.py`` copies them into
  the artifact's ``code/wheels``, where the inference toolkit installs them, without an
  index, once per container before TorchServe starts its workers.

Nothing here runs at job start or model load: the jobs only read the channel.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from sagedrop.paths import TRAINING_CODE

WHEELS_PREFIX = "code/wheels/"
TRAINING_WHEELS = "training"
INFERENCE_WHEELS = "inference"
TRAINING_REQUIREMENTS = TRAINING_CODE / "requirements.txt"
INFERENCE_REQUIREMENTS = TRAINING_CODE / "sagedrop_serving" / "runtime-requirements.txt"
# The Deep Learning Containers are Ubuntu 22.04 (glibc 2.35) on x86_64: wheels built for
# manylinux 2.28 or older run there. Graviton images would need aarch64 instead.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# "pytorch-training:2.10.0-gpu-py313-cu130-ubuntu22.04-sagemaker"
_PYTHON_TAG = re.compile(r"[-:]py(3)(\d{1,2})(?=-|$)")

Fetch = Callable[[Path, str, Path, bool], None]


class WheelsError(RuntimeError):
    """The wheels could not be had; the message says which image and why."""


def image_python(image_uri: str) -> str:
    """The Python version ("3.13") a Deep Learning Container image names in its tag."""
    match = _PYTHON_TAG.search(image_uri.rsplit("/", 1)[-1])
    if not match:
        raise WheelsError(f"no Python version (pyNNN) in the image tag of {image_uri!r}")
    return f"{match.group(1)}.{match.group(2)}"


def pip_download(requirements: Path, python: str, destination: Path, resolve_deps: bool) -> None:
    """Wheels only, for the image's interpreter and platform, whatever this machine is.

    ``resolve_deps`` False keeps to the file's list (the artifact's hash-pinned runtime,
    whose numpy and packaging the image has); True brings the whole closure, of which
    the job's pip installs only what the image lacks.
    """
    listed = destination.parent / f"{destination.name}-requirements.txt"
    listed.write_text(requirement_lines(requirements))
    command = [sys.executable, "-m", "pip", "download", "--quiet",
               "--disable-pip-version-check", "--only-binary", ":all:",
               "--implementation", "cp", "--python-version", python,
               *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
               "--dest", str(destination), "-r", str(listed)]  # fmt: skip
    if not resolve_deps:
        command.append("--no-deps")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip download failed"])[-1]
        raise WheelsError(f"pip download of {requirements.name} for Python {python}: {last}")


def requirement_lines(requirements: Path) -> str:
    """The file less its index options: the job's copy says ``--no-index`` and where its
    channel is, which would stop the operator's download before it starts."""
    kept = [
        line
        for line in requirements.read_text().splitlines()
        if not line.startswith(("--no-index", "--find-links", "-f "))
    ]
    return "\n".join(kept) + "\n"


def upload_wheels(
    s3, bucket: str, training_image: str, inference_image: str, fetch: Fetch = pip_download
) -> str:
    """Both images' wheels under ``code/wheels/``; the prefix's URI for ``WHEELS_S3_URI``.

    Objects already there with the same size are left alone, so running configure again
    uploads only what changed."""
    plan = (
        (TRAINING_WHEELS, TRAINING_REQUIREMENTS, image_python(training_image), True),
        (INFERENCE_WHEELS, INFERENCE_REQUIREMENTS, image_python(inference_image), False),
    )
    with tempfile.TemporaryDirectory(prefix="sagedrop-wheels-") as scratch:
        for folder, requirements, python, resolve_deps in plan:
            local = Path(scratch) / folder
            local.mkdir()
            fetch(requirements, python, local, resolve_deps)
            wheels = sorted(local.glob("*.whl"))
            if not wheels:
                raise WheelsError(f"pip download gave no wheel for {requirements.name}")
            for wheel in wheels:
                key = f"{WHEELS_PREFIX}{folder}/{wheel.name}"
                if not _same_size(s3, bucket, key, wheel.stat().st_size):
                    s3.put_object(Bucket=bucket, Key=key, Body=wheel.read_bytes())
    return f"s3://{bucket}/{WHEELS_PREFIX}"


def _same_size(s3, bucket: str, key: str, size: int) -> bool:
    from botocore.exceptions import ClientError

    try:
        return s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size
    except ClientError:
        return False


__all__ = ["WHEELS_PREFIX", "WheelsError", "image_python", "pip_download", "upload_wheels"]
