"""MGDA: the minimum-norm convex combination of the task gradients."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from . import _qp
from .base import GramWeighting

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")


def check_normalization(value: str) -> str:
    if value not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {value!r}")
    return value


def mgda_weights(gram: Tensor, losses: Tensor, normalization: str = "none") -> Tensor:
    """Min-norm weights (simplex) of the rows whose Gram matrix is ``gram``, float64 CPU.

    With a normalisation, the min-norm problem is solved for the rows ``g_t / n_t``
    (``n_t`` = ‖g_t‖, ℓ_t or ℓ_t‖g_t‖) and its solution is returned as the weights of the
    original rows (the official code: ``Σ_t w_t ℓ_t`` is back-propagated). No PSD projection
    of G here: :func:`~mtlbalance.aggregators._min_norm.min_norm_weights` factors its
    correlation matrix, which keeps the relative precision of a small task's entries.
    """
    g = _qp.host_gram(gram, psd=False)
    if normalization != "none":
        norms = g.diagonal().clamp_min(0.0).sqrt()
        loss = losses.detach().to(device="cpu", dtype=torch.float64).abs()
        if normalization == "l2":
            n = norms
        elif normalization == "loss":
            n = loss
        else:
            n = loss * norms
        inv = torch.where(n > 0, 1.0 / n.clamp_min(1e-300), torch.zeros_like(n))
        g = inv[:, None] * g * inv[None, :]
    return _qp.min_norm_weights(g)


class MGDA(GramWeighting):
    r"""Multiple-gradient descent: the minimum-norm point of the convex hull of the gradients.

    ::

        w = argmin_{w ≥ 0, Σw = 1} ‖Σ_t w_t g_t‖² = argmin wᵀ G w,     update = Σ_t w_t g_t

    solved exactly from the Gram matrix (Lawson & Hanson's least-distance problem, an NNLS;
    not Frank–Wolfe iterations), also when the gradients' norms differ by many orders of
    magnitude. At
    the solution ``⟨g_t, update⟩ ≥ ‖update‖²`` for every task, with equality where
    ``w_t > 0``: no task's loss increases to first order. The weights act as loss weights
    (the paper back-propagates ``Σ_t w_t ℓ_t``), so they also scale the task-specific
    gradients. Where several weight vectors are optimal (duplicated gradients), the one of
    least norm is returned, so duplicated tasks share their weight equally.

    Reference: O. Sener, V. Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018; J.-A. Désidéri, "Multiple-gradient descent algorithm (MGDA) for
    multiobjective optimization", 2012.

    Args:
        normalization: the official code's optional gradient normalisation before the
            min-norm problem (LibMTL's ``mgda_gn``): ``"none"`` (the paper, default), ``"l2"``
            (``g_t/‖g_t‖``), ``"loss"`` (``g_t/ℓ_t``) or ``"loss+"`` (``g_t/(ℓ_t‖g_t‖)``),
            with ℓ_t the raw (untransformed) loss. The weights then multiply the
            un-normalised gradients, as in the official code (LibMTL instead combines the
            normalised ones).
    """

    name: ClassVar[str] = "mgda"
    reference: ClassVar[str] = (
        "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018"
    )
    cost: ClassVar[str] = "T×T min-norm NNLS (exact; SciPy if installed; host float64, one sync)"
    weights_task_params: ClassVar[bool] = True

    def __init__(self, normalization: Normalization = "none"):
        super().__init__()
        self.normalization = check_normalization(normalization)

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        return _qp.to_like(mgda_weights(gram, losses, self.normalization), gram)

    def extra_repr(self) -> str:
        return f"normalization={self.normalization!r}"
