"""The "no host sync" promise, checked on CPU (CI has no GPU): a step without the finiteness
check reads no tensor value back to the host, in every engine. ``tests/mtlbalance/test_cuda.py``
checks the same with CUDA's sync debug mode on a GPU machine."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

import mtlbalance

from .conftest import build_problem

#: Tensor operations that copy values to the host (a device sync on an accelerator).
HOST_READS = frozenset(
    {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
        torch.Tensor.__bool__,
        torch.Tensor.__float__,
        torch.Tensor.__int__,
        torch.Tensor.__index__,
        torch.Tensor.__format__,
    }
)


class CountHostReads(TorchFunctionMode):
    """Every torch call made from Python while active; the host reads among them, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in HOST_READS:
            self.reads.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


GRADIENT_LEVEL = ["dbmtl", "maxnorm", "moco"]  # (solver-based methods read the Gram matrix)
LOSS_LEVEL = ["ew", "uw", "dwa", "famo", "rlw", "gls", "stch"]
CASES = [(m, e) for m in GRADIENT_LEVEL for e in ("loop", "batched", "representation")] + [
    (m, None) for m in LOSS_LEVEL
]


@pytest.mark.parametrize(("method", "engine"), CASES)
def test_a_step_reads_nothing_back_without_the_finiteness_check(
    method: str, engine: str | None
) -> None:
    problem = build_problem(seed=1, num_tasks=3, dtype=torch.float32)
    options: dict[str, Any] = {"check_finite": False}
    if engine is not None:
        options["engine"] = engine
    balancer = mtlbalance.make(method, problem.encoder, dict(problem.heads), **options)
    for k in range(3):  # the first step allocates buffers; the later ones must be clean
        problem.zero_grad()
        losses, z = problem.losses(k)
        with CountHostReads() as counter:
            stats = balancer.backward(losses, representation=z)
        if k > 0:
            assert counter.reads == [], (method, engine, counter.reads)
    assert stats.engine == engine


def test_the_counter_sees_a_host_read() -> None:
    """(The check above is only as good as the counter: a read inside the step is seen.)"""
    problem = build_problem(seed=1, num_tasks=2, dtype=torch.float32)
    balancer = mtlbalance.make("dbmtl", problem.encoder, dict(problem.heads), check_finite=True)
    losses, z = problem.losses(0)
    with CountHostReads() as counter:
        balancer.backward(losses, representation=z)
    assert counter.reads  # the finiteness check reads one flag back
