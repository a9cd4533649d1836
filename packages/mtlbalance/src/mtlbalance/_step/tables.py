"""Boundary stage "tables" (``Balancer(tables=...)``, approximate): after a gradient-level
aggregator has run on the exact shared part, the tables get ONE backward of ``Σ_t c_t ℓ̃_t``
with ``c_t`` the per-task weights the aggregator reports (ones, with a one-time warning, for a
method that reports none); an accumulated step combines its per-task sums instead.

Loss- and representation-level methods need no stage of their own: their one combined
backward includes the tables, which makes the tables' gradient exact for them.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor

from . import check, combine, reduce, scaling
from .context import Setup, Step


def save_state(setup: Setup, step: Step) -> dict[str, Any] | None:
    """Before the aggregator runs: a copy of its state when the tables' check may still skip
    the step (a loss scale was given), so that a skipped step leaves it untouched."""
    if setup.tables and step.scale_bad is not None:
        return copy.deepcopy(setup.aggregator.state_dict())
    return None


def factors(setup: Setup, weights: Tensor | None, vec: Tensor) -> Tensor:
    """The factors ``c_t`` of the tables' backward: the aggregator's reported per-task
    weights, or ones (with a one-time warning) for a method that reports none."""
    if weights is not None:
        return weights.detach().to(device=vec.device, dtype=vec.dtype)
    if "factors" not in setup.warned:
        setup.warned.add("factors")
        name = setup.aggregator.name or type(setup.aggregator).__name__
        warnings.warn(
            f"mtlbalance: the {name!r} aggregator reports no per-task weights, so the "
            f"tables get the gradient of Σ_t ℓ̃_t (c_t = 1, as EW) while the shared "
            f"parameters get {name}'s update; put the tables in `shared` for the exact "
            f"treatment",
            stacklevel=5,
        )
    return torch.ones_like(vec.detach())


def run(setup: Setup, step: Step, saved: dict[str, Any] | None) -> bool:
    """``step.table_factors`` and ``step.table_grads`` (unscaled), then their check. True:
    skip the step (the aggregator's state is restored from ``saved``)."""
    c = factors(setup, step.weights, step.vec)
    step.table_factors = c
    acc = step.accumulated
    if acc is None:
        assert step.backward_seed is not None
        coef = combine.coefficients(step.backward_seed, c.to(step.backward_seed.device))
        grads = combine.backward(
            step.vec, coef, setup.table_params, retain_graph=setup.options.retain_graph
        )
        check.tables_reached(setup, [g is not None for g in grads])
        step.table_grads = scaling.unscaled(grads, step.scale)
        reduce.table_grads(setup, step)
    else:  # ∇ Σ_t c_t ℓ̃_t = Σ_s (cᵀ D)_s mean ∇ℓ_s
        coef = combine.coefficients(step.seed, c.to(step.seed.device)) / acc.count
        step.table_grads = combine.combine_sums(acc.table_grads, coef)
    if check.gate_tables(setup, step):
        if saved is not None:
            setup.aggregator.load_state_dict(saved)
        return True
    return False
