"""Gradient Vaccine: align each pair of task gradients to a moving target similarity."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._random import PairwiseOrderDraws
from .base import GramWeighting
from .pcgrad import visiting_orders

#: targets are used clipped to [−1 + δ, 1 − δ] so that √(1 − φ̂²) stays away from 0
_TARGET_MARGIN = 1e-6


class GradVac(PairwiseOrderDraws, GramWeighting):
    r"""Gradient Vaccine (GradVac), whole-model granularity.

    For each task t, with ``g'_t = g_t`` at first, visiting the OTHER tasks s in a random order,
    with ``φ = cos(g'_t, g_s)`` and the target ``φ̂_ts`` (an EMA, starting at 0)::

        if φ < φ̂_ts:  g'_t ← g'_t + ‖g'_t‖ (φ̂_ts √(1−φ²) − φ √(1−φ̂_ts²)) / (‖g_s‖ √(1−φ̂_ts²)) · g_s
        φ̂_ts ← (1 − β) φ̂_ts + β φ
        update = Σ_t g'_t

    The added multiple of ``g_s`` (the original ``g_s``) makes ``cos(g'_t, g_s) = φ̂_ts``
    exactly. As PCGrad, every ``g'_t`` is ``Σ_s C_ts g_s`` with coefficients that follow from
    ``G = J Jᵀ``, so the method runs on the ``T × T`` matrix; the weights are ``1ᵀ C``.

    ``φ̂_ts`` is updated at every visit, as the paper's Algorithm 1 and LibMTL (which updated
    it only inside the ``if``, so that its targets could only decrease, until its commit
    d2d84fa "fix a bug in GradVac", February 2024). The paper
    (and LibMTL's ``GradVac_group_type``) can work per layer or per parameter matrix; this
    class uses the whole shared gradient (LibMTL's default "whole_model"). A zero ``g'_t`` or
    ``g_s`` counts as ``φ = 0`` and is left as is; targets are used clipped to
    ``[−1 + 10⁻⁶, 1 − 10⁻⁶]`` (in the test as in the formula) so that the coefficient stays
    finite.

    Random order: the same ``(T, T)`` key matrix as :class:`~mtlbalance.aggregators.pcgrad.
    PCGrad` (row t orders the tasks t visits; ``draws[perm][:, perm]`` under a permutation).

    Reference: Z. Wang, Y. Tsvetkov, O. Firat, Y. Cao, "Gradient Vaccine: Investigating and
    Improving Multi-task Optimization in Massively Multilingual Models", ICLR 2021.

    Args:
        beta: EMA rate β ∈ [0, 1] of the target similarities (LibMTL: 0.5).
    """

    name: ClassVar[str] = "gradvac"
    reference: ClassVar[str] = (
        "Wang et al., Gradient Vaccine: Investigating and Improving Multi-task Optimization in "
        "Massively Multilingual Models, ICLR 2021"
    )
    cost: ClassVar[str] = "T×T Gram + O(T³) host loop (one sync); T×T EMA state"

    def __init__(self, beta: float = 0.5):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = float(beta)
        self.target: Tensor | None = None  # φ̂, (T, T) CPU float64

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        num_tasks = gram.shape[0]
        if self.target is None or self.target.shape != (num_tasks, num_tasks):
            if self.target is not None:
                raise ValueError(
                    f"the number of tasks changed from {self.target.shape[0]} to {num_tasks} "
                    f"mid-run; call balancer.reset() to start over"
                )
            self.target = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
        keys = self.draws(num_tasks, gram)
        coef, target = gradvac_step(gram, keys, self.target, self.beta)
        self.target = target
        return coef.sum(0).to(device=gram.device, dtype=gram.dtype)

    def reset(self) -> None:
        self.target = None

    def get_extra_state(self) -> Any:
        return {"target": None if self.target is None else self.target.clone()}

    def set_extra_state(self, state: Any) -> None:
        target = state["target"]
        self.target = None if target is None else target.to("cpu", torch.float64).clone()

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"


def gradvac_step(gram: Tensor, keys: Tensor, target: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """One GradVac step on the Gram matrix: the coefficients C (``g'_t = Σ_s C_ts g_s``) and
    the updated targets, both (T, T) CPU float64."""
    num_tasks = gram.shape[0]
    orders = visiting_orders(keys)
    g = gram.detach().to("cpu", torch.float64).tolist()
    phi_hat = target.detach().to("cpu", torch.float64).tolist()
    lo, hi = -1.0 + _TARGET_MARGIN, 1.0 - _TARGET_MARGIN
    coef = []
    for t in range(num_tasks):
        c = [0.0] * num_tasks
        c[t] = 1.0
        dots = list(g[t])  # ⟨g'_t, g_s⟩ for every s
        sq = max(g[t][t], 0.0)  # ‖g'_t‖²
        for s in orders[t]:
            norm_t, norm_s = math.sqrt(max(sq, 0.0)), math.sqrt(max(g[s][s], 0.0))
            phi = 0.0
            if norm_t > 0.0 and norm_s > 0.0:
                phi = min(max(dots[s] / (norm_t * norm_s), -1.0), 1.0)
                aim = min(max(phi_hat[t][s], lo), hi)
                if phi < aim:
                    root = math.sqrt(1.0 - aim * aim)
                    w = (
                        norm_t
                        * (aim * math.sqrt(max(1.0 - phi * phi, 0.0)) - phi * root)
                        / (norm_s * root)
                    )
                    sq += 2.0 * w * dots[s] + w * w * g[s][s]
                    c[s] += w
                    gs = g[s]
                    for u in range(num_tasks):
                        dots[u] += w * gs[u]
            phi_hat[t][s] = (1.0 - beta) * phi_hat[t][s] + beta * phi
        coef.append(c)
    return torch.tensor(coef, dtype=torch.float64), torch.tensor(phi_hat, dtype=torch.float64)
