"""Stage "weighting / aggregation": what the method decides from what it reads.

* gradient level (:class:`~mtlbalance.aggregators.GradientAggregator`): the rows in, the
  shared update out, written into the free update buffer of the write-back stage (no copy);
  a Gram-only method (:class:`~mtlbalance.aggregators.GramWeighting`) is its weighting of
  the Gram matrix, ``w = weigh(J Jᵀ)``, aggregated as ``wᵀ J``;
* loss level (:class:`~mtlbalance.aggregators.LossWeighting`): weights from the losses;
* representation level (:class:`~mtlbalance.aggregators.RepresentationWeighting`): weights
  from the rows at the representation.

The last two are aggregated by one backward of ``Σ_t w_t ℓ̃_t`` (:mod:`.combine`).
"""

from __future__ import annotations

from ..aggregators.base import GradientAggregator, LossWeighting, RepresentationWeighting
from .context import Setup, Step


def run(setup: Setup, step: Step) -> None:
    """Fill ``step.weights`` (and, at the gradient level, ``task_weights`` and the update)."""
    aggregator = setup.aggregator
    losses = step.vec.detach()
    if isinstance(aggregator, GradientAggregator):
        assert step.rows is not None
        step.update_index, update = setup.buffers.free()
        result = aggregator(step.rows, update, losses=losses)
        step.weights, step.task_weights = result.weights, result.task_weights
    elif isinstance(aggregator, LossWeighting):
        weights = aggregator(losses, step.transformed)
        step.weights = None if weights is None else weights.detach()
    elif isinstance(aggregator, RepresentationWeighting):
        assert step.rep_rows is not None
        step.weights = aggregator(step.rep_rows, losses=losses).detach()
    else:  # pragma: no cover - guarded by the Aggregator types
        raise ValueError(f"unknown aggregator requirement {aggregator.requires!r}")
