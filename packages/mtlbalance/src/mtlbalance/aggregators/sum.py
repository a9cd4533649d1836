"""Sum of task gradients (equal weighting)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from .base import LossWeighting


class Sum(LossWeighting):
    r"""``update = ∇θ Σ_t ℓ̃_t`` — one ordinary backward, no per-task gradients.

    With the identity transform this is EW (equal weighting), the floor of every comparison;
    with the log transform it is the paper's "loss-scale balancing only" ablation (Table 6).
    Note: a sum, as Algorithm 1 and LibMTL's EW; not a mean.
    """

    name: ClassVar[str] = "sum"
    reference: ClassVar[str] = "Equal weighting (EW), the baseline of every MTL paper"

    def forward(self, losses: Tensor, transformed: Tensor) -> None:
        return None
