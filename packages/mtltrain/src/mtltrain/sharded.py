"""What the :class:`~mtltrain.trainer.Trainer` needs from a model whose part is sharded across
the ranks (TorchRec embedding tables: :class:`mtlrec.sharded_run.ShardedRun`).

A sharded part changes four things in the training loop (docs/distributed.md, "mtlbench and
the Trainer with sharded tables"):

* **the step**: the balancer's backwards stop at a frontier (``Balancer(tables=[frontier])``);
  after ``balancer.backward`` the trainer calls :meth:`ShardedModel.backward_sharded`, the ONE
  backward into the sharded part (where a fused optimizer updates it), before the optimizer
  step of the replicated parameters;
* **evaluation** runs on every rank: a sharded lookup is a collective every rank must join.
  Each rank forwards its slice of every evaluation batch and the predictions are gathered in
  rank order (:func:`gather_slices`), so every rank computes the same metrics;
* **checkpoints** are per rank (each rank's shards and their optimizer state):
  :meth:`ShardedModel.save` / :meth:`ShardedModel.load` replace ``last.pt`` and
  ``best_model.pt`` with the folders ``last/`` and ``best_model/``; the trainer's own
  bookkeeping goes into them as plain values;
* **the start**: only :meth:`ShardedModel.replicated_parameters` are broadcast from rank 0
  (each rank holds different shards).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["BEST_SHARDED", "LAST_SHARDED", "ShardedModel", "gather_slices"]

LAST_SHARDED = "last"
"""The folder (under ``checkpoint_dir``) of a sharded run's resume checkpoint."""
BEST_SHARDED = "best_model"
"""The folder (under ``checkpoint_dir``) of a sharded run's selected model."""


@runtime_checkable
class ShardedModel(Protocol):
    """A model with a part sharded across the ranks, as the trainer drives it."""

    def backward_sharded(self, skipped: bool) -> None:
        """After ``balancer.backward``: the one backward into the sharded part (every rank,
        the same step). ``skipped``: the balancer skipped the step (a non-finite gradient,
        the same decision on every rank): drop the waiting backward instead, nothing
        changes."""

    def replicated_parameters(self) -> list[Tensor]:
        """The parameters every rank holds whole (the dense optimizer's, broadcast from rank
        0 at the start)."""

    def has_checkpoint(self, directory: Path) -> bool:
        """A complete sharded checkpoint is in ``directory``."""

    def save(
        self,
        directory: Path,
        *,
        step: int,
        optimizer: Any,
        balancer: Any,
        extra: Mapping[str, Any],
    ) -> None:
        """Save every rank's shards, ``optimizer``'s and ``balancer``'s state and the plain
        values ``extra`` (a collective; a kill at any moment keeps the previous save)."""

    def load(self, directory: Path, *, optimizer: Any, balancer: Any) -> dict[str, Any]:
        """Restore what :meth:`save` wrote (a collective) and return its ``extra``."""


def gather_slices(local: Mapping[str, Tensor], total: int) -> dict[str, Tensor]:
    """The whole batch's tensors from every rank's slice (rank r holds rows
    ``[⌊r n/W⌋, ⌊(r+1) n/W⌋)``, :func:`mtltrain.distributed.split_batch`), in rank order, on
    every rank: one ``all_gather`` per tensor of ``⌈n/W⌉`` rows (the slices padded to it)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    bounds = [(r * total // world, (r + 1) * total // world) for r in range(world)]
    width = max(hi - lo for lo, hi in bounds)
    out: dict[str, Tensor] = {}
    for name, tensor in local.items():
        lo, hi = bounds[dist.get_rank()]
        if tensor.shape[0] != hi - lo:
            raise ValueError(
                f"gather_slices: {name!r} has {tensor.shape[0]} rows on this rank, its slice of "
                f"a batch of {total} has {hi - lo}"
            )
        padded = tensor.new_zeros((width, *tensor.shape[1:]))
        padded[: hi - lo] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        out[name] = torch.cat([p[: b - a] for p, (a, b) in zip(parts, bounds, strict=True)])
    return out
