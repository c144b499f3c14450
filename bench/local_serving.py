"""Local cloud serving: endpoint latency and throughput, and image-dropped → JSON latency.

Trains a ResNet18 artifact at 224 px (one epoch on a tiny sample: the weights do not
matter for timing), deploys it on the local cloud with the pipeline's own requests, then
measures in one run:

- raw batch-1 forward p50 vs endpoint p50 (one 224 px JPEG through HTTP, decode, batcher)
- raw batch-8 forward throughput vs 8 concurrent clients' throughput through the endpoint
- drop → ``.json`` p50 (S3 put → event → handler → InvokeEndpoint → put) minus the
  in-process ``input_fn → predict_fn → output_fn`` p50 (the model's own inference time)
- a burst of 200 simultaneous new connections (each one request, then close): how many
  were served, and their latency
- 64 keep-alive clients, 10 requests each: requests/s, p50 and p99, and the process's
  resident memory before and after

Run: .venv/bin/python bench/local_serving.py
"""

from __future__ import annotations

import http.client
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sagedrop  # noqa: F401 - import paths
from sagedrop.artifacts import load_inference_code
from sagedrop.local.cloud import DATA_BUCKET, INFERENCE_BUCKET, LocalCloud
from sagedrop.paths import TRAIN_SCRIPT
from sagedrop.sample_data import pack_dataset, write_sample_dataset

REPEATS = 40
CLIENTS = 8
BURST = 200
KEEPALIVE_CLIENTS = 64
KEEPALIVE_REQUESTS = 10


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def burst_of_new_connections(port: int, body: bytes) -> tuple[int, list[float]]:
    """BURST clients connect at the same moment, send one request each and close."""
    request = (
        b"POST /invocations HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    barrier = threading.Barrier(BURST)
    served: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            barrier.wait(timeout=60)
            start = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                sock.sendall(request)
                reply = b""
                while chunk := sock.recv(65536):  # the server closes after the reply
                    reply += chunk
            if reply.startswith(b"HTTP/1.1 200"):
                with lock:
                    served.append(time.perf_counter() - start)
        except OSError:
            pass  # reset or refused: counted as not served

    threads = [threading.Thread(target=client) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    return len(served), served


def keep_alive_clients(port: int, body: bytes) -> tuple[float, list[float]]:
    """KEEPALIVE_CLIENTS each send KEEPALIVE_REQUESTS on one connection."""
    barrier = threading.Barrier(KEEPALIVE_CLIENTS + 1)
    latencies: list[float] = []
    lock = threading.Lock()
    headers = {"Content-Type": "image/jpeg"}

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        barrier.wait(timeout=60)
        mine = []
        for _ in range(KEEPALIVE_REQUESTS):
            start = time.perf_counter()
            try:
                connection.request("POST", "/invocations", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()  # reset or refused: not served; the next one reconnects
                continue
            if response.status == 200:
                mine.append(time.perf_counter() - start)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(KEEPALIVE_CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=60)
    start = time.perf_counter()
    for thread in threads:
        thread.join(timeout=600)
    return len(latencies) / (time.perf_counter() - start), latencies


def train_artifact(work: Path) -> Path:
    data = pack_dataset(write_sample_dataset(work, per_class=8, classes=3), work / "d.zip")
    model_dir = work / "model"
    subprocess.run(
        [
            sys.executable,
            str(TRAIN_SCRIPT),
            "--data",
            str(data),
            "--model-dir",
            str(model_dir),
            "--output-data-dir",
            str(work / "out"),
            "--epochs",
            "1",
            "--image-size",
            "224",
            "--pretrained",
            "false",
            "--batch-size",
            "8",
        ],
        check=True,
        capture_output=True,
    )
    return model_dir


def jpeg_224() -> bytes:
    image = Image.effect_mandelbrot((224, 224), (-2, -1.5, 1, 1.5), 100).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        model_dir = train_artifact(work)
        archive = io.BytesIO()
        import tarfile

        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for path in sorted(model_dir.rglob("*")):
                tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
        body = jpeg_224()

        code = load_inference_code(model_dir / "code")
        model = code.model_fn(str(model_dir))
        one = code.input_fn(body, "image/jpeg")
        eight = torch.cat([one] * CLIENTS)
        with torch.inference_mode():
            for _ in range(5):
                model.network(one)
            raw_one = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                model.network(one)
                raw_one.append(time.perf_counter() - start)
            raw_eight = []
            for _ in range(REPEATS // 4):
                start = time.perf_counter()
                model.network(eight)
                raw_eight.append(time.perf_counter() - start)
        chain = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            code.output_fn(
                code.predict_fn(code.input_fn(body, "image/jpeg"), model), "application/json"
            )
            chain.append(time.perf_counter() - start)

        cloud = LocalCloud(work / "cloud", say=lambda _: None)
        cloud.start(watch=False)
        try:
            cloud.s3.put_object(Bucket=DATA_BUCKET, Key="bench/model.tar.gz",
                                Body=archive.getvalue())  # fmt: skip
            sm = cloud.sagemaker
            sm.create_model(
                ModelName="bench-model",
                PrimaryContainer={
                    "Image": "local",
                    "ModelDataUrl": f"s3://{DATA_BUCKET}/bench/model.tar.gz",
                    "Environment": {"SAGEDROP_MODEL_NAME": "bench-model"},
                },
                ExecutionRoleArn="arn:aws:iam::000000000000:role/x",
            )
            sm.create_endpoint_config(
                EndpointConfigName="bench-config",
                ProductionVariants=[
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": "bench-model",
                        "InitialInstanceCount": 1,
                        "InstanceType": "ml.m5.large",
                    }
                ],
            )
            sm.create_endpoint(EndpointName="sagedrop", EndpointConfigName="bench-config")
            cloud.wait_until(lambda: sm.endpoint_port("sagedrop") is not None, 120, 0.05)
            runtime = cloud.runtime

            def invoke() -> None:
                runtime.invoke_endpoint(
                    EndpointName="sagedrop", Body=body, ContentType="image/jpeg"
                )["Body"].read()

            for _ in range(5):
                invoke()
            served = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                invoke()
                served.append(time.perf_counter() - start)

            per_client = REPEATS // 2
            barrier = threading.Barrier(CLIENTS + 1)

            def client() -> None:
                barrier.wait()
                for _ in range(per_client):
                    invoke()

            threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
            for thread in threads:
                thread.start()
            barrier.wait()
            start = time.perf_counter()
            for thread in threads:
                thread.join()
            concurrent_rate = CLIENTS * per_client / (time.perf_counter() - start)

            port = sm.endpoint_port("sagedrop")
            import psutil

            rss_before = psutil.Process().memory_info().rss / 2**20
            burst_served, burst_latency = burst_of_new_connections(port, body)
            keep_rate, keep_latency = keep_alive_clients(port, body)
            rss_after = psutil.Process().memory_info().rss / 2**20

            images = cloud.root / "buckets" / INFERENCE_BUCKET / "images"
            dropped = []
            for n in range(REPEATS // 2):
                target = images / f"bench-{n}.jpg.json"
                start = time.perf_counter()
                cloud.s3.put_object(Bucket=INFERENCE_BUCKET, Key=f"images/bench-{n}.jpg",
                                    Body=body)  # fmt: skip
                while not target.exists():
                    time.sleep(0.0005)
                dropped.append(time.perf_counter() - start)
        finally:
            cloud.stop()

    raw_rate = CLIENTS / p50(raw_eight)
    print(f"raw batch-1 forward p50:            {p50(raw_one) * 1000:8.2f} ms")
    print(f"endpoint (HTTP) p50, one 224px JPEG: {p50(served) * 1000:8.2f} ms")
    print(
        f"  ratio endpoint / raw forward:      {p50(served) / p50(raw_one):8.3f}  (target <= 1.3)"
    )
    print(f"raw batch-8 forward throughput:      {raw_rate:8.1f} img/s")
    print(f"endpoint, {CLIENTS} concurrent clients:      {concurrent_rate:8.1f} img/s")
    print(
        f"  ratio endpoint / raw batched:      {concurrent_rate / raw_rate:8.3f}  (target >= 0.8)"
    )
    print(f"in-process input_fn→output_fn p50:   {p50(chain) * 1000:8.2f} ms")
    print(f"image dropped → JSON written p50:    {p50(dropped) * 1000:8.2f} ms")
    print(f"  minus the model's own inference:   {(p50(dropped) - p50(chain)) * 1000:8.2f} ms"
          "  (target < 100)")  # fmt: skip
    print(f"burst of {BURST} new connections:       {burst_served:8d} served  ({BURST} sent)")
    if burst_latency:
        print(
            f"  their latency p50 / p99:           {p50(burst_latency) * 1000:8.1f} / "
            f"{p99(burst_latency) * 1000:.1f} ms"
        )
    print(f"{KEEPALIVE_CLIENTS} keep-alive clients:              {keep_rate:8.1f} req/s "
          f"({len(keep_latency)}/{KEEPALIVE_CLIENTS * KEEPALIVE_REQUESTS} ok)")  # fmt: skip
    if keep_latency:
        print(
            f"  latency p50 / p99:                 {p50(keep_latency) * 1000:8.1f} / "
            f"{p99(keep_latency) * 1000:.1f} ms"
        )
    print(f"process resident memory before/after: {rss_before:.0f} / {rss_after:.0f} MiB")


if __name__ == "__main__":
    main()
