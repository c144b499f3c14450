"""sagedrop runs from its wheel, not only from a checkout (issue 24).

The wheel is built from a copy of the repository, installed into a fresh virtual
environment, and run from a folder that is no checkout: every import must resolve to
the wheel's files under their one name. The third-party packages come from this
environment's site-packages through a ``.pth`` line (nothing downloads); that folder's
own ``.pth`` files, the editable install's among them, are not processed there, so the
checkout cannot leak in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sagedrop.aws_configure import pack_training_code
from sagedrop.paths import REPO_ROOT
from tests.helpers import layout, make_zip

pytestmark = pytest.mark.slow
LEFT_OUT = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".sagedrop*",
    ".pytest_cache", ".ruff_cache", ".mypy_cache", "vendor",
)  # fmt: skip
NAMES = ("sagedrop", "sagedrop_contract", "chalicelib", "offline_api", "sagedrop_training")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed: its ``bin/`` folder."""
    root = tmp_path_factory.mktemp("wheel")
    source, wheels, venv = root / "source", root / "wheels", root / "venv"
    shutil.copytree(REPO_ROOT, source, ignore=LEFT_OUT)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("sagedrop-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)  # fmt: skip
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    (site / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def run(bin_dir: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_every_room_imports_from_the_wheel(installed, tmp_path):
    probe = (
        "import importlib, json\n"
        f"names = {NAMES!r}\n"
        "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))\n"
    )
    result = run(installed, tmp_path, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    prefix = str(installed.parent.resolve())
    for name, file in json.loads(result.stdout).items():
        assert str(Path(file).resolve()).startswith(prefix), (name, file)


def test_sagedrop_help_runs_from_the_wheel(installed, tmp_path):
    result = run(installed, tmp_path, "sagedrop", "--help")
    assert result.returncode == 0, result.stderr
    assert "dataset" in result.stdout and "usage: sagedrop" in result.stdout


def test_dataset_check_runs_from_the_wheel(installed, tmp_path):
    """The listing (the contract's dataset rules) and the pixel audit (the container
    code, through ``offline_api``), both from the wheel."""
    archive = make_zip(tmp_path / "pets.zip", layout(n=3))
    command = ("sagedrop", "dataset", "check", str(archive), "--json", "--workers", "1")
    result = run(installed, tmp_path, *command)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["usable"] is True
    assert set(report["counts"]) == {"train", "valid", "test"}
    assert "pixel_audit" in report

    broken = make_zip(tmp_path / "broken.zip", {"train/a/x.jpg": b"not an image"})
    result = run(installed, tmp_path, "sagedrop", "dataset", "check", str(broken))
    assert result.returncode == 1


def test_the_wheel_deploys_the_training_code_the_checkout_deploys(installed, tmp_path):
    """The local cloud packs ``training_code/`` from the wheel's bundle: the same bytes,
    so the same ``sourcedir.tar.gz`` key, as from the checkout."""
    probe = (
        "import hashlib, sys\n"
        "from sagedrop import paths\n"
        "from sagedrop.aws_configure import pack_training_code\n"
        "assert not paths.FROM_CHECKOUT, paths.TRAINING_CODE\n"
        "print(hashlib.sha256(pack_training_code()).hexdigest())\n"
    )
    result = run(installed, tmp_path, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    import hashlib

    assert result.stdout.strip() == hashlib.sha256(pack_training_code()).hexdigest()
