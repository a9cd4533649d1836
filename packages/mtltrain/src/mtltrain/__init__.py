"""mtltrain: the training loop shared by every domain package (epochs, evaluation, Δp,
checkpoints, tracking).

Trainer (:mod:`mtltrain.trainer`): ``Trainer(model, tasks, balancer, optimizer,
config=TrainerConfig(...)).fit(train, val, test)``; metrics in :mod:`mtltrain.metrics`; what a
domain package hands to the benchmark runner in :mod:`mtltrain.problem`.

Δp (:mod:`mtltrain.deltap`): Eq. (2) of the DB-MTL paper against an explicit single-task
reference. Tracking (:mod:`mtltrain.tracking`): records spool locally first and go to MLflow
when it is installed and reachable; ``import mtltrain`` never imports ``mlflow``.

The names below are imported on first use, so ``import mtltrain`` (and torch-free modules
such as :mod:`mtltrain.config`) stays cheap for command-line tools that need no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "EpochResult": "results",
    "FitResult": "results",
    "Task": "task",
    "Tracker": "tracking",
    "TrackingWarning": "tracking",
    "Trainer": "trainer",
    "TrainerConfig": "config",
    "default_tracking_uri": "tracking",
    "delta_p": "deltap",
    "delta_p_per_task": "deltap",
    "load_checkpoint_info": "checkpoint",
    "mean_std": "deltap",
    "seed_everything": "trainer",
    "sync": "tracking",
}

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
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:
    from .checkpoint import load_checkpoint_info
    from .config import TrainerConfig
    from .deltap import delta_p, delta_p_per_task, mean_std
    from .results import EpochResult, FitResult
    from .task import Task
    from .tracking import Tracker, TrackingWarning, default_tracking_uri, sync
    from .trainer import Trainer, seed_everything


__getattr__ = lazy_exports(__name__, _EXPORTS)
