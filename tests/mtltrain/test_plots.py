"""Training plots read at a glance: every curve on a log axis (weights included, so one task's
weight of 170 does not flatten the others), a symmetric-log axis when a weight is 0, and the
PNGs logged to the run."""

from __future__ import annotations

import pytest

from mtltrain.plots import log_training_plots, training_curves, training_figures
from mtltrain.tracking import RunSpool, Tracker

pytest.importorskip("matplotlib")

STEPS = range(20)


def _log_run(tmp_path, weights: dict[str, list[float]]) -> Tracker:
    tracker = Tracker("plots", spool_root=tmp_path)
    for step in STEPS:
        values = {f"train/weight/{t}": w[step] for t, w in weights.items()}
        values.update(
            {f"train/loss/{t}": 10.0 ** (i - 2) / (step + 1) for i, t in enumerate(weights)}
        )
        values.update({f"train/grad_norm/{t}": 1.0 + step for t in weights})
        tracker.log_metrics(values, step=step)
    return tracker


def test_weights_losses_and_grad_norms_are_on_log_axes(tmp_path):
    weights = {"click": [1.0] * 20, "rating": [0.5] * 20, "price": [170.0] * 20}
    tracker = _log_run(tmp_path, weights)
    curves = training_curves(RunSpool.open(tracker.spool_dir), list(weights))
    assert curves["weight"]["price"] == [(s, 170.0) for s in STEPS]
    figures = training_figures(curves)
    assert set(figures) == {"loss", "grad_norm", "weight"}
    for kind, fig in figures.items():
        (ax,) = fig.axes
        assert ax.get_yscale() == "log", kind
        assert sorted(line.get_label() for line in ax.get_lines()) == sorted(weights)
    # on the log axis 0.5 and 170 are both well inside the plot, far apart
    low, high = figures["weight"].axes[0].get_ylim()
    assert low < 0.5 and high > 170.0

    written = log_training_plots(tracker, list(weights))
    tracker.close()
    assert written == [
        "plots/train_loss.png",
        "plots/train_grad_norm.png",
        "plots/train_weight.png",
    ]
    for path in written:
        data = (tracker.spool_dir / "artifacts" / path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_zero_weight_switches_to_a_symmetric_log_axis(tmp_path):
    weights = {"a": [0.0] * 10 + [2.0] * 10, "b": [0.25] * 20}  # MGDA-like: a weight of 0
    tracker = _log_run(tmp_path, weights)
    figures = training_figures(training_curves(RunSpool.open(tracker.spool_dir), list(weights)))
    tracker.close()
    ax = figures["weight"].axes[0]
    assert ax.get_yscale() == "symlog"
    assert ax.yaxis.get_transform().linthresh == 0.25  # linear only below the smallest weight
    assert list(ax.get_lines()[0].get_ydata()[:10]) == [0.0] * 10  # plotted, not dropped
    assert figures["loss"].axes[0].get_yscale() == "log"
