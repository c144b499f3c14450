"""Deterministic resource names: the same upload always maps to the same jobs.

A name is derived from the triggering object (bucket, key, ETag), so a duplicate S3 event
(S3 delivers at least once) or a repeated SageMaker state-change event asks for a job that
already exists, gets ``ResourceInUse``, and starts nothing twice. Re-uploading changed
bytes changes the ETag and so starts a new run of the dataset's pipeline.

A dataset's file name names its pipeline: ``datasets/Dog Images.zip`` is the pipeline
``dog-images``, served by the endpoint ``<prefix>-dog-images`` and fed by images under
``images/dog-images/``. Uploading ``dog-images.zip`` again is a new version of the same
pipeline; another name is another pipeline with its own endpoint.

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
IMAGES_PREFIX = "images/"
DATASETS_PREFIX = "datasets/"
# The endpoint prefix leaves room for "-" and the longest pipeline name in 63 characters.
ENDPOINT_PREFIX_MAX = NAME_MAX - 1 - _SLUG_MAX
# Each dataset's endpoint and model group is "<prefix>-<dataset>"; the one default.
DEFAULT_ENDPOINT_PREFIX = "sagedrop"


def endpoint_prefix(environment) -> str:
    """``ENDPOINT_PREFIX`` of an environment (``os.environ``, a stage's variables)."""
    return environment.get("ENDPOINT_PREFIX") or DEFAULT_ENDPOINT_PREFIX


def dataset_slug(key: str) -> str:
    """A readable part of the file name: ``datasets/Dog Images.zip`` → ``dog-images``."""
    stem = posixpath.basename(key)
    if stem.lower().endswith(".zip"):
        stem = stem[:-4]
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    return slug[:_SLUG_MAX].strip("-") or "dataset"


def pipeline_name(key: str) -> str:
    """The pipeline a dataset upload belongs to: its file name as a slug."""
    return dataset_slug(key)


def image_pipeline(key: str) -> str | None:
    """``images/<name>/<path>`` → the pipeline ``<name>`` (slugged as a dataset's file name
    is, so ``images/Dog Images/x.jpg`` finds ``dog-images``); None outside a folder."""
    if not key.startswith(IMAGES_PREFIX):
        return None
    folder, _, rest = key[len(IMAGES_PREFIX) :].partition("/")
    return dataset_slug(folder) if folder and rest else None


def endpoint_name(prefix: str, pipeline: str) -> str:
    return _checked(f"{prefix}-{pipeline}", NAME_MAX)


def pipeline_of_endpoint(prefix: str, endpoint: str) -> str | None:
    """The pipeline an endpoint serves, or None when the name is not one of ours."""
    head = f"{prefix}-"
    return endpoint[len(head) :] or None if endpoint.startswith(head) else None


def model_package_group(prefix: str, pipeline: str) -> str:
    """The Model Registry group holding a dataset's model versions: named as its endpoint
    (model package groups and endpoints are separate namespaces, with the same rules)."""
    return endpoint_name(prefix, pipeline)


def pipeline_of_group(prefix: str, group: str) -> str | None:
    """The pipeline a model package group belongs to, or None when it is not ours."""
    return pipeline_of_endpoint(prefix, group)


def check_endpoint_prefix(prefix: str) -> str | None:
    """Why ``prefix`` cannot start endpoint names, or None."""
    if len(prefix) > ENDPOINT_PREFIX_MAX or not _NAME_PATTERN.match(prefix):
        return (
            f"endpoint prefix {prefix!r} must be letters, digits and single hyphens, at most "
            f"{ENDPOINT_PREFIX_MAX} characters (endpoint names are <prefix>-<dataset>, <= 63)"
        )
    return None


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
