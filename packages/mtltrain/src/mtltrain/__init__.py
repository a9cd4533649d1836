"""mtltrain: the training loop shared by every domain package (epochs, evaluation, Δp,
checkpoints, tracking).

Trainer (:mod:`mtltrain.trainer`): ``Trainer(model, tasks, balancer, optimizer,
config=TrainerConfig(...)).fit(train, val, test)``; metrics in :mod:`mtltrain.metrics`; what a
domain package hands to the benchmark runner in :mod:`mtltrain.problem`.

Δp (:mod:`mtltrain.deltap`): Eq. (2) of the DB-MTL paper against an explicit single-task
reference. Tracking (:mod:`mtltrain.tracking`): records spool locally first and go to MLflow
when it is installed and reachable; ``import mtltrain`` never imports ``mlflow``.
"""

from __future__ import annotations

from .deltap import delta_p, delta_p_per_task, mean_std
from .tracking import Tracker, TrackingWarning, default_tracking_uri, sync
from .trainer import (
    EpochResult,
    FitResult,
    Task,
    Trainer,
    TrainerConfig,
    load_checkpoint_info,
    seed_everything,
)

__version__ = "0.1.0"

__all__ = [
    "EpochResult",
    "FitResult",
    "Task",
    "Tracker",
    "TrackingWarning",
    "Trainer",
    "TrainerConfig",
    "default_tracking_uri",
    "delta_p",
    "delta_p_per_task",
    "load_checkpoint_info",
    "mean_std",
    "seed_everything",
    "sync",
]
