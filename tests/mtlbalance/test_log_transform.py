"""The log transform's own values (Algorithm 1, steps 6 and 12: ℓ̃ = log(ℓ + ε), ε = 1e-8),
which DB-MTL's update alone cannot show: max-norm rescales each task's gradient, so a wrong
ε or a wrong operation inside the log leaves the update almost unchanged."""

from __future__ import annotations

import math

import pytest
import torch

import mtlbalance
from mtlbalance.transforms.log import Log

from .conftest import build_problem


def test_values_are_log_of_loss_plus_the_papers_epsilon() -> None:
    losses = torch.tensor([1e-7, 0.5, 3.0, 2e4], dtype=torch.float64)
    want = torch.tensor([math.log(v + 1e-8) for v in losses.tolist()], dtype=torch.float64)
    torch.testing.assert_close(Log()(losses), want, rtol=1e-12, atol=0)
    # at a loss of 1e-7, eps = 1e-8 moves the value by log(1.1) ≈ 0.095: eps is really 1e-8
    assert abs(float(Log()(losses)[0]) - math.log(1e-7)) > 0.09


def test_dbmtl_reports_the_transformed_losses() -> None:
    problem = build_problem(seed=5, num_tasks=3)
    balancer = mtlbalance.make("dbmtl", problem.encoder, dict(problem.heads))
    losses, z = problem.losses(0)
    stats = balancer.backward(losses, representation=z)
    raw = [float(losses[t]) for t in sorted(losses)]
    want = torch.tensor([math.log(v + 1e-8) for v in raw], dtype=stats.transformed.dtype)
    torch.testing.assert_close(stats.transformed, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_any_nonnegative_eps_is_accepted_and_used(eps: float) -> None:
    losses = torch.tensor([0.25, 4.0], dtype=torch.float64)
    want = torch.log(torch.tensor([0.25 + eps, 4.0 + eps], dtype=torch.float64))
    torch.testing.assert_close(Log(eps=eps)(losses), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("eps", [-1e-9, -0.5, float("nan")])
def test_a_negative_or_nan_eps_is_refused(eps: float) -> None:
    with pytest.raises(ValueError, match="eps must be >= 0"):
        Log(eps=eps)
