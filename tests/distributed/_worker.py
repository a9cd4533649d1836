"""One rank of the data-parallel tests (started by the tests as a real process).

    python _worker.py OUT_DIR METHODS MODE STEPS [KILL_RANK KILL_STEP]

METHODS: comma-separated method names, trained one after the other in the same job; a
suffix ``@tables`` / ``@sparse`` adds an embedding table balanced with ``tables=``; a suffix
``@frontier`` reads the table through a per-rank leaf (``mtlbalance.per_rank``: the pooled
rows of this rank's samples, as mtlrec's table frontier) given as ``tables=``, whose gradient
is then back-propagated into the table by hand and summed across ranks (what TorchRec's
sharded lookup does); ``@frontierclip`` adds ``max_update_norm``; ``@frontiernan`` makes
rank 1's frontier gradient NaN on step 1 (a loss scale of 1: the step must be skipped on
every rank); a suffix ``~MODE`` builds the method with ``mode=MODE`` (a fast mode of a Gram
weighting). The probe
mode (``dbmtl_probe``) probes the encoder's bias only, a strict subset of the shared
parameters.

MODE: ``plain`` (torch.distributed, no DDP), ``ddp`` (the model wrapped in
DistributedDataParallel, its forward under ``no_sync()``), ``ddp_sync`` (the same without
``no_sync()``), ``accumulate`` (two micro-batches
per step), ``single`` (one process, no torch.distributed: the reference on the global batch).
Every step draws a fixed global batch of 8 samples; rank r of W takes its contiguous shard.
Writes OUT_DIR/<method>-rank<r>.pt: the parameters after every step, the balancer's state, the
stats and the bytes the balancer communicated.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

import mtlbalance
from mtltrain import distributed

GLOBAL_BATCH = 8
SCALES = (1.0, 10.0, 0.01)  # losses three orders of magnitude apart
TASKS = ("a", "b", "c")


class Net(nn.Module):
    """Encoder and three heads; ``variant`` "tables" / "sparse" adds an embedding table
    (dense / sparse gradients) read with ids derived from the inputs, balanced with
    ``tables=`` (one backward of Σ c_t ℓ̃_t)."""

    def __init__(self, variant: str = "") -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 2, sparse=variant == "sparse") if variant else None
        self.encoder = nn.Sequential(nn.Linear(4 + (2 if variant else 0), 6), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})
        # the split backward at the lookup output (mtlrec's table frontier, by hand)
        self.frontier: torch.Tensor | None = None
        self.pending: torch.Tensor | None = None
        if variant.startswith("frontier"):
            self.frontier = mtlbalance.per_rank(torch.zeros(0, 2, requires_grad=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.emb is not None:
            ids = (x[:, 0].abs() * 3).long() % 10
            looked = self.emb(ids)
            if self.frontier is not None and torch.is_grad_enabled():
                self.pending = looked
                self.frontier.data = looked.detach()
                self.frontier.grad = None
                looked = self.frontier
            x = torch.cat([x, looked], dim=1)
        z = self.encoder(x)
        return z, {t: h(z).squeeze(-1) for t, h in self.heads.items()}


def batch(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 4, generator=g)
    ys = {t: torch.randn(GLOBAL_BATCH, generator=g) * (1 + i) for i, t in enumerate(TASKS)}
    return x, ys


def losses_of(net: nn.Module, x: torch.Tensor, ys: dict[str, torch.Tensor]) -> tuple:
    z, preds = net(x)
    return z, {
        t: s * torch.nn.functional.mse_loss(preds[t], ys[t])
        for t, s in zip(TASKS, SCALES, strict=True)
    }


def main(argv: list[str]) -> None:
    out, methods, mode, steps = Path(argv[0]), argv[1].split(","), argv[2], int(argv[3])
    kill = (int(argv[4]), int(argv[5])) if len(argv) > 5 else (-1, -1)
    job = None if mode == "single" else distributed.init_from_env("cpu", timeout_s=30)
    with distributed.fail_cleanly():
        for method in methods:
            train(out, method, mode, steps, kill, job)
    if job is not None:
        distributed.end_rank(0)  # leave the job, skip the finalisation (docs/distributed.md)


def train(
    out: Path,
    method: str,
    mode: str,
    steps: int,
    kill: tuple[int, int],
    job: distributed.DistEnv | None,
) -> None:
    rank, world = (0, 1) if job is None else (job.rank, job.world_size)
    name, _, variant = method.partition("@")
    name, _, mode_name = name.partition("~")
    torch.manual_seed(0)
    net = Net(variant)
    model: nn.Module = net
    if mode.startswith("ddp"):
        model = nn.parallel.DistributedDataParallel(net)
    balancer = mtlbalance.make(
        name,
        net.encoder,
        {t: net.heads[t] for t in TASKS},
        engine="loop",
        process_group=None if job is None else "world",
        tables=None if net.emb is None else [_table(net)],
        max_update_norm=0.05 if variant == "frontierclip" else None,
        **_mode_options(name, mode_name, net),
    )
    optimizer = torch.optim.SGD([*net.parameters(), *balancer.parameters()], lr=0.01)
    torch.manual_seed(123 + rank)  # the draws of randomised methods must come from rank 0
    params, stats, comm, frontier = [], [], [], []
    lo, hi = rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world
    for step in range(steps):
        if (rank, step) == kill:
            os.kill(os.getpid(), signal.SIGKILL)
        x, ys = batch(step)
        x, ys = x[lo:hi], {t: y[lo:hi] for t, y in ys.items()}
        optimizer.zero_grad(set_to_none=True)
        if mode == "accumulate":
            half = (hi - lo) // 2
            for part in (slice(0, half), slice(half, hi - lo)):
                _, losses = losses_of(model, x[part], {t: y[part] for t, y in ys.items()})
                balancer.accumulate(losses)
            result = balancer.backward_accumulated()
        elif mode == "ddp":
            with model.no_sync():  # type: ignore[operator]
                z, losses = losses_of(model, x, ys)
            result = balancer.backward(losses, representation=z)
        elif mode == "ddp_sync":  # the forward outside no_sync(): DDP's hooks stay armed
            z, losses = losses_of(model, x, ys)
            result = balancer.backward(losses, representation=z)
        elif net.frontier is not None:
            z, losses = losses_of(model, x, ys)
            nan = variant == "frontiernan" and (rank, step) == (1, 1)
            hook = net.frontier.register_hook(lambda g: g * float("nan")) if nan else None
            scale = 1.0 if variant == "frontiernan" else None
            result = balancer.backward(losses, representation=z, loss_scale=scale)
            if hook is not None:
                hook.remove()
            frontier.append(None if net.frontier.grad is None else net.frontier.grad.clone())
            _backward_tables(net, job, skip=result.skipped)
        else:
            z, losses = losses_of(model, x, ys)
            result = balancer.backward(losses, representation=z)
        if not result.skipped:
            optimizer.step()
        if balancer.needs_after_step:
            with torch.no_grad():
                balancer.after_step(losses_of(model, x, ys)[1])
        balancer.epoch_end()
        params.append([p.detach().clone() for p in net.parameters()])  # (tables included)
        stats.append(result.to_dict())
        comm.append(balancer.communicated_bytes)
    torch.save(
        {
            "params": params,
            "balancer": balancer.state_dict(),
            "stats": stats,
            "bytes": comm,
            "frontier": frontier,
        },
        out / f"{method}-rank{rank}.pt",
    )


def _table(net: Net) -> torch.Tensor:
    assert net.emb is not None
    return net.emb.weight if net.frontier is None else net.frontier


def _backward_tables(net: Net, job: distributed.DistEnv | None, *, skip: bool) -> None:
    """The one backward from the frontier into the table, then the shares summed across
    ranks (each rank's frontier gradient is its share of the global one)."""
    pending, net.pending = net.pending, None
    assert pending is not None and net.frontier is not None and net.emb is not None
    if skip:
        return
    assert net.frontier.grad is not None
    pending.backward(net.frontier.grad)
    if job is not None:
        import torch.distributed as dist

        assert net.emb.weight.grad is not None
        dist.all_reduce(net.emb.weight.grad)


def _mode_options(name: str, mode_name: str, net: Net) -> dict:
    if mode_name:
        return {"mode": mode_name}
    if name == "dbmtl_probe":
        return {"probe": [net.encoder[0].bias]}
    return {}


if __name__ == "__main__":
    main(sys.argv[1:])
