"""Small multi-task problems shared by the mtlbalance tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn


@dataclass
class Problem:
    """A hard-parameter-sharing model: ``z = encoder(x)``, ``loss_t = scale_t * mse(head_t(z))``."""

    encoder: nn.Module
    heads: nn.ModuleDict
    scales: list[float]
    seed: int
    in_dim: int
    batch: int = 12

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def batch_at(self, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1000 + step)
        dtype = next(self.encoder.parameters()).dtype
        x = torch.randn(self.batch, self.in_dim, generator=g, dtype=dtype)
        ys = {t: torch.randn(self.batch, 1, generator=g, dtype=dtype) for t in self.tasks}
        return x, ys

    def losses(self, step: int) -> tuple[dict[str, Tensor], Tensor]:
        x, ys = self.batch_at(step)
        z = self.encoder(x)
        out = {
            t: s * ((self.heads[t](z) - ys[t]) ** 2).mean()
            for t, s in zip(self.tasks, self.scales, strict=True)
        }
        return out, z

    def all_params(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.heads.parameters()]

    def zero_grad(self) -> None:
        for p in self.all_params():
            p.grad = None


def build_problem(
    seed: int = 0,
    num_tasks: int = 3,
    dtype: torch.dtype = torch.float64,
    in_dim: int = 5,
    width: int = 7,
    rep_dim: int = 6,
    scales: list[float] | None = None,
) -> Problem:
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Linear(in_dim, width), nn.Tanh(), nn.Linear(width, rep_dim), nn.Tanh()
    ).to(dtype)
    heads = nn.ModuleDict(
        {
            f"t{i}": nn.Sequential(nn.Linear(rep_dim, 4), nn.Tanh(), nn.Linear(4, 1))
            for i in range(num_tasks)
        }
    ).to(dtype)
    if scales is None:
        scales = [10.0 ** (i - 1) for i in range(num_tasks)]  # losses of very different scales
    return Problem(encoder, heads, scales, seed, in_dim)


@pytest.fixture
def make_problem() -> Callable[..., Problem]:
    return build_problem
