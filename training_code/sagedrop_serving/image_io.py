"""Decoding and preprocessing shared by training and inference.

Training and serving must see identical pixels: same decode, same resize, same ImageNet
normalisation. Both import this one module (it travels into the model artifact's
``code/`` folder), and the constants they use are written into the model's config so a
served model never depends on the defaults of a later version of this file.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Large enough for any camera photo, small enough that one request cannot exhaust memory.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image this pipeline can read; the message says why."""


def _three(values) -> tuple[float, float, float]:
    """An RGB triple (mean or std) from config.json's list."""
    first, second, third = (float(x) for x in values)
    return first, second, third


@dataclass(frozen=True)
class Preprocessing:
    """Everything that decides the tensor a model sees; saved with the model."""

    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_size(cls, image_size: int) -> Preprocessing:
        # The classic 256/224 ratio: centre crop keeps the object, drops the border.
        return cls(image_size=image_size, resize_size=round(image_size * 256 / 224))

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            image_size=int(data["image_size"]),
            resize_size=int(data["resize_size"]),
            mean=_three(data["mean"]),
            std=_three(data["std"]),
        )

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }


# What a decode may cost, checked from the header before a pixel is decoded: a tiny file
# can declare a huge canvas (a 117 KB PNG of 1 x 60,000,000 pixels passes a pixel-count
# limit yet costs seconds and gigabytes), so each side, the aspect ratio and the decoded
# bytes (by the image's mode) are bounded too.
MAX_SIDE = 20_000
MAX_ASPECT_RATIO = 30
MAX_DECODED_BYTES = 256 * 1024 * 1024
BYTES_PER_PIXEL = {
    **dict.fromkeys(("L", "P"), 1),
    **dict.fromkeys(("LA", "PA", "La", "I;16", "I;16B", "I;16L", "I;16N"), 2),
    **dict.fromkeys(("RGB", "YCbCr", "LAB", "HSV"), 3),
    **dict.fromkeys(("RGBA", "RGBa", "RGBX", "CMYK", "I", "F"), 4),
    "1": 0.125,
}
# Formats training reads and serving answers (the README lists them); anything else that
# Pillow can open (ICO, PSD, EPS...) is refused.
FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF"})
# The formats each content type may carry: bytes of one format sent as another are refused.
FORMATS_OF_CONTENT_TYPE = {
    "image/jpeg": frozenset({"JPEG", "MPO"}),  # phones write MPO: a JPEG with a preview
    "image/png": frozenset({"PNG"}),
    "image/gif": frozenset({"GIF"}),
    "image/webp": frozenset({"WEBP"}),
    "image/bmp": frozenset({"BMP", "DIB"}),
    "image/tiff": frozenset({"TIFF"}),
    "application/x-image": FORMATS,
}
# Where an image is transparent it is composited on white (a logo or a scan with an alpha
# channel reads as dark on light), the same in training and serving.
BACKGROUND = (255, 255, 255)
# At most this many decodes of a large canvas at once per process (an endpoint's worker):
# a client sending many large images queues behind itself, not in front of everyone else.
HEAVY_PIXELS = 16_000_000
_HEAVY_DECODES = threading.BoundedSemaphore(1)


def decode_image(
    source: bytes | str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    content_type: str | None = None,
) -> Image.Image:
    """An RGB PIL image as a person sees it, or ``ImageDecodeError`` saying what is wrong.

    As a person sees it: EXIF orientation applied (a phone's portrait photo is stored
    sideways with a tag that says so), 16-bit samples scaled to 8 bits (not saturated),
    transparency composited on ``BACKGROUND`` (not dropped to black). Training and serving
    both decode through here, so both see the same pixels.

    ``draft_size`` lets libjpeg decode at a reduced scale that is still at least that
    large: a 12 MP photo decodes several times faster, and training and inference both
    call this with the same value, so they still see the same pixels. ``content_type``
    (serving) must agree with the format the bytes really are.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        image = Image.open(stream)
        _check_header(image, max_pixels, content_type)
        if draft_size and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        heavy = image.width * image.height > HEAVY_PIXELS
        with _HEAVY_DECODES if heavy else contextlib.nullcontext():
            image.load()
            return _as_seen(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"image data is damaged or truncated ({exc})") from exc


def _check_header(image: Image.Image, max_pixels: int, content_type: str | None) -> None:
    """Refuse from the header alone what would cost too much or is not what it claims."""
    if image.format not in FORMATS:
        raise ImageDecodeError(
            f"{image.format} images are not accepted; send one of "
            + ", ".join(sorted(FORMATS - {"MPO", "DIB"}))
        )
    if content_type is not None:
        allowed = FORMATS_OF_CONTENT_TYPE.get(content_type, frozenset())
        if image.format not in allowed:
            raise ImageDecodeError(
                f"the bytes are a {image.format} image, not the {content_type} the request says"
            )
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image is {width}x{height}: it has no pixels")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit "
            f"of {max_pixels:,}"
        )
    if max(width, height) > MAX_SIDE:
        raise ImageDecodeError(
            f"image is {width}x{height}: a side over {MAX_SIDE:,} pixels is not accepted"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageDecodeError(
            f"image is {width}x{height}: an aspect ratio over {MAX_ASPECT_RATIO}:1 is not accepted"
        )
    decoded = width * height * BYTES_PER_PIXEL.get(image.mode, 4)
    if decoded > MAX_DECODED_BYTES:
        raise ImageDecodeError(
            f"image is {width}x{height} in mode {image.mode}: {decoded / 2**20:,.0f} MiB "
            f"decoded, over the limit of {MAX_DECODED_BYTES // 2**20} MiB"
        )


def _as_seen(image: Image.Image) -> Image.Image:
    """RGB, upright, 8 bits per channel, transparency on ``BACKGROUND``."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = Image.fromarray(_eight_bits(np.asarray(image)), mode="L")
    transparent = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if transparent:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _eight_bits(samples: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit integer) samples to 8 bits by their full range, as a viewer shows
    them; float samples in [0, 1] scaled, others clipped."""
    if samples.dtype.kind == "f":
        peak = float(np.nanmax(samples)) if samples.size else 0.0
        scaled = samples * 255.0 if peak <= 1.0 else samples
        return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    wide = samples.astype(np.uint32)
    if wide.size and int(wide.max()) <= 255 and samples.dtype.itemsize > 2:
        return wide.astype(np.uint8)  # 32-bit integers holding 8-bit values
    return (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)


class EvalTransform:
    """Deterministic: resize the short side, centre crop, normalise; float32 (3, H, W).

    Done with PIL (antialiased bilinear, as torchvision's ``Resize`` on a PIL image) and
    one numpy expression, in the calling thread: a served request then runs no torch
    kernel at all before the graph, so torch's OpenMP threads do not spin against ONNX
    Runtime's (that contention cost more than the whole preprocessing). The resize
    computes only the pixels the centre crop keeps (PIL's ``box``), 2.4x faster than
    resizing the whole image and cropping, and within one grey level of it. Training's
    validation and test splits use this very object, so both see the same pixels.
    """

    def __init__(self, pre: Preprocessing):
        self.pre = pre
        self._offset = np.asarray(pre.mean, dtype=np.float32).reshape(3, 1, 1) * 255
        self._scale = 1 / (np.asarray(pre.std, dtype=np.float32).reshape(3, 1, 1) * 255)

    def array(self, image: Image.Image) -> np.ndarray:
        width, height = image.size
        short, crop = self.pre.resize_size, self.pre.image_size
        if width <= height:
            size = (short, int(short * height / width))
        else:
            size = (int(short * width / height), short)
        left = round((size[0] - crop) / 2.0)  # torchvision's centre crop offsets
        top = round((size[1] - crop) / 2.0)
        x_scale, y_scale = width / size[0], height / size[1]  # source pixels per output
        box = (left * x_scale, top * y_scale, (left + crop) * x_scale, (top + crop) * y_scale)
        cropped = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
        channels_first = np.asarray(cropped).transpose(2, 0, 1)  # a view of the uint8 pixels
        out = np.empty(channels_first.shape, dtype=np.float32)
        np.subtract(channels_first, self._offset, out=out, casting="unsafe")  # one pass
        out *= self._scale
        return out

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.array(image))


def eval_transform(pre: Preprocessing) -> EvalTransform:
    return EvalTransform(pre)


def train_transform(pre: Preprocessing, augment: str) -> v2.Compose:
    """Augmented for training; ``augment='none'`` is exactly the evaluation transform."""
    if augment == "none":
        return eval_transform(pre)
    steps: list = [v2.PILToTensor(), v2.RandomResizedCrop(pre.image_size, scale=(0.5, 1.0))]
    if augment == "flip-crop":
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    return v2.Compose(steps)


AUGMENTATIONS = ("flip-crop", "crop", "none")
