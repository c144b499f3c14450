"""The optimised inference graph (issue 14): exported by torch.onnx, judged against the eager
model by ONNX Runtime, and served through SageMaker's own handler service with the same
JSON whether ONNX Runtime is there or not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sagedrop.local.handler_service import invoke, start_handler_service
from sagedrop_contract import artifact_layout
from sagedrop_serving.graph_runtime import GRAPH_FILE, import_runtime
from sagedrop_training import graph_export
from tests.helpers import jpeg_bytes, probe_wheel

pytestmark = pytest.mark.slow


class _Head(nn.Module):
    """A small classifier whose exported graph can be made to differ from its eager self."""

    def __init__(self, drift: torch.Tensor | None = None):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)
        self.drift = drift

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        if self.drift is not None and torch.compiler.is_exporting():
            return logits + self.drift  # what only the exported graph computes
        return logits


def _batches():
    torch.manual_seed(0)
    return [(torch.randn(16, 3, 8, 8), None, []), (None, None, ["a.jpg: unreadable"])]


def test_a_faithful_graph_is_kept_with_its_figures(tmp_path):
    torch.manual_seed(1)
    verdict = graph_export.export_and_verify(_Head().eval(), str(tmp_path), *_example())
    assert verdict["served"] is True, verdict["reason"]
    assert verdict["images"] == 16 and verdict["top1_agreement"] == 1.0
    assert verdict["max_abs_dprob"] <= graph_export.MAX_ABS_DPROB
    assert (tmp_path / GRAPH_FILE).stat().st_size == verdict["bytes"]


def _example():
    return torch.zeros(1, 3, 8, 8), _batches()


@pytest.mark.parametrize(
    ("drift", "failed"),
    [
        (torch.tensor([0.0, 0.0, 0.0, 50.0]), "top-1 agreement 0.0625"),  # another top-1
        (torch.tensor([0.05, 0.0, 0.0, 0.0]), "max |Δprobability|"),  # same top-1, Δp > 1e-3
    ],
)
def test_a_graph_that_fails_parity_is_not_kept_and_says_why(tmp_path, drift, failed):
    torch.manual_seed(1)
    verdict = graph_export.export_and_verify(_Head(drift).eval(), str(tmp_path), *_example())
    assert verdict["served"] is False
    assert verdict["reason"].startswith("parity failed on 16 validation images")
    assert failed in verdict["reason"] or verdict["max_abs_dprob"] > graph_export.MAX_ABS_DPROB
    assert not (tmp_path / GRAPH_FILE).exists()  # the artifact serves the eager model


def test_the_trained_artifact_carries_a_served_graph(trained_job):
    verdict = artifact_layout.read_descriptors(str(trained_job["model_dir"])).graph_verdict
    assert verdict["served"] is True and verdict["top1_agreement"] == 1.0, verdict
    assert (trained_job["model_dir"] / GRAPH_FILE).is_file()
    code = trained_job["model_dir"] / artifact_layout.CODE
    assert {"inference.py", "graph_runtime.py"} <= {p.name for p in code.iterdir()}
    assert (code / "sagedrop_contract" / "artifact_layout.py").is_file()
    # No wheels channel here (the environment has ONNX Runtime): nothing for the toolkit
    # to install, so the artifact carries no requirements.txt at all.
    assert not (code / "requirements.txt").exists() and not (code / "wheels").exists()
    assert "optimised graph model.onnx: top-1 identical" in trained_job["log"]


def _answer(model_dir, monkeypatch, **environment) -> tuple[dict, str]:
    service = start_handler_service(model_dir, {"SAGEMAKER_PROGRAM": "inference.py",
                                                **environment})  # fmt: skip
    status, _, data = invoke(service, model_dir, jpeg_bytes(), "image/jpeg", "application/json")
    assert status == 200, data
    runtime = service._service._model.runtime  # what answered: the toolkit keeps model_fn's result
    return json.loads(data), runtime


def _same_answer(eager: dict, graph: dict) -> None:
    # the same model, told apart only by what answered
    assert (eager["model"].pop("runtime"), graph["model"].pop("runtime")) == (
        "torch-eager",
        "onnxruntime",
    )
    assert eager["model"] == graph["model"]
    assert [p["index"] for p in eager["predictions"]] == [p["index"] for p in graph["predictions"]]
    for ours, theirs in zip(eager["predictions"], graph["predictions"], strict=True):
        assert abs(ours["probability"] - theirs["probability"]) <= graph_export.MAX_ABS_DPROB


def test_the_same_json_with_and_without_onnx_runtime(trained_job, monkeypatch):
    model_dir = trained_job["model_dir"]
    with_graph, runtime = _answer(model_dir, monkeypatch)
    assert runtime == "onnxruntime"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as in an image without it
    monkeypatch.setattr(subprocess, "run", _no_subprocess)  # and nothing installs it
    without, runtime = _answer(model_dir, monkeypatch)
    assert runtime == "torch-eager"
    _same_answer(without, with_graph)
    assert "onnxruntime is not installed" in import_runtime()[1]


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"model load ran a program: {args}")


def test_int8_is_served_only_within_its_accuracy_allowance(tmp_path, monkeypatch):
    """--quantise int8: the int8 graph replaces the fp32 one when it keeps validation
    accuracy within the allowance, and its cost is recorded; beyond it, fp32 serves."""
    torch.manual_seed(1)
    model = _Head().eval()
    labelled = [(torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,)), [])]
    example = torch.zeros(1, 3, 8, 8)
    verdict = graph_export.export_and_verify(model, str(tmp_path), example, labelled, "int8")
    int8 = verdict["int8"]
    assert {"eager_accuracy", "graph_accuracy", "accuracy_drop", "top1_agreement"} <= set(int8)
    assert int8["calibration_images"] == 32
    assert int8["served"] is (int8["accuracy_drop"] <= graph_export.MAX_INT8_ACCURACY_DROP)
    if int8["served"]:
        assert verdict["file"] == graph_export.INT8_FILE
        assert not (tmp_path / GRAPH_FILE).exists() and (tmp_path / verdict["file"]).exists()

    strict = tmp_path / "strict"
    strict.mkdir()
    monkeypatch.setattr(graph_export, "MAX_INT8_ACCURACY_DROP", -1.0)  # no cost is allowed
    verdict = graph_export.export_and_verify(model, str(strict), example, labelled, "int8")
    assert verdict["served"] is True and verdict["file"] == GRAPH_FILE
    assert verdict["int8"]["served"] is False
    assert verdict["int8"]["reason"].startswith("int8 costs")
    assert (strict / GRAPH_FILE).exists() and not (strict / graph_export.INT8_FILE).exists()


def _artifact_with_runtime(tmp_path: Path, shipped: list[Path], pinned: Path) -> Path:
    """An artifact whose graph runtime is ``pinned`` (by its hash), carrying ``shipped``."""
    import hashlib

    from sagedrop_training import serving_code

    serving = tmp_path / "serving"
    shutil.copytree(Path(serving_code.__file__).parents[1] / "sagedrop_serving", serving)
    digest = hashlib.sha256(pinned.read_bytes()).hexdigest()
    (serving / "runtime-requirements.txt").write_text(
        f"# pins\nsagedrop-probe==1.0 \\\n    --hash=sha256:{digest}\n"
    )
    base = tmp_path / "ml"
    written = serving_code.write_serving_code(
        str(base / "model"), str(serving), True, [str(w) for w in shipped]
    )
    assert "requirements.txt" in written
    return base


def _toolkit_install(base: Path, target: Path) -> subprocess.CompletedProcess:
    """SageMaker's inference toolkit's own step before TorchServe starts, as the image runs
    it (``model_server._install_requirements``), with every index unreachable; pip puts
    the packages in ``target`` instead of this environment."""
    code = "from sagemaker_inference import model_server; model_server._install_requirements()"
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PIP_TARGET": str(target),
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_CACHE_DIR": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
    env.pop("PIP_FIND_LINKS", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=base)  # fmt: skip


def test_the_toolkit_installs_the_artifacts_own_wheels_with_no_index(tmp_path):
    """Issue 22: the artifact's code/requirements.txt, as the inference toolkit installs
    it before TorchServe starts, takes the runtime from code/wheels and reaches no index."""
    wheels = tmp_path / "channel"
    wheels.mkdir()
    probe = probe_wheel(wheels)
    base = _artifact_with_runtime(tmp_path, [probe], probe)
    code = base / "model" / "code"
    assert (code / "wheels" / probe.name).is_file()
    text = (code / "requirements.txt").read_text()
    assert "--no-index" in text and "--find-links wheels" in text and "--only-binary :all:" in text
    done = _toolkit_install(base, tmp_path / "target")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "target" / "sagedrop_probe" / "__init__.py").is_file()


def test_a_wheel_that_does_not_match_its_pin_fails_the_install(tmp_path):
    """A wheel swapped in the channel (another file under the pinned name) is refused by
    its hash: the container stops instead of serving code nobody pinned."""
    wheels, other = tmp_path / "channel", tmp_path / "other"
    wheels.mkdir()
    other.mkdir()
    pinned = probe_wheel(other)
    swapped = probe_wheel(wheels)
    swapped.write_bytes(swapped.read_bytes() + b"\0")  # same name, other bytes
    base = _artifact_with_runtime(tmp_path, [swapped], pinned)
    done = _toolkit_install(base, tmp_path / "target")
    assert done.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in done.stdout + done.stderr
    assert not (tmp_path / "target" / "sagedrop_probe").exists()


def _hostile_sdist(folder, marker) -> str:
    """``sagedrop-absent-runtime-1.0.tar.gz`` whose in-tree build backend writes
    ``marker`` the moment pip imports it: what a malicious index would serve. Returns
    its sha256 (an attacker can publish the hash of their own file)."""
    import hashlib
    import io
    import tarfile

    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
        'backend-path = ["."]\n',
        "backend.py": f"open({str(marker)!r}, 'w').write('build hook ran')\n",
        "PKG-INFO": "Metadata-Version: 2.1\nName: sagedrop-absent-runtime\nVersion: 1.0\n",
    }
    path = folder / "sagedrop_absent_runtime-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"sagedrop_absent_runtime-1.0/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_runtime_install_never_builds_a_source_distribution(tmp_path):
    """Issue 19: a malicious index's build-backend hooks ran at model load. The artifact's
    requirements take wheels only, each pinned with its hash: a source distribution in
    its place, even one matching the pin, is never built."""
    wheels, marker = tmp_path / "channel", tmp_path / "pwned"
    wheels.mkdir()
    digest = _hostile_sdist(wheels, marker)
    hostile = wheels / "sagedrop_absent_runtime-1.0.tar.gz"
    base = _artifact_with_runtime(tmp_path, [hostile], hostile)
    requirements = base / "model" / "code" / "requirements.txt"
    requirements.write_text(
        requirements.read_text().replace("sagedrop-probe", "sagedrop-absent-runtime")
    )
    assert digest in requirements.read_text()
    done = _toolkit_install(base, tmp_path / "target")
    assert done.returncode != 0
    assert not marker.exists()


def test_the_shipped_runtime_requirements_pin_every_wheel_with_its_hash():
    from sagedrop_serving import graph_runtime

    text = (Path(graph_runtime.__file__).parent / "runtime-requirements.txt").read_text()
    logical = text.replace("\\\n", " ").splitlines()
    requirements = [line for line in logical if line.strip() and not line.startswith("#")]
    assert requirements and all(
        "==" in line and "--hash=sha256:" in line for line in requirements
    ), requirements
    from sagedrop_training import serving_code

    assert "--no-index" in serving_code.REQUIREMENTS_HEADER
    assert "--only-binary :all:" in serving_code.REQUIREMENTS_HEADER
