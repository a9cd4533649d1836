"""Nash-MTL: the Nash bargaining solution among the tasks' gradients."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from . import _qp
from .base import Aggregation, GramWeighting


def nash_weights(gram: Tensor) -> Tensor:
    """α > 0 with ``G α = 1/α`` element-wise (float64 CPU); see
    :func:`mtlbalance.aggregators._qp.power_fixed_point` for the degenerate cases."""
    return _qp.power_fixed_point(_qp.host_gram(gram), 1.0, _qp.gram_eps(gram))


class NashMTL(GramWeighting):
    r"""Nash-MTL: the update is the Nash bargaining solution of the tasks.

    ::

        d = argmax_{‖d‖ ≤ 1} Σ_t log⟨g_t, d⟩   ⇔   d ∝ Σ_t α_t g_t,  α_t (G α)_t = 1,  α > 0
        update = α J, clipped to norm ``max_norm``  (‖αᵀJ‖² = αᵀ G α: from the Gram matrix)

    α minimises the strictly convex ``½ αᵀGα − Σ_t log α_t`` (its gradient is ``Gα − 1/α``),
    solved here by damped Newton to a relative residual of 1e-13 — the exact fixed point the
    paper's sequence of convex approximations (cvxpy/ECOS, ``optim_niter=20``) approaches.
    The weights act as loss weights: the task-specific gradients are scaled by α (not
    clipped, as the official code, which clips only the shared parameters' gradient with
    ``clip_grad_norm_``). The reported weights are the effective ones, after the clip.

    The bargaining problem has a solution iff some direction improves every task. A task
    with a zero gradient is left out of it; if the others admit no common improving direction
    (e.g. exactly opposed gradients), the weights fall back to ``α_t = 1/‖g_t‖`` (the
    solution for orthogonal gradients); see :func:`~mtlbalance.aggregators._qp.power_fixed_point`.
    The official code instead keeps the previous step's α when its solver fails. The weights
    are recomputed every step (the official ``update_weights_every=1``).

    Reference: A. Navon, A. Shamsian, I. Achituve, H. Maron, K. Kawaguchi, G. Chechik,
    E. Fetaya, "Multi-Task Learning as a Bargaining Game", ICML 2022.

    Args:
        max_norm: clip the norm of the shared update to this value (official default 1.0);
            0 disables the clip.
    """

    name: ClassVar[str] = "nashmtl"
    reference: ClassVar[str] = "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022"
    cost: ClassVar[str] = "T×T Newton solve of Gα = 1/α on the host (one sync)"
    weights_task_params: ClassVar[bool] = True

    def __init__(self, max_norm: float = 1.0):
        super().__init__()
        if not max_norm >= 0.0:
            raise ValueError(f"max_norm must be >= 0 (0 disables the clip), got {max_norm}")
        self.max_norm = float(max_norm)

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        return _qp.to_like(nash_weights(gram), gram)

    def weigh(self, gram: Tensor, losses: Tensor) -> Aggregation:
        """α, and the clip of ``‖αᵀJ‖ = sqrt(αᵀ G α)`` folded into the update's weights (the
        task-specific gradients get the unclipped α): a function of the Gram matrix only."""
        w = self.weights_from_gram(gram, losses)
        if self.max_norm <= 0:
            return Aggregation(weights=w, task_weights=w)
        norm = (w @ (gram.to(w.dtype) @ w)).clamp_min(0.0).sqrt()
        factor = _qp.clip_factor(norm, self.max_norm)
        return Aggregation(weights=w * factor, task_weights=w)

    def extra_repr(self) -> str:
        return f"max_norm={self.max_norm:g}"
