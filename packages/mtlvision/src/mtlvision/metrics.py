"""The DB-MTL paper's vision metrics (Tables 1–4), as :class:`mtltrain.metrics.Metric` objects.

Each accumulates on the prediction's device (no host copy per batch) and is computed over the
whole evaluation set, in the units of the paper's tables:

- segmentation (``pred`` logits (B, C, H, W), ``target`` (B, H, W), -1 = not labelled):
  :class:`MeanIoU` — ``100 · mean_c TP_c / (TP_c + FP_c + FN_c)`` over the classes that occur
  in the ground truth or the prediction (LibMTL's mean would be NaN when one occurs in neither);
  :class:`PixelAccuracy` — ``100 · Σ_c TP_c / #labelled pixels``;
- depth (``pred``, ``target`` (B, 1, H, W), target 0 = no measurement): :class:`DepthError`
  ``abs`` — mean ``|d̂ − d|``, ``rel`` — mean ``|d̂ − d| / d``, over the pixels with a measurement
  (pooled over the set, not averaged per image);
- surface normals (``pred``, ``target`` (B, 3, H, W), target 0 = no normal):
  :class:`NormalAngle` — the angle ``acos(n̂ · n / (‖n̂‖ ‖n‖))`` in degrees per pixel with a
  normal; ``mean``, ``median`` (exact to 0.001°: a histogram of 180,000 bins) and
  ``within`` t (the percentage of pixels with an angle below t = 11.25, 22.5, 30);
- classification (``pred`` logits (B, C), ``target`` (B,)): :class:`Accuracy`, in percent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Accuracy", "DepthError", "MeanIoU", "NormalAngle", "PixelAccuracy"]


def _check(
    pred: Tensor, target: Tensor, pred_dims: int, what: str, target_shape: tuple[int, ...]
) -> None:
    if pred.dim() != pred_dims or tuple(target.shape) != target_shape:
        raise ValueError(
            f"{what}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} do not fit "
            f"(expected a {pred_dims}-d prediction and a target of shape {target_shape})"
        )


class _Confusion:
    higher_is_better = True

    def __init__(self, num_classes: int, *, ignore_index: int = -1) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, not {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix: Tensor | None = None

    def reset(self) -> None:
        self.matrix = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        c = self.num_classes
        _check(pred, target, 4, type(self).__name__, (pred.shape[0], *pred.shape[2:]))
        if pred.shape[1] != c:
            raise ValueError(f"{type(self).__name__}: {pred.shape[1]} class scores, expected {c}")
        labels = pred.detach().argmax(1).reshape(-1)
        truth = target.detach().reshape(-1).long()
        valid = (truth >= 0) & (truth < c) & (truth != self.ignore_index)
        counts = torch.bincount(c * truth[valid] + labels[valid], minlength=c * c).reshape(c, c)
        self.matrix = counts if self.matrix is None else self.matrix + counts

    def _matrix(self) -> Tensor:
        if self.matrix is None:
            raise ValueError(f"{type(self).__name__}: no predictions were given")
        m = self.matrix.double()
        if float(m.sum()) == 0:
            raise ValueError(f"{type(self).__name__}: no labelled pixel in the evaluation set")
        return m


class MeanIoU(_Confusion):
    """Mean intersection over union over the classes present (in %), from the confusion
    matrix ``M[true, predicted]``: ``IoU_c = M_cc / (Σ_j M_cj + Σ_i M_ic − M_cc)``."""

    def compute(self) -> float:
        m = self._matrix()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        present = union > 0
        return 100.0 * float((tp[present] / union[present]).mean())

    def __repr__(self) -> str:
        return f"MeanIoU({self.num_classes})"


class PixelAccuracy(_Confusion):
    """The percentage of labelled pixels whose predicted class is right."""

    def compute(self) -> float:
        m = self._matrix()
        return 100.0 * float(m.diagonal().sum() / m.sum())

    def __repr__(self) -> str:
        return f"PixelAccuracy({self.num_classes})"


class DepthError:
    """Mean absolute (``"abs"``) or relative (``"rel"``: ``|d̂ − d| / d``) depth error over the
    pixels whose target is non-zero. Lower is better."""

    higher_is_better = False

    def __init__(self, kind: str) -> None:
        if kind not in ("abs", "rel"):
            raise ValueError(f"kind must be 'abs' or 'rel', not {kind!r}")
        self.kind = kind
        self._sum: Tensor | None = None
        self._count: Tensor | None = None

    def reset(self) -> None:
        self._sum = self._count = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        _check(pred, target, 4, "DepthError", tuple(pred.shape))
        p, t = pred.detach().double(), target.detach().double()
        mask = t != 0
        err = (p - t).abs()
        if self.kind == "rel":
            err = err / torch.where(mask, t, torch.ones_like(t))
        total = (err * mask).sum()
        count = mask.sum()
        self._sum = total if self._sum is None else self._sum + total
        self._count = count if self._count is None else self._count + count

    def compute(self) -> float:
        if self._sum is None or self._count is None:
            raise ValueError("DepthError: no predictions were given")
        count = int(self._count)
        if count == 0:
            raise ValueError("DepthError: no pixel with a depth measurement (all targets 0)")
        return float(self._sum) / count

    def __repr__(self) -> str:
        return f"DepthError({self.kind!r})"


_BIN = 0.001  # degrees
_BINS = round(180 / _BIN)


class NormalAngle:
    """Angle between predicted and true surface normals, in degrees, over the pixels with a
    true normal (non-zero target). ``kind``: ``"mean"`` and ``"median"`` (lower is better) or
    ``"within"`` with ``threshold`` t: percentage of pixels with an angle below t (higher)."""

    def __init__(self, kind: str, threshold: float | None = None) -> None:
        if kind not in ("mean", "median", "within"):
            raise ValueError(f"kind must be 'mean', 'median' or 'within', not {kind!r}")
        if (kind == "within") != (threshold is not None):
            raise ValueError("give a threshold (degrees) with kind='within', and only then")
        if threshold is not None and not (math.isfinite(threshold) and 0 < threshold <= 180):
            raise ValueError(f"threshold must be in (0, 180] degrees, not {threshold!r}")
        self.kind = kind
        self.threshold = threshold
        self.higher_is_better = kind == "within"
        self._a: Tensor | None = None  # sum of angles / count within / histogram
        self._n: Tensor | None = None

    def reset(self) -> None:
        self._a = self._n = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        _check(pred, target, 4, "NormalAngle", tuple(pred.shape))
        if pred.shape[1] != 3:
            raise ValueError(f"NormalAngle: normals have 3 channels, not {pred.shape[1]}")
        p, t = pred.detach().double(), target.detach().double()
        mask = t.norm(dim=1) > 0
        cos = (F.normalize(p, dim=1) * F.normalize(t, dim=1)).sum(1)[mask]
        angle = torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))
        if self.kind == "mean":
            value = angle.sum()
        elif self.kind == "within":
            assert self.threshold is not None
            value = (angle < self.threshold).sum()
        else:
            bins = (angle / _BIN).long().clamp(0, _BINS - 1)
            value = torch.bincount(bins, minlength=_BINS)
        count = mask.sum()
        self._a = value if self._a is None else self._a + value
        self._n = count if self._n is None else self._n + count

    def compute(self) -> float:
        if self._a is None or self._n is None:
            raise ValueError("NormalAngle: no predictions were given")
        n = int(self._n)
        if n == 0:
            raise ValueError("NormalAngle: no pixel with a true normal (all targets 0)")
        if self.kind == "mean":
            return float(self._a) / n
        if self.kind == "within":
            return 100.0 * float(self._a) / n
        cumulative = self._a.cumsum(0)
        # the two middle order statistics (the same one when n is odd), at bin centres
        ranks = torch.tensor([(n - 1) // 2, n // 2], device=cumulative.device)
        bins = torch.searchsorted(cumulative, ranks, right=True)
        return float(((bins.double() + 0.5) * _BIN).mean())

    def __repr__(self) -> str:
        extra = "" if self.threshold is None else f", {self.threshold:g}"
        return f"NormalAngle({self.kind!r}{extra})"


class Accuracy:
    """Classification accuracy in percent: ``100 · #(argmax pred = target) / N``."""

    higher_is_better = True

    def __init__(self) -> None:
        self._correct: Tensor | None = None
        self._count = 0

    def reset(self) -> None:
        self._correct = None
        self._count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        _check(pred, target, 2, "Accuracy", (pred.shape[0],))
        correct = (pred.detach().argmax(1) == target.detach().long()).sum()
        self._correct = correct if self._correct is None else self._correct + correct
        self._count += int(target.shape[0])

    def compute(self) -> float:
        if self._correct is None or self._count == 0:
            raise ValueError("Accuracy: no predictions were given")
        return 100.0 * float(self._correct) / self._count

    def __repr__(self) -> str:
        return "Accuracy()"
