"""Random loss weighting (RLW): a fresh random softmax weighting of the losses each step."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .._random import RandomDraws, gaussian
from .base import LossTransform


class RLW(RandomDraws, LossTransform):
    r"""Random loss weighting: each step ``z ~ N(0, I_T)``, ``w = softmax(z)``,
    ``ℓ̃_t = w_t ℓ_t`` (weights are constants of the graph; they sum to 1, as in the paper and
    LibMTL's ``Normal`` variant).

    The draws ``z`` come from torch's global RNG on the losses' device (``torch.manual_seed``
    makes runs reproducible); a task permutation permutes them.

    Reference: B. Lin, F. Ye, Y. Zhang, I. W. Tsang, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022.
    """

    name: ClassVar[str] = "rlw"
    reference: ClassVar[str] = (
        "Lin et al., Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task "
        "Learning, TMLR 2022"
    )
    cost: ClassVar[str] = "one backward (as EW); T Gaussian draws"

    def sample_draws(self, num_tasks: int, like: Tensor) -> Tensor:
        return gaussian(num_tasks, like)

    def weights(self, draws: Tensor) -> Tensor:
        """``softmax(z)``: positive weights summing to 1."""
        return torch.softmax(draws, dim=0)

    def forward(self, losses: Tensor) -> Tensor:
        z = self.draws(losses.shape[0], losses.detach()).to(losses.dtype)
        return self.weights(z) * losses
