"""One rank of the 2-process DMP test (tests/mtlrec/test_sharded.py), run as a script:

    python _dmp_worker.py RANK WORLD STORE CONFIG.json OUT.pt

(STORE: a path for the FileStore rendezvous, the same for every rank — no port to pick.)

Trains the test's model for the configured steps on this rank's rows of each global batch,
with the tables sharded by TorchRec's DistributedModelParallel (fused optimizer), and writes
the final dense parameters and the whole tables (rank 0) to OUT.pt. The single-process
reference is in the test module. Two paths (``config["path"]``):

* ``"balancer"`` (the way): each rank passes its LOCAL mean losses to a
  ``Balancer(tables=[model.table_frontier()], process_group="world")``, which averages what
  its method reads and scales the (per-rank) frontier's gradient by 1/W; every rank also
  writes OUT.pt.rank<r> (its dense and replicated parameters, balancer state, stats: the
  ranks must be bit-identical). ``config["nan_at"] = [rank, step]`` makes that rank's
  frontier gradient NaN on that step (with ``loss_scale``: the step is skipped everywhere).
* otherwise (the older one): ``global_mean_losses`` and DenseGradSync (loop engine).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sharded_common import build_model, global_batch, make_balancer, task_losses

from mtlrec.distributed import (
    DenseGradSync,
    full_tables,
    global_mean_losses,
    replicated_table_parameters,
    shard_model,
)


def main() -> None:
    rank, world, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    config = json.loads(Path(sys.argv[4]).read_text())
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model(config)
        dmp = shard_model(
            model,
            sharding=config["sharding"],
            optimizer=config["optimizer"],
            lr=config.get("table_lr", config["lr"]),
            optimizer_args=config.get("optimizer_args"),
        )
        dense = [*model.dense_shared_parameters()]
        towers = [p for m in model.task_parameters().values() for p in m.parameters()]
        replicated = replicated_table_parameters(model)
        through_balancer = config.get("path") == "balancer"
        sync = None if through_balancer else DenseGradSync([*dense, *towers])
        balancer = make_balancer(
            config,
            model,
            tables=[model.table_frontier()],
            process_group="world" if through_balancer else None,
        )
        stats = []
        opt = torch.optim.SGD([*dense, *towers], lr=config["lr"])
        table_lr = config.get("table_lr", config["lr"])
        opt_replicated = torch.optim.SGD(replicated, lr=table_lr) if replicated else None
        for step in range(config["steps"]):
            inputs, targets = global_batch(config, step)
            n = inputs.batch_size
            # rows per rank: an even split, or config["split"] (e.g. [6, 10]: unequal shares)
            sizes = config.get("split") or [n // world] * world
            lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
            rows = torch.arange(lo, hi)
            local_in = inputs.index(rows)
            local_y = {t: y[rows] for t, y in targets.items()}
            _, preds = dmp(local_in)
            losses = task_losses(config, preds, local_y)
            if not through_balancer:
                losses = global_mean_losses(losses, count=hi - lo)
            opt.zero_grad()
            if opt_replicated is not None:
                opt_replicated.zero_grad()
            hook = None
            if config.get("nan_at") == [rank, step]:
                hook = model.table_frontier().register_hook(lambda g: g * float("nan"))
            result = balancer.backward(losses, loss_scale=config.get("loss_scale"))
            if hook is not None:
                hook.remove()
            stats.append(result.to_dict())
            if result.skipped:
                model.skip_tables()
                continue
            model.backward_tables()
            opt.step()
            if opt_replicated is not None:
                opt_replicated.step()
        tables = full_tables(model)
        if sync is not None:
            sync.close()
        if through_balancer:
            mine = {
                "dense": [p.detach().clone() for p in [*dense, *towers]],
                "replicated": [p.detach().clone() for p in replicated],
                "balancer": balancer.state_dict(),
                "stats": stats,
                "bytes": balancer.communicated_bytes,
            }
            torch.save(mine, f"{sys.argv[5]}.rank{rank}")
        if rank == 0:
            out = {
                "dense": {
                    n: p.detach().clone()
                    for n, p in model.named_parameters()
                    if not n.startswith("embedding.")
                },
                "tables": tables,
                "replicated": len(replicated),
            }
            torch.save(out, sys.argv[5])
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    from mtltrain import distributed

    distributed.end_rank(0)  # skip the interpreter's finalisation (docs/distributed.md)
