"""Metrics: expected values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from mtltrain.metrics import Collect, MeanError


def test_mean_error_kinds_and_scale_by_hand() -> None:
    pred = torch.tensor([1.0, 2.0, 4.0, -1.0])
    target = torch.tensor([0.0, 0.0, 1.0, 1.0])  # errors 1, 2, 3, -2
    mae, mse, scaled = MeanError("mae"), MeanError("mse"), MeanError("mae", scale=1000.0)
    for m in (mae, mse, scaled):
        m.reset()
        m.update(pred[:2], target[:2])  # two batches: the mean is over all elements
        m.update(pred[2:], target[2:])
    assert mae.compute() == pytest.approx((1 + 2 + 3 + 2) / 4)
    assert mse.compute() == pytest.approx((1 + 4 + 9 + 4) / 4)
    assert scaled.compute() == pytest.approx(1000 * 8 / 4)
    mse_scaled = MeanError("mse", scale=10.0)
    mse_scaled.update(pred, target)
    assert mse_scaled.compute() == pytest.approx(10 * 18 / 4)
    mae.reset()
    mae.update(torch.tensor([5.0]), torch.tensor([1.0]))
    assert mae.compute() == pytest.approx(4.0)  # reset forgets the earlier batches


def test_collect_passes_the_whole_arrays() -> None:
    seen = []

    def fn(target, pred):
        seen.append((list(target), list(pred)))
        return float(len(target))

    metric = Collect(fn, higher_is_better=True)
    metric.update(torch.tensor([0.1, 0.2]), torch.tensor([0.0, 1.0]))
    metric.update(torch.tensor([0.3]), torch.tensor([1.0]))
    assert metric.compute() == 3.0
    assert seen[-1][0] == [0.0, 1.0, 1.0]
    assert seen[-1][1] == pytest.approx([0.1, 0.2, 0.3])
