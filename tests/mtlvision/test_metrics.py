"""The paper's metrics against references written out with NumPy / scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix

from mtltrain.metrics import Metric
from mtlvision.metrics import Accuracy, DepthError, MeanIoU, NormalAngle, PixelAccuracy


def _feed(metric: Metric, pred: torch.Tensor, target: torch.Tensor, parts: int = 3) -> float:
    """Update in ``parts`` batches: the result must not depend on the batching."""
    metric.reset()
    for p, t in zip(pred.chunk(parts), target.chunk(parts), strict=True):
        metric.update(p, t)
    return metric.compute()


def _segmentation(seed: int, classes: int = 5, absent: int | None = 4):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(6, classes, 7, 9, generator=g)
    target = torch.randint(-1, classes, (6, 7, 9), generator=g)
    if absent is not None:  # a class that appears in neither prediction nor truth
        pred[:, absent] = -1e9
        target[target == absent] = 0
    return pred, target


@pytest.mark.parametrize("seed", range(4))
def test_miou_and_pixel_accuracy_match_sklearn(seed: int) -> None:
    pred, target = _segmentation(seed)
    y_pred = pred.argmax(1).flatten().numpy()
    y_true = target.flatten().numpy()
    keep = y_true >= 0
    cm = confusion_matrix(y_true[keep], y_pred[keep], labels=list(range(5)))
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    assert not present[4] and present[:4].all()
    miou = 100 * np.mean(tp[present] / union[present])
    assert _feed(MeanIoU(5), pred, target) == pytest.approx(miou, rel=1e-12)
    acc = 100 * accuracy_score(y_true[keep], y_pred[keep])
    assert _feed(PixelAccuracy(5), pred, target) == pytest.approx(acc, rel=1e-12)


def test_segmentation_by_hand() -> None:
    # truth 0 0 1 1 -1, prediction 0 1 1 1 0: class 0 IoU 1/2, class 1 IoU 2/3; 3 of 4 right
    target = torch.tensor([[[0, 0, 1, 1, -1]]])
    labels = torch.tensor([[[0, 1, 1, 1, 0]]])
    pred = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    assert _feed(MeanIoU(2), pred, target, parts=1) == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert _feed(PixelAccuracy(2), pred, target, parts=1) == pytest.approx(75.0)


def test_segmentation_errors() -> None:
    m = MeanIoU(3)
    with pytest.raises(ValueError, match="no predictions"):
        m.compute()
    with pytest.raises(ValueError, match="2 class scores, expected 3"):
        m.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"prediction \(1, 3, 4, 4\) and target \(1, 4, 5\)"):
        m.update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5))
    m.update(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), -1))
    with pytest.raises(ValueError, match="no labelled pixel"):
        m.compute()


def test_depth_errors_over_measured_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 1, 6, 5, generator=g) * 3 + 0.5
    target[torch.rand(target.shape, generator=g) < 0.3] = 0
    pred = torch.rand(4, 1, 6, 5, generator=g) * 3
    t, p = target.numpy().astype(np.float64), pred.numpy().astype(np.float64)
    m = t != 0
    assert _feed(DepthError("abs"), pred, target, 2) == pytest.approx(
        np.abs(p - t)[m].mean(), rel=1e-12
    )
    assert _feed(DepthError("rel"), pred, target, 2) == pytest.approx(
        (np.abs(p - t)[m] / t[m]).mean(), rel=1e-12
    )
    assert not DepthError("abs").higher_is_better
    d = DepthError("abs")
    d.update(pred, torch.zeros_like(target))
    with pytest.raises(ValueError, match="no pixel with a depth measurement"):
        d.compute()


def _normals(seed: int, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    target = torch.nn.functional.normalize(torch.randn(n, 3, 8, 6, generator=g), dim=1)
    target = target * (torch.rand(n, 1, 8, 6, generator=g) > 0.2)  # pixels without a normal
    pred = target + 0.6 * torch.randn(n, 3, 8, 6, generator=g)  # not unit length
    return pred, target


def _angles(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    p = pred.permute(0, 2, 3, 1).reshape(-1, 3).numpy().astype(np.float64)
    t = target.permute(0, 2, 3, 1).reshape(-1, 3).numpy().astype(np.float64)
    keep = np.linalg.norm(t, axis=1) > 0
    p, t = p[keep], t[keep]
    cos = (p * t).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(t, axis=1)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


@pytest.mark.parametrize("seed", range(3))
def test_normal_angles_match_numpy(seed: int) -> None:
    pred, target = _normals(seed)
    angles = _angles(pred, target)
    assert _feed(NormalAngle("mean"), pred, target, 5) == pytest.approx(angles.mean(), rel=1e-9)
    assert _feed(NormalAngle("median"), pred, target, 5) == pytest.approx(
        np.median(angles), abs=1e-3
    )
    for t in (11.25, 22.5, 30.0):
        value = _feed(NormalAngle("within", t), pred, target, 5)
        assert value == pytest.approx(100 * np.mean(angles < t), rel=1e-12)


def test_normal_median_of_an_even_count_by_hand() -> None:
    # angles 0°, 90°, 90°, 180° (targets (1,0,0) each): median (90 + 90) / 2, mean 90, 25% < 30°
    target = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 4).clone()
    pred = torch.tensor([[1.0, 0, 0, -1], [0, 1, 0, 0], [0, 0, 1, 0]]).view(1, 3, 1, 4)
    assert _feed(NormalAngle("median"), pred, target, 1) == pytest.approx(90.0, abs=1e-3)
    assert _feed(NormalAngle("mean"), pred, target, 1) == pytest.approx(90.0)
    assert _feed(NormalAngle("within", 30), pred, target, 1) == pytest.approx(25.0)
    pred2 = torch.tensor([[2.0, 3, 0.5, 0], [0, 0, 0, -5], [0, 0, 0, 0]]).view(1, 3, 1, 4)
    # angles 0, 0, 0, 90: median (0 + 0) / 2 = 0, mean 22.5
    assert _feed(NormalAngle("median"), pred2, target, 1) == pytest.approx(0.0, abs=1e-3)
    assert _feed(NormalAngle("mean"), pred2, target, 1) == pytest.approx(22.5)


def test_normal_options_and_directions() -> None:
    assert NormalAngle("within", 11.25).higher_is_better
    assert not NormalAngle("mean").higher_is_better and not NormalAngle("median").higher_is_better
    with pytest.raises(ValueError, match="give a threshold"):
        NormalAngle("within")
    with pytest.raises(ValueError, match="give a threshold"):
        NormalAngle("mean", 3.0)
    with pytest.raises(ValueError, match="3 channels"):
        NormalAngle("mean").update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))


def test_accuracy_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(30, 7, generator=g)
    target = torch.randint(0, 7, (30,), generator=g)
    expected = 100 * accuracy_score(target.numpy(), pred.argmax(1).numpy())
    assert _feed(Accuracy(), pred, target) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no predictions"):
        Accuracy().compute()
    with pytest.raises(ValueError, match=r"target \(3, 1\)"):
        Accuracy().update(torch.zeros(3, 7), torch.zeros(3, 1))


def test_all_follow_mtltrains_metric_protocol() -> None:
    for metric in (
        MeanIoU(3),
        PixelAccuracy(3),
        DepthError("rel"),
        NormalAngle("median"),
        Accuracy(),
    ):
        assert isinstance(metric, Metric)


def test_a_normal_whose_components_sum_to_zero_counts() -> None:
    """(1, −1, 0)/√2 is a normal although its components sum to 0 (LibMTL's mask, Σ n ≠ 0,
    would drop it); (0, 0, 0) is 'no normal'. The prediction is 45° off the first."""
    s = 2**-0.5
    target = torch.tensor([[s, 0.0], [-s, 0.0], [0.0, 0.0]]).view(1, 3, 1, 2)
    pred = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]).view(1, 3, 1, 2)
    assert _feed(NormalAngle("mean"), pred, target, 1) == pytest.approx(45.0)
    assert _feed(NormalAngle("within", 11.25), pred, target, 1) == pytest.approx(0.0)
