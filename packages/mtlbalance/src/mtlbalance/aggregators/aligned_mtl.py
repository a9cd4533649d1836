"""Aligned-MTL: align the task gradients into an orthogonal system of equal magnitudes."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from . import _qp
from .base import GramWeighting


def balance_matrix(gram: Tensor) -> Tensor:
    """Aligned-MTL's ``B = sqrt(λ_R) V Λ^{-1/2} Vᵀ`` (float64 CPU, ``T × T``).

    ``G = V Λ Vᵀ`` restricted to the eigenvalues above the official tolerance
    ``max λ · T · eps(float32)`` (rank R); λ_R is the smallest of them. The aligned gradients
    ``B J`` have Gram matrix ``B G B = λ_R · V_R V_Rᵀ``: orthogonal, all of norm
    ``sqrt(λ_R)`` in the span of the gradients (condition number 1). A zero G gives
    ``B = I``.
    """
    g = _qp.host_gram(gram, psd=False)
    n = g.shape[0]
    lam, vec = torch.linalg.eigh(g)
    tol = float(lam.max()) * n * float(torch.finfo(torch.float32).eps)
    keep = lam > tol
    if not bool(keep.any()) or not float(lam.max()) > 0:
        return torch.eye(n, dtype=torch.float64)
    lam, vec = lam[keep], vec[:, keep]
    smallest = float(lam.min())
    return smallest**0.5 * (vec * lam.rsqrt()) @ vec.T


class AlignedMTL(GramWeighting):
    r"""Aligned-MTL: make the gradient system orthogonal and equal in magnitude, then sum.

    ::

        G = J Jᵀ = V Λ Vᵀ,   B = sqrt(λ_min) V Λ^{-1/2} Vᵀ,   Ĵ = B J   (Ĵ Ĵᵀ = λ_min I)
        update = Σ_t ĵ_t = (B 1)ᵀ J                      (weights w = B 1)

    The aligned matrix Ĵ has condition number 1 (its nonzero singular values all equal
    ``sqrt(λ_min)``, the "min" scale of the paper). Rank-deficient G: directions whose
    eigenvalue is below ``max λ · T · eps(float32)`` are dropped (the official tolerance), so
    λ_min is the smallest kept eigenvalue and nothing is divided by zero; an all-zero G gives
    the plain sum. The update is the sum of the aligned gradients (unit pre-weights), as the
    official code and LibMTL. The task-specific parameters get their own gradient (the
    official ``scale_decoder_grad=False``). No hyperparameters.

    Reference: D. Senushkin, N. Patakin, A. Kuznetsov, A. Konushin, "Independent Component
    Alignment for Multi-Task Learning", CVPR 2023 (Algorithm 1).
    """

    name: ClassVar[str] = "aligned_mtl"
    reference: ClassVar[str] = (
        "Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023"
    )
    cost: ClassVar[str] = "T×T eigendecomposition on the host (one sync)"

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        b = balance_matrix(gram)
        return _qp.to_like(b.sum(1), gram)
