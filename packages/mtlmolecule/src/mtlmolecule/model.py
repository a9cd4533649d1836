"""Gilmer et al.'s MPNN as in PyG's QM9 example, with a linear head per task.

Encoder (PyG ``examples/qm9_nn_conv.py``; LibMTL's QM9 example, which the DB-MTL paper uses):
``h⁰ = ReLU(W₀ x)``; three rounds of ``m = ReLU(NNConv(h, e))`` (edge network
``Linear(5,128)-ReLU-Linear(128, d²)``, mean aggregation) and ``h = GRU(m, h)``; ``Set2Set``
(3 steps) readout, then ``z = ReLU(W₁ s)`` of width ``d`` = 64. Heads: ``ŷ_t = w_tᵀ z + b_t``.

The edge attributes do not change between the rounds, so the per-edge ``d × d`` weights of
the edge network are computed once per forward and reused by the three rounds
(:class:`SharedEdgeNNConv`); PyG's ``NNConv`` recomputes them in every round
(``share_edge_weights=False`` does that too, for comparison). The function
and its gradients are the same (tested against ``NNConv``); the edge network — the largest
cost of this model on complete graphs — runs once forward and once backward instead of three
times.

The representation handed to the balancer is ``z`` (LibMTL's encoder output, the input of the
paper's "linear layer as the task-specific head"). The GRU and Set2Set's LSTM are recurrent:
for the batched (vmap) gradient engines on CUDA wrap the model with
``mtlbalance.utils.without_cudnn_rnn``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import NNConv, Set2Set

from .convert import TASKS
from .data import NUM_EDGE_FEATURES, NUM_NODE_FEATURES

__all__ = ["MPNN", "MPNNEncoder", "SharedEdgeNNConv"]


class SharedEdgeNNConv(NNConv):
    """PyG's ``NNConv`` whose ``forward(x, edge_index, weights)`` takes the edge network's
    output (:meth:`edge_weights`) in place of the edge attributes, so several rounds can share
    one evaluation of the edge network. Same constructor, parameters and names as ``NNConv``.
    """

    def edge_weights(self, edge_attr: Tensor) -> Tensor:
        """The edge network's output for ``edge_attr``: ``(E, in_channels · out_channels)``."""
        return self.nn(edge_attr)

    def message(self, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        weight = edge_attr.view(-1, self.in_channels_l, self.out_channels)
        return torch.matmul(x_j.unsqueeze(1), weight).squeeze(1)


class MPNNEncoder(nn.Module):
    """NNConv + GRU message passing and a Set2Set readout: graph batch -> (B, width)."""

    def __init__(
        self,
        width: int = 64,
        *,
        node_features: int = NUM_NODE_FEATURES,
        edge_features: int = NUM_EDGE_FEATURES,
        edge_hidden: int = 128,
        steps: int = 3,
        set2set_steps: int = 3,
        share_edge_weights: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("steps", steps), ("edge_hidden", edge_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MPNN {name} must be a positive int, not {value!r}")
        self.width = width
        self.steps = steps
        self.share_edge_weights = bool(share_edge_weights)
        self.lin0 = nn.Linear(node_features, width)
        edge_net = nn.Sequential(
            nn.Linear(edge_features, edge_hidden), nn.ReLU(), nn.Linear(edge_hidden, width**2)
        )
        self.conv = SharedEdgeNNConv(width, width, edge_net, aggr="mean")
        self.gru = nn.GRU(width, width)
        self.set2set = Set2Set(width, processing_steps=set2set_steps)
        self.lin1 = nn.Linear(2 * width, width)

    def forward(self, data: Any) -> Tensor:
        out = F.relu(self.lin0(data.x))
        h = out.unsqueeze(0)
        weights = self.conv.edge_weights(data.edge_attr)  # once for all rounds
        for step in range(self.steps):
            if step and not self.share_edge_weights:  # PyG's NNConv: again every round
                weights = self.conv.edge_weights(data.edge_attr)
            m = F.relu(self.conv(out, data.edge_index, weights))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        pooled = self.set2set(out, data.batch)
        return F.relu(self.lin1(pooled))


class MPNN(nn.Module):
    """The shared :class:`MPNNEncoder` and one ``Linear(width, 1)`` head per task.

    ``forward(batch) -> (z, {task: (B,) prediction})``; :meth:`shared_parameters` is the
    encoder, :meth:`task_parameters` the heads.
    """

    def __init__(self, tasks: Sequence[str] = tuple(TASKS), width: int = 64, **encoder: Any):
        super().__init__()
        if not tasks:
            raise ValueError("MPNN needs at least one task")
        self.tasks = list(tasks)
        self.encoder = MPNNEncoder(width, **encoder)
        self.heads = nn.ModuleDict({t: nn.Linear(width, 1) for t in self.tasks})

    def forward(self, data: Any) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.encoder(data)
        return z, {t: head(z).squeeze(-1) for t, head in self.heads.items()}

    def shared_parameters(self) -> Iterable[nn.Parameter]:
        return self.encoder.parameters()

    def task_parameters(self) -> Mapping[str, Iterable[nn.Parameter]]:
        return {t: list(head.parameters()) for t, head in self.heads.items()}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
