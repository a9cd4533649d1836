"""Training losses of the paper's vision tasks (Appendix B; LibMTL's definitions).

- segmentation: cross-entropy over the labelled pixels (target -1 is ignored);
- depth: L1 over the pixels with a measurement, ``Σ m |d̂ − d| / Σ m`` with ``m = [d ≠ 0]``;
- normals: ``1 − Σ m (n̂/‖n̂‖)·(n/‖n‖) / Σ m`` (one minus the mean cosine) over the pixels with
  a normal, ``m = [‖n‖ > 0]``;
- classification: cross-entropy.

A batch with no supervised pixel for a task gives that task a loss of exactly 0 (and zero
gradients) instead of 0/0 = NaN.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["classification_loss", "depth_loss", "normal_loss", "segmentation_loss"]


def segmentation_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over the pixels with a label (``target >= 0``)."""
    target = target.long()
    total = F.cross_entropy(pred, target, ignore_index=-1, reduction="sum")
    return total / (target >= 0).sum().clamp(min=1)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over the pixels whose depth is non-zero."""
    mask = (target != 0).to(pred.dtype)
    return ((pred - target).abs() * mask).sum() / mask.sum().clamp(min=1)


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """One minus the mean cosine similarity over the pixels with a normal."""
    mask = (target.norm(dim=1, keepdim=True) > 0).to(pred.dtype)
    cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1) * mask).sum()
    count = mask.sum()
    return (count - cos) / count.clamp(min=1)  # = 1 − mean cosine; 0 without any normal


def classification_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of logits ``pred`` (B, C) against class ids ``target`` (B,)."""
    return F.cross_entropy(pred, target.long())
