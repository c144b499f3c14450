"""What recording a trial as an MLflow run costs, against the trial itself.

Runs one small local training job (the sample digits, 32 px, ``--epochs`` epochs, through
SageMaker's training runner as every local trial runs), then records it the way the
pipeline does after a tuning job (``experiment_tracking.record``: its params, per-epoch
history and final metrics in batches) into a fresh local MLflow store (SQLite), ``--repeats``
times under new job names. Prints the trial's wall time, the median time to record one
run (and the first, which includes creating the store and the experiment), and their
ratio, all measured in one run.

    python bench/tracking_cost.py [--repeats 5] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from job_startup import request  # noqa: E402

from chalicelib import experiment_tracking  # noqa: E402
from sagedrop.aws_configure import pack_training_code  # noqa: E402
from sagedrop.local import tracking_store  # noqa: E402
from sagedrop.local.s3 import LocalS3  # noqa: E402
from sagedrop.local.state import State  # noqa: E402
from sagedrop.local.training import TrainingRun  # noqa: E402
from sagedrop.sample_data import pack_dataset, write_sample_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        s3 = LocalS3(base / "cloud", State(base / "state.sqlite"))
        s3.ensure_bucket("data")
        dataset = write_sample_dataset(base / "dataset", per_class=30, classes=4)
        zipped = pack_dataset(dataset, base / "d.zip").read_bytes()
        s3.put_object(Bucket="data", Key="data.zip", Body=zipped)
        s3.put_object(Bucket="data", Key="code.tar.gz", Body=pack_training_code())
        hyperparameters = {"epochs": str(args.epochs), "batch-size": "16", "image-size": "32",
                           "pretrained": json.dumps("false"), "augment": json.dumps("crop"),
                           "num-workers": "0"}  # fmt: skip
        job = request("trial-000", hyperparameters)
        started = time.perf_counter()
        result = TrainingRun(s3, base / "jobs" / "trial", job, 1, lambda *_: None).run()
        trial_s = time.perf_counter() - started
        if result.status != "Completed":
            raise SystemExit(f"the trial {result.status}: {result.failure_reason}")
        training = {
            **job,
            "TrainingJobStatus": "Completed",
            "OutputDataConfig": {"S3OutputPath": "s3://data/jobs"},
            "FinalMetricDataList": [
                {"MetricName": k, "Value": v} for k, v in result.final_metrics.items()
            ],
        }
        # TrainingRun uploaded output.tar.gz under the job's own name
        record = experiment_tracking.job_record(s3, training, {"sagedrop.kind": "trial"})
        tracker = experiment_tracking.Tracker(tracking_store.store_uri(base))
        (base / tracking_store.FOLDER).mkdir(exist_ok=True)
        times = []
        for i in range(args.repeats):
            run = replace(record, name=f"trial-{i:03d}", tags={**record.tags,
                          experiment_tracking.TAG_JOB: f"trial-{i:03d}"})  # fmt: skip
            start = time.perf_counter()
            experiment = tracker.experiment("bench", tracking_store.artifact_root(base))
            tracker.record(experiment, run)
            times.append(time.perf_counter() - start)
        first, steady = times[0], statistics.median(times[1:] or times)
        epoch_s = trial_s / max(1, len(record.history))
        own = [
            job_logs_itself(base, f"own-{i:03d}", record.history, epoch_s)
            for i in range(args.repeats)
        ]
        print(f"MLflow run per trial, local SQLite store, {args.repeats} runs, "
              f"{len(record.history)} epochs of history")  # fmt: skip
        print(f"trial wall time                    {trial_s:7.2f} s")
        print(
            f"pipeline records a run (median)    {steady:7.3f} s   {100 * steady / trial_s:5.2f} %"
        )
        print(f"  its first (store created)        {first:7.3f} s   {100 * first / trial_s:5.2f} %")
        waited = statistics.median(o["waited"] for o in own)
        cpu = statistics.median(o["cpu"] for o in own)
        print(
            f"job logs its own run: training waits {waited:7.3f} s   "
            f"{100 * waited / trial_s:5.2f} %   (the end of the job, for the last batch)"
        )
        print(
            f"  the logging thread's CPU           {cpu:7.3f} s   {100 * cpu / trial_s:5.2f} %"
            "   (mlflow's import, the run, one batch per epoch; on another core)"
        )


JOB_SIDE = """
import json, resource, sys, time
from sagedrop_training.run_tracking import JobRun
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
before = cpu()  # from here the main thread only sleeps: what follows is the thread's
run = JobRun.from_environment(sys.argv[1], {"lr": "0.01"}, True)
for record in json.loads(sys.argv[2]):
    time.sleep(float(sys.argv[3]))  # the epoch's training, while the thread logs
    run.epoch(record)
waited = time.perf_counter()
run.finish({"valid_accuracy": 0.5}, True)
waited = time.perf_counter() - waited
assert run.summary()["logged"], run.summary()
print(json.dumps({"waited": waited, "cpu": cpu() - before}))
"""


def job_logs_itself(base: Path, job: str, history: list[dict], epoch_s: float) -> dict:
    """What ``run_tracking`` costs a job, in a process of its own as in a job: how long
    the end of training waits for the logging thread, and that thread's CPU (mlflow's
    import included), which the training shares the machine with."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_store.store_uri(base),
           "MLFLOW_EXPERIMENT_NAME": "sagedrop-bench",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "training_code"), str(ROOT)])}  # fmt: skip
    command = [sys.executable, "-c", JOB_SIDE, job, json.dumps(history), str(epoch_s)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
