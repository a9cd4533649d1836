"""DB-MTL against a plain reference implementation of the paper's Algorithm 1."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtlbalance

from .conftest import Problem, build_problem

ENGINES = ["loop", "batched", "representation", "auto"]
EPS = 1e-8


def reference_run(
    problem: Problem, steps: int, beta: float, sigma: float, lr: float
) -> list[list[torch.Tensor]]:
    """Algorithm 1, written out: returns every parameter after every step (plain SGD)."""
    shared = list(problem.encoder.parameters())
    ema = [
        torch.zeros(sum(p.numel() for p in shared), dtype=shared[0].dtype) for _ in problem.tasks
    ]
    trajectory = []
    for k in range(steps):
        losses, _ = problem.losses(k)
        logs = {t: torch.log(losses[t] + EPS) for t in problem.tasks}
        beta_k = beta / (k + 1) ** sigma
        for i, t in enumerate(problem.tasks):
            g = torch.autograd.grad(logs[t], shared, retain_graph=True)
            g_flat = torch.cat([x.reshape(-1) for x in g])
            ema[i] = beta_k * ema[i] + (1 - beta_k) * g_flat
        alpha = max(float(e.norm()) for e in ema)
        update = alpha * sum(e / (e.norm() + EPS) for e in ema)
        head_grads = {
            t: torch.autograd.grad(logs[t], list(problem.heads[t].parameters()), retain_graph=True)
            for t in problem.tasks
        }
        with torch.no_grad():
            offset = 0
            for p in shared:
                p -= lr * update[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            for t in problem.tasks:
                for p, g in zip(problem.heads[t].parameters(), head_grads[t], strict=True):
                    p -= lr * g
        trajectory.append([p.detach().clone() for p in problem.all_params()])
    return trajectory


def balancer_run(
    problem: Problem, steps: int, beta: float, sigma: float, lr: float, engine: str
) -> list[list[torch.Tensor]]:
    balancer = mtlbalance.DBMTL(
        problem.encoder, dict(problem.heads), beta=beta, sigma=sigma, engine=engine
    )
    opt = torch.optim.SGD(problem.all_params(), lr=lr)
    trajectory = []
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        losses, z = problem.losses(k)
        balancer.backward(losses, representation=z)
        opt.step()
        trajectory.append([p.detach().clone() for p in problem.all_params()])
    return trajectory


def assert_same_trajectory(
    a: list[list[torch.Tensor]], b: list[list[torch.Tensor]], tol: float
) -> None:
    assert len(a) == len(b)
    for step, (pa, pb) in enumerate(zip(a, b, strict=True)):
        for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
            err = float((x - y).abs().max())
            assert err <= tol, f"step {step}, parameter {i}: max abs difference {err:.3e}"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("beta", "sigma"), [(0.9, 0.5), (0.5, 0.0), (0.0, 0.5), (0.1, 0.5)])
def test_matches_algorithm_1(engine: str, beta: float, sigma: float) -> None:
    steps, lr = 6, 0.05
    base = build_problem(seed=3, num_tasks=3)
    ref = reference_run(copy.deepcopy(base), steps, beta, sigma, lr)
    ours = balancer_run(copy.deepcopy(base), steps, beta, sigma, lr, engine)
    assert_same_trajectory(ref, ours, 1e-6)
    # the run really moves: the comparison is not between two untouched models
    start = [p.detach() for p in base.all_params()]
    assert max(float((a - b).abs().max()) for a, b in zip(ours[-1], start, strict=True)) > 1e-3


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    num_tasks=st.integers(1, 4),
    width=st.integers(2, 9),
    beta=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    sigma=st.sampled_from([0.0, 0.5, 1.0]),
    engine=st.sampled_from(ENGINES),
)
def test_matches_algorithm_1_random_networks(
    seed: int, num_tasks: int, width: int, beta: float, sigma: float, engine: str
) -> None:
    base = build_problem(seed=seed, num_tasks=num_tasks, width=width)
    ref = reference_run(copy.deepcopy(base), 4, beta, sigma, 0.1)
    ours = balancer_run(copy.deepcopy(base), 4, beta, sigma, 0.1, engine)
    assert_same_trajectory(ref, ours, 1e-6)


def test_step_counter_is_not_reset_by_epochs() -> None:
    """k counts optimizer steps from 1 across epochs: epoch_end() must not touch it."""
    problem = build_problem(seed=1, num_tasks=2)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), sigma=0.5)
    for k in range(5):
        problem.zero_grad()
        balancer.backward(problem.losses(k)[0])
        balancer.epoch_end()
    assert balancer.aggregator.step == 5
    assert balancer.step == 5
