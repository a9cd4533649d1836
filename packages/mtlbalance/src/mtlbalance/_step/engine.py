"""Stage "engine": the per-task quantities the method reads, from the graph.

* gradient-level methods: the rows ``∇θ ℓ̃_t`` of the (T, P) matrix, written by the gradient
  engine (loop, batched, representation, auto) into one preallocated flat buffer, and each
  task's own parameters' gradients;
* representation-level methods: the rows ``∇_z ℓ̃_t`` (T, R) at the shared representation;
* loss-level methods: nothing (their one backward comes after the weighting, in
  :mod:`.combine`).

Every backward here is seeded with ``S ∂ℓ̃/∂ℓ`` and its results are unscaled at once
(:mod:`.scaling`). An accumulated step takes these quantities from its sums instead
(:mod:`.accumulate`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engines import EngineInputs
from . import check, scaling
from .context import Setup, Step


def engine_inputs(
    setup: Setup,
    raw: list[Tensor] | None,
    seed: Tensor,
    representation: tuple[Tensor, ...] | None,
) -> EngineInputs:
    """What a gradient engine needs: the graph-attached losses and the seed of their
    backward (``S ∂ℓ̃/∂ℓ``; ones — or S — for an accumulation's raw rows)."""
    assert raw is not None
    return EngineInputs(
        losses=raw,
        seed=seed,
        layout=setup.layout,
        task_params=setup.task_params,
        representation=representation,
    )


def run(setup: Setup, step: Step) -> None:
    """Fill ``step.rows`` / ``task_grads`` / ``engine`` (gradient level) or ``rep_rows``
    (representation level), unscaled."""
    requires = setup.aggregator.requires
    if requires == "jacobian":
        _rows(setup, step)
    elif requires == "representation":
        _representation_rows(setup, step)


def _rows(setup: Setup, step: Step) -> None:
    assert step.backward_seed is not None
    inputs = engine_inputs(setup, step.raw, step.backward_seed, step.representation)
    rows = setup.engine.rows(inputs.num_tasks, setup.layout)
    result = setup.engine.compute(inputs, rows, setup.engine_retains_graph)
    step.engine = setup.engine.label
    check.reached(setup, result.reached)
    step.task_grads = result.task_grads
    if step.scale is not None:  # unscale before anything reads them
        scaling.unscale_(rows, step.scale)
        step.task_grads = [scaling.unscaled(gs, step.scale) for gs in step.task_grads]
    step.rows = rows


def _representation_rows(setup: Setup, step: Step) -> None:
    zs = step.representation
    if zs is None:
        raise ValueError(
            f"{type(setup.aggregator).__name__} works on the shared representation: call "
            f"balancer.backward(losses, representation=z)"
        )
    assert step.backward_seed is not None
    inputs = engine_inputs(setup, step.raw, step.backward_seed, step.representation)
    rows = []
    for t in range(inputs.num_tasks):
        outputs, seeds = inputs.row_seed(t)
        grads = torch.autograd.grad(
            outputs, zs, grad_outputs=seeds, retain_graph=True, allow_unused=True
        )
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(z) if g is None else g).reshape(-1)
                    for z, g in zip(zs, grads, strict=True)
                ]
            )
        )
    rep = torch.stack(rows)
    if step.scale is not None:  # unscaled in float32 at least (fp16 z: no new underflow)
        rep = rep.to(torch.promote_types(rep.dtype, step.scale.dtype))
        scaling.unscale_(rep, step.scale)
    step.rep_rows = rep


def measure(setup: Setup, step: Step) -> None:
    """``step.grad_norms``: the norms of the rows (after the reduce stage: of the reduced
    rows), in float32 at least; for representation rows only under a loss scale (the check
    needs them then)."""
    if step.rows is not None:
        step.grad_norms = torch.linalg.vector_norm(
            step.rows, dim=1, dtype=setup.layout.state_dtype()
        )
    elif step.rep_rows is not None and step.scale is not None:
        step.grad_norms = torch.linalg.vector_norm(step.rep_rows, dim=1)
