"""MoCo: tracked task gradients combined with weights from a projected-gradient step."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .base import Aggregation, GradientAggregator

LambdaUpdate = Literal["projection", "softmax"]


class MoCo(GradientAggregator):
    r"""MoCo (multi-objective gradient with correction), as LibMTL runs it.

    With ``k`` counting steps from 1, ``y_t`` starting at 0 and ``λ`` at ``1/T``::

        h_t = ℓ_t · g_t / (‖g_t‖ + 10⁻⁸)                    (normalize=True; h_t = g_t otherwise)
        y_t ← y_t − β_k (y_t − h_t),               β_k = β / k^σ_β
        λ  ← Π_Δ(λ − γ_k (Y Yᵀ + ρ I) λ),          γ_k = γ / k^σ_γ
        update = Yᵀ λ = Σ_t λ_t y_t

    ``y_t`` tracks the (normalised) task gradient, ``λ`` takes a projected gradient step on
    ``½‖Yᵀλ‖²`` over the simplex Δ (the paper's Algorithm 1). The weights reported are ``λ``;
    they combine the tracked ``y_t``, not the current rows. Task-specific parameters get their
    plain gradients (as LibMTL).

    From LibMTL (built on the authors' code): the normalisation of each gradient to the norm
    of its loss (here ``|ℓ_t|``, so a negative loss cannot flip the direction; losses are the
    raw ones), and the decaying rates ``β/k^σ_β``, ``γ/k^σ_γ``. LibMTL replaces the simplex
    projection by a softmax of the same vector; ``lambda_update="softmax"`` reproduces that,
    the default follows the paper (Euclidean projection). The paper's projection of ``y_t``
    onto a bounded set is omitted (as LibMTL).

    Reference: H. D. Fernando, H. Shen, M. Liu, S. Chaudhury, K. Murugesan, T. Chen,
    "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach",
    ICLR 2023.

    Args:
        beta, beta_sigma: tracking rate β ∈ (0, 1] and its decay exponent σ_β ≥ 0 (0.5, 0.5).
        gamma, gamma_sigma: step γ ≥ 0 of λ and its decay exponent σ_γ ≥ 0 (0.1, 0.5).
        rho: ℓ2 regularisation ρ ≥ 0 of λ's objective (0).
        normalize: rescale each gradient to the norm of its loss first (LibMTL: yes).
        lambda_update: ``"projection"`` onto the simplex (paper) or ``"softmax"`` (LibMTL).
    """

    name: ClassVar[str] = "moco"
    reference: ClassVar[str] = (
        "Fernando et al., Mitigating Gradient Bias in Multi-objective Learning: A Provably "
        "Convergent Approach, ICLR 2023"
    )
    cost: ClassVar[str] = "O(T·P) tracking + Y Yᵀ (O(T²P)); (T, P) state"

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalize: bool = True,
        lambda_update: LambdaUpdate = "projection",
    ):
        super().__init__()
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        if not gamma >= 0.0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        for label, value in (("beta_sigma", beta_sigma), ("gamma_sigma", gamma_sigma)):
            if not value >= 0.0:
                raise ValueError(f"{label} must be >= 0, got {value}")
        if not rho >= 0.0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if lambda_update not in ("projection", "softmax"):
            raise ValueError(
                f"lambda_update must be 'projection' or 'softmax', got {lambda_update!r}"
            )
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma = float(gamma), float(gamma_sigma)
        self.rho = float(rho)
        self.normalize = bool(normalize)
        self.lambda_update: LambdaUpdate = lambda_update
        self.step = 0
        self.tracked: Tensor | None = None  # y, (T, P)
        self.lambd: Tensor | None = None  # λ, (T,)

    def _allocate(self, jacobian: Tensor) -> tuple[Tensor, Tensor]:
        dtype = torch.promote_types(jacobian.dtype, torch.float32)
        num_tasks = jacobian.shape[0]
        if self.tracked is None or self.tracked.shape != jacobian.shape:
            if self.tracked is not None and self.step > 0:
                raise ValueError(
                    f"the (tasks, parameters) shape changed from {tuple(self.tracked.shape)} to "
                    f"{tuple(jacobian.shape)} mid-run; call balancer.reset() to start over"
                )
            self.tracked = torch.zeros(jacobian.shape, device=jacobian.device, dtype=dtype)
            self.lambd = torch.full(
                (num_tasks,), 1.0 / num_tasks, device=jacobian.device, dtype=dtype
            )
        elif self.tracked.device != jacobian.device:
            self.tracked = self.tracked.to(jacobian.device)
            self.lambd = None if self.lambd is None else self.lambd.to(jacobian.device)
        assert self.lambd is not None
        return self.tracked, self.lambd

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        tracked, lambd = self._allocate(jacobian)
        self.step += 1
        k = self.step
        grads = jacobian.to(tracked.dtype)
        if self.normalize:
            norms = torch.linalg.vector_norm(grads, dim=1)
            scale = losses.detach().to(device=grads.device, dtype=grads.dtype).abs()
            grads = grads * (scale / (norms + 1e-8))[:, None]
        beta_k = self.beta / k**self.beta_sigma
        gamma_k = self.gamma / k**self.gamma_sigma
        tracked.lerp_(grads, beta_k)  # y − β_k (y − h)
        gram = tracked @ tracked.T
        step = gram @ lambd
        if self.rho:
            step = step + self.rho * lambd
        moved = lambd - gamma_k * step
        if self.lambda_update == "softmax":
            new = torch.softmax(moved, 0)
        else:
            new = project_to_simplex(moved)
        lambd.copy_(new)
        update = tracked.T @ lambd
        out.copy_(update)
        return Aggregation(weights=lambd.clone().to(jacobian.dtype))

    def reset(self) -> None:
        self.step = 0
        self.tracked = self.lambd = None

    def get_extra_state(self) -> Any:
        return {
            "step": self.step,
            "tracked": None if self.tracked is None else self.tracked.clone(),
            "lambd": None if self.lambd is None else self.lambd.clone(),
        }

    def set_extra_state(self, state: Any) -> None:
        self.step = int(state["step"])
        tracked, lambd = state["tracked"], state["lambd"]
        self.tracked = None if tracked is None else tracked.clone()
        self.lambd = None if lambd is None else lambd.clone()

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta:g}, beta_sigma={self.beta_sigma:g}, gamma={self.gamma:g}, "
            f"gamma_sigma={self.gamma_sigma:g}, rho={self.rho:g}, normalize={self.normalize}, "
            f"lambda_update={self.lambda_update!r}"
        )


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` (T,) onto ``{x ≥ 0, Σx = 1}`` (sort-based, no host sync)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = u.cumsum(0) - 1.0
    index = torch.arange(1, v.shape[0] + 1, device=v.device, dtype=v.dtype)
    support = (u - cumulative / index) > 0  # true for a prefix (at least the first entry)
    last = support.sum().clamp_min(1) - 1
    theta = cumulative.gather(0, last.reshape(1)) / (last + 1).to(v.dtype)
    return (v - theta).clamp_min(0)
