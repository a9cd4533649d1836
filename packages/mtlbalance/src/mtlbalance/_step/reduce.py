"""Stage "reduce": where what the weighting stage reads is made the same on every process.

A no-op today (one process). Data-parallel balancing fills it: every rank holds the per-task
quantities of its own shard of the batch, and every rank must compute the same update, so
they are averaged across ranks here, before anything reads them — the (T, P) rows (exact,
T × EW's all-reduce traffic), or for a Gram-only weighting the T × T Gram matrix, or the
representation rows, or for a loss-level method the losses; a fast mode reduces its few
floats. Nothing before this stage may read them, nothing after it runs per rank: the check,
the weighting, the tables and the write-back see reduced values only, and the norms of the
rows (``engine.measure``) are taken after it.
"""

from __future__ import annotations

from .context import Setup, Step


def run(setup: Setup, step: Step) -> None:
    """Reduce the step's per-task quantities across processes (nothing to do with one)."""
