"""The model shapes of the step-time benchmark (``step_time.py``): fixed random data, a fresh
model (shared encoder + task heads) and the task losses, built from plain torch,
torchvision and torch_geometric (no package of this repository)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SHAPES = ("resnet18", "deeplab", "ctr", "qm9")

Losses = dict[str, Tensor]


class Shape:
    """A model shape: fixed data, a fresh model (shared encoder + task heads), the losses."""

    name: str = ""
    tasks: tuple[str, ...] = ()

    def __init__(self, small: bool):
        self.small = small

    def describe(self) -> str:
        raise NotImplementedError

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        raise NotImplementedError

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        raise NotImplementedError

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        """``z = encoder(input)`` and the task losses computed from ``z`` by the heads."""
        raise NotImplementedError


class ResNet18Shape(Shape):
    name = "resnet18"
    tasks = ("amazon", "dslr", "webcam")

    def __init__(self, small: bool):
        super().__init__(small)
        self.batch, self.hw = (4, 64) if small else (64, 224)
        self.classes = 31

    def describe(self) -> str:
        return (
            f"torchvision resnet18 (fc=Identity), batch {self.batch}x3x{self.hw}x{self.hw}, "
            f"{len(self.tasks)} heads Linear(512, {self.classes}), cross-entropy"
        )

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        x = torch.randn(self.batch, 3, self.hw, self.hw, generator=gen)
        ys = {t: torch.randint(0, self.classes, (self.batch,), generator=gen) for t in self.tasks}
        return x.to(device), {t: y.to(device) for t, y in ys.items()}

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        from torchvision.models import resnet18

        encoder = resnet18(weights=None)
        encoder.fc = nn.Identity()
        heads = nn.ModuleDict({t: nn.Linear(512, self.classes) for t in self.tasks})
        return encoder, heads

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        x, ys = data
        z = encoder(x)
        return z, {t: F.cross_entropy(heads[t](z), ys[t]) for t in self.tasks}


class DeepLabEncoder(nn.Module):
    """DeepLabV3's dilated ResNet-50 backbone; returns its ``"out"`` feature map (2048 ch)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_resnet50

        self.backbone = deeplabv3_resnet50(weights=None, weights_backbone=None).backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)["out"]


class DeepLabShape(Shape):
    name = "deeplab"
    tasks = ("segmentation", "depth", "normal")
    channels: dict[str, int] = {"segmentation": 13, "depth": 1, "normal": 3}  # noqa: RUF012

    def __init__(self, small: bool):
        super().__init__(small)
        # Batch 2 at least: the ASPP pooling branch has a BatchNorm over a 1x1 map.
        self.batch, self.h, self.w = (2, 32, 48) if small else (8, 288, 384)

    def describe(self) -> str:
        return (
            f"deeplabv3_resnet50 backbone (dilated ResNet-50, 2048 ch), batch "
            f"{self.batch}x3x{self.h}x{self.w}, 3 DeepLabHead (ASPP) heads: segmentation "
            f"(13, CE), depth (1, L1), normal (3, 1-cos)"
        )

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        b, h, w = self.batch, self.h, self.w
        x = torch.randn(b, 3, h, w, generator=gen)
        seg = torch.randint(0, self.channels["segmentation"], (b, h, w), generator=gen)
        depth = torch.rand(b, 1, h, w, generator=gen) * 10
        normal = F.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1)
        return tuple(t.to(device) for t in (x, seg, depth, normal))

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        encoder = DeepLabEncoder()
        heads = nn.ModuleDict({t: DeepLabHead(2048, c) for t, c in self.channels.items()})
        return encoder, heads

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        x, seg, depth, normal = data
        z = encoder(x)
        size = x.shape[-2:]

        def out(task: str) -> Tensor:
            return F.interpolate(heads[task](z), size=size, mode="bilinear", align_corners=False)

        pred_normal = F.normalize(out("normal"), dim=1)
        losses = {
            "segmentation": F.cross_entropy(out("segmentation"), seg, ignore_index=-1),
            "depth": F.l1_loss(out("depth"), depth),
            "normal": 1 - (pred_normal * normal).sum(dim=1).mean(),
        }
        return z, losses


class CTREncoder(nn.Module):
    """Sparse embeddings (sum-pooled bags of one id, dense gradients) + dense features → MLP."""

    def __init__(self, tables: int, rows: int, dim: int, dense: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for _ in range(tables))
        self.mlp = nn.Sequential(
            nn.Linear(tables * dim + dense, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU()
        )

    def forward(self, ids: Tensor, dense: Tensor) -> Tensor:
        embs = [table(ids[:, i : i + 1]) for i, table in enumerate(self.tables)]
        return self.mlp(torch.cat([*embs, dense], dim=1))


class CTRShape(Shape):
    name = "ctr"
    tasks = ("click", "conversion")

    def __init__(self, small: bool):
        super().__init__(small)
        self.tables, self.dim, self.dense = 26, 16, 13
        self.rows, self.batch = (1_000, 256) if small else (100_000, 4096)

    def describe(self) -> str:
        return (
            f"{self.tables} EmbeddingBag(sum) tables {self.rows}x{self.dim} (dense grads) + "
            f"{self.dense} dense features -> MLP 512-256, batch {self.batch}, "
            f"{len(self.tasks)} heads Linear(256, 1), BCE-with-logits"
        )

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        ids = torch.randint(0, self.rows, (self.batch, self.tables), generator=gen)
        dense = torch.randn(self.batch, self.dense, generator=gen)
        labels = torch.randint(0, 2, (self.batch, len(self.tasks)), generator=gen).float()
        return ids.to(device), dense.to(device), labels.to(device)

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        encoder = CTREncoder(self.tables, self.rows, self.dim, self.dense)
        heads = nn.ModuleDict({t: nn.Linear(256, 1) for t in self.tasks})
        return encoder, heads

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        ids, dense, labels = data
        z = encoder(ids, dense)
        losses = {
            t: F.binary_cross_entropy_with_logits(heads[t](z).squeeze(-1), labels[:, i])
            for i, t in enumerate(self.tasks)
        }
        return z, losses


class QM9Encoder(nn.Module):
    """The encoder of PyG's examples/qm9_nn_conv.py, up to ``relu(lin1(set2set(...)))``."""

    def __init__(self, in_dim: int = 11, edge_dim: int = 5, dim: int = 64):
        super().__init__()
        from torch_geometric.nn import NNConv, Set2Set

        self.lin0 = nn.Linear(in_dim, dim)
        net = nn.Sequential(nn.Linear(edge_dim, 128), nn.ReLU(), nn.Linear(128, dim * dim))
        self.conv = NNConv(dim, dim, net, aggr="mean")
        self.gru = nn.GRU(dim, dim)
        self.set2set = Set2Set(dim, processing_steps=3)
        self.lin1 = nn.Linear(2 * dim, dim)

    def forward(self, data: Any) -> Tensor:
        out = F.relu(self.lin0(data.x))
        h = out.unsqueeze(0)
        for _ in range(3):
            m = F.relu(self.conv(out, data.edge_index, data.edge_attr))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        # dim_size given: no device-to-host sync for index.max() on every step.
        out = self.set2set(out, data.batch, dim_size=data.num_graphs)
        return F.relu(self.lin1(out))


class QM9Shape(Shape):
    name = "qm9"
    tasks = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G")

    def __init__(self, small: bool):
        super().__init__(small)
        # Small: fewer and smaller molecules (NNConv's per-edge 64x64 weights dominate on CPU).
        self.molecules, self.atoms = (4, (6, 12)) if small else (128, (10, 26))
        self.edges = 0
        self.nodes = 0

    def describe(self) -> str:
        return (
            f"NNConv(aggr=mean)+GRU x3 + Set2Set(3) + Linear(128,64) encoder, {self.molecules} "
            f"random molecules of {self.atoms[0]}-{self.atoms[1]} atoms, complete graphs "
            f"({self.nodes} nodes, {self.edges} edges), {len(self.tasks)} heads Linear(64, 1), MSE"
        )

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        from torch_geometric.data import Batch, Data

        graphs = []
        for _ in range(self.molecules):
            n = int(torch.randint(self.atoms[0], self.atoms[1] + 1, (1,), generator=gen))
            idx = torch.arange(n)
            src, dst = idx.repeat_interleave(n), idx.repeat(n)
            keep = src != dst
            edge_index = torch.stack([src[keep], dst[keep]])
            graphs.append(
                Data(
                    x=torch.randn(n, 11, generator=gen),
                    edge_index=edge_index,
                    edge_attr=torch.rand(edge_index.shape[1], 5, generator=gen),
                    y=torch.randn(1, len(self.tasks), generator=gen),
                )
            )
        batch = Batch.from_data_list(graphs)
        self.nodes, self.edges = int(batch.num_nodes), int(batch.num_edges)
        return batch.to(device)

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        heads = nn.ModuleDict({t: nn.Linear(64, 1) for t in self.tasks})
        return QM9Encoder(), heads

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        z = encoder(data)
        losses = {
            t: F.mse_loss(heads[t](z).squeeze(-1), data.y[:, i]) for i, t in enumerate(self.tasks)
        }
        return z, losses


SHAPE_CLASSES: dict[str, type[Shape]] = {
    "resnet18": ResNet18Shape,
    "deeplab": DeepLabShape,
    "ctr": CTRShape,
    "qm9": QM9Shape,
}
