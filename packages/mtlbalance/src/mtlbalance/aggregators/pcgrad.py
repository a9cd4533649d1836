"""PCGrad: project each task gradient off the task gradients it conflicts with."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .._random import PairwiseOrderDraws
from .base import GramWeighting


class PCGrad(PairwiseOrderDraws, GramWeighting):
    r"""Projecting Conflicting Gradients ("gradient surgery").

    For each task t, with ``p_t = g_t`` at first, visiting the OTHER tasks s in a random order::

        if ⟨p_t, g_s⟩ < 0:   p_t ← p_t − ⟨p_t, g_s⟩ / ‖g_s‖² · g_s
        update = Σ_t p_t                                   (a sum, as the paper and LibMTL)

    The projections are onto the original ``g_s`` (as the official code), never onto the
    already projected ``p_s``. Every ``p_t`` is a combination ``Σ_s C_ts g_s`` whose
    coefficients follow from the Gram matrix ``G = J Jᵀ`` alone (``⟨p_t, g_s⟩ = (C G)_ts``),
    so the method runs on the ``T × T`` matrix and the update is ``(1ᵀ C) J``; the reported
    weights are ``1ᵀ C``. No hyperparameters.

    Random order: the draws are a ``(T, T)`` matrix of keys; task t visits the other tasks
    in increasing order of row t (the diagonal is ignored). Each task has its own order, as
    in the paper. A task permutation acts on the keys as ``draws[perm][:, perm]``.

    Reference: T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman, C. Finn, "Gradient Surgery
    for Multi-Task Learning", NeurIPS 2020 (Algorithm 1).
    """

    name: ClassVar[str] = "pcgrad"
    reference: ClassVar[str] = "Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020"
    cost: ClassVar[str] = "T×T Gram + O(T³) projections on the host (one sync)"

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        num_tasks = gram.shape[0]
        keys = self.draws(num_tasks, gram)
        coef = pcgrad_coefficients(gram, keys)
        return coef.sum(0).to(device=gram.device, dtype=gram.dtype)


def visiting_orders(keys: Tensor) -> list[list[int]]:
    """Row t: the other tasks in increasing order of ``keys[t]`` (ties by index)."""
    num_tasks = keys.shape[0]
    if keys.shape != (num_tasks, num_tasks):
        raise ValueError(
            f"the random draws must be a (T, T) matrix of keys for T={num_tasks} tasks, got "
            f"shape {tuple(keys.shape)}"
        )
    rows: list[list[float]] = keys.detach().to("cpu", torch.float64).tolist()
    orders = []
    for t, row in enumerate(rows):
        others = [s for s in range(num_tasks) if s != t]
        others.sort(key=lambda s: (row[s], s))
        orders.append(others)
    return orders


def pcgrad_coefficients(gram: Tensor, keys: Tensor) -> Tensor:
    """The (T, T) CPU float64 matrix C with projected gradients ``p_t = Σ_s C_ts g_s``."""
    num_tasks = gram.shape[0]
    orders = visiting_orders(keys)
    g = gram.detach().to("cpu", torch.float64).tolist()
    coef = []
    for t in range(num_tasks):
        c = [0.0] * num_tasks
        c[t] = 1.0
        dots = list(g[t])  # ⟨p_t, g_s⟩ for every s, kept up to date as c changes
        for s in orders[t]:
            if dots[s] < 0.0 and g[s][s] > 0.0:
                step = -dots[s] / g[s][s]
                c[s] += step
                gs = g[s]
                for u in range(num_tasks):
                    dots[u] += step * gs[u]
        coef.append(c)
    return torch.tensor(coef, dtype=torch.float64)
