"""Local endpoints: SageMaker's serving contract around the artifact's ``code/inference.py``.

Each endpoint is one HTTP server on 127.0.0.1 (``GET /ping``, ``POST /invocations``).
Requests are decoded in their own threads (``input_fn``), then a batcher runs
``predict_fn`` on whatever requests are waiting together, so concurrent clients share
forward passes; a lone request never waits for company. Updating an endpoint loads the
new model beside the old one and swaps it in between two requests: nothing is dropped.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import sys
import tarfile
import threading
import time
from concurrent.futures import Future
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from sagedrop.artifacts import load_inference_code

MAX_BATCH = 16
GATHER_SECONDS = 0.002  # how long a batch waits for requests already being decoded
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # InvokeEndpoint's limit for real-time endpoints
# Connections the kernel queues before the server accepts them: a burst of new clients
# waits here instead of being reset (the standard library's default is 5).
LISTEN_BACKLOG = 1024
IDLE_SECONDS = 60  # a keep-alive connection silent this long is closed
_ENVIRONMENT_LOCK = threading.Lock()


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
    """One loaded artifact and its batcher thread."""

    def __init__(self, model_dir: Path, environment: dict[str, str]):
        self.model_dir = Path(model_dir)
        self.code = load_inference_code(self.model_dir / "code")
        # model_fn reads its settings (model name, top-k) from the container environment.
        with _ENVIRONMENT_LOCK:
            saved = {k: os.environ.get(k) for k in environment}
            os.environ.update(environment)
            try:
                self.model = self.code.model_fn(str(self.model_dir))
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        self._queue: queue.Queue = queue.Queue()
        self._decoding = 0
        self._decoding_lock = threading.Lock()
        self._thread = threading.Thread(target=self._batch_loop, daemon=True, name="batcher")
        self._thread.start()

    def invoke(self, body: bytes, content_type: str | None, accept: str | None):
        """(status, content type, body) as the container would answer."""
        with self._decoding_lock:
            self._decoding += 1
        try:
            tensor = self.code.input_fn(body, content_type, self.model)
        except Exception as exc:
            return _error_status(self.code, exc), "text/plain", str(exc).encode()
        finally:
            with self._decoding_lock:
                self._decoding -= 1
        future: Future = Future()
        self._queue.put((tensor, future))
        try:
            prediction = future.result()
            payload, returned_type = self.code.output_fn([prediction], accept)
        except Exception as exc:
            return _error_status(self.code, exc), "text/plain", str(exc).encode()
        data = payload.encode() if isinstance(payload, str) else payload
        return HTTPStatus.OK, returned_type, data

    def close(self) -> None:
        self._queue.put(None)

    def _batch_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + GATHER_SECONDS
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    with self._decoding_lock:
                        more_coming = self._decoding > 0
                    if not more_coming or time.monotonic() >= deadline:
                        break
                    time.sleep(0.0002)
                    continue
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                results = self.code.predict_fn(torch.cat([t for t, _ in batch]), self.model)
            except Exception as exc:
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)


def _error_status(code, exc: Exception) -> int:
    if isinstance(exc, getattr(code, "UnsupportedMediaType", ())):
        return HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    if isinstance(exc, getattr(code, "InvalidImage", ())):
        return HTTPStatus.BAD_REQUEST
    return HTTPStatus.INTERNAL_SERVER_ERROR


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
                if self.path != "/ping":
                    return self._reply(HTTPStatus.NOT_FOUND, "text/plain", b"not found")
                ready = server.worker is not None
                status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
                return self._reply(status, "text/plain", b"" if ready else b"loading")

            def do_POST(self) -> None:
                length, problem = _content_length(self.headers)
                if problem is not None:
                    status, message = problem
                    self.close_connection = True  # the body's end is unknown: do not reuse
                    return self._reply(status, "text/plain", message.encode())
                body = self.rfile.read(length)
                if len(body) < length:
                    self.close_connection = True
                    return  # the client went away mid-body
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
        old, self.worker = self.worker, worker
        if old is not None:
            # Requests already holding the old worker finish on it; then its batcher ends.
            threading.Timer(5.0, old.close).start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self.worker:
            self.worker.close()


def _content_length(headers) -> tuple[int, tuple[int, str] | None]:
    """The body's length, or the 4xx to answer: a request with a missing, malformed,
    negative or oversized Content-Length gets a reply, never a silently closed socket."""
    if headers.get("Transfer-Encoding"):
        return 0, (
            HTTPStatus.LENGTH_REQUIRED,
            "chunked bodies are not accepted; send Content-Length",
        )
    text = headers.get("Content-Length")
    if text is None:
        return 0, (HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
    if not text.strip().isdigit():
        return 0, (HTTPStatus.BAD_REQUEST, f"Content-Length {text[:40]!r} is not a number")
    length = int(text)
    if length > MAX_PAYLOAD_BYTES:
        return 0, (
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the body is {length} bytes; the limit is {MAX_PAYLOAD_BYTES}",
        )
    return length, None


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
