"""Multi-task classifiers: Office-31/-Home (ResNet-18, one input per task) and MultiMNIST.

- :class:`ResNetHPS` — the paper's Office model (Appendix B; LibMTL's ``examples/office``):
  a ResNet-18 trunk, global average pooling and a hidden layer (Linear 512→512, BatchNorm,
  ReLU, Dropout 0.5; weights N(0, 0.005²), bias 0.1) shared, one linear classifier per task.
  Office is a *multi-input* problem: each task (domain) has its own images. ``forward`` takes
  ``{task: images}`` and runs the shared encoder on each task's batch; given one tensor, it
  predicts every task from it and also returns the shared representation.
- :class:`MultiLeNet` — Sener & Koltun (2018)'s MultiMNIST model: a shared LeNet encoder
  (conv 5×5 ×10, max-pool, ReLU; conv 5×5 ×20, dropout2d, max-pool, ReLU; linear 320→50,
  ReLU) and per task linear 50→50, ReLU, dropout, linear 50→10. Returns
  ``(representation, {task: logits})``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import resnet_trunk

__all__ = ["MultiLeNet", "ResNetHPS"]


class ResNetHPS(nn.Module):
    """Hard parameter sharing for classification: ResNet trunk + hidden layer, linear heads."""

    def __init__(
        self,
        classes: Mapping[str, int],
        *,
        backbone: str = "resnet18",
        hidden: int = 512,
        dropout: float = 0.5,
        pretrained: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if not classes:
            raise ValueError("classes is empty: give {task: number of classes}")
        self.classes = dict(classes)
        trunk = resnet_trunk(backbone, pretrained=pretrained)
        linear = nn.Linear(trunk.channels[-1], hidden)
        nn.init.normal_(linear.weight, 0.0, 0.005)
        nn.init.constant_(linear.bias, 0.1)
        self.encoder = nn.Sequential(
            trunk,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            linear,
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, c) for t, c in self.classes.items()})

    def forward(
        self, x: Tensor | Mapping[str, Tensor]
    ) -> dict[str, Tensor] | tuple[Tensor, dict[str, Tensor]]:
        if isinstance(x, Mapping):
            missing = [t for t in self.classes if t not in x]
            if missing:
                raise ValueError(f"no input images for tasks {missing} (got {list(x)})")
            return {t: self.heads[t](self.encoder(x[t])) for t in self.classes}
        rep = self.encoder(x)
        return rep, {t: h(rep) for t, h in self.heads.items()}

    def shared_parameters(self) -> nn.Module:
        return self.encoder

    def task_parameters(self) -> dict[str, nn.Module]:
        return {t: self.heads[t] for t in self.classes}


class MultiLeNet(nn.Module):
    """Sener & Koltun's MultiMNIST network (inputs (B, 1, 28, 28))."""

    def __init__(self, tasks: Sequence[str] = ("left", "right"), *, classes: int = 10) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("tasks is empty")
        self.task_names = list(tasks)
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc = nn.Linear(320, 50)
        self.heads = nn.ModuleDict(
            {
                t: nn.ModuleDict({"fc1": nn.Linear(50, 50), "fc2": nn.Linear(50, classes)})
                for t in tasks
            }
        )

    def encode(self, x: Tensor) -> Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        return F.relu(self.fc(torch.flatten(x, 1)))

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        rep = self.encode(x)
        preds = {}
        for t, head in self.heads.items():
            assert isinstance(head, nn.ModuleDict)
            h = F.dropout(F.relu(head["fc1"](rep)), training=self.training)
            preds[t] = head["fc2"](h)
        return rep, preds

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.conv1.parameters(), *self.conv2.parameters(), *self.fc.parameters()]

    def task_parameters(self) -> dict[str, nn.Module]:
        return {t: self.heads[t] for t in self.task_names}
