"""The minimum-norm point of the convex hull of the task gradients, from their Gram matrix
(private; MGDA, MGDA-UB and the bargaining methods' fallbacks use it).

``w = argmin_{w ∈ simplex} wᵀ G w`` is solved as Lawson & Hanson's *least-distance* problem
(their Chapter 23)::

    u = argmin_{u ≥ 0} ‖[A; γ 1ᵀ] u − γ e‖²,     w = u / Σu,     AᵀA = G

whose KKT conditions are ``(G u)_t ≥ γ² (1 − Σu)`` with equality where ``u_t > 0``, i.e.
MGDA's ``(G w)_t ≥ wᵀ G w`` (equality on the support). Two things keep it exact when the
gradients' norms differ by many orders of magnitude (a Gram diagonal spanning 10¹⁶):

* the factor ``A`` is taken from the correlation matrix ``D⁻¹ G D⁻¹`` (``D = diag √G_tt``),
  whose entries are all of order one, and scaled back column by column: a small task's
  entries keep their relative precision (an eigendecomposition of G itself would round
  them away);
* the constraint row's weight ``γ`` is set to the size of the answer (``γ² ≈ wᵀGw``, found
  in a few solves): with ``γ = 1`` the optimal ``Σu`` is ``1/(1 + wᵀGw)``, and a tiny
  ``wᵀGw`` would drown in the rounding of ``1 − Σu``.

No ridge: the support is that of the exact problem. The NNLS itself is SciPy's where SciPy
is installed (``mtlbalance[solvers]``; imported on first use), else :func:`nnls` below (the
same algorithm in torch). Where several weight vectors give the same point (duplicated
tasks, the origin inside the hull), the one of least norm is returned, so duplicates share
their weight equally and the weights permute with the tasks.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .._solvers import optional_scipy

_F64 = torch.float64
_EPS = float(torch.finfo(_F64).eps)
Solver = Literal["auto", "scipy", "torch"]


def gram_factor(gram: Tensor) -> Tensor:
    """``A`` (T × T, float64) with ``AᵀA = G``, accurate for each column's own scale.

    ``G = D C D`` with ``C`` the correlation matrix; ``C = V Λ Vᵀ`` (eigenvalues within the
    rounding of the decomposition, negative ones included, set to 0), ``A = Λ^{1/2} Vᵀ D``.
    A zero diagonal entry gives a zero column."""
    d = gram.diagonal().clamp_min(0.0).sqrt()
    inv = torch.where(d > 0, 1.0 / d.clamp_min(1e-300), torch.zeros_like(d))
    corr = inv[:, None] * gram * inv[None, :]
    lam, vec = torch.linalg.eigh(0.5 * (corr + corr.T))
    # eigenvalues at the rounding level of eigh (ε ‖C‖) are zero: their square roots would
    # put √ε-sized noise into A
    noise = 10.0 * lam.shape[0] * _EPS * float(lam.abs().max())
    lam = torch.where(lam > noise, lam, torch.zeros_like(lam))
    return (lam.sqrt()[:, None] * vec.T) * d[None, :]


def nnls(a: Tensor, b: Tensor, *, max_iter: int | None = None) -> Tensor:
    """``argmin_{x ≥ 0} ‖a x − b‖`` (Lawson & Hanson's algorithm NNLS, float64 CPU).

    Each passive-set step solves a least-squares problem on the passive columns of ``a``,
    equilibrated to unit norm (so a column's scale does not decide what the solve treats as
    rank-deficient), not on the normal equations. A column enters when its dual exceeds a
    tolerance of its own scale."""
    m, n = a.shape
    tol = 10.0 * _EPS * max(m, n) * a.abs().sum(0) * max(float(b.abs().sum()), 1e-300)
    limit = max_iter if max_iter is not None else 3 * n + 30
    x = torch.zeros(n, dtype=_F64)
    passive = torch.zeros(n, dtype=torch.bool)
    blocked = torch.zeros(n, dtype=torch.bool)
    dual = a.T @ (b - a @ x)
    it = 0
    while it < limit:
        candidates = ~passive & ~blocked & (dual > tol)
        if not bool(candidates.any()):
            break
        j = int(torch.where(candidates, dual, torch.full_like(dual, -math.inf)).argmax())
        passive[j] = True
        while it < limit:
            it += 1
            idx = passive.nonzero().squeeze(1)
            z = torch.zeros(n, dtype=_F64)
            cols = a[:, idx]
            unit = cols.norm(dim=0).clamp_min(1e-300)
            sol = torch.linalg.lstsq(cols / unit, b.unsqueeze(1), driver="gelsd").solution
            z[idx] = sol.squeeze(1) / unit
            bad = passive & (z <= 0)
            if not bool(bad.any()):
                x = z
                blocked.zero_()
                break
            step = float((x[bad] / (x[bad] - z[bad])).min())
            x = x + step * (z - x)
            drop = passive & (x <= 10.0 * _EPS * float(x.abs().max().clamp_min(1e-300)))
            if step <= 0.0 and int(drop.sum()) == 1 and bool(drop[j]):
                blocked[j] = True  # rounding made the entering column infeasible at once
            x[drop] = 0.0
            passive &= ~drop
        dual = a.T @ (b - a @ x)
    return x.clamp_min(0.0)


def _solve_nnls(m: Tensor, e: Tensor, solver: Solver) -> Tensor:
    opt = optional_scipy() if solver != "torch" else None
    if solver == "scipy" and opt is None:
        raise ImportError(
            "the SciPy solver was asked for but SciPy is not installed: "
            "pip install 'mtlbalance[solvers]'"
        )
    if opt is not None:
        try:
            u, _ = opt.nnls(m.numpy(), e.numpy(), maxiter=50 * m.shape[1])
            return torch.from_numpy(u).to(_F64)
        except RuntimeError:  # pragma: no cover - SciPy's iteration limit: the torch solver
            if solver == "scipy":  # still answers
                raise
    return nnls(m, e)


def _at_origin(a: Tensor, w: Tensor) -> bool:
    """The point ``Σ_t w_t a_t`` is 0 up to its rounding (the hull contains the origin)."""
    return float((a @ w).norm()) <= 100.0 * _EPS * float(w @ a.norm(dim=0))


def _least_distance(a: Tensor, solver: Solver) -> Tensor:
    """The simplex weights of the least-distance problem, with the constraint row's weight
    γ² adapted to ``wᵀGw`` (at most four NNLS solves; one when ``wᵀGw`` is not small)."""
    n = a.shape[1]
    ones = torch.ones(1, n, dtype=_F64)
    e = torch.zeros(a.shape[0] + 1, dtype=_F64)
    e[-1] = 1.0
    gamma2 = 1.0
    w = torch.full((n,), 1.0 / n, dtype=_F64)
    for _ in range(4):
        u = _solve_nnls(torch.cat([a / math.sqrt(gamma2), ones]), e, solver)
        total = float(u.sum())
        if not total > 0:  # pragma: no cover - the KKT conditions rule it out
            break
        w = u / total
        value = float((a @ w).square().sum())
        if _at_origin(a, w) or not value < 0.1 * gamma2:
            break
        gamma2 = value
    return w


def _kkt_residual(g: Tensor, w: Tensor) -> float:
    """``max_t max(v − (Gw)_t, 0)`` and ``|(Gw)_t − v|`` on the support, relative to
    ``v = wᵀGw`` (0 when ``v = 0``)."""
    gw = g @ w
    value = float(w @ gw)
    if not value > 0:
        return 0.0
    low = float((value - gw).clamp_min(0.0).max())
    on = w > 0
    eq = float((gw[on] - value).abs().max()) if bool(on.any()) else 0.0
    return max(low, eq) / value


def _least_norm_among_optimal(g: Tensor, a: Tensor, w: Tensor, solver: Solver) -> Tensor:
    """Where several weight vectors give the optimal point ``Aw`` (duplicated tasks, rows
    that are affinely dependent, the origin inside the hull), the one of least norm: among
    the tasks whose KKT condition holds with equality, ``min ‖w‖²`` subject to ``w ≥ 0``,
    ``Aw = point``, ``Σw = 1``, as an NNLS with the equalities weighted by ``10⁸`` (strictly
    convex: unique, so duplicated tasks share their weight equally and the weights permute
    with the tasks), then the equalities solved exactly on the support found. Kept only if
    it gives the same point and satisfies the KKT conditions as well as ``w``."""
    n = g.shape[0]
    norms = a.norm(dim=0)
    origin = _at_origin(a, w)
    if origin:  # u* = 0: ⟨g_t, u*⟩ = ‖u*‖² = 0 for every task
        idx = torch.arange(n)
        point = torch.zeros_like(a[:, 0])
    else:
        gw = g @ w
        value = float(w @ gw)
        spread = g.abs() @ w
        floor = 100.0 * _EPS * (spread + float(w @ spread))  # the rounding of (Gw)_t − wᵀGw
        idx = ((gw - value) <= 1e-9 * abs(value) + floor).nonzero().squeeze(1)
        point = a @ w
    k = int(idx.numel())
    if k <= 1:
        return w
    equal = torch.cat([a[:, idx], torch.ones(1, k, dtype=_F64)])  # equal @ w_S = target
    target = torch.cat([point, torch.ones(1, dtype=_F64)])
    if int(torch.linalg.matrix_rank(equal / equal.norm(dim=0).clamp_min(1e-300))) == k:
        return w  # the optimal weights are unique
    weight = 1e8
    system = torch.cat([weight * equal, torch.eye(k, dtype=_F64)])
    rhs = torch.cat([weight * target, torch.zeros(k, dtype=_F64)])
    x = _solve_nnls(system, rhs, solver)
    # the penalty leaves the equalities off by ~1/weight²: solve them exactly on the support
    # found (there, the least-norm solution of the equalities is the optimum)
    on = x > 0
    if not bool(on.any()):
        return w
    sol = torch.linalg.lstsq(equal[:, on], target.unsqueeze(1), driver="gelsd").solution
    cand = torch.zeros(n, dtype=_F64)
    cand[idx[on]] = sol.squeeze(1)
    if not bool((cand >= 0).all()) or not float(cand.sum()) > 0:
        return w
    cand = cand / cand.sum()
    moved = float((a @ cand - point).norm())
    # what solving the equalities can reach: rounding at the scale of the largest column
    rounding = 100.0 * _EPS * (float(norms[idx].max()) + float((w + cand) @ norms))
    if origin:
        return cand if moved <= rounding else w
    if moved > 1e-6 * float(point.norm()) + rounding:
        return w
    if _kkt_residual(g, cand) > 10.0 * max(_kkt_residual(g, w), 1e-12):
        return w
    return cand


def min_norm_weights(gram: Tensor, *, solver: Solver = "auto") -> Tensor:
    """``w = argmin_{w ∈ simplex} wᵀ G w`` (MGDA) from ``G = J Jᵀ`` (float64 CPU), exactly;
    see the module docstring. ``solver``: ``"auto"`` (SciPy's NNLS where installed, else the
    torch one), ``"scipy"`` or ``"torch"``.

    Degenerate inputs: a single task gets 1; all gradients zero gives equal weights; tasks
    whose gradient is zero reach the minimum (0) alone and share the weight equally."""
    n = gram.shape[0]
    if n == 1:
        return torch.ones(1, dtype=_F64)
    g = 0.5 * (gram + gram.T)
    top = float(g.diagonal().max())
    if not top > 0:
        return torch.full((n,), 1.0 / n, dtype=_F64)
    g = g / top
    zero = g.diagonal() <= 0
    if bool(zero.any()):
        return zero.to(_F64) / float(zero.sum())
    a = gram_factor(g)
    w = _least_distance(a, solver)
    return _least_norm_among_optimal(g, a, w, solver)
