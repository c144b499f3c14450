"""Can this ``model.tar.gz`` serve the dataset it was trained on? Checked before deploying.

A job that exits 0 is not proof of a usable artifact: a job steered to write its model
elsewhere leaves an empty archive, and a dataset whose every image of one class is
unreadable yields a model whose test accuracy never saw that class. The archive is read
as a stream (no temporary file, constant memory), and only its small JSON members are
kept.
"""

from __future__ import annotations

import json
import tarfile
from urllib.parse import urlparse

from sagedrop_contract import artifact_layout
from sagedrop_contract.artifact_layout import ArtifactError


def read_artifact(s3, uri: str) -> tuple[dict[str, int], dict[str, object]]:
    """Member sizes by name, and the parsed JSON members, of the archive at ``uri``."""
    parsed = urlparse(uri)
    body = s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
    sizes: dict[str, int] = {}
    documents: dict[str, object] = {}
    with tarfile.open(fileobj=body, mode="r|gz") as archive:
        for member in archive:
            if not member.isfile():
                continue
            name = member.name.removeprefix("./")
            sizes[name] = member.size
            if (
                name in artifact_layout.DESCRIPTORS
                and member.size <= artifact_layout.MAX_DESCRIPTOR_BYTES
            ):
                handle = archive.extractfile(member)
                try:
                    documents[name] = json.loads(handle.read()) if handle else None
                except ValueError:
                    documents[name] = None
    return sizes, documents


def artifact_problems(
    sizes: dict[str, int], documents: dict[str, object], dataset_classes: list[str] | None
) -> list[str]:
    """Every reason the artifact cannot serve ``dataset_classes`` (folder names), or []."""
    problems = []
    for name in artifact_layout.REQUIRED:
        if name not in sizes:
            problems.append(f"the model artifact has no {name}")
        elif sizes[name] == 0:
            problems.append(f"the model artifact's {name} is empty")
    folders = None
    if artifact_layout.CLASSES in sizes:
        try:
            classes = artifact_layout.parse_classes(documents.get(artifact_layout.CLASSES))
            folders = [str(c["folder"]) for c in classes]
        except ArtifactError as exc:
            problems.append(f"the model artifact's {exc}")
    if folders is not None and dataset_classes is not None and folders != list(dataset_classes):
        missing = sorted(set(dataset_classes) - set(folders))
        extra = sorted(set(folders) - set(dataset_classes))
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:10])}" if missing else "",
                f"not in the dataset {', '.join(extra[:10])}" if extra else "",
                "same classes in another order" if not missing and not extra else "",
            )
            if part
        )
        problems.append(f"the model's classes differ from the dataset's ({detail})")
    config = documents.get(artifact_layout.CONFIG)
    if artifact_layout.CONFIG in sizes and folders is not None:
        try:  # the endpoint reads config.json with this very parser
            artifact_layout.parse_descriptors(config, documents.get(artifact_layout.CLASSES))
        except ArtifactError as exc:
            problems.append(f"the model artifact's {exc}")
    coverage = config.get("test_coverage") if isinstance(config, dict) else None
    if isinstance(coverage, dict) and coverage.get("untested_classes"):
        untested = [str(c) for c in coverage["untested_classes"]]
        shown = ", ".join(untested[:10]) + (
            f" and {len(untested) - 10} more" if len(untested) > 10 else ""
        )
        problems.append(
            f"{len(untested)} class(es) have no readable test image left (unreadable, or "
            "every one a copy of a training image, left out by the data audit), so test "
            f"accuracy says nothing about them: {shown}. Fix or replace those images in the "
            "dataset."
        )
    elif isinstance(config, dict) and coverage is None:
        problems.append("the model artifact does not say which classes its test split covered")
    return problems
