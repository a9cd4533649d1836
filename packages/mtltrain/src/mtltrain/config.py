"""How to train: :class:`TrainerConfig`, plain data (no torch import), validated once here.

``mtlbench`` builds it from a spec's ``[train]`` table, so a bad value gets this message
whether it comes from Python or from a spec file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DATA_PARALLEL", "PRECISIONS", "SELECTIONS", "TrainerConfig"]

PRECISIONS = ("fp32", "bf16", "fp16")
SELECTIONS = ("val_delta_p", "last")
DATA_PARALLEL = ("split_batch", "sharded_loader")


@dataclass(frozen=True)
class TrainerConfig:
    """How to train.

    Attributes:
        epochs: passes over the training loader.
        accumulate: micro-batches per optimizer step. The balancer balances the accumulated
            per-task gradients once per step (``Balancer.accumulate``): ∇log Σℓ_m ≠ Σ∇log ℓ_m.
        precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast with a dynamic loss
            scale the balancer applies to every task's backward and removes in fp32 before
            balancing; nothing is unscaled twice, ε and norms stay fp32).
        selection: ``"val_delta_p"`` — keep the epoch with the best validation Δp against the
            STL reference (or, without one, the run's first-epoch validation metrics, as LibMTL
            does; :attr:`FitResult.selection` says which) — or ``"last"``.
        early_stopping: stop after this many evaluations without a better validation Δp.
        scheduler_interval: call ``scheduler.step()`` every ``"epoch"`` or every optimizer
            ``"step"``. ``ReduceLROnPlateau`` is always stepped once per epoch with the
            validation Δp (create it with ``mode="max"``).
        log_every: per-step values reach the host once per this many steps (tracker).
        checkpoint_dir: where ``last.pt`` (everything needed to resume) and ``best_model.pt``
            go; None: no checkpoints.
        checkpoint_every: also checkpoint every this many optimizer steps (mid-epoch); the
            end of every epoch always checkpoints when ``checkpoint_dir`` is set.
        seed: seeds Python, NumPy and torch at the start of :meth:`Trainer.fit` (data order,
            dropout). Seed the model's initialisation yourself (:func:`seed_everything`).
        deterministic: ``torch.use_deterministic_algorithms(True)`` for the run.
        progress: progress bars (tqdm: batches done of the epoch, ETA, each task's running
            training loss) and one summary line per epoch; None: when stderr is a terminal.
        progress_label: shown in front of the bars (``mtlbench``: "run 3 of 12, dbmtl seed 1").
        init_scale, growth_interval: fp16 dynamic loss scale: start value, and how many
            finite steps in a row double it (an overflow halves it and skips the step).
        data_parallel: under torch.distributed (docs/distributed.md), where each rank's
            shard of the global batch comes from: ``"split_batch"`` — every rank reads the
            same batches and trains on its contiguous slice of each (a W-process run equals
            the one-process run on the same batches; a slice's losses are weighted
            ``W n_r / n`` so uneven slices still average to the global mean);
            ``"sharded_loader"`` — the training loader already yields this rank's batches
            (``mtltrain.distributed.shard_loader``, a streaming reader); equal batch sizes
            on every rank are the caller's business.
    """

    epochs: int
    accumulate: int = 1
    precision: str = "fp32"
    selection: str = "val_delta_p"
    early_stopping: int | None = None
    scheduler_interval: str = "epoch"
    log_every: int = 50
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    seed: int = 0
    deterministic: bool = False
    progress: bool | None = None
    progress_label: str | None = None
    init_scale: float = 2.0**16
    growth_interval: int = 2000
    data_parallel: str = "split_batch"

    def __post_init__(self) -> None:
        for key in ("epochs", "accumulate", "log_every", "growth_interval"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainerConfig.{key} must be a positive int, not {value!r}")
        for key in ("early_stopping", "checkpoint_every"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(
                    f"TrainerConfig.{key} must be None or a positive int, not {value!r}"
                )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', not {self.precision!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be 'val_delta_p' or 'last', not {self.selection!r}")
        if self.data_parallel not in DATA_PARALLEL:
            raise ValueError(
                f"data_parallel must be 'split_batch' or 'sharded_loader', not "
                f"{self.data_parallel!r}"
            )
        if self.scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', not {self.scheduler_interval!r}"
            )
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir (where to write them)")
        if not (
            isinstance(self.init_scale, int | float)
            and math.isfinite(self.init_scale)
            and self.init_scale > 0
        ):
            raise ValueError(f"init_scale must be a positive number, not {self.init_scale!r}")
