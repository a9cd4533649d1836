"""Smooth Tchebycheff scalarisation (STCH) of the task losses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import LogDomain, LossTransform
from .dwa import accumulate


class STCH(LogDomain, LossTransform):
    r"""Smooth Tchebycheff scalarisation, in the form of the paper's multi-task experiments
    (official code, also LibMTL)::

        u_t = log(ℓ_t + ε) − log(ℓ̄_t + ε)            (log loss, normalised by the nadir ℓ̄)
        S   = T · µ · log Σ_t exp(λ_t (u_t − z*_t) / µ),   z* = 0,  λ_t = 1 (uniform)

    ``ℓ̄_t`` is task t's average training loss over the epoch ``warmup_epochs`` (counting from
    0); before and during that epoch the method trains on ``Σ_t log(ℓ_t + ε)`` (the warm-up
    of the official code), and from the next epoch on it minimises ``S``. Call
    ``balancer.epoch_end()`` at the end of every epoch (without it STCH stays in warm-up).
    An epoch without steps does not count as the nadir epoch; non-finite losses are left out
    of the nadir averages.

    ``S`` mixes the tasks; it is returned as T shares ``ℓ̃_t = p_t S`` with
    ``p = softmax(λ(u − z*)/µ)``, whose gradient is task t's part of ``∇S``:
    ``∇ℓ̃_t = T p_t λ_t ∇u_t`` (``p`` is a constant of the graph), so ``Σ_t ℓ̃_t = S`` and
    ``∇ Σ_t ℓ̃_t = ∇S`` exactly.

    Reference: X. Lin, X. Zhang, Z. Yang, F. Liu, Z. Wang, Q. Zhang, "Smooth Tchebycheff
    Scalarization for Multi-Objective Optimization", ICML 2024.

    Args:
        mu: the smoothing parameter µ > 0 (official MTL setting: 1).
        warmup_epochs: epochs of log-loss training before the nadir epoch (official: 4).
        preference: positive preference weights λ (T values), None for all ones.
        eps: ``ε`` of the logarithms (the official code uses 1e-20 inside
            ``log(ℓ/ℓ̄ + ε)``); losses must be greater than ``-ε``.
    """

    name: ClassVar[str] = "stch"
    domain_subject = "STCH (on log losses)"
    reference: ClassVar[str] = (
        "Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024"
    )
    cost: ClassVar[str] = "one backward (as EW)"
    elementwise: ClassVar[bool] = False

    def __init__(
        self,
        mu: float = 1.0,
        warmup_epochs: int = 4,
        preference: Sequence[float] | None = None,
        eps: float = 1e-8,
    ):
        super().__init__()
        if not mu > 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.preference: tuple[float, ...] | None = None
        if preference is not None:
            values = tuple(float(p) for p in preference)
            if not values or not all(p > 0 and p < float("inf") for p in values):
                raise ValueError(f"preference must be positive finite weights, got {preference}")
            self.preference = values
        self.mu = float(mu)
        self.warmup_epochs = int(warmup_epochs)
        self.eps = float(eps)
        self._fresh()

    def setup(self, task_names: Sequence[str]) -> None:
        if self.preference is not None and len(self.preference) != len(task_names):
            raise ValueError(
                f"preference has {len(self.preference)} weights for {len(task_names)} tasks "
                f"{list(task_names)}"
            )

    def _fresh(self) -> None:
        self.epoch = 0  # epochs completed (epoch_end calls)
        self.running: Tensor | None = None  # sum of the nadir epoch's finite losses, per task
        self.count: Tensor | None = None  # their number, per task
        self.nadir: Tensor | None = None

    @property
    def active(self) -> bool:
        """True once the nadir point is known and the scalarisation is in use."""
        return self.nadir is not None

    def forward(self, losses: Tensor) -> Tensor:
        logs = torch.log(losses + self.eps)
        if self.nadir is None:
            if self.epoch >= self.warmup_epochs:  # the nadir epoch: accumulate its losses
                self.running, self.count = accumulate(self.running, self.count, losses.detach())
            return logs
        nadir = self.nadir.to(device=losses.device, dtype=losses.dtype)
        u = logs - torch.log(nadir + self.eps)
        scale = self._lambda(losses)
        a = scale * u / self.mu
        num_tasks = losses.shape[0]
        with torch.no_grad():
            p = torch.softmax(a, dim=0)
            value = num_tasks * self.mu * torch.logsumexp(a, dim=0)
        part = num_tasks * p * scale * u  # gradient T p_t λ_t ∇u_t
        return part + (p * value - part).detach()

    def scalarization(self, losses: Tensor) -> Tensor:
        """``S`` for these losses (needs the nadir point), differentiable."""
        if self.nadir is None:
            raise RuntimeError("the nadir point is not known yet (still in warm-up)")
        nadir = self.nadir.to(device=losses.device, dtype=losses.dtype)
        u = torch.log(losses + self.eps) - torch.log(nadir + self.eps)
        a = self._lambda(losses) * u / self.mu
        return losses.shape[0] * self.mu * torch.logsumexp(a, dim=0)

    def _lambda(self, like: Tensor) -> Tensor:
        if self.preference is None:
            return torch.ones_like(like)
        return torch.tensor(self.preference, device=like.device, dtype=like.dtype)

    def epoch_end(self) -> None:
        if self.nadir is None and self.running is not None and self.count is not None:
            self.nadir = self.running / self.count.clamp_min(1)
            self.running, self.count = None, None
        self.epoch += 1

    def reset(self) -> None:
        self._fresh()

    def get_extra_state(self) -> Any:
        return {
            "epoch": self.epoch,
            "running": None if self.running is None else self.running.clone(),
            "count": None if self.count is None else self.count.clone(),
            "nadir": None if self.nadir is None else self.nadir.clone(),
        }

    def set_extra_state(self, state: Any) -> None:
        self.epoch = int(state["epoch"])
        running, nadir = state["running"], state["nadir"]
        self.running = None if running is None else running.clone()
        count = state["count"]
        self.count = None if count is None else count.clone()
        self.nadir = None if nadir is None else nadir.clone()

    def extra_repr(self) -> str:
        pref = "" if self.preference is None else f", preference={list(self.preference)}"
        return f"mu={self.mu:g}, warmup_epochs={self.warmup_epochs}{pref}, eps={self.eps:g}"
