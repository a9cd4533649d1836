"""UPGrad: average of the task gradients projected onto the dual cone of all of them."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from . import _qp
from .base import GramWeighting


def upgrad_weights(gram: Tensor, reg_eps: float = 1e-4) -> Tensor:
    """UPGrad weights from the Gram matrix, float64 CPU: ``Σ_t v^(t)`` with
    ``v^(t) = argmin_{v ≥ e_t/T} vᵀ Ĝ v`` and ``Ĝ = G / tr(G) + reg_eps · I``."""
    g = _qp.host_gram(gram)
    n = g.shape[0]
    trace = float(g.diagonal().sum())
    g = g / trace if trace > 0 else torch.zeros_like(g)
    g = g + reg_eps * torch.eye(n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64) / n
    return torch.stack([_qp.dual_cone_weights(g, eye[t]) for t in range(n)]).sum(0)


class UPGrad(GramWeighting):
    r"""UPGrad (unconflicting projection of gradients) of Jacobian descent.

    Each gradient is projected onto the dual cone ``{x : ⟨g_s, x⟩ ≥ 0 ∀s}`` of all the
    gradients, and the projections are averaged::

        π(g_t) = v^(t)ᵀ J,   v^(t) = argmin_{v ≥ e_t} vᵀ G v      (Proposition 1)
        update = (1/T) Σ_t π(g_t),   weights w = (1/T) Σ_t v^(t)

    so ``⟨g_s, update⟩ ≥ 0`` for every task s (exactly with ``reg_eps = 0``). Each projection
    is a small non-negative QP, solved exactly (active set) on the host. As torchjd, the QP
    uses ``G / tr(G) + reg_eps · I``: the regularisation keeps it strictly convex (unique
    weights when gradients repeat); it can leave ``⟨g_s, update⟩`` as low as about
    ``−reg_eps · tr(G) · w_s``. torchjd also replaces G by 0 when ``tr(G) < 1e-4`` (its
    ``norm_eps``), which turns the method into the plain mean for small gradients; here G is
    normalised whenever it is nonzero, so the update does not depend on the gradients' scale.
    The task-specific parameters get their own gradient.

    Reference: P. Quinton, V. Rey, "Jacobian Descent for Multi-Objective Optimization",
    arXiv:2406.16232, 2024 (torchjd's ``UPGrad``).

    Args:
        reg_eps: ridge added to the trace-normalised Gram matrix (torchjd default 1e-4).
    """

    name: ClassVar[str] = "upgrad"
    reference: ClassVar[str] = (
        "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, arXiv:2406.16232"
    )
    cost: ClassVar[str] = "T small T×T non-negative QPs (exact active set, host, one sync)"

    def __init__(self, reg_eps: float = 1e-4):
        super().__init__()
        if not reg_eps >= 0.0:
            raise ValueError(f"reg_eps must be >= 0, got {reg_eps}")
        self.reg_eps = float(reg_eps)

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        return _qp.to_like(upgrad_weights(gram, self.reg_eps), gram)

    def extra_repr(self) -> str:
        return f"reg_eps={self.reg_eps:g}"
