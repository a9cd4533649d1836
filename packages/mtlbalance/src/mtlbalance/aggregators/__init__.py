"""Gradient aggregators (the gradient level of balancing)."""

from .base import (
    Aggregation,
    Aggregator,
    GradientAggregator,
    GramWeighting,
    LossWeighting,
    RepresentationWeighting,
    gram_matrix,
)
from .maxnorm import MaxNorm
from .sum import Sum

__all__ = [
    "Aggregation",
    "Aggregator",
    "GradientAggregator",
    "GramWeighting",
    "LossWeighting",
    "MaxNorm",
    "RepresentationWeighting",
    "Sum",
    "gram_matrix",
]
