"""The background upload of one spooled run to an MLflow store (the Tracker's thread)."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from .mlflow_sink import MlflowSink

__all__ = ["Uploader"]


class Uploader(threading.Thread):
    """Background upload of one spooled run to an MLflow store, pass after pass.

    A pass uploads everything spooled when it starts; passes run when asked (after writes),
    at most every ``interval`` seconds unless urgent or closing. The first exception stops the
    thread; the Tracker turns it into one warning on the training thread.
    """

    def __init__(self, sink: MlflowSink, run_dir: Path, interval: float) -> None:
        super().__init__(name=f"mtltrain-mlflow-upload-{run_dir.name}", daemon=True)
        self._sink = sink
        self._run_dir = run_dir
        self._interval = interval
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._urgent = False
        self._closing = False
        self._exited = False
        self.error: Exception | None = None

    def request(self, *, urgent: bool = False) -> int:
        with self._cond:
            self._requested += 1
            self._urgent = self._urgent or urgent
            self._cond.notify_all()
            return self._requested

    def finish(self) -> None:
        """Ask for a last pass (the spool is final now), then stop."""
        with self._cond:
            self._closing = True
            self._requested += 1
            self._cond.notify_all()

    def wait_done(self, seq: int, timeout: float | None) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._done >= seq or self._exited, timeout)
            return self._done >= seq

    def run(self) -> None:
        last_pass = -math.inf
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._requested > self._done or self._closing)
                    delay = last_pass + self._interval - time.monotonic()
                    if delay > 0:
                        self._cond.wait_for(lambda: self._closing or self._urgent, delay)
                    target, closing = self._requested, self._closing
                    self._urgent = False
                try:
                    self._sink.upload(self._run_dir)
                except Exception as e:
                    with self._cond:
                        self.error = e
                    return
                last_pass = time.monotonic()
                with self._cond:
                    self._done = target
                    self._cond.notify_all()
                if closing:
                    return
        finally:
            with self._cond:
                self._exited = True
                self._cond.notify_all()
