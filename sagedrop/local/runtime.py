"""``sagemaker-runtime`` ``InvokeEndpoint`` against the local endpoint servers.

Errors come back as on AWS: an endpoint that does not exist or is not in service is a
``ValidationError``; a 4xx or 5xx from the model container is a ``ModelError`` carrying
the container's status and message.
"""

from __future__ import annotations

import http.client
import io
import threading

from botocore.response import StreamingBody

from sagedrop.local.aws_shapes import ACCOUNT, client_error, metadata, validate
from sagedrop.local.endpoints import MAX_PAYLOAD_BYTES
from sagedrop.local.sagemaker import LocalSageMaker


class LocalSageMakerRuntime:
    def __init__(self, sagemaker: LocalSageMaker, timeout: float = 60.0):
        self.sagemaker = sagemaker
        self.timeout = timeout
        self._local = threading.local()  # one keep-alive connection per thread and port

    def invoke_endpoint(self, **params) -> dict:
        validate("sagemaker-runtime", "invoke_endpoint", params)
        name = params["EndpointName"]
        port = self.sagemaker.endpoint_port(name)
        if port is None:
            raise client_error(
                "InvokeEndpoint",
                "ValidationError",
                f"Endpoint {name} of account {ACCOUNT} not found.",
            )
        body = params["Body"]
        data = body if isinstance(body, bytes | bytearray) else body.read()
        if len(data) > MAX_PAYLOAD_BYTES:
            # SageMaker's front end refuses it before any container sees it (a plain 413,
            # which botocore names by its status).
            raise client_error(
                "InvokeEndpoint",
                "413",
                f"HTTP content length exceeded {MAX_PAYLOAD_BYTES} bytes.",
                413,
            )
        headers = {"Content-Type": params.get("ContentType", "application/octet-stream")}
        if params.get("Accept"):
            headers["Accept"] = params["Accept"]
        with self.sagemaker.invocation_slot(name):
            status, content_type, payload = self._post(port, bytes(data), headers)
        if status >= 400:
            message = payload.decode(errors="replace")
            kind = "client" if status < 500 else "server"
            error = client_error(
                "InvokeEndpoint",
                "ModelError",
                f"Received {kind} error ({status}) from primary with message "
                f'"{message}". See the endpoint\'s logs for more information.',
                424,
            )
            error.response["OriginalStatusCode"] = status
            error.response["OriginalMessage"] = message
            raise error
        return {
            **metadata(),
            "Body": StreamingBody(io.BytesIO(payload), len(payload)),
            "ContentType": content_type,
            "InvokedProductionVariant": "AllTraffic",
        }

    def _post(self, port: int, data: bytes, headers: dict) -> tuple[int, str, bytes]:
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        for attempt in range(2):
            connection = connections.get(port)
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
                connections[port] = connection
            try:
                connection.request("POST", "/invocations", body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                return response.status, response.getheader("Content-Type", ""), payload
            except (ConnectionError, http.client.HTTPException, OSError):
                connection.close()
                connections.pop(port, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")
