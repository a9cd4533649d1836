"""FairGrad: α-fair allocation of the update among the tasks."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from . import _qp
from .base import GramWeighting


def fairgrad_weights(gram: Tensor, alpha: float = 1.0) -> Tensor:
    """w > 0 with ``G w = w^{−1/α}`` element-wise (float64 CPU); see
    :func:`mtlbalance.aggregators._qp.power_fixed_point` for the degenerate cases."""
    return _qp.power_fixed_point(_qp.host_gram(gram), float(alpha), _qp.gram_eps(gram))


class FairGrad(GramWeighting):
    r"""FairGrad: the update maximises the α-fair utility of the tasks' improvements.

    ::

        d = argmax_{‖d‖ ≤ 1} Σ_t u_α(⟨g_t, d⟩),  u_α(x) = x^{1−α}/(1−α)  (log x for α = 1)
          ⇔  d ∝ Σ_t w_t g_t  with  (G w)_t = w_t^{−1/α},  w > 0
        update = w J

    w minimises the strictly convex ``½ wᵀGw − Σ_t φ(w_t)`` with ``φ' = w^{−1/α}`` (its
    gradient is ``Gw − w^{−1/α}``), solved by damped Newton to a relative residual of 1e-13
    (the official code runs ``scipy.optimize.least_squares`` on ``Gw − w^{−1/α}`` from
    ``w = 1/T`` with default tolerances). α = 1 is proportional fairness, the same fixed
    point as Nash-MTL; α → ∞ approaches max-min fairness. As the official code the weights
    combine only the shared gradients (each task's own parameters get its plain gradient);
    that code also multiplies the update by T and clips it to norm 1 — a convention of its
    training harness (the same for every method there), left to ``max_update_norm`` here.
    Degenerate inputs (zero gradients, no common improving direction) get finite weights as
    in :func:`~mtlbalance.aggregators._qp.power_fixed_point`.

    Reference: H. Ban, K. Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.

    Args:
        alpha: the fairness parameter α > 0 (official default 1.0; the paper tunes it per
            benchmark).
    """

    name: ClassVar[str] = "fairgrad"
    reference: ClassVar[str] = (
        "Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024"
    )
    cost: ClassVar[str] = "T×T Newton solve of Gw = w^(−1/α) on the host (one sync)"

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        if not alpha > 0.0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        return _qp.to_like(fairgrad_weights(gram, self.alpha), gram)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"
