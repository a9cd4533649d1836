"""CAGrad: the update that maximises the worst task's improvement near the mean gradient."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._solvers import require_scipy
from . import _qp
from .base import GramWeighting

_RESCALE = {0: lambda c: 1.0, 1: lambda c: 1.0 + c * c, 2: lambda c: 1.0 + c}


def cagrad_weights(gram: Tensor, c: float = 0.4, rescale: int = 1) -> Tensor:
    """CAGrad's update ``d = vᵀJ`` as the weights v of the rows (float64 CPU).

    Dual: ``w = argmin_{w ∈ simplex} wᵀ G b + c ‖g0‖ sqrt(wᵀ G w)`` (``b = 1/T``,
    ``‖g0‖ = sqrt(bᵀGb)``) by SciPy's SLSQP from ``w = b`` (as the official code), on G
    divided by its largest diagonal entry (the weights do not depend on the scale); then
    ``v = (b + c ‖g0‖ / ‖g_w‖ · w) / rescale_factor`` (``‖g_w‖`` floored at
    ``sqrt(100 eps)`` relative, eps the Gram's machine epsilon).
    """
    opt = require_scipy("cagrad")
    import numpy as np

    g = _qp.host_gram(gram)
    eps = _qp.gram_eps(gram)
    n = g.shape[0]
    b = torch.full((n,), 1.0 / n, dtype=torch.float64)
    top = float(g.diagonal().max())
    v = b.clone()
    if top > 0:
        g = g / top
        radius = c * math.sqrt(max(float(b @ (g @ b)), 0.0))  # c ‖g0‖
        if radius > 0:
            a = g.numpy()
            gb = a @ b.numpy()
            delta = 1e-16  # smooths sqrt at g_w = 0 (relative: G is normalised)

            def fun(x: Any) -> float:
                return float(x @ gb + radius * np.sqrt(x @ a @ x + delta))

            def jac(x: Any) -> Any:
                return gb + radius * (a @ x) / np.sqrt(x @ a @ x + delta)

            res = opt.minimize(
                fun,
                b.numpy(),
                jac=jac,
                method="SLSQP",
                bounds=[(0.0, 1.0)] * n,
                constraints=[
                    {"type": "eq", "fun": lambda x: 1.0 - x.sum(), "jac": lambda x: -np.ones(n)}
                ],
                options={"ftol": 1e-15, "maxiter": 500},
            )
            w = torch.from_numpy(np.asarray(res.x, dtype=np.float64)).clamp_min(0.0)
            total = float(w.sum())
            w = w / total if total > 0 else b.clone()
            w = _polish(g, g @ b, radius, w)
            gw_norm = math.sqrt(max(float(w @ (g @ w)), 0.0))
            # ‖g_w‖ from a Gram matrix is only known to about sqrt(eps) (relative): below
            # that, cap the step along g_w (‖d − g0‖ < c‖g0‖ then, still feasible and, the
            # objective being concave along the segment, still no worse than g0).
            lam = radius / max(gw_norm, math.sqrt(100.0 * eps))
            v = b + lam * w
    return v / _RESCALE[rescale](c)


def _polish(g: Tensor, p: Tensor, radius: float, w: Tensor, steps: int = 8) -> Tensor:
    """Newton steps on the KKT system of the dual on SLSQP's support S::

        p_S + radius (G w)_S / ‖g_w‖ = ν 1,   1ᵀ w_S = 1

    (SLSQP stops near 1e-6 relative; this makes the weights exact to rounding, and
    permutation-equivariant to rounding). Kept only if it stays feasible, satisfies the KKT
    conditions off S (``∇_t ≥ ν``) and does not increase the dual objective."""
    n = g.shape[0]
    support = w > 1e-9
    idx = support.nonzero().squeeze(1)
    k = int(idx.numel())

    def objective(x: Tensor) -> float:
        return float(p @ x) + radius * math.sqrt(max(float(x @ (g @ x)), 0.0))

    x = w.clone()
    nu = 0.0
    for _ in range(steps):
        gx = g @ x
        norm = math.sqrt(max(float(x @ gx), 0.0))
        if not norm > 1e-12:
            return w
        grad = p + radius * gx / norm
        nu = float(grad[idx].mean()) if k else 0.0
        resid = torch.cat([grad[idx] - nu, (x[idx].sum() - 1.0).reshape(1)])
        if float(resid.abs().max()) < 1e-15:
            break
        hess = radius / norm * (g[idx][:, idx] - torch.outer(gx[idx], gx[idx]) / norm**2)
        system = torch.zeros(k + 1, k + 1, dtype=torch.float64)
        system[:k, :k] = hess
        system[:k, k] = -1.0
        system[k, :k] = 1.0
        rhs = -torch.cat([grad[idx], (x[idx].sum() - 1.0).reshape(1)])
        delta = torch.linalg.lstsq(system, rhs.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        x = x.clone()
        x[idx] = x[idx] + delta[:k]
        if not bool((x[idx] > 0).all()):
            return w
    gx = g @ x
    norm = math.sqrt(max(float(x @ gx), 0.0))
    if not norm > 1e-12:
        return w
    grad = p + radius * gx / norm
    nu = float(grad[idx].mean())
    tol = 1e-10 * (float(grad.abs().max()) + 1e-300)
    if float((grad[idx] - nu).abs().max()) > tol or bool((grad[~support] < nu - tol).any()):
        return w
    if objective(x) > objective(w) + 1e-14 * (abs(objective(w)) + 1.0):
        return w
    return x / x.sum() if n else x


class CAGrad(GramWeighting):
    r"""Conflict-averse gradient descent.

    ::

        d* = argmax_d min_t ⟨g_t, d⟩   s.t.  ‖d − g0‖ ≤ c ‖g0‖,      g0 = (1/T) Σ_t g_t
           = g0 + c ‖g0‖ g_w / ‖g_w‖,   g_w = Σ_t w_t g_t,
        w  = argmin_{w ∈ simplex} g_wᵀ g0 + c ‖g0‖ ‖g_w‖          (the dual, T-dimensional)
        update = d* / (1 + c²)                                   (official ``rescale=1``)

    The dual is solved with SciPy's SLSQP from uniform weights, as the official code (with
    the analytic gradient and tight tolerances, on the Gram matrix normalised by its largest
    entry — the official code adds absolute 1e-8 terms that make the radius depend on the
    gradients' scale). The weights returned are those of the rows: ``d = vᵀJ`` with
    ``v = (1/T + c‖g0‖/‖g_w‖ · w) / (1 + c²)``. Only the shared update is changed (the
    task-specific parameters get their own gradient). ``g0 = 0`` gives ``d = 0``.

    Reference: B. Liu, X. Liu, X. Jin, P. Stone, Q. Liu, "Conflict-Averse Gradient Descent
    for Multi-task Learning", NeurIPS 2021 (Algorithm 1).

    Args:
        c: radius of the ball around the mean gradient, relative to its norm (the paper's
            c = 0.4 on NYUv2/Cityscapes; LibMTL's default is 0.5).
        rescale: divide the update by ``1`` (0), ``1 + c²`` (1, official default) or
            ``1 + c`` (2).
    """

    name: ClassVar[str] = "cagrad"
    reference: ClassVar[str] = (
        "Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021"
    )
    cost: ClassVar[str] = "T-dim SLSQP (SciPy) on the host (one sync)"

    def __init__(self, c: float = 0.4, rescale: int = 1):
        super().__init__()
        if not c >= 0.0:
            raise ValueError(f"c must be >= 0, got {c}")
        if rescale not in _RESCALE:
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
        require_scipy("cagrad")
        self.c = float(c)
        self.rescale = int(rescale)

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        return _qp.to_like(cagrad_weights(gram, self.c, self.rescale), gram)

    def extra_repr(self) -> str:
        return f"c={self.c:g}, rescale={self.rescale}"
