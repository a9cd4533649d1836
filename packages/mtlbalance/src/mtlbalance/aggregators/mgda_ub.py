"""MGDA-UB: MGDA on the gradients at the shared representation (an upper bound)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from . import _qp
from .base import RepresentationWeighting, gram_matrix
from .mgda import Normalization, check_normalization, mgda_weights


class MGDAUB(RepresentationWeighting):
    r"""MGDA-UB: the min-norm weights of the gradients at the shared representation z.

    ::

        w = argmin_{w ≥ 0, Σw = 1} ‖Σ_t w_t ∇_z ℓ̃_t‖²,     then one backward of Σ_t w_t ℓ̃_t

    Minimising this upper bound of MGDA's objective needs the ``(T, R)`` gradients at z
    (rows flattened over the whole batch, as the official code) instead of the ``(T, P)``
    gradients of the shared parameters. Needs ``balancer.backward(losses, representation=z)``;
    the balancer raises otherwise. The weights act as loss weights everywhere.

    Reference: O. Sener, V. Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018 (Section 3.3, MGDA-UB).

    Args:
        normalization: as :class:`~mtlbalance.aggregators.mgda.MGDA` (``"none"`` default).
    """

    name: ClassVar[str] = "mgda_ub"
    reference: ClassVar[str] = (
        "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018 "
        "(MGDA-UB)"
    )
    cost: ClassVar[str] = "T×T Gram of the (T, R) representation gradients + min-norm QP (host)"

    def __init__(self, normalization: Normalization = "none"):
        super().__init__()
        self.normalization = check_normalization(normalization)

    def forward(self, rep_jacobian: Tensor, *, losses: Tensor) -> Tensor:
        gram = gram_matrix(rep_jacobian.detach())
        return _qp.to_like(mgda_weights(gram, losses, self.normalization), gram)

    def extra_repr(self) -> str:
        return f"normalization={self.normalization!r}"
