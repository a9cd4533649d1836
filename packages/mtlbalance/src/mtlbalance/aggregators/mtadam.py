"""MTAdam: Adam with per-task moments of magnitude-balanced task gradients."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Aggregation, GradientAggregator


class MTAdam(GradientAggregator):
    r"""MTAdam's balanced Adam direction, for the user's optimizer to step with.

    With ``k`` counting steps from 1, per task t (moments ``m_t, v_t`` start at 0)::

        n_t ← ‖g_t‖ (k = 1),   n_t ← β₃ n_t + (1 − β₃) ‖g_t‖ (k > 1)     EMA of the norm
        ĝ_t = (a / n_t) g_t,   a = max_s n_s                             (g_t if n_t = 0)
        m_t ← β₁ m_t + (1 − β₁) ĝ_t,   v_t ← β₂ v_t + (1 − β₂) ĝ_t²
        update = Σ_t m_t / (1 − β₁ᵏ)  ⊘  max_t (√v_t / √(1 − β₂ᵏ) + ε)    (max per coordinate)

    as the official implementation: every task's gradient is rescaled to a common magnitude,
    each task keeps its own Adam moments, and the tasks share the largest denominator.

    The original is an optimizer that also takes the step ``θ ← θ − lr · update``. Here the
    aggregator returns ``update`` as the shared gradient, so pair it with plain SGD (no
    momentum, no weight decay) on the shared parameters: ``SGD(lr)`` then reproduces MTAdam
    with that learning rate. A second adaptive optimizer (Adam) would normalise the direction
    twice. Task-specific parameters receive their plain gradients; MTAdam's own Adam step on
    them equals plain Adam (the other tasks' gradients are zero there), so give them an Adam
    parameter group with the same learning rate to reproduce the original exactly.

    Deviations: the original balances per parameter tensor (a norm per layer); this class
    uses the norm of the whole shared gradient. The original rescales to the first task's
    norm (optionally times user-given ranks); this class rescales to the largest norm, which
    keeps the method permutation-equivariant. A common factor on all ``ĝ_t`` cancels in the
    ratio above (up to ε), so the anchor matters only through how it changes over time. The
    original's weight decay (added to each task's gradient) is left to the user's optimizer.

    Reference: I. Malkiel, L. Wolf, "MTAdam: Automatic Balancing of Multiple Training Loss
    Terms", EMNLP 2021 (Algorithm 1 and the authors' code).

    Args:
        beta1, beta2: Adam's moment rates (0.9, 0.999).
        beta3: EMA rate of the gradient norms (0.9).
        eps: Adam's ε (1e-8).
    """

    name: ClassVar[str] = "mtadam"
    reference: ClassVar[str] = (
        "Malkiel & Wolf, MTAdam: Automatic Balancing of Multiple Training Loss Terms, EMNLP 2021"
    )
    cost: ClassVar[str] = "O(T·P) per-task Adam moments; (2T, P) state"

    def __init__(
        self, beta1: float = 0.9, beta2: float = 0.999, beta3: float = 0.9, eps: float = 1e-8
    ):
        super().__init__()
        for label, value in (("beta1", beta1), ("beta2", beta2), ("beta3", beta3)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{label} must be in [0, 1), got {value}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.beta1, self.beta2, self.beta3 = float(beta1), float(beta2), float(beta3)
        self.eps = float(eps)
        self.step = 0
        self.norms: Tensor | None = None
        self.exp_avg: Tensor | None = None
        self.exp_avg_sq: Tensor | None = None

    def _allocate(self, jacobian: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dtype = torch.promote_types(jacobian.dtype, torch.float32)
        if self.exp_avg is None or self.exp_avg.shape != jacobian.shape:
            if self.exp_avg is not None and self.step > 0:
                raise ValueError(
                    f"the (tasks, parameters) shape changed from {tuple(self.exp_avg.shape)} to "
                    f"{tuple(jacobian.shape)} mid-run; call balancer.reset() to start over"
                )
            self.exp_avg = torch.zeros(jacobian.shape, device=jacobian.device, dtype=dtype)
            self.exp_avg_sq = torch.zeros_like(self.exp_avg)
            self.norms = torch.zeros(jacobian.shape[0], device=jacobian.device, dtype=dtype)
        elif self.exp_avg.device != jacobian.device:
            self.exp_avg = self.exp_avg.to(jacobian.device)
            self.exp_avg_sq = (
                None if self.exp_avg_sq is None else self.exp_avg_sq.to(jacobian.device)
            )
            self.norms = None if self.norms is None else self.norms.to(jacobian.device)
        assert self.exp_avg_sq is not None and self.norms is not None
        return self.exp_avg, self.exp_avg_sq, self.norms

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        exp_avg, exp_avg_sq, norms = self._allocate(jacobian)
        self.step += 1
        k = self.step
        grads = jacobian.to(exp_avg.dtype)
        current = torch.linalg.vector_norm(grads, dim=1)
        if k == 1:
            norms.copy_(current)
        else:
            norms.mul_(self.beta3).add_(current, alpha=1.0 - self.beta3)
        anchor = norms.max()
        tiny = torch.finfo(norms.dtype).tiny
        scale = torch.where(norms > 0, anchor / norms.clamp_min(tiny), torch.ones_like(norms))
        balanced = grads * scale[:, None]
        exp_avg.mul_(self.beta1).add_(balanced, alpha=1.0 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(balanced, balanced, value=1.0 - self.beta2)
        bias1 = 1.0 - self.beta1**k
        bias2 = 1.0 - self.beta2**k
        # max_t (√v_t / √b₂ + ε) = √(max_t v_t) / √b₂ + ε: one (P,) denominator
        denom = exp_avg_sq.amax(0).sqrt_().div_(math.sqrt(bias2)).add_(self.eps)
        update = exp_avg.sum(0).div_(bias1).div_(denom)
        out.copy_(update)
        return Aggregation()

    def reset(self) -> None:
        self.step = 0
        self.norms = self.exp_avg = self.exp_avg_sq = None

    def get_extra_state(self) -> Any:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return {
            "step": self.step,
            "norms": copy(self.norms),
            "exp_avg": copy(self.exp_avg),
            "exp_avg_sq": copy(self.exp_avg_sq),
        }

    def set_extra_state(self, state: Any) -> None:
        self.step = int(state["step"])
        for key in ("norms", "exp_avg", "exp_avg_sq"):
            value = state[key]
            setattr(self, key, None if value is None else value.clone())

    def extra_repr(self) -> str:
        return f"beta1={self.beta1:g}, beta2={self.beta2:g}, beta3={self.beta3:g}, eps={self.eps:g}"
