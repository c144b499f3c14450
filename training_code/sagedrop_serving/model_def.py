"""The classifier: a torchvision ResNet with a new head, and how much of it trains.

Shared by ``train.py`` (which builds it, possibly with ImageNet weights) and
``inference.py`` (which rebuilds the same architecture from the saved config and loads
the trained weights), so the two can never disagree about the network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torchvision import models

log = logging.getLogger("sagedrop.model")

BACKBONES = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2),
}
FREEZE_MODES = ("auto", "none", "backbone", "all-but-last-stage")
PRETRAINED_MODES = ("auto", "true", "false")


class WeightsUnavailable(RuntimeError):
    """ImageNet weights were required but could not be obtained."""


def build_classifier(backbone: str, num_classes: int) -> nn.Module:
    """The architecture alone, randomly initialised (weights are loaded separately)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    factory, _ = BACKBONES[backbone]
    model = factory(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def load_imagenet_weights(
    model: nn.Module, backbone: str, pretrained: str, weights_path: str | None, why: str = ""
) -> bool:
    """Put ImageNet weights from ``weights_path`` into every layer but the head; True
    when that happened. Nothing is downloaded: ``sagedrop_training.imagenet_weights``
    finds the file (``why`` says why there is none).

    ``pretrained='auto'`` carries on loudly without them, ``'true'`` insists, ``'false'``
    never loads them.
    """
    if pretrained == "false":
        return False
    try:
        if not weights_path:
            raise FileNotFoundError(why or "no weights file was given")
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if pretrained == "true":
            raise WeightsUnavailable(
                f"ImageNet weights for {backbone} could not be obtained ({exc}). Give the job "
                "a weights channel (sagedrop aws deploy uploads one), or --pretrained "
                "auto/false."
            ) from exc
        log.warning(
            "!!! ImageNet weights for %s could not be obtained (%s). Training starts from "
            "RANDOM initialisation: expect far lower accuracy and longer training. Give the "
            "job a weights channel, or --pretrained true to make this an error. !!!",
            backbone,
            exc,
        )
        return False
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
        raise WeightsUnavailable(
            f"weights from {weights_path} do not fit {backbone}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    log.info("loaded ImageNet weights for %s from %s", backbone, weights_path)
    return True


def resolve_freeze(freeze: str, pretrained_loaded: bool) -> str:
    """``auto``: fine-tune the head only on ImageNet features, everything on random ones.

    Freezing a randomly initialised backbone would train a classifier on noise features,
    so ``auto`` never does that.
    """
    if freeze != "auto":
        return freeze
    return "backbone" if pretrained_loaded else "none"


def apply_freeze(model: nn.Module, freeze: str) -> None:
    trainable_prefixes = {
        "none": None,
        "backbone": ("fc.",),
        "all-but-last-stage": ("fc.", "layer4."),
    }[freeze]
    for name, param in model.named_parameters():
        param.requires_grad = trainable_prefixes is None or name.startswith(trainable_prefixes)


def backbone_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled features the head sees (everything up to ``fc``)."""
    net: Any = model  # a torchvision ResNet: its stages are attributes nn.Module cannot type
    x = net.conv1(images)
    x = net.maxpool(net.relu(net.bn1(x)))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def frozen_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Modules with no trainable parameter: kept in eval mode so BatchNorm stats stay put."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            yield module
