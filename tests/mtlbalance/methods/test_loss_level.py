"""Loss-level methods (GLS, RLW, UW, DWA, IMTL-L, STCH, FAMO, STL, IGBv2) against their papers'
definitions, written out here independently of the implementations."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtlbalance
from mtlbalance.aggregators.famo import FAMO
from mtlbalance.transforms.dwa import DWA
from mtlbalance.transforms.igbv2 import IGBv2
from mtlbalance.transforms.rlw import RLW

from ..conftest import build_problem

#: IGBv2 on a schedule short enough for tests: base losses after epoch 0, SAC updates from
#: epoch 1, SAC weights from epoch 2, a small agent.
SMALL_IGB = dict(
    base_epoch=0,
    start_epoch=2,
    update_after=1,
    update_every=2,
    batch_size=8,
    hidden=16,
    buffer_size=16,
)


def vec(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.detach() for v in losses.values()])


def grads(problem) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in problem.all_params()]


def reference_grads(problem, step: int, objective) -> list[torch.Tensor]:
    """Gradients of ``objective(loss vector)`` on a copy of the problem, plain autograd."""
    twin = copy.deepcopy(problem)
    twin.zero_grad()
    losses, _ = twin.losses(step)
    objective(torch.stack(list(losses.values()))).backward()
    return grads(twin)


def assert_grads(got: list[torch.Tensor], want: list[torch.Tensor], **tol: float) -> None:
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **tol)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def step(problem, balancer, k: int, opt=None, after: bool = True):
    if opt is not None:
        opt.zero_grad(set_to_none=True)
    else:
        problem.zero_grad()
    losses, z = problem.losses(k)
    stats = balancer.backward(losses, representation=z)
    if opt is not None:
        opt.step()
    if after:
        with torch.no_grad():
            balancer.after_step(problem.losses(k)[0])
    return losses, stats


# ---------------------------------------------------------------------------------- GLS
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 4))
def test_gls_gradient_is_that_of_the_geometric_mean(seed: int, num_tasks: int) -> None:
    problem = build_problem(seed=seed, num_tasks=num_tasks)
    balancer = mtlbalance.make("gls", problem.encoder, dict(problem.heads), eps=0.0)
    want = reference_grads(problem, 0, lambda v: torch.prod(v) ** (1.0 / num_tasks))
    losses, stats = step(problem, balancer, 0)
    assert_grads(grads(problem), want, rtol=1e-9, atol=1e-12)
    geo = torch.prod(vec(losses)) ** (1.0 / num_tasks)
    torch.testing.assert_close(stats.transformed.sum(), geo)


def test_gls_default_eps_is_close_and_zero_loss_is_finite() -> None:
    problem = build_problem(seed=3, num_tasks=3)
    balancer = mtlbalance.make("gls", problem.encoder, dict(problem.heads))
    want = reference_grads(problem, 0, lambda v: torch.prod(v) ** (1.0 / 3))
    step(problem, balancer, 0)
    assert_grads(grads(problem), want, rtol=1e-5, atol=1e-8)
    transform = balancer.transform
    leaf = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    out = transform(leaf)
    (g,) = torch.autograd.grad(out.sum(), leaf)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()


# ---------------------------------------------------------------------------------- RLW
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rlw_weights_are_softmax_of_the_draws(seed: int) -> None:
    torch.manual_seed(seed)
    num_tasks = 4
    losses = torch.rand(num_tasks, dtype=torch.float64) * 10 + 0.1
    rlw = RLW()
    z = torch.randn(num_tasks, dtype=torch.float64)
    rlw.force_draws(z)
    w = rlw(losses) / losses
    torch.testing.assert_close(w, torch.exp(z) / torch.exp(z).sum())
    assert w.shape == (num_tasks,) and (w > 0).all()
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    # sampled draws: a fresh weighting every step, reproducible from torch's seed
    torch.manual_seed(seed)
    first = [rlw(losses) / losses for _ in range(3)]
    torch.manual_seed(seed)
    again = [rlw(losses) / losses for _ in range(3)]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert not torch.equal(first[0], first[1])


def test_rlw_balancer_gradients_are_the_weighted_sum() -> None:
    problem = build_problem(seed=4, num_tasks=3)
    balancer = mtlbalance.make("rlw", problem.encoder, dict(problem.heads))
    z = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    balancer.transform.force_draws(z)
    w = torch.softmax(z, 0)
    want = reference_grads(problem, 0, lambda v: (w * v).sum())
    step(problem, balancer, 0)
    assert_grads(grads(problem), want)


# ---------------------------------------------------------------------------------- UW, IMTL-L
LEARNED = {
    # name: (ℓ̃(s, ℓ), analytic ∂ℓ̃_t/∂s_t, loss weight)
    "uw": (
        lambda s, v: torch.exp(-s) * v + s,
        lambda s, v: 1 - torch.exp(-s) * v,
        lambda s: torch.exp(-s),
    ),
    "imtl_l": (
        lambda s, v: torch.exp(s) * v - s,
        lambda s, v: torch.exp(s) * v - 1,
        lambda s: torch.exp(s),
    ),
}


@pytest.mark.parametrize("method", list(LEARNED))
@pytest.mark.parametrize("seed", [0, 7])
def test_learned_scales_get_the_analytic_gradient(method: str, seed: int) -> None:
    formula, ds, weight = LEARNED[method]
    problem = build_problem(seed=seed, num_tasks=3)
    balancer = mtlbalance.make(method, problem.encoder, dict(problem.heads))
    (s,) = list(balancer.parameters())
    assert s.shape == (3,) and torch.equal(s.detach(), torch.zeros(3))
    with torch.no_grad():
        s.copy_(torch.tensor([-0.4, 0.1, 0.7]))
    opt = torch.optim.SGD([*problem.all_params(), s], lr=0.05)
    for k in range(3):
        s_now = s.detach().double()
        want = reference_grads(problem, k, lambda v, s_now=s_now: weight(s_now).mul(v).sum())
        opt.zero_grad(set_to_none=True)
        losses, stats = step(problem, balancer, k, after=False)
        v = vec(losses)
        assert_grads(grads(problem), want, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(s.grad.double(), ds(s_now, v), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(stats.transformed, formula(s_now, v), rtol=1e-6, atol=1e-7)
        before = s.detach().clone()
        opt.step()
        torch.testing.assert_close(s.detach(), before - 0.05 * s.grad)
        assert not torch.equal(s.detach(), before)


def test_learned_scales_reach_their_stationary_point() -> None:
    """UW's s_t → log ℓ_t, IMTL-L's s_t → −log ℓ_t for fixed losses."""
    losses = torch.tensor([0.1, 1.0, 30.0])
    for method, sign in (("uw", 1.0), ("imtl_l", -1.0)):
        transform = mtlbalance.registry.TRANSFORMS[method]()
        transform.setup(["a", "b", "c"])
        opt = torch.optim.Adam(transform.parameters(), lr=0.05)
        for _ in range(1500):
            opt.zero_grad()
            transform(losses).sum().backward()
            opt.step()
        torch.testing.assert_close(transform.s.detach(), sign * losses.log(), atol=1e-3, rtol=0)
        transform.reset()
        assert torch.equal(transform.s.detach(), torch.zeros(3))


# ---------------------------------------------------------------------------------- DWA
@pytest.mark.parametrize("temperature", [2.0, 0.05])  # the paper's T, and a sharp one
def test_dwa_weights_follow_the_formula_after_two_epochs(temperature: float) -> None:
    problem = build_problem(seed=2, num_tasks=3)
    kwargs = {} if temperature == 2.0 else {"temperature": temperature}  # 2.0: the default
    balancer = mtlbalance.make("dwa", problem.encoder, dict(problem.heads), **kwargs)
    opt = torch.optim.SGD(problem.all_params(), lr=0.01)
    epoch_means = []
    k = 0
    for _ in range(2):
        seen = []
        for _ in range(3):
            losses, stats = step(problem, balancer, k, opt)
            v = vec(losses)
            seen.append(v)
            torch.testing.assert_close(stats.transformed, v)  # w = 1 in the first two epochs
            k += 1
        epoch_means.append(torch.stack(seen).mean(0))
        balancer.epoch_end()
    r = epoch_means[1] / epoch_means[0]
    w = 3 * torch.exp(r / temperature) / torch.exp(r / temperature).sum()
    want = reference_grads(problem, k, lambda v: (w * v).sum())
    losses, stats = step(problem, balancer, k)
    torch.testing.assert_close(stats.transformed / vec(losses), w)
    assert_grads(grads(problem), want)
    torch.testing.assert_close(w.sum(), torch.tensor(3.0, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(
    last=st.lists(st.floats(0.0, 1e6), min_size=1, max_size=5),
    before=st.lists(st.floats(0.0, 1e6), min_size=5, max_size=5),
    temperature=st.floats(0.1, 10.0),
)
def test_dwa_weights_are_positive_and_sum_to_t(last, before, temperature) -> None:
    a = torch.tensor(last, dtype=torch.float64)
    b = torch.tensor(before[: len(last)], dtype=torch.float64)
    w = DWA(temperature=temperature).compute_weights(a, b)
    assert w.shape == a.shape
    assert torch.isfinite(w).all() and (w >= 0).all()
    torch.testing.assert_close(w.sum(), torch.tensor(float(len(last)), dtype=torch.float64))
    if bool((b > 0).all()) and float((a / b).max() - (a / b).min()) / temperature < 30:
        assert (w > 0).all()


# ---------------------------------------------------------------------------------- STCH
def stch_value(v: torch.Tensor, nadir: torch.Tensor, mu: float, eps: float) -> torch.Tensor:
    """T µ log Σ_t exp((log(ℓ_t+ε) − log(ℓ̄_t+ε)) / µ)  (uniform preference, ideal point 0)."""
    u = torch.log(v + eps) - torch.log(nadir + eps)
    return len(v) * mu * torch.log(torch.exp(u / mu).sum())


@pytest.mark.parametrize("mu", [1.0, 0.1])
@pytest.mark.parametrize("seed", [0, 5])
def test_stch_sum_and_gradient_are_the_scalarisation(mu: float, seed: int) -> None:
    problem = build_problem(seed=seed, num_tasks=3)
    balancer = mtlbalance.make("stch", problem.encoder, dict(problem.heads), mu=mu, warmup_epochs=1)
    eps = 1e-8
    opt = torch.optim.SGD(problem.all_params(), lr=0.01)
    nadir_epoch = []
    for k in range(6):  # epoch 0: warm-up; epoch 1: warm-up, nadir losses recorded
        losses, stats = step(problem, balancer, k, opt)
        torch.testing.assert_close(stats.transformed, torch.log(vec(losses) + eps))
        if k >= 3:
            nadir_epoch.append(vec(losses))
        if k % 3 == 2:
            balancer.epoch_end()
    nadir = torch.stack(nadir_epoch).mean(0)
    torch.testing.assert_close(balancer.transform.nadir, nadir)
    for k in range(6, 9):
        want = reference_grads(problem, k, lambda v: stch_value(v, nadir, mu, eps))
        losses, stats = step(problem, balancer, k)
        torch.testing.assert_close(stats.transformed.sum(), stch_value(vec(losses), nadir, mu, eps))
        assert_grads(grads(problem), want, rtol=1e-7, atol=1e-10)


def test_stch_preference_weights() -> None:
    transform = mtlbalance.registry.TRANSFORMS["stch"](warmup_epochs=0, preference=[1.0, 3.0])
    transform.setup(["a", "b"])
    transform(torch.tensor([2.0, 4.0], dtype=torch.float64))
    transform.epoch_end()
    leaf = torch.tensor([1.0, 5.0], dtype=torch.float64, requires_grad=True)
    out = transform(leaf)
    u = torch.log(leaf + 1e-8) - torch.log(torch.tensor([2.0, 4.0], dtype=torch.float64) + 1e-8)
    ref = 2 * torch.logsumexp(torch.tensor([1.0, 3.0], dtype=torch.float64) * u, 0)
    torch.testing.assert_close(out.sum(), ref)
    (g,) = torch.autograd.grad(out.sum(), leaf)
    (g_ref,) = torch.autograd.grad(ref, leaf)
    torch.testing.assert_close(g, g_ref)
    with pytest.raises(ValueError, match="preference has 2 weights for 3 tasks"):
        mtlbalance.registry.TRANSFORMS["stch"](preference=[1.0, 3.0]).setup(["a", "b", "c"])


# ---------------------------------------------------------------------------------- STL
@pytest.mark.parametrize("task", ["t2", 2, -1])
def test_stl_trains_only_its_task(task) -> None:
    problem = build_problem(seed=1, num_tasks=3)
    balancer = mtlbalance.make("stl", problem.encoder, dict(problem.heads), task=task)
    want = reference_grads(problem, 0, lambda v: v[2])
    _, stats = step(problem, balancer, 0)
    assert_grads(grads(problem), want)
    torch.testing.assert_close(stats.weights, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    for name in ("t0", "t1"):
        for p in problem.heads[name].parameters():
            assert p.grad is not None and not p.grad.any()
    assert any(p.grad.any() for p in problem.heads["t2"].parameters())


def test_stl_rejects_a_missing_or_unknown_task() -> None:
    problem = build_problem(seed=1, num_tasks=2)
    for bad, match in (
        (None, r"pass task=<name> \(one of \['t0', 't1'\]\)"),
        ("depth", r"unknown task 'depth'; the tasks are \['t0', 't1'\]"),
        (5, r"task index 5 is out of range for tasks \['t0', 't1'\]"),
    ):
        with pytest.raises(ValueError, match=match):
            mtlbalance.make("stl", problem.encoder, dict(problem.heads), task=bad)


# ---------------------------------------------------------------------------------- FAMO
def famo_reference(xi: torch.Tensor, losses: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The gradient of Σ_t c z_t log(ℓ_t + ε) w.r.t. ℓ_t, c = 1/Σ z/(ℓ+ε): c z_t/(ℓ_t+ε)."""
    z = torch.exp(xi) / torch.exp(xi).sum()
    return (z / (losses + eps)) / (z / (losses + eps)).sum()


def test_famo_weights_are_its_loss_gradient_and_sum_to_one() -> None:
    problem = build_problem(seed=6, num_tasks=3)
    balancer = mtlbalance.make("famo", problem.encoder, dict(problem.heads))
    opt = torch.optim.SGD(problem.all_params(), lr=0.01)
    for k in range(4):
        xi = balancer.aggregator.xi.clone()
        losses, _ = problem.losses(k)
        w = famo_reference(xi, vec(losses))
        want = reference_grads(problem, k, lambda v, w=w: (w * v).sum())
        losses, stats = step(problem, balancer, k, opt)
        torch.testing.assert_close(stats.weights, w)
        assert (stats.weights > 0).all()
        torch.testing.assert_close(stats.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
        if k == 0:
            assert_grads(grads(problem), want)
    assert not torch.equal(balancer.aggregator.xi, torch.zeros(3, dtype=torch.float64))


def test_famo_sgd_update_is_algorithm_1() -> None:
    famo = FAMO(w_optimizer="sgd", w_lr=0.1, gamma=0.01)
    famo.setup(["a", "b", "c"])
    old = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    new = torch.tensor([0.5, 1.9, 0.45], dtype=torch.float64)
    xi = torch.zeros(3, dtype=torch.float64)
    for _ in range(3):
        famo(old, old)
        famo.after_step(new)
        xi_leaf = xi.clone().requires_grad_(True)
        delta = torch.log(old + 1e-8) - torch.log(new + 1e-8)
        (d,) = torch.autograd.grad(torch.softmax(xi_leaf, 0), xi_leaf, grad_outputs=delta)
        xi = xi - 0.1 * (d + 0.01 * xi)
        torch.testing.assert_close(famo.xi, xi)


@pytest.mark.parametrize("w_optimizer", ["adam", "sgd"])
def test_famo_moves_weight_to_the_task_that_improved_least(w_optimizer: str) -> None:
    famo = FAMO(w_optimizer=w_optimizer, w_lr=0.025 if w_optimizer == "adam" else 5.0)
    famo.setup(["fast", "slow"])
    equal = torch.tensor([1.0, 1.0], dtype=torch.float64)
    w0 = famo(equal, equal)
    torch.testing.assert_close(w0, torch.tensor([0.5, 0.5], dtype=torch.float64))
    previous = w0
    for _ in range(5):
        famo(equal, equal)
        famo.after_step(torch.tensor([0.5, 0.95], dtype=torch.float64))  # "slow" improved least
        w = famo(equal, equal)
        assert w[1] > previous[1] and w[0] < previous[0]
        torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
        previous = w


def test_famo_without_after_step_keeps_uniform_logits() -> None:
    famo = FAMO()
    famo.setup(["a", "b"])
    losses = torch.tensor([0.2, 5.0], dtype=torch.float64)
    for _ in range(3):
        w = famo(losses, losses)
    torch.testing.assert_close(w, famo_reference(torch.zeros(2, dtype=torch.float64), losses))
    assert torch.equal(famo.xi, torch.zeros(2, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(
    losses=st.lists(st.floats(0.0, 1e6), min_size=1, max_size=5),
    factor=st.floats(0.0, 2.0),
)
def test_famo_weights_are_finite_positive_and_sum_to_one(losses, factor) -> None:
    famo = FAMO()
    famo.setup([str(i) for i in range(len(losses))])
    v = torch.tensor(losses, dtype=torch.float64)
    for _ in range(3):
        w = famo(v, v)
        assert w.shape == v.shape and torch.isfinite(w).all() and (w > 0).all()
        torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
        famo.after_step(v * factor)
        assert torch.isfinite(famo.xi).all()


# ---------------------------------------------------------------------------------- IGBv2
def test_igbv2_weights_through_its_phases() -> None:
    torch.manual_seed(0)
    problem = build_problem(seed=3, num_tasks=3)
    balancer = mtlbalance.make("igbv2", problem.encoder, dict(problem.heads), **SMALL_IGB)
    transform = balancer.transform
    opt = torch.optim.SGD(problem.all_params(), lr=0.01)
    epoch_losses, states = [], []
    for k in range(12):  # 4 epochs of 3 steps
        losses, stats = step(problem, balancer, k, opt)
        v = vec(losses)
        if k >= 3:  # the state: losses over the epoch-0 means
            states.append(v.float() / (transform.base.float() + 1e-8))
        w = transform.last_weights.double()
        assert w.shape == (3,) and torch.isfinite(w).all() and (w > 0).all()
        torch.testing.assert_close(w.sum(), torch.tensor(3.0, dtype=torch.float64))
        torch.testing.assert_close(stats.transformed, w * torch.log(v + 1e-8), rtol=1e-6, atol=0)
        if k < 3:
            epoch_losses.append(v)
        if k % 3 == 2:
            balancer.epoch_end()
            if k == 2:
                torch.testing.assert_close(transform.base, torch.stack(epoch_losses).mean(0))
    agent = transform.agent
    assert agent is not None and agent.size == 8  # one transition per step after epoch 0
    # the reward of each transition: how much the worst task's normalised loss went DOWN
    want_rewards = torch.stack([(a - b).min() for a, b in itertools.pairwise(states)])
    torch.testing.assert_close(agent.buf_reward[:8].reshape(-1), want_rewards)
    assert bool((want_rewards != 0).all())  # (the sign matters for every entry)
    # the SAC weights (epochs ≥ 2) are the actor's policy at the normalised losses
    noise = torch.randn(3, dtype=torch.float64)
    transform.force_draws(noise)
    losses, _ = step(problem, balancer, 12)
    state = vec(losses).float() / (transform.base.float() + 1e-8)
    with torch.no_grad():  # (the SAC updates of this step come before the action)
        h = agent.actor.body(state)
        u = agent.actor.mu(h) + agent.actor.log_std(h).clamp(-20, 2).exp() * noise.float()
    torch.testing.assert_close(transform.last_weights, 3 * torch.softmax(u, 0))


def test_igbv2_random_phase_is_random_weighting_of_log_losses() -> None:
    problem = build_problem(seed=8, num_tasks=3)
    balancer = mtlbalance.make("igbv2", problem.encoder, dict(problem.heads))
    z = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    balancer.transform.force_draws(z)
    w = 3 * torch.softmax(z, 0)
    want = reference_grads(problem, 0, lambda v: (w * torch.log(v + 1e-8)).sum())
    step(problem, balancer, 0)
    assert_grads(grads(problem), want)
    assert isinstance(balancer.transform, IGBv2) and balancer.transform.randomized


# ---------------------------------------------------------------------------------- state
STATEFUL = {
    "uw": {},
    "imtl_l": {},
    "dwa": {},
    "stch": {"warmup_epochs": 1},
    "famo": {},
    "igbv2": SMALL_IGB,
    "rlw": {},
    "gls": {},
}


def run(problem, balancer, opt, steps: range) -> None:
    for k in steps:
        step(problem, balancer, k, opt)
        if k % 3 == 2:
            balancer.epoch_end()


@pytest.mark.parametrize("method", list(STATEFUL))
def test_state_dict_resumes_bit_identically(method: str) -> None:
    torch.manual_seed(11)
    kwargs = STATEFUL[method]
    problem = build_problem(seed=9, num_tasks=3)
    balancer = mtlbalance.make(method, problem.encoder, dict(problem.heads), **kwargs)
    opt = torch.optim.Adam([*problem.all_params(), *balancer.parameters()], lr=1e-2)
    run(problem, balancer, opt, range(10))  # mid-epoch, every phase of the schedules started
    saved = roundtrip(
        {
            "model": [p.detach().clone() for p in problem.all_params()],
            "opt": opt.state_dict(),
            "balancer": balancer.state_dict(),
            "rng": torch.get_rng_state(),
        }
    )
    run(problem, balancer, opt, range(10, 17))
    final = [p.detach().clone() for p in [*problem.all_params(), *balancer.parameters()]]

    resumed = build_problem(seed=99, num_tasks=3)
    resumed.seed = problem.seed
    with torch.no_grad():
        for p, v in zip(resumed.all_params(), saved["model"], strict=True):
            p.copy_(v)
    fresh = mtlbalance.make(method, resumed.encoder, dict(resumed.heads), **kwargs)
    fresh.load_state_dict(saved["balancer"])
    opt2 = torch.optim.Adam([*resumed.all_params(), *fresh.parameters()], lr=1e-2)
    opt2.load_state_dict(saved["opt"])
    torch.set_rng_state(saved["rng"])
    run(resumed, fresh, opt2, range(10, 17))
    again = [p.detach() for p in [*resumed.all_params(), *fresh.parameters()]]
    assert len(again) == len(final)
    for a, b in zip(final, again, strict=True):
        assert torch.equal(a, b), method


@pytest.mark.parametrize("method", list(STATEFUL))
def test_reset_starts_fresh(method: str) -> None:
    kwargs = STATEFUL[method]
    problem = build_problem(seed=10, num_tasks=3)
    balancer = mtlbalance.make(method, problem.encoder, dict(problem.heads), **kwargs)
    fresh_state = copy.deepcopy(balancer.state_dict())
    opt = torch.optim.SGD([*problem.all_params(), *balancer.parameters()], lr=1e-2)
    run(problem, balancer, opt, range(9))
    balancer.reset()
    twin = copy.deepcopy(problem)
    fresh = mtlbalance.make(method, twin.encoder, dict(twin.heads), **kwargs)
    fresh.load_state_dict(fresh_state)
    torch.manual_seed(3)
    step(problem, balancer, 20)
    torch.manual_seed(3)
    step(twin, fresh, 20)
    assert_grads(grads(problem), grads(twin), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["igbv2", "famo", "dwa", "stch"])
def test_state_moves_to_the_device_of_the_losses(method: str) -> None:
    """A state saved as CPU tensors loads and continues (the GPU path is the same code)."""
    kwargs = STATEFUL[method]
    problem = build_problem(seed=12, num_tasks=2)
    balancer = mtlbalance.make(method, problem.encoder, dict(problem.heads), **kwargs)
    run(problem, balancer, None, range(9))
    state = roundtrip(balancer.state_dict())
    fresh = mtlbalance.make(method, problem.encoder, dict(problem.heads), **kwargs)
    fresh.load_state_dict(state)
    _, stats = step(problem, fresh, 9)
    assert torch.isfinite(stats.transformed).all()


# ---------------------------------------------------------------------------------- shared
@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("gls", {}),
        ("uw", {}),
        ("imtl_l", {}),
        ("dwa", {}),
        ("stch", {"warmup_epochs": 0}),
        ("famo", {}),
        ("rlw", {}),
        ("igbv2", SMALL_IGB),
    ],
)
def test_one_task_and_zero_losses_stay_finite(method: str, kwargs) -> None:
    for num_tasks in (1, 3):
        problem = build_problem(seed=13, num_tasks=num_tasks)
        balancer = mtlbalance.make(method, problem.encoder, dict(problem.heads), **kwargs)
        for k in range(7):
            step(problem, balancer, k)
            assert all(torch.isfinite(g).all() for g in grads(problem))
            if k % 2 == 1:
                balancer.epoch_end()
        transform, agg = balancer.transform, balancer.aggregator
        zeros = torch.zeros(num_tasks, dtype=torch.float64)
        out = transform(zeros)
        assert torch.isfinite(out).all(), method
        w = agg(zeros, out)
        assert w is None or (torch.isfinite(w).all() and (w > 0).all())


def test_methods_are_registered_with_metadata() -> None:
    for method, kind in (
        ("gls", "transform"),
        ("rlw", "transform"),
        ("uw", "transform"),
        ("dwa", "transform"),
        ("imtl_l", "transform"),
        ("stch", "transform"),
        ("igbv2", "transform"),
        ("famo", "aggregator"),
        ("stl", "aggregator"),
    ):
        table = mtlbalance.registry.TRANSFORMS if kind == "transform" else None
        cls = (table or mtlbalance.registry.AGGREGATORS)[method]
        assert cls.reference and cls.cost and cls.__doc__
        assert method in mtlbalance.available()
    assert mtlbalance.registry.TRANSFORMS["rlw"].randomized
    assert mtlbalance.registry.TRANSFORMS["igbv2"].randomized
    assert not mtlbalance.registry.TRANSFORMS["gls"].elementwise
    assert not mtlbalance.registry.TRANSFORMS["stch"].elementwise
    assert math.isclose(DWA().temperature, 2.0)
    with pytest.raises(ValueError, match="temperature"):
        DWA(temperature=0.0)
    with pytest.raises(ValueError, match="w_optimizer"):
        FAMO(w_optimizer="rmsprop")
    with pytest.raises(ValueError, match="update_every"):
        IGBv2(update_every=0)
