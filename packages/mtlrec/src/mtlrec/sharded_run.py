"""A model with sharded TorchRec tables, as :class:`mtltrain.trainer.Trainer` drives it
(``Trainer(..., sharded=ShardedRun(...))``; :class:`mtltrain.sharded.ShardedModel`).

``mtlbench run SPEC --nproc N`` with ``[model] tables = "sharded"`` builds one per run
(:func:`shard_run`): the tables are sharded across the N ranks by TorchRec's planner (or the
spec's ``sharding``) and updated by a fused optimizer inside their one backward per step; the
dense layers are replicated and balanced by a data-parallel Balancer
(``tables=[model.table_frontier()]``, ``process_group="world"``). See docs/distributed.md,
"mtlbench and the Trainer with sharded tables".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import replicated_table_parameters, shard_model
from .models.base import MultiTaskRecModel
from .sharded_checkpoint import has_sharded_checkpoint, load_sharded, save_sharded

__all__ = ["ShardedRun", "shard_run"]

_DENSE = "dense"  # the dense optimizer's name in the checkpoint


class ShardedRun:
    """``model`` (sharded in place by :func:`mtlrec.distributed.shard_model`) and its
    ``DistributedModelParallel`` ``dmp``, as the trainer's sharded part."""

    def __init__(self, model: MultiTaskRecModel, dmp: nn.Module) -> None:
        if getattr(dmp, "fused_optimizer", None) is None:
            raise TypeError(
                f"ShardedRun needs the DistributedModelParallel that shard_model returned, not "
                f"a {type(dmp).__name__}"
            )
        self.model = model
        self.dmp = dmp

    def backward_sharded(self, skipped: bool) -> None:
        """The tables' one backward (``model.backward_tables()``: the lookup's all-to-all and
        the fused update); after a step the balancer skipped, the waiting lookup is dropped
        instead (the tables do not change)."""
        if skipped:
            self.model.skip_tables()
        else:
            self.model.backward_tables()

    def replicated_parameters(self) -> list[Tensor]:
        """The dense shared layers, the towers and the data-parallel (replicated) tables:
        what the dense optimizer steps (the sharded tables step inside their backward)."""
        towers = [p for m in self.model.task_parameters().values() for p in m.parameters()]
        params = [
            *self.model.dense_shared_parameters(),
            *towers,
            *replicated_table_parameters(self.model),
        ]
        return [p for p in params if p.requires_grad]

    def has_checkpoint(self, directory: Path) -> bool:
        return has_sharded_checkpoint(directory)

    def save(
        self,
        directory: Path,
        *,
        step: int,
        optimizer: Any,
        balancer: Any,
        extra: Mapping[str, Any],
    ) -> None:
        save_sharded(
            directory,
            self.dmp,
            step=step,
            optimizers=None if optimizer is None else {_DENSE: optimizer},
            balancer=balancer,
            extra=extra,
        )

    def load(self, directory: Path, *, optimizer: Any, balancer: Any) -> dict[str, Any]:
        """Restore the checkpoint in ``directory``; one saved with another number of
        processes or another plan is resharded onto this run's (``load_sharded(...,
        reshard=True)``: the tables, their fused state and the replicated state as saved;
        refused, on every rank, when it cannot be, e.g. a data-parallel table that moved in
        or out of the dense optimizer)."""
        resumed = load_sharded(
            directory,
            self.dmp,
            optimizers=None if optimizer is None else {_DENSE: optimizer},
            balancer=balancer,
            reshard=True,
        )
        return resumed.extra


def shard_run(
    model: MultiTaskRecModel,
    *,
    sharding: Mapping[str, str] | None = None,
    optimizer: str = "exact_adagrad",
    lr: float = 0.01,
    optimizer_args: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> ShardedRun:
    """Shard ``model``'s tables across the ranks of the job (:func:`shard_model`: a
    collective, every rank) and return the trainer's :class:`ShardedRun`. The layers other
    than the tables are moved to ``device`` first (tables built on the meta device,
    :func:`mtlrec.models.meta_tables`, cannot be moved: DMP allocates their shards)."""
    if device is not None:
        for child in model.children():
            if child is not model.embedding:
                child.to(device)
    dmp = shard_model(
        model,
        sharding=sharding,
        optimizer=optimizer,
        lr=lr,
        optimizer_args=optimizer_args,
        device=device,
    )
    return ShardedRun(model, dmp)
