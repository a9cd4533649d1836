"""Gradient accumulation: each micro-batch's raw per-task gradients are summed here; the step
that ends the accumulation then runs the same stages as a direct step, on the means.

Per micro-batch (:func:`add`): the raw rows ``∇θ ℓ_t`` through the engine (seeded with ones,
or the loss scale; unscaled at once), each task's own parameters' gradients, and with tables
one backward per task into the tables (their factors are known only at the end); plain EW
keeps the single sum ``Σ_t ∇ℓ_t``. At the end (:func:`products`), the means, with the
transform's Jacobian applied: row t = ``Σ_s D_ts mean ∇ℓ_s`` — equal to a direct step on the
whole batch for mean-reduced losses of equal micro-batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..aggregators.sum import Sum
from ..engines.base import write_row
from ..transforms.identity import Identity
from . import check, combine, engine, inputs, perrank, scaling
from .context import Accumulation, Grads, Setup, Step


def _owned(grads: Grads, scale: Tensor | None) -> Grads:
    """Copies the accumulation owns (the division by the loss scale makes them)."""
    if scale is not None:
        return scaling.unscaled(grads, scale)
    return [None if g is None else g.detach().clone() for g in grads]


def add(
    setup: Setup,
    acc: Accumulation | None,
    raw: list[Tensor],
    scale: Tensor | None,
    representation: inputs.Representation,
) -> Accumulation:
    """Add one micro-batch (nothing is read on the host: an overflow stays in the sums)."""
    if setup.mode.name == "representation":
        raise ValueError(
            "mode='representation' weighs the norms of the gradients at the shared "
            "representation of the whole batch and cannot accumulate micro-batches; use "
            "mode='probe' or 'periodic' (they accumulate), or a larger batch"
        )
    perrank.refuse_accumulation(setup)
    vec = torch.stack(raw).detach()
    layout, task_params, tables = setup.layout, setup.task_params, setup.table_params
    transform, aggregator = setup.transform, setup.aggregator
    plain_sum = (
        type(transform) is Identity
        and type(aggregator) is Sum
        and not any(True for _ in transform.parameters())
    )
    table_rows: list[Grads] = []
    if plain_sum:  # EW: the sum of the task gradients is all that is needed
        flat_task = [p for ps in task_params for p in ps]
        grads = combine.backward(
            torch.stack(raw),
            None,
            [*layout.params, *flat_task, *tables],
            retain_graph=setup.options.retain_graph,
            grad_output=scale,
        )
        table_rows = [grads[len(grads) - len(tables) :]]
        dense = grads[: len(grads) - len(tables)]
        shared = dense[: len(layout.params)]
        rows = torch.empty(1, layout.total, device=layout.device, dtype=layout.dtype)
        write_row(rows[0], shared, layout)
        reached = [g is not None for g in shared]
        task_grads = combine.split(dense[len(layout.params) :], task_params)
    else:  # raw rows ∇θ ℓ_t; the transform's seed is applied to the means at the end
        seed = torch.ones_like(vec) if scale is None else scale.expand_as(vec).clone()
        zs = inputs.representation(representation)
        rows = setup.engine.rows(len(raw), layout)
        result = setup.engine.compute(
            engine.engine_inputs(setup, raw, seed, zs), rows, setup.engine_retains_graph
        )
        reached, task_grads = result.reached, result.task_grads
        for t, loss in enumerate(raw) if tables else ():
            keep = setup.options.retain_graph or t < len(raw) - 1
            table_rows.append(
                list(
                    torch.autograd.grad(
                        loss, tables, grad_outputs=scale, retain_graph=keep, allow_unused=True
                    )
                )
            )
    if scale is not None:
        scaling.unscale_(rows, scale)
    owned = [_owned(gs, scale) for gs in task_grads]
    owned_tables = [_owned(gs, scale) for gs in table_rows]
    scale_bad = None if scale is None else scaling.bad_flag(scale)
    table_reached = [any(gs[j] is not None for gs in table_rows) for j in range(len(tables))]
    if acc is None:
        return Accumulation(
            count=1,
            loss_sum=vec.clone(),
            rows=rows.clone(),
            task_grads=owned,
            reached=list(reached),
            plain_sum=plain_sum,
            engine=None if plain_sum else setup.engine.label,
            scale_bad=scale_bad,
            table_grads=owned_tables,
            table_reached=table_reached,
        )
    acc.count += 1
    acc.loss_sum += vec
    acc.rows += rows
    acc.reached = [a or b for a, b in zip(acc.reached, reached, strict=True)]
    if scale_bad is not None:
        acc.scale_bad = scale_bad if acc.scale_bad is None else acc.scale_bad | scale_bad
    acc.table_reached = [a or b for a, b in zip(acc.table_reached, table_reached, strict=True)]
    for sums, new in zip([*acc.task_grads, *acc.table_grads], [*owned, *owned_tables], strict=True):
        for i, g in enumerate(new):
            if g is not None:
                prev = sums[i]
                sums[i] = g if prev is None else prev.add_(g)
    return acc


def products(setup: Setup, step: Step) -> None:
    """What the engine stage gives a direct step, from the sums: at the gradient level the
    rows ``Σ_s D_ts mean ∇ℓ_s`` and task t's own ``D_tt mean ∇ψ_t ℓ_t``; for the other
    levels the mean rows stay in the accumulation (:mod:`.combine` reads them)."""
    acc = step.accumulated
    assert acc is not None
    check.reached(setup, acc.reached)
    check.tables_reached(setup, acc.table_reached)
    rows = acc.rows.div_(acc.count)
    if setup.aggregator.requires != "jacobian":
        return
    seed = step.seed
    diagonal = seed if seed.dim() == 1 else seed.diagonal()
    if seed.dim() == 1:
        rows.mul_(seed[:, None].to(rows.dtype))
    else:
        rows = seed.to(rows.dtype) @ rows
    step.rows = rows
    step.task_grads = combine.scaled_(acc.task_grads, diagonal / acc.count)
    step.engine = acc.engine
