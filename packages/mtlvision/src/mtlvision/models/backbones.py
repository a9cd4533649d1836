"""torchvision ResNets as shared encoders; ImageNet weights only from a file the user gives.

``resnet_trunk("resnet50", dilated=True)`` is the dilated ResNet-50 of DeepLabV3+ (Chen et al.,
2018; Yu et al.'s dilated residual networks): layer3 and layer4 keep the resolution of layer2
(strides replaced by dilations 2 and 4), so the output stride is 8 — LibMTL's
``resnet_dilated('resnet50')``. Nothing is downloaded: ``pretrained`` is the path of a
torchvision ResNet state dict (e.g. ``resnet50-11ad3fa6.pth``, fetched once by the user with
``torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict()`` on a machine with
internet access), loaded with ``weights_only=True``; its ``fc.*`` entries are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["RESNETS", "ResNetTrunk", "load_pretrained", "resnet_trunk"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its pooling and classifier: ``stem`` (conv1, bn1, relu,
    maxpool), then ``layer1`` … ``layer4``; ``channels`` = the channels of each layer's output."""

    def __init__(self, resnet: Any) -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1: nn.Sequential = resnet.layer1
        self.layer2: nn.Sequential = resnet.layer2
        self.layer3: nn.Sequential = resnet.layer3
        self.layer4: nn.Sequential = resnet.layer4
        expansion = 4 if resnet.fc.in_features == 2048 else 1
        self.channels = tuple(c * expansion for c in (64, 128, 256, 512))

    @property
    def layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x


def load_pretrained(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a torchvision ResNet state dict from ``path`` into ``module`` (a torchvision ResNet);
    ``fc.*`` entries are skipped, every other parameter and buffer must match."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"pretrained weights {file} do not exist; give the path of a torchvision ResNet "
            f"state dict (saved from torchvision.models.<name>(weights=...).state_dict() on a "
            f"machine with internet access), or leave pretrained empty to start from scratch"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors have many types
        raise ValueError(f"cannot load {file} as a state dict with weights_only=True ({e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k for k in module.state_dict() if not k.startswith("fc.")}
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit a {type(module).__name__}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''} (is it the state dict of the same ResNet?)"
        )
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{file}: {e}") from e


def resnet_trunk(
    name: str = "resnet50",
    *,
    dilated: bool = False,
    pretrained: str | os.PathLike[str] | None = None,
) -> ResNetTrunk:
    """A torchvision ResNet trunk (weights=None), optionally dilated (output stride 8) and
    initialised from ``pretrained``."""
    if name not in RESNETS:
        raise ValueError(f"backbone must be one of {RESNETS}, not {name!r}")
    if dilated and name in ("resnet18", "resnet34"):
        raise ValueError(
            f"{name} has basic blocks, which torchvision cannot dilate; use resnet50 or "
            f"resnet101 for the dilated (DeepLabV3+) encoder"
        )
    from torchvision import models

    kwargs = {"replace_stride_with_dilation": [False, True, True]} if dilated else {}
    resnet = getattr(models, name)(weights=None, **kwargs)
    if pretrained not in (None, ""):
        assert pretrained is not None
        load_pretrained(resnet, pretrained)
    return ResNetTrunk(resnet)
