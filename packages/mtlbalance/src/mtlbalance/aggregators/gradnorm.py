"""GradNorm: learn loss weights that equalise the weighted gradient norms' training rates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .base import Aggregation, GradientAggregator


class GradNorm(GradientAggregator):
    r"""Gradient Normalization (GradNorm), with learnable loss weights ``w`` (start at 1).

    Each step, before the weights are used (``ℓ_t(0)``: the raw losses of the first step)::

        w ← T · w / Σ_s w_s                                    (renormalisation)
        G_t = w_t ‖g_t‖,   Ḡ = mean_s G_s
        r_t = (ℓ_t / ℓ_t(0)) / mean_s (ℓ_s / ℓ_s(0))           (relative inverse training rate)
        L_grad = Σ_t |G_t − Ḡ · r_t^α|                         (Ḡ r_t^α held constant)
        w.grad += ∂L_grad / ∂w = sign(G_t − Ḡ r_t^α) · ‖g_t‖
        update = Σ_t w_t g_t

    The weights act as loss weights, so they also scale each task's own parameters'
    gradients (``task_weights``). ``w`` is exposed by ``balancer.parameters()``: give it to an
    optimizer (the paper uses a separate learning rate for it), which steps it with the
    gradient written here; the renormalisation happens at the start of the next step.

    Deviations: the paper differentiates with respect to the last shared layer only (a
    cheap approximation); here ``g_t`` is the whole shared gradient (as LibMTL without
    ``rep_grad``). LibMTL parametrises ``w = T · softmax(s)``, runs plain EW for the first
    epoch and takes ``ℓ(0)`` as the first epoch's mean loss; this class follows the paper
    (direct weights, renormalised; ``ℓ(0)`` from the first step) and, as the paper, lets the
    weights scale the task-specific gradients too (LibMTL does not). Zero initial losses
    count as rate 1; ``r_t`` is clamped at 0 before the power (GradNorm assumes positive
    losses); a difference ``G_t − Ḡ r_t^α`` within rounding of 0 counts as 0 (the subgradient
    of ``|·|`` at 0), so balanced tasks get no push.

    Reference: Z. Chen, V. Badrinarayanan, C.-Y. Lee, A. Rabinovich, "GradNorm: Gradient
    Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

    Args:
        alpha: the restoring force α ≥ 0 (1.5, LibMTL's default and the paper's NYUv2 value).
    """

    name: ClassVar[str] = "gradnorm"
    reference: ClassVar[str] = (
        "Chen et al., GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep "
        "Multitask Networks, ICML 2018"
    )
    cost: ClassVar[str] = "O(T·P) norms; T learnable weights"

    def __init__(self, alpha: float = 1.5):
        super().__init__()
        if not alpha >= 0.0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.register_parameter("weights", None)
        self.initial_losses: Tensor | None = None

    @property
    def loss_weights(self) -> nn.Parameter | None:
        """The learnable weights ``w`` (T,), once the number of tasks is known."""
        w = self._parameters.get("weights")
        return w if isinstance(w, nn.Parameter) else None

    def setup(self, task_names: Sequence[str]) -> None:
        self._ensure(len(task_names))

    def _ensure(self, num_tasks: int) -> nn.Parameter:
        w = self.loss_weights
        if w is None or w.shape[0] != num_tasks:
            if w is not None and self.initial_losses is not None:
                raise ValueError(
                    f"the number of tasks changed from {w.shape[0]} to {num_tasks} mid-run"
                )
            w = nn.Parameter(torch.ones(num_tasks))
            self.weights = w
        return w

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        num_tasks = jacobian.shape[0]
        w = self._ensure(num_tasks)
        dtype = torch.promote_types(jacobian.dtype, torch.float32)
        with torch.no_grad():
            total = w.sum()
            w.copy_(torch.where(total > 0, w * (num_tasks / total), torch.ones_like(w)))
        weights = w.detach().to(device=jacobian.device, dtype=dtype)
        norms = torch.linalg.vector_norm(jacobian, dim=1, dtype=dtype)
        current = losses.detach().to(device=jacobian.device, dtype=dtype)
        if self.initial_losses is None:
            self.initial_losses = current.clone()
        initial = self.initial_losses.to(device=jacobian.device, dtype=dtype)
        ones = torch.ones_like(current)
        rate = torch.where(initial != 0, current / torch.where(initial != 0, initial, ones), ones)
        mean_rate = rate.mean()
        safe_mean = torch.where(mean_rate > 0, mean_rate, torch.ones_like(mean_rate))
        relative = torch.where(mean_rate > 0, rate / safe_mean, ones)
        weighted = weights * norms
        target = weighted.mean() * relative.clamp_min(0) ** self.alpha
        diff = weighted - target
        tol = 16 * torch.finfo(dtype).eps * (weighted.abs() + target.abs())
        sign = torch.where(diff.abs() > tol, torch.sign(diff), torch.zeros_like(diff))
        grad = (sign * norms).to(device=w.device, dtype=w.dtype)
        if w.grad is None:
            w.grad = grad
        else:
            w.grad.add_(grad)
        applied = weights.to(jacobian.dtype)
        torch.mv(jacobian.T, applied, out=out)
        return Aggregation(weights=applied, task_weights=applied)

    def reset(self) -> None:
        w = self.loss_weights
        if w is not None:
            with torch.no_grad():
                w.fill_(1.0)
        self.initial_losses = None

    def get_extra_state(self) -> Any:
        return {
            "initial_losses": None if self.initial_losses is None else self.initial_losses.clone()
        }

    def set_extra_state(self, state: Any) -> None:
        initial = state["initial_losses"]
        self.initial_losses = None if initial is None else initial.clone()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"
