"""Losses and evaluation metrics per task kind, as :class:`mtltrain.Task` pieces.

- ``binary`` (the model outputs a logit): loss ``BCEWithLogits``; metrics ``auc``
  (``sklearn.metrics.roc_auc_score``, higher is better) and ``logloss``
  (``sklearn.metrics.log_loss``, lower is better), both on ``σ(logit)``.
- ``regression`` (the model outputs the value): loss ``MSE``; metrics ``mae`` and ``mse``
  (:class:`mtltrain.metrics.MeanError`, lower is better). A task trained on a standardised
  target ``(y - μ) / σ`` (:class:`mtlrec.data.Label` ``standardize``) reports them in the
  label's own units with ``target_std=σ``: ``MAE_y = σ · MAE``, ``MSE_y = σ² · MSE`` (the
  shift ``μ`` cancels in a difference), so Δp compares errors in the units of the data.
- ``multiclass`` (the model outputs ``(N, C)`` logits, the target is the class index):
  loss cross-entropy; metrics ``accuracy`` and ``macro_f1`` (higher is better) and
  ``logloss`` (lower is better), with scikit-learn on ``softmax(logits)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtltrain.metrics import Collect, MeanError, Metric
from mtltrain.task import Task

from .models.base import TASK_KINDS

__all__ = [
    "ClassMetric",
    "auc",
    "log_loss",
    "make_task",
    "make_tasks",
    "task_loss",
    "task_metrics",
]


def auc(y_true: Any, y_score: Any) -> float:
    """ROC AUC (scikit-learn); fails with a clear error when only one class is present."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, y_score))


def log_loss(y_true: Any, y_prob: Any) -> float:
    """Binary log loss (scikit-learn), labels fixed to ``{0, 1}`` so an evaluation set with a
    single class still has a value."""
    from sklearn.metrics import log_loss as sk_log_loss

    return float(sk_log_loss(y_true, y_prob, labels=[0, 1]))


class ClassMetric:
    """A metric of a multiclass task: keeps ``softmax(logits)`` ``(N, C)`` and the class
    indices, then scikit-learn on the whole evaluation set (``accuracy_score``,
    ``f1_score(average="macro")`` or ``log_loss``, every class ``0..C-1`` counted even when
    absent from the set)."""

    _KINDS: ClassVar[dict[str, bool]] = {"accuracy": True, "macro_f1": True, "logloss": False}

    def __init__(self, kind: str, num_classes: int) -> None:
        if kind not in self._KINDS:
            raise ValueError(f"kind must be one of {sorted(self._KINDS)}, not {kind!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, not {num_classes!r}")
        self.kind = kind
        self.num_classes = num_classes
        self.higher_is_better = self._KINDS[kind]
        self._probs: list[Tensor] = []
        self._targets: list[Tensor] = []

    def reset(self) -> None:
        self._probs.clear()
        self._targets.clear()

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.dim() != 2 or pred.shape[1] != self.num_classes or pred.shape[0] != len(target):
            raise ValueError(
                f"multiclass predictions must be (N, {self.num_classes}) logits for N targets; "
                f"got {tuple(pred.shape)} for {tuple(target.shape)}"
            )
        self._probs.append(torch.softmax(pred.detach().double(), dim=1).cpu())
        self._targets.append(target.detach().reshape(-1).long().cpu())

    def compute(self) -> float:
        if not self._probs:
            raise ValueError(f"{self!r}: no predictions were given (empty evaluation loader?)")
        from sklearn.metrics import accuracy_score, f1_score
        from sklearn.metrics import log_loss as sk_log_loss

        probs = torch.cat(self._probs).numpy()
        y = torch.cat(self._targets).numpy()
        labels = list(range(self.num_classes))
        if self.kind == "logloss":
            return float(sk_log_loss(y, probs, labels=labels))
        pred = np.argmax(probs, axis=1)
        if self.kind == "accuracy":
            return float(accuracy_score(y, pred))
        return float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))

    def __repr__(self) -> str:
        return f"ClassMetric({self.kind!r}, num_classes={self.num_classes})"


def _check_kind(kind: str) -> None:
    if kind not in TASK_KINDS:
        raise ValueError(f"task kind must be one of {TASK_KINDS}, not {kind!r}")


def task_metrics(
    kind: str, *, target_std: float = 1.0, num_classes: int | None = None
) -> dict[str, Metric]:
    """Fresh metrics for a task kind: ``{"auc", "logloss"}`` (binary), ``{"mae", "mse"}``
    (regression; ``target_std`` σ of a standardised target puts them in the label's units)
    or ``{"accuracy", "macro_f1", "logloss"}`` (multiclass, ``num_classes`` needed)."""
    _check_kind(kind)
    if kind == "binary":
        return {
            "auc": Collect(auc, higher_is_better=True, prob=torch.sigmoid),
            "logloss": Collect(log_loss, higher_is_better=False, prob=torch.sigmoid),
        }
    if kind == "multiclass":
        if num_classes is None:
            raise ValueError("multiclass metrics need num_classes")
        return {k: ClassMetric(k, num_classes) for k in ("accuracy", "macro_f1", "logloss")}
    if not (isinstance(target_std, int | float) and math.isfinite(target_std) and target_std > 0):
        raise ValueError(f"target_std must be a positive number, not {target_std!r}")
    return {
        "mae": MeanError("mae", scale=float(target_std)),
        "mse": MeanError("mse", scale=float(target_std) ** 2),
    }


def _bce(pred: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(pred.reshape(target.shape), target.to(pred.dtype))


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(pred.reshape(target.shape), target.to(pred.dtype))


def _cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(pred, target.long())


def task_loss(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``(prediction, target) -> scalar``: BCE-with-logits (binary), MSE (regression) or
    cross-entropy of ``(N, C)`` logits against class indices (multiclass)."""
    _check_kind(kind)
    return {"binary": _bce, "regression": _mse, "multiclass": _cross_entropy}[kind]


def make_task(
    name: str,
    kind: str,
    metrics: Sequence[str] | None = None,
    *,
    target_std: float = 1.0,
    num_classes: int | None = None,
) -> Task:
    """A :class:`mtltrain.Task` with the kind's loss and metrics (``metrics`` keeps a subset,
    in that order; the first is the one Δp weighs like any other). ``target_std``: σ of a
    standardised regression target (metrics in the label's units); ``num_classes``: for a
    multiclass task."""
    available = task_metrics(kind, target_std=target_std, num_classes=num_classes)
    if metrics is not None:
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise ValueError(
                f"task {name!r}: metrics {unknown} are not available for kind {kind!r}; "
                f"choose from {sorted(available)}"
            )
        available = {m: available[m] for m in metrics}
    return Task(name, task_loss(kind), available)


def make_tasks(
    kinds: Mapping[str, str],
    *,
    target_std: Mapping[str, float] | None = None,
    num_classes: Mapping[str, int] | None = None,
) -> list[Task]:
    """One :func:`make_task` per ``{task: kind}`` (e.g. ``model.task_kinds``), with each
    task's ``target_std`` / ``num_classes`` where given (e.g. from
    :meth:`mtlrec.data.FittedFeatures.label_scale` and ``.num_classes``)."""
    stds = dict(target_std or {})
    classes = dict(num_classes or {})
    return [
        make_task(name, kind, target_std=stds.get(name, 1.0), num_classes=classes.get(name))
        for name, kind in kinds.items()
    ]
