"""Family invariants of the methods that read the per-task gradient rows: PCGrad, GradDrop,
GradVac, MTAdam, MetaBalance, MoCo, GradNorm. References are written out from the papers
(and the authors' / LibMTL code where the brief follows it), on rows, in float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtlbalance
from mtlbalance._random import RandomDraws
from mtlbalance.aggregators.graddrop import GradDrop
from mtlbalance.aggregators.gradnorm import GradNorm
from mtlbalance.aggregators.gradvac import GradVac
from mtlbalance.aggregators.metabalance import MetaBalance
from mtlbalance.aggregators.moco import MoCo, project_to_simplex
from mtlbalance.aggregators.mtadam import MTAdam
from mtlbalance.aggregators.pcgrad import PCGrad, pcgrad_coefficients

from ..conftest import build_problem

F64 = torch.float64
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
METHODS = {
    "pcgrad": PCGrad,
    "graddrop": GradDrop,
    "gradvac": GradVac,
    "mtadam": MTAdam,
    "metabalance": MetaBalance,
    "moco": MoCo,
    "gradnorm": GradNorm,
}


def rows(seed: int, num_tasks: int, num_params: int = 9, spread: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(num_tasks, num_params, generator=gen, dtype=F64)
    if spread:
        jac *= torch.logspace(-spread, spread, num_tasks, dtype=F64)[:, None]
    return jac


def make(name: str, num_tasks: int, **kwargs) -> torch.nn.Module:
    agg = METHODS[name](**kwargs)
    agg.setup([f"t{i}" for i in range(num_tasks)])
    return agg


def apply(agg, jac: torch.Tensor, losses: torch.Tensor | None = None, draws=None):
    if draws is not None:
        agg.force_draws(draws)
    if losses is None:
        losses = torch.linspace(0.5, 2.0, jac.shape[0], dtype=F64)
    out = torch.full((jac.shape[1],), float("nan"), dtype=F64)
    result = agg(jac.clone(), out, losses=losses)
    return out, result


def keys_from_orders(orders: list[list[int]]) -> torch.Tensor:
    """Keys with which task t visits the others in ``orders[t]``."""
    num_tasks = len(orders)
    keys = torch.zeros(num_tasks, num_tasks, dtype=F64)
    for t, order in enumerate(orders):
        assert sorted(order) == [s for s in range(num_tasks) if s != t]
        for position, s in enumerate(order):
            keys[t, s] = position + 1.0
    return keys


def orders_from_keys(keys: torch.Tensor) -> list[list[int]]:
    num_tasks = keys.shape[0]
    return [
        sorted((s for s in range(num_tasks) if s != t), key=lambda s, t=t: float(keys[t, s]))
        for t in range(num_tasks)
    ]


# ---------------------------------------------------------------------------------- PCGrad
def reference_pcgrad(jac: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """The official algorithm, on rows: projected rows (T, P)."""
    projected = jac.clone()
    for t, order in enumerate(orders):
        for s in order:
            dot = projected[t] @ jac[s]
            if dot < 0:
                projected[t] = projected[t] - dot / (jac[s] @ jac[s]) * jac[s]
    return projected


@SETTINGS
@given(seed=st.integers(0, 10_000), spread=st.sampled_from([0.0, 2.0]))
def test_pcgrad_two_tasks_leaves_no_conflict(seed: int, spread: float) -> None:
    jac = rows(seed, 2, spread=spread)
    keys = torch.rand(2, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    coef = pcgrad_coefficients(jac @ jac.T, keys)
    p = coef @ jac
    scale = float(jac.norm(dim=1).prod())
    assert float(p[0] @ p[1]) >= -1e-12 * scale
    out, result = apply(PCGrad(), jac, draws=keys)
    torch.testing.assert_close(out, p.sum(0))
    torch.testing.assert_close(out, result.weights @ jac)
    if float(jac[0] @ jac[1]) >= 0:
        torch.testing.assert_close(out, jac.sum(0), rtol=0, atol=0)
    else:  # each projected row is orthogonal to the other task's gradient
        assert abs(float(p[0] @ jac[1])) <= 1e-12 * scale
        assert abs(float(p[1] @ jac[0])) <= 1e-12 * scale


@pytest.mark.parametrize(
    "orders", [[[1, 2], [0, 2], [0, 1]], [[2, 1], [2, 0], [1, 0]], [[1, 2], [2, 0], [1, 0]]]
)
@pytest.mark.parametrize("seed", range(6))
def test_pcgrad_matches_the_official_loop(orders, seed: int) -> None:
    jac = rows(seed, 3)
    jac[1] -= 1.5 * jac[0]  # make conflicts likely
    out, _ = apply(PCGrad(), jac, draws=keys_from_orders(orders))
    torch.testing.assert_close(out, reference_pcgrad(jac, orders).sum(0), rtol=1e-10, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(2, 5))
def test_pcgrad_random_orders_match_the_loop(seed: int, num_tasks: int) -> None:
    jac = rows(seed, num_tasks, spread=1.0)
    keys = torch.rand(num_tasks, num_tasks, generator=torch.Generator().manual_seed(seed))
    out, _ = apply(PCGrad(), jac, draws=keys.to(F64))
    expected = reference_pcgrad(jac, orders_from_keys(keys)).sum(0)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------- GradDrop
def reference_graddrop(jac: torch.Tensor, u: torch.Tensor, leak: float = 0.0) -> torch.Tensor:
    purity = 0.5 * (1 + jac.sum(0) / jac.abs().sum(0))
    mask = (purity > u) & (jac > 0) | (purity < u) & (jac < 0)
    return (jac * (leak + (1 - leak) * mask.to(F64))).sum(0)


@SETTINGS
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 5))
def test_graddrop_keeps_one_sign_per_coordinate(seed: int, num_tasks: int) -> None:
    jac = rows(seed, num_tasks, num_params=40)
    positive = jac.clamp(min=0).sum(0)
    negative = jac.clamp(max=0).sum(0)
    for step in range(3):
        agg = GradDrop()
        agg.force_draws(torch.tensor([seed * 10 + step]))
        out, result = apply(agg, jac)
        assert result.weights is None
        is_pos = torch.isclose(out, positive, rtol=1e-12, atol=0) & (positive > 0)
        is_neg = torch.isclose(out, negative, rtol=1e-12, atol=0) & (negative < 0)
        assert bool((is_pos | is_neg | (out == 0)).all())
    # with the uniforms given, exactly the paper's mask
    u = torch.rand(40, generator=torch.Generator().manual_seed(seed), dtype=F64)
    out, _ = apply(GradDrop(), jac, draws=u)
    torch.testing.assert_close(out, reference_graddrop(jac, u), rtol=1e-12, atol=1e-14)
    out, _ = apply(GradDrop(leak=0.3), jac, draws=u)
    torch.testing.assert_close(out, reference_graddrop(jac, u, 0.3), rtol=1e-12, atol=1e-14)


def test_graddrop_same_sign_gradients_pass_unchanged() -> None:
    jac = rows(3, 4, num_params=50).abs()
    for draws in range(5):
        out, _ = apply(GradDrop(), jac, draws=torch.tensor([draws]))
        torch.testing.assert_close(out, jac.sum(0), rtol=0, atol=0)
    out, _ = apply(GradDrop(), -jac, draws=torch.tensor([7]))
    torch.testing.assert_close(out, -jac.sum(0), rtol=0, atol=0)
    out, _ = apply(GradDrop(leak=1.0), rows(4, 3), draws=torch.tensor([1]))
    torch.testing.assert_close(out, rows(4, 3).sum(0))


def test_graddrop_keeps_positive_with_probability_purity() -> None:
    jac = torch.tensor([[3.0], [-1.0]], dtype=F64).repeat(1, 4000)  # P = ½(1 + 2/4) = 0.75
    out, _ = apply(GradDrop(), jac, draws=torch.tensor([11]))
    frequency = float((out == 3.0).to(F64).mean())
    assert abs(frequency - 0.75) < 0.03
    assert bool(((out == 3.0) | (out == -1.0)).all())


def test_graddrop_draws_do_not_depend_on_the_task_order() -> None:
    agg = GradDrop()
    draws = agg.sample_draws(3, torch.zeros(1))
    assert torch.equal(agg.permute_draws(draws, torch.tensor([2, 0, 1])), draws)


# ---------------------------------------------------------------------------------- GradVac
def reference_gradvac(jac, orders, target, beta):
    """The paper's Algorithm 1 on rows (whole model): update, new targets."""
    target = target.clone()
    adjusted = jac.clone()
    for t, order in enumerate(orders):
        for s in order:
            g_t, g_s = adjusted[t], jac[s]
            phi = float(g_t @ g_s / (g_t.norm() * g_s.norm()))
            aim = float(target[t, s])
            if phi < aim:
                w = (
                    g_t.norm()
                    * (aim * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - aim**2))
                    / (g_s.norm() * math.sqrt(1 - aim**2))
                )
                adjusted[t] = g_t + w * g_s
            target[t, s] = (1 - beta) * target[t, s] + beta * phi
    return adjusted, target


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_gradvac_first_step_aligns_conflicting_pairs(seed: int) -> None:
    jac = rows(seed, 2)
    agg = GradVac()
    keys = torch.zeros(2, 2, dtype=F64)
    out, result = apply(agg, jac, draws=keys)
    cos = float(jac[0] @ jac[1] / (jac[0].norm() * jac[1].norm()))
    adjusted, target = reference_gradvac(jac, [[1], [0]], torch.zeros(2, 2, dtype=F64), 0.5)
    torch.testing.assert_close(out, adjusted.sum(0), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out, result.weights @ jac)
    # the coefficient rows: g'_t = g_t + c g_s
    coef = result.weights - 1.0  # (1ᵀC) - 1: the added multiples, one per target task
    new = [jac[0] + coef[1] * jac[1], jac[1] + coef[0] * jac[0]]
    for t, s in ((0, 1), (1, 0)):
        aligned = float(new[t] @ jac[s] / (new[t].norm() * jac[s].norm()))
        if cos < 0:
            assert abs(aligned) < 1e-9  # moved exactly to the target 0
        else:
            assert aligned == pytest.approx(cos, abs=1e-12)  # untouched
    # φ̂ is the EMA of the similarity observed before the adjustment (start 0, β = 0.5)
    expected = torch.tensor([[0.0, 0.5 * cos], [0.5 * cos, 0.0]], dtype=F64)
    torch.testing.assert_close(agg.target, expected)
    torch.testing.assert_close(agg.target, target)


@SETTINGS
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(2, 4), beta=st.sampled_from([0.5, 0.1]))
def test_gradvac_matches_the_paper_over_steps(seed: int, num_tasks: int, beta: float) -> None:
    agg = GradVac(beta=beta)
    target = torch.zeros(num_tasks, num_tasks, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    for step in range(4):
        jac = rows(seed + step, num_tasks, spread=1.0)
        keys = torch.rand(num_tasks, num_tasks, generator=gen, dtype=F64)
        out, _ = apply(agg, jac, draws=keys)
        adjusted, target = reference_gradvac(jac, orders_from_keys(keys), target, beta)
        torch.testing.assert_close(out, adjusted.sum(0), rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(agg.target, target, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------- MoCo
def simplex_by_bisection(v: torch.Tensor) -> torch.Tensor:
    lo, hi = float(v.min()) - 1.0, float(v.max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float((v - mid).clamp_min(0).sum()) > 1.0:
            lo = mid
        else:
            hi = mid
    return (v - 0.5 * (lo + hi)).clamp_min(0)


def reference_moco(jacs, losses, beta=0.5, bs=0.5, gamma=0.1, gs=0.5, rho=0.0, softmax=False):
    num_tasks, num_params = jacs[0].shape
    y = torch.zeros(num_tasks, num_params, dtype=F64)
    lam = torch.full((num_tasks,), 1.0 / num_tasks, dtype=F64)
    updates, lams, ys = [], [], []
    for k, (jac, loss) in enumerate(zip(jacs, losses, strict=True), start=1):
        h = torch.stack([jac[t] / (jac[t].norm() + 1e-8) * abs(loss[t]) for t in range(num_tasks)])
        y = y - beta / k**bs * (y - h)
        v = lam - gamma / k**gs * ((y @ y.T + rho * torch.eye(num_tasks, dtype=F64)) @ lam)
        lam = torch.softmax(v, 0) if softmax else simplex_by_bisection(v)
        updates.append(y.T @ lam)
        lams.append(lam)
        ys.append(y)
    return updates, lams, ys


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    num_tasks=st.integers(1, 5),
    gamma=st.sampled_from([0.1, 5.0]),
    rho=st.sampled_from([0.0, 0.3]),
    mode=st.sampled_from(["projection", "softmax"]),
)
def test_moco_weights_on_the_simplex_and_match_the_algorithm(seed, num_tasks, gamma, rho, mode):
    agg = MoCo(gamma=gamma, rho=rho, lambda_update=mode)
    jacs = [rows(seed + k, num_tasks, spread=1.0) for k in range(4)]
    losses = [torch.linspace(0.2, 3.0, num_tasks, dtype=F64) * (k + 1) for k in range(4)]
    updates, lams, ys = reference_moco(
        jacs, losses, gamma=gamma, rho=rho, softmax=mode == "softmax"
    )
    for jac, loss, update, lam, y in zip(jacs, losses, updates, lams, ys, strict=True):
        out, result = apply(agg, jac, loss)
        assert bool((result.weights >= 0).all())
        assert float(result.weights.sum()) == pytest.approx(1.0, abs=1e-12)
        torch.testing.assert_close(result.weights, lam, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(agg.tracked, y)
        torch.testing.assert_close(out, update, rtol=1e-9, atol=1e-10)


@SETTINGS
@given(values=st.lists(st.floats(-5, 5), min_size=1, max_size=8))
def test_simplex_projection_kkt(values) -> None:
    v = torch.tensor(values, dtype=F64)
    x = project_to_simplex(v)
    assert bool((x >= 0).all()) and float(x.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(x, simplex_by_bisection(v), rtol=0, atol=1e-9)


def test_moco_tracks_a_constant_gradient() -> None:
    jac = rows(1, 3, spread=1.0)
    losses = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    h = jac / (jac.norm(dim=1, keepdim=True) + 1e-8) * losses[:, None]
    exact = MoCo(beta_sigma=0.0)  # constant β: y_k = (1 − (1 − β)^k) h
    for k in range(1, 6):
        apply(exact, jac, losses)
        torch.testing.assert_close(exact.tracked, (1 - 0.5**k) * h)
    decaying = MoCo()  # β_k = β/√k: Σβ_k diverges, so y → h
    for _ in range(300):
        apply(decaying, jac, losses)
    torch.testing.assert_close(decaying.tracked, h, rtol=1e-5, atol=1e-7)
    plain = MoCo(normalize=False, beta=1.0, beta_sigma=0.0)  # y = g exactly
    apply(plain, jac, losses)
    torch.testing.assert_close(plain.tracked, jac)


# ---------------------------------------------------------------------------------- GradNorm
def gradnorm_loss_grad(weights, jac, losses, initial, alpha):
    """∂L_grad/∂w by autograd, the target held constant (the paper)."""
    w = weights.detach().clone().requires_grad_(True)
    g_norm = w * jac.norm(dim=1)
    rate = losses / initial
    r = rate / rate.mean()
    target = (g_norm.mean() * r**alpha).detach()
    (grad,) = torch.autograd.grad((g_norm - target).abs().sum(), w)
    return grad


@SETTINGS
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 5), alpha=st.sampled_from([0.5, 1.5]))
def test_gradnorm_renormalises_and_writes_the_gradnorm_gradient(seed, num_tasks, alpha) -> None:
    gen = torch.Generator().manual_seed(seed)
    agg = make("gradnorm", num_tasks, alpha=alpha)
    w = agg.loss_weights
    initial = torch.rand(num_tasks, generator=gen, dtype=F64) + 0.5
    apply(agg, rows(seed, num_tasks, spread=1.0), initial)  # first step: ℓ(0)
    with torch.no_grad():
        w.copy_(torch.rand(num_tasks, generator=gen) + 0.1)  # as if an optimizer had stepped
    w.grad = None
    before = w.detach().clone().double()
    jac = rows(seed + 1, num_tasks, spread=1.0)
    losses = initial * (torch.rand(num_tasks, generator=gen, dtype=F64) + 0.2)
    out, result = apply(agg, jac, losses)
    renormalised = before * num_tasks / before.sum()
    assert float(w.detach().double().sum()) == pytest.approx(num_tasks, rel=1e-6)
    torch.testing.assert_close(w.detach().double(), renormalised, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(result.weights, w.detach().double())
    torch.testing.assert_close(result.task_weights, result.weights)
    torch.testing.assert_close(out, result.weights @ jac)
    expected = gradnorm_loss_grad(w.detach().double(), jac, losses, initial, alpha)
    torch.testing.assert_close(w.grad.double(), expected.to(w.dtype).double())
    # the gradient accumulates like any .grad
    apply(agg, jac, losses)
    torch.testing.assert_close(w.grad.double(), 2 * expected.to(w.dtype).double())


def test_gradnorm_balanced_tasks_get_no_push() -> None:
    jac = 0.1 * torch.eye(3, 5, dtype=F64)  # equal norms
    agg = make("gradnorm", 3)
    apply(agg, jac, torch.tensor([0.3, 0.7, 1.1], dtype=F64))
    apply(agg, jac, torch.tensor([0.3, 0.7, 1.1], dtype=F64) * 0.9)  # equal training rates
    assert torch.equal(agg.loss_weights.grad, torch.zeros(3))


def test_gradnorm_weights_scale_the_task_parameters_through_the_balancer() -> None:
    problem = build_problem(seed=3, num_tasks=3)
    balancer = mtlbalance.make("gradnorm", problem.encoder, dict(problem.heads))
    (w,) = list(balancer.parameters())
    with torch.no_grad():
        w.copy_(torch.tensor([0.5, 1.0, 3.0]))
    losses, _ = problem.losses(0)
    twin = copy.deepcopy(problem)
    stats = balancer.backward(losses)
    torch.testing.assert_close(stats.weights, torch.tensor([1 / 3, 2 / 3, 2.0], dtype=F64))
    expected_w = stats.weights
    twin_losses, _ = twin.losses(0)
    sum(wt * v for wt, v in zip(expected_w, twin_losses.values(), strict=True)).backward()
    for p, q in zip(problem.all_params(), twin.all_params(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


# ---------------------------------------------------------------------------------- MetaBalance
@SETTINGS
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 5), zero=st.integers(-1, 4))
def test_metabalance_full_relax_gives_every_task_the_largest_norm(seed, num_tasks, zero) -> None:
    agg = MetaBalance(relax_factor=1.0, beta=0.0)
    for step in range(3):
        jac = rows(seed + step, num_tasks, spread=3.0)
        if 0 <= zero < num_tasks:
            jac[zero] = 0.0
        out, result = apply(agg, jac)
        scaled = result.weights[:, None] * jac
        torch.testing.assert_close(out, scaled.sum(0))
        largest = jac.norm(dim=1).max()
        for t in range(num_tasks):
            if t == zero:
                assert float(scaled[t].norm()) == 0.0
            else:
                torch.testing.assert_close(scaled[t].norm(), largest, rtol=1e-12, atol=0)


@SETTINGS
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 4))
def test_metabalance_matches_the_authors_rule(seed: int, num_tasks: int) -> None:
    agg = MetaBalance()
    norms = torch.zeros(num_tasks, dtype=F64)
    for step in range(4):
        jac = rows(seed + step, num_tasks, spread=2.0)
        norms = 0.9 * norms + 0.1 * jac.norm(dim=1)
        expected = sum((norms.max() / norms[t] * 0.7 + 0.3) * jac[t] for t in range(num_tasks))
        out, _ = apply(agg, jac)
        torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------------------------- MTAdam
def test_mtadam_single_task_is_adam() -> None:
    p = torch.nn.Parameter(torch.zeros(9, dtype=F64))
    adam = torch.optim.Adam([p], lr=1.0)
    agg = MTAdam()
    for step in range(5):
        g = rows(step, 1)
        out, result = apply(agg, g)
        assert result.weights is None
        p.grad = g[0].clone()
        before = p.detach().clone()
        adam.step()
        torch.testing.assert_close(out, before - p.detach(), rtol=1e-12, atol=1e-14)


@SETTINGS
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 5))
def test_mtadam_identical_tasks_give_t_times_the_adam_direction(seed, num_tasks) -> None:
    """All tasks equal: same norms, scale 1, same moments, same denominator, so the update
    is T · m̂ / (√v̂ + ε), T times single-task Adam's."""
    many, one = MTAdam(), MTAdam()
    for step in range(4):
        g = rows(seed + step, 1)
        out_many, _ = apply(many, g.repeat(num_tasks, 1))
        out_one, _ = apply(one, g)
        torch.testing.assert_close(out_many, num_tasks * out_one, rtol=1e-12, atol=1e-14)


@SETTINGS
@given(seed=st.integers(0, 10_000), factor=st.floats(0.1, 10.0))
def test_mtadam_balances_task_magnitudes(seed: int, factor: float) -> None:
    """Rescaling a (non-largest) task's gradients by a constant leaves the update unchanged
    (with ε = 0): every task is brought to the largest magnitude before its moments."""
    a, b = MTAdam(eps=0.0), MTAdam(eps=0.0)
    for step in range(4):
        jac = rows(seed + step, 3)
        jac[0] *= 1e3  # task 0 stays the largest
        scaled = jac.clone()
        scaled[2] *= factor
        out_a, _ = apply(a, jac)
        out_b, _ = apply(b, scaled)
        torch.testing.assert_close(out_a, out_b, rtol=1e-9, atol=1e-12)


def reference_mtadam(jacs, b1=0.9, b2=0.999, b3=0.9, eps=1e-8):
    """The authors' per-parameter loop with one 'parameter' (the whole vector), anchored at
    the largest EMA norm."""
    num_tasks, num_params = jacs[0].shape
    m = torch.zeros(num_tasks, num_params, dtype=F64)
    v = torch.zeros_like(m)
    norms = [0.0] * num_tasks
    updates = []
    for k, jac in enumerate(jacs, start=1):
        for t in range(num_tasks):
            n = float(jac[t].norm())
            norms[t] = n if k == 1 else norms[t] * b3 + (1 - b3) * n
        anchor = max(norms)
        denoms = []
        for t in range(num_tasks):
            g = jac[t] * anchor / norms[t] if norms[t] > 0 else jac[t]
            m[t] = b1 * m[t] + (1 - b1) * g
            v[t] = b2 * v[t] + (1 - b2) * g * g
            denoms.append(v[t].sqrt() / math.sqrt(1 - b2**k) + eps)
        denom = torch.stack(denoms).amax(0)
        updates.append(sum(m[t] / (1 - b1**k) / denom for t in range(num_tasks)))
    return updates


@SETTINGS
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 4))
def test_mtadam_matches_the_authors_loop(seed: int, num_tasks: int) -> None:
    jacs = [rows(seed + k, num_tasks, spread=2.0) for k in range(4)]
    agg = MTAdam()
    for jac, expected in zip(jacs, reference_mtadam(jacs), strict=True):
        out, _ = apply(agg, jac)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------- all seven
def degenerate() -> dict[str, torch.Tensor]:
    g = torch.linspace(-1.0, 2.0, 7, dtype=F64)
    h = torch.sin(torch.arange(7, dtype=F64))
    return {
        "zero row": torch.stack([g, torch.zeros_like(g), h]),
        "identical rows": torch.stack([g, g, g]),
        "opposed rows": torch.stack([g, -g]),
        "T=1": g[None],
        "all zero": torch.zeros(3, 7, dtype=F64),
        "tiny and huge": torch.stack([1e-30 * g, 1e20 * h]),
    }


def forced_draws(agg, num_tasks: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    if not isinstance(agg, RandomDraws):
        return []
    torch.manual_seed(seed)
    return [agg.sample_draws(num_tasks, torch.zeros(1, dtype=F64)) for _ in range(steps)]


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("case", list(degenerate()))
def test_finite_on_degenerate_input(name: str, case: str) -> None:
    jac = degenerate()[case]
    agg = make(name, jac.shape[0])
    for step in range(4):
        out, result = apply(
            agg, jac, torch.linspace(0.5, 2.0, jac.shape[0], dtype=F64) / (step + 1)
        )
        assert bool(torch.isfinite(out).all()), f"{name} on {case}: {out}"
        for w in (result.weights, result.task_weights):
            assert w is None or bool(torch.isfinite(w).all())
    if name == "gradnorm":
        assert bool(torch.isfinite(agg.loss_weights.grad).all())
    if case in ("all zero", "T=1") and name not in ("mtadam", "moco"):
        torch.testing.assert_close(out, jac.sum(0))  # nothing to balance


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("seed", [0, 1])
def test_permutation_equivariance(name: str, seed: int) -> None:
    num_tasks = 4
    perm = torch.tensor([2, 0, 3, 1])
    base, permuted = make(name, num_tasks), make(name, num_tasks)
    draws = forced_draws(base, num_tasks, 3, seed)
    for step in range(3):
        jac = rows(seed * 100 + step, num_tasks, num_params=30, spread=1.0)
        jac[1] -= jac[0]  # conflicts
        losses = torch.linspace(0.5, 2.0, num_tasks, dtype=F64) * (1 + step)
        d = draws[step] if draws else None
        pd = base.permute_draws(d, perm) if draws else None
        out_a, res_a = apply(base, jac, losses, d)
        out_b, res_b = apply(permuted, jac[perm], losses[perm], pd)
        torch.testing.assert_close(out_b, out_a, rtol=1e-10, atol=1e-12)
        if res_a.weights is not None:
            torch.testing.assert_close(res_b.weights, res_a.weights[perm], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", list(METHODS))
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    num_tasks = 3
    agg = make(name, num_tasks)
    draws = forced_draws(agg, num_tasks, 6, seed=3)
    jacs = [rows(50 + k, num_tasks, spread=1.0) for k in range(6)]
    losses = [torch.tensor([1.0, 2.0, 3.0], dtype=F64) / (k + 1) for k in range(6)]

    def run(a, steps):
        outs = []
        for k in steps:
            out, _ = apply(a, jacs[k], losses[k], draws[k] if draws else None)
            if name == "gradnorm":  # what an optimizer would do with w.grad
                with torch.no_grad():
                    w = a.loss_weights
                    w.sub_(0.01 * w.grad)
                    w.grad = None
            outs.append(out)
        return outs

    run(agg, range(3))
    saved = copy.deepcopy(agg.state_dict())
    expected = run(agg, range(3, 6))
    fresh = make(name, num_tasks)
    fresh.load_state_dict(saved)
    for a, b in zip(run(fresh, range(3, 6)), expected, strict=True):
        assert torch.equal(a, b)
    fresh.reset()
    again = make(name, num_tasks)
    assert torch.equal(run(fresh, range(2))[-1], run(again, range(2))[-1])


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("gradvac", {"beta": 1.5}),
        ("graddrop", {"leak": -0.1}),
        ("mtadam", {"beta3": 1.0}),
        ("metabalance", {"relax_factor": 1.2}),
        ("metabalance", {"beta": 1.0}),
        ("moco", {"beta": 0.0}),
        ("moco", {"lambda_update": "mirror"}),
        ("gradnorm", {"alpha": -1.0}),
    ],
)
def test_invalid_hyperparameters_are_named(name: str, kwargs: dict) -> None:
    (option,) = kwargs
    with pytest.raises(ValueError, match=option):
        METHODS[name](**kwargs)


def test_gradvac_docstring_describes_libmtl_as_it_is() -> None:
    """Issue 15, item 13: LibMTL moved the target update out of the ``if`` in February 2024
    (commit d2d84fa); the docstring must not describe the old behaviour as LibMTL's."""
    doc = " ".join((GradVac.__doc__ or "").split())
    assert "LibMTL updates ``φ̂_ts`` only inside" not in doc
    assert "d2d84fa" in doc and "2024" in doc
