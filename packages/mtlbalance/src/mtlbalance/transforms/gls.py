"""Geometric loss strategy (GLS): minimise the geometric mean of the task losses."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import LogDomain, LossTransform


class GLS(LogDomain, LossTransform):
    r"""Geometric loss strategy: minimise ``G = (Π_t (ℓ_t + ε))^{1/T}``.

    ``∂G/∂ℓ_t = G / (T (ℓ_t + ε))``: GLS is the log transform with one common, moving scale
    ``G/T``. Task t's share is returned as ``ℓ̃_t`` with value ``G/T`` (so ``Σ_t ℓ̃_t = G``)
    and gradient ``G/(T(ℓ_t + ε)) ∇ℓ_t`` (the common factor is a constant of the graph), so
    ``∇ Σ_t ℓ̃_t = ∇G`` exactly, and each row of the Jacobian is task t's own contribution
    to ``∇G`` (meaningful when combined with a gradient-level aggregator, ``"gls+pcgrad"``).
    ``G`` is computed as ``exp(mean_t log(ℓ_t + ε))`` (no overflow of the product).

    Reference: S. Chennupati, G. Sistu, S. Yogamani, S. A. Rawashdeh, "MultiNet++: Multi-Stream
    Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops
    2019.

    Args:
        eps: ``ε`` added to each loss, so a zero loss gives a finite gradient (the paper has
            none: ``eps=0`` is the exact geometric mean). Losses must be greater than ``-ε``.
    """

    name: ClassVar[str] = "gls"
    domain_subject = "GLS (a geometric mean of the losses)"
    reference: ClassVar[str] = (
        "Chennupati et al., MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss "
        "Strategy for Multi-Task Learning, CVPR Workshops 2019"
    )
    cost: ClassVar[str] = "one backward (as EW)"
    # ℓ̃_t's value (G/T) depends on every loss; its gradient only on ℓ_t.
    elementwise: ClassVar[bool] = False

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)

    def forward(self, losses: Tensor) -> Tensor:
        shifted = losses + self.eps
        logs = torch.log(shifted)
        num_tasks = losses.shape[0]
        with torch.no_grad():
            geo = torch.exp(logs.mean())
            # G / (T (ℓ_t + ε)), computed in log space (finite for ℓ_t + ε > 0)
            factor = torch.exp(logs.mean() - logs) / num_tasks
            share = geo / num_tasks
        # value factor·(ℓ+ε) = G/T; gradient factor. The correction keeps the value exact.
        scaled = factor * shifted
        return scaled + (share - scaled).detach()

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"
