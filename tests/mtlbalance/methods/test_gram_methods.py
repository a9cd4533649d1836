"""Family invariants of the Gram-matrix / weighting methods: MGDA, MGDA-UB, IMTL-G, CAGrad,
Nash-MTL, Aligned-MTL, UPGrad, FairGrad, ExcessMTL. Each property is the paper's definition
checked on the rows (float64), and where possible the solver is compared with an independent
computation (closed forms, SciPy on the primal problem, a written-out algorithm)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import optimize

import mtlbalance
from mtlbalance.aggregators import _qp
from mtlbalance.aggregators.aligned_mtl import AlignedMTL, balance_matrix
from mtlbalance.aggregators.cagrad import CAGrad
from mtlbalance.aggregators.excessmtl import ExcessMTL
from mtlbalance.aggregators.fairgrad import FairGrad, fairgrad_weights
from mtlbalance.aggregators.imtl_g import IMTLG
from mtlbalance.aggregators.mgda import MGDA
from mtlbalance.aggregators.mgda_ub import MGDAUB
from mtlbalance.aggregators.nashmtl import NashMTL, nash_weights
from mtlbalance.aggregators.upgrad import UPGrad

from .._asserts import EPS, assert_min_norm_kkt
from ..conftest import build_problem
from .test_min_norm import nnls_reference

F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JACOBIAN_METHODS = {
    "mgda": MGDA,
    "imtl_g": IMTLG,
    "cagrad": CAGrad,
    "nashmtl": NashMTL,
    "aligned_mtl": AlignedMTL,
    "upgrad": UPGrad,
    "fairgrad": FairGrad,
    "excessmtl": ExcessMTL,
}


@st.composite
def jacobians(draw, min_tasks: int = 1, max_tasks: int = 5, max_params: int = 20) -> torch.Tensor:
    """Random (T, P) rows with norms spread over four orders of magnitude."""
    num_tasks = draw(st.integers(min_tasks, max_tasks))
    num_params = draw(st.integers(1, max_params))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(num_tasks, num_params, generator=gen, dtype=F64)
    logs = draw(st.lists(st.floats(-2.0, 2.0), min_size=num_tasks, max_size=num_tasks))
    return jac * torch.tensor([10.0**s for s in logs], dtype=F64)[:, None]


def apply(agg, jac: torch.Tensor, losses: torch.Tensor | None = None):
    if losses is None:
        losses = torch.linspace(0.5, 2.0, jac.shape[0], dtype=F64)
    out = torch.full((jac.shape[1],), float("nan"), dtype=jac.dtype)
    result = agg(jac.clone(), out, losses=losses)
    return out, result


def scale(jac: torch.Tensor) -> float:
    """The largest squared row norm (tolerances are relative to it)."""
    return max(float((jac * jac).sum(1).max()), 1e-300)


def common_ascent_margin(jac: torch.Tensor) -> float:
    """max_{‖d‖_∞ ≤ 1} min_t ⟨g_t, d⟩ / ‖g_t‖ by linear programming (> 0 iff some direction
    improves every task, i.e. the bargaining problems have a solution)."""
    rows = (jac / jac.norm(dim=1, keepdim=True)).numpy()
    num_tasks, num_params = rows.shape
    # variables (d, s): maximise s  s.t.  rows d ≥ s,  −1 ≤ d ≤ 1
    cost = np.zeros(num_params + 1)
    cost[-1] = -1.0
    a_ub = np.hstack([-rows, np.ones((num_tasks, 1))])
    res = optimize.linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.zeros(num_tasks),
        bounds=[(-1, 1)] * num_params + [(None, 1)],
        method="highs",
    )
    assert res.status == 0
    return float(-res.fun)


# ---------------------------------------------------------------------------------------- MGDA
@SETTINGS
@given(jac=jacobians())
def test_mgda_kkt_of_the_min_norm_problem(jac: torch.Tensor) -> None:
    out, result = apply(MGDA(), jac)
    w = result.weights
    assert torch.equal(result.task_weights, w)  # the weights act as loss weights
    assert (w >= 0).all() and abs(float(w.sum()) - 1.0) < 1e-12
    torch.testing.assert_close(out, w @ jac)
    # KKT relative to ‖u‖² (not to the largest squared norm): see test_min_norm.py
    assert_min_norm_kkt(jac, w)
    # against an independent solver: SciPy's NNLS of the least-distance construction on the
    # rows themselves, min_{u ≥ 0} ‖[Jᵀ; 1ᵀ] u − e‖, w = u / Σu
    ref = nnls_reference(jac) @ jac
    norm2 = float(out @ out)
    big = float(jac.norm(dim=1).max())
    tol = 1e-9 * norm2 + 3e4 * EPS * big * math.sqrt(norm2) + (1e3 * EPS * big) ** 2
    assert abs(float(ref @ ref) - norm2) <= tol


@SETTINGS
@given(seed=st.integers(0, 10_000), num_params=st.integers(1, 12))
def test_mgda_two_tasks_closed_form(seed: int, num_params: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    g1, g2 = torch.randn(2, num_params, generator=gen, dtype=F64) * torch.tensor([[1.0], [3.0]])
    w1 = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    w1 = min(max(w1, 0.0), 1.0)
    _, result = apply(MGDA(), torch.stack([g1, g2]))
    torch.testing.assert_close(
        result.weights, torch.tensor([w1, 1 - w1], dtype=F64), atol=1e-9, rtol=0
    )


def test_mgda_normalisations() -> None:
    gen = torch.Generator().manual_seed(3)
    jac = torch.randn(3, 6, generator=gen, dtype=F64) * torch.tensor([[0.1], [1.0], [10.0]])
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=F64)
    norms = jac.norm(dim=1)
    for mode, n in [("l2", norms), ("loss", losses), ("loss+", losses * norms)]:
        _, result = apply(MGDA(normalization=mode), jac, losses)
        w = result.weights
        # the weights are min-norm weights of the normalised rows (then applied to the raw ones)
        rows = jac / n[:, None]
        d = w @ rows
        assert (rows @ d >= d @ d - 1e-9).all()
        assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
    with pytest.raises(ValueError, match="normalization must be one of"):
        MGDA(normalization="max")


def test_mgda_ub_on_the_representation() -> None:
    problem = build_problem(seed=4, num_tasks=3)
    balancer = mtlbalance.make("mgda_ub", problem.encoder, dict(problem.heads))
    twin = copy.deepcopy(problem)
    losses, z = problem.losses(0)
    rows = torch.stack(
        [torch.autograd.grad(v, z, retain_graph=True)[0].reshape(-1) for v in losses.values()]
    )
    stats = balancer.backward(losses, representation=z)
    w = stats.weights
    d = w @ rows
    dots = rows @ d
    tol = 1e-9 * scale(rows)
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
    assert (dots >= d @ d - tol).all()
    assert (dots[w > 1e-6] - d @ d).abs().max() <= tol
    # one backward of Σ w_t ℓ_t everywhere (task parameters included)
    twin_losses, _ = twin.losses(0)
    sum(wt * v for wt, v in zip(w, twin_losses.values(), strict=True)).backward()
    for p, q in zip(problem.all_params(), twin.all_params(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    # without the representation the balancer says what is missing
    with pytest.raises(ValueError, match="representation=z"):
        balancer.backward(problem.losses(1)[0])
    assert isinstance(MGDAUB(), mtlbalance.aggregators.RepresentationWeighting)


# -------------------------------------------------------------------------------------- IMTL-G
@SETTINGS
@given(jac=jacobians(min_tasks=2, max_params=12))
def test_imtl_g_equal_projections(jac: torch.Tensor) -> None:
    units = jac / jac.norm(dim=1, keepdim=True)
    assume(jac.shape[0] <= jac.shape[1])
    assume(float(torch.linalg.svdvals(units).min()) > 1e-2)  # linearly independent rows
    out, result = apply(IMTLG(), jac)
    w = result.weights
    assert result.task_weights is None
    assert abs(float(w.sum()) - 1.0) < 1e-9
    proj = units @ out
    assert float((proj - proj.mean()).abs().max()) <= 1e-7 * float(proj.abs().max() + 1e-300)
    # the paper's closed form on the rows: α_{2:T} = g_1 Uᵀ (D Uᵀ)^{-1}
    d_rows = jac[:1] - jac[1:]
    u_rows = units[:1] - units[1:]
    tail = jac[0] @ u_rows.T @ torch.linalg.inv(d_rows @ u_rows.T)
    closed = torch.cat([1 - tail.sum().reshape(1), tail])
    torch.testing.assert_close(w, closed, rtol=1e-6, atol=1e-8)


def test_imtl_g_single_task_and_degenerate() -> None:
    g = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    _, result = apply(IMTLG(), g)
    torch.testing.assert_close(result.weights, torch.ones(1, dtype=F64))
    _, result = apply(IMTLG(), torch.cat([g, g]))
    torch.testing.assert_close(result.weights, torch.tensor([0.5, 0.5], dtype=F64))
    out, result = apply(IMTLG(), torch.cat([g, -g]))
    torch.testing.assert_close(result.weights, torch.tensor([0.5, 0.5], dtype=F64))
    torch.testing.assert_close(out, torch.zeros(3, dtype=F64))


# ------------------------------------------------------------------------------------ Nash-MTL
@SETTINGS
@given(jac=jacobians())
def test_nashmtl_fixed_point(jac: torch.Tensor) -> None:
    assume(common_ascent_margin(jac) > 1e-3)
    out, result = apply(NashMTL(max_norm=0.0), jac)
    alpha = result.weights
    assert torch.equal(result.task_weights, alpha)
    assert (alpha > 0).all()
    gram = jac @ jac.T
    torch.testing.assert_close(alpha * (gram @ alpha), torch.ones_like(alpha), rtol=0, atol=1e-8)
    torch.testing.assert_close(out, alpha @ jac)
    # the bargaining solution: every task improves, ‖d‖² = αᵀGα = T
    assert (jac @ out > 0).all()
    assert abs(float(out @ out) - jac.shape[0]) < 1e-6 * jac.shape[0]


def test_nashmtl_clip_scales_only_the_shared_update() -> None:
    gen = torch.Generator().manual_seed(5)
    jac = torch.randn(3, 8, generator=gen, dtype=F64).abs() * 1e-3
    free_out, free = apply(NashMTL(max_norm=0.0), jac)
    out, clipped = apply(NashMTL(), jac)  # official max_norm = 1.0
    assert float(free_out.norm()) > 1.0  # ‖αᵀJ‖ = sqrt(T)
    assert abs(float(out.norm()) - 1.0) < 1e-5
    torch.testing.assert_close(out / out.norm(), free_out / free_out.norm())
    torch.testing.assert_close(clipped.task_weights, free.weights)  # heads: unclipped α
    torch.testing.assert_close(out, clipped.weights @ jac)
    with pytest.raises(ValueError, match="max_norm"):
        NashMTL(max_norm=-1.0)


def test_bargaining_fallbacks_are_finite() -> None:
    g = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    h = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    # opposed rows: no common ascent direction -> α_t = 1/‖g_t‖
    alpha = nash_weights(torch.stack([g, -2 * g]) @ torch.stack([g, -2 * g]).T)
    torch.testing.assert_close(alpha, torch.tensor([1, 0.5], dtype=F64) / g.norm())
    # a zero row is left out; the others solve their own bargaining problem
    jac = torch.stack([g, torch.zeros(3, dtype=F64), h])
    alpha = nash_weights(jac @ jac.T)
    sub = alpha[[0, 2]]
    gram = jac[[0, 2]] @ jac[[0, 2]].T
    torch.testing.assert_close(sub * (gram @ sub), torch.ones(2, dtype=F64), rtol=0, atol=1e-9)
    assert torch.isfinite(alpha).all() and (alpha > 0).all()


# ------------------------------------------------------------------------------------ FairGrad
@SETTINGS
@given(jac=jacobians(), alpha=st.sampled_from([0.5, 1.0, 2.0, 5.0]))
def test_fairgrad_fixed_point(jac: torch.Tensor, alpha: float) -> None:
    assume(common_ascent_margin(jac) > 1e-3)
    out, result = apply(FairGrad(alpha=alpha), jac)
    w = result.weights
    assert result.task_weights is None
    assert (w > 0).all()
    gram = jac @ jac.T
    torch.testing.assert_close((gram @ w) * w.pow(1 / alpha), torch.ones_like(w), rtol=0, atol=1e-8)
    torch.testing.assert_close(out, w @ jac)
    if alpha == 1.0:  # proportional fairness = Nash bargaining
        torch.testing.assert_close(w, nash_weights(gram), rtol=1e-9, atol=0)


def test_fairgrad_matches_least_squares_of_the_official_code() -> None:
    gen = torch.Generator().manual_seed(8)
    jac = torch.randn(3, 10, generator=gen, dtype=F64) + 1.0
    gram = (jac @ jac.T).numpy()
    for alpha in (1.0, 2.0):
        res = optimize.least_squares(
            lambda x, a=alpha: gram @ x - np.power(1 / x, 1 / a),
            np.ones(3) / 3,
            bounds=(0, np.inf),
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
        )
        ours = fairgrad_weights(torch.from_numpy(gram), alpha)
        torch.testing.assert_close(ours, torch.from_numpy(res.x), rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match="alpha"):
        FairGrad(alpha=0.0)


# ---------------------------------------------------------------------------------- Aligned-MTL
@SETTINGS
@given(jac=jacobians())
def test_aligned_mtl_condition_number_one(jac: torch.Tensor) -> None:
    gram = jac @ jac.T
    b = balance_matrix(gram)
    aligned = b @ jac
    eig = torch.linalg.eigvalsh(aligned @ aligned.T)
    top = float(eig.max())
    assert top > 0
    nonzero = eig[eig > 1e-6 * top]
    assert float(nonzero.min()) >= top * (1 - 1e-6)  # all nonzero eigenvalues equal
    # λ_min of the kept spectrum of G
    lam = torch.linalg.eigvalsh(gram)
    kept = lam[lam > float(lam.max()) * jac.shape[0] * float(torch.finfo(torch.float32).eps)]
    assert abs(top - float(kept.min())) <= 1e-6 * top
    out, result = apply(AlignedMTL(), jac)
    torch.testing.assert_close(out, aligned.sum(0))
    assert result.task_weights is None


def test_aligned_mtl_rank_deficient() -> None:
    g = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=F64)
    h = torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=F64)
    jac = torch.stack([g, 2 * g, h])  # rank 2
    aligned = balance_matrix(jac @ jac.T) @ jac
    eig = torch.linalg.eigvalsh(aligned @ aligned.T)
    assert eig[0].abs() < 1e-9 * eig[-1]
    torch.testing.assert_close(eig[1], eig[2])
    out, _ = apply(AlignedMTL(), torch.zeros(3, 4, dtype=F64))
    assert torch.equal(out, torch.zeros(4, dtype=F64))


# -------------------------------------------------------------------------------------- CAGrad
def cagrad_primal_value(jac: torch.Tensor, c: float) -> float:
    """max_d min_t ⟨g_t, d⟩ s.t. ‖d − g0‖ ≤ c‖g0‖, by SciPy on the primal (d, s)."""
    rows = jac.numpy()
    g0 = rows.mean(0)
    r = c * np.linalg.norm(g0)
    n = rows.shape[1]
    cons = [
        {
            "type": "ineq",
            "fun": lambda x: rows @ x[:n] - x[n],
            "jac": lambda x: np.hstack([rows, -np.ones((rows.shape[0], 1))]),
        },
        {
            "type": "ineq",
            "fun": lambda x: r * r - np.sum((x[:n] - g0) ** 2),
            "jac": lambda x: np.hstack([-2 * (x[:n] - g0), [0.0]]),
        },
    ]
    x0 = np.hstack([g0, (rows @ g0).min()])
    res = optimize.minimize(
        lambda x: -x[n],
        x0,
        jac=lambda x: np.hstack([np.zeros(n), [-1.0]]),
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return float(-res.fun)


@SETTINGS
@given(jac=jacobians(), c=st.sampled_from([0.4, 0.1, 1.0]))
def test_cagrad_maximises_the_worst_improvement_in_the_ball(jac: torch.Tensor, c: float) -> None:
    d, result = apply(CAGrad(c=c, rescale=0), jac)
    assert result.task_weights is None
    torch.testing.assert_close(d, result.weights @ jac)
    g0 = jac.mean(0)
    s = scale(jac)
    assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9) + 1e-12 * math.sqrt(s)
    worst = float((jac @ d).min())
    assert worst >= float((jac @ g0).min()) - 1e-9 * s
    assert worst >= cagrad_primal_value(jac, c) - 1e-6 * s
    # the official rescale = 1 divides by 1 + c²
    rescaled, _ = apply(CAGrad(c=c), jac)
    torch.testing.assert_close(rescaled, d / (1 + c * c))


def test_cagrad_options() -> None:
    jac = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    d0, _ = apply(CAGrad(rescale=0), jac)
    d2, _ = apply(CAGrad(rescale=2), jac)
    torch.testing.assert_close(d2, d0 / 1.4)
    # orthogonal unit gradients: d = g0 + c‖g0‖ g0/‖g0‖
    torch.testing.assert_close(d0, torch.tensor([0.5, 0.5], dtype=F64) * 1.4)
    with pytest.raises(ValueError, match="rescale"):
        CAGrad(rescale=3)
    with pytest.raises(ValueError, match="c must be"):
        CAGrad(c=-0.1)


# -------------------------------------------------------------------------------------- UPGrad
def dual_cone_projection(jac: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """argmin_x ‖x − g‖² s.t. J x ≥ 0, by SciPy on the primal."""
    rows, target = jac.numpy(), g.numpy()
    res = optimize.minimize(
        lambda x: float(np.sum((x - target) ** 2)),
        target,
        jac=lambda x: 2 * (x - target),
        constraints=[{"type": "ineq", "fun": lambda x: rows @ x, "jac": lambda x: rows}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return torch.from_numpy(res.x)


@SETTINGS
@given(jac=jacobians())
def test_upgrad_does_not_conflict(jac: torch.Tensor) -> None:
    s = scale(jac)
    out, result = apply(UPGrad(reg_eps=0.0), jac)
    assert result.task_weights is None
    assert (jac @ out >= -1e-9 * s).all(), jac @ out
    # with torchjd's regularisation the conflict is at most reg_eps · tr(G) · w_t
    out, result = apply(UPGrad(), jac)
    trace = float((jac * jac).sum())
    assert (jac @ out >= -1e-4 * trace * result.weights.abs() - 1e-9 * s).all()


def test_upgrad_is_the_mean_of_the_dual_cone_projections() -> None:
    for seed, (num_tasks, num_params) in enumerate([(2, 3), (3, 5), (4, 6), (5, 4)]):
        gen = torch.Generator().manual_seed(seed)
        jac = torch.randn(num_tasks, num_params, generator=gen, dtype=F64)
        expected = torch.stack([dual_cone_projection(jac, g) for g in jac]).mean(0)
        out, _ = apply(UPGrad(reg_eps=0.0), jac)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="reg_eps"):
        UPGrad(reg_eps=-1.0)


# ----------------------------------------------------------------------------------- ExcessMTL
def excessmtl_reference(jacs: list[torch.Tensor], step_size: float, eps: float = 1e-7):
    """The official update (LibMTL port by the authors), written out with plain loops."""
    num_tasks = jacs[0].shape[0]
    grad_sum = torch.zeros_like(jacs[0])
    loss_weight = torch.ones(num_tasks, dtype=F64)
    initial = None
    history = []
    for grads in jacs:
        w = torch.zeros(num_tasks, dtype=F64)
        for i in range(num_tasks):
            grad_sum[i] += grads[i] ** 2
            h = torch.sqrt(grad_sum[i] + eps)
            w[i] = grads[i] * (1 / h) @ grads[i]
        if initial is None:
            initial = w
        else:
            w = w / initial
            loss_weight = loss_weight * torch.exp(w * step_size)
            loss_weight = loss_weight / loss_weight.sum() * num_tasks
        history.append((loss_weight.clone(), loss_weight @ grads))
    return history


@pytest.mark.parametrize("step_size", [1e-2, 0.5])
def test_excessmtl_matches_the_official_update(step_size: float) -> None:
    gen = torch.Generator().manual_seed(11)
    jacs = [
        torch.randn(3, 7, generator=gen, dtype=F64) * torch.tensor([[0.1], [1.0], [5.0]])
        for _ in range(6)
    ]
    agg = ExcessMTL(robust_step_size=step_size)
    for jac, (w_ref, out_ref) in zip(jacs, excessmtl_reference(jacs, step_size), strict=True):
        out, result = apply(agg, jac)
        torch.testing.assert_close(result.weights, w_ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(result.task_weights, w_ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-15)
    # state round trip, then identical continuation; reset starts over
    clone = ExcessMTL(robust_step_size=step_size)
    clone.load_state_dict(copy.deepcopy(agg.state_dict()))
    extra = torch.randn(3, 7, generator=gen, dtype=F64)
    a, _ = apply(agg, extra)
    b, _ = apply(clone, extra)
    assert torch.equal(a, b)
    agg.reset()
    _, fresh = apply(agg, extra)
    torch.testing.assert_close(fresh.weights, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="robust_step_size"):
        ExcessMTL(robust_step_size=-1.0)


def test_excessmtl_zero_first_gradient_is_finite() -> None:
    agg = ExcessMTL(robust_step_size=0.5)
    g = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=F64)
    for k in range(4):
        jac = g if k < 2 else torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
        out, result = apply(agg, jac)
        assert torch.isfinite(out).all() and torch.isfinite(result.weights).all()
        torch.testing.assert_close(result.weights.sum(), torch.tensor(2.0, dtype=F64))


# ------------------------------------------------------------------------- the whole family
def degenerate_cases() -> dict[str, torch.Tensor]:
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    h = torch.tensor([0.5, 1.0, 1.0, -1.0], dtype=F64)
    return {
        "zero row": torch.stack([g, torch.zeros(4, dtype=F64), h]),
        "identical rows": torch.stack([g, g, h]),
        "opposed rows": torch.stack([g, -g]),
        "opposed and other": torch.stack([g, -g, h]),
        "T=1": g[None],
        "all zero": torch.zeros(3, 4, dtype=F64),
        "more tasks than parameters": torch.tensor([[1.0], [-2.0], [0.5]], dtype=F64),
        "float32 near-duplicates": torch.stack([g, g * (1 + 1e-7), h]),
    }


@pytest.mark.parametrize("method", list(JACOBIAN_METHODS))
@pytest.mark.parametrize("case", list(degenerate_cases()))
def test_finite_on_degenerate_input(method: str, case: str) -> None:
    jac = degenerate_cases()[case]
    for dtype in (F64, torch.float32):
        agg = JACOBIAN_METHODS[method]()
        for _ in range(2):
            out, result = apply(agg, jac.to(dtype), torch.linspace(0.5, 2.0, jac.shape[0]))
            assert torch.isfinite(out).all(), (method, case, out)
            assert torch.isfinite(result.weights).all(), (method, case, result.weights)
    if case == "identical rows" and method != "excessmtl":
        _, result = apply(JACOBIAN_METHODS[method](), jac)
        torch.testing.assert_close(result.weights[0], result.weights[1])  # no arbitrary split


@pytest.mark.parametrize("method", [*JACOBIAN_METHODS, "mgda_ub"])
@SETTINGS
@given(jac=jacobians(min_tasks=2), data=st.data())
def test_permutation_equivariance(method: str, jac: torch.Tensor, data) -> None:
    perm = torch.tensor(data.draw(st.permutations(range(jac.shape[0]))))
    losses = torch.linspace(0.5, 2.0, jac.shape[0], dtype=F64)
    if method == "mgda_ub":
        w = MGDAUB()(jac, losses=losses)
        wp = MGDAUB()(jac[perm], losses=losses[perm])
        torch.testing.assert_close(wp, w[perm], rtol=1e-6, atol=1e-9)
        return
    cls = JACOBIAN_METHODS[method]
    out, result = apply(cls(), jac, losses)
    out_p, result_p = apply(cls(), jac[perm], losses[perm])
    tol = 1e-6 * math.sqrt(scale(jac)) * float(result.weights.abs().max() + 1)
    assert float((out - out_p).abs().max()) <= tol, (out, out_p)
    unique_weights = jac.shape[0] <= jac.shape[1] or method != "cagrad"
    if unique_weights:
        w, wp = result.weights, result_p.weights
        assert float((wp - w[perm]).abs().max()) <= 1e-6 * float(w.abs().max() + 1e-12)


@pytest.mark.parametrize("method", [*JACOBIAN_METHODS, "mgda_ub"])
def test_balancer_runs_the_method(method: str) -> None:
    problem = build_problem(seed=2, num_tasks=3)
    balancer = mtlbalance.make(method, problem.encoder, dict(problem.heads), engine="loop")
    log_balancer = mtlbalance.make(f"log+{method}", problem.encoder, dict(problem.heads))
    for k in range(2):
        for b in (balancer, log_balancer):
            problem.zero_grad()
            losses, z = problem.losses(k)
            stats = b.backward(losses, representation=z)
            assert stats.weights is not None and torch.isfinite(stats.weights).all()
            for p in problem.all_params():
                assert p.grad is not None and torch.isfinite(p.grad).all()


def test_host_gram_helpers() -> None:
    jac = torch.randn(4, 3, dtype=torch.float32)
    gram = jac @ jac.T
    g = _qp.host_gram(gram)
    assert g.dtype == F64 and torch.equal(g, g.T)
    assert float(torch.linalg.eigvalsh(g).min()) >= -1e-12
    assert _qp.gram_eps(gram) == float(torch.finfo(torch.float32).eps)
