"""The model artifact's contract: what the job writes is what every reader reads (issue 24)."""

from __future__ import annotations

import json

import pytest

from sagedrop_contract import artifact_layout
from sagedrop_contract.artifact_layout import ArtifactError


def config(**changes) -> dict:
    base = {key: None for key in artifact_layout.CONFIG_KEYS}
    base.update(format_version=artifact_layout.FORMAT_VERSION, backbone="resnet18",
                num_classes=2, preprocessing={"image_size": 32}, top_k=5, draft_size=36,
                metrics={"test_loss": 0.1, "test_accuracy": 0.9})  # fmt: skip
    base.update(changes)
    return base


CLASSES = artifact_layout.class_entries(["002.dog", "001.cat"], ["dog", "cat"])


def test_what_is_written_reads_back(tmp_path):
    artifact_layout.write_descriptors(str(tmp_path), config(), CLASSES)
    artifact = artifact_layout.read_descriptors(str(tmp_path))
    assert artifact.labels == ["dog", "cat"] and artifact.folders == ["002.dog", "001.cat"]
    assert artifact.backbone == "resnet18" and artifact.test_accuracy == 0.9
    assert artifact.draft_size(99) == 36 and artifact.top_k() == 5
    assert artifact.graph_verdict == {}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({**config(), "new_key": 1}, r"unknown \['new_key'\]"),
        (
            {k: v for k, v in config().items() if k != "torch_version"},
            r"missing \['torch_version'\]",
        ),
        (config(format_version=2), "format_version must be 1"),
        (config(num_classes=3), "says 3 classes, classes.json lists 2"),
    ],
)
def test_the_writer_refuses_what_the_contract_does_not_describe(tmp_path, document, expected):
    with pytest.raises(ArtifactError, match=expected):
        artifact_layout.write_descriptors(str(tmp_path), document, CLASSES)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ({"0": "cat"}, "not a list of classes"),
        ([{"index": 0, "label": "cat"}], "without index, folder and label"),
        ([{"index": 1, "folder": "a", "label": "a"}], "indices are not 0..0 once each"),
    ],
)
def test_the_reader_says_what_is_wrong_with_classes(classes, expected):
    with pytest.raises(ArtifactError, match=expected):
        artifact_layout.parse_descriptors(config(num_classes=1), classes)


def test_the_reader_orders_classes_by_output_index():
    shuffled = [CLASSES[1], CLASSES[0]]
    assert artifact_layout.parse_descriptors(config(), shuffled).labels == ["dog", "cat"]


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(ArtifactError, match=r"has no config\.json"):
        artifact_layout.read_descriptors(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    with pytest.raises(ArtifactError, match=r"config\.json is not JSON"):
        artifact_layout.read_descriptors(str(tmp_path))


def test_every_required_file_is_one_the_contract_names():
    named = {artifact_layout.WEIGHTS, *artifact_layout.DESCRIPTORS,
             f"{artifact_layout.CODE}/{artifact_layout.ENTRY_POINT}"}  # fmt: skip
    assert set(artifact_layout.REQUIRED) == named
    assert f"{artifact_layout.SERVING_MODULES[0]}.py" == artifact_layout.ENTRY_POINT
