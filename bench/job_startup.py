"""What SageMaker's training runner costs a local job: start-up time and a whole tiny job.

Each local training job is the PyTorch training image's ``train`` command
(sagemaker-training with the sagemaker-pytorch-training framework module). Before the
entry point runs, the runner imports torch (to record its version), unpacks the code,
runs ``pip install -r requirements.txt`` (satisfied here, so no download) and prints
the environment. Since issue 22 that file says ``--no-index`` (the wheels come in the
job's channel); the "index allowed" line is the same pins as before, for comparison.
This script measures that against starting the entry point directly:

1. start-up: an entry point that only exits, run directly vs through the runner, with
   and without a ``requirements.txt`` (sagedrop's code ships one);
2. a whole job: ``train.py`` on a tiny dataset (3 classes × 8 images, 1 epoch, 32 px),
   by hand vs as a local training job (``TrainingRun``, the runner, uploads).

    python bench/job_startup.py [--repeats 5]

Medians over the repeats, and the ratio runner/direct, all measured in one run.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout first, even run with another Python

from sagedrop.aws_configure import pack_training_code  # noqa: E402
from sagedrop.local import container  # noqa: E402
from sagedrop.local.s3 import LocalS3  # noqa: E402
from sagedrop.local.state import State  # noqa: E402
from sagedrop.local.training import TrainingRun  # noqa: E402
from sagedrop.sample_data import pack_dataset, write_sample_dataset  # noqa: E402
from sagedrop.wheels_upload import requirement_lines  # noqa: E402

TRAIN_ARGS = {
    "epochs": "1",
    "batch-size": "8",
    "image-size": "32",
    "pretrained": json.dumps("false"),
    "augment": json.dumps("crop"),
    "num-workers": "0",
}


def code_archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def request(name: str, hyperparameters: dict[str, str]) -> dict:
    return {
        "TrainingJobName": name,
        "HyperParameters": {
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps("s3://data/code.tar.gz"),
            **hyperparameters,
        },
        "AlgorithmSpecification": {"TrainingImage": "local", "TrainingInputMode": "File"},
        "InputDataConfig": [
            {
                "ChannelName": "training",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://data/data.zip"}
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://data/jobs"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    }


def timed_job(s3: LocalS3, folder: Path, job: dict, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    result = TrainingRun(s3, folder, job, 1, on_status=lambda *_: None, extra_env=env).run()
    elapsed = time.perf_counter() - start
    if result.status != "Completed":
        raise SystemExit(f"{job['TrainingJobName']} {result.status}: {result.failure_reason}")
    return elapsed


def timed_direct(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def line(label: str, direct: list[float], runner: list[float]) -> None:
    d, r = statistics.median(direct), statistics.median(runner)
    print(f"{label:<44} direct {d:6.2f} s   runner {r:6.2f} s   +{r - d:5.2f} s   x{r / d:4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        s3 = LocalS3(base / "cloud", State(base / "state.sqlite"))
        s3.ensure_bucket("data")
        dataset = write_sample_dataset(base / "dataset", per_class=8, classes=3)
        s3.put_object(
            Bucket="data", Key="data.zip", Body=pack_dataset(dataset, base / "d.zip").read_bytes()
        )
        noop = "import sys\nsys.exit(0)\n"
        requirements = (ROOT / "training_code" / "requirements.txt").read_text()
        # Before issue 22: the same pins, pip free to reach an index (PIP_NO_INDEX unset).
        indexed = requirement_lines(ROOT / "training_code" / "requirements.txt")
        scripts = base / "noop"
        scripts.mkdir()
        (scripts / "train.py").write_text(noop)
        print(f"sagedrop job start-up, {args.repeats} repeats, medians")
        for label, files, env in (
            ("no-op entry point", {"train.py": noop}, None),
            (
                "no-op + requirements.txt, index allowed",
                {"train.py": noop, "requirements.txt": indexed},
                {"PIP_NO_INDEX": ""},
            ),
            (
                "no-op + requirements.txt, --no-index",
                {"train.py": noop, "requirements.txt": requirements},
                None,
            ),
        ):
            s3.put_object(Bucket="data", Key="code.tar.gz", Body=code_archive(files))
            direct = [
                timed_direct([sys.executable, "train.py"], scripts) for _ in range(args.repeats)
            ]
            runner = [
                timed_job(s3, base / "jobs" / f"{len(label)}-{i}", request(f"noop-{i}", {}), env)
                for i in range(args.repeats)
            ]
            line(label, direct, runner)
        s3.put_object(Bucket="data", Key="code.tar.gz", Body=pack_training_code())
        code = base / "code"
        with tarfile.open(fileobj=io.BytesIO(pack_training_code())) as archive:
            archive.extractall(code, filter="data")
        by_hand = [sys.executable, "train.py", "--data", str(base / "d.zip")]
        by_hand += [a for k, v in TRAIN_ARGS.items() for a in (f"--{k}", v.strip('"'))]
        by_hand += ["--model-dir", str(base / "hand-model"), "--output-data-dir", str(base / "o")]
        direct = [timed_direct(by_hand, code) for _ in range(args.repeats)]
        runner = [
            timed_job(s3, base / "jobs" / f"tiny-{i}", request(f"tiny-{i}", TRAIN_ARGS))
            for i in range(args.repeats)
        ]
        line("train.py, tiny dataset, 1 epoch (whole job)", direct, runner)
        runner_command = " ".join(container.RUNNER_COMMAND[1:])
        print(f"runner: {runner_command} with {container.PYTORCH_FRAMEWORK_MODULE}")


if __name__ == "__main__":
    main()
