"""Shared fixtures: generated datasets, one trained model, the stubbed AWS the flow's
tests run against, and a Settings for request builders. Helpers are in ``helpers.py``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from moto import mock_aws

from chalicelib import clients
from chalicelib.settings import Settings
from sagedrop.sample_data import pack_dataset, write_sample_dataset
from tests.helpers import TINY_HYPERPARAMETERS, run_train
from tests.stubbed_aws import REGION, Cloud

ROLE = "arn:aws:iam::123456789012:role/sagedrop-sagemaker"
IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6.0-gpu-py312"


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """The full sample dataset (1,797 images, 32 px) as a folder and a zip."""
    base = tmp_path_factory.mktemp("digits")
    folder = write_sample_dataset(base)
    return {"folder": folder, "zip": pack_dataset(folder, base / "digits.zip")}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> dict[str, Path]:
    """Three classes, eight images each: enough to exercise every code path in seconds."""
    base = tmp_path_factory.mktemp("tiny")
    folder = write_sample_dataset(base, per_class=8, classes=3)
    return {"folder": folder, "zip": pack_dataset(folder, base / "digits.zip")}


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory, tiny_dataset) -> dict:
    """One real training job under the container contract, shared by the tests that read it.

    The dataset holds a truncated JPEG and a stray text file, as real uploads do.
    """
    job = tmp_path_factory.mktemp("job")
    source = tiny_dataset["folder"]
    data = job / "dataset"
    subprocess.run(["cp", "-r", str(source), str(data)], check=True)
    victim = sorted((data / "train" / "001.zero").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated, like dogImages' Leonberger_06571
    (data / "train" / "001.zero" / "notes.txt").write_text("not an image")
    channel = job / "input" / "data" / "training"
    channel.mkdir(parents=True)
    pack_dataset(data, channel / "upload.zip")
    env = {
        "SM_CHANNEL_TRAINING": str(channel),
        "SM_MODEL_DIR": str(job / "model"),
        "SM_OUTPUT_DATA_DIR": str(job / "output" / "data"),
        "SM_OUTPUT_DIR": str(job / "output"),
    }
    result = run_train([*TINY_HYPERPARAMETERS, "--work-dir", str(job / "work")], env)
    assert result.returncode == 0, result.stdout + result.stderr
    return {
        "dir": job,
        "model_dir": job / "model",
        "output_dir": job / "output" / "data",
        "log": result.stdout + result.stderr,
        "truncated": victim.name,
    }


@pytest.fixture
def moto(monkeypatch):
    """moto's AWS in us-east-1, with the stand-in credentials boto3 needs to sign."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


@pytest.fixture
def cloud(monkeypatch):
    """The stubbed AWS (``stubbed_aws.Cloud``), handed to the flow as its clients."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        env = Cloud()
        clients.use_factory(env.clients.__getitem__)
        with env.stub, env.runtime_stub:
            yield env
        clients.use_factory(None)


@pytest.fixture
def settings():
    return Settings(
        data_bucket="sagedrop-data",
        inference_bucket="sagedrop-inference",
        topic_arn="arn:aws:sns:eu-west-1:123456789012:sagedrop",
        sagemaker_role_arn=ROLE,
        training_image=IMAGE,
        inference_image=IMAGE.replace("training", "inference"),
        code_s3_uri="s3://sagedrop-data/code/sourcedir.tar.gz",
        network_isolation=True,  # the requests a sealed stage sends (issue 22)
    )
