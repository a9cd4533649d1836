"""DB-MTL's gradient-magnitude balancing (max-norm normalisation of EMA task gradients)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Aggregation, GradientAggregator


class MaxNorm(GradientAggregator):
    r"""Magnitude-balancing gradient normalisation of DB-MTL (Algorithm 1, steps 7 and 9).

    With ``k`` counting steps from 1 (never reset across epochs) and ``ĝ_t`` starting at 0::

        β_k = β / k^σ
        ĝ_t ← β_k ĝ_t + (1 − β_k) g_t              (no bias correction)
        update = α Σ_t ĝ_t / (‖ĝ_t‖ + ε),   α = max_t ‖ĝ_t‖

    Every task with a nonzero ĝ_t contributes a vector of norm ≈ α; a task whose ĝ_t is zero
    contributes zero, and its reported weight is 0 (not α/ε). With the log transform this is
    DB-MTL; on plain losses it is the paper's "gradient-magnitude balancing only" ablation
    (Table 6).

    Reference: B. Lin, W. Jiang, F. Ye, Y. Zhang, P. Chen, Y.-C. Chen, S. Liu, J. T. Kwok,
    "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029.

    Args:
        beta: EMA coefficient β ∈ [0, 1) (0 disables the moving average). Paper grid: {0.1,
            0.5, 0.9}.
        sigma: decay exponent σ ≥ 0 of β_k = β / k^σ. Paper grid: {0, 0.5}.
        eps: ε of Algorithm 1.
    """

    name: ClassVar[str] = "maxnorm"
    reference: ClassVar[str] = (
        "Lin et al., Dual-Balancing for Multi-Task Learning, arXiv:2308.12029 (Section 3.2)"
    )
    cost: ClassVar[str] = "O(T·P) memory-bound passes; (T, P) EMA state"

    def __init__(self, beta: float = 0.9, sigma: float = 0.5, eps: float = 1e-8):
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if not sigma >= 0.0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.beta = float(beta)
        self.sigma = float(sigma)
        self.eps = float(eps)
        self.step = 0
        self.ema: Tensor | None = None
        self.norm_ema: Tensor | None = None  # mode="representation": EMA of the norms

    def beta_k(self, k: int) -> float:
        return self.beta / (k**self.sigma)

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        state_dtype = torch.promote_types(jacobian.dtype, torch.float32)
        if self.ema is None or self.ema.shape != jacobian.shape:
            if self.ema is not None and self.step > 0:
                raise ValueError(
                    f"the (tasks, parameters) shape changed from {tuple(self.ema.shape)} to "
                    f"{tuple(jacobian.shape)} mid-run; call balancer.reset() to start over"
                )
            self.ema = torch.zeros(jacobian.shape, device=jacobian.device, dtype=state_dtype)
        elif self.ema.device != jacobian.device:
            self.ema = self.ema.to(jacobian.device)
        self.step += 1
        beta_k = self.beta_k(self.step)
        ema = self.ema
        if beta_k == 0.0:
            ema.copy_(jacobian)
        else:  # β_k ĝ + (1 − β_k) g in one pass over the (T, P) state
            ema.lerp_(jacobian.to(ema.dtype), 1.0 - beta_k)
        norms = torch.linalg.vector_norm(ema, dim=1)
        alpha = norms.max()
        # a zero ĝ_t contributes nothing: its weight is 0, not α/ε (no host sync)
        coef = torch.where(norms > 0, alpha / (norms + self.eps), torch.zeros_like(norms))
        if out.dtype == ema.dtype:
            torch.mv(ema.T, coef, out=out)
        else:
            out.copy_(torch.mv(ema.T, coef))
        return Aggregation(weights=coef)

    def weigh_norms(self, norms: Tensor) -> Tensor:
        r"""The factors of ``Balancer(mode="representation")`` (approximate) from the norms
        ``n_t = ‖∇_z ℓ̃_t‖`` at the shared representation, with the same ``β_k`` and step
        count as :meth:`forward`::

            n̂_t ← β_k n̂_t + (1 − β_k) n_t;   c_t = max_s n̂_s / (n̂_t + ε)   (0 where n̂_t = 0)

        The moving average is of the norms, not of the rows (the rows at z change meaning
        from batch to batch)."""
        norms = norms.detach().to(torch.promote_types(norms.dtype, torch.float32))
        if self.norm_ema is None or self.norm_ema.shape != norms.shape:
            if self.norm_ema is not None and self.step > 0:
                raise ValueError(
                    f"the number of tasks changed from {self.norm_ema.shape[0]} to "
                    f"{norms.shape[0]} mid-run; call balancer.reset() to start over"
                )
            self.norm_ema = torch.zeros_like(norms)
        self.step += 1
        beta_k = self.beta_k(self.step)
        ema = self.norm_ema.to(norms.device)
        ema = norms.clone() if beta_k == 0.0 else ema.lerp_(norms.to(ema.dtype), 1.0 - beta_k)
        self.norm_ema = ema
        alpha = ema.max()
        return torch.where(ema > 0, alpha / (ema + self.eps), torch.zeros_like(ema))

    def reset(self) -> None:
        self.step = 0
        self.ema = None
        self.norm_ema = None

    def get_extra_state(self) -> Any:
        state = {"step": self.step, "ema": None if self.ema is None else self.ema.clone()}
        if self.norm_ema is not None:
            state["norm_ema"] = self.norm_ema.clone()
        return state

    def set_extra_state(self, state: Any) -> None:
        self.step = int(state["step"])
        ema = state["ema"]
        self.ema = None if ema is None else ema.clone()
        norm_ema = state.get("norm_ema")
        self.norm_ema = None if norm_ema is None else norm_ema.clone()

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, sigma={self.sigma:g}, eps={self.eps:g}"
