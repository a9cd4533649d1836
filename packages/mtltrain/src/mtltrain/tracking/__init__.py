"""Experiment tracking: a local spool first, MLflow when it can.

::

    from mtltrain.tracking import Tracker, sync

    with Tracker("census", tracking_uri="sqlite:///mlflow.db") as tracker:
        tracker.log_params({"method": "dbmtl", "lr": 1e-3})
        ...
        tracker.log_balance_stats(stats, step)  # buffered on the device
        tracker.log_metrics({"val/auc/ctr": 0.71}, step=epoch)

    sync("mtlruns-spool", "http://127.0.0.1:5000")  # upload spooled runs later

Nothing here imports ``mlflow`` until a store is used.
"""

from __future__ import annotations

from .mlflow_sink import MlflowSink, default_artifact_location, default_tracking_uri
from .spool import DEFAULT_SPOOL_ROOT, MetricRecord, RunSpool, find_runs, validate_key
from .sync import sync
from .tracker import Tracker, TrackingWarning

__all__ = [
    "DEFAULT_SPOOL_ROOT",
    "MetricRecord",
    "MlflowSink",
    "RunSpool",
    "Tracker",
    "TrackingWarning",
    "default_artifact_location",
    "default_tracking_uri",
    "find_runs",
    "sync",
    "validate_key",
]
