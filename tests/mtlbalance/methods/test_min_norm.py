"""MGDA's minimum-norm problem, exact whatever the ratio of the task gradients' norms.

At the solution ``u = Σ_t w_t g_t`` of ``min_{w ∈ simplex} ‖Σ_t w_t g_t‖`` the KKT conditions
are ``⟨g_t, u⟩ ≥ ‖u‖²`` for every task, with equality where ``w_t > 0`` (so no task's loss
increases to first order). They are checked here relative to ``‖u‖²`` — not to the largest
squared gradient norm, which can exceed ``‖u‖²`` by 16 orders of magnitude — up to the
rounding of evaluating ``⟨g_t, u⟩`` itself (``ε ‖g_t‖ ‖u‖``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize

import mtlbalance
from mtlbalance.aggregators import _min_norm
from mtlbalance.aggregators.mgda import MGDA

from .._asserts import EPS, assert_min_norm_kkt

F64 = torch.float64
REPO = Path(__file__).resolve().parents[3]

#: the issue's example: loss_t = ⟨g_t, θ⟩, norms 0.01, ≈ 990 and ≈ 1.02
ISSUE_ROWS = torch.tensor([[0.0, 0.0, -0.01], [-700.0, 50.0, 700.0], [0.2, 0.0, 1.0]], dtype=F64)


def nnls_reference(jac: torch.Tensor) -> torch.Tensor:
    """MGDA's weights by SciPy's NNLS of the least-distance construction on the rows
    themselves, ``min_{u ≥ 0} ‖[Jᵀ; 1ᵀ] u − e‖``, ``w = u / Σu`` (Lawson & Hanson, ch. 23)."""
    e = np.zeros(jac.shape[1] + 1)
    e[-1] = 1.0
    u, _ = optimize.nnls(np.vstack([jac.numpy().T, np.ones(jac.shape[0])]), e)
    return torch.from_numpy(u / u.sum())


@st.composite
def spread_jacobians(draw) -> torch.Tensor:
    """(T, P) rows whose norms span up to 10⁸ (one row has norm 1, one has the largest
    norm), often in conflict with the first row."""
    num_tasks = draw(st.integers(2, 6))
    num_params = draw(st.integers(1, 24))
    decades = draw(st.floats(0.0, 8.0))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(num_tasks, num_params, generator=gen, dtype=F64)
    if draw(st.booleans()):
        jac[1:] -= 1.5 * jac[0] * torch.rand(num_tasks - 1, 1, generator=gen, dtype=F64)
    jac = jac / jac.norm(dim=1, keepdim=True).clamp_min(1e-300)
    exponents = torch.rand(num_tasks, generator=gen, dtype=F64) * decades
    exponents[0], exponents[-1] = 0.0, decades
    return jac * (10.0**exponents)[:, None]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jac=spread_jacobians(), solver=st.sampled_from(["scipy", "torch"]))
def test_kkt_relative_to_the_update_over_norm_ratios_up_to_1e8(jac, solver) -> None:
    assert_min_norm_kkt(jac, _min_norm.min_norm_weights(jac @ jac.T, solver=solver))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jac=spread_jacobians())
def test_scipy_and_torch_solvers_agree(jac) -> None:
    """The two NNLS solvers (SciPy's and the torch fallback) give the same point ``u`` and,
    where the weights are unique (independent rows), the same weights in units of each
    task's gradient norm (``w_t ‖g_t‖`` is what a weight contributes to ``u``)."""
    gram = jac @ jac.T
    ws = _min_norm.min_norm_weights(gram, solver="scipy")
    wt = _min_norm.min_norm_weights(gram, solver="torch")
    norms = jac.norm(dim=1)
    us, ut = ws @ jac, wt @ jac
    floor = 1e4 * EPS * (float((ws + wt) @ norms) + float(norms.max()))
    assert float((us - ut).norm()) <= 1e-6 * float(us.norm()) + floor
    if int(torch.linalg.matrix_rank(jac)) == jac.shape[0]:
        assert float(((ws - wt) * norms).abs().max()) <= 1e-6 * float(us.norm()) + floor


def test_mgda_issue_example_through_the_balancer() -> None:
    """loss_t = ⟨g_t, θ⟩: MGDA's update must not increase any loss (⟨g_t, u⟩ > 0) and
    ⟨g_t, u⟩ is the same for every task (all three weights are positive)."""
    theta = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    balancer = mtlbalance.make("mgda", [theta], tasks=["a", "b", "c"], engine="loop")
    stats = balancer.backward(ISSUE_ROWS @ theta)
    u = theta.grad
    assert theta.grad is not None and u is not None
    expected = nnls_reference(ISSUE_ROWS)  # ≈ [0.99173, 2.35e-6, 0.00827] (issue 15)
    torch.testing.assert_close(
        expected, torch.tensor([0.99173, 2.35e-6, 0.00827], dtype=F64), rtol=1e-3, atol=1e-8
    )
    torch.testing.assert_close(stats.weights, expected, rtol=1e-6, atol=1e-12)
    dots = ISSUE_ROWS @ u
    norm2 = float(u @ u)
    assert (dots > 0).all()
    assert float((dots - norm2).abs().max()) <= 1e-6 * norm2, dots / norm2
    assert_min_norm_kkt(ISSUE_ROWS, stats.weights)


def test_mgda_ub_issue_example() -> None:
    """MGDA-UB solves the same problem on the gradients at the representation z = θ."""
    theta = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    balancer = mtlbalance.make("mgda_ub", [theta], tasks=["a", "b", "c"])
    z = theta * 1.0
    stats = balancer.backward(ISSUE_ROWS @ z, representation=z)
    torch.testing.assert_close(stats.weights, nnls_reference(ISSUE_ROWS), rtol=1e-6, atol=1e-12)
    dots = ISSUE_ROWS @ theta.grad
    assert (dots > 0).all()


@pytest.mark.parametrize("decades", [0, 2, 4, 6, 8])
def test_mgda_aggregator_kkt_for_each_norm_ratio(decades: int) -> None:
    gen = torch.Generator().manual_seed(decades)
    for _ in range(20):
        jac = torch.randn(4, 9, generator=gen, dtype=F64)
        jac[1:] -= 1.5 * jac[0]
        jac = jac / jac.norm(dim=1, keepdim=True)
        jac = (
            jac
            * torch.logspace(0, decades, 4, dtype=F64)[torch.randperm(4, generator=gen)][:, None]
        )
        out = torch.empty(9, dtype=F64)
        result = MGDA()(jac, out, losses=torch.ones(4, dtype=F64))
        assert_min_norm_kkt(jac, result.weights)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "packages" / "mtlbalance" / "src"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_mtlbalance_works_without_scipy() -> None:
    """Without SciPy, the package imports, MGDA runs on the torch solver, and CAGrad (which
    needs SciPy) names the extra to install."""
    result = _run(
        """
        import sys
        sys.modules["scipy"] = None  # as if SciPy were not installed
        import torch, mtlbalance
        theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        rows = torch.tensor([[0.0, 0.0, -0.01], [-700.0, 50.0, 700.0], [0.2, 0.0, 1.0]],
                            dtype=torch.float64)
        stats = mtlbalance.make("mgda", [theta], tasks=["a", "b", "c"]).backward(rows @ theta)
        print(",".join(f"{w:.6g}" for w in stats.weights.tolist()))
        try:
            mtlbalance.make("cagrad", [theta], tasks=["a", "b", "c"])
        except ImportError as err:
            print("cagrad:", err)
        """
    )
    assert result.returncode == 0, result.stderr
    weights, cagrad = result.stdout.strip().splitlines()
    np.testing.assert_allclose(
        [float(w) for w in weights.split(",")], nnls_reference(ISSUE_ROWS).numpy(), rtol=1e-5
    )
    assert "mtlbalance[solvers]" in cagrad


def test_scipy_is_imported_only_when_a_method_uses_it() -> None:
    result = _run(
        """
        import sys, torch, mtlbalance
        theta = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        mtlbalance.make("dbmtl", [theta], tasks=["a", "b"]).backward(theta * theta + 1)
        before = "scipy" in sys.modules
        mtlbalance.make("mgda", [theta], tasks=["a", "b"]).backward(theta * theta + 1)
        print(before, "scipy" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
