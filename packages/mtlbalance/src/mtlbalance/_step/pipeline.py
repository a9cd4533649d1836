"""The order of the stages of one balancing step (see docs/architecture.md)::

    inputs → transform → engine → reduce → check → weighting / aggregation
           → [tables | combine → check] → write-back → stats

with the loss scale in at the seed of every backward and out of what it returns
(:mod:`.scaling`), and an accumulated step entering at the engine stage with its sums
(:mod:`.accumulate`). The check runs once where the gradients the state depends on exist:
before a gradient-level aggregator (its state: moving averages, step counts), after the one
combined backward of a loss- or representation-level method (and, for a representation
method under a loss scale, also before its weighting: its solver must not see an overflow).
"""

from __future__ import annotations

from ..stats import BalanceStats
from . import accumulate, check, combine, engine, fast, reduce, stats, tables, weighting, writeback
from .context import Setup, Step


def run(setup: Setup, step: Step) -> BalanceStats:
    """Run the stages after inputs and transform (done by the Balancer: they differ between
    a direct and an accumulated step); returns the stats (``skipped`` when a loss-scale
    overflow was found: then nothing was written). An approximate mode (``Balancer(mode=)``)
    replaces the engine stage and what it feeds (:mod:`.fast`), except on a periodic mode's
    exact steps."""
    mode = setup.mode
    if mode.approximate:
        if not mode.refresh_due():
            return fast.run(setup, step)
        step.mode = "periodic/exact"
        return fast.refreshed(setup, step, _exact(setup, step))
    return _exact(setup, step)


def _exact(setup: Setup, step: Step) -> BalanceStats:
    """The exact path (Algorithm 1 for DB-MTL)."""
    requires = setup.aggregator.requires
    if step.accumulated is None:
        engine.run(setup, step)
    else:
        accumulate.products(setup, step)
    reduce.run(setup, step)
    engine.measure(setup, step)
    if requires == "jacobian" or (requires == "representation" and step.scale is not None):
        rows = step.rows if step.rows is not None else step.rep_rows
        if check.gate(
            setup, step, row_norms=step.grad_norms, rows=rows, task_grads=step.task_grads
        ):
            return stats.skipped(setup, step)
        if requires == "representation":
            step.grad_norms = None  # (only the check reads them)
    saved = tables.save_state(setup, step) if requires == "jacobian" else None
    weighting.run(setup, step)
    if requires == "jacobian":
        if setup.tables and tables.run(setup, step, saved):
            return stats.skipped(setup, step)
    else:
        combine.run(setup, step)
        reduce.combined(setup, step)
        if check.gate_combined(setup, step):
            return stats.skipped(setup, step)
    writeback.write(setup, step)
    return stats.build(setup, step)
