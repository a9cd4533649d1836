"""Run many Balancer scenarios with the mtlbalance on PYTHONPATH and save every ``.grad``,
the stats and the final state, to compare two builds bit for bit (equivalence_compare.py).

    PYTHONPATH=<build>/packages/mtlbalance/src python equivalence_run.py OUT.pt METHOD,METHOD,...

Scenarios: each method x engine (loop, batched, representation, auto) x dtype (float64,
float32) x mode: plain, loss scale 2^6, approximate tables (an EmbeddingBag), gradient
accumulation (2 micro-batches), max_update_norm, loss scale + accumulation, tables +
accumulation, and an overflow (a loss x 1e30 under a scale of 2^100 at step 3: skipped).
Four SGD steps each, with after_step and epoch_end exercised; an error is recorded by its
message.
"""

from __future__ import annotations

import itertools
import sys
import warnings

import torch
from torch import nn

import mtlbalance

ENGINES = ["loop", "batched", "representation", "auto"]
DTYPES = [torch.float64, torch.float32]
MODES = ["plain", "scale", "tables", "accum", "clip", "scale_accum", "tables_accum", "overflow"]


def build(dtype: torch.dtype, tables: bool) -> tuple[nn.Module, nn.ModuleDict, nn.Module | None]:
    torch.manual_seed(0)
    width = 6 + (3 if tables else 0)
    encoder = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh()).to(dtype)
    heads = nn.ModuleDict(
        {
            f"t{i}": nn.Sequential(nn.Linear(width, 3), nn.Tanh(), nn.Linear(3, 1)).to(dtype)
            for i in range(3)
        }
    )
    table = nn.EmbeddingBag(20, 3, mode="sum").to(dtype) if tables else None
    return encoder, heads, table


def losses_of(encoder, heads, table, step: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 5, generator=gen, dtype=dtype)
    z = encoder(x)
    feats = z
    if table is not None:
        feats = torch.cat([z, table(torch.randint(0, 20, (8, 2), generator=gen))], 1)
    out = {}
    for i, (name, head) in enumerate(heads.items()):
        y = torch.randn(8, 1, generator=gen, dtype=dtype)
        out[name] = (0.1, 1.0, 10.0)[i] * ((head(feats) - y) ** 2).mean()
    return out, z


def dense(g: torch.Tensor) -> torch.Tensor:
    return g.to_dense() if g.is_sparse else g


def scenario(method: str, engine: str, dtype: torch.dtype, mode: str):
    tables = mode.startswith("tables")
    encoder, heads, table = build(dtype, tables)
    kwargs: dict = {"task": "t1"} if method == "stl" else {}
    if mode == "clip":
        kwargs["max_update_norm"] = 0.05
    if table is not None:
        kwargs["tables"] = [table.weight]
    torch.manual_seed(7)
    balancer = mtlbalance.make(method, encoder, dict(heads), engine=engine, **kwargs)
    params = [*encoder.parameters(), *heads.parameters(), *balancer.parameters()]
    params += [table.weight] if table is not None else []
    record = []
    for k in range(4):
        for p in params:
            p.grad = None
        if mode.endswith("accum"):
            scale = 2.0**6 if mode == "scale_accum" else None
            for m in range(2):
                losses, z = losses_of(encoder, heads, table, 10 * k + m, dtype)
                balancer.accumulate(losses, representation=z, loss_scale=scale)
            stats = balancer.backward_accumulated()
        else:
            losses, z = losses_of(encoder, heads, table, k, dtype)
            scale = 2.0**6 if mode in ("scale", "overflow") else None
            if mode == "overflow" and k == 2:
                losses = {t: v * (1e30 if t == "t0" else 1.0) for t, v in losses.items()}
                scale = 2.0**100
            stats = balancer.backward(losses, representation=z, loss_scale=scale)
        grads = [None if p.grad is None else dense(p.grad).clone() for p in params]
        record.append((grads, stats.to_dict(), stats.engine, stats.skipped))
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= 0.01 * dense(p.grad)
        balancer.after_step(losses_of(encoder, heads, table, k, dtype)[0])
        if k == 1:
            balancer.epoch_end()
    return record, balancer.state_dict()


def main() -> None:
    warnings.simplefilter("ignore")
    out, methods = sys.argv[1], sys.argv[2].split(",")
    results = {}
    for method, engine, dtype, mode in itertools.product(methods, ENGINES, DTYPES, MODES):
        key = f"{method}|{engine}|{dtype}|{mode}"
        try:
            results[key] = scenario(method, engine, dtype, mode)
        except Exception as err:
            results[key] = ("error", f"{type(err).__name__}: {err}")
    torch.save(results, out)
    errors = sum(1 for v in results.values() if v[0] == "error")
    print(f"{len(results)} scenarios, {errors} raised (recorded by message)")


if __name__ == "__main__":
    main()
