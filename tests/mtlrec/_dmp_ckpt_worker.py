"""One rank of the sharded checkpoint test (tests/mtlrec/test_sharded_checkpoint.py), run
under ``mtltrain.distributed.launch`` (RANK, WORLD_SIZE, MASTER_* from the environment):

    python _dmp_ckpt_worker.py CONFIG.json OUT.pt

Trains the sharded test model (tests/mtlrec/_sharded_common.py: TorchRec DMP, fused table
optimizer, DenseGradSync, global_mean_losses, the split backward) for ``steps`` steps,
saving a sharded checkpoint into ``ckpt`` every ``save_every`` steps; with ``resume`` it
first loads the checkpoint there, if any (with ``reshard``: ``load_sharded(...,
reshard=True)``, a checkpoint of another world size or plan; tests/mtlrec/test_reshard.py).
Each rank adds noise from its own torch RNG stream (seeded per rank) to its dwell targets, so
a resumed run continues identically only if every rank's RNG state is restored — its own.

``kill``: ``{"rank": r, "after_step": s}`` SIGKILLs rank r after step s (after its save, if
one falls there); ``{"rank": 0, "before_manifest": s}`` SIGKILLs rank 0 inside the save of
step s, when every rank's file of that save is written but the manifest is not.
Rank 0 writes OUT.pt with the final state.

The building blocks (:func:`build`, :func:`train_step`, :func:`snapshot`) are also used in
one process by the test itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sharded_common import build_model, global_batch, make_balancer, task_losses

import mtlrec.sharded_checkpoint as sc
from mtlrec.distributed import (
    DenseGradSync,
    full_tables,
    global_mean_losses,
    replicated_table_parameters,
    shard_model,
)


@dataclass
class Run:
    model: Any
    dmp: Any
    sync: DenseGradSync
    balancer: Any
    optimizers: dict[str, torch.optim.Optimizer]


def explicit_plan(model: Any, placement: dict[str, list[Any]]) -> Any:
    """A plan written out with TorchRec's helpers instead of the planner: feature ->
    ``["column_wise", [0, 1]]`` (the columns split over ranks 0 and 1), ``["table_wise", r]``
    or ``["data_parallel"]``."""
    from torchrec.distributed.sharding_plan import (
        column_wise,
        construct_module_sharding_plan,
        data_parallel,
        table_wise,
    )
    from torchrec.distributed.types import ShardingPlan

    kinds = {
        "column_wise": lambda ranks: column_wise(ranks=ranks, compute_kernel="fused"),
        "table_wise": lambda rank: table_wise(rank=rank, compute_kernel="fused"),
        "data_parallel": lambda: data_parallel(),
    }
    per_table = {f"t_{f}": kinds[kind](*args) for f, (kind, *args) in placement.items()}
    module_plan = construct_module_sharding_plan(
        model.embedding.ebc,
        per_table,
        world_size=dist.get_world_size(),
        local_size=dist.get_world_size(),
        device_type="cpu",
    )
    return ShardingPlan({"embedding.ebc": module_plan})


def build(config: dict[str, Any], plan: Any = None) -> Run:
    """The model (seed 0 on every rank), sharded (by ``plan``, ``config["plan"]`` written out
    with :func:`explicit_plan`, or the planner under ``config["sharding"]``); the dense
    optimizers, the balancer; then this rank's own RNG stream (seed 100 + rank) for the
    target noise."""
    torch.manual_seed(0)
    model = build_model(config)
    if plan is None and config.get("plan"):
        plan = explicit_plan(model, config["plan"])
    dmp = shard_model(
        model,
        sharding=None if plan is not None else config["sharding"],
        plan=plan,
        optimizer=config["optimizer"],
        lr=config["table_lr"],
        optimizer_args=config.get("optimizer_args"),
    )
    dense = [*model.dense_shared_parameters()]
    towers = [p for m in model.task_parameters().values() for p in m.parameters()]
    sync = DenseGradSync([*dense, *towers])
    balancer = make_balancer(config, model, tables=[model.table_frontier()])
    # Adam: its state (moments, step) must come back too
    optimizers: dict[str, torch.optim.Optimizer] = {
        "dense": torch.optim.Adam([*dense, *towers], lr=config["lr"])
    }
    replicated = replicated_table_parameters(model)
    if replicated:
        optimizers["replicated"] = torch.optim.SGD(replicated, lr=config["table_lr"])
    torch.manual_seed(100 + dist.get_rank())
    return Run(model, dmp, sync, balancer, optimizers)


def train_step(run: Run, config: dict[str, Any], step: int) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    inputs, targets = global_batch(config, step)
    n = inputs.batch_size
    lo, hi = rank * n // world, (rank + 1) * n // world
    rows = torch.arange(lo, hi)
    local_y = {t: y[rows] for t, y in targets.items()}
    local_y["dwell"] = local_y["dwell"] + torch.randn(hi - lo)  # this rank's RNG stream
    _, preds = run.dmp(inputs.index(rows))
    losses = global_mean_losses(task_losses(config, preds, local_y), count=hi - lo)
    for o in run.optimizers.values():
        o.zero_grad()
    run.balancer.backward(losses)
    run.model.backward_tables()
    for o in run.optimizers.values():
        o.step()


@torch.no_grad()
def _full_fused_state(run: Run) -> dict[str, torch.Tensor]:
    """The fused optimizer's state tensors, whole (this rank's shards written into zeros,
    then summed across ranks, as full_tables does for the tables): ``"<key>/<name>"`` ->
    tensor. A rank holds state only for the tables it has shards of."""
    mine = {}
    for key, named in run.dmp.fused_optimizer.state_dict()["state"].items():
        for name, value in named.items():
            whole = torch.zeros(value.size())
            for s in value.local_shards():
                offsets, sizes = s.metadata.shard_offsets, s.metadata.shard_sizes
                whole[tuple(slice(o, o + n) for o, n in zip(offsets, sizes, strict=True))] = (
                    s.tensor.float()
                )
            mine[f"{key}/{name}"] = whole
    shapes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shapes, {k: list(v.shape) for k, v in mine.items()})
    every = {k: shape for ranks in shapes for k, shape in ranks.items()}
    out = {}
    for k in sorted(every):  # the same all-reduces, in the same order, on every rank
        whole = mine.get(k, torch.zeros(every[k]))
        dist.all_reduce(whole)
        out[k] = whole
    return out


def snapshot(run: Run) -> dict[str, Any]:
    """Everything the run's continuation depends on, whole (a collective): the tables, the
    fused optimizer's state, the dense parameters, the dense optimizers' and the balancer's
    states, every rank's torch RNG state."""
    rngs: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(rngs, torch.get_rng_state())
    return {
        "tables": full_tables(run.model),
        "fused": _full_fused_state(run),
        "dense": {
            n: p.detach().clone()
            for n, p in run.model.named_parameters()
            if not n.startswith("embedding.")
        },
        "optimizers": {n: o.state_dict() for n, o in run.optimizers.items()},
        "balancer": run.balancer.state_dict(),
        "rng": rngs,
    }


def main(argv: list[str]) -> None:
    from mtltrain import distributed

    config = json.loads(Path(argv[0]).read_text())
    job = distributed.init_from_env("cpu", timeout_s=30)
    assert job is not None
    rank = job.rank
    ckpt = Path(config["ckpt"])
    kill = config.get("kill") or {}
    mine = kill.get("rank") == rank

    if mine and "before_manifest" in kill:
        real_save = sc.atomic_save

        def dying_save(obj: Any, path: Any) -> Any:
            if Path(path).name == sc.MANIFEST and obj["step"] == kill["before_manifest"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, path)

        sc.atomic_save = dying_save  # type: ignore[assignment]

    run = build(config)
    first = 0
    at_resume = None
    if config.get("resume") and sc.has_sharded_checkpoint(ckpt):
        resumed = sc.load_sharded(
            ckpt,
            run.dmp,
            optimizers=run.optimizers,
            balancer=run.balancer,
            reshard=bool(config.get("reshard")),
        )
        assert resumed.extra == {"next_step": resumed.step}, resumed.extra
        first = resumed.step
        at_resume = snapshot(run)["tables"]
    for step in range(first, config["steps"]):
        train_step(run, config, step)
        done = step + 1
        if done % config["save_every"] == 0:
            sc.save_sharded(
                ckpt,
                run.dmp,
                step=done,
                optimizers=run.optimizers,
                balancer=run.balancer,
                extra={"next_step": done},
            )
        if mine and kill.get("after_step") == done:
            os.kill(os.getpid(), signal.SIGKILL)
    state = snapshot(run)
    run.sync.close()
    if rank == 0:
        torch.save({**state, "first_step": first, "tables_at_resume": at_resume}, argv[1])
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1:])
    # leave the job, skip the interpreter's finalisation (where CI saw finished ranks abort)
    from mtltrain import distributed

    distributed.end_rank(0)
