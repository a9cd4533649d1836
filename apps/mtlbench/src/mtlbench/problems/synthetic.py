"""A generated three-task problem with losses of very different scales (no download).

Inputs ``x ~ N(0, I_16)``; a random teacher gives shared features ``h = tanh(x W)`` and three
targets read out of them: ``click`` (binary; BCE, ~0.6), ``rating`` (a unit-scale regression;
MSE, ~0.5) and ``price`` (a regression in the hundreds; MSE, ~10⁴). Under equal weighting
the price loss dominates the shared gradient — the case loss balancing exists for.

The problem of the README's demo (`nox -s demo`: spec `synthetic-hetero`); the one demo problem
of the repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from mtltrain.data import TensorLoader
from mtltrain.metrics import Collect, MeanError
from mtltrain.problem import Problem
from mtltrain.task import Task

__all__ = ["SharedBottom", "build"]

TASKS = ("click", "rating", "price")
_DATA_DEFAULTS = {"n_train": 8192, "n_val": 2048, "n_test": 4096, "features": 16, "seed": 0}
_MODEL_DEFAULTS = {"hidden": 64, "layers": 2}


class SharedBottom(nn.Module):
    """An MLP encoder shared by all tasks and one linear head per task."""

    def __init__(self, features: int, hidden: int, layers: int, tasks: tuple[str, ...]) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.encoder = nn.Sequential(*blocks)
        self.heads = nn.ModuleDict({t: nn.Linear(width, 1) for t in tasks})

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.encoder(x)
        return z, {t: head(z).squeeze(-1) for t, head in self.heads.items()}

    def shared_parameters(self) -> nn.Module:
        return self.encoder

    def task_parameters(self) -> dict[str, nn.Module]:
        return dict(self.heads.items())


def _generate(
    n: int, teacher: Tensor, features: int, gen: torch.Generator
) -> tuple[Tensor, dict[str, Tensor]]:
    x = torch.randn(n, features, generator=gen)
    h = torch.tanh(x @ teacher[:features])
    a, b, c = teacher[features], teacher[features + 1], teacher[features + 2]
    click = torch.bernoulli(torch.sigmoid(2 * (h @ a)), generator=gen)
    rating = torch.sin(h @ b) + 0.1 * torch.randn(n, generator=gen)
    price = 100 * (h @ c) + 10 * torch.randn(n, generator=gen)
    return x, {"click": click, "rating": rating, "price": price}


def _options(given: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"synthetic problem: unknown [{what}] options {unknown}; known: {sorted(defaults)}"
        )
    out = {**defaults, **given}
    for key, value in out.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < (0 if key == "seed" else 1)
        ):
            raise ValueError(
                f"synthetic problem: {what}.{key} must be a positive integer, not {value!r}"
            )
    return out


def build(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """The problem for a spec's ``[data]`` (n_train, n_val, n_test, features, seed) and
    ``[model]`` (hidden, layers) options."""
    d = _options(data, _DATA_DEFAULTS, "data")
    m = _options(model, _MODEL_DEFAULTS, "model")
    gen = torch.Generator().manual_seed(d["seed"])
    features = d["features"]
    teacher = torch.randn(features + 3, features, generator=gen) / 2
    splits = {s: _generate(d[f"n_{s}"], teacher, features, gen) for s in ("train", "val", "test")}
    tasks = [
        Task("click", nn.functional.binary_cross_entropy_with_logits,
             {"auc": Collect(roc_auc_score, higher_is_better=True, prob=torch.sigmoid)}),
        Task("rating", nn.functional.mse_loss, {"mae": MeanError("mae")}),
        Task("price", nn.functional.mse_loss, {"mae": MeanError("mae")}),
    ]  # fmt: skip

    def loader(
        split: tuple[Tensor, dict[str, Tensor]], batch_size: int, shuffle: bool
    ) -> TensorLoader:
        return TensorLoader(split[0], split[1], batch_size, shuffle=shuffle)

    return Problem(
        tasks=tasks,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        make_model=lambda: SharedBottom(features, m["hidden"], m["layers"], TASKS),
        loader=loader,
        info={
            "n_train": d["n_train"],
            "n_val": d["n_val"],
            "n_test": d["n_test"],
            "data_seed": d["seed"],
        },
    )
