"""state_dict / load_state_dict / reset: a resumed run continues bit for bit."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import mtlbalance

from .conftest import build_problem


def run(problem, balancer, opt, steps: range) -> list[str | None]:
    engines = []
    for k in steps:
        opt.zero_grad(set_to_none=True)
        losses, z = problem.losses(k)
        engines.append(balancer.backward(losses, representation=z).engine)
        opt.step()
    return engines


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("engine", ["loop", "batched", "representation", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resume_mid_run_is_bit_identical(engine: str, dtype: torch.dtype) -> None:
    problem = build_problem(seed=0, num_tasks=3, dtype=dtype)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine=engine)
    opt = torch.optim.Adam(problem.all_params(), lr=1e-2)
    run(problem, balancer, opt, range(9))  # past the auto engine's 8 trial steps
    saved = roundtrip(
        {
            "model": [p.detach().clone() for p in problem.all_params()],
            "opt": opt.state_dict(),
            "balancer": balancer.state_dict(),
        }
    )
    uninterrupted = run(problem, balancer, opt, range(9, 13))
    final = [p.detach().clone() for p in problem.all_params()]

    resumed = build_problem(seed=99, num_tasks=3, dtype=dtype)  # different init, overwritten
    resumed.seed = problem.seed  # same data stream
    with torch.no_grad():
        for p, v in zip(resumed.all_params(), saved["model"], strict=True):
            p.copy_(v)
    balancer2 = mtlbalance.DBMTL(resumed.encoder, dict(resumed.heads), engine=engine)
    opt2 = torch.optim.Adam(resumed.all_params(), lr=1e-2)
    opt2.load_state_dict(saved["opt"])
    balancer2.load_state_dict(saved["balancer"])
    again = run(resumed, balancer2, opt2, range(9, 13))
    for a, b in zip(final, resumed.all_params(), strict=True):
        assert torch.equal(a, b.detach())
    assert again == uninterrupted  # the auto engine does not re-measure after loading
    assert balancer2.aggregator.step == 13


def test_auto_choice_is_restored_without_new_trials() -> None:
    problem = build_problem(seed=1, num_tasks=2)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="auto")
    opt = torch.optim.SGD(problem.all_params(), lr=0.01)
    run(problem, balancer, opt, range(8))
    chosen = balancer.engine.chosen
    assert chosen is not None
    fresh = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="auto")
    fresh.load_state_dict(roundtrip(balancer.state_dict()))
    assert run(problem, fresh, opt, range(8, 9)) == [chosen]


def test_reset_starts_fresh() -> None:
    problem = build_problem(seed=2, num_tasks=2)
    twin = copy.deepcopy(problem)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="loop")
    run(problem, balancer, torch.optim.SGD(problem.all_params(), lr=0.0), range(3))
    balancer.reset()
    assert balancer.step == 0 and balancer.aggregator.ema is None
    fresh = mtlbalance.DBMTL(twin.encoder, dict(twin.heads), engine="loop")
    problem.zero_grad()
    balancer.backward(problem.losses(7)[0])
    fresh.backward(twin.losses(7)[0])
    for p, q in zip(problem.all_params(), twin.all_params(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_state_for_other_tasks_is_rejected() -> None:
    a = build_problem(seed=3, num_tasks=2)
    b = build_problem(seed=3, num_tasks=3)
    ba = mtlbalance.DBMTL(a.encoder, dict(a.heads))
    bb = mtlbalance.DBMTL(b.encoder, dict(b.heads))
    with pytest.raises(ValueError, match=r"saved state is for tasks \['t0', 't1'\]"):
        bb.load_state_dict(ba.state_dict())


def test_state_dict_can_move_devices_as_plain_tensors() -> None:
    """The saved state holds ordinary tensors (torch.load(weights_only=True) accepts it)."""
    problem = build_problem(seed=4, num_tasks=2)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads))
    balancer.backward(problem.losses(0)[0])
    state = roundtrip(balancer.state_dict())
    ema = state["aggregator"]["_extra_state"]["ema"]
    assert torch.equal(ema, balancer.aggregator.ema)
