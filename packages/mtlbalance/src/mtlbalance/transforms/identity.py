"""Identity transform: the losses as they are (equal weighting, EW)."""

from __future__ import annotations

from torch import Tensor

from .base import LossTransform


class Identity(LossTransform):
    r"""``ℓ̃_t = ℓ_t``. With the :class:`~mtlbalance.aggregators.Sum` aggregator this is EW,
    the floor every method is compared with."""

    name = "identity"
    reference = "—"

    def forward(self, losses: Tensor) -> Tensor:
        return losses
