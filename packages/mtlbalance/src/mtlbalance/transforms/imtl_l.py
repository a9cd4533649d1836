"""IMTL-L: the loss-balancing half of Impartial Multi-Task Learning."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import LearnedScales


class IMTLL(LearnedScales):
    r"""IMTL-L: ``ℓ̃_t = exp(s_t) ℓ_t − s_t`` with learned scales ``s_t`` (initialised at 0),
    trained jointly with the model.

    ``s`` is the balancer's own parameter: give ``balancer.parameters()`` to the optimizer. It
    gets ``∂ℓ̃_t/∂s_t = exp(s_t) ℓ_t − 1``, zero when the scaled loss ``exp(s_t) ℓ_t`` is 1
    (at the exact minimiser ``s_t = −log ℓ_t`` this is the log transform, DB-MTL's
    Proposition A.1); the model gets the loss weights ``exp(s_t)``. With the ``imtl_g``
    aggregator this is the hybrid method ``"imtl"``.

    The parameter is created in the default dtype on the CPU and moved to the losses' device
    on the first backward (before the optimizer's first step).

    Reference: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao, W. Zhang,
    "Towards Impartial Multi-task Learning", ICLR 2021.
    """

    name: ClassVar[str] = "imtl_l"
    reference: ClassVar[str] = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021"
    cost: ClassVar[str] = "one backward (as EW); T learned scalars"

    def forward(self, losses: Tensor) -> Tensor:
        s = self.scales(losses)
        return torch.exp(s) * losses - s
