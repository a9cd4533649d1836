"""The fast, approximate modes of DB-MTL (issue 12): ``Balancer(mode="probe" |
"representation" | "periodic")``, each against its definition written out here (float64,
several SGD steps), the two limits where a mode is exact DB-MTL, per-task loss-scale
invariance, a bit-identical state round trip, and the places every mode must work:
accumulation, a loss scale, ``tables=``, ``BalanceStats``."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import Tensor, nn

import mtlbalance
from mtlbalance.aggregators import MGDA

from ._asserts import assert_loss_scale_invariant
from .conftest import Problem, build_problem

EPS = 1e-8
MODES = ["probe", "representation", "periodic"]
Trajectory = list[list[Tensor]]


# ------------------------------------------------------------------ the definitions, written out
def _flat(grads) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _sgd(problem: Problem, shared_grads: list[Tensor], head_grads: dict, lr: float) -> None:
    with torch.no_grad():
        for p, g in zip(problem.encoder.parameters(), shared_grads, strict=True):
            p -= lr * g
        for t in problem.tasks:
            for p, g in zip(problem.heads[t].parameters(), head_grads[t], strict=True):
                p -= lr * g


def reference_run(
    problem: Problem,
    mode: str,
    steps: int,
    *,
    beta: float = 0.9,
    sigma: float = 0.5,
    lr: float = 0.05,
    probe: list[int] | None = None,
    period: int = 3,
) -> Trajectory:
    """Each mode of docs/mtlbalance.md, "Fast modes", by hand: ``g_t = ∇θ log(ℓ_t + ε)``;
    probe: EMA of the probe's rows p_t, ``c_t = max‖p̂‖ / (‖p̂_t‖ + ε)``; representation: EMA
    of ``‖∇_z ℓ̃_t‖``; periodic: Algorithm 1 on steps 0, K, 2K, … (its own step count), its
    ``c_t`` reused between. Shared update ``Σ_t c_t g_t`` (the exact steps: ``Σ_t c_t ĝ_t``);
    task t's head: ``∇ψ_t ℓ̃_t``."""
    shared = list(problem.encoder.parameters())
    probe = list(range(len(shared) - 2, len(shared))) if probe is None else probe
    ema: Tensor | None = None
    count = 0  # steps of the EMA
    c = torch.zeros(len(problem.tasks), dtype=torch.float64)
    trajectory = []
    for k in range(steps):
        losses, z = problem.losses(k)
        logs = [torch.log(losses[t] + EPS) for t in problem.tasks]
        g = torch.stack(
            [_flat(torch.autograd.grad(log, shared, retain_graph=True)) for log in logs]
        )
        heads = {
            t: torch.autograd.grad(log, list(problem.heads[t].parameters()), retain_graph=True)
            for t, log in zip(problem.tasks, logs, strict=True)
        }
        exact = mode == "periodic" and k % period == 0
        if mode == "probe" or exact or mode == "representation":
            if mode == "probe":
                small = torch.stack(
                    [
                        _flat(
                            torch.autograd.grad(log, [shared[i] for i in probe], retain_graph=True)
                        )
                        for log in logs
                    ]
                )
            elif mode == "representation":
                small = torch.stack(
                    [torch.autograd.grad(log, z, retain_graph=True)[0].norm() for log in logs]
                )
            else:
                small = g
            count += 1
            beta_k = beta / count**sigma
            ema = (1 - beta_k) * small if ema is None else beta_k * ema + (1 - beta_k) * small
            norms = ema.norm(dim=1) if ema.dim() == 2 else ema
            c = norms.max() / (norms + EPS)
        update = (c[:, None] * (ema if exact else g)).sum(0)
        offsets = [0]
        for p in shared:
            offsets.append(offsets[-1] + p.numel())
        shared_grads = [
            update[a:b].view_as(p) for a, b, p in zip(offsets, offsets[1:], shared, strict=False)
        ]
        _sgd(problem, shared_grads, heads, lr)
        trajectory.append([p.detach().clone() for p in problem.all_params()])
    return trajectory


def balancer_run(
    problem: Problem, steps: int, lr: float = 0.05, **options
) -> tuple[Trajectory, list[mtlbalance.BalanceStats]]:
    balancer = mtlbalance.make("dbmtl", problem.encoder, dict(problem.heads), **options)
    opt = torch.optim.SGD(problem.all_params(), lr=lr)
    trajectory, stats = [], []
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        losses, z = problem.losses(k)
        stats.append(balancer.backward(losses, representation=z))
        opt.step()
        trajectory.append([p.detach().clone() for p in problem.all_params()])
    return trajectory, stats


def assert_same(a: Trajectory, b: Trajectory, tol: float = 1e-10) -> None:
    assert len(a) == len(b)
    for step, (pa, pb) in enumerate(zip(a, b, strict=True)):
        for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
            err = float((x - y).abs().max())
            assert err <= tol, f"step {step}, parameter {i}: max abs difference {err:.3e}"


@pytest.mark.parametrize("engine", ["loop", "batched", "representation", "auto"])
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_equals_its_written_out_definition(mode: str, engine: str) -> None:
    problem = build_problem(seed=1)
    options = {"period": 3} if mode == "periodic" else {}
    expected = reference_run(copy.deepcopy(problem), mode, steps=7)
    got, stats = balancer_run(copy.deepcopy(problem), 7, mode=mode, engine=engine, **options)
    assert_same(got, expected)
    labels = [s.mode for s in stats]
    if mode == "periodic":
        assert labels == ["periodic/exact", *["periodic/reuse"] * 2] * 2 + ["periodic/exact"]
    else:
        assert labels == [mode] * 7


def test_probe_named_by_module_prefix_or_parameters_is_the_same_probe() -> None:
    """``probe="0"`` (a module prefix of the shared names) = ``probe=encoder[0]``; the
    reference takes the rows of encoder[0] (tensors 0 and 1)."""
    problem = build_problem(seed=2)
    expected = reference_run(copy.deepcopy(problem), "probe", steps=4, probe=[0, 1])
    by_name, _ = balancer_run(copy.deepcopy(problem), 4, mode="probe", probe="shared.0")
    copied = copy.deepcopy(problem)
    balancer = mtlbalance.make(
        "dbmtl", copied.encoder, dict(copied.heads), mode="probe", probe=copied.encoder[0]
    )
    assert balancer.mode.probe_names == ["shared.0.weight", "shared.0.bias"]
    assert_same(by_name, expected)


def test_default_probe_is_the_last_layer_every_task_reaches() -> None:
    """Shared tensors [trunk, a-only, b-only]: the last weight alone is reached by task b
    only, so the default probe grows back to the first weight both tasks reach."""
    torch.manual_seed(0)
    trunk, head_a, head_b = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 1)
    side_a, side_b = nn.Linear(4, 4), nn.Linear(4, 4)
    shared = [("trunk", trunk), ("side_a", side_a), ("side_b", side_b)]
    balancer = mtlbalance.make(
        "dbmtl",
        [(f"{m}.{n}", p) for m, mod in shared for n, p in mod.named_parameters()],
        {"a": head_a, "b": head_b},
        mode="probe",
    )
    x = torch.randn(8, 3)
    z = torch.tanh(trunk(x))
    losses = {"a": head_a(side_a(z)).pow(2).mean(), "b": head_b(side_b(z)).pow(2).mean()}
    balancer.backward(losses)
    assert balancer.mode.probe_names == [
        "shared.side_a.weight",
        "shared.side_a.bias",
        "shared.side_b.weight",
        "shared.side_b.bias",
    ]


# ------------------------------------------------------------------ the exact limits
def test_fast_is_the_measured_choice_and_is_reported_by_its_own_name() -> None:
    """``mode="fast"`` is the probe mode (benchmarks/results/fast/README.md), reported and
    saved as "probe" (a resume does not depend on what "fast" means later)."""
    problem = build_problem(seed=19)
    expected = reference_run(copy.deepcopy(problem), "probe", steps=3)
    got, stats = balancer_run(copy.deepcopy(problem), 3, mode="fast")
    assert_same(got, expected)
    assert {s.mode for s in stats} == {"probe"}


def test_probe_of_all_shared_parameters_with_beta_zero_is_exact_dbmtl() -> None:
    problem = build_problem(seed=3)
    exact, _ = balancer_run(copy.deepcopy(problem), 6, beta=0.0)
    copied = copy.deepcopy(problem)
    probe, stats = balancer_run(copied, 6, beta=0.0, mode="probe", probe=copied.encoder)
    assert_same(probe, exact, tol=1e-12)
    assert {s.mode for s in stats} == {"probe"}


def test_periodic_with_period_one_is_exact_dbmtl() -> None:
    problem = build_problem(seed=4)
    exact, _ = balancer_run(copy.deepcopy(problem), 6)
    periodic, stats = balancer_run(copy.deepcopy(problem), 6, mode="periodic", period=1)
    assert_same(periodic, exact, tol=0.0)
    assert {s.mode for s in stats} == {"periodic/exact"}


def test_the_modes_differ_from_exact_dbmtl_where_they_approximate() -> None:
    """A sanity check on the two limits above: with the default β and probe, each mode
    moves the parameters differently from Algorithm 1."""
    problem = build_problem(seed=5)
    exact, _ = balancer_run(copy.deepcopy(problem), 4)
    for mode in MODES:
        got, _ = balancer_run(copy.deepcopy(problem), 4, mode=mode)
        assert float((got[-1][0] - exact[-1][0]).abs().max()) > 1e-6, mode


# ------------------------------------------------------------------ properties
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_is_invariant_to_per_task_loss_scales(mode: str) -> None:
    options = {"period": 2} if mode == "periodic" else {}
    assert_loss_scale_invariant(
        lambda enc, heads: mtlbalance.make("dbmtl", enc, heads, eps=0.0, mode=mode, **options),
        build_problem(seed=6),
        [1e-3, 1.0, 250.0],
        steps=5,
    )


@pytest.mark.parametrize("split", [1, 2, 4])
@pytest.mark.parametrize("mode", MODES)
def test_state_round_trip_is_bit_identical(mode: str, split: int) -> None:
    """``state_dict`` after ``split`` steps, through ``torch.save`` / ``weights_only`` load,
    into a fresh balancer and a copied model: the continued run equals the uninterrupted
    one bit for bit (periodic: a split inside and at the edge of a period; probe: the default
    probe chosen on the first step travels with the state)."""
    steps = 6
    problem = build_problem(seed=7)
    whole, _ = balancer_run(copy.deepcopy(problem), steps, mode=mode)

    first = copy.deepcopy(problem)
    balancer = mtlbalance.make("dbmtl", first.encoder, dict(first.heads), mode=mode)
    opt = torch.optim.SGD(first.all_params(), lr=0.05)
    for k in range(split):
        opt.zero_grad(set_to_none=True)
        losses, z = first.losses(k)
        balancer.backward(losses, representation=z)
        opt.step()
    buf = io.BytesIO()
    torch.save(balancer.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    second = copy.deepcopy(first)
    resumed = mtlbalance.make("dbmtl", second.encoder, dict(second.heads), mode=mode)
    resumed.load_state_dict(state)
    opt = torch.optim.SGD(second.all_params(), lr=0.05)
    for k in range(split, steps):
        opt.zero_grad(set_to_none=True)
        losses, z = second.losses(k)
        resumed.backward(losses, representation=z)
        opt.step()
    for x, y in zip(whole[-1], [p.detach() for p in second.all_params()], strict=True):
        assert torch.equal(x, y)


def test_reset_starts_the_mode_over() -> None:
    problem = build_problem(seed=8)
    first, _ = balancer_run(copy.deepcopy(problem), 3, mode="periodic", period=2)
    other, copied = copy.deepcopy(problem), copy.deepcopy(problem)
    balancer = mtlbalance.make(
        "dbmtl", copied.encoder, dict(copied.heads), mode="periodic", period=2
    )
    balancer.backward(copied.losses(5)[0])  # a step, then reset: as if it never happened
    balancer.reset()
    copied.zero_grad()
    del other
    again, stats = [], []
    opt = torch.optim.SGD(copied.all_params(), lr=0.05)
    for k in range(3):
        opt.zero_grad(set_to_none=True)
        losses, _ = copied.losses(k)
        stats.append(balancer.backward(losses).mode)
        opt.step()
        again.append([p.detach().clone() for p in copied.all_params()])
    assert stats == ["periodic/exact", "periodic/reuse", "periodic/exact"]
    assert_same(again, first, tol=0.0)


# ------------------------------------------------------------------ where the exact method works
@pytest.mark.parametrize("mode", ["probe", "periodic"])
def test_accumulation_equals_the_mode_on_the_whole_batch(mode: str) -> None:
    """Two equal micro-batches of mean losses: the accumulated step equals the mode's direct
    step on the concatenated batch (the factors come from the whole batch's rows)."""
    problem = build_problem(seed=9)
    direct, acc = copy.deepcopy(problem), copy.deepcopy(problem)
    options = {"period": 2} if mode == "periodic" else {}
    b_direct = mtlbalance.make("dbmtl", direct.encoder, dict(direct.heads), mode=mode, **options)
    b_acc = mtlbalance.make("dbmtl", acc.encoder, dict(acc.heads), mode=mode, **options)
    half = problem.batch // 2
    for k in range(4):
        x, ys = problem.batch_at(k)
        for p in [*direct.all_params(), *acc.all_params()]:
            p.grad = None
        z = direct.encoder(x)
        b_direct.backward(
            {
                t: direct.scales[i] * ((direct.heads[t](z) - ys[t]) ** 2).mean()
                for i, t in enumerate(problem.tasks)
            }
        )
        for rows in (slice(0, half), slice(half, None)):
            zm = acc.encoder(x[rows])
            b_acc.accumulate(
                {
                    t: acc.scales[i] * ((acc.heads[t](zm) - ys[t][rows]) ** 2).mean()
                    for i, t in enumerate(problem.tasks)
                }
            )
        assert b_acc.backward_accumulated().mode.startswith(mode)
        for p, q in zip(direct.all_params(), acc.all_params(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12)
        with torch.no_grad():
            for p, q in zip(direct.all_params(), acc.all_params(), strict=True):
                p -= 0.05 * p.grad
                q -= 0.05 * q.grad


def test_representation_mode_cannot_accumulate() -> None:
    problem = build_problem(seed=10)
    balancer = mtlbalance.make("dbmtl", problem.encoder, dict(problem.heads), mode="representation")
    losses, z = problem.losses(0)
    with pytest.raises(ValueError, match="cannot accumulate micro-batches"):
        balancer.accumulate(losses, representation=z)


@pytest.mark.parametrize("mode", MODES)
def test_a_loss_scale_gives_the_unscaled_result_and_an_overflow_skips(mode: str) -> None:
    problem = build_problem(seed=11)
    options = {"period": 2} if mode == "periodic" else {}
    plain, _ = balancer_run(copy.deepcopy(problem), 3, mode=mode, **options)
    scaled = copy.deepcopy(problem)
    balancer = mtlbalance.make("dbmtl", scaled.encoder, dict(scaled.heads), mode=mode, **options)
    opt = torch.optim.SGD(scaled.all_params(), lr=0.05)
    for k in range(3):
        opt.zero_grad(set_to_none=True)
        losses, z = scaled.losses(k)
        if k == 1:  # an overflow first: skipped, nothing written, the state untouched
            before = copy.deepcopy(balancer.state_dict())
            stats = balancer.backward(losses, representation=z, loss_scale=1e308)
            assert stats.skipped
            assert all(p.grad is None for p in scaled.all_params())
            after = balancer.state_dict()
            assert after["step"] == before["step"]
            assert after.get("mode", {}).get("count") == before.get("mode", {}).get("count")
            losses, z = scaled.losses(k)
        balancer.backward(losses, representation=z, loss_scale=2.0**20)
        opt.step()
    for x, y in zip(plain[-1], scaled.all_params(), strict=True):
        torch.testing.assert_close(y.detach(), x, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_tables_get_one_backward_with_the_modes_factors(mode: str) -> None:
    """With ``tables=``, the table gets ``∇ Σ_t c_t ℓ̃_t`` with the step's reported
    ``c_t`` (written out: per-task gradients of the table, combined by hand)."""
    torch.manual_seed(12)
    emb = nn.Embedding(10, 3).double()
    encoder = nn.Sequential(nn.Linear(3, 5), nn.Tanh()).double()
    heads = nn.ModuleDict({t: nn.Linear(5, 1).double() for t in ("a", "b")})
    options = {"period": 2} if mode == "periodic" else {}
    balancer = mtlbalance.make(
        "dbmtl", encoder, dict(heads), tables=[emb.weight], mode=mode, **options
    )
    for k in range(3):
        ids = torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(k))
        z = encoder(emb(ids))
        losses = {
            "a": heads["a"](z).pow(2).mean() + 0.1,
            "b": 100 * heads["b"](z).pow(2).mean() + 1,
        }
        per_task = [
            torch.autograd.grad(torch.log(v + EPS), emb.weight, retain_graph=True)[0]
            for v in losses.values()
        ]
        emb.weight.grad = None
        stats = balancer.backward(losses, representation=z)
        assert stats.table_factors is not None
        expected = sum(c * g for c, g in zip(stats.table_factors, per_task, strict=True))
        torch.testing.assert_close(emb.weight.grad, expected, rtol=1e-10, atol=1e-14)


def test_a_gram_weighting_in_probe_mode_uses_its_weights_of_the_probe_gram() -> None:
    """MGDA in probe mode: ``w = MGDA(P Pᵀ)`` from the probe rows, shared update
    ``Σ_t w_t g_t`` and (MGDA weighs the losses) heads ``w_t ∇ψ_t ℓ_t``."""
    problem = build_problem(seed=13)
    balancer = mtlbalance.make(
        "mgda", problem.encoder, dict(problem.heads), mode="probe", probe=problem.encoder[2]
    )
    losses, _ = problem.losses(0)
    shared = list(problem.encoder.parameters())
    rows = torch.stack(
        [
            _flat(torch.autograd.grad(losses[t], shared[2:], retain_graph=True))
            for t in problem.tasks
        ]
    )
    full = torch.stack(
        [_flat(torch.autograd.grad(losses[t], shared, retain_graph=True)) for t in problem.tasks]
    )
    w = MGDA().weights_from_gram(rows @ rows.T, torch.ones(3, dtype=torch.float64))
    heads = {
        t: torch.autograd.grad(losses[t], list(problem.heads[t].parameters()), retain_graph=True)
        for t in problem.tasks
    }
    stats = balancer.backward(losses)
    torch.testing.assert_close(stats.weights, w)
    torch.testing.assert_close(_flat([p.grad for p in shared]), w @ full)
    for i, t in enumerate(problem.tasks):
        for p, g in zip(problem.heads[t].parameters(), heads[t], strict=True):
            torch.testing.assert_close(p.grad, w[i] * g)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("ew", {"mode": "probe"}, "approximates a gradient-level method"),
        ("uw", {"mode": "periodic"}, "approximates a gradient-level method"),
        ("dbmtl", {"mode": "fastest"}, "unknown mode 'fastest'"),
        ("dbmtl", {"mode": "probe", "probe": "shared.9"}, "names no shared parameter"),
        ("dbmtl", {"probe": "shared.0"}, "read by mode='probe' only"),
        ("dbmtl", {"mode": "probe", "period": 3}, "read by mode='periodic' only"),
        ("dbmtl", {"mode": "periodic", "period": 0}, "period must be an integer >= 1"),
        ("pcgrad", {"mode": "representation"}, None),
        ("graddrop", {"mode": "representation"}, "neither"),
    ],
)
def test_bad_modes_are_refused_with_the_fix(
    method: str, options: dict, message: str | None
) -> None:
    problem = build_problem(seed=14)
    if message is None:  # a Gram weighting: the representation mode is defined for it
        mtlbalance.make(method, problem.encoder, dict(problem.heads), **options)
        return
    with pytest.raises(ValueError, match=message):
        mtlbalance.make(method, problem.encoder, dict(problem.heads), **options)


def test_a_probe_outside_the_shared_parameters_is_refused() -> None:
    problem = build_problem(seed=15)
    with pytest.raises(ValueError, match="not among the shared parameters"):
        mtlbalance.make(
            "dbmtl", problem.encoder, dict(problem.heads), mode="probe", probe=problem.heads["t0"]
        )


def test_representation_mode_without_z_says_how_to_pass_it() -> None:
    problem = build_problem(seed=16)
    balancer = mtlbalance.make("dbmtl", problem.encoder, dict(problem.heads), mode="representation")
    with pytest.raises(ValueError, match=r"representation=z"):
        balancer.backward(problem.losses(0)[0])


def test_a_state_from_another_mode_is_refused() -> None:
    problem = build_problem(seed=17)
    exact = mtlbalance.make("dbmtl", problem.encoder, dict(problem.heads))
    losses, _ = problem.losses(0)
    exact.backward(losses)
    fast = mtlbalance.make("dbmtl", problem.encoder, dict(problem.heads), mode="probe")
    with pytest.raises(ValueError, match="made with mode='exact'"):
        fast.load_state_dict(exact.state_dict())


def test_a_method_without_weights_is_refused_in_probe_mode() -> None:
    problem = build_problem(seed=18)
    balancer = mtlbalance.make("graddrop", problem.encoder, dict(problem.heads), mode="probe")
    with pytest.raises(ValueError, match="reports none"):
        balancer.backward(problem.losses(0)[0])
