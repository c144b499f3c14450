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


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """Deterministic: resize the short side, centre crop, normalise."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(pre.resize_size, antialias=True),
            v2.CenterCrop(pre.image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre.mean, pre.std),
        ]
    )


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
