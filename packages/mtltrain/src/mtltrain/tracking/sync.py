"""Upload spooled runs to a tracking store later: ``mtlbench sync`` calls :func:`sync`.

Typical use: train on a machine without MLflow (or with the server down), copy the spool
directory back, then::

    from mtltrain.tracking import sync

    sync("mtlruns-spool", "http://127.0.0.1:5000")  # or "sqlite:///mlflow.db"

Uploads are incremental and idempotent (see :mod:`.mlflow_sink`): syncing twice sends nothing
the second time, and a run whose live upload stopped half-way gets only the remainder.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from .mlflow_sink import MlflowSink, default_tracking_uri, redact_uri
from .spool import DEFAULT_SPOOL_ROOT, META_FILE, TERMINAL_STATUSES, RunSpool, find_runs

__all__ = ["process_alive", "sync"]


def process_alive(meta: dict[str, Any]) -> bool | None:
    """Is the process that wrote a spooled run still running? None when it ran on another
    host (it cannot be told from here)."""
    if meta.get("host") != socket.gethostname():
        return None
    pid = meta.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def sync(
    path: str | os.PathLike[str] = DEFAULT_SPOOL_ROOT,
    tracking_uri: str | None = None,
    *,
    experiment: str | None = None,
    running_status: str | None = "KILLED",
    artifact_location: str | None = None,
) -> list[str]:
    """Upload every run under a spool root (or one run directory) to ``tracking_uri``.

    Args:
        path: a spool root (as given to the Tracker; default ``./mtlruns-spool``) or one run
            directory inside it.
        tracking_uri: any MLflow tracking URI; default :func:`default_tracking_uri` of the
            spool root (``sqlite:///<parent of the spool root>/mlflow.db``).
        experiment: experiment for runs not yet uploaded to this store (default: the one each
            run was started with). Runs already in the store stay where they are.
        running_status: what a run whose spool still says RUNNING becomes in the store when
            its process is gone: ``"KILLED"`` (default: it stopped without closing its tracker,
            e.g. killed or out of memory), ``"FAILED"``, ``"FINISHED"``, or None to leave it
            RUNNING. A run whose process is still alive on this host is always left RUNNING;
            a process on another host cannot be checked, so ``running_status`` applies (a later
            sync of a newer copy of the spool sets the final status and adds the new records).

    Returns:
        The MLflow run ids, one per spooled run, oldest run first.

    Raises:
        FileNotFoundError: ``path`` is neither a spool root nor a run directory.
        ImportError: MLflow is not installed.
        Whatever the store raises (unreachable, locked, ...); the records uploaded before the
        error are remembered, so syncing again continues from there.
    """
    if running_status is not None and running_status not in TERMINAL_STATUSES:
        raise ValueError(
            f"running_status must be one of {', '.join(TERMINAL_STATUSES)} or None (leave such "
            f"runs RUNNING), not {running_status!r}"
        )
    root = Path(path)
    if (root / META_FILE).is_file():
        runs, spool_root = [root], root.parent
    else:
        runs, spool_root = find_runs(root), root
    sink = MlflowSink(
        tracking_uri if tracking_uri is not None else default_tracking_uri(spool_root),
        artifact_location=artifact_location,
    )
    run_ids = []
    for run_dir in runs:
        meta = RunSpool.open(run_dir).meta
        status_if_running = running_status
        if meta["status"] == "RUNNING" and process_alive(meta):
            status_if_running = None  # a live run: upload what it has so far
        try:
            run_ids.append(
                sink.upload(run_dir, experiment=experiment, running_status=status_if_running)
            )
        except Exception as e:
            e.add_note(
                f"while uploading the spooled run {run_dir} to {redact_uri(sink.tracking_uri)}; "
                "what was uploaded before the error is recorded in its synced.json: fix the "
                "cause and sync again to send the rest"
            )
            raise
    return run_ids
