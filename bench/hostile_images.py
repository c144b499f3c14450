"""A normal image's latency while hostile images are in flight (issue 19).

Trains a small artifact (ResNet18 at 224 px, one epoch on a tiny sample: the weights do
not matter for timing), serves it on a local endpoint (HTTP on 127.0.0.1 around
SageMaker's PyTorch handler service) and measures in one run:

- the idle p50 of one normal 500x375 JPEG;
- the same p50 while 8 clients send, back to back, a 117 KB PNG that declares
  1 x 60,000,000 pixels (the issue's finding: 4.4 s and +0.8 GB each before the header
  checks), and the p50 of those hostile requests' own answers (a 400 from the header);
- the ratio of the two normal p50s (the target: under 2) and the server's peak RSS.

Run: .venv/bin/python bench/hostile_images.py
"""

from __future__ import annotations

import http.client
import io
import logging
import multiprocessing
import resource
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from local_serving import train_artifact

from sagedrop.local.endpoints import EndpointServer, ModelWorker

NORMAL_REQUESTS = 40
HOSTILE_CLIENTS = 8
# "Paced": each hostile client sends again 100 ms after its answer (8 in flight at once,
# 80 a second: ~20 times what the old decode could even answer); "flood": back to back,
# where the attackers' own processes share the 2 cores with the server.
PAUSE_SECONDS = 0.1


def normal_jpeg() -> bytes:
    image = Image.effect_mandelbrot((500, 375), (-2, -1.5, 1, 1.5), 100).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def thin_png(width: int = 60_000_000, height: int = 1) -> bytes:
    """A real PNG of width x height black pixels, compressed to ~117 KB."""
    row = b"\x00" + b"\x00" * width  # filter byte + one grey byte per pixel
    compressed = zlib.compress(row, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed)
            + chunk(b"IEND", b""))  # fmt: skip


def post(port: int, body: bytes, content_type: str) -> tuple[int, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, time.perf_counter() - start


def normal_p50(port: int, body: bytes) -> float:
    times = []
    for _ in range(NORMAL_REQUESTS):
        status, seconds = post(port, body, "image/jpeg")
        assert status == 200, status
        times.append(seconds)
    return statistics.median(times)


def attack(port: int, body: bytes, pause: float, stop, results) -> None:
    """One hostile client: the thin PNG again ``pause`` seconds after each answer (0: a
    flood, back to back), until told to stop."""
    times, statuses = [], set()
    while not stop.is_set():
        status, seconds = post(port, body, "image/png")
        statuses.add(status)
        times.append(seconds)
        time.sleep(pause)
    results.put((times, statuses))


def under_attack(port: int, normal: bytes, hostile: bytes, pause: float) -> dict:
    """The normal p50 while HOSTILE_CLIENTS other processes send the hostile image (in
    this process they would contend for its interpreter lock with the server itself)."""
    stop = multiprocessing.Event()
    results: multiprocessing.Queue = multiprocessing.Queue()
    attackers = [
        multiprocessing.Process(target=attack, args=(port, hostile, pause, stop, results))
        for _ in range(HOSTILE_CLIENTS)
    ]
    for process in attackers:
        process.start()
    time.sleep(1.0)  # every attacker is sending before the first normal request
    started = time.perf_counter()
    try:
        loaded = normal_p50(port, normal)
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        times: list[float] = []
        statuses: set[int] = set()
        for _ in attackers:
            more, seen = results.get(timeout=120)
            times += more
            statuses |= seen
        for process in attackers:
            process.join()
    return {
        "normal": loaded,
        "hostile_p50": statistics.median(times),
        "hostile_per_s": len(times) / (elapsed + 1.0),
        "statuses": sorted(statuses),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        model_dir = train_artifact(Path(work))
        logging.getLogger("sagedrop.local.endpoint").setLevel(logging.ERROR)  # 1,000s of 400s
        server = EndpointServer("bench-hostile")
        server.swap(ModelWorker(model_dir, {"SAGEMAKER_PROGRAM": "inference.py"}))
        normal, hostile = normal_jpeg(), thin_png()
        for _ in range(5):  # warm-up
            post(server.port, normal, "image/jpeg")
        idle = normal_p50(server.port, normal)
        paced = under_attack(server.port, normal, hostile, PAUSE_SECONDS)
        flood = under_attack(server.port, normal, hostile, 0.0)
        server.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"hostile_png_bytes={len(hostile)} declaring 60000000x1 pixels")
    print(f"normal_idle_p50_ms={idle * 1000:.1f}")
    for name, run in (("paced", paced), ("flood", flood)):
        print(f"{name}: hostile_statuses={run['statuses']} "
              f"hostile_per_s={run['hostile_per_s']:.0f} "
              f"hostile_p50_ms={run['hostile_p50'] * 1000:.1f} "
              f"normal_p50_ms={run['normal'] * 1000:.1f} "
              f"normal_latency_ratio={run['normal'] / idle:.2f}")  # fmt: skip
    print("target: normal_latency_ratio < 2 with 8 hostile images in flight (paced)")
    print(f"process_peak_rss_mb={peak_mb:.0f}")


if __name__ == "__main__":
    main()
