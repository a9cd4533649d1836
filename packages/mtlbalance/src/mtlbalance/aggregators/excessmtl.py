"""ExcessMTL: up-weight the tasks with the largest estimated excess risk."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Aggregation, GradientAggregator


class ExcessMTL(GradientAggregator):
    r"""ExcessMTL: exponentiated-gradient task weights driven by excess-risk estimates.

    With ``H_t`` the AdaGrad accumulator of task t's squared gradients (a diagonal
    approximation of its Hessian), at step k = 1, 2, …::

        H_t ← H_t + g_t ⊙ g_t
        e_t = Σ_p g_tp² / sqrt(H_tp + ε)          (excess risk ≈ ½ gᵀ H⁻¹ g, diagonal)
        k = 1:  r_t = e_t  (reference), weights stay 1
        k > 1:  p_t ← p_t · exp(η e_t / r_t),  then  p ← T p / Σ p
        update = Σ_t p_t g_t;  the weights p also scale the task-specific gradients

    as the official code (LibMTL port by the authors): the excess risks are normalised by
    their first-step values, the weights start at 1 and sum to T. The weights are kept as
    log-weights (``p = T softmax(log p)``, the same update without overflow or underflow).
    A task whose first estimate is 0 (zero gradient) takes its first nonzero estimate as
    reference instead (the official code divides by zero); until then its ratio is 0.

    State (in ``state_dict()``): the ``(T, P)`` accumulator, the references, the
    log-weights and the step count, allocated on the first step.

    Reference: Y. He, S. Zhou, G. Zhang, H. Yun, Y. Xu, B. Zeng, T. Chilimbi, H. Zhao,
    "Robust Multi-Task Learning with Excess Risks", ICML 2024 (Algorithm 1).

    Args:
        robust_step_size: the step size η of the exponentiated-gradient update (official
            default 1e-2).
        eps: ε inside the square root of the accumulator (official 1e-7).
    """

    name: ClassVar[str] = "excessmtl"
    reference: ClassVar[str] = "He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024"
    cost: ClassVar[str] = "O(T·P) memory-bound passes; (T, P) AdaGrad state"

    def __init__(self, robust_step_size: float = 1e-2, eps: float = 1e-7):
        super().__init__()
        if not robust_step_size >= 0.0:
            raise ValueError(f"robust_step_size must be >= 0, got {robust_step_size}")
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.robust_step_size = float(robust_step_size)
        self.eps = float(eps)
        self.step = 0
        self.grad_sq: Tensor | None = None
        self.reference_risk: Tensor | None = None
        self.log_weights: Tensor | None = None

    def _state(self, jacobian: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dtype = torch.promote_types(jacobian.dtype, torch.float32)
        num_tasks = jacobian.shape[0]
        if self.grad_sq is None or self.grad_sq.shape != jacobian.shape:
            if self.grad_sq is not None and self.step > 0:
                raise ValueError(
                    f"the (tasks, parameters) shape changed from {tuple(self.grad_sq.shape)} "
                    f"to {tuple(jacobian.shape)} mid-run; call balancer.reset() to start over"
                )
            device = jacobian.device
            self.grad_sq = torch.zeros(jacobian.shape, device=device, dtype=dtype)
            self.reference_risk = torch.zeros(num_tasks, device=device, dtype=dtype)
            self.log_weights = torch.zeros(num_tasks, device=device, dtype=dtype)
        elif self.grad_sq.device != jacobian.device:
            self.grad_sq = self.grad_sq.to(jacobian.device)
        assert self.reference_risk is not None and self.log_weights is not None
        if self.reference_risk.device != jacobian.device:
            self.reference_risk = self.reference_risk.to(jacobian.device)
            self.log_weights = self.log_weights.to(jacobian.device)
        return self.grad_sq, self.reference_risk, self.log_weights

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        grad_sq, ref, log_w = self._state(jacobian)
        g = jacobian.to(grad_sq.dtype)
        grad_sq.addcmul_(g, g)
        risk = (g * g / (grad_sq + self.eps).sqrt()).sum(1)
        self.step += 1
        new_ref = (ref == 0) & (risk > 0)
        ref.copy_(torch.where(new_ref, risk, ref))
        if self.step > 1:
            ratio = torch.where(ref > 0, risk / torch.where(ref > 0, ref, 1.0), 0.0)
            log_w.add_(self.robust_step_size * ratio)
            log_w.sub_(log_w.max())  # keeps the log-weights bounded; softmax is unchanged
        weights = jacobian.shape[0] * torch.softmax(log_w, 0)
        w = weights.to(jacobian.dtype)
        torch.mv(jacobian.T, w, out=out)
        return Aggregation(weights=w, task_weights=w)

    def reset(self) -> None:
        self.step = 0
        self.grad_sq = None
        self.reference_risk = None
        self.log_weights = None

    def get_extra_state(self) -> Any:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return {
            "step": self.step,
            "grad_sq": copy(self.grad_sq),
            "reference_risk": copy(self.reference_risk),
            "log_weights": copy(self.log_weights),
        }

    def set_extra_state(self, state: Any) -> None:
        self.step = int(state["step"])
        for key in ("grad_sq", "reference_risk", "log_weights"):
            value = state[key]
            setattr(self, key, None if value is None else value.clone())

    def extra_repr(self) -> str:
        return f"robust_step_size={self.robust_step_size:g}, eps={self.eps:g}"
