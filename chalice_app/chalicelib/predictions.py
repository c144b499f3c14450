"""What an image gets next to it: ``<key>.json`` with its prediction, or ``<key>.error.json``
saying why it has none. The helpers of ``flow.image_uploaded``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from botocore.exceptions import ClientError

from chalicelib import aws_errors, naming
from chalicelib.clients import client
from chalicelib.deploying import describe_endpoint
from chalicelib.outcome import logger
from chalicelib.settings import Settings

# Every type training reads (``dataset_rules.IMAGE_EXTENSIONS``), matched in any case; the model
# checks that the bytes are the format the type names.
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
ANSWER_SUFFIXES = (".json",)  # <key>.json and <key>.error.json
# InvokeEndpoint's payload limit for a real-time endpoint (the API reference: 6 MB). A
# larger image is refused here, with a sentence, instead of being sent to fail.
MAX_INVOKE_BYTES = 6 * 1024 * 1024
ONE_LINE = 500  # an answer file's reason is one line of at most this many characters
WAITING_STATUSES = ("Creating", "Updating", "SystemUpdating")
# An image for an endpoint that is coming into service waits this long for it (polling
# DescribeEndpoint) within one invocation, inside the Lambda's 120 s; after that, Lambda's
# retries wait longer.
ENDPOINT_WAIT_SECONDS = 60.0
POLL_SECONDS = 1.0


def content_type_of(key: str) -> tuple[str, str | None]:
    """The key's suffix (lower case, with its dot) and the content type it is served as."""
    suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
    return suffix, CONTENT_TYPES.get(suffix)


def is_answer(key: str) -> bool:
    """One of the files this pipeline writes next to an image (never an image to answer)."""
    return key.lower().endswith(ANSWER_SUFFIXES)


def check_size(length: int) -> None:
    if length > MAX_INVOKE_BYTES:
        raise ValueError(
            f"the image is {length:,} bytes; an endpoint takes at most {MAX_INVOKE_BYTES:,} "
            "bytes a request (InvokeEndpoint's limit): send a smaller or more compressed image"
        )


@dataclass(frozen=True)
class Attempts:
    """Which attempt at one image this is, counted in its error file across Lambda's
    retries (an S3 write is the only memory two invocations share). An image written
    again (a new ETag or time) starts from 1."""

    number: int
    limit: int
    of: str  # the image's ETag and modification time

    @property
    def last(self) -> bool:
        return self.number >= self.limit

    @classmethod
    def of_image(cls, s3, bucket: str, key: str, image: dict, limit: int) -> Attempts:
        identity = f"{image.get('ETag', '')}@{image.get('LastModified', '')}"
        previous = 0
        try:
            earlier = json.loads(
                s3.get_object(Bucket=bucket, Key=f"{key}.error.json")["Body"].read()
            )
            attempt = earlier.get("attempt") if isinstance(earlier, dict) else None
            if isinstance(attempt, dict) and attempt.get("of") == identity:
                previous = int(attempt.get("number", 0))
        except ClientError as exc:
            if aws_errors.code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
        except (ValueError, TypeError):
            previous = 0  # an error file someone else wrote: count from here
        return cls(previous + 1, limit, identity)

    def as_dict(self) -> dict:
        return {"number": self.number, "limit": self.limit, "of": self.of}


def put_json(s3, bucket: str, key: str, document: dict) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(document, indent=2),
        ContentType="application/json",
    )


def put_error(
    s3, bucket: str, key: str, pipeline, endpoint, reason: str, attempts: Attempts | None = None
) -> None:
    error = {"image": f"s3://{bucket}/{key}", "dataset": pipeline, "endpoint": endpoint,
             "error": reason}  # fmt: skip
    if attempts is not None:
        error["attempt"] = attempts.as_dict()
    put_json(s3, bucket, f"{key}.error.json", error)


class EndpointNotServing(ValueError):
    """InvokeEndpoint found no endpoint in service; ``status`` is what DescribeEndpoint
    says of it (None: there is none)."""

    def __init__(self, endpoint: str, status: str | None, cause: ClientError):
        super().__init__(aws_errors.reason(cause))
        self.endpoint, self.status = endpoint, status

    @property
    def coming(self) -> bool:
        return self.status in WAITING_STATUSES

    @property
    def transient(self) -> bool:
        """An endpoint coming into service is worth Lambda's retries (``aws_errors``)."""
        return self.coming


def invoke(endpoint: str, content_type: str, body: bytes, wait_seconds: float) -> dict:
    """InvokeEndpoint's JSON answer. An endpoint still coming into service (a first
    deploy, a restart of the local cloud) is waited for, boundedly, and asked again;
    one that is not there raises ``EndpointNotServing``."""
    runtime = client("sagemaker-runtime")
    request = {"EndpointName": endpoint, "ContentType": content_type,
               "Accept": "application/json", "Body": body}  # fmt: skip
    try:
        response = runtime.invoke_endpoint(**request)
    except ClientError as exc:
        if not endpoint_missing(exc):
            raise
        status = _status_within(endpoint, wait_seconds)
        if status != "InService":
            raise EndpointNotServing(endpoint, status, exc) from exc
        response = runtime.invoke_endpoint(**request)
    return json.loads(response["Body"].read())


def _status_within(endpoint: str, seconds: float) -> str | None:
    """The endpoint's status once it is no longer coming into service, or when
    ``seconds`` have passed (polling DescribeEndpoint)."""
    deadline = time.monotonic() + seconds
    while True:
        status = (describe_endpoint(endpoint) or {}).get("EndpointStatus")
        if status not in WAITING_STATUSES or time.monotonic() >= deadline:
            return status
        time.sleep(POLL_SECONDS)


def worth_waiting_for(exc: Exception, endpoint: str | None) -> str | None:
    """Why a retry may answer this image (throttling; an endpoint not yet in service), or
    None when it would fail the same way."""
    if aws_errors.is_throttled(exc):
        return (
            f"{aws_errors.reason(exc)}: {endpoint} is taking as many requests as it may at "
            "once (a serverless endpoint's MaxConcurrency)"
        )
    if isinstance(exc, EndpointNotServing) and exc.coming:
        return f"{exc.endpoint} is {exc.status}, not yet in service"
    return None


def failure_reason(
    exc: Exception, settings: Settings, pipeline, endpoint, content_type: str | None
) -> str:
    """One line for the answer file: what went wrong and, where it helps, what serves."""
    if isinstance(exc, EndpointNotServing):
        return f"no dataset named {pipeline!r} is serving; {serving_now(settings)}"
    reason = one_line(aws_errors.reason(exc))
    if endpoint is None and content_type is not None:
        reason = f"{reason}; {serving_now(settings)}"
    return reason


def one_line(text: str) -> str:
    """The first line of an error: a model's 4xx message arrives from the inference
    toolkit with its Python traceback after it, which is the server's log's business."""
    first = (text.strip().splitlines() or [""])[0].strip()
    return first if len(first) <= ONE_LINE else first[:ONE_LINE] + "..."


def endpoint_missing(exc: Exception) -> bool:
    """sagemaker-runtime's answer for an endpoint that does not exist."""
    return aws_errors.code(exc) in ("ValidationError", "ValidationException") and (
        "not found" in aws_errors.message(exc).lower()
    )


def serving_now(settings: Settings, limit: int = 50) -> str:
    """Which datasets have an endpoint in service, for an image that found none.

    Read from the data bucket's ``datasets/`` and one ``DescribeEndpoint`` each (both
    allowed on named resources), not ``ListEndpoints``, which IAM grants only on ``*``.
    """
    try:
        listing = client("s3").list_objects_v2(
            Bucket=settings.data_bucket, Prefix=naming.DATASETS_PREFIX, MaxKeys=1000
        )
        names = sorted(
            {
                naming.pipeline_name(item["Key"])
                for item in listing.get("Contents", [])
                if item["Key"].lower().endswith(".zip")
            }
        )[:limit]
        serving = []
        for name in names:
            described = describe_endpoint(settings.endpoint_for(name))
            if described and described.get("EndpointStatus") in ("InService", "Updating"):
                serving.append(name)
    except ClientError as exc:
        if aws_errors.is_transient(exc):
            raise
        # The image still gets its error file; the list is a courtesy.
        logger.warning("cannot list the serving datasets: %s", exc)
        return f"the serving datasets cannot be listed ({aws_errors.reason(exc)})"
    if not serving:
        return "no dataset is serving yet"
    return "serving: " + ", ".join(f"{n} ({naming.IMAGES_PREFIX}{n}/)" for n in serving)


def exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if aws_errors.code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True
