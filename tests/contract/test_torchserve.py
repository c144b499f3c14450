"""A trained artifact served by the real PyTorch inference stack (issue 22).

SageMaker's PyTorch inference image starts ``sagemaker_pytorch_serving_container.
serving.main()``: the toolkit writes ``/etc/sagemaker-ts.properties``, installs the
artifact's ``code/requirements.txt`` if it has one, and starts TorchServe (Java), whose
Python workers load ``code/inference.py`` through the toolkit's handler service. The
local endpoints imitate only the HTTP front (TorchServe itself needs Java); this test
runs the front itself, bound to 127.0.0.1 (TorchServe's ``TS_*_ADDRESS`` variables
override the toolkit's 0.0.0.0) with every package index unreachable, and compares its
answers with the local endpoint's.
"""

from __future__ import annotations

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
from pathlib import Path

import pytest

from sagedrop.local.handler_service import invoke, start_handler_service
from tests.helpers import jpeg_bytes, png_bytes

pytestmark = pytest.mark.slow

TS_CONFIG = Path("/etc/sagemaker-ts.properties")  # where the toolkit writes it
# TorchServe kills a worker whose model load takes longer than this (its default).
TORCHSERVE_LOAD_TIMEOUT_S = 120
START_TIMEOUT_S = 180
WORKER_LOAD = re.compile(r"WorkerLoadTime\.Milliseconds:([0-9.]+)")
MAIN = "from sagemaker_pytorch_serving_container import serving; serving.main()"


def _java_or_skip() -> str:
    java = shutil.which("java")
    if java:
        return java
    if os.environ.get("CI"):
        pytest.fail("Java is missing in CI: .ci/run installs openjdk-17-jre-headless")
    pytest.skip("TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _request(url: str, body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _environment(base: Path, ports: list[int]) -> dict[str, str]:
    inference, management, metrics = ports
    unreachable = "http://127.0.0.1:9"
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{inference}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{management}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
        # Every index and the internet out of reach, as in an isolated container.
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": f"{unreachable}/simple",
        **{name: unreachable for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                          "https_proxy", "ALL_PROXY")},
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to serving.main(), whose handler stops TorchServe; then the whole group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the Java server and its Python workers
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def torchserve(trained_job, tmp_path_factory):
    _java_or_skip()
    if TS_CONFIG.exists():
        pytest.skip(f"{TS_CONFIG} exists: another TorchServe may be running here")
    base = tmp_path_factory.mktemp("torchserve")
    shutil.copytree(trained_job["model_dir"], base / "model")
    ports = _free_ports(3)
    with open(base / "serving.log", "w") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", MAIN],
            cwd=base,
            env=_environment(base, ports),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            ready_s = _wait_until_ready(process, ports[1], started, base / "serving.log")
            yield {"url": f"http://127.0.0.1:{ports[0]}", "ready_s": ready_s,
                   "log": base / "serving.log"}  # fmt: skip
        finally:
            _stop(process)
            TS_CONFIG.unlink(missing_ok=True)


def _wait_until_ready(process: subprocess.Popen, management: int, started: float, log: Path):
    """Seconds from start until the model's worker is READY (TorchServe's management API)."""
    while time.monotonic() - started < START_TIMEOUT_S and process.poll() is None:
        try:
            status, body = _request(f"http://127.0.0.1:{management}/models/model")
        except OSError:
            status, body = 0, b""
        if status == 200 and json.loads(body)[0]["workers"][0]["status"] == "READY":
            return time.monotonic() - started
        time.sleep(0.5)
    text = log.read_text(errors="replace")
    raise AssertionError(f"TorchServe did not load the model:\n{text[-4000:]}")


def _local_answer(model_dir: Path, body: bytes, content_type: str, accept: str):
    service = start_handler_service(model_dir, {"SAGEMAKER_PROGRAM": "inference.py"})
    return invoke(service, model_dir, body, content_type, accept)


def test_torchserve_answers_images_as_the_local_endpoint(torchserve, trained_job):
    for body, content_type in ((jpeg_bytes(), "image/jpeg"), (png_bytes(), "image/png")):
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        status, answer = _request(f"{torchserve['url']}/invocations", body, headers)
        assert status == 200, answer
        local_status, _, local = _local_answer(
            trained_job["model_dir"], body, content_type, "application/json"
        )
        assert local_status == 200
        assert json.loads(answer) == json.loads(local)


def test_the_optimised_graph_serves_under_torchserve(torchserve):
    text = torchserve["log"].read_text(errors="replace")
    assert "serving the eager PyTorch model" not in text, text[-3000:]
    # inference.py logs which runtime answers, once per worker
    assert "serving model.onnx under ONNX Runtime" in text, text[-3000:]


def test_garbage_is_400_and_a_wrong_accept_is_406(torchserve):
    url = f"{torchserve['url']}/invocations"
    status, body = _request(url, b"not an image", {"Content-Type": "image/jpeg"})
    assert status == 400, body
    status, body = _request(
        url, jpeg_bytes(), {"Content-Type": "image/jpeg", "Accept": "text/html"}
    )
    assert status == 406, body
    status, body = _request(f"{torchserve['url']}/ping")
    assert status == 200


def test_the_model_loads_well_inside_torchserves_load_timeout(torchserve):
    """Nothing installs at load: each worker's load (TorchServe's own WorkerLoadTime
    metric) and the start to a READY worker stay far inside the 120 s a worker gets."""
    text = torchserve["log"].read_text(errors="replace")
    loads = [float(m) / 1000 for m in WORKER_LOAD.findall(text)]
    assert loads, text[-3000:]
    assert max(loads) < TORCHSERVE_LOAD_TIMEOUT_S / 4, loads
    assert torchserve["ready_s"] < TORCHSERVE_LOAD_TIMEOUT_S / 2, torchserve["ready_s"]


def test_torchserve_listens_on_loopback_only(torchserve):
    port = int(torchserve["url"].rsplit(":", 1)[1])
    addresses = {
        line.split()[3].replace("[::ffff:", "").replace("]", "")  # Java's IPv4-mapped form
        for line in subprocess.run(
            ["ss", "-ltnH"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        if line.split() and line.split()[3].endswith(f":{port}")
    }
    if not addresses:
        pytest.skip("ss is not available to list listening sockets")
    assert addresses == {f"127.0.0.1:{port}"}, addresses
