"""``sagedrop drop``: put files into the local buckets, whether or not ``up`` is running.

The object and its S3 event are written to the root's state together; a running local
cloud delivers the event within a moment, a stopped one when it next starts.
"""

from __future__ import annotations

from pathlib import Path

from sagedrop.local.cloud import DATA_BUCKET, INFERENCE_BUCKET
from sagedrop.local.s3 import LocalS3
from sagedrop.local.state import State

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def destination(path: Path) -> tuple[str, str]:
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return DATA_BUCKET, f"datasets/{path.name}"
    if suffix in IMAGE_SUFFIXES:
        return INFERENCE_BUCKET, f"images/{path.name}"
    raise ValueError(f"{path}: only .zip datasets and .jpg/.jpeg/.png images can be dropped")


def drop_files(root: str | Path, paths: list[Path]) -> list[str]:
    for path in paths:  # check them all before writing any
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
        destination(path)
    root = Path(root).resolve()
    state = State(root / "state.sqlite")
    try:
        s3 = LocalS3(root, state)
        for bucket in (DATA_BUCKET, INFERENCE_BUCKET):
            s3.ensure_bucket(bucket)
        lines = []
        for path in paths:
            bucket, key = destination(path)
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            lines.append(f"dropped {path} → s3://{bucket}/{key}")
        return lines
    finally:
        state.close()
