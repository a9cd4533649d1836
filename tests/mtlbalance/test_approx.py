"""Large shared tables balanced approximately: ``Balancer(..., tables=embedding)``.

The tables stay out of the (T, P) matrix; after the aggregator has run on the exact dense
shared part they get one backward of ``Σ_t c_t ℓ̃_t`` with the aggregator's per-task factors.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mtlbalance
from mtlbalance.registry import AGGREGATORS, parse

ENGINES = ["loop", "batched", "representation", "auto"]


@dataclass
class RecProblem:
    """Two embedding tables (an EmbeddingBag and an Embedding) and dense features feed an
    MLP encoder; one small head per task; losses of very different scales."""

    bag: nn.EmbeddingBag
    emb: nn.Embedding
    encoder: nn.Sequential
    heads: nn.ModuleDict
    scales: list[float]
    seed: int
    batch: int = 8

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    @property
    def tables(self) -> list[Tensor]:
        return [self.bag.weight, self.emb.weight]

    def dense(self) -> list[Tensor]:
        return list(self.encoder.parameters())

    def batch_at(self, step: int) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1000 + step)
        bags = torch.randint(0, self.bag.num_embeddings, (self.batch, 3), generator=g)
        ids = torch.randint(0, self.emb.num_embeddings, (self.batch,), generator=g)
        x = torch.randn(self.batch, 2, generator=g, dtype=torch.float64)
        ys = {t: torch.randn(self.batch, 1, generator=g, dtype=torch.float64) for t in self.tasks}
        return bags, ids, x, ys

    def losses(self, step: int, rows: slice = slice(None)) -> tuple[dict[str, Tensor], Tensor]:
        bags, ids, x, ys = self.batch_at(step)
        features = torch.cat([self.bag(bags[rows]), self.emb(ids[rows]), x[rows]], dim=1)
        z = self.encoder(features)
        out = {
            t: s * ((self.heads[t](z) - ys[t][rows]) ** 2).mean()
            for t, s in zip(self.tasks, self.scales, strict=True)
        }
        return out, z

    def all_params(self) -> list[Tensor]:
        return [*self.tables, *self.dense(), *self.heads.parameters()]

    def zero_grad(self) -> None:
        for p in self.all_params():
            p.grad = None


def build(seed: int = 0, num_tasks: int = 3, sparse: bool = False) -> RecProblem:
    torch.manual_seed(seed)
    dim = 3
    bag = nn.EmbeddingBag(11, dim, mode="mean", sparse=sparse).double()
    emb = nn.Embedding(7, dim, sparse=sparse).double()
    encoder = nn.Sequential(
        nn.Linear(2 * dim + 2, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh()
    ).double()
    heads = nn.ModuleDict(
        {
            f"t{i}": nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1))
            for i in range(num_tasks)
        }
    ).double()
    scales = [10.0 ** (i - 1) for i in range(num_tasks)]
    return RecProblem(bag, emb, encoder, heads, scales, seed)


def grads(params: list[Tensor]) -> list[Tensor]:
    out = []
    for p in params:
        assert p.grad is not None
        out.append(p.grad.to_dense() if p.grad.is_sparse else p.grad.clone())
    return out


def approx(problem: RecProblem, method: str, **kwargs: object) -> mtlbalance.Balancer:
    return mtlbalance.make(
        method, problem.encoder, dict(problem.heads), tables=problem.tables, **kwargs
    )


def exact(problem: RecProblem, method: str, **kwargs: object) -> mtlbalance.Balancer:
    shared = [*problem.tables, *problem.dense()]
    return mtlbalance.make(method, shared, dict(problem.heads), **kwargs)


def step(
    balancer: mtlbalance.Balancer, problem: RecProblem, k: int, **kw: Any
) -> mtlbalance.BalanceStats:
    losses, z = problem.losses(k)
    return balancer.backward(losses, representation=z, **kw)


# ---------------------------------------------------------------- (1) exact for loss level
LOSS_LEVEL = [
    m for m in mtlbalance.available() if AGGREGATORS[parse(m)[1]].requires != "jacobian"
] + ["log+ew"]


@pytest.mark.parametrize("method", LOSS_LEVEL)
def test_loss_and_representation_level_methods_give_the_exact_gradients(method: str) -> None:
    """One backward of Σ w_t ℓ̃_t reaches the tables either way: identical .grad, step after
    step (learned weights, loss histories and random draws included)."""
    base = build(seed=1)
    a_prob, e_prob = copy.deepcopy(base), copy.deepcopy(base)
    options = {"task": "t1"} if method == "stl" else {}
    a, e = approx(a_prob, method, **options), exact(e_prob, method, **options)
    opt_a = torch.optim.SGD([*a_prob.all_params(), *a.parameters()], lr=0.05)
    opt_e = torch.optim.SGD([*e_prob.all_params(), *e.parameters()], lr=0.05)
    for k in range(3):
        torch.manual_seed(100 + k)  # the same random draws (RLW) for both
        sa = step(a, a_prob, k)
        torch.manual_seed(100 + k)
        se = step(e, e_prob, k)
        for ga, ge in zip(grads(a_prob.all_params()), grads(e_prob.all_params()), strict=True):
            torch.testing.assert_close(ga, ge, rtol=0, atol=0)
        assert sa.table_factors is not None and se.table_factors is None
        expected = torch.ones(3, dtype=torch.float64) if sa.weights is None else sa.weights
        torch.testing.assert_close(sa.table_factors, expected.to(torch.float64))
        opt_a.step()
        opt_e.step()
        opt_a.zero_grad(set_to_none=True)
        opt_e.zero_grad(set_to_none=True)
        a.after_step(a_prob.losses(k)[0])
        e.after_step(e_prob.losses(k)[0])


def test_loss_level_clip_covers_the_tables_as_the_exact_treatment_does() -> None:
    base = build(seed=2)
    a_prob, e_prob = copy.deepcopy(base), copy.deepcopy(base)
    a = approx(a_prob, "log+ew", max_update_norm=0.01)
    e = exact(e_prob, "log+ew", max_update_norm=0.01)
    sa, se = step(a, a_prob, 0), step(e, e_prob, 0)
    for ga, ge in zip(grads(a_prob.all_params()), grads(e_prob.all_params()), strict=True):
        torch.testing.assert_close(ga, ge, rtol=1e-12, atol=0)
    shared = grads([*a_prob.tables, *a_prob.dense()])
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in shared]))
    assert math.isclose(float(total), 0.01, rel_tol=1e-9)
    assert sa.update_norm is not None and se.update_norm is not None
    assert math.isclose(float(sa.update_norm), float(se.update_norm), rel_tol=1e-12)


# ---------------------------------------------------------------- (2) DB-MTL, every engine
def reference_factors(
    problem: RecProblem, k_max: int, beta: float, sigma: float, eps: float
) -> list[tuple[Tensor, list[Tensor]]]:
    """Algorithm 1 on the dense shared part, written out: per step the factors
    c_t = α / (‖ĝ_t‖ + ε) and the expected table gradient Σ_t c_t ∇_tables log(ℓ_t + ε)."""
    dense, tables = problem.dense(), problem.tables
    ema = None
    out = []
    for k in range(1, k_max + 1):
        losses, _ = problem.losses(k - 1)
        rows, table_rows = [], []
        for t in problem.tasks:
            logged = torch.log(losses[t] + eps)
            gs = torch.autograd.grad(logged, [*dense, *tables], retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in gs[: len(dense)]]))
            table_rows.append([g.to_dense() for g in gs[len(dense) :]])
        g = torch.stack(rows)
        beta_k = beta / k**sigma
        ema = (1 - beta_k) * g if ema is None else beta_k * ema + (1 - beta_k) * g
        norms = ema.norm(dim=1)
        c = norms.max() / (norms + eps)
        expected = [
            sum(c[t] * table_rows[t][j] for t in range(len(problem.tasks)))
            for j in range(len(tables))
        ]
        out.append((c, expected))
    return out


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("sparse", [False, True])
def test_dbmtl_balances_dense_exactly_and_tables_by_its_factors(engine: str, sparse: bool) -> None:
    problem = build(seed=3, sparse=sparse)
    steps = 4
    ref = reference_factors(problem, steps, beta=0.9, sigma=0.5, eps=1e-8)
    a = approx(problem, "dbmtl", engine=engine)
    dense_only = mtlbalance.make("dbmtl", problem.encoder, dict(problem.heads), engine=engine)
    dense_and_heads = [*problem.dense(), *problem.heads.parameters()]
    for k in range(steps):  # parameters fixed, batches change: the EMA moves
        problem.zero_grad()
        stats = step(a, problem, k)
        got_dense = grads(dense_and_heads)
        got_tables = [p.grad for p in problem.tables]
        problem.zero_grad()
        ref_stats = step(dense_only, problem, k)
        # the dense part and the heads: exactly the balancer without the tables
        for g, r in zip(got_dense, grads(dense_and_heads), strict=True):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)
        assert all(p.grad is None for p in problem.tables)
        # the factors: what MaxNorm reports, and Algorithm 1's α / (‖ĝ_t‖ + ε)
        c, expected = ref[k]
        assert stats.table_factors is not None and stats.weights is not None
        torch.testing.assert_close(stats.table_factors, stats.weights)
        torch.testing.assert_close(stats.table_factors, c, rtol=1e-9, atol=0)
        torch.testing.assert_close(stats.weights, ref_stats.weights, rtol=1e-12, atol=0)
        for table_grad, want in zip(got_tables, expected, strict=True):
            assert table_grad is not None and table_grad.is_sparse == sparse
            torch.testing.assert_close(table_grad.to_dense(), want, rtol=1e-9, atol=1e-14)
    # the memory point: the (T, P) matrix and the EMA cover the dense part only
    dense_numel = sum(p.numel() for p in problem.dense())
    assert a._engine.buffer is not None
    assert tuple(a._engine.buffer.shape) == (3, dense_numel)
    ema = a.aggregator.ema
    assert isinstance(ema, Tensor) and tuple(ema.shape) == (3, dense_numel)
    if sparse:  # (the exact treatment writes rows of the flat matrix: dense tables only)
        return
    full = exact(problem, "dbmtl", engine=engine)
    problem.zero_grad()
    step(full, problem, 0)
    assert full._engine.buffer is not None
    assert full._engine.buffer.shape[1] == dense_numel + sum(p.numel() for p in problem.tables)


def test_dbmtl_class_takes_tables_and_an_optimizer_step_works_with_sparse_tables() -> None:
    problem = build(seed=4, sparse=True)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), tables=problem.tables)
    assert "tables=2 tensors" in repr(balancer)
    dense_opt = torch.optim.SGD([*problem.dense(), *problem.heads.parameters()], lr=0.1)
    sparse_opt = torch.optim.SparseAdam(problem.tables, lr=0.1)
    before = [p.detach().clone() for p in problem.tables]
    for k in range(2):
        stats = step(balancer, problem, k)
        dense_opt.step()
        sparse_opt.step()
        dense_opt.zero_grad()
        sparse_opt.zero_grad()
    assert not any(torch.equal(b, p) for b, p in zip(before, problem.tables, strict=True))
    assert set(stats.to_dict()) >= {f"table_factor/t{i}" for i in range(3)}


# ---------------------------------------------------------------- methods without weights
def test_method_without_weights_falls_back_to_ones_with_one_warning() -> None:
    problem = build(seed=5)
    balancer = approx(problem, "mtadam", engine="loop")
    with pytest.warns(UserWarning, match="'mtadam' aggregator reports no per-task weights"):
        stats = step(balancer, problem, 0)
    assert stats.table_factors is not None
    torch.testing.assert_close(stats.table_factors, torch.ones(3, dtype=torch.float64))
    got = grads(problem.tables)
    losses, _ = problem.losses(0)
    want = torch.autograd.grad(torch.stack(list(losses.values())).sum(), problem.tables)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(balancer, problem, 1)  # once only


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "nashmtl"])
def test_gram_weighting_methods_send_their_weights_to_the_tables(method: str) -> None:
    problem = build(seed=6)
    balancer = approx(problem, method, engine="batched")
    torch.manual_seed(0)
    stats = step(balancer, problem, 0)
    assert stats.weights is not None and stats.table_factors is not None
    torch.testing.assert_close(stats.table_factors, stats.weights.to(torch.float64))
    losses, _ = problem.losses(0)
    total = torch.stack(
        [float(c) * losses[t] for c, t in zip(stats.weights, problem.tasks, strict=True)]
    ).sum()
    want = torch.autograd.grad(total, problem.tables)
    for g, w in zip(grads(problem.tables), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- accumulation, loss scale
@pytest.mark.parametrize("method", ["dbmtl", "ew", "uw"])
@pytest.mark.parametrize("sparse", [False, True])
def test_accumulated_micro_batches_equal_the_whole_batch(method: str, sparse: bool) -> None:
    base = build(seed=7, sparse=sparse)
    whole, split = copy.deepcopy(base), copy.deepcopy(base)
    a, b = approx(whole, method, engine="loop"), approx(split, method, engine="loop")
    for k in range(2):
        step(a, whole, k)
        for rows in (slice(0, 4), slice(4, 8)):  # two equal micro-batches, mean losses
            losses, z = split.losses(k, rows)
            b.accumulate(losses, representation=z, loss_scale=2.0**8 if k else None)
        b.backward_accumulated()
        for g, h in zip(grads(whole.all_params()), grads(split.all_params()), strict=True):
            torch.testing.assert_close(g, h, rtol=1e-9, atol=1e-13)
        whole.zero_grad()
        split.zero_grad()


@pytest.mark.parametrize("method", ["dbmtl", "log+ew"])
@pytest.mark.parametrize("engine", ["loop", "batched", "representation"])
def test_loss_scale_gives_the_same_gradients(method: str, engine: str) -> None:
    base = build(seed=8)
    plain, scaled = copy.deepcopy(base), copy.deepcopy(base)
    a, b = approx(plain, method, engine=engine), approx(scaled, method, engine=engine)
    for k in range(2):
        step(a, plain, k)
        stats = step(b, scaled, k, loss_scale=torch.tensor(2.0**12))
        assert not stats.skipped
        for g, h in zip(grads(plain.all_params()), grads(scaled.all_params()), strict=True):
            torch.testing.assert_close(g, h, rtol=1e-12, atol=0)


def poison_tables(problem: RecProblem) -> None:
    """The gradient reaching the EmbeddingBag's output becomes inf: only the tables see it."""

    def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        out.register_hook(lambda g: g * float("inf"))

    problem.bag.register_forward_hook(hook)


@pytest.mark.parametrize("method", ["dbmtl", "pcgrad"])
def test_overflow_in_the_tables_skips_the_step_and_keeps_the_state(method: str) -> None:
    problem = build(seed=9)
    balancer = approx(problem, method, engine="loop")
    step(balancer, problem, 0)
    problem.zero_grad()
    state = copy.deepcopy(balancer.state_dict())
    poison_tables(problem)
    stats = step(balancer, problem, 1, loss_scale=2.0**4)
    assert stats.skipped and stats.update_norm is None
    assert all(p.grad is None for p in problem.all_params())
    after = balancer.state_dict()
    assert after["step"] == state["step"] == 1
    for key, value in state["aggregator"].items():
        saved = value if not isinstance(value, dict) else value.get("ema")
        now = after["aggregator"][key]
        now = now if not isinstance(now, dict) else now.get("ema")
        if isinstance(saved, Tensor):
            assert isinstance(now, Tensor) and torch.equal(saved, now)


def test_non_finite_table_gradient_raises_naming_the_table() -> None:
    problem = build(seed=10)
    balancer = approx(problem, "dbmtl", engine="loop")
    poison_tables(problem)
    with pytest.raises(FloatingPointError, match=r"tables\[0\]"):
        step(balancer, problem, 0)
    assert all(p.grad is None for p in problem.all_params())
    unchecked = approx(problem, "dbmtl", engine="loop", check_finite=False)
    step(unchecked, problem, 0)  # no check: the inf reaches .grad, as with check_finite=False
    poisoned = problem.bag.weight.grad
    assert poisoned is not None and not torch.isfinite(poisoned).all()


# ---------------------------------------------------------------- errors
def test_a_parameter_in_shared_and_tables_is_refused() -> None:
    problem = build()
    with pytest.raises(ValueError, match=r"either exactly .*or approximately"):
        mtlbalance.Balancer(
            [*problem.dense(), problem.emb.weight], dict(problem.heads), tables=problem.tables
        )
    with pytest.raises(ValueError, match="listed twice among the tables"):
        mtlbalance.Balancer(problem.encoder, tables=[problem.emb.weight, problem.emb.weight])
    with pytest.raises(ValueError, match="also given as tables"):
        mtlbalance.Balancer(
            problem.encoder, {"t0": [problem.emb.weight]}, tables=[problem.emb.weight]
        )


@pytest.mark.parametrize("method", ["dbmtl", "ew"])
def test_a_table_no_task_reaches_is_an_error_unless_allowed(method: str) -> None:
    problem = build()
    unused = nn.Embedding(5, 3).double()
    balancer = approx(problem, method, engine="loop")
    balancer = mtlbalance.make(
        method, problem.encoder, dict(problem.heads), tables=[*problem.tables, unused.weight]
    )
    with pytest.raises(ValueError, match=r"table\(s\) tables\[2\] are reached by no task"):
        step(balancer, problem, 0)
    problem.zero_grad()
    allowed = mtlbalance.make(
        method,
        problem.encoder,
        dict(problem.heads),
        tables=[*problem.tables, unused.weight],
        allow_unused=True,
    )
    step(allowed, problem, 0)
    assert unused.weight.grad is None and problem.emb.weight.grad is not None


# ---------------------------------------------------------------- (5) state
@pytest.mark.parametrize("engine", ["auto", "batched"])
def test_state_round_trip_continues_bit_for_bit(engine: str) -> None:
    base = build(seed=11)
    straight, resumed = copy.deepcopy(base), copy.deepcopy(base)
    a = approx(straight, "dbmtl", engine=engine, deterministic=True)
    for k in range(2):
        step(a, straight, k)
        straight.zero_grad()
    state = copy.deepcopy(a.state_dict())
    assert state["tables"] == {"tables[0]": [11, 3], "tables[1]": [7, 3]}
    b = approx(resumed, "dbmtl", engine=engine, deterministic=True)
    b.load_state_dict(state)
    for k in range(2, 4):
        sa, sb = step(a, straight, k), step(b, resumed, k)
        for g, h in zip(grads(straight.all_params()), grads(resumed.all_params()), strict=True):
            assert torch.equal(g, h)
        assert sa.table_factors is not None and sb.table_factors is not None
        assert torch.equal(sa.table_factors, sb.table_factors)
        straight.zero_grad()
        resumed.zero_grad()
    with pytest.raises(ValueError, match="same tables="):
        exact(resumed, "dbmtl").load_state_dict(state)
    with pytest.raises(ValueError, match="same tables="):
        approx(resumed, "dbmtl").load_state_dict(exact(resumed, "dbmtl").state_dict())


def test_sparse_table_in_shared_is_refused_with_a_pointer_to_tables() -> None:
    torch.manual_seed(0)
    table = torch.nn.EmbeddingBag(20, 4, mode="sum", sparse=True)
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(4, 1) for t in ("a", "b")})
    ids, offsets = torch.randint(0, 20, (12,)), torch.arange(0, 12, 3)
    z = table(ids, offsets)
    losses = {t: h(z).pow(2).mean() for t, h in heads.items()}
    balancer = mtlbalance.make("dbmtl", table, dict(heads.items()), engine="loop")
    with pytest.raises(ValueError, match=r"sparse gradient.*tables="):
        balancer.backward(losses)
