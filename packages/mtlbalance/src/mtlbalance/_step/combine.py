"""Aggregation by one backward: the gradient of ``Σ_t c_t ℓ̃_t`` = ``Σ_s (cᵀ ∂ℓ̃/∂ℓ)_s ℓ_s``.

Loss- and representation-level methods are aggregated this way (into the shared, the
task-specific and the tables' parameters: the cost of EW), and so are the tables of a
gradient-level method (:mod:`.tables`). An accumulated step combines its stored sums with the
same coefficients instead of running a backward.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized

import torch
from torch import Tensor

from .._norms import norms
from . import check, scaling
from .context import Grads, Setup, Step


def coefficients(seed: Tensor, weights: Tensor | None) -> Tensor:
    """``c = wᵀ ∂ℓ̃/∂ℓ``: the coefficients of the raw losses in ``Σ_t w_t ℓ̃_t`` (``w = 1``
    for None)."""
    w = None if weights is None else weights.detach().to(seed.dtype)
    if seed.dim() == 1:
        return seed if w is None else seed * w
    return seed.sum(0) if w is None else w @ seed


def backward(
    vec: Tensor,
    coef: Tensor | None,
    targets: Sequence[Tensor],
    *,
    retain_graph: bool,
    grad_output: Tensor | None = None,
) -> Grads:
    """One backward of ``Σ_s c_s ℓ_s`` (``Σ_s ℓ_s`` for ``coef`` None, seeded with
    ``grad_output``) into ``targets``; None where a target is not reached."""
    total = vec.sum() if coef is None else (vec * coef).sum()
    return list(
        torch.autograd.grad(
            total,
            list(targets),
            grad_outputs=grad_output,
            retain_graph=retain_graph,
            allow_unused=True,
        )
    )


def scaled_(grads: list[Grads], factors: Tensor) -> list[Grads]:
    """Task t's gradients times ``factors[t]``, in place (the accumulation owns them)."""
    return [
        [None if g is None else g.mul_(factors[t].to(g.dtype)) for g in gs]
        for t, gs in enumerate(grads)
    ]


def combine_sums(rows: list[Grads], factors: Tensor) -> Grads:
    """``Σ_r factors[r] · rows[r][j]`` for each tensor j, in place (the accumulation owns the
    sums); a tensor no row reached stays None."""
    out: Grads = []
    for j in range(len(rows[0]) if rows else 0):
        total: Tensor | None = None
        for r, row in enumerate(rows):
            g = row[j]
            if g is None:
                continue
            g.mul_(factors[r].to(device=g.device, dtype=g.dtype))
            total = g if total is None else total.add_(g)
        out.append(total)
    return out


def split(grads: Sequence[Tensor | None], groups: Sequence[Sized]) -> list[Grads]:
    """A flat list of gradients cut into one list per group (of parameters, or of the
    gradients it was flattened from)."""
    out, i = [], 0
    for group in groups:
        out.append(list(grads[i : i + len(group)]))
        i += len(group)
    return out


def run(setup: Setup, step: Step) -> None:
    """The shared update, the task-specific and the tables' gradients of a loss- or
    representation-level method: ``step.shared_grads`` (one backward) or ``step.update``
    (from the sums), ``task_grads``, ``table_grads``, and ``combined`` with its norms."""
    if step.accumulated is not None:
        _from_sums(step)
        return
    assert step.backward_seed is not None
    shared, tables = setup.layout.params, setup.table_params
    coef = coefficients(step.backward_seed, step.weights)
    flat_task = [p for ps in setup.task_params for p in ps]
    grads = backward(
        step.vec, coef, [*shared, *flat_task, *tables], retain_graph=setup.options.retain_graph
    )
    num_dense = len(grads) - len(tables)
    dense = scaling.unscaled(grads[:num_dense], step.scale)
    table_grads = scaling.unscaled(grads[num_dense:], step.scale)
    shared_grads = dense[: len(shared)]
    check.reached(setup, [g is not None for g in shared_grads])
    check.tables_reached(setup, [g is not None for g in table_grads])
    step.shared_grads, step.table_grads = shared_grads, table_grads
    step.task_grads = split(dense[len(shared) :], setup.task_params)
    step.combined = [g for g in [*shared_grads, *table_grads] if g is not None]
    step.combined_norms = norms(step.combined) if step.combined else None


def _from_sums(step: Step) -> None:
    acc = step.accumulated
    assert acc is not None
    coef = coefficients(step.seed, step.weights)  # as the direct step's Σ_s c_s ℓ_s
    step.update = acc.rows[0] if acc.plain_sum else torch.mv(acc.rows.T, coef.to(acc.rows.dtype))
    step.task_grads = scaled_(acc.task_grads, coef / acc.count)
    row_factors = (  # plain EW keeps one row Σ_t ∇ℓ_t
        torch.full((1,), 1.0 / acc.count, dtype=coef.dtype, device=coef.device)
        if acc.plain_sum
        else coef / acc.count
    )
    step.table_grads = combine_sums(acc.table_grads, row_factors)
    step.combined = [step.update, *(g for g in step.table_grads if g is not None)]
    step.combined_norms = norms(step.combined)
