"""Invariants of DB-MTL and of the engines, on random problems."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import mtlbalance
from mtlbalance.engines import (
    AutoEngine,
    BatchedEngine,
    EngineInputs,
    LoopEngine,
    RepresentationEngine,
)

from .conftest import build_problem

EXACT_ENGINES = ["loop", "batched", "representation"]


def shared_update(balancer: mtlbalance.Balancer, problem, step: int = 0) -> torch.Tensor:
    problem.zero_grad()
    losses, z = problem.losses(step)
    balancer.backward(losses, representation=z)
    return torch.cat([p.grad.reshape(-1) for p in problem.encoder.parameters()])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    num_tasks=st.integers(1, 4),
    task=st.integers(0, 3),
    factor=st.floats(1e-3, 1e3),
    engine=st.sampled_from(EXACT_ENGINES),
)
def test_scale_invariance(seed: int, num_tasks: int, task: int, factor: float, engine: str) -> None:
    """Multiplying any task's loss by c > 0 leaves the DB-MTL update unchanged."""
    task %= num_tasks
    base = build_problem(seed=seed, num_tasks=num_tasks)
    scaled = copy.deepcopy(base)
    scaled.scales = list(base.scales)
    scaled.scales[task] *= factor
    # Exact with ε = 0 (with ε > 0, ∇log(cℓ + ε) = ∇ℓ / (ℓ + ε/c): off by order ε/ℓ).
    a = mtlbalance.DBMTL(base.encoder, dict(base.heads), engine=engine, eps=0.0)
    b = mtlbalance.DBMTL(scaled.encoder, dict(scaled.heads), engine=engine, eps=0.0)
    for step in range(3):
        ua, ub = shared_update(a, base, step), shared_update(b, scaled, step)
        assert float((ua - ub).norm()) <= 1e-10 * float(ua.norm())


def test_scale_invariance_with_default_eps() -> None:
    base = build_problem(seed=11, num_tasks=3, scales=[1.0, 1.0, 1.0])
    scaled = copy.deepcopy(base)
    scaled.scales = [1e-3, 1.0, 1e3]
    a = mtlbalance.DBMTL(base.encoder, dict(base.heads))
    b = mtlbalance.DBMTL(scaled.encoder, dict(scaled.heads))
    for step in range(3):
        ua, ub = shared_update(a, base, step), shared_update(b, scaled, step)
        assert float((ua - ub).norm()) <= 1e-4 * float(ua.norm())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    num_tasks=st.integers(1, 5),
    beta=st.sampled_from([0.0, 0.5, 0.9]),
    zero_task=st.one_of(st.none(), st.integers(0, 4)),
)
def test_every_task_contributes_the_largest_norm(seed, num_tasks, beta, zero_task) -> None:
    """After normalisation every task with a nonzero EMA gradient contributes a vector whose
    norm is the largest EMA norm; a task with a zero gradient contributes exactly zero."""
    gen = torch.Generator().manual_seed(seed)
    agg = mtlbalance.aggregators.MaxNorm(beta=beta, sigma=0.5)
    num_params = 11
    for _ in range(3):
        scales = torch.logspace(-3, 3, num_tasks, dtype=torch.float64)
        jac = (
            torch.randn(num_tasks, num_params, generator=gen, dtype=torch.float64) * scales[:, None]
        )
        if zero_task is not None and zero_task < num_tasks:
            jac[zero_task] = 0.0
        out = torch.empty(num_params, dtype=torch.float64)
        result = agg(jac, out, losses=torch.ones(num_tasks))
        ema_norms = agg.ema.norm(dim=1)
        contributions = result.weights[:, None] * agg.ema
        torch.testing.assert_close(contributions.sum(0), out)
        largest = ema_norms.max()
        for t in range(num_tasks):
            c = contributions[t].norm()
            assert torch.isfinite(c)
            if ema_norms[t] == 0:
                assert c == 0
            else:
                # ‖α ĝ_t / (‖ĝ_t‖ + ε)‖ = α · n_t / (n_t + ε): equal to α up to α ε / n_t
                n = ema_norms[t]
                assert abs(float(c - largest)) <= float(largest * (1e-8 / n + 1e-12))
    assert torch.isfinite(out).all()


def test_zero_gradient_task_contributes_zero_not_nan() -> None:
    """A task whose loss does not depend on the shared parameters at all (its head ignores z)."""
    problem = build_problem(seed=2, num_tasks=2)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="loop")
    problem.zero_grad()
    losses, _ = problem.losses(0)
    free = nn.Parameter(torch.tensor(3.0, dtype=torch.float64))
    losses["t1"] = losses["t1"] * 0 + free**2  # reaches no shared parameter
    balancer.heads = None
    stats = balancer.backward(losses)
    update = torch.cat([p.grad.reshape(-1) for p in problem.encoder.parameters()])
    assert torch.isfinite(update).all()
    assert stats.grad_norms[1] == 0
    # only t0 contributes, with its own norm (it is the largest)
    ema0 = balancer.aggregator.ema[0]
    torch.testing.assert_close(update, ema0 * ema0.norm() / (ema0.norm() + 1e-8))


def test_zero_gradient_task_is_reported_with_weight_zero() -> None:
    """Issue 15, item 13: the weight reported for a task whose (EMA) gradient is zero is 0 —
    what it contributes — not α/ε (≈ 1e8 α); the other weights are α/(‖ĝ_t‖ + ε)."""
    problem = build_problem(seed=2, num_tasks=3)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="loop")
    losses, _ = problem.losses(0)
    free = nn.Parameter(torch.tensor(3.0, dtype=torch.float64))
    losses["t1"] = losses["t1"].detach() + free**2  # reaches no shared parameter
    stats = balancer.backward(losses)
    norms = balancer.aggregator.ema.norm(dim=1)
    assert float(norms[1]) == 0.0
    alpha = norms.max()
    expected = torch.stack(
        [alpha / (norms[0] + 1e-8), torch.zeros_like(alpha), alpha / (norms[2] + 1e-8)]
    )
    torch.testing.assert_close(stats.weights, expected, rtol=1e-12, atol=0.0)


def _conv_problem(seed: int, dtype=torch.float64):
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.ReLU(),
    ).to(dtype)
    heads = nn.ModuleDict(
        {
            "seg": nn.Conv2d(4, 3, 1),
            "depth": nn.Sequential(nn.Conv2d(4, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 1, 1)),
            "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)),
        }
    ).to(dtype)
    x = torch.randn(3, 3, 8, 8, dtype=dtype)
    z = encoder(x)
    losses = {
        "seg": nn.functional.cross_entropy(heads["seg"](z), torch.randint(0, 3, (3, 8, 8))),
        "depth": (heads["depth"](z) - 1).abs().mean() * 100,
        "cls": nn.functional.cross_entropy(heads["cls"](z), torch.randint(0, 5, (3,))),
    }
    return encoder, heads, losses, z


@pytest.mark.parametrize("chunk", [None, 1, 2])
@pytest.mark.parametrize("mixing", [False, True])
def test_all_engines_give_the_same_matrix(chunk, mixing) -> None:
    """Same matrix from every engine, for a diagonal seed (elementwise transform: the log) and
    for a full (T, T) seed (a transform that mixes the losses); row t = Σ_s D_ts ∇ℓ_s."""
    encoder, heads, losses, z = _conv_problem(0)
    balancer = mtlbalance.DBMTL(encoder, dict(heads))
    raw = list(losses.values())
    vec = torch.stack(raw).detach()
    if mixing:
        seed = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    else:
        seed = 1.0 / (vec + 1e-8)
    inputs = EngineInputs(
        losses=raw,
        seed=seed,
        layout=balancer.layout,
        task_params=[list(h.parameters()) for h in heads.values()],
        representation=(z,),
    )
    results = {}
    for engine in [LoopEngine(), BatchedEngine(chunk), RepresentationEngine(chunk)]:
        out = torch.full((3, balancer.layout.total), float("nan"), dtype=torch.float64)
        res = engine.compute(inputs, out, retain_graph=True)
        assert torch.isfinite(out).all(), f"{engine.name} left rows unwritten"
        results[engine.name] = (out, res)
    ref, ref_res = results["loop"]
    full = seed if mixing else torch.diag(seed)
    raw_rows = torch.stack(
        [
            torch.cat(
                [
                    g.reshape(-1)
                    for g in torch.autograd.grad(
                        raw[s], list(encoder.parameters()), retain_graph=True
                    )
                ]
            )
            for s in range(3)
        ]
    )
    torch.testing.assert_close(ref, full @ raw_rows)
    for name, (out, res) in results.items():
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12, msg=name)
        for t in range(3):
            for a, b in zip(res.task_grads[t], ref_res.task_grads[t], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert all(res.reached)


def test_representation_engine_with_several_representations() -> None:
    torch.manual_seed(0)
    left, right = nn.Linear(4, 5).double(), nn.Linear(4, 3).double()
    heads = {"a": nn.Linear(5, 1).double(), "b": nn.Linear(8, 1).double()}
    x = torch.randn(6, 4, dtype=torch.float64)
    z1, z2 = torch.tanh(left(x)), torch.tanh(right(x**2))
    losses = {
        "a": heads["a"](z1).pow(2).mean(),
        "b": heads["b"](torch.cat([z1, z2], 1)).pow(2).mean(),
    }
    shared = [*left.parameters(), *right.parameters()]
    outs = []
    for engine, rep in [("loop", None), ("representation", (z1, z2))]:
        for p in shared:
            p.grad = None
        b = mtlbalance.DBMTL(shared, heads, engine=engine, retain_graph=True)
        b.backward(losses, representation=rep)
        outs.append(torch.cat([p.grad.reshape(-1) for p in shared]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)


def test_representation_engine_rejects_nested_representations() -> None:
    torch.manual_seed(0)
    lower, upper = nn.Linear(4, 5).double(), nn.Linear(5, 3).double()
    heads = {"a": nn.Linear(5, 1).double(), "b": nn.Linear(3, 1).double()}
    z1 = torch.tanh(lower(torch.randn(6, 4, dtype=torch.float64)))
    z2 = torch.tanh(upper(z1))
    losses = {"a": heads["a"](z1).pow(2).mean(), "b": heads["b"](z2).pow(2).mean()}
    b = mtlbalance.DBMTL([*lower.parameters(), *upper.parameters()], heads, engine="representation")
    with pytest.raises(
        ValueError, match=r"representation\[1\] is computed from representation\[0\]"
    ):
        b.backward(losses, representation=(z1, z2))


def test_ew_is_the_plain_sum_backward() -> None:
    problem = build_problem(seed=4, num_tasks=3)
    twin = copy.deepcopy(problem)
    losses, _ = problem.losses(0)
    sum(losses.values()).backward()
    balancer = mtlbalance.EW(twin.encoder, dict(twin.heads))
    stats = balancer.backward(twin.losses(0)[0])
    for p, q in zip(problem.all_params(), twin.all_params(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert stats.engine is None and stats.grad_norms is None


@pytest.mark.parametrize("spec", ["ew", "log+ew", "maxnorm", "dbmtl"])
def test_table6_ablation_combinations(spec) -> None:
    """The paper's ablation (Table 6) is four one-line combinations; check each computes what
    it says: EW = Σ∇ℓ, log+ew = Σ∇log ℓ, maxnorm = max-norm on ∇ℓ, dbmtl = max-norm on ∇log ℓ."""
    problem = build_problem(seed=5, num_tasks=3)
    shared = list(problem.encoder.parameters())
    losses, _ = problem.losses(0)
    use_log = spec in ("log+ew", "dbmtl")
    vec = torch.stack(list(losses.values()))
    target = torch.log(vec + 1e-8) if use_log else vec
    rows = torch.stack(
        [
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(target[t], shared, retain_graph=True)]
            )
            for t in range(3)
        ]
    )
    if spec in ("ew", "log+ew"):
        expected = rows.sum(0)
    else:
        ema = 0.1 * rows  # step 1: β_1 = 0.9, ĝ = 0.1 g
        norms = ema.norm(dim=1)
        expected = norms.max() * (ema / (norms[:, None] + 1e-8)).sum(0)
    balancer = mtlbalance.make(spec, shared, {t: problem.heads[t] for t in problem.tasks})
    balancer.backward(losses)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_grad_accumulates_like_backward() -> None:
    """backward() accumulates into existing .grad (like loss.backward()), including when the
    previous step's .grad (a view of the balancer's buffer) was not cleared."""
    problem = build_problem(seed=6, num_tasks=2)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), beta=0.0)
    losses, _ = problem.losses(0)
    balancer.backward(losses)
    first = [p.grad.clone() for p in problem.all_params()]
    losses, _ = problem.losses(0)
    balancer.backward(losses)  # no zero_grad: accumulates (β = 0, same batch: same update)
    for p, g in zip(problem.all_params(), first, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)
    for p in problem.all_params():
        p.grad.zero_()  # zero_grad(set_to_none=False) keeps the views
    balancer.backward(problem.losses(0)[0])
    for p, g in zip(problem.all_params(), first, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_stats_are_device_tensors_until_asked() -> None:
    problem = build_problem(seed=7, num_tasks=2)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="batched")
    losses, _ = problem.losses(0)
    stats = balancer.backward(losses)
    assert isinstance(stats.losses, torch.Tensor) and isinstance(stats.grad_norms, torch.Tensor)
    d = stats.to_dict()
    assert set(d) == {
        *(f"{k}/{t}" for k in ("loss", "transformed", "grad_norm", "weight") for t in ("t0", "t1")),
        "update_norm",
    }
    assert d["loss/t1"] == pytest.approx(float(losses["t1"].detach()))
    update = torch.cat([p.grad.reshape(-1) for p in problem.encoder.parameters()])
    assert d["update_norm"] == pytest.approx(float(update.norm()))
    assert stats.engine == "batched"


class _SlowBackward(torch.autograd.Function):
    """Identity whose backward takes 0.1 s per call: the loop engine calls it once per task,
    the batched and representation engines once per step (one vmapped call)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)
        return grad


class _SlowLayer(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SlowBackward.apply(x)


def test_auto_engine_measures_and_keeps_its_choice() -> None:
    """The loop engine made measurably slower (0.3 s a step for 3 tasks against 0.1 s): auto
    measures each candidate on whole steps, never picks it, and keeps its choice."""
    problem = build_problem(seed=8, num_tasks=3)
    problem.encoder.append(_SlowLayer())
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="auto")
    engines = []
    for k in range(10):
        problem.zero_grad()
        losses, z = problem.losses(k)
        engines.append(balancer.backward(losses, representation=z).engine)
    auto = balancer.engine
    assert isinstance(auto, AutoEngine)
    # one verification step, then 2 whole timed steps per candidate (3 candidates)
    assert engines[:7] == ["auto"] * 7
    assert auto.chosen in ("batched", "representation")
    assert engines[7:] == [auto.chosen] * 3
    assert set(auto.timings) == {"loop", "batched", "representation"}
    assert all(len(v) == 2 for v in auto.timings.values())
    assert min(auto.timings["loop"]) >= 0.3  # the timings are of whole steps
    assert balancer.state_dict()["engine"]["state"]["chosen"] == auto.chosen
