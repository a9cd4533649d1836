"""Bad input gets an error that names what is wrong; nothing reaches .grad or the state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mtlbalance

from .conftest import build_problem


def fresh(engine: str = "loop"):
    problem = build_problem(seed=0, num_tasks=2)
    return problem, mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine=engine)


def assert_untouched(problem, balancer, ema_before=None) -> None:
    assert all(p.grad is None for p in problem.all_params()), ".grad was written"
    if ema_before is None:
        assert balancer.aggregator.ema is None and balancer.aggregator.step == 0
    else:
        assert torch.equal(balancer.aggregator.ema, ema_before)


def test_non_scalar_loss() -> None:
    problem, balancer = fresh()
    losses, _ = problem.losses(0)
    losses["t1"] = losses["t1"].expand(3)
    with pytest.raises(ValueError, match=r"task 't1' has shape \(3,\).*scalar"):
        balancer.backward(losses)
    assert_untouched(problem, balancer)


@pytest.mark.parametrize("engine", ["loop", "batched", "representation", "auto"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss(engine: str, bad: float) -> None:
    problem, balancer = fresh(engine)
    problem.zero_grad()
    losses, z = problem.losses(0)
    balancer.backward(losses, representation=z)  # one good step: EMA state exists
    ema = balancer.aggregator.ema.clone()
    problem.zero_grad()
    losses, z = problem.losses(1)
    losses["t0"] = losses["t0"] * bad
    with pytest.raises(FloatingPointError, match="task 't0'"):
        balancer.backward(losses, representation=z)
    assert_untouched(problem, balancer, ema)
    assert balancer.aggregator.step == 1


def test_non_finite_gradient_with_finite_loss() -> None:
    problem, balancer = fresh()
    losses, _ = problem.losses(0)
    w = problem.encoder[0].weight
    # finite value, infinite gradient: sqrt at 0
    losses["t1"] = losses["t1"] + torch.sqrt((w[0, 0] - w[0, 0].detach()).abs())
    with pytest.raises(FloatingPointError, match="gradient of task 't1'"):
        balancer.backward(losses)
    assert_untouched(problem, balancer)


def test_non_finite_gradient_on_the_ew_path() -> None:
    problem = build_problem(seed=0, num_tasks=2)
    balancer = mtlbalance.EW(problem.encoder, dict(problem.heads))
    losses, _ = problem.losses(0)
    w = problem.encoder[0].weight
    losses["t1"] = losses["t1"] + torch.sqrt((w[0, 0] - w[0, 0].detach()).abs())
    with pytest.raises(FloatingPointError, match="not finite"):
        balancer.backward(losses)
    assert all(p.grad is None for p in problem.all_params())


def test_unknown_and_missing_tasks() -> None:
    problem, balancer = fresh()
    losses, _ = problem.losses(0)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['t9'\]"):
        balancer.backward({**losses, "t9": losses["t0"]})
    with pytest.raises(ValueError, match=r"missing loss for task\(s\) \['t1'\]"):
        balancer.backward({"t0": losses["t0"]})
    with pytest.raises(ValueError, match="got 1 losses for 2 tasks"):
        balancer.backward(torch.stack([losses["t0"]]))
    assert_untouched(problem, balancer)


def test_loss_below_minus_eps_under_log() -> None:
    problem, balancer = fresh()
    losses, _ = problem.losses(0)
    losses["t1"] = losses["t1"] - losses["t1"].detach() - 0.5  # value -0.5
    with pytest.raises(
        ValueError, match=r"task 't1' is -0.5: the log transform needs losses > -eps"
    ):
        balancer.backward(losses)
    assert_untouched(problem, balancer)


def test_negative_loss_is_fine_without_log() -> None:
    problem = build_problem(seed=0, num_tasks=2)
    balancer = mtlbalance.make("maxnorm", problem.encoder, dict(problem.heads))
    losses, _ = problem.losses(0)
    losses["t1"] = losses["t1"] - 10.0
    balancer.backward(losses)
    assert all(p.grad is not None for p in problem.encoder.parameters())


def test_loss_that_does_not_require_grad() -> None:
    problem, balancer = fresh()
    losses, _ = problem.losses(0)
    losses["t0"] = losses["t0"].detach()
    with pytest.raises(ValueError, match="task 't0' does not require grad"):
        balancer.backward(losses)


@pytest.mark.parametrize("engine", ["loop", "batched", "representation"])
def test_shared_parameter_no_task_reaches(engine: str) -> None:
    problem = build_problem(seed=0, num_tasks=2)
    stray = nn.Linear(2, 2).double()
    shared = [*problem.encoder.named_parameters(), ("stray.weight", stray.weight)]
    balancer = mtlbalance.DBMTL(shared, dict(problem.heads), engine=engine)
    losses, z = problem.losses(0)
    with pytest.raises(ValueError, match=r"shared\.stray\.weight are reached by no task"):
        balancer.backward(losses, representation=z)
    assert all(p.grad is None for p in problem.all_params())
    ok = mtlbalance.DBMTL(shared, dict(problem.heads), engine=engine, allow_unused=True)
    losses, z = problem.losses(0)
    ok.backward(losses, representation=z)
    assert stray.weight.grad is not None and torch.all(stray.weight.grad == 0)


def test_parameter_both_shared_and_task_specific() -> None:
    problem = build_problem(seed=0, num_tasks=2)
    with pytest.raises(
        ValueError,
        match=r"parameter task_params\['t0'\]\.0\.weight of task 't0'.*shared\.0\.weight",
    ):
        mtlbalance.DBMTL(problem.encoder, {"t0": problem.encoder, "t1": problem.heads["t1"]})


def test_shared_parameter_listed_twice() -> None:
    problem = build_problem(seed=0, num_tasks=2)
    w = problem.encoder[0].weight
    with pytest.raises(ValueError, match="listed twice"):
        mtlbalance.DBMTL([w, w])


def test_bad_options() -> None:
    problem = build_problem(seed=0, num_tasks=2)
    with pytest.raises(ValueError, match="beta must be in"):
        mtlbalance.DBMTL(problem.encoder, beta=1.0)
    with pytest.raises(ValueError, match="unknown engine 'fast'"):
        mtlbalance.DBMTL(problem.encoder, engine="fast")
    with pytest.raises(ValueError, match="max_update_norm"):
        mtlbalance.DBMTL(problem.encoder, max_update_norm=0.0)
    with pytest.raises(ValueError, match="no shared parameters"):
        mtlbalance.DBMTL([])
    with pytest.raises(TypeError, match="single tensor"):
        mtlbalance.DBMTL(problem.encoder[0].weight)


def test_representation_engine_without_representation() -> None:
    problem, balancer = fresh("representation")
    with pytest.raises(ValueError, match="representation=z"):
        balancer.backward(problem.losses(0)[0])
    losses, z = problem.losses(0)
    with pytest.raises(ValueError, match="attached to the autograd graph"):
        balancer.backward(losses, representation=z.detach())


def _huge_but_finite(method: str, **options):
    """Task "a"'s float32 gradient has entries of 1e20: finite (and so is its norm, 2e20),
    but their squares (1e40) overflow float32."""
    theta = nn.Parameter(torch.ones(4))
    balancer = mtlbalance.make(method, [theta], tasks=["a", "b"], engine="loop", **options)
    losses = {"a": (theta * 1e20).sum() * 1e-20 + (theta * 1e20).sum(), "b": theta.square().sum()}
    return theta, balancer, losses


@pytest.mark.parametrize("method", ["maxnorm", "ew", "pcgrad"])
def test_finite_gradient_whose_norm_overflows_is_not_called_non_finite(method: str) -> None:
    """Issue 15, item 13: a finite gradient whose float32 norm overflows must be reported as
    what it is (finite, too large for float32 norms), with its norm computed stably."""
    theta, balancer, losses = _huge_but_finite(method)
    with pytest.raises(FloatingPointError) as info:
        balancer.backward(losses)
    message = str(info.value)
    assert "not finite" not in message
    assert "is finite" in message and "float32" in message
    assert "2e+20" in message  # ‖(1e20, 1e20, 1e20, 1e20)‖ = 2e20, not inf
    assert theta.grad is None and balancer.step == 0


def test_finite_gradient_overflowing_norm_with_a_loss_scale_raises_instead_of_skipping() -> None:
    """With a loss scale, an overflow of the scaled backward skips the step; a gradient that
    is finite after unscaling but too large for float32 norms is not an overflow of the scale
    (a smaller scale would not help): it raises, and says why."""
    theta, balancer, losses = _huge_but_finite("maxnorm")
    with pytest.raises(FloatingPointError, match="is finite"):
        balancer.backward(losses, loss_scale=2.0)
    assert theta.grad is None and balancer.aggregator.step == 0


def test_non_finite_gradient_is_still_called_non_finite() -> None:
    theta = nn.Parameter(torch.ones(4))
    balancer = mtlbalance.make("maxnorm", [theta], tasks=["a", "b"], engine="loop")
    # finite loss, non-finite gradient (sqrt at 0)
    bad = theta.square().sum() + torch.sqrt((theta[0] - theta[0].detach()).abs())
    with pytest.raises(FloatingPointError, match=r"task 'a'.*is not finite"):
        balancer.backward({"a": bad, "b": theta.square().sum()})
    assert theta.grad is None
