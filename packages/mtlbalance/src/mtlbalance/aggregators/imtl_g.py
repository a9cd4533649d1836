"""IMTL-G: weights whose combination projects equally onto every task's direction."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from . import _qp
from .base import GramWeighting


def imtl_g_weights(gram: Tensor) -> Tensor:
    """IMTL-G weights (summing to 1) from the Gram matrix, float64 CPU.

    Solves ``⟨d, u_t⟩ = s`` for every task (``d = Σ_k α_k g_k``, ``u_t = g_t/‖g_t‖``) and
    ``Σ_k α_k = 1``: the ``(T+1) × (T+1)`` system ``[N G, −1; 1ᵀ, 0] [α; s] = [0; 1]`` with
    ``N = diag(1/‖g_t‖)``, by minimum-norm least squares. It treats every task alike, so the
    weights are permutation-equivariant, and gives the paper's closed form
    ``α_{2:T} = g_1 Uᵀ (D Uᵀ)^{-1}`` whenever the gradients are linearly independent.
    """
    g = _qp.host_gram(gram, psd=False)
    n = g.shape[0]
    top = float(g.diagonal().max())
    if not top > 0:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    g = g / top
    norms = g.diagonal().clamp_min(0.0).sqrt()
    eps = _qp.gram_eps(gram)
    live = norms > eps  # a zero gradient has no direction: weight 0, no equation
    idx = live.nonzero().squeeze(1)
    k = int(idx.numel())
    sub = g[idx][:, idx]
    system = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    system[:k, :k] = sub / norms[idx][:, None]
    system[:k, k] = -1.0
    system[k, :k] = 1.0
    rhs = torch.zeros(k + 1, dtype=torch.float64)
    rhs[k] = 1.0
    rcond = 10.0 * (k + 1) * eps
    sol = torch.linalg.lstsq(system, rhs.unsqueeze(1), rcond=rcond, driver="gelsd").solution
    alpha = torch.zeros(n, dtype=torch.float64)
    alpha[idx] = sol.squeeze(1)[:k]
    return alpha


class IMTLG(GramWeighting):
    r"""IMTL-G: the update has the same projection onto every task's gradient direction.

    ::

        d = Σ_t α_t g_t,   Σ_t α_t = 1,   ⟨d, g_t/‖g_t‖⟩ equal for all t

    The paper's closed form is ``α_{2:T} = g_1 Uᵀ (D Uᵀ)^{-1}``, ``α_1 = 1 − Σ α_{2:T}``,
    with rows ``D_t = g_1 − g_t`` and ``U_t = u_1 − u_t`` (``u_t = g_t/‖g_t‖``); here the
    same conditions are solved symmetrically from the Gram matrix (``⟨g_s, u_t⟩ =
    G_st/‖g_t‖``) by minimum-norm least squares, so identical or opposed gradients give
    finite weights instead of a singular inverse, and a task with a zero gradient gets
    weight 0. The weights may be negative. No hyperparameters. IMTL-G weights only the
    shared update (the task-specific parameters get their own gradient), as LibMTL.

    Reference: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao, W. Zhang,
    "Towards Impartial Multi-task Learning", ICLR 2021 (Section 3.2).
    """

    name: ClassVar[str] = "imtl_g"
    reference: ClassVar[str] = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021"
    cost: ClassVar[str] = "(T+1)×(T+1) least squares on the host (one sync)"

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        return _qp.to_like(imtl_g_weights(gram), gram)
