"""Multi-task models for dense prediction (NYUv2, Cityscapes).

Every model takes images (B, 3, H, W) and returns each task's map at (H, W) (bilinear
upsampling, ``align_corners=True``, as LibMTL), names its shared and task-specific parameters
(:class:`mtltrain.problem.MultiTaskModel`), and is built from ``tasks = {name: output
channels}`` (NYUv2: segmentation 13, depth 1, normal 3).

- :class:`DeepLabHPS` — the paper's model (Appendix B, after Lin et al. 2022): hard parameter
  sharing, a dilated ResNet-50 shared encoder and a DeepLabV3+ ASPP head per task
  (torchvision's ``DeepLabHead``: ASPP with rates 12, 24, 36, a 3×3 conv, a 1×1 classifier).
  Returns ``(representation, predictions)``: the encoder output is the shared representation.
- :class:`MTAN` — Liu et al. (2019)'s attention network on the same ResNet (as LibMTL builds it):
  the ResNet is shared; each task has a soft-attention mask per stage over the shared
  features, and the masked features of one stage feed the task's next mask through a shared
  bottleneck block. Unlike LibMTL, whose ``[module] * T`` gives every task the same attention
  modules, each task here has its own.
- :class:`CrossStitch` — Misra et al. (2016): one ResNet per task, the stages' outputs mixed
  by learned T×T cross-stitch units (initialised to 0.9 on the diagonal and 0.1/(T−1) off it,
  as Misra et al.; LibMTL starts from all ones). Every column receives every task's gradient
  through the units, so the whole encoder is the shared part (as in LibMTL).
- :class:`SegNet` — the encoder–decoder of Badrinarayanan et al. (VGG-16 stages with 2, 2, 3,
  3, 3 convolutions, max-unpooling with the pooling indices), shared; each task has MTAN's
  SegNet head (3×3 then 1×1 convolution). The paper's Table 7 network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import ResNetTrunk, resnet_trunk

__all__ = ["MTAN", "CrossStitch", "DeepLabHPS", "SegNet", "build_dense_model", "count_parameters"]

ARCHS = ("hps", "mtan", "cross_stitch", "segnet")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_tasks(tasks: Mapping[str, int]) -> dict[str, int]:
    if not tasks:
        raise ValueError("tasks is empty: give {task name: output channels}")
    bad = {t: c for t, c in tasks.items() if isinstance(c, bool) or not isinstance(c, int) or c < 1}
    if bad:
        raise ValueError(f"output channels must be positive ints, not {bad}")
    return dict(tasks)


def _upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _aspp_head(in_channels: int, out_channels: int) -> nn.Module:
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    return DeepLabHead(in_channels, out_channels, atrous_rates=(12, 24, 36))


class DeepLabHPS(nn.Module):
    """Hard parameter sharing: a dilated ResNet encoder, one ASPP head per task
    (``dilated=False``: the plain ResNet, output stride 32 — e.g. a small ResNet-18 variant)."""

    def __init__(
        self,
        tasks: Mapping[str, int],
        *,
        backbone: str = "resnet50",
        pretrained: str | os.PathLike[str] | None = None,
        dilated: bool = True,
    ) -> None:
        super().__init__()
        self.tasks = _check_tasks(tasks)
        self.encoder = resnet_trunk(backbone, dilated=dilated, pretrained=pretrained)
        width = self.encoder.channels[-1]
        self.heads = nn.ModuleDict({t: _aspp_head(width, c) for t, c in self.tasks.items()})

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        rep = self.encoder(x)
        return rep, {t: _upsample(h(rep), x.shape[-2:]) for t, h in self.heads.items()}

    def shared_parameters(self) -> nn.Module:
        return self.encoder

    def task_parameters(self) -> dict[str, nn.Module]:
        return {t: self.heads[t] for t in self.tasks}


def _attention(in_channels: int, mid: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out, 1),
        nn.BatchNorm2d(out),
        nn.Sigmoid(),
    )


def _block(trunk: ResNetTrunk, in_channels: int, out_channels: int) -> nn.Module:
    """A residual block mapping ``in_channels`` to ``out_channels`` (MTAN's encoder_block_att)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

    expansion = 4 if trunk.channels[-1] == 2048 else 1
    down = nn.Sequential(conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels))
    if expansion == 4:
        return Bottleneck(in_channels, out_channels // 4, downsample=down)
    return BasicBlock(in_channels, out_channels, downsample=down)


class MTAN(nn.Module):
    """Multi-Task Attention Network (Liu et al., CVPR 2019) over a (dilated) ResNet.

    Stage ``i`` of the shared ResNet runs its blocks but the last (``u_i``) and the last block
    (``s_i``). Task ``t``'s features: ``a_0 = pool(f_0(g_0(u_0)) ⊙ s_0)``, then
    ``a_i = g_i([u_i, a_{i−1}]) ⊙ s_i`` followed by the shared block ``f_i`` (i < 3), with
    ``g`` the task's attention masks (1×1 conv, BN, ReLU, 1×1 conv, BN, sigmoid); ``a_3``
    goes to the task's ASPP head.
    """

    def __init__(
        self,
        tasks: Mapping[str, int],
        *,
        backbone: str = "resnet50",
        pretrained: str | os.PathLike[str] | None = None,
        dilated: bool = True,
    ) -> None:
        super().__init__()
        self.tasks = _check_tasks(tasks)
        self.encoder = resnet_trunk(backbone, dilated=dilated, pretrained=pretrained)
        ch = self.encoder.channels
        expansion = 4 if ch[-1] == 2048 else 1
        for layer in self.encoder.layers:
            if len(layer) < 2:  # pragma: no cover - torchvision's ResNets have >= 2 blocks
                raise ValueError("MTAN needs ResNet stages of at least two blocks")
        self.block_att = nn.ModuleList([_block(self.encoder, ch[i], ch[i + 1]) for i in range(3)])
        self.attention = nn.ModuleDict(
            {
                t: nn.ModuleList(
                    [_attention(ch[0], ch[0] // expansion, ch[0])]
                    + [_attention(2 * ch[i], ch[i] // expansion, ch[i]) for i in range(1, 4)]
                )
                for t in self.tasks
            }
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.heads = nn.ModuleDict({t: _aspp_head(ch[-1], c) for t, c in self.tasks.items()})

    def _attention(self, task: str, stage: int) -> nn.Module:
        masks = self.attention[task]
        assert isinstance(masks, nn.ModuleList)
        return masks[stage]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        shared = self.encoder.stem(x)
        attended: dict[str, Tensor] = {}
        for i, layer in enumerate(self.encoder.layers):
            inner = layer[:-1](shared)
            shared = layer[-1](inner)
            for t in self.tasks:
                if i == 0:
                    mask = self._attention(t, 0)(inner)
                else:
                    prev = attended[t]
                    if prev.shape[-2:] != inner.shape[-2:]:
                        prev = self.pool(prev)
                    mask = self._attention(t, i)(torch.cat([inner, prev], dim=1))
                a = mask * shared
                if i < 3:
                    a = self.block_att[i](a)
                if i == 0:
                    a = self.pool(a)
                attended[t] = a
        return {t: _upsample(self.heads[t](attended[t]), x.shape[-2:]) for t in self.tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.block_att.parameters()]

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {
            t: [*self.attention[t].parameters(), *self.heads[t].parameters()] for t in self.tasks
        }


class CrossStitch(nn.Module):
    """Cross-stitch networks (Misra et al., CVPR 2016): one ResNet column per task; after
    stages 1–3 the input of task t's next stage is ``Σ_j α_{i,t,j} x_j``."""

    def __init__(
        self,
        tasks: Mapping[str, int],
        *,
        backbone: str = "resnet50",
        pretrained: str | os.PathLike[str] | None = None,
        dilated: bool = True,
    ) -> None:
        super().__init__()
        self.tasks = _check_tasks(tasks)
        n = len(self.tasks)
        self.columns = nn.ModuleDict(
            {t: resnet_trunk(backbone, dilated=dilated, pretrained=pretrained) for t in self.tasks}
        )
        alpha = torch.full((3, n, n), 0.1 / (n - 1) if n > 1 else 0.0)
        alpha[:, range(n), range(n)] = 0.9 if n > 1 else 1.0
        self.units = nn.Parameter(alpha)
        width = self._column(next(iter(self.tasks))).channels[-1]
        self.heads = nn.ModuleDict({t: _aspp_head(width, c) for t, c in self.tasks.items()})

    def _column(self, task: str) -> ResNetTrunk:
        column = self.columns[task]
        assert isinstance(column, ResNetTrunk)
        return column

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        names = list(self.tasks)
        feats = [self._column(t).stem(x) for t in names]
        for i in range(4):
            feats = [self._column(t).layers[i](f) for t, f in zip(names, feats, strict=True)]
            if i < 3:
                stacked = torch.stack(feats)  # (T, B, C, H, W)
                feats = list(torch.einsum("tj,jbchw->tbchw", self.units[i], stacked))
        return {
            t: _upsample(self.heads[t](f), x.shape[-2:]) for t, f in zip(names, feats, strict=True)
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.columns.parameters(), self.units]

    def task_parameters(self) -> dict[str, nn.Module]:
        return {t: self.heads[t] for t in self.tasks}


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """SegNet (Badrinarayanan et al., 2017) shared by all tasks, with one head per task."""

    CHANNELS = (64, 128, 256, 512, 512)
    CONVS = (2, 2, 3, 3, 3)

    def __init__(self, tasks: Mapping[str, int]) -> None:
        super().__init__()
        self.tasks = _check_tasks(tasks)
        ch, convs = self.CHANNELS, self.CONVS
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for s in range(5):
            cin = 3 if s == 0 else ch[s - 1]
            self.down.append(
                nn.Sequential(
                    _conv(cin, ch[s]), *[_conv(ch[s], ch[s]) for _ in range(convs[s] - 1)]
                )
            )
            cout = ch[max(s - 1, 0)]
            self.up.append(
                nn.Sequential(_conv(ch[s], cout), *[_conv(cout, cout) for _ in range(convs[s] - 1)])
            )
        self.heads = nn.ModuleDict(
            {
                t: nn.Sequential(nn.Conv2d(ch[0], ch[0], 3, padding=1), nn.Conv2d(ch[0], c, 1))
                for t, c in self.tasks.items()
            }
        )

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(
                f"SegNet pools five times: image height and width must be multiples of 32, "
                f"not {tuple(x.shape[-2:])}"
            )
        indices, sizes = [], []
        for block in self.down:
            x = block(x)
            sizes.append(x.shape)
            x, idx = F.max_pool2d(x, 2, 2, return_indices=True)
            indices.append(idx)
        for s in reversed(range(5)):
            x = F.max_unpool2d(x, indices[s], (2, 2), (2, 2), output_size=sizes[s][-2:])
            x = self.up[s](x)
        return x, {t: h(x) for t, h in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.down.parameters(), *self.up.parameters()]

    def task_parameters(self) -> dict[str, nn.Module]:
        return {t: self.heads[t] for t in self.tasks}


def build_dense_model(
    arch: str,
    tasks: Mapping[str, int],
    *,
    backbone: str = "resnet50",
    pretrained: str | os.PathLike[str] | None = None,
    dilated: bool = True,
) -> nn.Module:
    """``arch``: ``hps`` (DeepLabV3+, the paper's), ``mtan``, ``cross_stitch`` or ``segnet``;
    ``dilated``: the ResNet keeps output stride 8 (the paper's; bottleneck ResNets only)."""
    if arch == "hps":
        return DeepLabHPS(tasks, backbone=backbone, pretrained=pretrained, dilated=dilated)
    if arch == "mtan":
        return MTAN(tasks, backbone=backbone, pretrained=pretrained, dilated=dilated)
    if arch == "cross_stitch":
        return CrossStitch(tasks, backbone=backbone, pretrained=pretrained, dilated=dilated)
    if arch == "segnet":
        if pretrained not in (None, ""):
            raise ValueError("segnet is trained from scratch here: leave pretrained empty")
        return SegNet(tasks)
    raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")
