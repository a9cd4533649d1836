"""Properties every registered method must keep (new methods are picked up automatically)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import mtlbalance
from mtlbalance import registry
from mtlbalance._random import RandomDraws
from mtlbalance.aggregators import GradientAggregator, LossWeighting, RepresentationWeighting
from mtlbalance.methods_doc import render

from .._asserts import degenerate_matrices
from ..conftest import build_problem

METHODS = mtlbalance.available()
#: every gradient-level method with DB-MTL's log transform (the paper's Figure 1)
LOG_COMBINATIONS = [
    f"log+{name}"
    for name in METHODS
    if name in registry.AGGREGATORS
    and not issubclass(registry.AGGREGATORS[name], LossWeighting)
    and registry.parse(name)[0] == "identity"
]
#: constructor arguments a method cannot do without
REQUIRED = {"stl": {"task": "t1"}}
#: methods that train a subset of the tasks by design
SINGLE_TASK = {"stl": "t1"}


def build(method: str, problem, tasks=None) -> mtlbalance.Balancer:
    return mtlbalance.make(
        method,
        problem.encoder,
        dict(problem.heads),
        tasks=tasks or problem.tasks,
        engine="loop",
        **REQUIRED.get(method, {}),
    )


def random_parts(balancer: mtlbalance.Balancer) -> list[RandomDraws]:
    return [m for m in (balancer.transform, balancer.aggregator) if isinstance(m, RandomDraws)]


def train(problem, balancer, steps: range, draws=None) -> list:
    """SGD on the model and the balancer's own parameters, with both hooks exercised."""
    opt = torch.optim.SGD([*problem.all_params(), *balancer.parameters()], lr=0.02)
    stats = None
    for k in steps:
        if draws is not None:
            for part, d in zip(random_parts(balancer), draws[k], strict=True):
                part.force_draws(d)
        opt.zero_grad(set_to_none=True)
        losses, z = problem.losses(k)
        stats = balancer.backward(losses, representation=z)
        opt.step()
        with torch.no_grad():
            balancer.after_step(problem.losses(k)[0])
        if k % 2 == 1:
            balancer.epoch_end()
    return [stats]


def sample_draws(balancer, steps: int, num_tasks: int) -> list[list[torch.Tensor]]:
    like = torch.zeros(1, dtype=torch.float64)
    torch.manual_seed(1234)
    out = []
    for _ in range(steps):
        row = []
        for part in random_parts(balancer):
            row.append(part.sample_draws(num_tasks, like))
        out.append(row)
    return out


@pytest.mark.parametrize("method", METHODS + LOG_COMBINATIONS)
def test_permuting_tasks_permutes_the_result(method: str) -> None:
    base = build_problem(seed=0, num_tasks=3, scales=[0.5, 2.0, 7.0])
    perm = [2, 0, 1]
    names = base.tasks
    permuted_names = [names[i] for i in perm]
    results = []
    draws = None
    for order in (names, permuted_names):
        problem = copy.deepcopy(base)
        balancer = build(method, problem, tasks=order)
        if random_parts(balancer):
            if draws is None:
                draws = sample_draws(balancer, 4, 3)
                steps_draws = draws
            else:
                steps_draws = [
                    [
                        p.permute_draws(d, torch.tensor(perm))
                        for p, d in zip(random_parts(balancer), row, strict=True)
                    ]
                    for row in draws
                ]
        else:
            steps_draws = None
        (stats,) = train(problem, balancer, range(4), steps_draws)
        results.append(([p.detach().clone() for p in problem.all_params()], stats))
    (a, sa), (b, sb) = results
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)
    if sa.weights is not None:
        torch.testing.assert_close(sb.weights, sa.weights[torch.tensor(perm)], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(degenerate_matrices()))
def test_finite_on_degenerate_input(method: str, case: str) -> None:
    jac = degenerate_matrices()[case]
    num_tasks, num_params = jac.shape
    transform_name, aggregator_name, defaults = registry.parse(method)
    names = [f"t{i}" for i in range(num_tasks)]
    kwargs = {**defaults, **REQUIRED.get(method, {})}
    if method == "stl":
        kwargs["task"] = "t0"
    t_args = registry._accepted(registry.TRANSFORMS[transform_name])
    a_args = registry._accepted(registry.AGGREGATORS[aggregator_name])
    transform = registry.TRANSFORMS[transform_name](
        **{k: v for k, v in kwargs.items() if k in t_args}
    )
    agg = registry.AGGREGATORS[aggregator_name](**{k: v for k, v in kwargs.items() if k in a_args})
    transform.setup(names)
    agg.setup(names)
    losses = torch.linspace(0.5, 3.0, num_tasks, dtype=torch.float64)
    for _ in range(3):  # stateful methods: a few steps
        transformed = transform(losses)
        assert torch.isfinite(transformed).all()
        if isinstance(agg, LossWeighting):
            w = agg(losses, transformed)
            assert w is None or torch.isfinite(w).all()
        elif isinstance(agg, RepresentationWeighting):
            assert torch.isfinite(agg(jac, losses=losses)).all()
        else:
            assert isinstance(agg, GradientAggregator)
            out = torch.full((num_params,), float("nan"), dtype=torch.float64)
            result = agg(jac.clone(), out, losses=losses)
            assert torch.isfinite(out).all(), f"{method} on {case}: {out}"
            for w in (result.weights, result.task_weights):
                assert w is None or torch.isfinite(w).all()
        transform.after_step(losses * 0.9)
        agg.after_step(losses * 0.9)


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip_continues_identically(method: str) -> None:
    problem = build_problem(seed=5, num_tasks=3, scales=[0.5, 2.0, 7.0])
    balancer = build(method, problem)
    train(problem, balancer, range(3))
    snapshot = copy.deepcopy(
        {
            "model": [p.detach().clone() for p in problem.all_params()],
            "balancer": balancer.state_dict(),
            "rng": torch.get_rng_state(),
        }
    )
    train(problem, balancer, range(3, 6))
    expected = [p.detach().clone() for p in problem.all_params()]

    resumed = build_problem(seed=77, num_tasks=3, scales=[0.5, 2.0, 7.0])
    resumed.seed = problem.seed
    with torch.no_grad():
        for p, v in zip(resumed.all_params(), snapshot["model"], strict=True):
            p.copy_(v)
    fresh = build(method, resumed)
    fresh.load_state_dict(snapshot["balancer"])
    torch.set_rng_state(snapshot["rng"])
    # (SGD without momentum: no optimizer state to restore)
    train(resumed, fresh, range(3, 6))
    for a, b in zip(expected, resumed.all_params(), strict=True):
        assert torch.equal(a, b.detach()), method


def toy_losses(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-objective toy problem of CAGrad (Liu et al. 2021) and Nash-MTL (Navon et al.
    2022), shifted by +30 so that both objectives are positive (log-based methods)."""
    lower = 5e-6
    x1, x2 = x[0], x[1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), lower).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), lower).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    return f1 * c1 + f1_sq * c2 + 30, f2 * c1 + f2_sq * c2 + 30


@pytest.mark.parametrize("method", METHODS + LOG_COMBINATIONS)
@pytest.mark.parametrize("start", [(-8.5, 7.5), (9.0, 9.0)])
def test_toy_problem_decreases_both_losses(method: str, start: tuple[float, float]) -> None:
    x = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    kwargs = {"task": "f1"} if method == "stl" else {}
    balancer = mtlbalance.make(method, [x], tasks=["f1", "f2"], engine="loop", **kwargs)
    opt = torch.optim.Adam([x, *balancer.parameters()], lr=1e-2)
    torch.manual_seed(0)
    with torch.no_grad():
        start_losses = toy_losses(x)
    for _ in range(300):
        opt.zero_grad(set_to_none=True)
        z = x * 1.0  # a representation, for representation-level methods
        f1, f2 = toy_losses(z)
        balancer.backward({"f1": f1, "f2": f2}, representation=z)
        opt.step()
        with torch.no_grad():
            balancer.after_step(dict(zip(("f1", "f2"), toy_losses(x), strict=True)))
    with torch.no_grad():
        end_losses = toy_losses(x)
    assert torch.isfinite(x).all()
    trained = ["f1"] if method == "stl" else ["f1", "f2"]
    for i, name in enumerate(("f1", "f2")):
        if name in trained:
            assert end_losses[i] < start_losses[i], (
                f"{method}: {name} {start_losses[i]} -> {end_losses[i]}"
            )


def test_log_combines_with_every_gradient_method() -> None:
    assert len(LOG_COMBINATIONS) >= 15
    for spec in LOG_COMBINATIONS:
        transform, aggregator, _ = registry.parse(spec)
        assert transform == "log" and aggregator == spec.removeprefix("log+")


def test_missing_solver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    problem = build_problem(seed=0, num_tasks=2)
    with pytest.raises(ImportError, match=r"mtlbalance\[solvers\]"):
        mtlbalance.make("cagrad", problem.encoder, dict(problem.heads))


def test_every_method_is_documented() -> None:
    path = Path(__file__).resolve().parents[3] / "docs" / "methods.md"
    text = path.read_text(encoding="utf-8")
    assert render(text) == text, (
        "docs/methods.md is out of date: run python -m mtlbalance.methods_doc docs/methods.md"
    )
    for method in METHODS:
        assert f"| {method} |" in text


@pytest.mark.parametrize("method", METHODS)
def test_method_metadata(method: str) -> None:
    transform, aggregator, _ = registry.parse(method)
    for cls in (registry.TRANSFORMS[transform], registry.AGGREGATORS[aggregator]):
        assert cls.reference, f"{cls.__name__} has no reference"
        assert cls.__doc__ and len(cls.__doc__) > 40, f"{cls.__name__} needs a docstring"
