"""Training curves of a tracked run, like Figure 8 of the DB-MTL paper: every task's training
loss, shared-gradient norm and weight over the optimizer steps, read back from the run's spool.

Each plot has a logarithmic y axis: task losses, gradient norms and weights differ by orders
of magnitude across tasks (the point of balancing them), and on a linear axis the largest task
flattens the others. Values at or below zero (some methods give a task weight 0) switch that
plot to a symmetric-log axis, linear around zero, instead of dropping them.

(The MLflow UI draws the same series as interactive charts: ``train/<kind>/<task>``.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .tracking.spool import RunSpool
from .tracking.tracker import TrackingWarning

__all__ = ["CURVES", "log_training_plots", "training_curves", "training_figures"]

#: (kind, y-axis label) of each plot; kind names the metrics ``train/<kind>/<task>``
CURVES = (
    ("loss", "training loss"),
    ("grad_norm", "‖∇θ ℓ̃_t‖ (shared parameters)"),
    ("weight", "task weight"),
)

Curves = dict[str, dict[str, list[tuple[int, float]]]]


def training_curves(spool: RunSpool, tasks: Sequence[str]) -> Curves:
    """``kind -> task -> [(step, value)]`` for kind in loss / grad_norm / weight (the last
    value per step wins: a resumed run re-logs the steps after its checkpoint)."""
    out: dict[str, dict[str, dict[int, float]]] = {
        kind: {t: {} for t in tasks} for kind, _ in CURVES
    }
    for rec in spool.read_metrics():
        parts = rec.key.split("/")
        if len(parts) == 3 and parts[0] == "train" and parts[1] in out and parts[2] in tasks:
            out[parts[1]][parts[2]][rec.step] = rec.value
    return {k: {t: sorted(v.items()) for t, v in per.items()} for k, per in out.items()}


def _set_scale(ax: Any, values: Sequence[float]) -> str:
    """Log axis for positive values; symmetric log (linear within the smallest nonzero
    magnitude of zero) when some are <= 0. Returns the scale set."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and all(v > 0 for v in finite):
        ax.set_yscale("log")
        return "log"
    nonzero = [abs(v) for v in finite if v != 0]
    if nonzero:
        ax.set_yscale("symlog", linthresh=min(nonzero))
        return "symlog"
    return "linear"


def training_figures(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
) -> dict[str, Any]:
    """One matplotlib figure per kind with data (``kind -> Figure``), a line per task."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures: dict[str, Any] = {}
    for kind, label in CURVES:
        series = {t: pts for t, pts in curves.get(kind, {}).items() if pts}
        if not series:
            continue
        fig = Figure(figsize=(6.4, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for task, pts in series.items():
            steps, values = zip(*pts, strict=True)
            ax.plot(steps, values, label=task, linewidth=1.0)
        scale = _set_scale(ax, [v for pts in series.values() for _, v in pts])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label + ("" if scale == "linear" else f" ({scale} scale)"))
        ax.set_title(f"{label} per task", fontsize="medium")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figures[kind] = fig
    return figures


def log_training_plots(tracker: Any, tasks: Sequence[str]) -> list[str]:
    """Plot the curves of ``tracker``'s run and log them as ``plots/train_<kind>.png``.
    Returns the artifact paths written; without matplotlib, warns and writes none."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn(
            "matplotlib is not installed: no training plots for this run",
            TrackingWarning,
            stacklevel=2,
        )
        return []
    tracker.flush()
    curves = training_curves(RunSpool.open(tracker.spool_dir), tasks)
    written = []
    for kind, fig in training_figures(curves).items():
        path = f"plots/train_{kind}.png"
        tracker.log_figure(fig, path)
        written.append(path)
    return written
