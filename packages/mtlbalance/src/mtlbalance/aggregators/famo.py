"""FAMO: fast adaptive multitask optimisation (loss weights from the log-loss decrease)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import LossWeighting


class FAMO(LossWeighting):
    r"""FAMO: one backward of ``Σ_t c z_t log(ℓ_t − ℓ*_t + ε)``, i.e. loss weights::

        z = softmax(ξ),   D_t = ℓ_t − ℓ*_t + ε,   w_t = c z_t / D_t,   c = 1 / Σ_s z_s / D_s

    (the weights are positive and sum to 1). After the optimizer step, with the losses of the
    same batch recomputed at the new parameters (``balancer.after_step(new_losses)``)::

        δ = J_softmax(ξ)ᵀ (log D_old − log D_new) = z ⊙ (Δ − zᵀΔ)
        ξ ← ξ − β (update of the gradient δ + γ ξ)

    so a task whose log loss decreased less than the z-average gains weight. ``after_step``
    is required: without it ξ stays 0 and FAMO weights the losses as ``1/D_t`` (the log
    transform, normalised to sum 1). ``ℓ* = 0`` (the official default); a loss below ``ℓ*`` is
    treated as at the minimum (``D = ε``).

    ``w_optimizer="adam"`` (default) is the official code (and LibMTL): Adam on ξ with
    learning rate β and L2 weight decay γ. ``"sgd"`` is Algorithm 1 of the paper literally:
    ``ξ ← ξ − β (δ + γ ξ)``.

    Reference: B. Liu, Y. Feng, P. Stone, Q. Liu, "FAMO: Fast Adaptive Multitask
    Optimization", NeurIPS 2023.

    Args:
        w_lr: β, the learning rate of the logits ξ (0.025).
        gamma: γ, the weight decay of ξ (0.001).
        w_optimizer: ``"adam"`` (official code) or ``"sgd"`` (the paper's Algorithm 1).
        eps: ε in ``D_t`` (1e-8).
    """

    name: ClassVar[str] = "famo"
    reference: ClassVar[str] = (
        "Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023"
    )
    cost: ClassVar[str] = (
        "one backward (as EW) + the caller's extra forward for after_step's losses"
    )

    _BETAS = (0.9, 0.999)
    _ADAM_EPS = 1e-8

    def __init__(
        self,
        w_lr: float = 0.025,
        gamma: float = 0.001,
        w_optimizer: str = "adam",
        eps: float = 1e-8,
    ):
        super().__init__()
        if not w_lr > 0:
            raise ValueError(f"w_lr must be > 0, got {w_lr}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if w_optimizer not in ("adam", "sgd"):
            raise ValueError(f"w_optimizer must be 'adam' or 'sgd', got {w_optimizer!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.w_lr = float(w_lr)
        self.gamma = float(gamma)
        self.w_optimizer = w_optimizer
        self.eps = float(eps)
        self.num_tasks = 0
        self._fresh()

    def setup(self, task_names: Sequence[str]) -> None:
        self.num_tasks = len(task_names)
        self._fresh()

    def _fresh(self) -> None:
        n = self.num_tasks
        self.xi = torch.zeros(n)  # the logits ξ
        self.exp_avg = torch.zeros(n)  # Adam's moments of ξ
        self.exp_avg_sq = torch.zeros(n)
        self.updates = 0  # number of ξ updates (Adam's step count)
        self.prev: Tensor | None = None  # the losses of the last forward

    def _to(self, like: Tensor) -> None:
        dtype = torch.promote_types(like.dtype, torch.float32)
        if self.xi.device != like.device or self.xi.dtype != dtype:
            self.xi = self.xi.to(device=like.device, dtype=dtype)
            self.exp_avg = self.exp_avg.to(device=like.device, dtype=dtype)
            self.exp_avg_sq = self.exp_avg_sq.to(device=like.device, dtype=dtype)

    def gaps(self, losses: Tensor) -> Tensor:
        """``D_t = max(ℓ_t − ℓ*, 0) + ε`` with ``ℓ* = 0``."""
        return losses.clamp_min(0.0) + self.eps

    def task_logits_weights(self) -> Tensor:
        """``z = softmax(ξ)``."""
        return torch.softmax(self.xi, dim=0)

    def forward(self, losses: Tensor, transformed: Tensor) -> Tensor:
        self._to(losses)
        d = self.gaps(losses.detach().to(self.xi.dtype))
        self.prev = d
        ratio = self.task_logits_weights() / d
        return (ratio / ratio.sum()).to(losses.dtype)

    def after_step(self, losses: Tensor) -> None:
        if self.prev is None:
            return  # no forward since the last update: nothing to compare with
        new = self.gaps(losses.detach().to(device=self.prev.device, dtype=self.prev.dtype))
        delta = torch.log(self.prev) - torch.log(new)
        z = self.task_logits_weights()
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.xi
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        self.updates += 1
        if self.w_optimizer == "sgd":
            self.xi = self.xi - self.w_lr * grad
        else:  # torch.optim.Adam's update (L2 weight decay folded into grad)
            beta1, beta2 = self._BETAS
            self.exp_avg = self.exp_avg * beta1 + (1 - beta1) * grad
            self.exp_avg_sq = self.exp_avg_sq * beta2 + (1 - beta2) * grad * grad
            bias1 = 1 - beta1**self.updates
            bias2 = 1 - beta2**self.updates
            denom = self.exp_avg_sq.sqrt() / math.sqrt(bias2) + self._ADAM_EPS
            self.xi = self.xi - (self.w_lr / bias1) * self.exp_avg / denom
        self.prev = None

    def reset(self) -> None:
        self._fresh()

    def get_extra_state(self) -> Any:
        return {
            "xi": self.xi.clone(),
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "updates": self.updates,
            "prev": None if self.prev is None else self.prev.clone(),
        }

    def set_extra_state(self, state: Any) -> None:
        self.xi = state["xi"].clone()
        self.exp_avg = state["exp_avg"].clone()
        self.exp_avg_sq = state["exp_avg_sq"].clone()
        self.updates = int(state["updates"])
        prev = state["prev"]
        self.prev = None if prev is None else prev.clone()

    def extra_repr(self) -> str:
        return (
            f"w_lr={self.w_lr:g}, gamma={self.gamma:g}, w_optimizer={self.w_optimizer!r}, "
            f"eps={self.eps:g}"
        )
