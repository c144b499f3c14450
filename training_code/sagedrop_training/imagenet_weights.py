"""Where a job's ImageNet weights come from: a file, never a download.

A network-isolated job (SageMaker's ``EnableNetworkIsolation``, a VPC without egress)
cannot reach download.pytorch.org, and a job that downloads pays for it in every tuning
trial. The weights arrive as the ``weights`` input channel (``SM_CHANNEL_WEIGHTS``), put
in S3 once by ``sagedrop aws deploy`` (locally by ``sagedrop up``, from the torch hub
cache). Each file keeps torchvision's name (``resnet18-f37072fd.pth``), whose suffix is
the start of the file's SHA-256; a file that does not match it is refused, so a
truncated or substituted file never initialises a model.
"""

from __future__ import annotations

import hashlib
import os
import posixpath

from sagedrop_serving.model_def import BACKBONES, WeightsUnavailable

CHANNEL = "SM_CHANNEL_WEIGHTS"


def file_name(backbone: str) -> str:
    """torchvision's file name for the backbone's ImageNet weights."""
    return posixpath.basename(BACKBONES[backbone][1].url)


def published_prefix(name: str) -> str:
    """The SHA-256 prefix torchvision publishes in a weights file's name."""
    return posixpath.splitext(name)[0].rsplit("-", 1)[-1]


def url(backbone: str) -> str:
    return BACKBONES[backbone][1].url


def locate(backbone: str, explicit: str | None) -> tuple[str | None, str]:
    """The weights file to load and where it was found, or None and why there is none.

    An explicit ``--weights-path`` (a run by hand; never settable through a request) is
    taken as it is; a file from the channel or the torch hub cache must match its name's
    published hash prefix.
    """
    if explicit:
        return explicit, explicit
    name = file_name(backbone)
    places = []
    channel = os.environ.get(CHANNEL)
    if channel:
        places.append((os.path.join(channel, name), "the weights channel"))
    import torch.hub

    places.append((os.path.join(torch.hub.get_dir(), "checkpoints", name), "the torch hub cache"))
    for path, where in places:
        if os.path.isfile(path):
            verify(path, published_prefix(name))
            return path, f"{where} ({name})"
    if channel:
        return None, f"the weights channel has no {name}"
    return None, f"no weights channel ({CHANNEL}) and no {name} in the torch hub cache"


def verify(path: str, prefix: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if not digest.hexdigest().startswith(prefix):
        raise WeightsUnavailable(
            f"{path} has SHA-256 {digest.hexdigest()[:12]}..., not torchvision's published "
            f"{prefix}...: the file is damaged or not the one it is named after"
        )
