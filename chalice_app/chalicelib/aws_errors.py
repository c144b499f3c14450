"""What the pipeline makes of AWS's errors: worth a retry, "already there", or neither.

Every step is idempotent because a repeated event meets the resource it already made;
``create_unless_exists`` is that rule in one place.
"""

from __future__ import annotations

from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

# Errors worth Lambda's retries: the next attempt may well succeed.
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "InternalError",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
THROTTLING_CODES = frozenset({"ThrottlingException", "Throttling"})


def code(error: BaseException) -> str:
    if not isinstance(error, ClientError):
        return ""
    return error.response.get("Error", {}).get("Code", "")


def message(error: BaseException) -> str:
    if not isinstance(error, ClientError):
        return str(error)
    return error.response.get("Error", {}).get("Message") or ""


def is_transient(error: BaseException) -> bool:
    """Would retrying help? Throttling, a service's 5xx, or the network; not our own bugs
    or a bad input, which fail the same way every time."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code(error) in TRANSIENT_CODES or status >= 500
    if getattr(error, "transient", False) is True:  # a step's own "try again later"
        return True
    return isinstance(error, BotoCoreError | ConnectionError | TimeoutError)


def is_throttled(error: BaseException) -> bool:
    return code(error) in THROTTLING_CODES


def already_exists(error: ClientError) -> bool:
    """SageMaker's two ways of saying a name is taken: ``ResourceInUse`` (jobs) and a
    ``ValidationException`` "Cannot create already existing ..." (models, configs)."""
    return code(error) == "ResourceInUse" or "already exist" in message(error).lower()


def is_not_found(error: ClientError) -> bool:
    """A Describe of something that is not there (SageMaker says it several ways)."""
    text = message(error).lower()
    return code(error) in ("ValidationException", "ResourceNotFound") and (
        "does not exist" in text or "not found" in text or "could not find" in text
    )


def create_unless_exists(create: Callable[..., dict], request: dict) -> bool:
    """Send one Create request; True when it created, False when the name was taken
    (a repeated event, or a race with another handler). Any other error propagates."""
    try:
        create(**request)
    except ClientError as exc:
        if already_exists(exc):
            return False
        raise
    return True


def reason(error: BaseException) -> str:
    """``Code: message`` for an AWS error, the text for anything else."""
    if isinstance(error, ClientError):
        return f"{code(error) or 'Error'}: {message(error) or '(no message)'}"
    return str(error)
