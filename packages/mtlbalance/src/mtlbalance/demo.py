"""A short DB-MTL vs EW demo on a small built-in problem (the README's main job).

Three tasks share an MLP encoder over the same inputs, with losses of very different scales:
``click`` (binary cross-entropy, ~0.7), ``rating`` (MSE of a unit-scale target, ~1) and
``price`` (MSE of a target in the hundreds, ~10⁴). Under equal weighting (EW) the price loss
dominates the shared gradient; DB-MTL balances the scales (log) and the gradient magnitudes
(max-norm). Each method trains from the same initialisation on the same data; the table shows
the held-out loss of every task, and each task's loss relative to its single-task model.

    python -m mtlbalance.demo [--steps 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

import mtlbalance

TASKS = ("click", "rating", "price")


def make_data(n: int, teacher: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """A random teacher: shared features h = tanh(x W), each target a different read-out."""
    x = torch.randn(n, 16, generator=gen)
    h = torch.tanh(x @ teacher[:16])
    a, b, c = teacher[16], teacher[17], teacher[18]
    click_logit = 2 * (h @ a)
    rating = torch.sin(h @ b) + 0.1 * torch.randn(n, generator=gen)
    price = 100 * (h @ c) + 10 * torch.randn(n, generator=gen)
    labels = torch.bernoulli(torch.sigmoid(click_logit), generator=gen)
    return x, {"click": labels, "rating": rating, "price": price}


class Model(nn.Module):
    def __init__(self, tasks: tuple[str, ...]):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Linear(64, 1) for t in tasks})

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.encoder(x)
        return z, {t: head(z).squeeze(1) for t, head in self.heads.items()}


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "click": nn.functional.binary_cross_entropy_with_logits,
    "rating": nn.functional.mse_loss,
    "price": nn.functional.mse_loss,
}


Split = tuple[Tensor, dict[str, Tensor]]


def train(
    method: str, tasks: tuple[str, ...], data: tuple[Split, Split], steps: int, seed: int
) -> dict[str, float]:
    (x, ys), (x_test, ys_test) = data
    torch.manual_seed(seed)
    model = Model(tasks)
    balancer = mtlbalance.make(method, model.encoder, dict(model.heads.items()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen)
        z, out = model(x[idx])
        losses = {t: LOSSES[t](out[t], ys[t][idx]) for t in tasks}
        opt.zero_grad(set_to_none=True)
        balancer.backward(losses, representation=z)
        opt.step()
    with torch.no_grad():
        _, out = model(x_test)
        return {t: float(LOSSES[t](out[t], ys_test[t])) for t in tasks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    gen = torch.Generator().manual_seed(args.seed)
    teacher = torch.randn(19, 16, generator=gen) / 2
    data = (make_data(8192, teacher, gen), make_data(4096, teacher, gen))
    start = time.perf_counter()
    results: dict[str, dict[str, float]] = {"stl": {}}
    for t in TASKS:  # single-task reference: one model per task, same budget
        results["stl"].update(train("ew", (t,), data, args.steps, args.seed))
    for method in ("ew", "dbmtl"):
        results[method] = train(method, TASKS, data, args.steps, args.seed)
    print(f"held-out loss per task after {args.steps} steps (lower is better)")
    print(f"{'method':<8}" + "".join(f"{t:>12}" for t in TASKS) + "   mean loss / STL")
    for method, losses in results.items():
        rel = sum(losses[t] / results["stl"][t] for t in TASKS) / len(TASKS)
        row = "".join(f"{losses[t]:>12.4g}" for t in TASKS)
        print(f"{method:<8}{row}   {rel:>8.3f}")
    print(f"({time.perf_counter() - start:.1f} s on CPU)")


if __name__ == "__main__":
    main()
