"""The training loop shared by every domain package.

    trainer = Trainer(model, tasks, balancer, optimizer, config=TrainerConfig(epochs=10),
                      tracker=tracker, val_reference=stl_val)
    result = trainer.fit(train_loader, val_loader, test_loader)

One step: ``model(inputs)`` gives each task's prediction (and optionally the shared
representation), every task's loss goes to ``balancer.backward`` (mtlbalance), then
``optimizer.step()``. Around it: evaluation on val/test every epoch, model selection by
validation Δp (Eq. (2) of the DB-MTL paper) against an explicit reference, early stopping,
LR schedulers (ReduceLROnPlateau on validation Δp), gradient accumulation that balances the
accumulated per-task gradients, bf16/fp16 mixed precision, deterministic seeding, checkpoints
that resume bit-for-bit mid-epoch, and tracking (:class:`~mtltrain.tracking.Tracker`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, atomic_save, load_file
from .deltap import Directions, Metrics, delta_p
from .metrics import Metric

__all__ = [
    "EpochResult",
    "FitResult",
    "Task",
    "Trainer",
    "TrainerConfig",
    "load_checkpoint_info",
    "seed_everything",
]

CHECKPOINT_FORMAT = 1
_CHECKPOINT_KEYS = (
    "model", "optimizer", "scheduler", "balancer", "epoch", "batches_done", "step", "history",
    "best", "first_val", "bad_epochs", "stop", "loss_scale", "rng", "tracker_run_id", "config",
)  # fmt: skip
LAST_CHECKPOINT = "last.pt"
BEST_MODEL = "best_model.pt"
Batch = Any
Unpack = Callable[[Batch], tuple[Any, Mapping[str, Tensor]]]


@dataclass(frozen=True)
class Task:
    """One task: its training loss ``loss(pred, target) -> scalar`` and its evaluation
    metrics (name -> :class:`~mtltrain.metrics.Metric`, each knowing its direction)."""

    name: str
    loss: Callable[[Tensor, Tensor], Tensor]
    metrics: Mapping[str, Metric]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"task name must be a non-empty str, not {self.name!r}")
        if not callable(self.loss):
            raise TypeError(f"task {self.name!r}: loss must be callable")
        for metric_name, metric in self.metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"task {self.name!r}: metric {metric_name!r} must have reset/update/compute "
                    f"and higher_is_better (see mtltrain.metrics), not {type(metric).__name__}"
                )


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
        progress: progress bars (tqdm) and one summary line per epoch; None: when stderr is a
            terminal.
        init_scale, growth_interval: fp16 dynamic loss scale: start value, and how many
            finite steps in a row double it (an overflow halves it and skips the step).
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
    init_scale: float = 2.0**16
    growth_interval: int = 2000

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
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', not {self.precision!r}")
        if self.selection not in ("val_delta_p", "last"):
            raise ValueError(f"selection must be 'val_delta_p' or 'last', not {self.selection!r}")
        if self.scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', not {self.scheduler_interval!r}"
            )
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir (where to write them)")
        if not (math.isfinite(self.init_scale) and self.init_scale > 0):
            raise ValueError(f"init_scale must be a positive number, not {self.init_scale!r}")


@dataclass
class EpochResult:
    """What one epoch gave (host values)."""

    epoch: int
    steps: int
    lr: float
    seconds: float
    val: Metrics | None = None
    test: Metrics | None = None
    val_delta_p: float | None = None
    test_delta_p: float | None = None
    skipped_steps: int = 0


@dataclass
class FitResult:
    """The outcome of :meth:`Trainer.fit`.

    Attributes:
        best_epoch: the selected epoch (0-based).
        selection: what selection compared against: ``"stl"`` (the given validation reference),
            ``"first_epoch"`` (the run's own first-epoch validation metrics), ``"last"``.
        val, test: metrics at the selected epoch (test None without a test loader).
        test_delta_p: Δp of ``test`` against the test reference, when one was given.
        history: every epoch, in order.
        stopped_early: early stopping ended the run.
        steps: optimizer steps taken (skipped fp16 overflow steps excluded).
    """

    best_epoch: int
    selection: str
    val: Metrics | None
    test: Metrics | None
    test_delta_p: float | None
    history: list[EpochResult]
    stopped_early: bool
    steps: int


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy (if installed) and torch (all devices)."""
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


def load_checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The bookkeeping part of a checkpoint (epoch, step, tracker run id, config), e.g. to
    reopen the tracked run before resuming. ``path``: a checkpoint file or directory."""
    ckpt = _load(path)
    return {k: ckpt[k] for k in ("epoch", "batches_done", "step", "tracker_run_id", "config")}


class Trainer:
    """Trains a multi-task model with a :class:`mtlbalance.Balancer`.

    Args:
        model: an ``nn.Module`` whose ``forward(inputs)`` returns ``{task: prediction}`` or
            ``(representation, {task: prediction})`` (the representation goes to the balancer,
            which representation-level engines and methods need).
        tasks: the tasks, in the balancer's task order.
        balancer: built over the model's shared and task-specific parameters.
        optimizer: over the model's parameters and ``balancer.parameters()`` (checked).
        config: :class:`TrainerConfig`.
        scheduler: an LR scheduler of ``optimizer``, or None.
        tracker: a :class:`~mtltrain.tracking.Tracker` (only rank 0 of a distributed run
            should pass one), or None.
        val_reference: single-task (STL) validation metrics ``task -> metric -> value``; model
            selection measures validation Δp against them. Without them it uses the run's
            first-epoch validation metrics (and says so).
        test_reference: single-task test metrics; gives :attr:`FitResult.test_delta_p`.
        select_tasks: tasks whose metrics selection uses (default all; an STL run names its
            task).
        device: where batches go (default: the model's device).
        unpack: ``batch -> (inputs, {task: target})``; default accepts ``(inputs, targets)``
            pairs and ``{"inputs": ..., "targets": ...}`` dicts.
        callbacks: called as ``callback(trainer, step)`` after every optimizer step.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        balancer: Any,
        optimizer: torch.optim.Optimizer,
        *,
        config: TrainerConfig,
        scheduler: Any = None,
        tracker: Any = None,
        val_reference: Metrics | None = None,
        test_reference: Metrics | None = None,
        select_tasks: Sequence[str] | None = None,
        device: torch.device | str | None = None,
        unpack: Unpack | None = None,
        callbacks: Iterable[Callable[[Trainer, int], None]] = (),
    ) -> None:
        self.model = model
        self.tasks = {t.name: t for t in tasks}
        if len(self.tasks) != len(tasks):
            raise ValueError(f"task names must be unique: {[t.name for t in tasks]}")
        if not self.tasks:
            raise ValueError("tasks is empty: give at least one Task")
        self.balancer = balancer
        self.optimizer = optimizer
        self.config = config
        self.scheduler = scheduler
        self.tracker = tracker if _rank() == 0 else None
        self.val_reference = val_reference
        self.test_reference = test_reference
        self.select_tasks = tuple(select_tasks) if select_tasks is not None else tuple(self.tasks)
        unknown = [t for t in self.select_tasks if t not in self.tasks]
        if unknown or not self.select_tasks:
            raise ValueError(
                f"select_tasks {unknown or '[]'} must name tasks of {list(self.tasks)}"
            )
        self.device = torch.device(device) if device is not None else _module_device(model)
        self.unpack = unpack or _default_unpack
        self.callbacks = list(callbacks)
        self._check_optimizer()
        self._plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self._needs_after_step = _needs_after_step(balancer)
        # run state (all of it goes into the checkpoint)
        self.epoch = 0
        self.batches_done = 0  # micro-batches of the current epoch already trained on
        self.step = 0  # optimizer steps
        self.history: list[EpochResult] = []
        self.best: dict[str, Any] | None = None
        self.first_val: Metrics | None = None
        self.bad_epochs = 0
        self.loss_scale = float(config.init_scale)
        self._good_steps = 0
        self._skipped = 0
        self._epoch_rng: dict[str, Any] | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._stop = False

    # ------------------------------------------------------------------------------ public
    def fit(
        self,
        train: Iterable[Batch],
        val: Iterable[Batch] | None = None,
        test: Iterable[Batch] | None = None,
        *,
        resume: bool | str | os.PathLike[str] = False,
    ) -> FitResult:
        """Train for ``config.epochs`` epochs (or until early stopping).

        Args:
            train, val, test: re-iterable loaders (e.g. ``DataLoader``); val is needed for
                ``selection="val_delta_p"``, early stopping and ReduceLROnPlateau.
            resume: True — continue from ``checkpoint_dir/last.pt`` if it exists (start fresh
                otherwise); a path — continue from that checkpoint. The data order must come
                from the global torch RNG (``DataLoader(shuffle=True)`` without its own
                generator) or be fixed, so the interrupted epoch replays identically.
        """
        cfg = self.config
        needs_val = cfg.selection == "val_delta_p" or cfg.early_stopping or self._plateau
        if val is None and needs_val:
            raise ValueError(
                "a validation loader is needed for selection='val_delta_p', early stopping and "
                "ReduceLROnPlateau; pass val=..., or use selection='last' without them"
            )
        resumed = False
        if resume:
            path = self._resume_path(resume)
            if path is not None:
                self.load_checkpoint(path)
                resumed = True
        if not resumed:
            seed_everything(cfg.seed)
        with _deterministic(cfg.deterministic):
            if not resumed and self.tracker is not None:
                self.tracker.log_params({"trainer": asdict(cfg)})
            while self.epoch < cfg.epochs and not self._stop:
                self._train_epoch(train, val, test)
        result = self.result()
        if self.tracker is not None:
            self._log_final(result)
        return result

    def result(self) -> FitResult:
        """The current outcome (the selected epoch so far)."""
        if not self.history:
            raise RuntimeError("no epoch has finished yet")
        best = self.best
        if self.config.selection == "last" or best is None:
            chosen = self.history[-1]
            selection = "last"
        else:
            chosen = self.history[best["epoch"]]
            selection = best["against"]
        return FitResult(
            best_epoch=chosen.epoch,
            selection=selection,
            val=chosen.val,
            test=chosen.test,
            test_delta_p=chosen.test_delta_p,
            history=list(self.history),
            stopped_early=self._stop,
            steps=self.step,
        )

    @torch.no_grad()
    def evaluate(
        self, loader: Iterable[Batch], *, desc: str = "eval"
    ) -> tuple[Metrics, dict[str, float]]:
        """Every task's metrics and mean loss over ``loader`` (model in eval mode)."""
        was_training = self.model.training
        self.model.eval()
        for task in self.tasks.values():
            for metric in task.metrics.values():
                metric.reset()
        loss_sums: dict[str, Tensor] = {}
        batches = 0
        try:
            for batch in self._progress(loader, desc):
                inputs, targets = self._unpack(batch)
                with self._autocast():
                    _, preds = self._forward(inputs)
                for name, task in self.tasks.items():
                    pred, target = preds[name], targets[name]
                    loss = task.loss(pred.float(), target).detach().double()
                    loss_sums[name] = loss_sums[name] + loss if name in loss_sums else loss
                    for metric in task.metrics.values():
                        metric.update(pred.float(), target)
                batches += 1
        finally:
            self.model.train(was_training)
        if batches == 0:
            raise ValueError(f"the {desc} loader gave no batches")
        metrics = {
            name: {m: metric.compute() for m, metric in task.metrics.items()}
            for name, task in self.tasks.items()
        }
        host = torch.stack([loss_sums[n] for n in self.tasks]).cpu().tolist()
        losses = {n: v / batches for n, v in zip(self.tasks, host, strict=True)}
        return metrics, losses

    def directions(self) -> Directions:
        """task -> metric -> higher is better, for every task's metrics."""
        return {
            name: {m: metric.higher_is_better for m, metric in task.metrics.items()}
            for name, task in self.tasks.items()
        }

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, including RNG states."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "balancer": self.balancer.state_dict(),
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "step": self.step,
            "history": [asdict(h) for h in self.history],
            "best": copy.deepcopy(self.best),
            "first_val": copy.deepcopy(self.first_val),
            "val_reference": copy.deepcopy(self.val_reference),
            "bad_epochs": self.bad_epochs,
            "stop": self._stop,
            "loss_scale": {
                "scale": self.loss_scale,
                "good": self._good_steps,
                "skipped": self._skipped,
            },
            "rng": {"epoch_start": self._epoch_rng, "current": _rng_state()},
            "tracker_run_id": None if self.tracker is None else self.tracker.run_id,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}: it was "
                f"written by another mtltrain version"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["scheduler"] is None) != (self.scheduler is None):
            raise ValueError("the checkpoint and this trainer disagree on having a scheduler")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.balancer.load_state_dict(state["balancer"])
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.step = int(state["step"])
        self.history = [EpochResult(**h) for h in state["history"]]
        self.best = copy.deepcopy(state["best"])
        self.first_val = copy.deepcopy(state["first_val"])
        self.bad_epochs = int(state["bad_epochs"])
        self._stop = bool(state["stop"])
        ls = state["loss_scale"]
        self.loss_scale, self._good_steps, self._skipped = ls["scale"], ls["good"], ls["skipped"]
        self._epoch_rng = state["rng"]["epoch_start"]
        self._resume_rng = state["rng"]["current"]
        if self.batches_done == 0:  # saved at an epoch boundary: continue from here
            _set_rng_state(self._resume_rng)
        if "val_reference" in state and state["val_reference"] != self.val_reference:
            self._reselect()

    def _reselect(self) -> None:
        """The validation reference changed since the checkpoint (e.g. STL runs trained
        further): recompute every finished epoch's validation Δp against the current one and
        pick the best epoch again, so the selection never mixes two references."""
        self.best, self.bad_epochs = None, 0
        for record in self.history:  # as _evaluate_epoch counts them
            if record.val is not None:
                _, improved = self._select(record)
                self.bad_epochs = 0 if improved else self.bad_epochs + 1
        warnings.warn(
            "resuming with a different validation reference than the checkpoint's: the "
            "selected epoch is picked again from the saved per-epoch validation metrics "
            f"(now epoch {None if self.best is None else self.best['epoch']}); best_model.pt, "
            "early stopping and ReduceLROnPlateau before the resume followed the old reference",
            stacklevel=3,
        )

    def _select(self, record: EpochResult) -> tuple[float, bool]:
        """Set ``record.val_delta_p`` against the selection reference (our STL metrics, else
        the first epoch's) and make ``record`` the best epoch when it beats it; returns the
        Δp and whether it did."""
        assert record.val is not None
        directions = self.directions()
        select_dirs = {t: directions[t] for t in self.select_tasks}
        against = "stl" if self.val_reference is not None else "first_epoch"
        reference = self.val_reference if self.val_reference is not None else self.first_val
        assert reference is not None
        value = record.val_delta_p = delta_p(record.val, reference, select_dirs)
        if self.best is not None and value <= self.best["val_delta_p"]:
            return value, False
        self.best = {"epoch": record.epoch, "val_delta_p": value, "against": against}
        return value, True

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write :meth:`state_dict` atomically (``checkpoint_dir/last.pt`` by default)."""
        if path is None:
            if self.config.checkpoint_dir is None:
                raise ValueError("no path given and config.checkpoint_dir is None")
            path = Path(self.config.checkpoint_dir) / LAST_CHECKPOINT
        path = Path(path)
        if self.tracker is not None:
            # everything logged so far reaches the spool first: a kill after the checkpoint
            # loses no logged point (the resumed run continues after it)
            self.tracker.flush()
        if _rank() == 0:
            atomic_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        self.load_state_dict(_load(path))

    # ------------------------------------------------------------------------------ internals
    def _train_epoch(self, train: Iterable[Batch], val: Any, test: Any) -> None:
        cfg = self.config
        start = time.perf_counter()
        steps_before = self.step
        skipped_before = self._skipped
        mid_epoch = self.batches_done > 0
        if mid_epoch:
            # replay the interrupted epoch's data order, skip what was trained on, then
            # continue with the RNG exactly where the checkpoint left it
            assert self._epoch_rng is not None and self._resume_rng is not None
            _set_rng_state(self._epoch_rng)
            iterator = iter(train)
            for _ in range(self.batches_done):
                next(iterator)
            _set_rng_state(self._resume_rng)
        else:
            self._epoch_rng = _rng_state()
            iterator = iter(train)
        self.model.train()
        accumulated = 0
        last_losses: dict[str, Tensor] | None = None
        last_batch: Any = None
        for batch in self._progress(
            iterator, f"epoch {self.epoch + 1}/{cfg.epochs}", initial=self.batches_done
        ):
            inputs, targets = self._unpack(batch)
            with self._autocast():
                rep, preds = self._forward(inputs)
            losses = self._losses(preds, targets)
            self.batches_done += 1
            if accumulated == 0:
                self.optimizer.zero_grad(set_to_none=True)
            if cfg.accumulate == 1:
                stats = self.balancer.backward(losses, representation=rep, **self._scale_kw())
                self._after_backward(stats, inputs, targets)
            else:
                self.balancer.accumulate(losses, representation=rep, **self._scale_kw())
                accumulated += 1
                last_losses, last_batch = losses, (inputs, targets)
                if accumulated == cfg.accumulate:
                    self._after_backward(self.balancer.backward_accumulated(), inputs, targets)
                    accumulated = 0
        if accumulated:  # a last, shorter group at the end of the epoch
            assert last_losses is not None and last_batch is not None
            self._after_backward(self.balancer.backward_accumulated(), *last_batch)
        self.balancer.epoch_end()
        if self.scheduler is not None and not self._plateau and cfg.scheduler_interval == "epoch":
            self.scheduler.step()
        record = EpochResult(
            epoch=self.epoch,
            steps=self.step - steps_before,
            lr=_lr(self.optimizer),
            seconds=time.perf_counter() - start,
            skipped_steps=self._skipped - skipped_before,
        )
        self._evaluate_epoch(record, val, test)
        self.history.append(record)
        self.epoch += 1
        self.batches_done = 0
        self._epoch_rng = None
        if cfg.checkpoint_dir is not None:
            self.save_checkpoint()

    def _after_backward(self, stats: Any, inputs: Any, targets: Mapping[str, Tensor]) -> None:
        cfg = self.config
        if getattr(stats, "skipped", False):  # fp16 overflow: smaller scale, no step
            self.loss_scale /= 2.0
            self._good_steps = 0
            self._skipped += 1
            return
        self.optimizer.step()
        if cfg.precision == "fp16":
            self._good_steps += 1
            if self._good_steps >= cfg.growth_interval:
                self.loss_scale *= 2.0
                self._good_steps = 0
        if self._needs_after_step:
            with torch.no_grad(), self._autocast():
                _, preds = self._forward(inputs)
                self.balancer.after_step(self._losses(preds, targets))
        if self.tracker is not None:
            self.tracker.log_balance_stats(stats, self.step)
            self.tracker.log_step({"train/lr": _lr(self.optimizer)}, self.step)
        self.step += 1
        if self.scheduler is not None and not self._plateau and cfg.scheduler_interval == "step":
            self.scheduler.step()
        if cfg.checkpoint_every is not None and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        for callback in self.callbacks:
            callback(self, self.step)

    def _evaluate_epoch(self, record: EpochResult, val: Any, test: Any) -> None:
        cfg = self.config
        directions = self.directions()
        select_dirs = {t: directions[t] for t in self.select_tasks}
        logged: dict[str, float] = {"epoch_seconds": record.seconds, "lr": record.lr}
        if val is not None:
            record.val, val_losses = self.evaluate(val, desc="val")
            if self.first_val is None:
                self.first_val = copy.deepcopy(record.val)
            value, improved = self._select(record)
            logged.update(_flat("val", record.val, val_losses))
            logged["val/delta_p"] = value
            if improved:
                self.bad_epochs = 0
                if cfg.checkpoint_dir is not None and _rank() == 0:
                    atomic_save(self.model.state_dict(), Path(cfg.checkpoint_dir) / BEST_MODEL)
            else:
                self.bad_epochs += 1
            if self._plateau:
                self.scheduler.step(value)
            if cfg.early_stopping is not None and self.bad_epochs >= cfg.early_stopping:
                self._stop = True
        if test is not None:
            record.test, test_losses = self.evaluate(test, desc="test")
            logged.update(_flat("test", record.test, test_losses))
            if self.test_reference is not None:
                record.test_delta_p = delta_p(record.test, self.test_reference, select_dirs)
                logged["test/delta_p"] = record.test_delta_p
        if self.tracker is not None:
            self.tracker.log_metrics(logged, step=record.epoch)
        if self._show_progress():
            parts = [f"epoch {record.epoch + 1}/{cfg.epochs}", f"{record.seconds:.1f}s"]
            if record.val_delta_p is not None:
                parts.append(f"val Δp {record.val_delta_p:+.2f}%")
            if record.test_delta_p is not None:
                parts.append(f"test Δp {record.test_delta_p:+.2f}%")
            if record.skipped_steps:
                parts.append(f"{record.skipped_steps} fp16 overflow steps skipped")
            _write_line("  ".join(parts))

    def _log_final(self, result: FitResult) -> None:
        tracker = self.tracker
        assert tracker is not None
        final: dict[str, float] = {"final/epoch": float(result.best_epoch)}
        for split, metrics in (("val", result.val), ("test", result.test)):
            if metrics is None:
                continue
            for task in self.select_tasks:
                for m, v in metrics[task].items():
                    final[f"final/{split}/{task}/{m}"] = v
        if result.test_delta_p is not None:
            final["final/test/delta_p"] = result.test_delta_p
        tracker.log_metrics(final, step=0)
        tracker.set_tags({"mtltrain.selection": result.selection})
        tracker.log_text(
            results_markdown(result, self.directions(), self.select_tasks), "results.md"
        )
        tracker.flush()
        from .plots import log_training_plots

        log_training_plots(tracker, tuple(self.tasks))

    def _forward(self, inputs: Any) -> tuple[Any, Mapping[str, Tensor]]:
        out = self.model(inputs)
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping):
            rep, preds = out
        elif isinstance(out, Mapping):
            rep, preds = None, out
        else:
            raise TypeError(
                f"the model must return {{task: prediction}} or (representation, {{task: "
                f"prediction}}), not {type(out).__name__}"
            )
        missing = [t for t in self.tasks if t not in preds]
        if missing:
            raise ValueError(f"the model gave no prediction for tasks {missing}")
        return rep, preds

    def _losses(
        self, preds: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        return {
            name: task.loss(preds[name].float(), targets[name]) for name, task in self.tasks.items()
        }

    def _unpack(self, batch: Batch) -> tuple[Any, Mapping[str, Tensor]]:
        inputs, targets = self.unpack(batch)
        missing = [t for t in self.tasks if t not in targets]
        if missing:
            raise ValueError(
                f"the batch has no targets for tasks {missing} (it has {list(targets)})"
            )
        return _to(inputs, self.device), {k: _to(v, self.device) for k, v in targets.items()}

    def _scale_kw(self) -> dict[str, Any]:
        return {"loss_scale": self.loss_scale} if self.config.precision == "fp16" else {}

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        precision = self.config.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _resume_path(self, resume: bool | str | os.PathLike[str]) -> Path | None:
        if resume is True:
            if self.config.checkpoint_dir is None:
                raise ValueError("resume=True needs config.checkpoint_dir (or give a path)")
            path = Path(self.config.checkpoint_dir) / LAST_CHECKPOINT
            return path if path.is_file() else None
        path = Path(resume)  # type: ignore[arg-type]
        if path.is_dir():
            path = path / LAST_CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        return path

    def _check_optimizer(self) -> None:
        in_opt = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        missing = [p for p in self.balancer.parameters() if id(p) not in in_opt]
        if missing:
            raise ValueError(
                f"the optimizer does not hold the balancer's {len(missing)} learnable "
                f"parameter(s) (e.g. UW's log-variances): add balancer.parameters() to it"
            )
        model_params = [p for p in self.model.parameters() if p.requires_grad]
        if not any(id(p) in in_opt for p in model_params):
            raise ValueError("the optimizer holds none of the model's parameters")

    def _show_progress(self) -> bool:
        if _rank() != 0:
            return False
        if self.config.progress is None:
            return sys.stderr.isatty()
        return self.config.progress

    def _progress(self, iterable: Iterable[Any], desc: str, initial: int = 0) -> Iterable[Any]:
        if not self._show_progress():
            return iterable
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            return iterable
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        return tqdm(
            iterable, desc=desc, total=total, initial=initial, leave=False, dynamic_ncols=True
        )


def results_markdown(result: FitResult, directions: Directions, tasks: Sequence[str]) -> str:
    """The selected epoch's validation and test metrics as a Markdown table."""
    lines = [
        f"Selected epoch {result.best_epoch + 1} of {len(result.history)} "
        f"(selection: {result.selection}); {result.steps} optimizer steps.",
        "",
        "| split | task | metric | value |",
        "|---|---|---|---|",
    ]
    for split, metrics in (("val", result.val), ("test", result.test)):
        if metrics is None:
            continue
        for task in tasks:
            for m, v in metrics[task].items():
                arrow = "↑" if directions[task][m] else "↓"
                lines.append(f"| {split} | {task} | {m} {arrow} | {v:.6g} |")
    if result.test_delta_p is not None:
        lines += ["", f"Test Δp against the STL reference: {result.test_delta_p:+.2f}%"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- helpers
def _default_unpack(batch: Batch) -> tuple[Any, Mapping[str, Tensor]]:
    if isinstance(batch, Mapping) and "inputs" in batch and "targets" in batch:
        return batch["inputs"], batch["targets"]
    if isinstance(batch, tuple | list) and len(batch) == 2 and isinstance(batch[1], Mapping):
        return batch[0], batch[1]
    raise TypeError(
        "batches must be (inputs, {task: target}) pairs or {'inputs': ..., 'targets': {...}} "
        f"dicts, not {type(batch).__name__}; pass Trainer(unpack=...) for other layouts"
    )


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if hasattr(obj, "to") and not isinstance(obj, nn.Module):  # e.g. a PyG Batch
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def _module_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _needs_after_step(balancer: Any) -> bool:
    from mtlbalance.aggregators.base import Aggregator
    from mtlbalance.transforms.base import LossTransform

    transform, aggregator = (
        getattr(balancer, "transform", None),
        getattr(balancer, "aggregator", None),
    )
    t = transform is not None and type(transform).after_step is not LossTransform.after_step
    a = aggregator is not None and type(aggregator).after_step is not Aggregator.after_step
    return t or a


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _flat(split: str, metrics: Metrics, losses: Mapping[str, float]) -> dict[str, float]:
    out = {f"{split}/{t}/{m}": v for t, ms in metrics.items() for m, v in ms.items()}
    out.update({f"{split}/{t}/loss": v for t, v in losses.items()})
    return out


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain Python values (a checkpoint loads as data only)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    with contextlib.suppress(ImportError):
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        if isinstance(s, Mapping):
            keys = np.asarray(s["keys"].numpy(), dtype=np.uint32)
            np.random.set_state((s["kind"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
        else:  # a checkpoint written before the RNG state was stored as plain values
            np.random.set_state(s)


def _load(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    state = load_file(path)
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not an mtltrain checkpoint (no 'format' entry)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']!r}, not {CHECKPOINT_FORMAT}: it was "
            "written by another mtltrain version"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} lacks {missing}: it is not a complete mtltrain checkpoint (delete it to "
            "start over)"
        )
    return state


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _write_line(text: str) -> None:
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]

        tqdm.write(text, file=sys.stderr)
    except ImportError:
        print(text, file=sys.stderr)
