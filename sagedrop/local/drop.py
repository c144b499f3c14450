"""``sagedrop drop``: put files into the local buckets, whether or not ``up`` is running.

The object and its S3 event are written to the root's state together; a running local
cloud delivers the event within a moment, a stopped one when it next starts. Images go to
``images/<dataset>/``, the folder that dataset's endpoint serves: ``--dataset`` names it,
and when it is left out the one dataset being served (or else dropped) is meant.
"""

from __future__ import annotations

import os
from pathlib import Path

from chalicelib import naming
from sagedrop.local.cloud import DATA_BUCKET, INFERENCE_BUCKET
from sagedrop.local.s3 import LocalS3
from sagedrop.local.state import State

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def destination(path: Path, dataset: str | None) -> tuple[str, str]:
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return DATA_BUCKET, f"{naming.DATASETS_PREFIX}{path.name}"
    if suffix in IMAGE_SUFFIXES:
        if not dataset:
            raise ValueError(f"{path}: say which dataset's model should label it (--dataset)")
        return INFERENCE_BUCKET, f"{naming.IMAGES_PREFIX}{naming.dataset_slug(dataset)}/{path.name}"
    raise ValueError(f"{path}: only .zip datasets and .jpg/.jpeg/.png images can be dropped")


def known_datasets(root: Path) -> list[str]:
    """The pipelines of the zips in the local data bucket (``naming.pipeline_name``)."""
    folder = root / "buckets" / DATA_BUCKET / naming.DATASETS_PREFIX.rstrip("/")
    zips = folder.glob("*") if folder.is_dir() else []
    return sorted({naming.pipeline_name(p.name) for p in zips if p.suffix.lower() == ".zip"})


def serving_datasets(state: State) -> list[str]:
    """The pipelines whose local endpoint is in service."""
    prefix = naming.endpoint_prefix(os.environ)
    names = [
        naming.pipeline_of_endpoint(prefix, e["EndpointName"])
        for e in state.all("endpoint")
        if e.get("EndpointStatus") in ("InService", "Updating")
    ]
    return sorted(n for n in names if n)


def default_dataset(root: Path, state: State, paths: list[Path]) -> str | None:
    """The dataset images go to without ``--dataset``: the one serving, else the one
    dropped; None when there is no choice to make, an error when there are several."""
    candidates = serving_datasets(state)
    if not candidates:
        dropped_now = {naming.pipeline_name(p.name) for p in paths if p.suffix.lower() == ".zip"}
        candidates = sorted(set(known_datasets(root)) | dropped_now)
    if len(candidates) > 1:
        raise ValueError(f"images need --dataset: one of {', '.join(candidates)}")
    return candidates[0] if candidates else None


def drop_files(root: str | Path, paths: list[Path], dataset: str | None = None) -> list[str]:
    root = Path(root).resolve()
    for path in paths:  # check them all before writing any
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
    state = State(root / "state.sqlite")
    try:
        if dataset is None and any(p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
            dataset = default_dataset(root, state, paths)
        for path in paths:
            destination(path, dataset)
        s3 = LocalS3(root, state)
        for bucket in (DATA_BUCKET, INFERENCE_BUCKET):
            s3.ensure_bucket(bucket)
        lines = []
        for path in paths:
            bucket, key = destination(path, dataset)
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            lines.append(f"dropped {path} → s3://{bucket}/{key}")
        return lines
    finally:
        state.close()
