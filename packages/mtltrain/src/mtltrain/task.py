"""One task of a multi-task problem: its training loss and its evaluation metrics.

The value type that domain packages hand to the trainer (inside a
:class:`~mtltrain.problem.Problem`), in a module of its own so that they need not import the
training loop to describe a task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from .metrics import Metric

__all__ = ["Task"]


@dataclass(frozen=True)
class Task:
    """One task: its training loss ``loss(pred, target) -> scalar`` and its evaluation
    metrics (name -> :class:`~mtltrain.metrics.Metric`, each knowing its direction)."""

    name: str
    loss: Callable[[Tensor, Tensor], Tensor]
    metrics: Mapping[str, Metric]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"task name must be a non-empty str, not {self.name!r}")
        if not callable(self.loss):
            raise TypeError(f"task {self.name!r}: loss must be callable")
        for metric_name, metric in self.metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"task {self.name!r}: metric {metric_name!r} must have reset/update/compute "
                    f"and higher_is_better (see mtltrain.metrics), not {type(metric).__name__}"
                )

    @property
    def directions(self) -> dict[str, bool]:
        """metric -> higher is better."""
        return {m: metric.higher_is_better for m, metric in self.metrics.items()}
