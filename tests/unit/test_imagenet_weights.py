"""Issue 22: a job's ImageNet weights come from a file, checked, never from a download."""

from __future__ import annotations

import hashlib

import pytest
import torch

from sagedrop.local import container
from sagedrop_serving.model_def import WeightsUnavailable, build_classifier, load_imagenet_weights
from sagedrop_training import imagenet_weights


def test_the_channels_file_is_used_when_its_hash_matches_its_name(tmp_path, monkeypatch):
    state = tmp_path / "state.pt"
    torch.save(build_classifier("resnet18", 1000).state_dict(), state)
    prefix = hashlib.sha256(state.read_bytes()).hexdigest()[:8]
    name = f"resnet18-{prefix}.pth"
    channel = tmp_path / "weights"
    channel.mkdir()
    state.rename(channel / name)
    monkeypatch.setenv(imagenet_weights.CHANNEL, str(channel))
    monkeypatch.setattr(imagenet_weights, "file_name", lambda backbone: name)
    path, where = imagenet_weights.locate("resnet18", None)
    assert path == str(channel / name) and where.startswith("the weights channel")
    model = build_classifier("resnet18", 3)
    assert load_imagenet_weights(model, "resnet18", "true", path, where) is True


def test_a_file_that_is_not_what_its_name_says_is_refused(tmp_path, monkeypatch):
    channel = tmp_path / "weights"
    channel.mkdir()
    name = imagenet_weights.file_name("resnet18")
    assert name == "resnet18-f37072fd.pth" and imagenet_weights.published_prefix(name) == "f37072fd"
    (channel / name).write_bytes(b"truncated")
    monkeypatch.setenv(imagenet_weights.CHANNEL, str(channel))
    with pytest.raises(WeightsUnavailable, match="not torchvision's published f37072fd"):
        imagenet_weights.locate("resnet18", None)


def test_without_a_file_auto_trains_from_scratch_and_true_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv(imagenet_weights.CHANNEL, str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    path, why = imagenet_weights.locate("resnet34", None)
    assert path is None and why == "the weights channel has no resnet34-b627a593.pth"
    model = build_classifier("resnet34", 2)
    assert load_imagenet_weights(model, "resnet34", "auto", path, why) is False
    with pytest.raises(WeightsUnavailable, match="the weights channel has no resnet34"):
        load_imagenet_weights(model, "resnet34", "true", path, why)


def test_local_jobs_reach_no_index_and_isolated_ones_nothing(tmp_path):
    online = container.environment(tmp_path, "job", {})
    assert online["PIP_NO_INDEX"] == "1" and "HTTPS_PROXY" not in online
    isolated = container.environment(tmp_path, "job", {}, isolated=True)
    assert isolated["HTTPS_PROXY"] == isolated["HTTP_PROXY"] == container.UNREACHABLE_PROXY
    assert "127.0.0.1" in isolated["NO_PROXY"]
    assert container.in_job_folder(tmp_path, "/opt/ml/input/data/code/sourcedir.tar.gz") == (
        tmp_path / "input" / "data" / "code" / "sourcedir.tar.gz"
    )
    assert container.in_job_folder(tmp_path, "s3://b/code/sourcedir.tar.gz") is None
