"""mtltrain: the training loop shared by every domain package (epochs, evaluation, Δp,
checkpoints, tracking).

Δp (:mod:`mtltrain.deltap`): Eq. (2) of the DB-MTL paper against an explicit single-task
reference. Tracking (:mod:`mtltrain.tracking`): records spool locally first and go to MLflow
when it is installed and reachable; ``import mtltrain`` never imports ``mlflow``.
"""

from __future__ import annotations

from .deltap import delta_p, delta_p_per_task, mean_std
from .tracking import Tracker, TrackingWarning, default_tracking_uri, sync

__version__ = "0.1.0"

__all__ = [
    "Tracker",
    "TrackingWarning",
    "default_tracking_uri",
    "delta_p",
    "delta_p_per_task",
    "mean_std",
    "sync",
]
