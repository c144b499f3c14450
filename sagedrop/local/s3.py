"""S3 as folders: ``<root>/buckets/<bucket>/<key>``, with boto3's shapes and errors.

Writes go to a temporary file outside the buckets and are renamed into place, so a reader
(or the training job copying a dataset) never sees half a file. Every write records the
object's MD5 ETag in the state and puts an ``ObjectCreated`` event in the outbox in the
same step; a file copied into a bucket folder by hand is noticed by ``FolderWatcher`` once
its size and time have stopped changing, and fires the same event.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import ipaddress
import logging
import mimetypes
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from botocore.response import StreamingBody

from sagedrop.local.aws_shapes import client_error, md5_etag, metadata, s3_event, validate
from sagedrop.local.state import State

log = logging.getLogger("sagedrop.local.s3")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
SETTLE_SECONDS = 0.5
# S3's general-purpose bucket naming rules.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
MAX_KEY_BYTES = 1024  # S3's limit on a key
MAX_NAME_BYTES = 255  # a folder's limit on one path segment (not S3's: see the README)


def bucket_name_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid S3 bucket name, or None."""
    if not _BUCKET.match(bucket or ""):
        return (
            "must be 3-63 lowercase letters, digits, dots or hyphens, starting and ending "
            "with a letter or digit"
        )
    if ".." in bucket:
        return "must not contain two adjacent periods"
    with contextlib.suppress(ValueError):
        ipaddress.IPv4Address(bucket)
        return "must not be formatted as an IP address"
    if bucket.startswith(_BUCKET_RESERVED_PREFIXES) or bucket.endswith(_BUCKET_RESERVED_SUFFIXES):
        return "uses a prefix or suffix S3 reserves"
    return None


class LocalS3:
    def __init__(self, root: Path, state: State):
        self.root = Path(root)
        self.buckets = self.root / "buckets"
        self.scratch = self.root / "tmp"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.state = state

    def ensure_bucket(self, bucket: str) -> None:
        self._bucket_folder(bucket, "CreateBucket", must_exist=False).mkdir(
            parents=True, exist_ok=True
        )

    def _bucket_folder(self, bucket: str, operation: str, must_exist: bool = True) -> Path:
        """``<root>/buckets/<bucket>``, for a valid bucket name only: a name is never a
        path (``..``, ``/etc``, ``b/../other`` are refused as AWS refuses them)."""
        problem = bucket_name_problem(bucket)
        if problem:
            raise client_error(
                operation, "InvalidBucketName", f"The specified bucket is not valid: {problem}"
            )
        folder = self.buckets / bucket
        if must_exist and (folder.is_symlink() or not folder.is_dir()):
            raise client_error(
                operation, "NoSuchBucket", "The specified bucket does not exist", 404
            )
        return folder

    def path_of(self, bucket: str, key: str, operation: str) -> Path:
        folder = self._bucket_folder(bucket, operation)
        if len(key.encode()) > MAX_KEY_BYTES:
            raise client_error(operation, "KeyTooLongError", "Your key is too long")
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            # Real S3 accepts these keys; a folder cannot hold them safely.
            raise client_error(operation, "InvalidArgument", f"key {key!r} cannot be stored")
        if "\x00" in key or any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
            raise client_error(
                operation,
                "InvalidArgument",
                f"key {key[:80]!r}... cannot be stored locally: a NUL character, or a path "
                f"segment over {MAX_NAME_BYTES} bytes",
            )
        return folder.joinpath(*parts)

    def _no_links(self, bucket: str, path: Path) -> bool:
        """True when nothing from the bucket folder down to ``path`` is a symbolic link.

        A link put into a bucket folder by hand could point anywhere on the machine; the
        local S3 neither serves nor announces what it points at.
        """
        folder = self.buckets / bucket
        current = path
        while current != folder and folder in current.parents:
            if current.is_symlink():
                log.warning("ignoring symbolic link %s in bucket %s", current, bucket)
                return False
            current = current.parent
        return True

    # boto3 operations ------------------------------------------------------------------
    def put_object(self, **params) -> dict:
        validate("s3", "put_object", params)
        bucket, key = params["Bucket"], params["Key"]
        body = params.get("Body", b"")
        data = body.encode() if isinstance(body, str) else body
        if not isinstance(data, bytes | bytearray):
            data = data.read()
        content_type = params.get("ContentType") or _guess_type(key)
        etag = self._write(bucket, key, bytes(data), content_type)
        return {**metadata(), "ETag": etag}

    def get_object(self, **params) -> dict:
        validate("s3", "get_object", params)
        bucket, key = params["Bucket"], params["Key"]
        path, record = self._existing(bucket, key, "GetObject")
        size = path.stat().st_size
        start, end = 0, size - 1
        status = 200
        extra = {}
        if params.get("Range"):
            start, end = _parse_range(params["Range"], size)
            status = 206
            extra["ContentRange"] = f"bytes {start}-{end}/{size}"
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(max(0, end - start + 1))
        return {
            **metadata(status),
            "Body": StreamingBody(io.BytesIO(data), len(data)),
            "ContentLength": len(data),
            "ContentType": record["content_type"],
            "ETag": record["etag"],
            "LastModified": _when(path),
            "AcceptRanges": "bytes",
            **extra,
        }

    def head_object(self, **params) -> dict:
        validate("s3", "head_object", params)
        path, record = self._existing(params["Bucket"], params["Key"], "HeadObject", head=True)
        return {
            **metadata(),
            "ContentLength": path.stat().st_size,
            "ContentType": record["content_type"],
            "ETag": record["etag"],
            "LastModified": _when(path),
            "AcceptRanges": "bytes",
        }

    def delete_object(self, **params) -> dict:
        validate("s3", "delete_object", params)
        path = self.path_of(params["Bucket"], params["Key"], "DeleteObject")
        path.unlink(missing_ok=True)
        self.state.delete_object(params["Bucket"], params["Key"])
        return metadata(204)

    def list_objects_v2(self, **params) -> dict:
        validate("s3", "list_objects_v2", params)
        bucket = params["Bucket"]
        folder = self._bucket_folder(bucket, "ListObjectsV2")
        prefix = params.get("Prefix", "")
        limit = params.get("MaxKeys", 1000)
        after = params.get("ContinuationToken") or params.get("StartAfter") or ""
        keys = sorted(p.relative_to(folder).as_posix() for p in _files(folder))
        keys = [k for k in keys if k.startswith(prefix) and k > after]
        page, rest = keys[:limit], keys[limit:]
        contents = []
        for key in page:
            path = folder / key
            record = self.state.object(bucket, key) or {}
            contents.append(
                {
                    "Key": key,
                    "Size": path.stat().st_size,
                    "ETag": record.get("etag") or md5_etag(path.read_bytes()),
                    "LastModified": _when(path),
                    "StorageClass": "STANDARD",
                }
            )
        response = {
            **metadata(),
            "Name": bucket,
            "Prefix": prefix,
            "KeyCount": len(contents),
            "MaxKeys": limit,
            "IsTruncated": bool(rest),
            "Contents": contents,
        }
        if rest:
            response["NextContinuationToken"] = page[-1]
        if not contents:
            del response["Contents"]
        return response

    # internals ---------------------------------------------------------------------------
    def _write(self, bucket: str, key: str, data: bytes, content_type: str) -> str:
        path = self.path_of(bucket, key, "PutObject")
        if not self._no_links(bucket, path.parent):
            raise client_error("PutObject", "InvalidArgument", f"key {key!r} cannot be stored")
        descriptor, temporary = tempfile.mkstemp(dir=self.scratch)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, path)
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise client_error(
                "PutObject", "InvalidArgument", f"key {key!r} cannot be stored: {exc.strerror}"
            ) from exc
        etag = md5_etag(data)
        self.record(bucket, key, path, etag, content_type)
        return etag

    def record(self, bucket: str, key: str, path: Path, etag: str, content_type: str) -> None:
        """Remember the object and queue its event in one transaction: a crash leaves
        either both or neither (and then the watcher finds the file)."""
        stat = path.stat()
        self.state.put_object(
            bucket,
            key,
            etag,
            stat.st_size,
            content_type,
            event=("s3", s3_event(bucket, key, stat.st_size, etag)),
        )

    def _existing(self, bucket: str, key: str, operation: str, head: bool = False):
        path = self.path_of(bucket, key, operation)
        if not path.is_file() or not self._no_links(bucket, path):
            # HEAD responses have no body, so boto3 reports the bare status code.
            code = "404" if head else "NoSuchKey"
            raise client_error(operation, code, "The specified key does not exist.", 404)
        record = self.state.object(bucket, key)
        if record is None or record["size"] != path.stat().st_size:
            record = {
                "etag": md5_etag(path.read_bytes()),
                "content_type": _guess_type(key),
                "size": path.stat().st_size,
            }
        return path, record


class FolderWatcher:
    """Notices files copied into bucket folders by hand and fires their S3 events.

    A file counts as complete once two scans, ``SETTLE_SECONDS`` apart, saw the same size
    and modification time; only then is it hashed, recorded and announced.
    """

    def __init__(self, s3: LocalS3, interval: float = SETTLE_SECONDS):
        self.s3 = s3
        self.interval = interval
        self._seen: dict[Path, tuple[int, int]] = {}
        self._warned: set[Path] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self) -> list[tuple[str, str]]:
        announced = []
        current: dict[Path, tuple[int, int]] = {}
        buckets = [
            p
            for p in self.s3.buckets.iterdir()
            if p.is_dir() and not p.is_symlink() and bucket_name_problem(p.name) is None
        ]
        for bucket_dir in sorted(buckets):
            for path in _files(bucket_dir, warn=self._warned):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                signature = (stat.st_size, stat.st_mtime_ns)
                key = path.relative_to(bucket_dir).as_posix()
                record = self.s3.state.object(bucket_dir.name, key)
                if (
                    record is not None
                    and record["size"] == stat.st_size
                    and (record["modified"] >= stat.st_mtime)
                ):
                    continue
                current[path] = signature
                if self._seen.get(path) != signature:
                    continue  # still being written, or first sight: look again next scan
                data = path.read_bytes()
                etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
                if record is not None and record["etag"] == etag:
                    self.s3.state.put_object(
                        bucket_dir.name, key, etag, stat.st_size, record["content_type"]
                    )
                    continue  # touched, not changed
                self.s3.record(bucket_dir.name, key, path, etag, _guess_type(key))
                announced.append((bucket_dir.name, key))
        self._seen = current
        return announced

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="s3-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except OSError:
                time.sleep(self.interval)


def _files(folder: Path, warn: set[Path] | None = None) -> list[Path]:
    """Regular files under ``folder``, never through a symbolic link (each one is logged,
    once per watcher when ``warn`` remembers them)."""
    found = []
    for directory, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(directory)
        for name in [*dirnames, *filenames]:
            path = base / name
            if path.is_symlink():
                if warn is None or path not in warn:
                    log.warning("ignoring symbolic link %s in a bucket folder", path)
                    if warn is not None:
                        warn.add(path)
                continue
            if name in filenames and path.is_file():
                found.append(path)
    return found


def _parse_range(header: str, size: int) -> tuple[int, int]:
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise client_error("GetObject", "InvalidRange", "The requested range is not valid", 416)
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start = int(first)
        end = min(size - 1, int(last)) if last else size - 1
    if start >= size or start > end:
        raise client_error(
            "GetObject", "InvalidRange", "The requested range is not satisfiable", 416
        )
    return start, end


def _guess_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "binary/octet-stream"


def _when(path: Path) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(path.stat().st_mtime), dt.UTC)
