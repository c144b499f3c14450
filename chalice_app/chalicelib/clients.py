"""Where the pipeline gets its AWS clients: boto3 on AWS, the local cloud's on one machine.

Everything in ``flow.py`` asks ``client("s3")`` instead of calling boto3 directly, so the
local cloud can install its own implementations of the same operations with
``use_factory`` and run the very same code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import boto3

_factory: Callable[[str], object] | None = None


def use_factory(factory: Callable[[str], object] | None) -> None:
    """Replace how clients are made (None restores boto3); clears the cache."""
    global _factory
    _factory = factory
    _cached.cache_clear()


def client(service: str):
    return _cached(service)


@cache
def _cached(service: str):
    if _factory is not None:
        return _factory(service)
    return boto3.client(service)
