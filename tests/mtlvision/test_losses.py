"""Losses against NumPy written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlvision.losses import classification_loss, depth_loss, normal_loss, segmentation_loss


def test_segmentation_loss_is_mean_cross_entropy_over_labelled_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 3, 5, generator=g)
    target = torch.randint(-1, 4, (2, 3, 5), generator=g)
    logits = pred.permute(0, 2, 3, 1).reshape(-1, 4).numpy().astype(np.float64)
    t = target.reshape(-1).numpy()
    keep = t >= 0
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -logp[keep, t[keep]].mean()
    assert float(segmentation_loss(pred, target.float())) == pytest.approx(expected, rel=1e-5)


def test_depth_loss_is_l1_over_measured_pixels() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[2.0, 0.0], [1.0, 4.5]]]])  # the 0 is not measured
    assert float(depth_loss(pred, target)) == pytest.approx((1 + 2 + 0.5) / 3)


def test_normal_loss_is_one_minus_mean_cosine() -> None:
    s = 2**-0.5
    target = torch.tensor([[1.0, s, 0.0], [0.0, s, 0.0], [0.0, 0.0, 0.0]]).view(1, 3, 1, 3)
    pred = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]]).view(1, 3, 1, 3)
    # cosines 1 and 1/√2 on the two pixels with a normal; the third has none
    assert float(normal_loss(pred, target)) == pytest.approx(1 - (1 + s) / 2)


@pytest.mark.parametrize(
    ("loss", "pred", "target"),
    [
        (segmentation_loss, torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), -1.0)),
        (depth_loss, torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)),
        (normal_loss, torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)),
    ],
)
def test_no_supervised_pixel_gives_zero_not_nan(loss, pred, target) -> None:  # type: ignore[no-untyped-def]
    pred = pred.requires_grad_()
    value = loss(pred, target)
    value.backward()
    assert float(value.detach()) == 0.0 and pred.grad is not None and torch.all(pred.grad == 0)


def test_classification_loss() -> None:
    pred = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (-np.log(np.exp(2) / (np.exp(2) + 1)) + np.log(2)) / 2
    assert float(classification_loss(pred, torch.tensor([0, 1]))) == pytest.approx(
        expected, rel=1e-6
    )
