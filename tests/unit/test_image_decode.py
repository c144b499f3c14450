"""The pixels a model sees (issue 19): decoded as a person sees the image, the same in
training and serving, and refused from the header when decoding would cost too much."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sagedrop_serving import image_io
from sagedrop_serving.image_io import ImageDecodeError, decode_image
from sagedrop_training import data_pipeline


def _encoded(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def test_training_and_serving_decode_through_the_same_function():
    assert data_pipeline.decode_image is image_io.decode_image


def test_exif_orientation_is_applied():
    """A phone stores a portrait photo sideways with an Orientation tag; read sideways,
    a seven was answered "four" at 0.995."""
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 32))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    seen = np.asarray(decode_image(_encoded(stored, "JPEG", exif=exif, quality=95)))
    assert seen.shape == (64, 32, 3)  # upright: taller than wide
    top, bottom = seen[8, 16], seen[56, 16]
    assert top[0] > 200 and top[2] < 60  # the left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("kind", ["PNG", "TIFF"])
def test_16_bit_samples_are_scaled_not_saturated(kind):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    seen = np.asarray(decode_image(_encoded(Image.fromarray(ramp), kind)))
    assert seen[0, 0].tolist() == [0, 0, 0] and seen[-1, -1].tolist() == [255, 255, 255]
    middle = seen[32, 0, 0]
    assert 120 <= middle <= 135  # mid-grey, where saturation made it white
    assert (seen[..., 0] == ramp.astype(np.uint32) >> 8).all()


def test_an_image_drawn_in_its_alpha_channel_is_composited_on_white():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24, 3] = 255  # an opaque black square on a transparent canvas
    seen = np.asarray(decode_image(_encoded(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert seen[0, 0].tolist() == list(image_io.BACKGROUND)
    assert seen[16, 16].tolist() == [0, 0, 0]


def test_a_palette_image_with_a_transparent_colour_is_composited_too():
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 4, 8))
    seen = np.asarray(decode_image(_encoded(palette, "PNG", transparency=0)))
    assert seen[0, 0].tolist() == [255, 0, 0] and seen[0, 7].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [("WEBP", "image/jpeg"), ("BMP", "image/png"), ("TIFF", "image/jpeg"), ("PNG", "image/gif")],
)
def test_bytes_of_one_format_sent_as_another_are_refused(kind, content_type):
    data = _encoded(Image.new("RGB", (16, 16)), kind)
    with pytest.raises(ImageDecodeError, match=f"not the {content_type} the request says"):
        decode_image(data, content_type=content_type)
    decode_image(data, content_type="application/x-image")  # any format training reads


def test_formats_training_does_not_read_are_refused():
    with pytest.raises(ImageDecodeError, match="ICO images are not accepted"):
        decode_image(_encoded(Image.new("RGB", (16, 16)), "ICO"))


@pytest.mark.parametrize(
    ("size", "mode", "match"),
    [
        ((60_000_000, 1), "L", "a side over 20,000 pixels"),  # issue 19: a 117 KB PNG
        ((20_000, 400), "L", "an aspect ratio over 30:1"),
        ((9_000, 7_600), "RGBA", "MiB decoded, over the limit"),
    ],
)
def test_a_costly_canvas_is_refused_from_its_header(monkeypatch, size, mode, match):
    """Refused before one pixel is decoded: ``load`` is never reached."""
    opened = Image.open

    def header_only(*args, **kwargs):
        image = opened(*args, **kwargs)
        image.load = lambda: pytest.fail("decoded a canvas the header should have refused")
        return image

    declared = _declared_png(*size, mode)
    monkeypatch.setattr(image_io.Image, "open", header_only)
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(declared, max_pixels=10**9)


def _declared_png(width: int, height: int, mode: str) -> bytes:
    """A PNG header declaring ``width`` x ``height`` (the pixel data is never needed)."""
    import struct
    import zlib

    colour = {"L": 0, "RGBA": 6}[mode]
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_an_image_without_pixels_is_refused():
    with pytest.raises(ImageDecodeError):
        decode_image(_declared_png(0, 5, "L"))


def test_report_thumbnails_skip_what_cannot_be_drawn_cheaply(tmp_path):
    """The dataset zip is the uploader's: a canvas declared too large, or bytes that are no
    image, get no thumbnail, and the others still do."""
    import zipfile

    from sagedrop.local.report import _thumbnails

    zipped = tmp_path / "d.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("d/test/a/ok.png", _encoded(Image.new("RGB", (40, 40)), "PNG"))
        archive.writestr("d/test/a/huge.png", _declared_png(20_000, 20_000, "L"))
        archive.writestr("d/test/a/junk.png", b"not an image")
    found = _thumbnails(zipped, ["test/a/ok.png", "test/a/huge.png", "test/a/junk.png"])
    assert list(found) == ["test/a/ok.png"] and found["test/a/ok.png"].startswith("data:image/")
