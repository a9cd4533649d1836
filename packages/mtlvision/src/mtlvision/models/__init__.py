"""Multi-task vision models: DeepLabV3+ HPS, MTAN, Cross-stitch and SegNet for dense
prediction; ResNet-18 HPS for Office; MultiLeNet for MultiMNIST. Pretrained weights come
only from a file the user gives (no download)."""

from __future__ import annotations

from .backbones import RESNETS, ResNetTrunk, load_pretrained, resnet_trunk
from .classify import MultiLeNet, ResNetHPS
from .dense import ARCHS, MTAN, CrossStitch, DeepLabHPS, SegNet, build_dense_model, count_parameters

__all__ = [
    "ARCHS",
    "MTAN",
    "RESNETS",
    "CrossStitch",
    "DeepLabHPS",
    "MultiLeNet",
    "ResNetHPS",
    "ResNetTrunk",
    "SegNet",
    "build_dense_model",
    "count_parameters",
    "load_pretrained",
    "resnet_trunk",
]
