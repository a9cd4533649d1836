"""Losses and evaluation metrics per task kind, as :class:`mtltrain.Task` pieces.

- ``binary`` (the model outputs a logit): loss ``BCEWithLogits``; metrics ``auc``
  (``sklearn.metrics.roc_auc_score``, higher is better) and ``logloss``
  (``sklearn.metrics.log_loss``, lower is better), both on ``σ(logit)``.
- ``regression`` (the model outputs the value): loss ``MSE``; metrics ``mae`` and ``mse``
  (:class:`mtltrain.metrics.MeanError`, lower is better).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtltrain.metrics import Collect, MeanError, Metric
from mtltrain.task import Task

from .models.base import TASK_KINDS

__all__ = ["auc", "log_loss", "make_task", "make_tasks", "task_loss", "task_metrics"]


def auc(y_true: Any, y_score: Any) -> float:
    """ROC AUC (scikit-learn); fails with a clear error when only one class is present."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, y_score))


def log_loss(y_true: Any, y_prob: Any) -> float:
    """Binary log loss (scikit-learn), labels fixed to ``{0, 1}`` so an evaluation set with a
    single class still has a value."""
    from sklearn.metrics import log_loss as sk_log_loss

    return float(sk_log_loss(y_true, y_prob, labels=[0, 1]))


def _check_kind(kind: str) -> None:
    if kind not in TASK_KINDS:
        raise ValueError(f"task kind must be one of {TASK_KINDS}, not {kind!r}")


def task_metrics(kind: str) -> dict[str, Metric]:
    """Fresh metrics for a task kind: ``{"auc", "logloss"}`` (binary) or ``{"mae", "mse"}``
    (regression)."""
    _check_kind(kind)
    if kind == "binary":
        return {
            "auc": Collect(auc, higher_is_better=True, prob=torch.sigmoid),
            "logloss": Collect(log_loss, higher_is_better=False, prob=torch.sigmoid),
        }
    return {"mae": MeanError("mae"), "mse": MeanError("mse")}


def _bce(pred: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(pred.reshape(target.shape), target.to(pred.dtype))


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(pred.reshape(target.shape), target.to(pred.dtype))


def task_loss(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``(prediction, target) -> scalar``: BCE-with-logits (binary) or MSE (regression)."""
    _check_kind(kind)
    return _bce if kind == "binary" else _mse


def make_task(name: str, kind: str, metrics: Sequence[str] | None = None) -> Task:
    """A :class:`mtltrain.Task` with the kind's loss and metrics (``metrics`` keeps a subset,
    in that order; the first is the one Δp weighs like any other)."""
    available = task_metrics(kind)
    if metrics is not None:
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise ValueError(
                f"task {name!r}: metrics {unknown} are not available for kind {kind!r}; "
                f"choose from {sorted(available)}"
            )
        available = {m: available[m] for m in metrics}
    return Task(name, task_loss(kind), available)


def make_tasks(kinds: Mapping[str, str]) -> list[Task]:
    """One :func:`make_task` per ``{task: kind}`` (e.g. ``model.task_kinds``)."""
    return [make_task(name, kind) for name, kind in kinds.items()]
