"""Gradient accumulation balances the accumulated per-task gradients once per step."""

from __future__ import annotations

import copy

import pytest
import torch

import mtlbalance

from .conftest import build_problem

EXACT = ["loop", "batched", "representation"]


def micro_losses(problem, step: int, micro: int):
    """The batch of `step` split into `micro` equal micro-batches; mean-reduced losses."""
    x, ys = problem.batch_at(step)
    chunks = []
    for idx in torch.arange(x.shape[0]).chunk(micro):
        z = problem.encoder(x[idx])
        losses = {
            t: s * ((problem.heads[t](z) - ys[t][idx]) ** 2).mean()
            for t, s in zip(problem.tasks, problem.scales, strict=True)
        }
        chunks.append((losses, z))
    return chunks


def grads(problem) -> list[torch.Tensor]:
    return [p.grad.clone() for p in problem.all_params()]


@pytest.mark.parametrize("method", ["ew", "dbmtl", "log+ew", "maxnorm", "pcgrad", "famo", "uw"])
@pytest.mark.parametrize("engine", EXACT)
def test_accumulated_equals_the_whole_batch(method: str, engine: str) -> None:
    base = build_problem(seed=0, num_tasks=3)  # batch 12 = 3 micro-batches of 4
    whole, split = copy.deepcopy(base), copy.deepcopy(base)
    a = mtlbalance.make(method, whole.encoder, dict(whole.heads), engine=engine)
    b = mtlbalance.make(method, split.encoder, dict(split.heads), engine=engine)
    torch.manual_seed(3)  # randomised methods: same draws for both
    pcgrad_keys = torch.rand(3, 3, dtype=torch.float64)
    for step in range(3):
        for bal in (a, b):
            if method == "pcgrad":
                bal.aggregator.force_draws(pcgrad_keys)
        whole.zero_grad()
        losses, z = whole.losses(step)
        sa = a.backward(losses, representation=z)
        split.zero_grad()
        for losses_m, z_m in micro_losses(split, step, 3):
            b.accumulate(losses_m, representation=z_m)
        sb = b.backward_accumulated()
        for x, y in zip(grads(whole), grads(split), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(sa.losses, sb.losses)
        if sa.weights is not None:
            torch.testing.assert_close(sa.weights, sb.weights)
    assert a.step == b.step == 3
    if method in ("dbmtl", "maxnorm"):
        assert b.aggregator.step == 3  # k counts optimizer steps, not micro-batches


def test_differs_from_averaging_balanced_micro_batches() -> None:
    """∇log(Σℓ_m) ≠ Σ∇log ℓ_m: the accumulated result is not the mean of per-micro-batch
    DB-MTL updates (which is what calling backward() per micro-batch would give)."""
    base = build_problem(seed=1, num_tasks=2)
    acc, naive = copy.deepcopy(base), copy.deepcopy(base)
    b = mtlbalance.DBMTL(acc.encoder, dict(acc.heads), beta=0.0)
    for losses_m, z_m in micro_losses(acc, 0, 3):
        b.accumulate(losses_m, representation=z_m)
    b.backward_accumulated()
    n = mtlbalance.DBMTL(naive.encoder, dict(naive.heads), beta=0.0)
    for losses_m, _ in micro_losses(naive, 0, 3):
        n.backward(losses_m)
    diff = max(float((x - y).abs().max()) for x, y in zip(grads(acc), grads(naive), strict=True))
    assert diff > 1e-3


def test_accumulation_misuse_and_representation_methods() -> None:
    problem = build_problem(seed=2, num_tasks=2)
    b = mtlbalance.DBMTL(problem.encoder, dict(problem.heads))
    with pytest.raises(RuntimeError, match="call accumulate"):
        b.backward_accumulated()
    (losses, z), *_ = micro_losses(problem, 0, 2)
    b.accumulate(losses)
    losses2, _ = problem.losses(1)
    with pytest.raises(RuntimeError, match="1 accumulated micro-batch"):
        b.backward(losses2)
    m = mtlbalance.make("mgda_ub", problem.encoder, dict(problem.heads))
    (losses, z), *_ = micro_losses(problem, 0, 2)
    with pytest.raises(ValueError, match="cannot accumulate micro-batches"):
        m.accumulate(losses, representation=z)


def test_non_finite_micro_batch_writes_nothing() -> None:
    problem = build_problem(seed=3, num_tasks=2)
    b = mtlbalance.DBMTL(problem.encoder, dict(problem.heads))
    chunks = micro_losses(problem, 0, 2)
    b.accumulate(chunks[0][0])
    bad = dict(chunks[1][0])
    bad["t1"] = bad["t1"] * float("nan")
    b.accumulate(bad)
    with pytest.raises(FloatingPointError, match="task 't1'"):
        b.backward_accumulated()
    assert all(p.grad is None for p in problem.all_params())
    assert b.aggregator.step == 0 and b.aggregator.ema is None
    # the failed step's micro-batches are dropped; the next step starts clean
    for losses_m, _ in micro_losses(problem, 1, 2):
        b.accumulate(losses_m)
    b.backward_accumulated()
    assert b.aggregator.step == 1
