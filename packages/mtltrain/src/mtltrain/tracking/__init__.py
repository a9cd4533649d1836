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

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# Imported on first use: the spool and store helpers need no torch, so command-line tools
# (``mtlbench --help``, ``mtlbench sync``) start fast.
_EXPORTS = {
    "DEFAULT_SPOOL_ROOT": "spool",
    "MetricRecord": "spool",
    "MlflowSink": "mlflow_sink",
    "RunSpool": "spool",
    "Tracker": "tracker",
    "TrackingWarning": "tracker",
    "default_artifact_location": "mlflow_sink",
    "default_tracking_uri": "mlflow_sink",
    "find_runs": "spool",
    "sync": "sync",
    "validate_key": "spool",
}

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
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:
    from .mlflow_sink import MlflowSink, default_artifact_location, default_tracking_uri
    from .spool import DEFAULT_SPOOL_ROOT, MetricRecord, RunSpool, find_runs, validate_key
    from .sync import sync
    from .tracker import Tracker, TrackingWarning


__getattr__ = lazy_exports(__name__, _EXPORTS)
