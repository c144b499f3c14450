"""Training jobs as subprocesses running SageMaker's own training runner.

One folder per job under ``<root>/jobs/<name>`` stands for the container's ``/opt/ml``:
``input/data/<channel>`` (the channel's S3 objects), ``input/config/*.json``
(``container.write_config``), ``model``, ``output``, ``code`` and ``logs.txt``. The job
process is the PyTorch training image's ``train`` command (sagemaker-training with
``sagemaker-pytorch-training``): it unpacks the code, installs its requirements, runs
the entry point with the hyperparameters as it decodes them and writes
``output/failure``. Its output is read line by line with the job's
``MetricDefinitions``, and at the end the model and output folders are uploaded as
``model.tar.gz`` and ``output.tar.gz`` under ``<S3OutputPath>/<job>/output/``, like
SageMaker does.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from sagedrop.local import container
from sagedrop.local.s3 import LocalS3
from sagedrop_contract.job_contract import parse_metric_lines

CONTAINER_OUTPUT = "/opt/ml/output"
CONTAINER_TENSORBOARD = "/opt/ml/output/tensorboard"  # TensorBoardOutputConfig's default
LOG_TAIL_LINES = 15


@dataclass
class JobResult:
    status: str  # Completed | Failed | Stopped
    failure_reason: str | None = None
    secondary_status: str = "Completed"
    final_metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None


@dataclass
class MetricReader:
    """SageMaker's reading of a log, line by line as it comes: the job contract's own
    parser (``job_contract.parse_metric_lines``, each definition's first group as a
    float, every match), so the contract's tests test what the local cloud runs."""

    definitions: list[dict]
    on_metrics: Callable[[dict[str, float]], None] | None = None
    final: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)

    def feed(self, line: str) -> None:
        found = parse_metric_lines(line, self.definitions)
        if not found:
            return
        for name, values in found.items():
            self.final[name] = values[-1]
            self.series.setdefault(name, []).extend(values)
        if self.on_metrics:
            self.on_metrics({name: values[-1] for name, values in found.items()})


class TrainingRun:
    """One execution of one training job; ``stop()`` may come from any thread."""

    def __init__(
        self,
        s3: LocalS3,
        job_dir: Path,
        request: dict,
        threads: int,
        on_status: Callable[[str, str], None],
        on_metrics: Callable[[dict[str, float]], None] | None = None,
        extra_env: dict[str, str] | None = None,
    ):
        self.s3 = s3
        self.job_dir = Path(job_dir)
        self.request = request
        self.threads = threads
        self.on_status = on_status
        self.reader = MetricReader(
            request["AlgorithmSpecification"].get("MetricDefinitions", []), on_metrics
        )
        self.extra_env = extra_env or {}
        self._process: subprocess.Popen | None = None
        self._stop_reason: str | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.request["TrainingJobName"]

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    def stop(self, reason: str = "Stopped") -> None:
        with self._lock:
            self._stop_reason = self._stop_reason or reason
            process = self._process
        if process and process.poll() is None:
            # The job leads its own process group: data-loader workers stop with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    def run(self) -> JobResult:
        """Run the job; its copy of the input data is removed when it ends, however it
        ends, as SageMaker discards the instance's storage (logs and outputs stay)."""
        try:
            return self._run()
        finally:
            shutil.rmtree(self.job_dir / "input" / "data", ignore_errors=True)
            (self.job_dir / "sourcedir.tar.gz").unlink(missing_ok=True)

    def _run(self) -> JobResult:
        if self.job_dir.exists():
            shutil.rmtree(self.job_dir)  # a resumed job starts clean
        try:
            self.on_status("Downloading", "Downloading input data and the training code")
            self._download_inputs()
            container.write_config(self.job_dir, self.request, self._download_code())
            self.on_status("Training", "Training in progress")
            exit_code = self._train()
        except (OSError, ValueError, ClientError) as exc:
            # SageMaker reports input and code problems as ClientError, not AlgorithmError.
            return JobResult("Failed", f"ClientError: {exc}", "Failed")
        if self._stop_reason:
            secondary = (
                "MaxRuntimeExceeded" if self._stop_reason == "MaxRuntimeExceeded" else "Stopped"
            )
            return JobResult("Stopped", None, secondary, dict(self.reader.final))
        if exit_code != 0:
            # SageMaker uploads output data and TensorBoard files of a failed job too: the
            # debug report and rules.json say why a rule stopped it.
            self._upload_output_data()
            return JobResult(
                "Failed", self._failure_reason(exit_code), "Failed", dict(self.reader.final)
            )
        self.on_status("Uploading", "Uploading generated training model")
        model_uri = self._upload_outputs()
        return JobResult("Completed", None, "Completed", dict(self.reader.final), model_uri)

    # steps ------------------------------------------------------------------------------
    def _download_inputs(self) -> None:
        for channel in self.request.get("InputDataConfig", []):
            source = channel["DataSource"]["S3DataSource"]
            parsed = urlparse(source["S3Uri"])
            bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
            target = self.job_dir / "input" / "data" / channel["ChannelName"]
            target.mkdir(parents=True, exist_ok=True)
            listing = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
            keys = [item["Key"] for item in listing.get("Contents", [])]
            if not keys:
                raise ValueError(
                    f"no objects under {source['S3Uri']} for channel {channel['ChannelName']!r}"
                )
            for key in keys:
                relative = key[len(prefix) :].lstrip("/") or key.rsplit("/", 1)[-1]
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.s3.path_of(bucket, key, "GetObject"), destination)

    def _download_code(self) -> Path:
        """The code archive, copied out of its bucket: the runner unpacks it (SageMaker's
        runner would download it from S3 itself), and a later upload cannot change it.
        An isolated job's archive is already here, in its ``code`` channel."""
        uri, _ = container.submit_directory(self.request)
        channel_copy = container.in_job_folder(self.job_dir, uri)
        if channel_copy is not None:
            if not channel_copy.is_file():
                raise ValueError(
                    f"{container.SUBMIT_DIRECTORY} names {uri}, which no input channel holds"
                )
            return channel_copy
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            raise ValueError(f"{container.SUBMIT_DIRECTORY} must be an s3:// URI, not {uri!r}")
        archive = self.job_dir / "sourcedir.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        body = self.s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
        archive.write_bytes(body.read())
        return archive

    def _train(self) -> int:
        limit = self.request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
        env = container.environment(
            self.job_dir,
            self.name,
            # the request's Environment, as SageMaker sets it in the container
            {
                "OMP_NUM_THREADS": str(self.threads),
                **self.request.get("Environment", {}),
                **self.extra_env,
            },
            isolated=bool(self.request.get("EnableNetworkIsolation")),
        )
        with open(self.job_dir / "logs.txt", "a") as log:
            with self._lock:
                if self._stop_reason:
                    return -1
                self._process = subprocess.Popen(
                    container.RUNNER_COMMAND,
                    cwd=self.job_dir,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    start_new_session=True,
                )
            timer = None
            if limit:
                timer = threading.Timer(limit, self.stop, args=("MaxRuntimeExceeded",))
                timer.daemon = True
                timer.start()
            try:
                for line in self._process.stdout or ():
                    log.write(line)
                    log.flush()
                    self.reader.feed(line)
            finally:
                if timer:
                    timer.cancel()
            return self._process.wait()

    def _failure_reason(self, exit_code: int) -> str:
        failure = self.job_dir / "output" / "failure"
        if failure.is_file() and failure.read_text().strip():
            return "AlgorithmError: " + failure.read_text().strip()[:1000]
        lines = (self.job_dir / "logs.txt").read_text(errors="replace").splitlines()
        tail = " | ".join(line.strip() for line in lines[-LOG_TAIL_LINES:] if line.strip())
        return f"AlgorithmError: exit code {exit_code}; last log lines: {tail}"[:1024]

    def _output_base(self) -> tuple[str, str]:
        parsed = urlparse(self.request["OutputDataConfig"]["S3OutputPath"].rstrip("/"))
        return parsed.netloc, f"{parsed.path.lstrip('/')}/{self.name}/output".lstrip("/")

    def _upload_outputs(self) -> str:
        bucket, base = self._output_base()
        model_key = f"{base}/model.tar.gz"
        self.s3.put_object(Bucket=bucket, Key=model_key, Body=tar_gz(self.job_dir / "model"))
        self._upload_output_data()
        return f"s3://{bucket}/{model_key}"

    def _upload_output_data(self) -> None:
        bucket, base = self._output_base()
        data = self.job_dir / "output" / "data"
        if data.is_dir():
            self.s3.put_object(Bucket=bucket, Key=f"{base}/output.tar.gz", Body=tar_gz(data))
        self._upload_tensorboard()

    def _upload_tensorboard(self) -> None:
        """``TensorBoardOutputConfig``: the event files under LocalPath, file by file."""
        config = self.request.get("TensorBoardOutputConfig")
        if not config:
            return
        local = config.get("LocalPath", CONTAINER_TENSORBOARD)
        if not local.startswith(CONTAINER_OUTPUT):
            return  # a path outside /opt/ml/output has no place in the job folder
        folder = self.job_dir / "output" / local[len(CONTAINER_OUTPUT) :].strip("/")
        parsed = urlparse(config["S3OutputPath"].rstrip("/"))
        prefix = parsed.path.lstrip("/")
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/")
                self.s3.put_object(Bucket=parsed.netloc, Key=key, Body=path.read_bytes())


def tar_gz(folder: Path) -> bytes:
    """A folder's files as ``.tar.gz`` bytes, named relative to it (SageMaker's layout)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=path.relative_to(folder).as_posix())
    return buffer.getvalue()
