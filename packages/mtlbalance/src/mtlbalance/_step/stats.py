"""Stage "stats": what the step reports, as device tensors (no host sync)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..stats import BalanceStats
from .context import Setup, Step


def _loss_level_table_factors(setup: Setup, step: Step) -> Tensor | None:
    """A loss- or representation-level method's tables get its loss weights (1 for EW)."""
    if not setup.tables:
        return None
    vec = step.vec.detach()
    if step.weights is None:
        return torch.ones_like(vec)
    return step.weights.detach().to(device=vec.device, dtype=vec.dtype)


def build(setup: Setup, step: Step) -> BalanceStats:
    gradient_level = setup.aggregator.requires == "jacobian"
    return BalanceStats(
        task_names=setup.task_names,
        losses=step.vec.detach(),
        transformed=step.transformed,
        grad_norms=step.grad_norms,
        weights=step.weights,
        update_norm=step.update_norm,
        engine=step.engine,
        table_factors=step.table_factors
        if gradient_level
        else _loss_level_table_factors(setup, step),
        mode=step.mode,
    )


def skipped(setup: Setup, step: Step) -> BalanceStats:
    """The stats of a step skipped for a non-finite scaled gradient: nothing was written;
    what was computed before the check is reported (the rows' norms show which overflowed)."""
    return BalanceStats(
        task_names=setup.task_names,
        losses=step.vec.detach(),
        transformed=step.transformed,
        grad_norms=step.grad_norms,
        weights=step.weights,
        update_norm=None,
        engine=step.engine,
        skipped=True,
        mode=step.mode,
    )
