"""Uncertainty weighting (UW): learned homoscedastic-uncertainty loss scales."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import LearnedScales


class UW(LearnedScales):
    r"""Uncertainty weighting: ``ℓ̃_t = exp(−s_t) ℓ_t + s_t`` with learned log-variances
    ``s_t = log σ_t²`` (initialised at 0), trained jointly with the model.

    ``s`` is the balancer's own parameter: give ``balancer.parameters()`` to the optimizer. It
    gets ``∂ℓ̃_t/∂s_t = 1 − exp(−s_t) ℓ_t`` (stationary at ``s_t = log ℓ_t``); the model gets
    the loss weights ``exp(−s_t)``.

    This is Kendall et al.'s regression form ``ℓ/(2σ²) + log σ`` multiplied by 2 (the same
    stationary point; LibMTL writes ``ℓ/(2e^s) + s/2`` and starts at ``s = −0.5``, which is
    half these gradients with starting weights ``e^{0.5}/2 ≈ 0.82``).

    The parameter is created in the default dtype on the CPU and moved to the losses' device
    on the first backward (before the optimizer's first step).

    Reference: A. Kendall, Y. Gal, R. Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018.
    """

    name: ClassVar[str] = "uw"
    reference: ClassVar[str] = (
        "Kendall et al., Multi-Task Learning Using Uncertainty to Weigh Losses for Scene "
        "Geometry and Semantics, CVPR 2018"
    )
    cost: ClassVar[str] = "one backward (as EW); T learned scalars"

    def forward(self, losses: Tensor) -> Tensor:
        s = self.scales(losses)
        return torch.exp(-s) * losses + s
