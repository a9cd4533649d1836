"""The same properties on a CUDA device (run on a GPU machine; skipped without one)."""

from __future__ import annotations

import copy

import pytest
import torch

import mtlbalance

from .conftest import build_problem
from .test_dbmtl_reference import assert_same_trajectory, balancer_run, reference_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def to_cuda(problem):
    problem = copy.deepcopy(problem)
    problem.encoder.cuda()
    problem.heads.cuda()
    batch_at = problem.batch_at

    def cuda_batch(step):
        x, ys = batch_at(step)
        return x.cuda(), {t: y.cuda() for t, y in ys.items()}

    problem.batch_at = cuda_batch
    return problem


@pytest.mark.parametrize("engine", ["loop", "batched", "representation", "auto"])
def test_matches_algorithm_1_on_cuda(engine: str) -> None:
    base = build_problem(seed=3, num_tasks=3)
    ref = reference_run(copy.deepcopy(base), 5, 0.9, 0.5, 0.05)
    ours = balancer_run(to_cuda(base), 5, 0.9, 0.5, 0.05, engine)
    assert_same_trajectory(ref, [[p.cpu() for p in step] for step in ours], 1e-6)


@pytest.mark.parametrize("engine", ["loop", "batched", "representation"])
def test_no_host_sync_without_the_finiteness_check(engine: str) -> None:
    problem = to_cuda(build_problem(seed=1, num_tasks=3, dtype=torch.float32))
    balancer = mtlbalance.DBMTL(
        problem.encoder, dict(problem.heads), engine=engine, check_finite=False
    )
    for k in range(2):  # the first step allocates buffers
        problem.zero_grad()
        losses, z = problem.losses(k)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            stats = balancer.backward(losses, representation=z)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert stats.grad_norms.device.type == "cuda"


def test_state_saved_on_cuda_loads_on_cpu() -> None:
    problem = to_cuda(build_problem(seed=2, num_tasks=2))
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="loop")
    balancer.backward(problem.losses(0)[0])
    state = balancer.state_dict()
    cpu_problem = build_problem(seed=2, num_tasks=2)
    cpu = mtlbalance.DBMTL(cpu_problem.encoder, dict(cpu_problem.heads), engine="loop")
    cpu.load_state_dict(state)
    cpu.backward(cpu_problem.losses(1)[0])
    assert cpu.aggregator.ema.device.type == "cpu"
    assert cpu.aggregator.step == 2
