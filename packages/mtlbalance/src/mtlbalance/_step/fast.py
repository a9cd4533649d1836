r"""The approximate variants of the engine stage (``Balancer(mode=...)``), for gradient-level
methods. Each fills *fewer* per-task quantities than the exact (T, P) rows, turns them into
per-task factors ``c_t`` with the method's own rule, and ends in ONE backward of
``Σ_t c_t ℓ̃_t`` into every shared parameter (and the tables): the cost of EW plus the
small per-task part. What follows (check, write-back, stats) is the exact path's.

With ``g_t = ∇θ ℓ̃_t`` the exact rows over all shared parameters θ, and DB-MTL's max-norm
(:class:`~mtlbalance.aggregators.MaxNorm`) as the example:

* **probe** (θ_p ⊂ θ, default: the last shared layer every task reaches)::

      p_t = ∇_{θ_p} ℓ̃_t;   p̂_t ← β_k p̂_t + (1 − β_k) p_t;   c_t = max_s ‖p̂_s‖ / (‖p̂_t‖ + ε)
      shared update = ∇θ Σ_t c_t ℓ̃_t = Σ_t c_t g_t

  Departs from Algorithm 1 twice: the norms are those of θ_p's gradients, not θ's, and the
  update combines the current gradients g_t, not their moving averages ĝ_t (the EMA state is
  (T, |θ_p|) only). With θ_p = θ and β = 0 it is Algorithm 1. Any aggregator that reports
  per-task weights works the same way (a Gram weighting: ``c = weights(P Pᵀ)``).
* **representation** (needs ``representation=z``)::

      r_t = ∇_z ℓ̃_t (through the heads only);   n̂_t ← β_k n̂_t + (1 − β_k) ‖r_t‖
      c_t = max_s n̂_s / (n̂_t + ε);   shared update = Σ_t c_t g_t

  The EMA is of the norms, not of the rows (the rows of z change meaning with the batch);
  the norms are those at z, not at θ. A Gram weighting gets ``c = weights(R Rᵀ)``.
* **periodic** (period K)::

      step k ≡ 0 (mod K): the exact step (Algorithm 1), which gives c_t (its weights)
      otherwise:          shared update = Σ_t c_t g_t with the c_t of the last exact step

  The EMA ĝ and its step count advance on the exact steps only; the steps between combine
  the current g_t. K = 1 is Algorithm 1. Cost: ``1 + (T − 1)·B / (K·(F + B))`` of EW's.

Task t's own parameters get ``∇ψ_t ℓ̃_t`` (times the method's task weights, MGDA's or
Nash-MTL's) in every mode, as in Algorithm 1: probe and representation take them from their
per-task backward; periodic from the one backward, divided by ``c_t`` (a task with
``c_t = 0`` gets its own backward into its parameters).

An accumulated step (``accumulate``/``backward_accumulated``) stores the exact per-task rows
of each micro-batch (the factors are known only at the end), so it costs what an exact
accumulation costs and equals the mode on the whole batch; the representation mode cannot
accumulate (its norms need the whole batch at z).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor

from .._norms import norms
from ..aggregators.base import GramWeighting, gram_matrix
from ..engines import EngineInputs
from ..engines.base import task_param_grads
from ..stats import BalanceStats
from . import accumulate, check, combine, engine, reduce, scaling, stats, tables, writeback
from .context import Setup, Step
from .mode import default_probe


def run(setup: Setup, step: Step) -> BalanceStats:
    """One step of an approximate mode (not a periodic refresh: the pipeline runs that)."""
    mode = setup.mode
    step.mode = "periodic/reuse" if mode.name == "periodic" else mode.name
    if step.accumulated is not None:
        return _accumulated(setup, step)
    saved = None
    if step.scale_bad is not None and mode.name != "periodic":  # a skip restores the state
        saved = copy.deepcopy(setup.aggregator.state_dict())
    own_backward = mode.name == "periodic"
    if mode.name == "periodic":
        step.engine = "periodic (reused factors)"
        assert mode.factors is not None
        step.weights, step.task_weights = mode.factors, mode.task_weights
    else:
        if mode.name == "probe":
            _probe_rows(setup, step)
        else:
            _representation_rows(setup, step)
        if check.gate(
            setup, step, row_norms=step.grad_norms, rows=step.rows, task_grads=step.task_grads
        ):
            return stats.skipped(setup, step)
        _weigh(setup, step)
    _combined(setup, step, own_backward)
    reduce.combined(setup, step, task_grads=own_backward)
    if check.gate_combined(setup, step):
        if saved is not None:
            setup.aggregator.load_state_dict(saved)
        return stats.skipped(setup, step)
    writeback.write(setup, step)
    mode.count += 1
    return stats.build(setup, step)


def refreshed(setup: Setup, step: Step, result: BalanceStats) -> BalanceStats:
    """After a periodic mode's exact step: remember its factors."""
    if not result.skipped:
        mode = setup.mode
        method = setup.aggregator.name or type(setup.aggregator).__name__
        mode.remember(step.weights, step.task_weights, method)
        mode.count += 1
    return result


# ---------------------------------------------------------------- the engine variants
def _probe_rows(setup: Setup, step: Step) -> None:
    """``step.rows`` = the probe's rows (T, |θ_p|) and each task's own gradients."""
    mode = setup.mode
    if mode.probe is None:  # first step: the default probe, from the exact rows
        engine.run(setup, step)
        assert step.rows is not None
        _choose_probe(setup, step.rows)
        step.rows = step.rows.index_select(1, mode.probe_columns)
        step.engine = f"probe (chosen from exact rows: {step.engine})"
    else:
        assert step.backward_seed is not None and step.raw is not None
        inputs = EngineInputs(
            losses=step.raw,
            seed=step.backward_seed,
            layout=mode.probe_layout,
            task_params=setup.task_params,
            representation=step.representation,
        )
        slot = mode.probe_engine
        rows = slot.rows(inputs.num_tasks, mode.probe_layout)
        result = slot.compute(inputs, rows, True)
        step.task_grads = result.task_grads
        if step.scale is not None:
            scaling.unscale_(rows, step.scale)
            step.task_grads = [scaling.unscaled(gs, step.scale) for gs in step.task_grads]
        step.rows = rows
        step.engine = f"probe ({slot.label})"
    reduce.run(setup, step)
    step.grad_norms = torch.linalg.vector_norm(step.rows, dim=1, dtype=setup.layout.state_dtype())


def _choose_probe(setup: Setup, rows: Tensor) -> None:
    """The default probe (:func:`~._step.mode.default_probe`) from exact rows (T, P): which
    shared tensors each task's gradient reaches (a nonzero block)."""
    reached = torch.stack(
        [
            torch.linalg.vector_norm(rows[:, a:b], dim=1) > 0
            for a, b in itertools.pairwise(setup.layout.offsets)
        ],
        dim=1,
    )
    setup.mode.set_probe(default_probe(setup.layout, reached))


def _representation_rows(setup: Setup, step: Step) -> None:
    """``step.rep_rows`` (T, R) at z, their norms, each task's own gradients: one backward
    per task through its head only."""
    zs = step.representation
    if zs is None:
        raise ValueError(
            "mode='representation' reads the gradients at the shared representation: call "
            "balancer.backward(losses, representation=z) with z what the heads read"
        )
    assert step.backward_seed is not None and step.raw is not None
    inputs = EngineInputs(
        losses=step.raw,
        seed=step.backward_seed,
        layout=setup.layout,
        task_params=setup.task_params,
        representation=zs,
    )
    rows, own = [], []
    for t in range(inputs.num_tasks):
        gz, grads = task_param_grads(inputs, t, zs, True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(z) if g is None else g).reshape(-1)
                    for z, g in zip(zs, gz, strict=True)
                ]
            )
        )
        own.append(grads)
    rep = torch.stack(rows)
    rep = rep.to(torch.promote_types(rep.dtype, torch.float32))
    if step.scale is not None:
        scaling.unscale_(rep, step.scale)
        own = [scaling.unscaled(gs, step.scale) for gs in own]
    step.rep_rows, step.task_grads = rep, own
    step.engine = "representation (norms at z)"
    if setup.collective is None:
        step.grad_norms = torch.linalg.vector_norm(step.rep_rows, dim=1)
    else:
        reduce.representation_gram(setup, step)


def _weigh(setup: Setup, step: Step) -> None:
    """``step.weights`` = the factors ``c_t`` (and ``task_weights``) by the method's rule."""
    aggregator = setup.aggregator
    losses = step.vec.detach()
    method = aggregator.name or type(aggregator).__name__
    if step.rep_rows is not None:
        if isinstance(aggregator, GramWeighting):
            gram = gram_matrix(step.rep_rows) if step.rep_gram is None else step.rep_gram
            result = aggregator.weigh(gram, losses)
            weights, task_weights = result.weights, result.task_weights
        else:
            assert step.grad_norms is not None
            weights, task_weights = aggregator.weigh_norms(step.grad_norms), None  # type: ignore[operator]
    else:
        assert step.rows is not None
        result = aggregator(step.rows, setup.mode.scratch, losses=losses)
        weights, task_weights = result.weights, result.task_weights
    if weights is None:
        raise ValueError(
            f"mode={setup.mode.name!r} applies the method's per-task weights in one backward; "
            f"the {method!r} aggregator reports none: use mode='exact'"
        )
    step.weights = weights.detach()
    step.task_weights = None if task_weights is None else task_weights.detach()
    if setup.tables:
        step.table_factors = step.weights


# ---------------------------------------------------------------- the one backward
def _combined(setup: Setup, step: Step, own_backward: bool) -> None:
    """One backward of ``Σ_t c_t ℓ̃_t`` into the shared parameters, the tables and (periodic)
    the task parameters; ``shared_grads``, ``table_grads``, ``combined`` and its norms."""
    assert step.backward_seed is not None and step.weights is not None
    shared, table_params = setup.layout.params, setup.table_params
    c = step.weights.to(device=step.backward_seed.device, dtype=step.backward_seed.dtype)
    coef = combine.coefficients(step.backward_seed, c)
    flat_task = [p for ps in setup.task_params for p in ps] if own_backward else []
    zero: list[bool] = []
    if own_backward and flat_task:
        zero = (c == 0).cpu().tolist()
    keep = setup.options.retain_graph or any(zero)
    grads = combine.backward(
        step.vec, coef, [*shared, *flat_task, *table_params], retain_graph=keep
    )
    num_dense = len(grads) - len(table_params)
    dense = scaling.unscaled(grads[:num_dense], step.scale)
    step.table_grads = scaling.unscaled(grads[num_dense:], step.scale)
    shared_grads = dense[: len(shared)]
    check.reached(setup, [g is not None for g in shared_grads])
    check.tables_reached(setup, [g is not None for g in step.table_grads])
    step.shared_grads = shared_grads
    if own_backward:
        step.task_grads = _own_from_combined(
            setup, step, combine.split(dense[len(shared) :], setup.task_params), c, zero
        )
    if setup.tables:
        step.table_factors = step.weights
    step.combined = [g for g in [*shared_grads, *step.table_grads] if g is not None]
    step.combined_norms = norms(step.combined) if step.combined else None


def _own_from_combined(
    setup: Setup, step: Step, grads: list[list[Tensor | None]], c: Tensor, zero: list[bool]
) -> list[list[Tensor | None]]:
    """Task t's own gradients ``w_t ∇ψ_t ℓ̃_t`` from the combined ``c_t ∇ψ_t ℓ̃_t``: times
    ``w_t / c_t``; a task with ``c_t = 0`` gets its own backward (as in Algorithm 1)."""
    tw = step.task_weights
    step.task_weights = None  # applied here
    out: list[list[Tensor | None]] = []
    last = max((t for t, z in enumerate(zero) if z), default=-1)
    for t, gs in enumerate(grads):
        factor: Tensor | None
        if zero and zero[t] and setup.task_params[t]:
            assert step.backward_seed is not None and step.raw is not None
            outputs, seeds = EngineInputs(
                step.raw, step.backward_seed, setup.layout, setup.task_params
            ).row_seed(t)
            own = torch.autograd.grad(
                outputs,
                list(setup.task_params[t]),
                grad_outputs=seeds,
                retain_graph=setup.options.retain_graph or t < last,
                allow_unused=True,
            )
            gs = scaling.unscaled(list(own), step.scale)
            factor = None if tw is None else tw[t]
        else:
            factor = (torch.ones_like(c[t]) if tw is None else tw[t].to(c)) / c[t]
        if factor is not None:
            gs = [None if g is None else g * factor.to(g.dtype) for g in gs]
        out.append(gs)
    return out


# ---------------------------------------------------------------- accumulation
def _accumulated(setup: Setup, step: Step) -> BalanceStats:
    """The mode on the means of the micro-batches' exact rows: ``c`` from the probe's columns
    (probe) or the last exact step (periodic), update ``Σ_t c_t ḡ_t``."""
    mode = setup.mode
    accumulate.products(setup, step)
    reduce.run(setup, step)
    rows = step.rows
    assert rows is not None
    if mode.name == "probe":
        if mode.probe is None:
            _choose_probe(setup, rows)
        step.rows = rows.index_select(1, mode.probe_columns)
        step.grad_norms = torch.linalg.vector_norm(
            step.rows, dim=1, dtype=setup.layout.state_dtype()
        )
    else:
        engine.measure(setup, step)
    if check.gate(
        setup, step, row_norms=step.grad_norms, rows=step.rows, task_grads=step.task_grads
    ):
        return stats.skipped(setup, step)
    saved = tables.save_state(setup, step)
    if mode.name == "probe":
        _weigh(setup, step)
        step.engine = f"probe (accumulated: {step.engine})"
    else:
        assert mode.factors is not None
        step.weights, step.task_weights = mode.factors, mode.task_weights
        step.engine = "periodic (reused factors, accumulated)"
    assert step.weights is not None
    step.update_index, update = setup.buffers.free()
    torch.mv(rows.T, step.weights.to(rows.dtype), out=update)
    step.rows = rows
    if setup.tables and tables.run(setup, step, saved):
        return stats.skipped(setup, step)
    writeback.write(setup, step)
    mode.count += 1
    return stats.build(setup, step)
