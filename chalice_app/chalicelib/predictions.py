"""What an image gets next to it: ``<key>.json`` with its prediction, or ``<key>.error.json``
saying why it has none. The helpers of ``flow.image_uploaded``."""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from chalicelib import aws_errors, naming
from chalicelib.clients import client
from chalicelib.deploying import describe_endpoint
from chalicelib.outcome import logger
from chalicelib.settings import Settings

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def content_type_of(key: str) -> tuple[str, str | None]:
    """The key's suffix (lower case, with its dot) and the content type it is served as."""
    suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key else ""
    return suffix, CONTENT_TYPES.get(suffix)


def put_json(s3, bucket: str, key: str, document: dict) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(document, indent=2),
        ContentType="application/json",
    )


def put_error(s3, bucket: str, key: str, pipeline, endpoint, reason: str) -> None:
    error = {"image": f"s3://{bucket}/{key}", "dataset": pipeline, "endpoint": endpoint,
             "error": reason}  # fmt: skip
    put_json(s3, bucket, f"{key}.error.json", error)


def throttling_reason(exc: Exception, endpoint: str | None) -> str:
    return (
        f"{aws_errors.reason(exc)}: {endpoint} is taking as many requests as it may at once (a "
        "serverless endpoint's MaxConcurrency); this image is retried, and this file is "
        "replaced by its prediction when a retry succeeds"
    )


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
