"""fp16 loss scaling inside the balancer: ``backward(losses, loss_scale=S)`` seeds every
backward with S, divides every gradient by S before anything reads it, and skips (writes
nothing) when the scaled backward overflows."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mtlbalance

from .conftest import Problem, build_problem

ENGINES = ["loop", "batched", "representation", "auto"]
# gradient-level methods, which run the (T, P) engines; "gls+maxnorm" has a non-diagonal
# transform Jacobian (a (T, T) seed)
JACOBIAN_METHODS = ["dbmtl", "pcgrad", "gradnorm", "gls+maxnorm"]
# one weighted backward: loss-level (ew, uw with learnable log-variances) and MGDA-UB
WEIGHTED_METHODS = ["ew", "uw", "mgda_ub"]
POWERS_OF_TWO = [1.0, 2.0**10, 2.0**16]


def _cases() -> list[tuple[str, str]]:
    cases = [(m, e) for m in JACOBIAN_METHODS for e in ENGINES]
    return cases + [(m, "auto") for m in WEIGHTED_METHODS]


def _grads(problem: Problem) -> list[Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in problem.all_params()]


def _assert_state_equal(a: Any, b: Any, exact: bool, path: str = "state") -> None:
    """Nested state dicts hold equal tensors and values (``exact``: bit for bit)."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor), path
        if exact:
            assert torch.equal(a, b), path
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=path)
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), path
        for key in a:
            _assert_state_equal(a[key], b[key], exact, f"{path}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_state_equal(x, y, exact, f"{path}[{i}]")
    else:
        assert a == b, path


def _balancer_state(balancer: mtlbalance.Balancer) -> dict[str, Any]:
    """The balancing state (the auto engine's timings are not part of what is compared)."""
    return {k: v for k, v in copy.deepcopy(balancer.state_dict()).items() if k != "engine"}


def _make(method: str, problem: Problem, engine: str, **kwargs: Any) -> mtlbalance.Balancer:
    return mtlbalance.make(method, problem.encoder, dict(problem.heads), engine=engine, **kwargs)


def _train(
    method: str,
    engine: str,
    dtype: torch.dtype,
    scale: float | Tensor | None,
    *,
    steps: int = 3,
    micro: int = 0,
) -> tuple[list[list[Tensor | None]], list[dict[str, float]], dict[str, Any]]:
    """A few SGD steps from the same start; the .grad of every step, the stats, the state.
    ``micro`` > 0 accumulates that many micro-batches per step."""
    problem = build_problem(seed=3, num_tasks=3, dtype=dtype)
    balancer = _make(method, problem, engine)
    params = [*problem.all_params()]
    opt = torch.optim.SGD(params, lr=0.05)
    extra = list(balancer.parameters())
    opt_b = torch.optim.SGD(extra, lr=0.05) if extra else None
    all_grads, all_stats = [], []
    for step in range(steps):
        opt.zero_grad()
        if opt_b is not None:
            opt_b.zero_grad()
        torch.manual_seed(100 + step)  # randomised methods (PCGrad): the same draws
        if micro:
            x, ys = problem.batch_at(step)
            for idx in torch.arange(x.shape[0]).chunk(micro):
                z = problem.encoder(x[idx])
                losses = {
                    t: s * ((problem.heads[t](z) - ys[t][idx]) ** 2).mean()
                    for t, s in zip(problem.tasks, problem.scales, strict=True)
                }
                balancer.accumulate(losses, representation=z, loss_scale=scale)
            stats = balancer.backward_accumulated()
        else:
            losses, z = problem.losses(step)
            stats = balancer.backward(losses, representation=z, loss_scale=scale)
        assert not stats.skipped
        all_grads.append(_grads(problem))
        all_stats.append(stats.to_dict())
        opt.step()
        if opt_b is not None:
            opt_b.step()
    assert balancer.step == steps
    return all_grads, all_stats, _balancer_state(balancer)


def _assert_same_run(
    got: tuple[list[list[Tensor | None]], list[dict[str, float]], dict[str, Any]],
    expected: tuple[list[list[Tensor | None]], list[dict[str, float]], dict[str, Any]],
    exact: bool,
) -> None:
    for step_got, step_expected in zip(got[0], expected[0], strict=True):
        for g, e in zip(step_got, step_expected, strict=True):
            assert (g is None) == (e is None)
            if g is None or e is None:
                continue
            if exact:
                assert torch.equal(g, e)
            else:
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    for stats_got, stats_expected in zip(got[1], expected[1], strict=True):
        assert set(stats_got) == set(stats_expected)
        for key, value in stats_got.items():
            if exact:
                assert value == stats_expected[key], key
            else:
                assert value == pytest.approx(stats_expected[key], rel=1e-5, abs=1e-7), key
    _assert_state_equal(got[2], expected[2], exact)


@pytest.mark.parametrize(("method", "engine"), _cases())
def test_scaled_backward_equals_unscaled(method: str, engine: str) -> None:
    """A power-of-two scale multiplies and divides exactly: float64 results are bit for bit
    those without a scale (the auto engine may time its way to another exact engine, so it
    gets a tolerance); float32 and a non-power-of-two scale agree to rounding."""
    reference = _train(method, engine, torch.float64, None)
    for scale in POWERS_OF_TWO:
        got = _train(method, engine, torch.float64, scale)
        _assert_same_run(got, reference, exact=engine != "auto")
    _assert_same_run(_train(method, engine, torch.float64, 3.0), reference, exact=False)
    reference32 = _train(method, engine, torch.float32, None)
    for scale32 in (2.0**16, torch.tensor(1000.0)):  # a device tensor, as a dynamic scaler's
        _assert_same_run(_train(method, engine, torch.float32, scale32), reference32, False)


@pytest.mark.parametrize(
    ("method", "engine"), [("dbmtl", e) for e in ENGINES] + [("ew", "auto"), ("uw", "auto")]
)
def test_scaled_accumulation_equals_unscaled(method: str, engine: str) -> None:
    reference = _train(method, engine, torch.float64, None, micro=3)
    for scale in POWERS_OF_TWO:
        got = _train(method, engine, torch.float64, scale, micro=3)
        _assert_same_run(got, reference, exact=engine != "auto")
    reference32 = _train(method, engine, torch.float32, None, micro=3)
    _assert_same_run(_train(method, engine, torch.float32, 3.0, micro=3), reference32, False)


# ---------------------------------------------------------------- overflow: skip the step
OVERFLOW = 3e38  # float32 max is 3.4e38: any scaled gradient entry above ~1.1 overflows


def _step(
    problem: Problem, balancer: mtlbalance.Balancer, step: int, scale: float | Tensor | None
) -> mtlbalance.BalanceStats:
    torch.manual_seed(100 + step)
    losses, z = problem.losses(step)
    return balancer.backward(losses, representation=z, loss_scale=scale)


@pytest.mark.parametrize(("method", "engine"), _cases())
def test_overflow_skips_and_writes_nothing(method: str, engine: str) -> None:
    """An overflowing scale: skipped, .grad / state / step untouched, and the run then goes
    on exactly as a run that never saw that step."""
    base = build_problem(seed=4, num_tasks=3, dtype=torch.float32)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    bal_a = _make(method, a, engine, deterministic=True)
    bal_b = _make(method, b, engine, deterministic=True)

    first = _step(a, bal_a, 0, OVERFLOW)  # on a fresh balancer
    assert first.skipped and first.update_norm is None
    assert first.to_dict()["skipped"] == 1.0
    assert all(p.grad is None for p in a.all_params())
    assert bal_a.step == 0
    assert all(p.grad is None for p in bal_a.parameters())

    for problem, balancer in ((a, bal_a), (b, bal_b)):
        assert not _step(problem, balancer, 1, 2.0**8).skipped
    grads_before = _grads(a)
    state_before = _balancer_state(bal_a)
    balancer_grads = [None if p.grad is None else p.grad.clone() for p in bal_a.parameters()]

    stats = _step(a, bal_a, 2, torch.tensor(OVERFLOW))  # a tensor scale behaves the same
    assert stats.skipped and stats.update_norm is None
    for g, e in zip(_grads(a), grads_before, strict=True):
        assert g is not None and e is not None and torch.equal(g, e)
    for p, e in zip(bal_a.parameters(), balancer_grads, strict=True):
        assert (p.grad is None and e is None) or (
            p.grad is not None and e is not None and torch.equal(p.grad, e)
        )
    assert bal_a.step == 1
    _assert_state_equal(_balancer_state(bal_a), state_before, exact=True)

    for problem, balancer in ((a, bal_a), (b, bal_b)):
        problem.zero_grad()
        assert not _step(problem, balancer, 3, 2.0**8).skipped
    for g, e in zip(_grads(a), _grads(b), strict=True):
        assert g is not None and e is not None and torch.equal(g, e)
    _assert_state_equal(_balancer_state(bal_a), _balancer_state(bal_b), exact=True)


@pytest.mark.parametrize("method", ["dbmtl", "ew", "mgda_ub"])
def test_overflow_is_detected_even_without_check_finite(method: str) -> None:
    problem = build_problem(seed=4, num_tasks=3, dtype=torch.float32)  # gradients above 1.1
    balancer = _make(method, problem, "loop", check_finite=False)
    losses, z = problem.losses(0)
    assert balancer.backward(losses, representation=z, loss_scale=OVERFLOW).skipped
    assert all(p.grad is None for p in problem.all_params()) and balancer.step == 0


def test_non_finite_loss_is_still_an_error_with_a_scale() -> None:
    problem = build_problem(seed=4, num_tasks=2, dtype=torch.float32)
    balancer = _make("dbmtl", problem, "loop")
    losses, _ = problem.losses(0)
    losses["t1"] = losses["t1"] * math.nan
    with pytest.raises(FloatingPointError, match="loss of task 't1' is nan"):
        balancer.backward(losses, loss_scale=2.0**10)
    assert all(p.grad is None for p in problem.all_params()) and balancer.step == 0


def test_non_finite_gradient_without_a_scale_still_raises() -> None:
    problem = build_problem(seed=4, num_tasks=2, dtype=torch.float32)
    balancer = _make("dbmtl", problem, "loop")
    losses, _ = problem.losses(0)
    w = problem.encoder[0].weight
    losses["t1"] = losses["t1"] + torch.sqrt((w[0, 0] - w[0, 0].detach()).abs())  # inf grad
    with pytest.raises(FloatingPointError, match="gradient of task 't1'"):
        balancer.backward(losses)
    losses, _ = problem.losses(0)
    losses["t1"] = losses["t1"] + torch.sqrt((w[0, 0] - w[0, 0].detach()).abs())
    assert balancer.backward(losses, loss_scale=1.0).skipped  # with a scale: a skip


@pytest.mark.parametrize("method", ["dbmtl", "ew"])
def test_overflow_in_one_micro_batch_skips_the_accumulated_step(method: str) -> None:
    problem = build_problem(seed=5, num_tasks=3, dtype=torch.float32)
    balancer = _make(method, problem, "batched")
    x, ys = problem.batch_at(0)

    def micro(idx: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        z = problem.encoder(x[idx])
        losses = {
            t: s * ((problem.heads[t](z) - ys[t][idx]) ** 2).mean()
            for t, s in zip(problem.tasks, problem.scales, strict=True)
        }
        return losses, z

    chunks = torch.arange(x.shape[0]).chunk(3)
    for i, idx in enumerate(chunks):
        losses, z = micro(idx)
        balancer.accumulate(losses, representation=z, loss_scale=OVERFLOW if i == 1 else 2.0**8)
    state = _balancer_state(balancer)
    stats = balancer.backward_accumulated()
    assert stats.skipped
    assert all(p.grad is None for p in problem.all_params())
    assert balancer.step == 0
    _assert_state_equal(_balancer_state(balancer), state, exact=True)
    for idx in chunks:  # the skipped micro-batches were dropped: a fresh accumulation works
        losses, z = micro(idx)
        balancer.accumulate(losses, representation=z, loss_scale=2.0**8)
    assert not balancer.backward_accumulated().skipped and balancer.step == 1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in problem.all_params())


# ---------------------------------------------------------------- a real fp16 underflow
def _amp_problem() -> tuple[nn.Module, nn.ModuleDict, Tensor, dict[str, Tensor]]:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
    heads = nn.ModuleDict({f"t{i}": nn.Linear(16, 1) for i in range(2)})
    x = torch.randn(32, 8)
    ys = {t: torch.randn(32, 1) for t in heads}
    return encoder, heads, x, ys


def _amp_grads(
    method: str, engine: str, amp: bool, scale: float | None, offset: float, naive: bool = False
) -> Tensor:
    """All gradients after one step of losses ``offset + 1e-8 · mse`` (fp32 master weights;
    fp16 autocast forward and backward where ``amp``)."""
    encoder, heads, x, ys = _amp_problem()
    balancer = mtlbalance.make(method, encoder, dict(heads), engine=engine)
    with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
        z = encoder(x)
        outs = {t: head(z) for t, head in heads.items()}
    losses = {t: offset + 1e-8 * ((outs[t].float() - ys[t]) ** 2).mean() for t in heads}
    if naive:  # what GradScaler would do: scale the losses themselves
        assert scale is not None
        losses = {t: loss * scale for t, loss in losses.items()}
        scale = None
    stats = balancer.backward(losses, representation=z, loss_scale=scale)
    assert not stats.skipped
    params = [*encoder.parameters(), *heads.parameters()]
    assert all(p.grad is not None for p in params)
    return torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])


@pytest.mark.parametrize(
    ("method", "offset"),
    [("ew", 0.0), ("dbmtl", 1.0)],  # dbmtl: ∇log(1 + 1e-8 mse) ≈ 1e-8 ∇mse, tiny too
)
@pytest.mark.parametrize("engine", ["loop", "batched", "representation"])
def test_fp16_underflow_is_prevented_by_the_scale(method: str, engine: str, offset: float) -> None:
    """Gradients of ~1e-8 are below float16's smallest subnormal (6e-8): under CPU autocast
    they flush to zero without a scale, and survive with loss_scale=2**16."""
    reference = _amp_grads(method, engine, amp=False, scale=None, offset=offset)  # float32
    assert float(reference.norm()) > 0

    def rel(g: Tensor) -> float:
        return float((g - reference).norm() / reference.norm())

    unscaled = _amp_grads(method, engine, amp=True, scale=None, offset=offset)
    assert float(unscaled.abs().max()) == 0.0  # everything underflowed
    scaled = _amp_grads(method, engine, amp=True, scale=2.0**16, offset=offset)
    assert rel(scaled) < 1e-2  # float16 forward/backward rounding only
    if method == "dbmtl":
        # scaling the losses instead cancels in the log: ∇log(S ℓ) = ∇ℓ / ℓ, still zero
        naive = _amp_grads(method, engine, amp=True, scale=2.0**16, offset=offset, naive=True)
        assert float(naive.abs().max()) == 0.0


# ---------------------------------------------------------------- bad loss_scale
@pytest.mark.parametrize(
    "bad",
    [0.0, -1.0, math.nan, math.inf, 1e39, "1024", True, torch.ones(2), torch.tensor(True)],
    ids=["zero", "negative", "nan", "inf", "over-float32", "str", "bool", "shape", "bool-tensor"],
)
@pytest.mark.parametrize("call", ["backward", "accumulate"])
def test_bad_loss_scale_is_rejected(bad: Any, call: str) -> None:
    problem = build_problem(seed=6, num_tasks=2, dtype=torch.float32)
    balancer = _make("dbmtl", problem, "loop")
    losses, z = problem.losses(0)
    with pytest.raises(ValueError, match="loss_scale"):
        getattr(balancer, call)(losses, representation=z, loss_scale=bad)
    assert all(p.grad is None for p in problem.all_params()) and balancer.step == 0


@pytest.mark.parametrize("bad", [0.0, -2.0, math.nan])
@pytest.mark.parametrize("method", ["dbmtl", "ew", "mgda_ub"])
def test_bad_loss_scale_tensor_is_rejected_at_the_check(bad: float, method: str) -> None:
    """A tensor scale is read on the host only with the step's one check; a bad value is a
    ValueError there, before anything is written (never a silent skip)."""
    problem = build_problem(seed=6, num_tasks=2, dtype=torch.float32)
    balancer = _make(method, problem, "loop")
    losses, z = problem.losses(0)
    with pytest.raises(ValueError, match="loss_scale must be a positive finite number"):
        balancer.backward(losses, representation=z, loss_scale=torch.tensor(bad))
    assert all(p.grad is None for p in problem.all_params()) and balancer.step == 0
    if method != "mgda_ub":
        losses, z = problem.losses(0)
        balancer.accumulate(losses, loss_scale=torch.tensor(bad))
        with pytest.raises(ValueError, match="loss_scale must be a positive finite number"):
            balancer.backward_accumulated()
        assert all(p.grad is None for p in problem.all_params()) and balancer.step == 0
