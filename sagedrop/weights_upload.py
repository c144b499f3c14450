"""The jobs' ``weights`` channel: every offered backbone's ImageNet weights, in S3 once.

``sagedrop aws deploy`` runs on the operator's machine, which has internet: it fetches
each file (from the torch hub cache when it is there, else from download.pytorch.org,
checked against the hash prefix in its name) and uploads it under ``code/weights/``. The
local cloud does the same from the torch hub cache alone: it never downloads, so where no
weights were ever fetched the jobs train without them, as ``--pretrained auto`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from botocore.exceptions import ClientError

WEIGHTS_PREFIX = "code/weights/"


def hub_cache() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def download(url: str, destination: Path, name: str) -> None:
    """torchvision's file, verified against the SHA-256 prefix its name publishes."""
    import torch.hub

    prefix = name.rsplit("-", 1)[-1].split(".")[0]
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(destination), hash_prefix=prefix, progress=False)


def upload_weights(
    s3, bucket: str, fetch: Callable[[str, Path, str], None] | None = download
) -> str:
    """Upload what is missing; the prefix's URI, or "" when not one file could be had
    (``fetch`` None: the hub cache only)."""
    from offline_api import imagenet_weight_files

    uploaded = 0
    for name, url in imagenet_weight_files():
        local = hub_cache() / name
        if not local.is_file():
            if fetch is None:
                continue
            fetch(url, local, name)
        key = WEIGHTS_PREFIX + name
        if _same_size(s3, bucket, key, local.stat().st_size):
            uploaded += 1
            continue
        with open(local, "rb") as handle:
            s3.put_object(Bucket=bucket, Key=key, Body=handle.read())
        uploaded += 1
    return f"s3://{bucket}/{WEIGHTS_PREFIX}" if uploaded else ""


def _same_size(s3, bucket: str, key: str, size: int) -> bool:
    try:
        return s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size
    except ClientError:
        return False


def environment_value(uri: str) -> dict[str, str]:
    return {"WEIGHTS_S3_URI": uri} if uri else {}


__all__ = ["WEIGHTS_PREFIX", "download", "environment_value", "upload_weights"]
