"""Small exact solvers shared by the Gram-matrix methods (private).

Everything here works on ``T × T`` matrices (T = number of tasks, small) in float64 on the
CPU: callers copy the Gram matrix there with :func:`host_gram` (one small device-to-host
copy per step) and move the resulting weights back with :func:`to_like`.

* :func:`nnls_gram` — ``argmin_{x ≥ 0} ½ xᵀQx − bᵀx`` (Lawson–Hanson active set);
* :func:`min_norm_weights` — the minimum-norm point of the convex hull of the rows of J
  (MGDA), exactly, from ``G = J Jᵀ`` (in :mod:`._min_norm`);
* :func:`dual_cone_weights` — the projection of ``uᵀJ`` onto the dual cone of the rows
  (UPGrad);
* :func:`power_fixed_point` — the positive solution of ``G w = w^{−1/α}`` (Nash-MTL for
  α = 1, FairGrad), by damped Newton on a strictly convex potential;
* :func:`clip_factor` — ``torch.nn.utils.clip_grad_norm_``'s factor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._min_norm import min_norm_weights

_F64 = torch.float64


def host_gram(gram: Tensor, *, psd: bool = True) -> Tensor:
    """A float64 CPU copy of a Gram matrix, symmetrised and (``psd=True``) with the slightly
    negative eigenvalues that rounding can leave clamped to zero."""
    g = gram.detach().to(device="cpu", dtype=_F64)
    g = 0.5 * (g + g.T)
    if psd and g.shape[0] > 1:
        lam, vec = torch.linalg.eigh(g)
        if bool((lam < 0).any()):
            g = (vec * lam.clamp_min(0.0)) @ vec.T
            g = 0.5 * (g + g.T)
    return g


def to_like(weights: Tensor, like: Tensor) -> Tensor:
    """``weights`` on ``like``'s device, in ``like``'s dtype."""
    return weights.to(device=like.device, dtype=like.dtype)


def gram_eps(gram: Tensor) -> float:
    """Machine epsilon of the precision the Gram matrix was computed in (float32 at least)."""
    dtype = gram.dtype if gram.dtype in (torch.float32, torch.float64) else torch.float32
    return float(torch.finfo(dtype).eps)


def _lstsq(q: Tensor, b: Tensor) -> Tensor:
    """Minimum-norm least-squares solution of ``q z = b`` (robust to a singular ``q``)."""
    if q.shape[0] == 1:
        d = float(q[0, 0])
        return b / d if d > 0 else torch.zeros_like(b)
    return torch.linalg.lstsq(q, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)


def nnls_gram(q: Tensor, b: Tensor, *, max_iter: int | None = None) -> Tensor:
    """``argmin_{x ≥ 0} ½ xᵀ Q x − bᵀ x`` for a symmetric positive semi-definite ``Q``.

    Lawson–Hanson's active-set method written on the normal equations (``Q = AᵀA``,
    ``b = Aᵀy`` for NNLS ``min ‖Ax − y‖``): exact up to rounding, finite, a handful of
    ``|P| × |P|`` solves for a ``T × T`` problem. ``q`` and ``b`` are float64 CPU tensors.
    """
    n = q.shape[0]
    scale = max(float(q.diagonal().abs().max()), float(b.abs().max()), 1e-300)
    tol = 1e-13 * scale
    limit = max_iter if max_iter is not None else 10 * n + 30
    x = torch.zeros(n, dtype=_F64)
    passive = torch.zeros(n, dtype=torch.bool)
    blocked = torch.zeros(n, dtype=torch.bool)
    neg_grad = b - q @ x
    it = 0
    while it < limit:
        candidates = ~passive & ~blocked & (neg_grad > tol)
        if not bool(candidates.any()):
            break
        j = int(torch.where(candidates, neg_grad, torch.full_like(neg_grad, -math.inf)).argmax())
        passive[j] = True
        while it < limit:
            it += 1
            idx = passive.nonzero().squeeze(1)
            z = torch.zeros(n, dtype=_F64)
            z[idx] = _lstsq(q[idx][:, idx], b[idx])
            bad = passive & (z <= 0)
            if not bool(bad.any()):
                x = z
                blocked.zero_()
                break
            ratio = x[bad] / (x[bad] - z[bad])
            step = float(ratio.min())
            x = x + step * (z - x)
            drop = passive & (x <= 1e-15 * float(x.abs().max().clamp_min(1e-300)))
            if step <= 0.0 and int(drop.sum()) == 1 and bool(drop[j]):
                # Rounding made the entering variable infeasible at once: keep it out until x
                # moves (exact arithmetic never gets here).
                blocked[j] = True
            x[drop] = 0.0
            passive &= ~drop
        neg_grad = b - q @ x
    return x.clamp_min(0.0)


def dual_cone_weights(gram: Tensor, u: Tensor) -> Tensor:
    """``v = argmin_{v ≥ u} vᵀ G v``: then ``vᵀJ`` is the projection of ``uᵀJ`` onto the dual
    cone ``{x : J x ≥ 0}`` of the rows (Quinton & Rey, Proposition 1). float64 CPU."""
    return u + nnls_gram(gram, -(gram @ u))


def _potential(w: Tensor, gram: Tensor, alpha: float) -> float:
    """``½ wᵀGw − Σ φ(w_t)`` with ``φ' = w^{−1/α}``."""
    quad = 0.5 * float(w @ (gram @ w))
    if alpha == 1.0:
        return quad - float(torch.log(w).sum())
    p = 1.0 - 1.0 / alpha
    return quad - float((w.pow(p) / p).sum())


def _newton_fixed_point(gram: Tensor, alpha: float, max_iter: int) -> Tensor:
    """Positive minimiser of the strictly convex ``½ wᵀGw − Σ φ(w_t)`` (gradient
    ``G w − w^{−1/α}``), for a G of unit largest diagonal entry whose rows admit a common
    ascent direction (so the minimiser exists)."""
    expo = alpha / (alpha + 1.0)
    w = gram.diagonal().clamp_min(1e-300).pow(-expo)  # exact for orthogonal rows
    a = float(w @ (gram @ w))
    bsum = float(w.pow(1.0 - 1.0 / alpha).sum())
    if a > 0:
        w = w * (bsum / a) ** expo  # best multiple of the start

    def residual(x: Tensor) -> float:
        return float(((gram @ x) * x.pow(1.0 / alpha) - 1.0).abs().max())

    f = _potential(w, gram, alpha)
    res = residual(w)
    for _ in range(max_iter):
        if res < 1e-13:
            break
        inv = w.pow(-1.0 / alpha)
        grad = gram @ w - inv
        hess = gram + torch.diag(inv / (alpha * w))
        step = torch.linalg.solve(hess, grad)
        decrement = float(grad @ step)
        if not decrement > 0:
            break
        t = 1.0
        pos = step > 0
        if bool(pos.any()):
            t = min(1.0, 0.99 * float((w[pos] / step[pos]).min()))
        improved = False
        while t > 1e-20:
            cand = w - t * step
            fc, rc = _potential(cand, gram, alpha), residual(cand)
            # Armijo; near the solution f is flat to rounding, then the residual decides
            flat = fc <= f + 1e-13 * (abs(f) + 1.0) and rc < res
            if fc <= f - 1e-4 * t * decrement or flat:
                w, f, res, improved = cand, fc, rc, True
                break
            t *= 0.5
        if not improved:
            break
    return w


def power_fixed_point(gram: Tensor, alpha: float, eps: float, *, max_iter: int = 200) -> Tensor:
    """The positive solution of ``G w = w^{−1/α}`` (element-wise), float64 CPU.

    It is the minimiser of the strictly convex ``½ wᵀGw − Σ_t φ(w_t)`` with ``φ' = w^{−1/α}``
    (``log`` for α = 1: Nash-MTL's bargaining solution), found by damped Newton to a relative
    residual of 1e-13. The problem is solved on ``G / max_t G_tt`` and rescaled
    (``w ∝ (max_t G_tt)^{−α/(α+1)}``).

    It has a solution iff some direction d has ``⟨g_t, d⟩ > 0`` for every task (Gordan).
    Where not, weights stay finite:

    * a task with a zero gradient (``G_tt ≤ eps² · max G``) has no say in the solution; it
      gets the weight a task with the largest gradient, orthogonal to the others, would get;
    * if the remaining gradients admit no common ascent direction (their min-norm convex
      combination has ``‖·‖² ≤ 100 eps · max G_tt``, ``eps`` the Gram's machine epsilon), every
      task gets its orthogonal-gradients weight ``G_tt^{−α/(α+1)}``.
    """
    n = gram.shape[0]
    expo = alpha / (alpha + 1.0)
    diag = gram.diagonal()
    top = float(diag.max())
    if not top > 0:
        return torch.ones(n, dtype=_F64)
    g = gram / top
    unit = top ** (-expo)
    live = g.diagonal() > eps * eps
    w = torch.ones(n, dtype=_F64)  # dead tasks: the largest task's orthogonal weight
    idx = live.nonzero().squeeze(1)
    sub = g[idx][:, idx]
    mgda = min_norm_weights(sub)
    if float(mgda @ (sub @ mgda)) <= 100.0 * eps:
        w[idx] = sub.diagonal().pow(-expo)
    else:
        w[idx] = _newton_fixed_point(sub, alpha, max_iter)
    return w * unit


def clip_factor(norm: Tensor, max_norm: float) -> Tensor:
    """``min(1, max_norm / (‖update‖ + 1e-6))``, as ``torch.nn.utils.clip_grad_norm_``."""
    return (max_norm / (norm + 1e-6)).clamp(max=1.0)
