"""An artifact served by the PyTorch inference image's own stack, on this machine.

The image's entry point is ``sagemaker_pytorch_serving_container.serving.main()``: it
writes ``/etc/sagemaker-ts.properties``, installs the artifact's ``code/requirements.txt``
if there is one, and starts TorchServe (Java), whose Python workers load
``code/inference.py`` through the toolkit's handler service. The local endpoints imitate
only TorchServe's HTTP front; this module runs the real one, for the contract test
(``tests/contract/test_torchserve.py``) and ``bench/torchserve_load.py``.

It binds to 127.0.0.1 only (TorchServe's ``TS_*_ADDRESS`` variables override the 0.0.0.0
the toolkit writes, because its config enables environment overrides), puts every package
index and the internet out of reach, and removes what it wrote and started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TS_CONFIG = Path("/etc/sagemaker-ts.properties")  # where the toolkit writes it
# TorchServe's own per-worker metric, in milliseconds, in the server's log.
WORKER_LOAD = re.compile(r"WorkerLoadTime\.Milliseconds:([0-9.]+)")
MAIN = "from sagemaker_pytorch_serving_container import serving; serving.main()"
UNREACHABLE = "http://127.0.0.1:9"


class StackUnavailable(RuntimeError):
    """Java, or a free /etc/sagemaker-ts.properties, is missing here."""


@dataclass
class Served:
    url: str  # the inference address
    ready_s: float  # from start until every worker was READY
    log: Path  # the toolkit's and TorchServe's output

    def worker_load_seconds(self) -> list[float]:
        text = self.log.read_text(errors="replace")
        return [float(ms) / 1000 for ms in WORKER_LOAD.findall(text)]


def request(url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, body) of one HTTP request; an HTTP error is an answer, not an exception."""
    call = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def missing() -> str:
    """Why the stack cannot run here, or "" when it can."""
    if not shutil.which("java"):
        return "TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)"
    if TS_CONFIG.exists():
        return f"{TS_CONFIG} exists: another TorchServe may be running here"
    return ""


@contextmanager
def serve(
    model_dir: Path,
    folder: Path,
    workers: int = 1,
    environment: dict[str, str] | None = None,
    timeout_s: float = 180,
) -> Iterator[Served]:
    """``model_dir`` served until the block ends; ``folder`` holds the copy and the logs."""
    why = missing()
    if why:
        raise StackUnavailable(why)
    base = Path(folder)
    shutil.copytree(model_dir, base / "model")
    ports = _free_ports(3)
    log_path = base / "serving.log"
    with open(log_path, "w") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", MAIN],
            cwd=base,
            env={**_environment(base, ports, workers), **(environment or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            ready_s = _wait_until_ready(process, ports[1], workers, started, timeout_s, log_path)
            yield Served(f"http://127.0.0.1:{ports[0]}", ready_s, log_path)
        finally:
            _stop(process)
            TS_CONFIG.unlink(missing_ok=True)


def _environment(base: Path, ports: list[int], workers: int) -> dict[str, str]:
    inference, management, metrics = ports
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    inherited.pop("PIP_FIND_LINKS", None)
    return {
        **inherited,
        # the toolkit runs `torchserve` by name, and TorchServe its workers with `python`
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{inference}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{management}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": f"{UNREACHABLE}/simple",
        **{name: UNREACHABLE for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                          "https_proxy", "ALL_PROXY")},
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }  # fmt: skip


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_until_ready(
    process: subprocess.Popen, management: int, workers: int, started: float,
    timeout_s: float, log: Path,
) -> float:  # fmt: skip
    """Seconds from start until the model's workers are READY (the management API)."""
    while time.monotonic() - started < timeout_s and process.poll() is None:
        try:
            status, body = request(f"http://127.0.0.1:{management}/models/model")
        except OSError:
            status, body = 0, b""
        if status == 200:
            states = [w["status"] for w in json.loads(body)[0]["workers"]]
            if len(states) >= workers and all(s == "READY" for s in states):
                return time.monotonic() - started
        time.sleep(0.25)
    text = log.read_text(errors="replace")
    raise RuntimeError(f"TorchServe did not load the model:\n{text[-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to serving.main(), whose handler stops TorchServe; then the whole group
    (the Java server and its Python workers share the session started for it)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        # A server that ignores it is killed with the rest of its group below.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
        os.killpg(process.pid, signal.SIGKILL)
