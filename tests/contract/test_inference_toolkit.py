"""A trained artifact served by SageMaker's own PyTorch handler service (issue 11).

``sagemaker_pytorch_serving_container.handler_service.HandlerService`` is what the PyTorch
inference image's TorchServe worker calls; these tests call it the same way and check the
answers a client would get: 200 with the documented JSON for JPEG and PNG, and the 4xx
the toolkit derives from inference.py's errors, with the reason in the body.
"""

from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from sagedrop.local.handler_service import invoke, start_handler_service
from tests.helpers import jpeg_bytes, png_bytes

ENVIRONMENT = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEDROP_MODEL_NAME": "contract"}


def _encoded(kind: str, size: tuple[int, int] = (40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(buffer, kind)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(trained_job):
    model_dir = trained_job["model_dir"]
    return start_handler_service(model_dir, ENVIRONMENT), model_dir


@pytest.mark.parametrize(
    ("body", "content_type"), [(jpeg_bytes(), "image/jpeg"), (png_bytes(), "image/png")]
)
def test_an_image_gets_200_and_the_documented_json(served, body, content_type):
    service, model_dir = served
    status, returned, data = invoke(service, model_dir, body, content_type, "application/json")
    assert (status, returned) == (200, "application/json")
    answer = json.loads(data)
    labels = {c["label"] for c in json.loads((model_dir / "classes.json").read_text())}
    assert answer["predictions"] and {p["label"] for p in answer["predictions"]} <= labels
    assert set(answer["predictions"][0]) == {"label", "index", "probability"}
    assert answer["model"]["name"] == "contract"


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status", "reason"),
    [
        (b"this is not an image", "image/jpeg", None, 400, "cannot decode the image"),
        (b"", "image/jpeg", None, 400, "the request body is empty"),
        (jpeg_bytes()[:60], "image/jpeg", None, 400, "cannot decode the image"),
        (b"1,2,3", "text/csv", None, 415, "content type 'text/csv' is not supported"),
        (jpeg_bytes(), "application/octet-stream", None, 415, "is not supported"),
        (jpeg_bytes(), "image/jpeg", "text/csv", 406, "accept 'text/csv' is not supported"),
        (_encoded("WEBP"), "image/jpeg", None, 400, "a WEBP image, not the image/jpeg"),
        (_encoded("PNG", (20_001, 1)), "image/png", None, 400, "a side over 20,000 pixels"),
        (_encoded("ICO"), "application/x-image", None, 400, "ICO images are not accepted"),
    ],
)
def test_client_mistakes_get_the_4xx_the_toolkit_derives(
    served, body, content_type, accept, status, reason
):
    """With a one-line reason: the toolkit's body carries the Python traceback after the
    message (issue 19: 2.5 KB with host paths), which stays in the server's log."""
    service, model_dir = served
    got, _, data = invoke(service, model_dir, body, content_type, accept)
    assert got == status
    assert reason in data.decode()
    assert "\n" not in data.decode() and "Traceback" not in data.decode()


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [("WEBP", "image/webp"), ("GIF", "image/gif"), ("TIFF", "image/tiff"), ("BMP", "image/bmp")],
)
def test_every_format_training_reads_is_served(served, kind, content_type):
    service, model_dir = served
    status, _, data = invoke(service, model_dir, _encoded(kind), content_type, None)
    assert status == 200 and json.loads(data)["predictions"]


def test_two_artifacts_in_one_process_keep_their_own_code_and_model(served, tmp_path):
    """TorchServe gives each model its own worker process; in process, each artifact's
    modules are imported in isolation, so a second model changes nothing in the first."""
    first, first_dir = served
    other_dir = tmp_path / "other"
    shutil.copytree(first_dir, other_dir)
    classes = json.loads((other_dir / "classes.json").read_text())
    for entry in classes:
        entry["label"] = f"other-{entry['label']}"
    (other_dir / "classes.json").write_text(json.dumps(classes))
    second = start_handler_service(other_dir, ENVIRONMENT)
    image = jpeg_bytes()

    def labels(service, model_dir):
        status, _, data = invoke(service, model_dir, image, "image/jpeg", None)
        assert status == 200
        return {p["label"] for p in json.loads(data)["predictions"]}

    assert all(label.startswith("other-") for label in labels(second, other_dir))
    assert not any(label.startswith("other-") for label in labels(first, first_dir))


def test_a_jpeg_sent_as_text_is_the_toolkits_500(served):
    """Issue 22, from the real stack: the toolkit decodes ``text/csv`` and
    ``application/json`` bodies as UTF-8 before ``input_fn`` sees them, so a JPEG sent as
    either fails there (500), where inference.py cannot answer 415; text that decodes
    reaches ``input_fn`` and gets its 415 (above). The README says both."""
    service, model_dir = served
    for content_type in ("text/csv", "application/json"):
        status, _, data = invoke(service, model_dir, jpeg_bytes(), content_type, None)
        assert status == 500, (content_type, data[:200])
