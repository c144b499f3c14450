"""Local endpoints: SageMaker's serving contract, served by SageMaker's own handler service.

Each endpoint is one HTTP server on 127.0.0.1 (``GET /ping``, ``POST /invocations``);
behind it, the artifact's ``code/inference.py`` is loaded and called by the PyTorch
inference container's handler service (``handler_service.py``), one request at a time per
call as TorchServe does. Updating an endpoint loads the new model beside the old one and
swaps it in between two requests: nothing is dropped.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tarfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sagedrop.local.handler_service import invoke, start_handler_service
from sagedrop_contract import artifact_layout

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # InvokeEndpoint's limit for real-time endpoints
# What the container itself accepts: TorchServe's max_request_size in the PyTorch inference
# image. A body between the two reaches the model (which answers it); over it, 413.
CONTAINER_MAX_BODY_BYTES = 6_553_500
PING_BODY = b'{\n  "status": "Healthy"\n}\n'  # what TorchServe's /ping answers
# Connections the kernel queues before the server accepts them: a burst of new clients
# waits here instead of being reset (the standard library's default is 5).
LISTEN_BACKLOG = 1024
# An oversized body is read and dropped up to this much before the 413 goes back (a
# client that sends more than that meets a closed connection).
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
DRAIN_IDLE_SECONDS = 1.0  # ... or until it has sent nothing for this long
IDLE_SECONDS = 60  # a keep-alive connection silent this long is closed


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection, daemonic, with a listen backlog sized for bursts."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-reply is its own business, not a server fault: no
        traceback for it; anything else is still printed."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class ModelWorker:
    """One artifact loaded by SageMaker's PyTorch handler service.

    Each request is one ``handle([request], context)`` call, as a TorchServe worker makes
    it: the real stack never batches requests together, so neither does this. Requests
    run concurrently, at most as many as TorchServe would start workers (one per CPU).
    """

    def __init__(self, model_dir: Path, environment: dict[str, str]):
        self.model_dir = Path(model_dir)
        entry = self.model_dir / artifact_layout.CODE / artifact_layout.ENTRY_POINT
        if not entry.is_file():
            raise FileNotFoundError(f"{entry} is missing: the artifact cannot serve")
        self.service = start_handler_service(self.model_dir, environment)
        self._workers = threading.BoundedSemaphore(os.cpu_count() or 1)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None):
        """(status, content type, body) as the container would answer."""
        with self._workers:
            return invoke(self.service, self.model_dir, body, content_type, accept)


class EndpointServer:
    """The HTTP side; the worker behind it can be swapped while it serves."""

    def __init__(self, name: str):
        self.name = name
        self.worker: ModelWorker | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are separate writes: without this, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every response.
            disable_nagle_algorithm = True
            timeout = IDLE_SECONDS

            def log_message(self, *args) -> None:
                """Quiet: the pipeline logs what matters, not every request line."""

            def do_GET(self) -> None:
                if self.path == "/invocations":  # TorchServe: a prediction needs a body
                    return self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "text/plain",
                                       b"GET /invocations: send the image with POST")  # fmt: skip
                if self.path != "/ping":
                    return self._reply(HTTPStatus.NOT_FOUND, "text/plain", b"not found")
                if server.worker is None:
                    return self._reply(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"loading")
                return self._reply(HTTPStatus.OK, "application/json", PING_BODY)

            def do_POST(self) -> None:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    return self._chunked()
                length, problem = _content_length(self.headers)
                if problem is not None:
                    status, message = problem
                    if status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                        # Read (and drop) what the client sends, boundedly, so that it
                        # reads this answer instead of a broken pipe.
                        self.connection.settimeout(DRAIN_IDLE_SECONDS)
                        _drain(self.rfile, int(self.headers["Content-Length"]))
                    self.close_connection = True  # the body's end is unknown: do not reuse
                    return self._reply(status, "text/plain", message.encode())
                body = self.rfile.read(length)
                if len(body) < length:
                    self.close_connection = True
                    return  # the client went away mid-body
                return self._answer(body)

            def _chunked(self) -> None:
                """A chunked body, as TorchServe accepts it, bounded by the same limit."""
                try:
                    body = _read_chunked(self.rfile, CONTAINER_MAX_BODY_BYTES)
                except ValueError as exc:
                    self.close_connection = True
                    return self._reply(HTTPStatus.BAD_REQUEST, "text/plain", str(exc).encode())
                except OverflowError as exc:
                    self.close_connection = True
                    return self._reply(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "text/plain", str(exc).encode()
                    )
                return self._answer(body)

            def _answer(self, body: bytes) -> None:
                if self.path != "/invocations":
                    return self._reply(HTTPStatus.NOT_FOUND, "text/plain", b"not found")
                worker = server.worker  # the model this request started with
                if worker is None:
                    return self._reply(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"loading")
                status, content_type, data = worker.invoke(
                    body, self.headers.get("Content-Type"), self.headers.get("Accept")
                )
                return self._reply(status, content_type, data)

            def _reply(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = _HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(
            target=self._http.serve_forever, daemon=True, name=f"endpoint-{name}"
        )
        self._thread.start()

    def swap(self, worker: ModelWorker) -> None:
        # Requests already holding the old worker finish on it; nothing else holds it.
        self.worker = worker

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def _content_length(headers) -> tuple[int, tuple[int, str] | None]:
    """The body's length, or the 4xx to answer: a request with a missing, malformed,
    negative or oversized Content-Length gets a reply, never a silently closed socket."""
    if headers.get("Transfer-Encoding"):
        return 0, (HTTPStatus.NOT_IMPLEMENTED, "only the chunked transfer coding is understood")
    text = headers.get("Content-Length")
    if text is None:
        return 0, (HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
    if not text.strip().isdigit():
        return 0, (HTTPStatus.BAD_REQUEST, f"Content-Length {text[:40]!r} is not a number")
    length = int(text)
    if length > CONTAINER_MAX_BODY_BYTES:
        return 0, (
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the body is {length} bytes; the limit is {CONTAINER_MAX_BODY_BYTES}",
        )
    return length, None


def _read_chunked(stream, limit: int) -> bytes:
    """A chunked body (RFC 9112 section 7.1), at most ``limit`` bytes; trailers dropped.
    ``ValueError``: malformed; ``OverflowError``: over ``limit``."""
    parts, total = [], 0
    while True:
        line = stream.readline(1024)
        if not line.endswith(b"\n"):
            raise ValueError("a chunk size line is cut short or too long")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"chunk size {size_text[:20]!r} is not hexadecimal") from None
        if size == 0:
            break
        total += size
        if total > limit:
            raise OverflowError(f"the chunked body exceeds the limit of {limit} bytes")
        data = stream.read(size)
        if len(data) < size or stream.readline(16) not in (b"\r\n", b"\n"):
            raise ValueError("a chunk is cut short")
        parts.append(data)
    for _ in range(64):  # trailer fields, up to the blank line
        trailer = stream.readline(8192)
        if trailer in (b"\r\n", b"\n", b""):
            break
    return b"".join(parts)


def _drain(stream, length: int, limit: int = DRAIN_LIMIT_BYTES) -> None:
    """Read and drop up to ``length`` (at most ``limit``) bytes, until the client pauses."""
    left = min(length, limit)
    try:
        while left > 0:
            chunk = stream.read1(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)
    except (TimeoutError, OSError):
        return  # a client that declared more than it sends: answer it now


def unpack_model(model_tar_gz: bytes, destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(model_tar_gz), mode="r:gz") as archive:
        archive.extractall(destination, filter="data")
    return destination


def shutdown_all(servers: dict[str, EndpointServer]) -> None:
    for server in list(servers.values()):
        with contextlib.suppress(Exception):
            server.close()
    servers.clear()
