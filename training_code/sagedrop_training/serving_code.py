"""The artifact's ``code/`` folder: what SageMaker's PyTorch inference image runs.

The inference toolkit imports ``code/inference.py`` and, before it starts TorchServe,
installs ``code/requirements.txt`` once per container (and exits the container when pip
fails). So the optimised graph's runtime travels inside the artifact: the ONNX Runtime
wheels for the inference image's Python, from the job's ``wheels`` channel
(``inference/``, uploaded by ``sagedrop aws configure``), and a requirements file that
installs exactly them, hash-checked, with ``--no-index``: no model load ever reaches a
package index, and no two TorchServe workers install into one site-packages at once.

A job without those wheels (the local cloud, whose environment already has ONNX
Runtime) writes no ``requirements.txt``: an endpoint lacking the runtime then serves
the eager model, with the same JSON, and says why in its log.
"""

from __future__ import annotations

import os
import shutil

import sagedrop_contract
from sagedrop_contract import artifact_layout

SERVING_FILES = tuple(f"{name}.py" for name in artifact_layout.SERVING_MODULES)
RUNTIME_REQUIREMENTS = "runtime-requirements.txt"
WHEELS_CHANNEL = "SM_CHANNEL_WHEELS"
INFERENCE_WHEELS = "inference"
WHEELS_FOLDER = artifact_layout.CODE_WHEELS
CONTRACT_DIR = os.path.dirname(os.path.abspath(sagedrop_contract.__file__))
# pip reads a requirements file's relative --find-links from the file's own folder.
REQUIREMENTS_HEADER = (
    "# Installed by SageMaker's inference toolkit before TorchServe starts: the optimised\n"
    "# graph's runtime, from this artifact's own wheels, with no package index.\n"
    "--no-index\n"
    f"--find-links {WHEELS_FOLDER}\n"
    # Wheels only: a source distribution's build hooks would run code at model load.
    "--only-binary :all:\n"
)


def inference_wheels(channel: str | None = None) -> list[str]:
    """The ``.whl`` files of the wheels channel's ``inference/`` folder (none without it)."""
    folder = os.path.join(channel or os.environ.get(WHEELS_CHANNEL, ""), INFERENCE_WHEELS)
    if not os.path.isdir(folder):
        return []
    return sorted(
        os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".whl")
    )


def write_serving_code(
    model_dir: str, serving_dir: str, graph_served: bool, wheels: list[str]
) -> list[str]:
    """Copy the serving modules and the artifact's part of the contract (which reads
    the descriptors), and the graph's runtime (its wheels and the requirements file
    that installs them) when the graph serves and the job has the wheels; the names
    written under ``code/``."""
    code_dir = os.path.join(model_dir, artifact_layout.CODE)
    contract_dir = os.path.join(code_dir, artifact_layout.CONTRACT_PACKAGE)
    os.makedirs(contract_dir, exist_ok=True)
    written = list(SERVING_FILES)
    for name in SERVING_FILES:
        shutil.copyfile(os.path.join(serving_dir, name), os.path.join(code_dir, name))
    for name in artifact_layout.CONTRACT_FILES:
        shutil.copyfile(os.path.join(CONTRACT_DIR, name), os.path.join(contract_dir, name))
        written.append(f"{artifact_layout.CONTRACT_PACKAGE}/{name}")
    if not graph_served or not wheels:
        return written
    pins = os.path.join(serving_dir, RUNTIME_REQUIREMENTS)
    folder = os.path.join(code_dir, WHEELS_FOLDER)
    os.makedirs(folder, exist_ok=True)
    for wheel in wheels:
        shutil.copyfile(wheel, os.path.join(folder, os.path.basename(wheel)))
        written.append(f"{WHEELS_FOLDER}/{os.path.basename(wheel)}")
    with open(pins) as handle:
        listed = "".join(line for line in handle if not line.startswith("#"))
    with open(os.path.join(code_dir, artifact_layout.CODE_REQUIREMENTS), "w") as handle:
        handle.write(REQUIREMENTS_HEADER + listed)
    written.append(artifact_layout.CODE_REQUIREMENTS)
    return written
