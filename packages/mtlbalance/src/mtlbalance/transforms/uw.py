"""Uncertainty weighting (UW): learned homoscedastic-uncertainty loss scales."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import LossTransform


class UW(LossTransform):
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

    s: nn.Parameter

    def setup(self, task_names: Sequence[str]) -> None:
        self.s = nn.Parameter(torch.zeros(len(task_names)))

    def forward(self, losses: Tensor) -> Tensor:
        if self.s.device != losses.device:
            self.s.data = self.s.data.to(losses.device)
        return torch.exp(-self.s) * losses + self.s

    def reset(self) -> None:
        if "s" in self._parameters:
            with torch.no_grad():
                self.s.zero_()
