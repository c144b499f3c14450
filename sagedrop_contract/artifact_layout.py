"""The model artifact: what ``train.py`` leaves in ``SM_MODEL_DIR``, and what readers rely on.

SageMaker tars the folder into ``model.tar.gz``; the endpoint unpacks it into
``/opt/ml/model``. One module names its files and ``config.json``'s keys, writes the two
JSON descriptors (the job's ``artifact_writer``) and reads them back (the endpoint's
``code/inference.py``, the local handler service, the gate's artifact check, the
comparison with the serving version, the tests). The artifact's ``code/`` carries a copy
of this module (``code/sagedrop_contract/``), so an endpoint reads its artifact with the
code that wrote it, whatever version the pipeline has moved on to.

Standard library only: the Lambda reads the descriptors from the archive without torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1  # config.json's format_version

WEIGHTS = "model.pt"  # the eager model's state dict
CLASSES = "classes.json"  # [{"index", "folder", "label"}], one per output
CONFIG = "config.json"  # CONFIG_KEYS
GRAPH = "model.onnx"  # the optimised graph, kept only if it passed parity
INT8_GRAPH = "model.int8.onnx"  # its int8 variant, kept only within the accuracy budget
CODE = "code"  # what SageMaker's PyTorch inference image imports
ENTRY_POINT = "inference.py"  # SAGEMAKER_PROGRAM
# The flat module names code/ brings: inference.py imports its helpers by these.
SERVING_MODULES = ("inference", "image_io", "model_def", "graph_runtime")
CONTRACT_PACKAGE = "sagedrop_contract"
# The part of this package code/ carries (under code/sagedrop_contract/).
CONTRACT_FILES = ("__init__.py", "artifact_layout.py")
CODE_REQUIREMENTS = "requirements.txt"  # the graph's runtime, installed by the toolkit
CODE_WHEELS = "wheels"  # the wheels that requirements file installs, with no index
SUMMARY = "training_summary.json"  # the job's summary, in the output data beside it

# What an endpoint needs to serve at all.
REQUIRED = (f"{CODE}/{ENTRY_POINT}", WEIGHTS, CLASSES, CONFIG)
DESCRIPTORS = (CLASSES, CONFIG)
MAX_DESCRIPTOR_BYTES = 4 * 1024 * 1024

CONFIG_KEYS = (
    "format_version",
    "backbone",
    "num_classes",
    "preprocessing",  # image_io.Preprocessing.to_dict()
    "draft_size",  # the size JPEG decoding may shrink to before resizing
    "top_k",
    "pretrained",
    "freeze",
    "hyperparameters",
    "metrics",  # test_loss, test_accuracy on the job's own test split
    "test_coverage",  # which classes the test split covered (untested_classes)
    "optimised_graph",  # the graph's verdict: served, file, reason, figures
    "torch_version",
    "created_at",
    "training_job",  # the model's version: the job that made it
)
# What a reader cannot do without; the others it reads with a default.
READ_KEYS = ("format_version", "backbone", "num_classes", "preprocessing")


class ArtifactError(ValueError):
    """An artifact's descriptors cannot be read as this contract writes them; says why."""


@dataclass(frozen=True)
class Descriptors:
    """``config.json`` and ``classes.json`` of one artifact, checked against each other."""

    config: dict[str, Any]
    classes: list[dict[str, Any]]  # in output order

    @property
    def labels(self) -> list[str]:
        return [str(c["label"]) for c in self.classes]

    @property
    def folders(self) -> list[str]:
        return [str(c["folder"]) for c in self.classes]

    @property
    def backbone(self) -> str:
        return str(self.config["backbone"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.config["preprocessing"])

    @property
    def test_accuracy(self) -> float | None:
        metrics = self.config.get("metrics")
        return metrics.get("test_accuracy") if isinstance(metrics, dict) else None

    @property
    def graph_verdict(self) -> dict[str, Any]:
        verdict = self.config.get("optimised_graph")
        return verdict if isinstance(verdict, dict) else {}

    def draft_size(self, default: int) -> int:
        return int(self.config.get("draft_size") or default)

    def top_k(self, default: int = 5) -> int:
        return int(self.config.get("top_k") or default)


def class_entries(folders: list[str], labels: list[str]) -> list[dict[str, Any]]:
    """``classes.json``'s rows: output index, the dataset folder, the label it shows."""
    return [
        {"index": i, "folder": folder, "label": label}
        for i, (folder, label) in enumerate(zip(folders, labels, strict=True))
    ]


def write_descriptors(model_dir: str, config: dict[str, Any], classes: list[dict]) -> None:
    """Write ``config.json`` and ``classes.json``, refusing a config this contract does not
    describe (a key added in one place only would be read nowhere)."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    missing = sorted(set(CONFIG_KEYS) - set(config))
    if unknown or missing:
        raise ArtifactError(f"config.json keys differ from the contract: unknown {unknown}, "
                            f"missing {missing}")  # fmt: skip
    if config["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"config.json format_version must be {FORMAT_VERSION}")
    parse_descriptors(config, classes)  # what is written can be read
    os.makedirs(model_dir, exist_ok=True)
    for name, document in ((CONFIG, config), (CLASSES, classes)):
        with open(os.path.join(model_dir, name), "w") as handle:
            json.dump(document, handle, indent=2, allow_nan=True)
            handle.write("\n")


def parse_classes(document: object) -> list[dict[str, Any]]:
    """``classes.json`` in output order; ArtifactError if it is not a list of classes with
    the indices 0..n-1 once each."""
    if not isinstance(document, list) or not all(isinstance(c, dict) for c in document):
        raise ArtifactError(f"{CLASSES} is not a list of classes")
    for entry in document:
        if not {"index", "folder", "label"} <= set(entry) or not isinstance(entry["index"], int):
            raise ArtifactError(f"{CLASSES} has a class without index, folder and label")
    ordered = sorted(document, key=lambda c: c["index"])
    if [c["index"] for c in ordered] != list(range(len(ordered))):
        raise ArtifactError(f"{CLASSES}'s indices are not 0..{len(ordered) - 1} once each")
    return ordered


def parse_descriptors(config: object, classes: object) -> Descriptors:
    """The two parsed JSON documents as ``Descriptors``; ArtifactError says what is wrong."""
    if not isinstance(config, dict):
        raise ArtifactError(f"{CONFIG} is not a JSON object")
    missing = [key for key in READ_KEYS if key not in config]
    if missing:
        raise ArtifactError(f"{CONFIG} has no {', '.join(missing)}")
    if config["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{CONFIG} is format {config['format_version']!r}; this code reads "
                            f"format {FORMAT_VERSION}")  # fmt: skip
    if not isinstance(config["preprocessing"], dict):
        raise ArtifactError(f"{CONFIG}'s preprocessing is not an object")
    ordered = parse_classes(classes)
    if config["num_classes"] != len(ordered):
        raise ArtifactError(f"{CONFIG} says {config['num_classes']} classes, {CLASSES} lists "
                            f"{len(ordered)}")  # fmt: skip
    return Descriptors(config=config, classes=ordered)


def read_descriptors(model_dir: str) -> Descriptors:
    """The descriptors of the unpacked artifact in ``model_dir`` (/opt/ml/model)."""
    documents = []
    for name in (CONFIG, CLASSES):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            raise ArtifactError(f"the model artifact has no {name}")
        if os.path.getsize(path) > MAX_DESCRIPTOR_BYTES:
            raise ArtifactError(f"the model artifact's {name} is over {MAX_DESCRIPTOR_BYTES} B")
        with open(path) as handle:
            try:
                documents.append(json.load(handle))
            except ValueError as exc:
                raise ArtifactError(f"the model artifact's {name} is not JSON: {exc}") from None
    return parse_descriptors(*documents)
