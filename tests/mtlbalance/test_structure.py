"""The package's public face and its structure (issue 11): every method class re-exported,
the Balancer free of the registry, no import cycle, no module over ~500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import Tensor

import mtlbalance
from mtlbalance import registry
from mtlbalance.aggregators import Sum
from mtlbalance.transforms import Identity, LossTransform

from .conftest import build_problem

SRC = Path(mtlbalance.__file__).resolve().parent
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in it (inside functions
    too: an import hidden in a function is still a dependency)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" for alias in node.names]
            if not any(t in MODULES for t in targets):  # names from a module, not modules
                targets = [prefix]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                out.add(target)
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def reachable(start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for nxt in GRAPH[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def test_the_import_graph_is_seen() -> None:
    """(The checks below are only as good as this graph: it sees relative imports, imports
    inside functions, and ``from . import module``.)"""
    assert "mtlbalance.registry" in GRAPH["mtlbalance"]
    assert "mtlbalance._step.pipeline" in GRAPH["mtlbalance.balancer"]
    assert "mtlbalance._step.check" in GRAPH["mtlbalance._step.pipeline"]
    assert "mtlbalance.balancer" in GRAPH["mtlbalance.registry"]


def test_no_import_cycle() -> None:
    cycles = sorted(name for name in MODULES if name in reachable(name))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_balancer_does_not_import_the_registry() -> None:
    """The factory (names, presets, ``make``) sits above the Balancer, which takes instances."""
    assert "mtlbalance.registry" not in reachable("mtlbalance.balancer")
    assert "mtlbalance.registry" not in reachable("mtlbalance._step.pipeline")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_500_lines(name: str) -> None:
    lines = len(MODULES[name].read_text("utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


@pytest.mark.parametrize(
    ("table", "package"),
    [(registry.AGGREGATORS, mtlbalance.aggregators), (registry.TRANSFORMS, mtlbalance.transforms)],
)
def test_every_method_class_is_re_exported(table, package) -> None:
    for name, cls in table.items():
        assert getattr(package, cls.__name__, None) is cls, f"{name}: {cls.__name__}"
        assert cls.__name__ in package.__all__


def test_the_balancer_takes_instances_and_names_the_factory() -> None:
    problem = build_problem(seed=0, num_tasks=2)
    with pytest.raises(TypeError, match=r"mtlbalance\.make\('log'"):
        mtlbalance.Balancer(problem.encoder, dict(problem.heads), transform="log")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Aggregator"):
        mtlbalance.Balancer(problem.encoder, dict(problem.heads), aggregator=3)  # type: ignore[arg-type]
    balancer = mtlbalance.Balancer(problem.encoder, dict(problem.heads))
    assert isinstance(balancer.transform, Identity) and isinstance(balancer.aggregator, Sum)


class Remembers(LossTransform):
    """A transform that reads the losses after the optimizer step."""

    def forward(self, losses: Tensor) -> Tensor:
        return losses

    def after_step(self, losses: Tensor) -> None:
        self.last = losses


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda p: mtlbalance.make("famo", p.encoder, dict(p.heads)), True),
        (lambda p: mtlbalance.make("dbmtl", p.encoder, dict(p.heads)), False),
        (lambda p: mtlbalance.make("uw", p.encoder, dict(p.heads)), False),
        (lambda p: mtlbalance.Balancer(p.encoder, dict(p.heads), transform=Remembers()), True),
    ],
)
def test_needs_after_step(build, expected: bool) -> None:
    """Public: whether a training loop must call ``after_step`` (FAMO does; the trainer no
    longer needs to compare the classes' methods itself)."""
    assert build(build_problem(seed=0, num_tasks=2)).needs_after_step is expected


def test_stats_flat_is_what_to_dict_copies() -> None:
    """One flattening rule: ``flat(prefix)`` gives the keys (prefixed) and the values on the
    device, in the order ``to_dict`` reports them."""
    problem = build_problem(seed=1, num_tasks=3)
    balancer = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), engine="loop")
    stats = balancer.backward(problem.losses(0)[0])
    keys, values = stats.flat("train/")
    assert isinstance(values, Tensor) and values.dtype == torch.float64 and values.dim() == 1
    plain = stats.to_dict()
    assert keys == tuple(f"train/{k}" for k in plain)
    assert values.tolist() == list(plain.values())
    names = problem.tasks
    assert keys[:3] == tuple(f"train/loss/{t}" for t in names)
    assert keys[-1] == "train/update_norm"
    assert [k.split("/")[1] for k in keys[:-1]] == ["loss"] * 3 + ["transformed"] * 3 + [
        "grad_norm"
    ] * 3 + ["weight"] * 3
    torch.testing.assert_close(values[9:12], stats.weights.double())


def test_stats_flat_with_table_factors_and_without_grad_norms() -> None:
    stats = mtlbalance.BalanceStats(
        task_names=("a", "b"),
        losses=torch.tensor([1.0, 2.0]),
        transformed=torch.tensor([0.0, 0.5]),
        grad_norms=None,
        weights=None,
        update_norm=torch.tensor(3.0),
        engine=None,
        table_factors=torch.tensor([0.25, 4.0]),
    )
    keys, values = stats.flat()
    assert keys == (
        "loss/a",
        "loss/b",
        "transformed/a",
        "transformed/b",
        "table_factor/a",
        "table_factor/b",
        "update_norm",
    )
    assert values.tolist() == [1.0, 2.0, 0.0, 0.5, 0.25, 4.0, 3.0]
