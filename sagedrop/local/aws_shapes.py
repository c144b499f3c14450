"""What makes the local services look like boto3: request validation against botocore's
service models, ``ClientError`` with AWS's codes, and the JSON events AWS sends."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import threading
import time
import uuid
from functools import cache
from urllib.parse import quote_plus

import botocore.session
from botocore import xform_name
from botocore.exceptions import ClientError, ParamValidationError
from botocore.validate import ParamValidator

from chalicelib import aws_limits

ACCOUNT = "000000000000"
REGION = "local"


@cache
def service_model(service: str):
    return botocore.session.get_session().get_service_model(service)


@cache
def _operations(service: str) -> dict[str, str]:
    return {xform_name(name): name for name in service_model(service).operation_names}


def validate(service: str, method: str, params: dict) -> None:
    """Raise ``ParamValidationError`` exactly as a boto3 client would before sending."""
    operation = service_model(service).operation_model(_operations(service)[method])
    report = ParamValidator().validate(params, operation.input_shape)
    if report.has_errors():
        raise ParamValidationError(report=report.generate_report())
    problem = _constraint_problem(operation.input_shape, params, "")
    if problem:
        raise client_error(
            operation.name, "ValidationException", f"1 validation error detected: {problem}"
        )
    # What the service checks beyond botocore's shapes, before anything is created.
    for tag in params.get("Tags", []) if service == "sagemaker" else []:
        problem = aws_limits.tag_problem(tag)
        if problem:
            raise client_error(operation.name, "ValidationException", problem)


def _constraint_problem(shape, value, path: str) -> str | None:
    """What botocore's validator leaves to the service: enum values and maxima (length of
    a string or list, size of a number), in AWS's own words."""
    meta = shape.metadata
    where = path or "input"
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                inner = (
                    f"{path}.{name[0].lower()}{name[1:]}" if path else name[0].lower() + name[1:]
                )
                problem = _constraint_problem(member, value[name], inner)
                if problem:
                    return problem
        return None
    if shape.type_name == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            return (f"Value at '{where}' failed to satisfy constraint: Member must have length "
                    f"less than or equal to {meta['max']}")  # fmt: skip
        for index, item in enumerate(value):
            problem = _constraint_problem(shape.member, item, f"{where}.{index + 1}.member")
            if problem:
                return problem
        return None
    if shape.type_name == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            return (f"Value at '{where}' failed to satisfy constraint: Member must have length "
                    f"less than or equal to {meta['max']}")  # fmt: skip
        for key, item in value.items():
            problem = _constraint_problem(shape.key, key, f"{where}.key") or _constraint_problem(
                shape.value, item, f"{where}.{key}"
            )
            if problem:
                return problem
        return None
    if shape.type_name == "string" and isinstance(value, str):
        if shape.enum and value not in shape.enum:
            return (f"Value '{value}' at '{where}' failed to satisfy constraint: Member must "
                    f"satisfy enum value set: [{', '.join(shape.enum)}]")  # fmt: skip
        if "max" in meta and len(value) > meta["max"]:
            return (f"Value at '{where}' failed to satisfy constraint: Member must have length "
                    f"less than or equal to {meta['max']}")  # fmt: skip
    numeric = shape.type_name in ("integer", "long", "float", "double")
    if numeric and isinstance(value, int | float) and "max" in meta and value > meta["max"]:
        return (f"Value '{value}' at '{where}' failed to satisfy constraint: Member must "
                f"have value less than or equal to {meta['max']}")  # fmt: skip
    return None


def client_error(operation: str, code: str, message: str | None, status: int = 400) -> ClientError:
    """An error as botocore raises it; ``message`` None where AWS sends none (throttling)."""
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": str(uuid.uuid4())},
        },
        operation,
    )


def metadata(status: int = 200) -> dict:
    return {"ResponseMetadata": {"HTTPStatusCode": status, "RequestId": str(uuid.uuid4())}}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_TIME_KEYS = ("Time", "StartTime", "EndTime", "Timestamp")


def stamp() -> str:
    """Now, as records store it (ISO 8601); ``public`` and ``event_detail`` convert it."""
    return now().isoformat()


def _converted(value, timestamp, key: str = ""):
    """Drop ``_local`` and turn stored ISO timestamps into what the consumer expects."""
    if isinstance(value, dict):
        return {k: _converted(v, timestamp, k) for k, v in value.items() if k != "_local"}
    if isinstance(value, list):
        return [_converted(v, timestamp) for v in value]
    if isinstance(value, str) and key.endswith(_TIME_KEYS):
        return timestamp(dt.datetime.fromisoformat(value))
    return value


def _own_fields_dropped(record: dict) -> dict:
    """A record without the local cloud's own top-level fields (``_change``, ``_local``...:
    a leading underscore), which no AWS response has."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def public(record: dict) -> dict:
    """A stored record as boto3 returns it: timestamps as datetimes."""
    return {**_converted(_own_fields_dropped(record), lambda moment: moment), **metadata()}


def event_detail(record: dict) -> dict:
    """EventBridge carries timestamps as epoch milliseconds."""
    return _converted(record, lambda moment: int(moment.timestamp() * 1000))


def iso(moment: dt.datetime | None = None) -> str:
    moment = moment or now()
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


_sequence = itertools.count()
_sequence_lock = threading.Lock()


def _sequencer() -> str:
    """Increasing per object like S3's (hex, compared after left-padding)."""
    with _sequence_lock:
        return f"{time.time_ns():016X}{next(_sequence) % 256:02X}"


def s3_event(bucket: str, key: str, size: int, etag: str, event_name: str = "Put") -> dict:
    """An ``ObjectCreated`` notification as S3 delivers it to Lambda (key URL-encoded)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": REGION,
                "eventTime": iso(),
                "eventName": f"ObjectCreated:{event_name}",
                "userIdentity": {"principalId": "sagedrop-local"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {
                    "x-amz-request-id": uuid.uuid4().hex[:16].upper(),
                    "x-amz-id-2": uuid.uuid4().hex,
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "sagedrop-local",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "sagedrop-local"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": etag.strip('"'),
                        "sequencer": _sequencer(),
                    },
                },
            }
        ]
    }


def eventbridge_event(detail_type: str, detail: dict, resources: list[str]) -> dict:
    """The envelope EventBridge delivers: SageMaker's events come from ``aws.sagemaker``."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "aws.sagemaker",
        "account": ACCOUNT,
        "time": now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": resources,
        "detail": detail,
    }


def arn(resource: str, name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{resource}/{name.lower()}"
