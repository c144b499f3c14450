"""Deterministic resource names: the same upload always maps to the same jobs.

A name is derived from the triggering object (bucket, key, ETag), so a duplicate S3 event
(S3 delivers at least once) or a repeated SageMaker state-change event asks for a job that
already exists, gets ``ResourceInUse``, and starts nothing twice. Re-uploading changed
bytes changes the ETag and so starts a new pipeline.

Tuning jobs start with ``sdt-`` and debug jobs with ``sdd-``: the tuner names its child
jobs ``<tuning job>-NNN-<hex>``, so EventBridge's prefix match on ``sdd-`` sees the
pipeline's debug jobs and never the trials or anyone else's jobs.
"""

from __future__ import annotations

import hashlib
import posixpath
import re

TUNING_PREFIX = "sdt-"
DEBUG_PREFIX = "sdd-"
TUNING_NAME_MAX = 32
NAME_MAX = 63
_SLUG_MAX = TUNING_NAME_MAX - len(TUNING_PREFIX) - 1 - 8 - 1
_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")


def dataset_slug(key: str) -> str:
    """A readable part of the file name: ``datasets/Dog Images.zip`` → ``dog-images``."""
    stem = posixpath.basename(key)
    if stem.lower().endswith(".zip"):
        stem = stem[:-4]
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    return slug[:_SLUG_MAX].strip("-") or "dataset"


def upload_digest(bucket: str, key: str, etag: str) -> str:
    normalized = etag.strip().strip('"')
    return hashlib.sha256(f"{bucket}\0{key}\0{normalized}".encode()).hexdigest()[:8]


def tuning_job_name(bucket: str, key: str, etag: str) -> str:
    name = f"{TUNING_PREFIX}{dataset_slug(key)}-{upload_digest(bucket, key, etag)}"
    return _checked(name, TUNING_NAME_MAX)


def debug_job_name(tuning_job: str) -> str:
    if not tuning_job.startswith(TUNING_PREFIX):
        raise ValueError(f"{tuning_job!r} is not a sagedrop tuning job")
    return _checked(DEBUG_PREFIX + tuning_job[len(TUNING_PREFIX) :], NAME_MAX)


def tuning_job_of(debug_job: str) -> str:
    if not debug_job.startswith(DEBUG_PREFIX):
        raise ValueError(f"{debug_job!r} is not a sagedrop debug job")
    return TUNING_PREFIX + debug_job[len(DEBUG_PREFIX) :]


def model_name(debug_job: str) -> str:
    return _checked(f"{debug_job}-model", NAME_MAX)


def endpoint_config_name(debug_job: str) -> str:
    return _checked(f"{debug_job}-config", NAME_MAX)


def is_pipeline_tuning_job(name: str) -> bool:
    return name.startswith(TUNING_PREFIX)


def is_pipeline_debug_job(name: str) -> bool:
    return name.startswith(DEBUG_PREFIX)


def _checked(name: str, limit: int) -> str:
    if len(name) > limit or not _NAME_PATTERN.match(name):
        raise ValueError(f"generated name {name!r} breaks AWS's rules (<= {limit} characters)")
    return name
