"""The training loop shared by every domain package.

    trainer = Trainer(model, tasks, balancer, optimizer, config=TrainerConfig(epochs=10),
                      tracker=tracker, val_reference=stl_val)
    result = trainer.fit(train_loader, val_loader, test_loader)

One step: ``model(inputs)`` gives each task's prediction (and optionally the shared
representation), every task's loss goes to ``balancer.backward`` (mtlbalance), then
``optimizer.step()``. Around it: evaluation on val/test every epoch, model selection by
validation Δp (:mod:`.selection`), early stopping, LR schedulers (ReduceLROnPlateau on
validation Δp), gradient accumulation that balances the accumulated per-task gradients,
bf16/fp16 mixed precision (:mod:`.precision`), deterministic seeding, checkpoints that resume
bit-for-bit mid-epoch (:mod:`.checkpoint`), progress (:mod:`.progress`) and tracking
(:class:`~mtltrain.tracking.Tracker`).

Under torch.distributed with a Balancer that averages across the ranks (``process_group=``,
docs/distributed.md) every rank runs this loop on its shard of each global batch
(``TrainerConfig.data_parallel``); rank 0's parameters are broadcast at the start, rank 0 evaluates
(the others take its numbers, so selection and early stopping agree), tracks and writes
checkpoints; a failed collective names the rank that stopped (:mod:`.distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed
from .checkpoint import (
    BEST_MODEL,
    CHECKPOINT_FORMAT,
    LAST_CHECKPOINT,
    atomic_save,
    load_checkpoint_info,
    load_trainer_state,
    rng_state,
    set_rng_state,
)
from .config import TrainerConfig
from .deltap import Directions, Metrics, delta_p
from .precision import Precision
from .progress import Progress, RunningLoss, rank
from .results import EpochResult, FitResult, final_metrics, results_markdown
from .selection import Selection
from .sharded import BEST_SHARDED, LAST_SHARDED, ShardedModel, gather_slices
from .task import Task

__all__ = [
    "EpochResult",
    "FitResult",
    "Task",
    "Trainer",
    "TrainerConfig",
    "load_checkpoint_info",
    "results_markdown",
    "seed_everything",
]

Batch = Any
Unpack = Callable[[Batch], tuple[Any, Mapping[str, Tensor]]]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy (if installed) and torch (all devices)."""
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


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
        sharded: the model's sharded part (:class:`~mtltrain.sharded.ShardedModel`, e.g.
            :class:`mtlrec.sharded_run.ShardedRun` for TorchRec tables): its one backward after
            the balancer's, evaluation on every rank, per-rank checkpoints (folders ``last/``
            and ``best_model/``). Needs a data-parallel balancer (``process_group=``),
            ``accumulate = 1`` and no fp16 loss scaling.
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
        sharded: ShardedModel | None = None,
    ) -> None:
        self.model = model
        self.sharded = sharded
        self.tasks = {t.name: t for t in tasks}
        if len(self.tasks) != len(tasks):
            raise ValueError(f"task names must be unique: {[t.name for t in tasks]}")
        if not self.tasks:
            raise ValueError("tasks is empty: give at least one Task")
        self.balancer = balancer
        self.optimizer = optimizer
        self.config = config
        self.scheduler = scheduler
        self.tracker = tracker if rank() == 0 else None
        self.test_reference = test_reference
        self.select_tasks = tuple(select_tasks) if select_tasks is not None else tuple(self.tasks)
        unknown = [t for t in self.select_tasks if t not in self.tasks]
        if unknown or not self.select_tasks:
            raise ValueError(
                f"select_tasks {unknown or '[]'} must name tasks of {list(self.tasks)}"
            )
        self.device = torch.device(device) if device is not None else _module_device(model)
        directions = self.directions()
        self.selection = Selection({t: directions[t] for t in self.select_tasks}, val_reference)
        self.precision = Precision(
            config.precision, self.device.type, config.init_scale, config.growth_interval
        )
        self.progress = Progress(config.progress, config.progress_label)
        self.unpack = unpack or _default_unpack
        self.callbacks = list(callbacks)
        self._check_optimizer()
        if sharded is not None:
            self._check_sharded()
        self._plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self._needs_after_step = bool(balancer.needs_after_step)
        # run state (all of it goes into the checkpoint)
        self.epoch = 0
        self.batches_done = 0  # micro-batches of the current epoch already trained on
        self.step = 0  # optimizer steps
        self.history: list[EpochResult] = []
        self._epoch_rng: dict[str, Any] | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._stop = False

    @property
    def val_reference(self) -> Metrics | None:
        """The STL validation metrics selection compares against (None: the first epoch)."""
        return self.selection.reference

    @property
    def loss_scale(self) -> float:
        """The fp16 dynamic loss scale (unused in fp32/bf16)."""
        return self.precision.scale

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
        if self._data_parallel:  # every rank starts from rank 0's model
            if self.sharded is not None:  # (each rank holds its own shards)
                distributed.broadcast_tensors(self.sharded.replicated_parameters())
            else:
                distributed.broadcast_module(self.model)
        with _deterministic(cfg.deterministic), distributed.fail_cleanly():
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
        best = self.selection.best
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
            for batch in self.progress.bar(loader, desc):
                inputs, targets = self._unpack(batch)
                with self.precision.autocast():
                    preds = self._eval_forward(inputs, targets)
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
        return {name: task.directions for name, task in self.tasks.items()}

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, including RNG states."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "balancer": self.balancer.state_dict(),
            **self._bookkeeping(),
        }

    def _bookkeeping(self) -> dict[str, Any]:
        """The run's state beside the model, optimizer and balancer (plain values)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "step": self.step,
            "history": [asdict(h) for h in self.history],
            "best": copy.deepcopy(self.selection.best),
            "first_val": copy.deepcopy(self.selection.first_val),
            "val_reference": copy.deepcopy(self.selection.reference),
            "bad_epochs": self.selection.bad_epochs,
            "stop": self._stop,
            "loss_scale": self.precision.state_dict(),
            "rng": {"epoch_start": self._epoch_rng, "current": rng_state()},
            "tracker_run_id": None if self.tracker is None else self.tracker.run_id,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_format(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.balancer.load_state_dict(state["balancer"])
        self._load_bookkeeping(state)

    def _load_bookkeeping(self, state: Mapping[str, Any]) -> None:
        _check_format(state)
        if (state["scheduler"] is None) != (self.scheduler is None):
            raise ValueError("the checkpoint and this trainer disagree on having a scheduler")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.step = int(state["step"])
        self.history = [EpochResult(**h) for h in state["history"]]
        selection = self.selection
        selection.best = copy.deepcopy(state["best"])
        selection.first_val = copy.deepcopy(state["first_val"])
        selection.bad_epochs = int(state["bad_epochs"])
        self._stop = bool(state["stop"])
        self.precision.load_state_dict(state["loss_scale"])
        self._epoch_rng = state["rng"]["epoch_start"]
        self._resume_rng = state["rng"]["current"]
        if self.batches_done == 0:  # saved at an epoch boundary: continue from here
            set_rng_state(self._resume_rng)
        if "val_reference" in state and state["val_reference"] != selection.reference:
            # e.g. STL runs trained further: never mix two references in one selection
            selection.reselect(self.history)
            best = None if selection.best is None else selection.best["epoch"]
            warnings.warn(
                "resuming with a different validation reference than the checkpoint's: the "
                "selected epoch is picked again from the saved per-epoch validation metrics "
                f"(now epoch {best}); best_model.pt, early stopping and ReduceLROnPlateau before "
                "the resume followed the old reference",
                stacklevel=3,
            )

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write :meth:`state_dict` atomically (``checkpoint_dir/last.pt`` by default). With
        a sharded model: every rank writes its part into the folder ``path`` (default
        ``checkpoint_dir/last``), a collective."""
        if path is None:
            if self.config.checkpoint_dir is None:
                raise ValueError("no path given and config.checkpoint_dir is None")
            name = LAST_CHECKPOINT if self.sharded is None else LAST_SHARDED
            path = Path(self.config.checkpoint_dir) / name
        path = Path(path)
        if self.tracker is not None:
            # everything logged so far reaches the spool first: a kill after the checkpoint
            # loses no logged point (the resumed run continues after it)
            self.tracker.flush()
        if self.sharded is not None:
            self.sharded.save(
                path,
                step=self.step,
                optimizer=self.optimizer,
                balancer=self.balancer,
                extra=self._bookkeeping(),
            )
        elif rank() == 0:
            atomic_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        if self.sharded is not None:
            extra = self.sharded.load(Path(path), optimizer=self.optimizer, balancer=self.balancer)
            self._load_bookkeeping(extra)
        else:
            self.load_state_dict(load_trainer_state(path))

    # ------------------------------------------------------------------------------ internals
    def _train_epoch(self, train: Iterable[Batch], val: Any, test: Any) -> None:
        cfg = self.config
        start = time.perf_counter()
        steps_before = self.step
        skipped_before = self.precision.skipped
        mid_epoch = self.batches_done > 0
        if mid_epoch:
            # replay the interrupted epoch's data order, skip what was trained on, then
            # continue with the RNG exactly where the checkpoint left it
            assert self._epoch_rng is not None and self._resume_rng is not None
            set_rng_state(self._epoch_rng)
            iterator = iter(train)
            for _ in range(self.batches_done):
                next(iterator)
            set_rng_state(self._resume_rng)
        else:
            self._epoch_rng = rng_state()
            iterator = iter(train)
        sampler = getattr(train, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # a DistributedSampler: this epoch's order
            sampler.set_epoch(self.epoch)  # type: ignore[union-attr]
        self.model.train()
        accumulated = 0
        last_losses: dict[str, Tensor] | None = None
        last_batch: Any = None
        scale_kw = self.precision.backward_kwargs
        total = len(train) if hasattr(train, "__len__") else None  # type: ignore[arg-type]
        bar = self.progress.bar(
            iterator, f"epoch {self.epoch + 1}/{cfg.epochs}", self.batches_done, total
        )
        running = (
            RunningLoss(self.tasks, cfg.log_every) if hasattr(bar, "set_postfix_str") else None
        )
        for batch in bar:
            inputs, targets = self._unpack(batch)
            weight = None
            if self._split_batches:
                inputs, targets, weight = _rank_rows(inputs, targets)
            with self.precision.autocast():
                rep, preds = self._forward(inputs)
            losses = self._losses(preds, targets)
            if weight is not None:  # this rank's slice: its share of the global mean
                losses = {t: loss * weight for t, loss in losses.items()}
            self.batches_done += 1
            if running is not None:
                running.add(losses)
                if running.due() or self.batches_done == 1:
                    bar.set_postfix_str(running.text())  # type: ignore[attr-defined]
            if accumulated == 0:
                self.optimizer.zero_grad(set_to_none=True)
            if cfg.accumulate == 1:
                stats = self.balancer.backward(losses, representation=rep, **scale_kw())
                if self.sharded is not None:  # the one backward into the sharded part
                    self.sharded.backward_sharded(bool(getattr(stats, "skipped", False)))
                self._after_backward(stats, inputs, targets)
            else:
                self.balancer.accumulate(losses, representation=rep, **scale_kw())
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
            skipped_steps=self.precision.skipped - skipped_before,
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
        if not self.precision.after_backward(getattr(stats, "skipped", False)):
            return  # fp16 overflow: smaller scale, no step
        self.optimizer.step()
        if self._needs_after_step:
            weight = None
            if self._split_batches:
                inputs, targets, weight = _rank_rows(inputs, targets)
            with torch.no_grad(), self.precision.autocast():
                _, preds = self._forward(inputs)
                after = self._losses(preds, targets)
                if weight is not None:
                    after = {t: loss * weight for t, loss in after.items()}
                self.balancer.after_step(after)
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
        logged: dict[str, float] = {"epoch_seconds": record.seconds, "lr": record.lr}
        if val is not None:
            record.val, val_losses = self._evaluate_on_rank0(val, "val")
            improved = self.selection.update(record)
            assert record.val_delta_p is not None
            logged.update(_flat("val", record.val, val_losses))
            logged["val/delta_p"] = record.val_delta_p
            if improved and cfg.checkpoint_dir is not None and self.sharded is not None:
                self.sharded.save(
                    Path(cfg.checkpoint_dir) / BEST_SHARDED,
                    step=self.step,
                    optimizer=None,
                    balancer=None,
                    extra={"epoch": record.epoch},
                )
            elif improved and cfg.checkpoint_dir is not None and rank() == 0:
                atomic_save(self.model.state_dict(), Path(cfg.checkpoint_dir) / BEST_MODEL)
            if self._plateau:
                self.scheduler.step(record.val_delta_p)
            if cfg.early_stopping is not None and self.selection.bad_epochs >= cfg.early_stopping:
                self._stop = True
        if test is not None:
            record.test, test_losses = self._evaluate_on_rank0(test, "test")
            logged.update(_flat("test", record.test, test_losses))
            if self.test_reference is not None:
                record.test_delta_p = delta_p(
                    record.test, self.test_reference, self.selection.directions
                )
                logged["test/delta_p"] = record.test_delta_p
        if self.tracker is not None:
            self.tracker.log_metrics(logged, step=record.epoch)
        if self.progress.shown():
            parts = [f"epoch {record.epoch + 1}/{cfg.epochs}", f"{record.seconds:.1f}s"]
            if record.val_delta_p is not None:
                parts.append(f"val Δp {record.val_delta_p:+.2f}%")
            if record.test_delta_p is not None:
                parts.append(f"test Δp {record.test_delta_p:+.2f}%")
            if record.skipped_steps:
                parts.append(f"{record.skipped_steps} fp16 overflow steps skipped")
            self.progress.line("  ".join(parts))

    @property
    def _data_parallel(self) -> bool:
        """A torch.distributed job whose Balancer averages across the ranks (a model-parallel
        job, sharded tables, decides these things itself)."""
        group = getattr(self.balancer, "process_group", None)
        return group is not None and distributed.is_distributed()

    @property
    def _split_batches(self) -> bool:
        return self.config.data_parallel == "split_batch" and self._data_parallel

    def _evaluate_on_rank0(self, loader: Any, desc: str) -> tuple[Metrics, dict[str, float]]:
        """:meth:`evaluate`, on rank 0 only in a data-parallel run (the others take its
        numbers: model selection, early stopping and the LR schedule must agree)."""
        if not self._data_parallel or self.sharded is not None:
            return self.evaluate(loader, desc=desc)  # (sharded: every rank, the same numbers)
        result: list[Any] = [self.evaluate(loader, desc=desc) if rank() == 0 else None]
        torch.distributed.broadcast_object_list(result, src=0)
        return result[0]

    def _log_final(self, result: FitResult) -> None:
        tracker = self.tracker
        assert tracker is not None
        tracker.log_metrics(final_metrics(result, self.select_tasks), step=0)
        tracker.set_tags({"mtltrain.selection": result.selection})
        tracker.log_text(
            results_markdown(result, self.directions(), self.select_tasks), "results.md"
        )
        tracker.flush()
        from .plots import log_training_plots

        log_training_plots(tracker, tuple(self.tasks))

    def _eval_forward(self, inputs: Any, targets: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """The predictions for an evaluation batch; with a sharded model each rank forwards
        its slice (the lookup is a collective) and every rank gets the whole batch's. A batch
        of fewer rows than ranks (a split's short last batch) is forwarded whole by every
        rank: no slice may be empty, and every rank must join the lookup."""
        if self.sharded is None:
            return self._forward(inputs)[1]
        mine, _, _ = _rank_rows(inputs, targets)
        _, preds = self._forward(mine)
        if mine is inputs:  # (fewer rows than ranks: every rank forwarded the whole batch)
            return preds
        total = int(next(iter(targets.values())).shape[0])
        return gather_slices({t: preds[t] for t in self.tasks}, total)

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

    def _resume_path(self, resume: bool | str | os.PathLike[str]) -> Path | None:
        if resume is True:
            if self.config.checkpoint_dir is None:
                raise ValueError("resume=True needs config.checkpoint_dir (or give a path)")
            if self.sharded is not None:
                folder = Path(self.config.checkpoint_dir) / LAST_SHARDED
                return folder if self.sharded.has_checkpoint(folder) else None
            path = Path(self.config.checkpoint_dir) / LAST_CHECKPOINT
            return path if path.is_file() else None
        path = Path(resume)  # type: ignore[arg-type]
        if self.sharded is not None:
            for folder in (path, path / LAST_SHARDED):
                if self.sharded.has_checkpoint(folder):
                    return folder
            raise FileNotFoundError(f"no sharded checkpoint in {path} or {path / LAST_SHARDED}")
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
        model_params: list[Tensor] = (
            self.sharded.replicated_parameters()
            if self.sharded is not None
            else [p for p in self.model.parameters() if p.requires_grad]
        )
        if not any(id(p) in in_opt for p in model_params):
            raise ValueError("the optimizer holds none of the model's parameters")

    def _check_sharded(self) -> None:
        cfg = self.config
        problems = []
        if not self._data_parallel:
            problems.append(
                "a torch.distributed job whose Balancer averages across the ranks "
                "(process_group='world')"
            )
        if cfg.accumulate != 1:
            problems.append(
                f"accumulate = 1 (not {cfg.accumulate}: each forward's lookup needs "
                "its backward before the next forward)"
            )
        if cfg.precision == "fp16":
            problems.append(
                "no fp16 loss scaling (a skipped fp16 step would come after the "
                "tables' fused update); use fp32 or bf16"
            )
        if problems:
            raise ValueError("a sharded model needs " + "; ".join(problems))


# ---------------------------------------------------------------------------------- helpers
def _rank_rows(inputs: Any, targets: Mapping[str, Any]) -> tuple[Any, dict[str, Any], float]:
    """This rank's rows of a global batch and the weight of their mean loss
    (:func:`~mtltrain.distributed.split_batch`). A batch of fewer rows than ranks (an epoch's
    short last batch) cannot give every rank a slice: every rank then takes the whole batch
    with weight 1 — the ranks' average of equal losses and gradients is the batch's own, so
    the step is the one-process step (the ranks repeat the batch's small compute)."""
    sizes = {int(t.shape[0]) for t in targets.values() if isinstance(t, Tensor) and t.dim() > 0}
    if len(sizes) == 1 and min(sizes) < distributed.world_size():
        return inputs, dict(targets), 1.0
    return distributed.split_batch(inputs, targets)


def _check_format(state: Mapping[str, Any]) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}: it was "
            f"written by another mtltrain version"
        )


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


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _flat(split: str, metrics: Metrics, losses: Mapping[str, float]) -> dict[str, float]:
    out = {f"{split}/{t}/{m}": v for t, ms in metrics.items() for m, v in ms.items()}
    out.update({f"{split}/{t}/loss": v for t, v in losses.items()})
    return out


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
