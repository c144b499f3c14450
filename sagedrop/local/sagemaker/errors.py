"""The errors the local SageMaker answers with, by name, in AWS's words and codes.

Each helper returns the ``ClientError`` botocore would raise for that answer, so an
operation reads ``raise errors.resource_in_use(...)`` instead of spelling a code.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from sagedrop.local.aws_shapes import arn, client_error


def validation(operation: str, message: str) -> ClientError:
    """``ValidationException``: the request is not acceptable (SageMaker's most common)."""
    return client_error(operation, "ValidationException", message)


def resource_in_use(operation: str, message: str) -> ClientError:
    """``ResourceInUse``: a job of this name exists (what a duplicate event meets)."""
    return client_error(operation, "ResourceInUse", message)


def resource_not_found(operation: str, message: str) -> ClientError:
    """``ResourceNotFound``: the tuning API's word for a missing job."""
    return client_error(operation, "ResourceNotFound", message)


def could_not_find(
    operation: str, what: str, name: str, resource: str | None = None
) -> ClientError:
    """A model, endpoint configuration or endpoint that is not there, named by its ARN."""
    return validation(operation, f'Could not find {what} "{arn(resource or what, name)}".')


def already_existing(operation: str, what: str, resource_arn: str) -> ClientError:
    """A model, endpoint configuration or endpoint whose name is taken."""
    return validation(operation, f'Cannot create already existing {what} "{resource_arn}".')


def throttling(operation: str) -> ClientError:
    """``ThrottlingException`` (HTTP 400, no message), as SageMaker answers beyond a
    serverless endpoint's MaxConcurrency."""
    return client_error(operation, "ThrottlingException", None)
