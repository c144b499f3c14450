"""Decoding and preprocessing shared by training and inference.

Training and serving must see identical pixels: same decode, same resize, same ImageNet
normalisation. Both import this one module (it travels into the model artifact's
``code/`` folder), and the constants they use are written into the model's config so a
served model never depends on the defaults of a later version of this file.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Large enough for any camera photo, small enough that one request cannot exhaust memory.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image this pipeline can read; the message says why."""


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
            mean=tuple(float(x) for x in data["mean"]),
            std=tuple(float(x) for x in data["std"]),
        )

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def decode_image(
    source: bytes | str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """An RGB PIL image, or ``ImageDecodeError`` saying what is wrong with the input.

    ``draft_size`` lets libjpeg decode at a reduced scale that is still at least that
    large: a 12 MP photo decodes several times faster, and training and inference both
    call this with the same value, so they still see the same pixels.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        image = Image.open(stream)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"image is {width}x{height} = {width * height:,} pixels, over the limit "
                f"of {max_pixels:,}"
            )
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return image.convert("RGB")
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"image data is damaged or truncated ({exc})") from exc


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
