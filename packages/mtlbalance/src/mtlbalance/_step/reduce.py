"""Stage "reduce": what the weighting reads is made the same on every process.

Data-parallel balancing (``Balancer(..., process_group=...)``): rank ``r`` holds the losses
``ℓ_t^r`` of its shard of the global batch (mean-reduced over equal shards), so the global
loss is ``ℓ_t = (1/W) Σ_r ℓ_t^r`` and, gradients being linear, ``∇ℓ_t = (1/W) Σ_r ∇ℓ_t^r``.
Every rank must compute the update of the global batch, so each quantity is averaged across
the W ranks before anything reads it:

* the raw losses ``ℓ`` (T floats), before the transform (:func:`losses`): the transform's
  Jacobian ``D = ∂ℓ̃/∂ℓ`` is then the global batch's, every backward is seeded with it, and
  ``mean_r (D ∇ℓ^r) = D ∇ℓ`` — a log transform applied per rank would give
  ``mean_r ∇ℓ^r/ℓ^r ≠ ∇ℓ/ℓ``. Loss-level methods (EW, UW, DWA, …) read only these; the
  transform's own parameters' gradients come from them and need no reduction;
* gradient level (exact): the (T, P) rows ``∇θ ℓ̃_t`` and each task's own parameters'
  gradients (:func:`run`) — **T × EW's traffic** on the shared parameters (EW all-reduces the
  one row ``Σ_t ∇θ ℓ̃_t``). The Gram matrix cannot be reduced instead: the global Gram is
  ``(mean_r J_r)(mean_r J_r)ᵀ ≠ mean_r J_r J_rᵀ``, and the update ``wᵀJ`` needs the rows;
* the gradients of one combined backward of ``Σ_t c_t ℓ̃_t`` (loss- and representation-level
  methods, :func:`combined`; the tables of a gradient-level method, :func:`tables`) — EW's
  traffic;
* representation level: the rows at the representation are per sample, so they are
  gathered, not averaged: ``∇_{z_r} ℓ = (1/W) ∇_{z_r} ℓ^r``, concatenated in rank order;
* a table marked :func:`mtlbalance.per_rank` (this rank's own rows, e.g. mtlrec's table
  frontier) is not averaged either: its gradient is the local one times 1/W
  (``∂ℓ/∂Ê_r = (1/W) ∂ℓ^r/∂Ê_r``), and one all-reduce of one float64 per such table (its
  squared norm) makes the check, the clip and the norms read from it global
  (:mod:`.perrank`);
* an accumulated step: its sums, once, before the transform (:func:`accumulation`);
* randomised methods (RLW, PCGrad, GradDrop, …): rank 0's draws are broadcast.

A fast mode (``Balancer(mode=...)``) reduces what its factors are computed from, then the
gradients of its one backward of ``Σ_t c_t ℓ̃_t`` (:func:`combined`: EW's traffic):

* probe: the probe's rows (T, |θ_p|) and each task's own gradients (:func:`run`) — T × the
  probe's size beyond EW (the first step, which picks the default probe, reduces the exact
  rows once);
* representation: the Gram matrix of the rows at z, ``R Rᵀ = (1/W²) Σ_r R_r R_rᵀ`` (T² floats,
  :func:`representation_gram`; its diagonal gives the norms) and each task's own gradients;
* periodic: its exact steps reduce what the exact path reduces; the steps in between only
  the one backward's gradients (the task parameters' among them).

Everything after this stage (the check, the weighting, the tables, the write-back) reads
reduced values only, so every rank takes the same decisions, holds the same state and writes
the same ``.grad``: the global mean. The model's gradients must therefore not be all-reduced
again (a model wrapped in ``DistributedDataParallel``: run its forward under ``no_sync()``;
see docs/distributed.md). All-reduces are bucketed (``bucket_bytes`` per collective, as
DDP's buckets) and sum then divide by W (gloo has no AVG).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from ..aggregators.base import gram_matrix
from . import combine, perrank
from .collective import Collective, ProcessGroupArg
from .context import Accumulation, Setup, Step


class _GlobalValue(torch.autograd.Function):
    """The global losses' values, with the gradient of the local ones: a backward through
    them reaches this rank's graph (whose gradients are then averaged), while every rank sees
    the same values, bit for bit."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, reduced: Tensor) -> Tensor:
        return reduced.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def resolve(process_group: ProcessGroupArg) -> Collective | None:
    """The balancer's ``process_group=`` option as a :class:`Collective` (None: one process)."""
    if process_group is None:
        return None
    if isinstance(process_group, Collective):
        return process_group
    return Collective(process_group)


def attach(setup: Setup) -> None:
    """Randomised methods draw on rank 0 only (every rank samples, so each rank's RNG stream
    advances as in a one-process run, and takes rank 0's draws)."""
    collective = setup.collective
    for method in (setup.transform, setup.aggregator):
        if getattr(method, "randomized", False) and hasattr(method, "sample_draws"):
            method.__dict__["_sync_draws"] = None if collective is None else collective.broadcast


def losses(setup: Setup, vec: Tensor) -> Tensor:
    """The start of a step: the raw losses (T,), attached to this rank's graph, averaged
    across ranks (values global, gradient local); unchanged with one process."""
    collective = setup.collective
    if collective is None:
        _warn_unreduced(setup)
        return vec
    collective.bytes_last_step = 0
    reduced = vec.detach().clone()
    collective.mean_([reduced])
    if not vec.requires_grad:
        return reduced
    out: Tensor = _GlobalValue.apply(vec, reduced)
    return out


def after_step_losses(setup: Setup, vec: Tensor) -> Tensor:
    """The losses a method reads after the optimizer step (FAMO), averaged across ranks."""
    if setup.collective is None:
        return vec
    reduced = vec.detach().clone()
    setup.collective.mean_([reduced])
    return reduced


def accumulation(setup: Setup, acc: Accumulation) -> None:
    """An accumulated step: every sum (losses, rows, task and table gradients) averaged once,
    before the transform reads the mean losses."""
    collective = setup.collective
    if collective is None:
        return
    collective.bytes_last_step = 0
    collective.mean_([acc.loss_sum, acc.rows])
    acc.task_grads = [collective.mean(gs) for gs in acc.task_grads]
    acc.table_grads = [collective.mean(gs) for gs in acc.table_grads]


def run(setup: Setup, step: Step) -> None:
    """After the engine of a direct step: the rows (T, P) and each task's own gradients
    averaged (gradient level), or the rows at the representation gathered (representation
    level). An accumulated step was reduced before its transform (:func:`accumulation`)."""
    collective = setup.collective
    if collective is None or step.accumulated is not None:
        return
    if step.rows is not None:
        if step.rows.is_contiguous():
            collective.mean_([step.rows])
        else:  # pragma: no cover - the engines fill a contiguous buffer
            step.rows = collective.mean([step.rows])[0]
    if step.task_grads:
        step.task_grads = [collective.mean(gs) for gs in step.task_grads]
    if step.rep_rows is not None:
        step.rep_rows = collective.gather_rows(step.rep_rows)


def representation_gram(setup: Setup, step: Step) -> None:
    """Representation mode, data parallel: ``step.rep_gram`` = the Gram matrix of the global
    rows at z and ``step.grad_norms`` its diagonal's roots, each task's own gradients averaged
    (one bucketed all-reduce of T² floats and those gradients). Rank r's rows are
    ``R_r = ∇_{z_r} ℓ̃^r`` on its own samples; the global batch's are ``[R_1 … R_W] / W``, so
    ``R Rᵀ = (1/W²) Σ_r R_r R_rᵀ``. One process: nothing (the weighting reads the rows)."""
    collective = setup.collective
    if collective is None:
        return
    assert step.rep_rows is not None
    local = gram_matrix(step.rep_rows).contiguous()
    reduced = collective.mean([local, *(g for gs in step.task_grads for g in gs)])
    world = collective.world_size
    gram = reduced[0]
    assert gram is not None
    step.rep_gram = gram / world
    step.task_grads = combine.split(reduced[1:], step.task_grads)
    step.grad_norms = torch.diagonal(step.rep_gram).clamp_min(0).sqrt()


def combined(setup: Setup, step: Step, task_grads: bool = True) -> None:
    """After the one combined backward of a loss- or representation-level method or of a fast
    mode (direct step): the shared, tables' and (``task_grads``: unless a fast mode reduced
    them with its rows) task-specific gradients averaged — EW's traffic — and the norms the
    check reads recomputed from them."""
    collective = setup.collective
    if collective is None or step.accumulated is not None:
        return
    shared = step.shared_grads or []
    own = step.task_grads if task_grads else []
    replicated = perrank.replicated_only(setup, step.table_grads)
    flat = collective.mean([*shared, *(g for gs in own for g in gs), *replicated])
    parts = combine.split(flat, [shared, *own, step.table_grads])
    if step.shared_grads is not None:
        step.shared_grads = parts[0]
    if task_grads:
        step.task_grads = parts[1:-1]
    step.table_grads = perrank.reduced(setup, step.table_grads, parts[-1])
    perrank.global_norms(setup, step)
    step.combined = [g for g in [*parts[0], *step.table_grads] if g is not None]
    step.combined_norms = perrank.norms(step, step.combined) if step.combined else None


def table_grads(setup: Setup, step: Step) -> None:
    """After the tables' one backward of ``Σ_t c_t ℓ̃_t`` (gradient level, direct step): their
    gradients averaged (dense: all-reduce; sparse: gathered and summed); a per-rank table's
    local gradient times 1/W instead, and its global norm (:mod:`.perrank`)."""
    collective = setup.collective
    if collective is None or step.accumulated is not None:
        return
    averaged = collective.mean(perrank.replicated_only(setup, step.table_grads))
    step.table_grads = perrank.reduced(setup, step.table_grads, averaged)
    perrank.global_norms(setup, step)


def _warn_unreduced(setup: Setup) -> None:
    if "unreduced" in setup.warned:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        setup.warned.add("unreduced")
        warnings.warn(
            f"mtlbalance: torch.distributed is initialised with {dist.get_world_size()} "
            f"processes but the Balancer has no process_group: it averages nothing across "
            f"the ranks, and DistributedDataParallel does not either (the Balancer writes "
            f".grad without a .backward(), so DDP's hooks never fire). Unless something else "
            f"averages the losses and gradients it reads (mtlrec's global_mean_losses and "
            f"DenseGradSync do), each rank balances its own shard: pass "
            f"process_group='world' (or a group) for data-parallel balancing",
            stacklevel=4,
        )
