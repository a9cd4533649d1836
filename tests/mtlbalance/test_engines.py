"""Engine selection and fallbacks."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import mtlbalance

from .conftest import build_problem


class NoVmap(torch.autograd.Function):
    """Identity whose backward reads a value on the host: impossible under vmap."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        if float(g.abs().sum()) < 0:  # .item()-like host read
            raise AssertionError
        return g


def unbatchable_problem():
    problem = build_problem(seed=0, num_tasks=3)
    inner = problem.encoder

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return NoVmap.apply(self.inner(x))

    problem.encoder = Wrapped()
    return problem


@pytest.mark.parametrize("engine", ["batched", "representation"])
def test_layer_without_batching_rule_falls_back_to_loop(engine: str) -> None:
    problem = unbatchable_problem()
    reference = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="loop")
    losses, z = problem.losses(0)
    reference.backward(losses)
    expected = [p.grad.clone() for p in problem.all_params()]
    problem.zero_grad()
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine=engine)
    losses, z = problem.losses(0)
    with pytest.warns(
        UserWarning, match=f"the {engine} engine cannot vmap.*falling back to the loop"
    ):
        stats = balancer.backward(losses, representation=z)
    assert stats.engine == "loop"
    for p, g in zip(problem.all_params(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)
    assert balancer.state_dict()["engine"]["fallback_from"] == engine


def test_auto_drops_an_engine_that_fails() -> None:
    problem = unbatchable_problem()
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(3):
            problem.zero_grad()
            losses, z = problem.losses(k)
            balancer.backward(losses, representation=z)
    messages = [str(w.message) for w in caught]
    for name in ("batched", "representation"):
        assert any(f"not using the {name} engine: no vmap batching rule" in m for m in messages)
    assert balancer.engine.chosen == "loop"
    assert set(balancer.engine.dropped) == {"batched", "representation"}


def test_auto_catches_a_representation_that_some_parameter_bypasses() -> None:
    torch.manual_seed(0)
    enc, skip = nn.Linear(4, 5).double(), nn.Linear(4, 1).double()
    heads = {"a": nn.Linear(5, 1).double(), "b": nn.Linear(5, 1).double()}
    balancer = mtlbalance.DBMTL([*enc.parameters(), *skip.parameters()], heads, engine="auto")
    messages = []
    for k in range(6):  # verification, then loop and batched twice each, then the choice
        x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        z = torch.tanh(enc(x))
        losses = {
            "a": (heads["a"](z) + skip(x)).pow(2).mean(),  # skip reaches "a" without z
            "b": heads["b"](z).pow(2).mean(),
        }
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            balancer.backward(losses, representation=z)
        messages += [str(w.message) for w in caught]
    assert any("not using the representation engine" in m and "bypass" not in m for m in messages)
    assert "representation" in balancer.engine.dropped
    assert "without passing through the representation" in balancer.engine.dropped["representation"]
    assert balancer.engine.chosen in ("loop", "batched")


def test_deterministic_auto_uses_a_fixed_rule() -> None:
    problem = build_problem(seed=1, num_tasks=2)
    with_rep = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), deterministic=True)
    losses, z = problem.losses(0)
    assert with_rep.backward(losses, representation=z).engine == "representation"
    without = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), deterministic=True)
    assert without.backward(problem.losses(0)[0]).engine == "batched"
    assert without.engine.timings == {}


def test_without_cudnn_rnn_keeps_outputs_and_batches() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, batch_first=True).double()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    before = gru(x)[0]
    model = mtlbalance.without_cudnn_rnn(nn.Sequential(gru))
    assert model[0] is gru
    torch.testing.assert_close(gru(x)[0], before)
    mtlbalance.without_cudnn_rnn(model)  # idempotent
    heads = {"a": nn.Linear(4, 1).double(), "b": nn.Linear(4, 1).double()}
    results = []
    for engine in ("loop", "batched"):
        for p in gru.parameters():
            p.grad = None
        z = gru(x)[0][:, -1]
        losses = {"a": heads["a"](z).pow(2).mean(), "b": (heads["b"](z) - 3).pow(2).mean()}
        mtlbalance.DBMTL(gru, heads, engine=engine).backward(losses)
        results.append(torch.cat([p.grad.reshape(-1) for p in gru.parameters()]))
    torch.testing.assert_close(results[0], results[1])


def _trial_steps(with_representation: bool) -> int:
    """How many steps the auto engine labels "auto" (its trials) before it uses its choice."""
    problem = build_problem(seed=8, num_tasks=3)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="auto")
    labels = []
    for k in range(12):
        problem.zero_grad()
        losses, z = problem.losses(k)
        labels.append(
            balancer.backward(losses, representation=z if with_representation else None).engine
        )
    trials = labels.index(next(label for label in labels if label != "auto"))
    assert all(label == "auto" for label in labels[:trials])
    assert len(set(labels[trials:])) == 1  # then one engine for good
    return trials


def test_the_docs_say_when_auto_decides() -> None:
    """Issue 15, item 13: docs/mtlbalance.md said the auto engine decides after 3 steps; it
    takes 1 + 2 × (number of candidates) trial steps. The docs state what the engine does."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "mtlbalance.md").read_text("utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `auto` (default)"))
    with_rep, without = _trial_steps(True), _trial_steps(False)
    assert (with_rep, without) == (7, 5)  # 1 + 2·3 and 1 + 2·2
    assert f"steps 1–{with_rep} are trials and the choice is used from step {with_rep + 1}" in row
    assert f"steps 1–{without} and from step {without + 1}" in row
