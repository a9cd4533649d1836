"""MLflow's system metrics (CPU, memory, disk, network, GPU), recorded through the spool.

MLflow's own ``SystemMetricsMonitor`` logs straight to the store, past the spool: what it
measured is lost when the store is down. Here MLflow's collectors
(``mlflow.system_metrics.metrics``: ``CPUMonitor``, ``DiskMonitor``, ``NetworkMonitor`` and
``GPUMonitor`` / ``ROCMMonitor`` where a GPU library answers) are sampled by a thread of the
:class:`~mtltrain.tracking.Tracker`, and each sample is logged like any other metric, under
MLflow's names (``system/cpu_utilization_percentage``, ``system/gpu_0_utilization_percentage``,
...), so the run's *System metrics* tab in the MLflow UI shows them. A sample covers the time
since the one before (CPU utilisation is measured over that interval, not at an instant); the
last one is taken when the run ends, so even a run shorter than the interval has one.

It needs ``psutil`` (and ``mlflow``, imported in the thread, only when the Tracker has a store).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SYSTEM_PREFIX", "SystemMetricsSampler", "default_interval", "system_monitors"]

#: MLflow's prefix for system metrics (the UI's System metrics tab shows these keys).
SYSTEM_PREFIX = "system/"
#: MLflow's environment variable for the sampling interval, honoured here too.
INTERVAL_ENV = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
_DEFAULT_INTERVAL = 10.0  # MLflow's default


def default_interval() -> float:
    """Seconds between samples: ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, else MLflow's 10."""
    text = os.environ.get(INTERVAL_ENV)
    if text:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"${INTERVAL_ENV}={text!r} is not a number of seconds: set it like 10 or 0.5"
            ) from None
        if value > 0:
            return value
        raise ValueError(f"${INTERVAL_ENV}={text!r} must be a positive number of seconds")
    return _DEFAULT_INTERVAL


def system_monitors() -> list[Any]:
    """MLflow's collectors for this machine: CPU and memory, disk, network, and the GPUs when
    NVML (``nvidia-ml-py``) or ROCm SMI answers. ImportError without psutil or mlflow. The
    CPU clock starts here: the first sample's CPU utilisation covers the time since."""
    import psutil  # type: ignore[import-untyped]  # (an ImportError before mlflow's)

    from .mlflow_sink import MLFLOW_IMPORT_LOCK

    with MLFLOW_IMPORT_LOCK:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
        from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu in (GPUMonitor, ROCMMonitor):  # as mlflow's SystemMetricsMonitor picks one
        try:
            monitors.append(gpu())
            break
        except Exception:  # no GPU, or no library to ask it
            continue
    psutil.cpu_percent()
    return monitors


class SystemMetricsSampler(threading.Thread):
    """Samples :func:`system_monitors` every ``interval`` seconds and hands each sample to
    ``log(values, step)`` (steps ``first_step``, ``first_step + 1``, ...), once more when
    stopped. Any failure (no psutil, no mlflow, a closed run) ends the thread quietly and is
    kept in :attr:`error`: system metrics are a convenience, never a reason to stop training.
    """

    def __init__(
        self,
        log: Callable[[dict[str, float], int], None],
        *,
        interval: float,
        first_step: int = 0,
        name: str = "mtltrain-system-metrics",
    ) -> None:
        if not interval > 0:
            raise ValueError(f"system metrics interval must be > 0 seconds, not {interval!r}")
        super().__init__(name=name, daemon=True)
        self._log = log
        self._interval = float(interval)
        self._step = int(first_step)
        self._stopping = threading.Event()
        self.samples = 0
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            monitors = system_monitors()
            while True:
                stopping = self._stopping.wait(self._interval)
                values: dict[str, float] = {}
                for monitor in monitors:
                    monitor.collect_metrics()
                    values.update(monitor.aggregate_metrics())
                    monitor.clear_metrics()
                self._log({SYSTEM_PREFIX + k: float(v) for k, v in values.items()}, self._step)
                self._step += 1
                self.samples += 1
                if stopping:
                    return
        except Exception as e:
            self.error = e

    def stop(self, timeout: float | None = 10.0) -> None:
        """Take the last sample and end the thread (waits up to ``timeout`` seconds)."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
