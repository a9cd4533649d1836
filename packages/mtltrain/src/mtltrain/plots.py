"""Training curves of a tracked run, like Figure 8 of the DB-MTL paper: every task's training
loss and shared-gradient norm over the optimizer steps, read back from the run's spool."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from .tracking.spool import RunSpool
from .tracking.tracker import TrackingWarning

__all__ = ["log_training_plots", "training_curves"]

CURVES = (
    ("loss", "training loss", True),
    ("grad_norm", "‖∇θ ℓ̃_t‖ (shared parameters)", True),
    ("weight", "task weight", False),
)


def training_curves(
    spool: RunSpool, tasks: Sequence[str]
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``kind -> task -> [(step, value)]`` for kind in loss / grad_norm / weight (the last
    value per step wins: a resumed run re-logs the steps after its checkpoint)."""
    out: dict[str, dict[str, dict[int, float]]] = {
        kind: {t: {} for t in tasks} for kind, *_ in CURVES
    }
    for rec in spool.read_metrics():
        parts = rec.key.split("/")
        if len(parts) == 3 and parts[0] == "train" and parts[1] in out and parts[2] in tasks:
            out[parts[1]][parts[2]][rec.step] = rec.value
    return {k: {t: sorted(v.items()) for t, v in per.items()} for k, per in out.items()}


def log_training_plots(tracker: Any, tasks: Sequence[str]) -> list[str]:
    """Plot the curves of ``tracker``'s run and log them as ``plots/<kind>.png`` artifacts.
    Returns the artifact paths written; without matplotlib, warns and writes none."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
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
    for kind, label, log_scale in CURVES:
        series = {t: pts for t, pts in curves[kind].items() if pts}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for task, pts in series.items():
            steps, values = zip(*pts, strict=True)
            ax.plot(steps, values, label=task, linewidth=1.0)
        if log_scale and all(v > 0 for pts in series.values() for _, v in pts):
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = f"plots/train_{kind}.png"
        tracker.log_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written
