"""The training loop's tracking front end: spool first, MLflow when it can.

``Tracker`` writes every record to the local spool (:mod:`.spool`) at once. Per-step values
given as device tensors are buffered and copied to the host every ``log_every`` steps in one
transfer, so logging losses, weights and gradient norms every step costs no host sync on the
other steps. With a ``tracking_uri``, a background thread uploads the spool to MLflow
(:class:`~.mlflow_sink.MlflowSink`); if the store fails (server down, database locked, MLflow
not installed) the thread stops, one :class:`TrackingWarning` is shown, and the spool keeps
everything for :func:`~.sync.sync` later. The training loop never waits on the network and
never sees an exception from the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .buffer import Entry, StepBuffer, check_step, entries, to_records
from .mlflow_sink import MlflowSink, normalize_tracking_uri, redact_uri, store_key
from .spool import (
    DEFAULT_SPOOL_ROOT,
    TERMINAL_STATUSES,
    MetricRecord,
    RunSpool,
    now_ms,
    validate_key,
)
from .system_metrics import SYSTEM_PREFIX, SystemMetricsSampler, default_interval
from .uploader import Uploader

if TYPE_CHECKING:
    from mtlbalance import BalanceStats

__all__ = ["Tracker", "TrackingWarning"]


#: per metric, how many of a resumed run's newest spooled steps are remembered to skip exact
#: repeats (the steps retrained between the checkpoint and the kill)
_RESUME_MEMORY = 50_000


class TrackingWarning(UserWarning):
    """Tracking to the MLflow store stopped (or lost buffered values); training goes on and the
    spool keeps every record."""


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise TypeError(f"param names must be str, not {key!r} ({type(key).__name__})")
        name = f"{prefix}.{key}" if prefix else key
        flat = _flatten(value, name) if isinstance(value, Mapping) and value else {name: value}
        for k, v in flat.items():
            if k in out:
                raise ValueError(
                    f"params name {k!r} twice (a nested mapping flattens to a key that is also "
                    "given directly): rename one of them"
                )
            out[k] = v
    return out


class Tracker:
    """Tracks one training run: params, per-step and per-epoch metrics, tags, artifacts.

    Every record goes to a local spool directory first (``<spool_root>/<run_id>/``), so nothing
    is lost when MLflow is not installed, not asked for, or down. With ``tracking_uri`` the
    spool is also uploaded to that MLflow store in the background as the run goes.

    Args:
        experiment: MLflow experiment name (created in the store if missing). Required: MLflow's
            own "Default" experiment keeps artifacts in ``./mlruns`` of whatever directory
            first created the store.
        spool_root: where runs are spooled (default ``./mtlruns-spool``).
        tracking_uri: None (spool only), or any MLflow tracking URI: ``sqlite:///mlflow.db``,
            ``http://host:5000``, ... :func:`~.mlflow_sink.default_tracking_uri` gives the
            local SQLite store beside the spool root.
        run_name: MLflow run name (MLflow picks one when None).
        tags: run tags.
        log_every: per-step values given as tensors (:meth:`log_step`,
            :meth:`log_balance_stats`) are copied to the host every ``log_every`` steps, in one
            transfer. Every logged step is recorded; this only sets how often the host syncs
            (and how many steps a killed process can lose).
        artifact_location: artifact root for an experiment this run creates in the store;
            default ``mlartifacts/`` beside a SQLite database, the store's default otherwise.
        upload_interval: at most one upload pass to the store every this many seconds.
        close_timeout: :meth:`close` waits at most this long for the last upload; past it the
            run is complete in the spool and a :class:`TrackingWarning` says to sync.
        resume: the id of a spooled run under ``spool_root`` to continue (a training run
            resumed from its checkpoint): records are appended to it, and the store's copy of
            the run (the same MLflow run) gets them on the next upload. ``run_name``, ``tags``
            and ``experiment_tags`` are ignored then.
        parent: the :attr:`run_id` of this run's parent, a run under the same ``spool_root``
            (the seeds of one method under a run for the method, say). MLflow's UI nests the
            run under it; the store's id of the parent is filled in at upload, so this works
            for live uploads, a later ``sync`` and other stores alike.
        experiment_tags: tags for the experiment (``mlflow.note.content``: its description;
            ``mlflow.experimentKind``), set when the run is uploaded where the experiment does
            not have them yet.
        system_metrics: record MLflow's system metrics (CPU, memory, disk, network, GPU) every
            ``system_metrics_interval`` seconds, through the spool like every other record
            (:mod:`.system_metrics`). Only with a ``tracking_uri`` (it uses MLflow's
            collectors) and psutil; otherwise nothing is recorded.
        system_metrics_interval: seconds between samples (default
            ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, else MLflow's 10).

    Example::

        with Tracker("census", tracking_uri="sqlite:///mlflow.db", log_every=50) as tracker:
            tracker.log_params({"lr": 1e-3, "method": "dbmtl"})
            for epoch in range(epochs):
                for batch in loader:
                    stats = balancer.backward(model_losses(batch))
                    optimizer.step()
                    tracker.log_balance_stats(stats, step)  # no host sync
                    step += 1
                tracker.log_metrics({"val/auc/ctr": evaluate(model)}, step=epoch)
    """

    def __init__(
        self,
        experiment: str,
        *,
        spool_root: str | os.PathLike[str] = DEFAULT_SPOOL_ROOT,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        log_every: int = 50,
        artifact_location: str | None = None,
        upload_interval: float = 2.0,
        close_timeout: float = 60.0,
        resume: str | None = None,
        parent: str | None = None,
        experiment_tags: Mapping[str, Any] | None = None,
        system_metrics: bool = False,
        system_metrics_interval: float | None = None,
    ) -> None:
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ValueError(
                f"log_every must be a positive int (steps per host copy), not {log_every!r}"
            )
        for name, value in (("upload_interval", upload_interval), ("close_timeout", close_timeout)):
            if not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        uri = None if tracking_uri is None else normalize_tracking_uri(tracking_uri)
        sink = None if uri is None else MlflowSink(uri, artifact_location=artifact_location)
        if sink is not None:
            # a new SQLite store is created here, completely, before training can start; any
            # failure (no mlflow, ...) shows up again in the uploader as one TrackingWarning
            with contextlib.suppress(Exception):
                sink.prepare()
        interval = (
            default_interval() if system_metrics_interval is None else system_metrics_interval
        )
        if not isinstance(interval, int | float) or not interval > 0:
            raise ValueError(
                f"system_metrics_interval must be a number of seconds > 0, not {interval!r}"
            )
        if resume is None:
            self._spool = RunSpool.create(
                spool_root,
                experiment=experiment,
                run_name=run_name,
                tags=tags,
                parent=parent,
                experiment_tags=experiment_tags,
            )
        else:
            run_dir = Path(spool_root) / resume
            if not (run_dir / "meta.json").is_file():
                raise FileNotFoundError(
                    f"cannot resume run {resume!r}: {run_dir} is not a spooled run (wrong "
                    f"spool_root, or the spool was moved?)"
                )
            owner = RunSpool.open(run_dir).meta["experiment"]
            if owner != experiment:
                raise ValueError(
                    f"run {resume!r} belongs to experiment {owner!r}, not {experiment!r}"
                )
            self._spool = RunSpool.reopen(run_dir)
            if parent is not None:
                self._spool.set_parent(parent)
        # A resumed run retrains the steps between its checkpoint and the kill and logs them
        # again with the same values (resume is exact): a record equal to one the spool holds
        # (key, step and value) is not written twice. The newest records of each key are
        # enough: retrained steps come right after the checkpoint.
        self._spooled: dict[str, dict[int, float]] = {}
        if resume is not None:
            for record in self._spool.read_metrics():
                recent = self._spooled.setdefault(record.key, {})
                recent[record.step] = record.value
                if len(recent) > _RESUME_MEMORY:
                    del recent[next(iter(recent))]
        self._tracking_uri = uri
        self._close_timeout = float(close_timeout)
        self._lock = threading.RLock()
        self._steps = StepBuffer(log_every)
        self._known_keys: set[str] = set()
        self._nonfinite_warned: set[str] = set()
        self._closed = False
        self._sink_warned = False
        self._uploader: Uploader | None = None
        if sink is not None:
            self._uploader = Uploader(sink, self._spool.dir, float(upload_interval))
            self._uploader.start()
            self._uploader.request(urgent=True)  # create the MLflow run right away
        self._system: SystemMetricsSampler | None = None
        if system_metrics and uri is not None:
            first = 1 + max(  # a resumed run's samples go on after its last one
                (max(steps) for k, steps in self._spooled.items() if k.startswith(SYSTEM_PREFIX)),
                default=-1,
            )
            self._system = SystemMetricsSampler(
                self._log_system, interval=float(interval), first_step=first
            )
            self._system.start()

    # ------------------------------------------------------------------------------ properties
    @property
    def run_id(self) -> str:
        """The spool's run id (the MLflow run id is :attr:`mlflow_run_id`)."""
        return self._spool.run_id

    @property
    def spool_dir(self) -> Path:
        """This run's spool directory."""
        return self._spool.dir

    @property
    def tracking_uri(self) -> str | None:
        return self._tracking_uri

    @property
    def mlflow_run_id(self) -> str | None:
        """The run's id in the tracking store, once the upload created it."""
        if self._tracking_uri is None:
            return None
        state = self._spool.read_sync_states().get(store_key(self._tracking_uri), {})
        run_id = state.get("run_id")
        return None if run_id is None else str(run_id)

    @property
    def mlflow_experiment_id(self) -> str | None:
        """The id of the run's experiment in the tracking store, once the upload created it."""
        if self._tracking_uri is None:
            return None
        state = self._spool.read_sync_states().get(store_key(self._tracking_uri), {})
        exp_id = state.get("experiment_id")
        return None if exp_id is None else str(exp_id)

    @property
    def sink_error(self) -> Exception | None:
        """Why uploading to the store stopped (None while it works or when not tracking)."""
        return None if self._uploader is None else self._uploader.error

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def parent(self) -> str | None:
        """The spool run id of this run's parent (None for a top-level run)."""
        return self._spool.parent_run_id

    @property
    def system_metrics_samples(self) -> int:
        """How many system-metrics samples were recorded (0 when not asked for or without
        psutil / a store)."""
        return 0 if self._system is None else self._system.samples

    # ------------------------------------------------------------------------------ logging
    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Log hyperparameters. Nested mappings are flattened with '.' (``{"optim": {"lr": 1}}``
        -> ``optim.lr``); a dataclass instance is logged field by field. Values are stored as
        ``str(value)``; logging a key again with another value is a ValueError."""
        if dataclasses.is_dataclass(params) and not isinstance(params, type):
            params = dataclasses.asdict(params)
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping or a dataclass, not {type(params).__name__}")
        with self._lock:
            self._check_open()
            self._spool.log_params(_flatten(params))
            self._nudge()

    def log_metrics(self, metrics: Mapping[str, float | Tensor], step: int = 0) -> None:
        """Log metrics now (per epoch, evaluation results, the final Δp). Tensors are copied
        to the host here, all in one transfer."""
        step = check_step(step)
        with self._lock:
            self._check_open()
            ts = now_ms()
            self._write_records(to_records(entries(metrics, step, ts, self._check_key)))
            self._nudge()

    def log_step(self, values: Mapping[str, Tensor | float], step: int) -> None:
        """Log per-step values (losses, ...). Tensors stay on their device, buffered, until
        ``log_every`` steps are buffered; then all are copied to the host in one transfer.
        Values and steps are recorded exactly as :meth:`log_metrics` would record them."""
        step = check_step(step)
        with self._lock:
            self._check_open()
            self._buffer_entries(entries(values, step, now_ms(), self._check_key), step)

    def log_balance_stats(self, stats: BalanceStats, step: int, *, prefix: str = "train/") -> None:
        """Log an ``mtlbalance.BalanceStats`` (what ``Balancer.backward`` returns) like
        :meth:`log_step`: ``<prefix>loss/<task>``, ``<prefix>transformed/<task>``,
        ``<prefix>grad_norm/<task>``, ``<prefix>weight/<task>``, ``<prefix>table_factor/<task>`` and
        ``<prefix>update_norm`` (the ones the method reports; :meth:`BalanceStats.flat`),
        buffered on the device."""
        from mtlbalance.stats import BalanceStats

        if not isinstance(stats, BalanceStats):
            raise TypeError(
                f"stats must be the mtlbalance.BalanceStats returned by Balancer.backward, not "
                f"{type(stats).__name__}"
            )
        step = check_step(step)
        with self._lock:
            self._check_open()
            keys, flat = stats.flat(prefix)  # one device tensor; no host sync
            for key in keys:  # (known keys: one set lookup each)
                self._check_key(key)
            self._buffer_entries([Entry(step, now_ms(), keys, flat)], step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as ``str(value)``; a tag set again is overwritten)."""
        with self._lock:
            self._check_open()
            self._spool.set_tags(tags)
            self._nudge()

    def set_linked_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags whose values link to other runs of this spool root: each
        ``{{run:<run_id>}}`` becomes the address of that run's page in the MLflow UI once the
        run is uploaded (e.g. a run description, ``mlflow.note.content``, in Markdown:
        ``"[dbmtl]({{run:20260101-120000-ab12cd34}})"``). See :mod:`.mlflow_sink`."""
        with self._lock:
            self._check_open()
            self._spool.set_linked_tags(tags)
            self._nudge()

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Copy a file, or a directory with its contents, into the run's artifacts (under
        ``artifact_path``, like ``mlflow.log_artifact``). The copy is taken now."""
        with self._lock:
            self._check_open()
            self._spool.log_artifact(local_path, artifact_path)
            self._nudge()

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as the artifact ``artifact_file`` (e.g. ``"tables/results.md"``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        self._write_artifact(text.encode("utf-8"), artifact_file)

    def log_dict(self, data: Mapping[str, Any] | list[Any], artifact_file: str) -> None:
        """Store ``data`` as a JSON artifact (e.g. the resolved config: ``"config.json"``)."""
        if not artifact_file.endswith(".json"):
            raise ValueError(
                f"log_dict writes JSON; artifact_file {artifact_file!r} should end in '.json' "
                "(for another format, serialise it yourself and use log_text)"
            )
        text = json.dumps(data, indent=2, sort_keys=True, default=str)
        self.log_text(text + "\n", artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Store a matplotlib figure (anything with ``savefig``) as ``artifact_file``; the
        format follows its suffix (``plots/weights.png``)."""
        if not callable(getattr(figure, "savefig", None)):
            raise TypeError(
                f"figure must have a savefig method (matplotlib), not {type(figure).__name__}"
            )
        suffix = Path(artifact_file).suffix
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"figure{suffix}"
            figure.savefig(path)
            self._write_artifact(path.read_bytes(), artifact_file)

    # ------------------------------------------------------------------------------ flushing
    def flush(self, *, wait: bool = False, timeout: float | None = None) -> bool:
        """Copy buffered step values to the host and the spool now, and start an upload pass.

        With ``wait=True``, block until the store has everything logged so far, it failed, or
        ``timeout`` seconds passed. Returns True when the store has everything (always True
        without a tracking URI: the spool has it)."""
        with self._lock:
            up = self._uploader
            if self._closed:  # close() already flushed and ran the last upload
                return up is None or (up.error is None and not up.is_alive())
            self._flush_buffer()
            seq = None if up is None or up.error is not None else up.request(urgent=True)
        if up is None:
            return True
        done = False
        if seq is not None and wait:
            done = up.wait_done(seq, timeout)
        self._check_sink()
        return done

    def close(self, status: str = "FINISHED") -> None:
        """End the run: flush buffered values, mark the spool ``status`` (FINISHED, FAILED or
        KILLED), and wait (up to ``close_timeout``) for the last upload. Calling it again does
        nothing."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(TERMINAL_STATUSES)}, not {status!r}"
            )
        if self._system is not None:
            self._system.stop()  # its last sample goes in before the run ends
        with self._lock:
            if self._closed:
                return
            try:
                records = to_records(self._steps.drain())
            except Exception as e:  # e.g. the device error that ended the run breaks the copy
                records = []
                warnings.warn(
                    f"could not copy the last buffered step values to the host ({e!r}); they are "
                    f"missing from run {self.run_id}",
                    TrackingWarning,
                    stacklevel=2,
                )
            try:
                self._write_records(records)
            except OSError as e:
                warnings.warn(
                    f"could not write the last {len(records)} step values of run {self.run_id} "
                    f"to its spool ({e}); they are missing from it",
                    TrackingWarning,
                    stacklevel=2,
                )
            self._spool.finish(status)
            self._closed = True
        up = self._uploader
        if up is not None and up.error is None:
            up.finish()
            up.join(self._close_timeout)
            if up.is_alive() and up.error is None:
                warnings.warn(
                    f"the upload of run {self.run_id} to {redact_uri(str(self._tracking_uri))} did "
                    f"not finish within {self._close_timeout:g} s; it goes on in the background "
                    f"while this process lives, and the spool {self.spool_dir} keeps everything: "
                    f"{self._sync_hint()}",
                    TrackingWarning,
                    stacklevel=2,
                )
        self._check_sink()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close("FINISHED")
            return
        status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        try:
            self.close(status)
        except Exception as close_error:  # never hide the exception that ended the run
            warnings.warn(
                f"closing run {self.run_id} as {status} failed: {close_error!r}",
                TrackingWarning,
                stacklevel=2,
            )

    def __repr__(self) -> str:
        uri = None if self._tracking_uri is None else redact_uri(self._tracking_uri)
        state = "closed" if self._closed else "open"
        return (
            f"Tracker(run_id={self.run_id!r}, spool_dir={str(self.spool_dir)!r}, "
            f"tracking_uri={uri!r}, {state})"
        )

    # ------------------------------------------------------------------------------ internals
    def _check_open(self, stacklevel: int = 4) -> None:
        self._check_sink(stacklevel)
        if self._closed:
            raise RuntimeError(
                f"this Tracker's run {self.run_id} is closed ({self._spool.status}): start a new "
                "Tracker to log another run"
            )

    def _sync_hint(self) -> str:
        uri = redact_uri(str(self._tracking_uri))
        return (
            f"upload it later with `mtlbench sync {self.spool_dir} --tracking-uri {uri}` or "
            f"mtltrain.tracking.sync({str(self.spool_dir)!r}, {uri!r})"
        )

    def _check_sink(self, stacklevel: int = 3) -> None:
        """Turn an upload failure into ONE warning, on the caller's thread."""
        up = self._uploader
        if up is None or up.error is None or self._sink_warned:
            return
        self._sink_warned = True
        lines = str(up.error).strip().splitlines() or [""]
        err = f"{type(up.error).__name__}: {lines[0]}"  # a database error's SQL is noise here
        if len(err) > 300 or len(lines) > 1:
            err = err[:300] + " ..."
        warnings.warn(
            f"MLflow tracking to {redact_uri(str(self._tracking_uri))} failed ({err}). Tracking to "
            f"the store is off for the rest of run {self.run_id}; training goes on and the spool "
            f"{self.spool_dir} keeps every record: {self._sync_hint()}",
            TrackingWarning,
            stacklevel=stacklevel,
        )

    def _write_artifact(self, data: bytes, artifact_file: str) -> None:
        with self._lock:
            self._check_open(stacklevel=5)
            self._spool.write_artifact(data, artifact_file)
            self._nudge()

    def _nudge(self) -> None:
        up = self._uploader
        if up is not None and up.error is None:
            up.request()

    def _log_system(self, values: dict[str, float], step: int) -> None:
        with self._lock:
            if self._closed:
                return
            ts = now_ms()
            self._write_records(
                [MetricRecord(self._check_key(k), v, step, ts) for k, v in values.items()]
            )
            self._nudge()

    def _check_key(self, key: str) -> str:
        if key not in self._known_keys:
            validate_key(key, "metric")
            self._known_keys.add(key)
        return key

    def _buffer_entries(self, new: list[Entry], step: int) -> None:
        due = self._steps.add(new, step)
        if due:
            self._write_records(to_records(due))
            self._nudge()

    def _flush_buffer(self) -> None:
        due = self._steps.drain()
        if due:
            self._write_records(to_records(due))
            self._nudge()

    def _already_spooled(self, r: MetricRecord) -> bool:
        old = self._spooled.get(r.key, {}).get(r.step)
        return old is not None and (old == r.value or (math.isnan(old) and math.isnan(r.value)))

    def _write_records(self, records: list[MetricRecord]) -> None:
        if self._spooled:
            records = [r for r in records if not self._already_spooled(r)]
        for r in records:
            if not math.isfinite(r.value) and r.key not in self._nonfinite_warned:
                self._nonfinite_warned.add(r.key)
                warnings.warn(
                    f"metric {r.key!r} is {r.value} at step {r.step} (recorded as is; further "
                    "non-finite values of this metric are recorded without a warning)",
                    RuntimeWarning,
                    stacklevel=4,
                )
        self._spool.log_metric_records(records)
