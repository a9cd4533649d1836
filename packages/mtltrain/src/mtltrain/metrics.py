"""Evaluation metrics for :class:`~mtltrain.trainer.Trainer` tasks.

A metric follows a small streaming protocol — ``reset()``, ``update(pred, target)`` per batch,
``compute() -> float`` — and says whether a higher value is better (``higher_is_better``), which
Δp needs. Two kinds cover most needs:

- :class:`MeanError`: mean absolute or squared error, accumulated on the device in float64
  (no host sync per batch); ``scale`` converts units (e.g. eV -> meV).
- :class:`Collect`: keeps every prediction and target (on the host) and calls a function of
  the whole arrays at the end — the way to use scikit-learn's metrics
  (``Collect(sklearn.metrics.roc_auc_score, higher_is_better=True, prob=torch.sigmoid)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Collect", "MeanError", "Metric"]


@runtime_checkable
class Metric(Protocol):
    """What the trainer needs of a metric."""

    higher_is_better: bool

    def reset(self) -> None: ...

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self) -> float: ...


class MeanError:
    """Mean absolute (``kind="mae"``) or squared (``"mse"``) error over all elements seen,
    times ``scale``. Lower is better."""

    higher_is_better = False

    def __init__(self, kind: str = "mae", *, scale: float = 1.0) -> None:
        if kind not in ("mae", "mse"):
            raise ValueError(f"kind must be 'mae' or 'mse', not {kind!r}")
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, not {scale!r}")
        self.kind = kind
        self.scale = float(scale)
        self._sum: Tensor | None = None
        self._count = 0

    def reset(self) -> None:
        self._sum = None
        self._count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred, target = _same_shape(pred, target)
        diff = pred.detach().double() - target.detach().double()
        err = diff.abs() if self.kind == "mae" else diff.square()
        total = err.sum()
        self._sum = total if self._sum is None else self._sum + total
        self._count += err.numel()

    def compute(self) -> float:
        if self._sum is None or self._count == 0:
            raise ValueError(f"{self!r}: no predictions were given (empty evaluation loader?)")
        return float(self._sum) / self._count * self.scale

    def __repr__(self) -> str:
        return f"MeanError({self.kind!r}, scale={self.scale:g})"


class Collect:
    """Collect predictions and targets, then ``fn(targets, predictions)`` on numpy arrays
    (scikit-learn's argument order: ``y_true, y_score``).

    Args:
        fn: the metric of the whole evaluation set, e.g. ``sklearn.metrics.roc_auc_score``.
        higher_is_better: the metric's direction (for Δp and model selection).
        prob: applied to the predictions first (e.g. ``torch.sigmoid`` for logits).
    """

    def __init__(
        self,
        fn: Callable[[Any, Any], float],
        *,
        higher_is_better: bool,
        prob: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        self.fn = fn
        self.higher_is_better = bool(higher_is_better)
        self.prob = prob
        self._preds: list[Tensor] = []
        self._targets: list[Tensor] = []

    def reset(self) -> None:
        self._preds.clear()
        self._targets.clear()

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred, target = _same_shape(pred, target)
        pred = pred.detach().float()
        if self.prob is not None:
            pred = self.prob(pred)
        self._preds.append(pred.reshape(-1).cpu())
        self._targets.append(target.detach().reshape(-1).cpu())

    def compute(self) -> float:
        if not self._preds:
            raise ValueError(f"{self!r}: no predictions were given (empty evaluation loader?)")
        preds = torch.cat(self._preds).double().numpy()
        targets = torch.cat(self._targets).numpy()
        return float(self.fn(targets, preds))

    def __repr__(self) -> str:
        return f"Collect({getattr(self.fn, '__name__', self.fn)!r})"


def _same_shape(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        if pred.numel() == target.numel():
            return pred.reshape(target.shape), target
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} does not match target shape "
            f"{tuple(target.shape)}"
        )
    return pred, target
