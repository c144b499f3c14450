"""Local cloud serving: endpoint latency and throughput, eager against the optimised graph.

Trains a ResNet18 artifact at 224 px (one epoch on a tiny sample: the weights do not
matter for timing; the export's ONNX graph comes with it), deploys it twice on the local
cloud with the pipeline's own requests (once forced to eager PyTorch with
``SAGEDROP_SERVE_GRAPH=false``, once serving the graph under ONNX Runtime), then
measures in one run:

- raw eager batch-1 forward p50 vs each endpoint's p50 (one 224 px JPEG through HTTP,
  SageMaker's handler service, decode, preprocessing, forward, JSON), and the server's
  own share (endpoint p50 minus the in-process ``input_fn → output_fn`` p50)
- raw eager batch-8 forward throughput vs 8 concurrent clients' throughput
- the graph's parity with the eager model on the held-out (test) split
- each endpoint's resident memory (the process's RSS as it is deployed)
- drop → ``.json`` p50 (S3 put → event → handler → InvokeEndpoint → put) minus the
  in-process chain, a burst of 200 simultaneous new connections, and 64 keep-alive
  clients (on the graph endpoint)

The lines issue 14 asks for are printed as ``name=value``.

Run: .venv/bin/python bench/local_serving.py
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import timed

import sagedrop  # noqa: F401 - import paths
from sagedrop.artifacts import load_inference_code
from sagedrop.local.cloud import DATA_BUCKET, INFERENCE_BUCKET, LocalCloud
from sagedrop.paths import TRAIN_SCRIPT
from sagedrop.sample_data import pack_dataset, write_sample_dataset

REPEATS = 40
ROUNDS = 5
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


def train_artifact(work: Path, *extra: str) -> Path:
    data = pack_dataset(write_sample_dataset(work, per_class=8, classes=3), work / "d.zip")
    model_dir = work / ("model" + "".join(extra).replace("-", ""))
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
            *extra,
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


def concurrent_rate(invoke) -> float:
    """CLIENTS threads, REPEATS // 2 requests each, started together: images/s."""
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
    return CLIENTS * per_client / (time.perf_counter() - start)


RAW_EAGER = """
import json, os, statistics, sys, time
import torch
sys.path.insert(0, sys.argv[1])
os.environ["SAGEDROP_SERVE_GRAPH"] = "false"
from sagedrop.artifacts import load_inference_code
code = load_inference_code(sys.argv[2] + "/code")
model = code.model_fn(sys.argv[2])
one = code.input_fn(open(sys.argv[3], "rb").read(), "image/jpeg")
one = one.to(memory_format=torch.channels_last)
eight = torch.cat([one] * 8)
def timed(batch, runs):
    with torch.inference_mode():
        for _ in range(3):
            model.network(batch)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model.network(batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times)
print(json.dumps({"one": timed(one, int(sys.argv[4])), "eight": timed(eight, 5)}))
"""


def raw_eager(model_dir: Path, image: Path, runs: int) -> dict:
    """The raw eager forward (batch 1, batch 8) of the artifact's model, timed in a process
    of its own: in this one, the endpoints' threads keep torch thread teams of their own,
    which would slow the baseline and flatter the endpoints."""
    root = str(Path(__file__).resolve().parents[1])
    command = [sys.executable, "-c", RAW_EAGER, root, str(model_dir), str(image), str(runs)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def held_out_parity(code, eager, graph, folder: Path) -> tuple[float, float, int]:
    """Top-1 agreement and max |Δprobability| of the graph against the eager model on
    every image of the held-out split, through the artifact's own input_fn."""
    agree, worst, count = 0, 0.0, 0
    for path in sorted((folder / "test").rglob("*.jpg")):
        data = code.input_fn(path.read_bytes(), "image/jpeg")
        ours = code._eager_probabilities(data, eager)
        theirs = code.softmax(graph.graph.logits(data.numpy()))
        agree += int(ours.argmax() == theirs.argmax())
        worst = max(worst, float(abs(ours - theirs).max()))
        count += 1
    return agree / count, worst, count


def tar_gz(model_dir: Path) -> bytes:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
    return archive.getvalue()


def deploy(cloud: LocalCloud, name: str, environment: dict, key: str = "model") -> None:
    sm = cloud.sagemaker
    sm.create_model(
        ModelName=f"{name}-model",
        PrimaryContainer={
            "Image": "local",
            "ModelDataUrl": f"s3://{DATA_BUCKET}/bench/{key}.tar.gz",
            "Environment": {"SAGEDROP_MODEL_NAME": name, **environment},
        },
        ExecutionRoleArn="arn:aws:iam::000000000000:role/x",
    )
    variant = {"VariantName": "AllTraffic", "ModelName": f"{name}-model"}
    variant.update(InitialInstanceCount=1, InstanceType="ml.m5.large")
    sm.create_endpoint_config(EndpointConfigName=f"{name}-config", ProductionVariants=[variant])
    sm.create_endpoint(EndpointName=f"sagedrop-{name}", EndpointConfigName=f"{name}-config")
    cloud.wait_until(lambda: sm.endpoint_port(f"sagedrop-{name}") is not None, 120, 0.05)


def main() -> None:
    import psutil

    torch.set_num_threads(os.cpu_count() or 1)
    process = psutil.Process()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        model_dir = train_artifact(work)
        int8_dir = train_artifact(work, "--quantise", "int8")  # the optional int8 graph
        verdict = json.loads((model_dir / "config.json").read_text())["optimised_graph"]
        int8_verdict = json.loads((int8_dir / "config.json").read_text())["optimised_graph"]
        body = jpeg_224()

        os.environ["SAGEDROP_SERVE_GRAPH"] = "false"
        eager_code = load_inference_code(model_dir / "code")
        eager = eager_code.model_fn(str(model_dir))
        del os.environ["SAGEDROP_SERVE_GRAPH"]
        code = load_inference_code(model_dir / "code")
        graph = code.model_fn(str(model_dir))
        assert graph.runtime == "onnxruntime", "the artifact's graph did not load"
        image = work / "bench.jpg"
        image.write_bytes(body)

        def chain(module, loaded):
            data = module.input_fn(body, "image/jpeg")
            return module.output_fn(module.predict_fn(data, loaded), "application/json")

        chains: dict[str, list[float]] = {"eager": [], "graph": []}
        for _ in range(ROUNDS):  # alternated, so drift on a shared host hits both alike
            chains["eager"] += timed(lambda: chain(eager_code, eager), REPEATS // ROUNDS, 1)
            chains["graph"] += timed(lambda: chain(code, graph), REPEATS // ROUNDS, 1)
        held_out_folder = write_sample_dataset(work / "held-out")  # 1,797 digits, 15% test
        agreement, worst, held_out = held_out_parity(code, eager, graph, held_out_folder)

        cloud = LocalCloud(work / "cloud", say=lambda _: None)
        cloud.start(watch=False)
        results: dict[str, dict] = {}
        try:
            for key, folder in (("model", model_dir), ("int8", int8_dir)):
                cloud.s3.put_object(Bucket=DATA_BUCKET, Key=f"bench/{key}.tar.gz",
                                    Body=tar_gz(folder))  # fmt: skip
            runtime = cloud.runtime
            rss: dict[str, float] = {}
            endpoints = (
                ("eager", {"SAGEDROP_SERVE_GRAPH": "false"}, "model"),
                ("graph", {}, "model"),
                ("int8", {}, "int8"),
            )
            for name, environment, key in endpoints:
                rss_before = process.memory_info().rss / 2**20
                deploy(cloud, name, environment, key)
                rss[name] = process.memory_info().rss / 2**20 - rss_before

            def invoker(name: str):
                def invoke() -> None:
                    runtime.invoke_endpoint(
                        EndpointName=f"sagedrop-{name}", Body=body, ContentType="image/jpeg"
                    )["Body"].read()

                return invoke

            # Alternated rounds: raw forward, eager endpoint, graph endpoint, and again.
            raw_one: list[float] = []
            raw_rates: list[float] = []
            served: dict[str, list[float]] = {"eager": [], "graph": [], "int8": []}
            rates: dict[str, list[float]] = {"eager": [], "graph": [], "int8": []}
            for _ in range(3):
                raw = raw_eager(model_dir, image, REPEATS // 3)
                raw_one.append(raw["one"])
                raw_rates.append(CLIENTS / raw["eight"])
                for name in served:
                    served[name] += timed(invoker(name), REPEATS // 3, 1)
                    rates[name].append(concurrent_rate(invoker(name)))
            results = {
                name: {"served": served[name], "rate": p50(rates[name]), "rss": rss[name]}
                for name in served
            }

            port = cloud.sagemaker.endpoint_port("sagedrop-graph")
            rss_before = process.memory_info().rss / 2**20
            burst_served, burst_latency = burst_of_new_connections(port, body)
            keep_rate, keep_latency = keep_alive_clients(port, body)
            rss_after = process.memory_info().rss / 2**20

            images = cloud.root / "buckets" / INFERENCE_BUCKET / "images" / "graph"
            dropped = []
            for n in range(REPEATS // 2):
                target = images / f"bench-{n}.jpg.json"
                start = time.perf_counter()
                key = f"images/graph/bench-{n}.jpg"
                cloud.s3.put_object(Bucket=INFERENCE_BUCKET, Key=key, Body=body)
                while not target.exists():
                    time.sleep(0.0005)
                dropped.append(time.perf_counter() - start)
        finally:
            cloud.stop()

    raw_rate = p50(raw_rates)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"raw eager batch-1 forward p50:       {p50(raw_one) * 1000:8.2f} ms  (own process)")
    print(f"raw eager batch-8 forward:           {raw_rate:8.1f} img/s")
    runtimes = {"eager": "PyTorch", "graph": "ONNX Runtime", "int8": "ONNX Runtime, int8"}
    for name, title in runtimes.items():
        result = results[name]
        print(f"\n{name} serving ({title}):")
        print(f"  endpoint (HTTP) p50, one JPEG:     {p50(result['served']) * 1000:8.2f} ms")
        if name in chains:
            print(f"  in-process input_fn→output_fn p50: {p50(chains[name]) * 1000:8.2f} ms")
            server = p50(result["served"]) - p50(chains[name])
            print(f"  the server's own path (difference):{server * 1000:8.2f} ms")
        print(f"  {CLIENTS} concurrent clients:              {result['rate']:8.1f} img/s")
        print(f"  endpoint resident memory:          {result['rss']:8.0f} MiB")
    graph, eager = results["graph"], results["eager"]
    print()
    print(f"eager_endpoint_p50_over_raw_eager={p50(eager['served']) / p50(raw_one):.3f}")
    print(f"eager_endpoint_8_clients_over_raw_eager_batch8={eager['rate'] / raw_rate:.3f}")
    print(f"endpoint_p50_over_raw_eager={p50(graph['served']) / p50(raw_one):.3f}")
    print(f"endpoint_8_clients_over_raw_eager_batch8={graph['rate'] / raw_rate:.3f}")
    print(f"parity_top1_agreement={agreement:.4f}")
    print(f"parity_max_abs_dprob={worst:.3e}")
    print(f"parity_held_out_images={held_out}")
    print(f"endpoint_rss_mib_eager={eager['rss']:.0f}")
    print(f"endpoint_rss_mib_graph={graph['rss']:.0f}")
    int8 = results["int8"]
    print(f"int8_endpoint_p50_over_raw_eager={p50(int8['served']) / p50(raw_one):.3f}")
    print(f"int8_endpoint_8_clients_over_raw_eager_batch8={int8['rate'] / raw_rate:.3f}")
    print(f"endpoint_rss_mib_int8={int8['rss']:.0f}")
    cost = int8_verdict.get("int8", {})
    print(f"int8_validation: served={cost.get('served')}, top-1 agreement "
          f"{cost.get('top1_agreement')}, accuracy drop {cost.get('accuracy_drop')}")  # fmt: skip
    figures = (verdict.get(k) for k in ("images", "top1_agreement", "max_abs_dprob"))
    print("export_parity_on_validation={} images, top-1 {}, max |dp| {}".format(*figures))
    print(f"\nimage dropped → JSON written p50:    {p50(dropped) * 1000:8.2f} ms")
    handling = (p50(dropped) - p50(chains["graph"])) * 1000
    print(f"  minus the model's own inference:   {handling:8.2f} ms  (target < 100)")
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
    print(f"process resident memory before/after the load tests: {rss_before:.0f} / "
          f"{rss_after:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
