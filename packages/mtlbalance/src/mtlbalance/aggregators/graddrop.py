"""GradDrop: keep, per coordinate, the task gradients of one randomly chosen sign."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .._random import RandomDraws
from .base import Aggregation, GradientAggregator


class GradDrop(RandomDraws, GradientAggregator):
    r"""Gradient Sign Dropout (GradDrop).

    Per coordinate i of the shared gradient, with ``U_i ~ Uniform(0, 1)``::

        P_i = ½ (1 + Σ_t g_ti / Σ_t |g_ti|)                      (sign purity; ½ if all zero)
        M_ti = [P_i > U_i]·[g_ti > 0] + [P_i < U_i]·[g_ti < 0]
        update_i = Σ_t (leak + (1 − leak) M_ti) g_ti

    so each coordinate keeps only its positive or only its negative contributions, the
    positive ones with probability ``P_i``.

    Deviation: the paper applies GradDrop to the gradients at the shared activations, with
    the sign of each sample's activation folded in before summing over the batch, and LibMTL
    supports only that form (it raises for ``rep_grad=False``). This aggregator applies the
    same rule to the rows of per-task gradients of the shared parameters (every coordinate of
    θ plays the part of an activation), so it reads the whole ``(T, P)`` matrix and works with
    any engine. No per-task weights exist (the stats report none).

    Random draws: a one-element int64 seed, sampled from torch's global CPU generator; the
    ``U_i`` are ``torch.rand(P, generator=Generator(device).manual_seed(seed))``. A forced
    floating draw with ``P`` elements is used as ``U`` directly. The draws are per
    coordinate, not per task: a task permutation leaves them unchanged.

    Reference: Z. Chen, J. Ngiam, Y. Huang, T. Luong, H. Kretzschmar, Y. Chai, D. Anguelov,
    "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
    NeurIPS 2020.

    Args:
        leak: fraction ∈ [0, 1] of every gradient that passes regardless of the mask
            (LibMTL's default 0.0; 1.0 gives the plain sum).
    """

    name: ClassVar[str] = "graddrop"
    reference: ClassVar[str] = (
        "Chen et al., Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign "
        "Dropout, NeurIPS 2020"
    )
    cost: ClassVar[str] = "O(T·P) sign masks; P uniform draws"

    def __init__(self, leak: float = 0.0):
        super().__init__()
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"leak must be in [0, 1], got {leak}")
        self.leak = float(leak)

    def sample_draws(self, num_tasks: int, like: Tensor) -> Tensor:
        return torch.randint(0, 2**62, (1,), dtype=torch.int64)

    def permute_draws(self, draws: Tensor, perm: Tensor) -> Tensor:
        return draws

    def uniforms(self, draws: Tensor, num_params: int, like: Tensor) -> Tensor:
        """The ``U`` of this step: ``draws`` itself (floating, P values) or from its seed."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        if draws.is_floating_point():
            if draws.numel() != num_params:
                raise ValueError(
                    f"forced uniform draws must have one value per parameter ({num_params}), "
                    f"got {draws.numel()}"
                )
            return draws.reshape(num_params).to(device=like.device, dtype=dtype)
        if draws.numel() != 1:
            raise ValueError(f"the draws must be one int64 seed, got shape {tuple(draws.shape)}")
        gen = torch.Generator(device=like.device)
        gen.manual_seed(int(draws.reshape(())))
        return torch.rand(num_params, generator=gen, device=like.device, dtype=dtype)

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        num_tasks, num_params = jacobian.shape
        draws = self.draws(num_tasks, jacobian)
        u = self.uniforms(draws, num_params, jacobian)
        dtype = u.dtype
        total = jacobian.sum(0, dtype=dtype)
        absolute = jacobian.abs().sum(0, dtype=dtype)
        purity = 0.5 * (1.0 + total / absolute.clamp_min(torch.finfo(dtype).tiny))
        positive = jacobian.clamp(min=0).sum(0, dtype=dtype)
        negative = jacobian.clamp(max=0).sum(0, dtype=dtype)
        zero = torch.zeros((), dtype=dtype, device=jacobian.device)
        kept = torch.where(purity > u, positive, zero) + torch.where(purity < u, negative, zero)
        if self.leak > 0.0:
            kept = self.leak * total + (1.0 - self.leak) * kept
        out.copy_(kept)
        return Aggregation()

    def extra_repr(self) -> str:
        return f"leak={self.leak:g}"
