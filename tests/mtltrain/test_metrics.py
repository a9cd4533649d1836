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


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "2"])
def test_mean_error_refuses_a_bad_scale(bad: object) -> None:
    with pytest.raises(ValueError, match="scale must be a positive number"):
        MeanError(scale=bad)  # type: ignore[arg-type]


def test_mean_error_refuses_a_bad_kind_and_an_empty_evaluation() -> None:
    with pytest.raises(ValueError, match="kind must be 'mae' or 'mse'"):
        MeanError("rmse")
    empty = MeanError()
    with pytest.raises(ValueError, match="no predictions were given"):
        empty.compute()
    empty.update(torch.tensor([1.0]), torch.tensor([0.0]))
    empty.reset()
    with pytest.raises(ValueError, match="no predictions were given"):
        empty.compute()
    single = MeanError("mse")
    single.update(torch.tensor([3.0]), torch.tensor([1.0]))
    assert single.compute() == pytest.approx(4.0)


def test_directions_and_the_metric_protocol() -> None:
    from mtltrain.metrics import Metric

    assert MeanError.higher_is_better is False and MeanError().higher_is_better is False
    assert Collect(len, higher_is_better=True).higher_is_better is True
    assert Collect(len, higher_is_better=False).higher_is_better is False
    assert isinstance(MeanError(), Metric) and isinstance(
        Collect(len, higher_is_better=True), Metric
    )
    assert not isinstance(object(), Metric)  # checked at run time (Task relies on it)


def test_shapes_are_matched_or_refused() -> None:
    """(N, 1) predictions against (N,) targets are the same values; other shapes are an
    error naming both."""
    metric = MeanError()
    metric.update(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 0.0]))
    assert metric.compute() == pytest.approx(2.0)
    with pytest.raises(
        ValueError, match=r"prediction shape \(3,\) does not match target shape \(2,\)"
    ):
        metric.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0]))
    collect = Collect(lambda t, p: float(p.sum()), higher_is_better=True)
    with pytest.raises(ValueError, match="does not match"):
        collect.update(torch.zeros(3), torch.zeros(2))


def test_collect_applies_prob_and_refuses_what_is_not_callable() -> None:
    got = []
    metric = Collect(lambda t, p: got.append(p) or 0.0, higher_is_better=True, prob=torch.sigmoid)
    metric.update(torch.tensor([0.0, 100.0]), torch.tensor([0.0, 1.0]))
    metric.compute()
    assert got[0] == pytest.approx([0.5, 1.0])
    with pytest.raises(TypeError, match="fn must be callable"):
        Collect(3.0, higher_is_better=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no predictions were given"):
        Collect(len, higher_is_better=True).compute()
    metric.reset()
    with pytest.raises(ValueError, match="no predictions were given"):
        metric.compute()
