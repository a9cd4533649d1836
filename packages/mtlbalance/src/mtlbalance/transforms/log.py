"""The logarithm transform of DB-MTL (Lin et al., Section 3.1)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LogDomain, LossTransform


class Log(LogDomain, LossTransform):
    r"""``ℓ̃_t = log(ℓ_t + ε)``, so ``∇ℓ̃_t = ∇ℓ_t / (ℓ_t + ε)``: every loss gets scale 1.

    Scale-balancing loss transformation of DB-MTL (Lin et al., "Dual-Balancing for Multi-Task
    Learning", Algorithm 1, steps 6 and 12). Losses must be greater than ``-ε``.

    Args:
        eps: the ``ε`` of Algorithm 1 (``1e-8``).
    """

    name = "log"
    domain_subject = "the log transform"
    reference = "Lin et al., Dual-Balancing for Multi-Task Learning, arXiv:2308.12029 (Section 3.1)"

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)

    def forward(self, losses: Tensor) -> Tensor:
        return torch.log(losses + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"
