"""The serving contract of the artifact's own code/inference.py, good input and bad."""

from __future__ import annotations

import json

import pytest
import torch

from sagedrop.artifacts import load_inference_code
from sagedrop_serving.image_io import Preprocessing, eval_transform
from sagedrop_training.data_pipeline import ImageFileDataset
from tests.helpers import jpeg_bytes, png_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(trained_job):
    inference = load_inference_code(trained_job["model_dir"] / "code")
    return inference, inference.model_fn(str(trained_job["model_dir"]))


def test_jpeg_in_top_k_json_out(served, tiny_dataset):
    inference, model = served
    image = sorted((tiny_dataset["folder"] / "test" / "002.one").glob("*.jpg"))[0].read_bytes()
    body, content_type = inference.output_fn(
        inference.predict_fn(inference.input_fn(image, "image/jpeg"), model), "application/json"
    )
    assert content_type == "application/json"
    result = json.loads(body)
    predictions = result["predictions"]
    assert len(predictions) == 3  # top-5 capped at the number of classes
    assert {p["label"] for p in predictions} == {"zero", "one", "two"}
    assert all(set(p) == {"label", "index", "probability"} for p in predictions)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert result["model"]["backbone"] == "resnet18" and result["model"]["num_classes"] == 3


@pytest.mark.parametrize("content_type", ["image/png", "application/x-image", "IMAGE/PNG; q=1"])
def test_png_and_generic_image_types_are_accepted(served, content_type):
    inference, _ = served
    tensor = inference.input_fn(png_bytes(), content_type)
    assert tensor.shape == (1, 3, 32, 32)


def test_batch_of_images_gives_one_result_each(served):
    inference, model = served
    batch = torch.cat(
        [inference.input_fn(jpeg_bytes((i * 60, 20, 20)), "image/jpeg") for i in range(3)]
    )
    results = inference.predict_fn(batch, model)
    assert len(results) == 3
    assert json.loads(inference.output_fn(results, "application/json")[0])[1]["predictions"]


def test_serving_preprocessing_equals_training_evaluation(served, tmp_path):
    """Same decode, resize, crop and ImageNet normalisation on both sides."""
    inference, _ = served
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg_bytes((90, 140, 200), size=(300, 200)))
    pre = Preprocessing.for_size(32)
    training_view = ImageFileDataset([(str(path), 0)], eval_transform(pre), pre.resize_size)[0][0]
    serving_view = inference.input_fn(path.read_bytes(), "image/jpeg")[0]
    assert torch.equal(training_view, serving_view)


def test_unsupported_content_type_names_the_accepted_ones(served):
    inference, _ = served
    with pytest.raises(
        inference.UnsupportedMediaType,
        match=r"image/jpeg, image/png, image/gif, image/webp, image/bmp, image/tiff, "
        r"application/x-image",
    ):
        inference.input_fn(b"{}", "application/json")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"GIF89a nonsense", "cannot decode"),
        (jpeg_bytes(size=(64, 64))[:120], "cannot decode"),
    ],
)
def test_bad_bytes_are_clear_errors(served, body, message):
    inference, _ = served
    with pytest.raises(inference.InvalidImage, match=message):
        inference.input_fn(body, "image/jpeg")


def test_images_over_the_pixel_limit_are_refused(served, monkeypatch):
    inference, _ = served
    monkeypatch.setattr(inference, "MAX_PIXELS", 100 * 100)
    with pytest.raises(inference.InvalidImage, match="over the limit"):
        inference.input_fn(png_bytes(size=(101, 100)), "image/png")


def test_unsupported_accept(served):
    inference, model = served
    results = inference.predict_fn(inference.input_fn(jpeg_bytes(), "image/jpeg"), model)
    with pytest.raises(inference.NotAcceptable, match="application/json") as caught:
        inference.output_fn(results, "text/csv")
    assert caught.value.status_code == 406
    assert inference.output_fn(results, "*/*")[1] == "application/json"


def test_the_artifact_reads_itself_with_its_own_copy_of_the_contract(trained_job, tmp_path):
    """``code/`` carries ``sagedrop_contract/artifact_layout.py``; the endpoint imports that
    copy, not whatever the host has, and the host's stays bound afterwards (issue 24)."""
    import shutil

    import sagedrop_contract.artifact_layout as host_layout
    from sagedrop.paths import CONTRACT

    model_dir = tmp_path / "model"
    shutil.copytree(trained_job["model_dir"], model_dir)
    copy = model_dir / "code" / "sagedrop_contract" / "artifact_layout.py"
    assert copy.read_bytes() == (CONTRACT / "artifact_layout.py").read_bytes()
    # An artifact whose contract reads another format: its own reader must be the judge.
    copy.write_text(copy.read_text().replace("FORMAT_VERSION = 1", "FORMAT_VERSION = 7"))
    inference = load_inference_code(model_dir / "code")
    with pytest.raises(Exception, match="is format 1; this code reads format 7"):
        inference.model_fn(str(model_dir))
    import sagedrop_contract.artifact_layout as after

    assert after is host_layout and after.FORMAT_VERSION == 1
