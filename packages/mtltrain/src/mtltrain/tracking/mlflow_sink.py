"""Upload spooled runs to an MLflow tracking store, incrementally and idempotently.

The one place (with :mod:`.sync`) that imports ``mlflow``, lazily: the package imports and runs
without it. The live :class:`~mtltrain.tracking.Tracker` and :func:`~mtltrain.tracking.sync`
share this code: both read the spool and upload what the store does not have yet, recording
progress in the run's ``synced.json`` after every batch::

    {
        "stores": {
            "<tracking uri>": {
                "run_id": "<mlflow run id>",
                "experiment_id": "...",
                "params_lines": 12,
                "params_offset": 480,
                "metrics_lines": 3400,
                "metrics_offset": ...,
                "tags": {...},
                "artifacts": {"config.json": [size, mtime_ns]},
                "status": "FINISHED",
                "end_time": 1700000000000,
            }
        }
    }

So an upload cut off anywhere (server down, DB locked, process killed) resumes with the
remainder, and a second upload of a complete run sends nothing. If ``synced.json`` is lost, the
MLflow run is found again by its ``mtltrain.spool_run_id`` tag.
"""

from __future__ import annotations

import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .spool import TERMINAL_STATUSES, RunSpool, iter_jsonl

__all__ = [
    "SPOOL_RUN_ID_TAG",
    "MlflowSink",
    "default_artifact_location",
    "default_tracking_uri",
    "normalize_tracking_uri",
    "redact_uri",
]

#: MLflow run tag holding the spool's run id (finds the MLflow run again without synced.json).
SPOOL_RUN_ID_TAG = "mtltrain.spool_run_id"

# MLflow's log_batch limits (mlflow/utils/validation.py).
_PARAMS_PER_BATCH = 100
_TAGS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


def default_tracking_uri(spool_root: str | os.PathLike[str] = "mtlruns-spool") -> str:
    """The local SQLite store used when MLflow tracking is asked for without a URI:
    ``sqlite:///<parent of spool_root>/mlflow.db``.

    With the default spool root (``./mtlruns-spool``) that is ``./mlflow.db``, MLflow's own
    default store, so ``mlflow ui`` started in the same directory shows the runs. Artifacts of
    experiments created there go to ``mlartifacts/`` beside the database
    (:func:`default_artifact_location`).
    """
    db = Path(spool_root).absolute().parent / "mlflow.db"
    return f"sqlite:///{db}"


def normalize_tracking_uri(uri: str) -> str:
    """Check a tracking URI and make it independent of the working directory (a relative
    ``sqlite:///x.db`` becomes absolute), so the spool's upload records stay keyed by one URI."""
    if not isinstance(uri, str):
        raise TypeError(f"tracking_uri must be a str (like 'sqlite:///mlflow.db'), not {uri!r}")
    uri = uri.strip()
    if not uri:
        raise ValueError(
            "tracking_uri is empty: pass None to spool only, or a store such as "
            "'sqlite:///mlflow.db' or 'http://127.0.0.1:5000'"
        )
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///") :]
        path, sep, query = rest.partition("?")
        if path and path != ":memory:" and not path.startswith("/"):
            path = str(Path(path).absolute())
            return f"sqlite:///{path}{sep}{query}"
        return uri
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return uri


def redact_uri(uri: str) -> str:
    """``uri`` without a password (for messages)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifact location for an experiment this package creates: ``mlartifacts/`` beside a
    SQLite database (MLflow's own client default would be ``./mlruns`` in whatever the working
    directory happens to be); None (the store's default) for every other store."""
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///") :].partition("?")[0]
        if path and path != ":memory:":
            return (Path(path).absolute().parent / "mlartifacts").as_uri()
    return None


def _import_mlflow_client() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise ImportError(
            f"MLflow is not installed ({e}): install it with `pip install 'mtltrain[mlflow]'` "
            "to track to a store, or track with tracking_uri=None (spool only)"
        ) from e
    return MlflowClient


class MlflowSink:
    """Uploads spooled runs to one tracking store (any URI MLflow understands).

    Args:
        tracking_uri: the store, e.g. ``sqlite:///mlflow.db`` or ``http://127.0.0.1:5000``.
        artifact_location: artifact root for experiments this sink creates; default
            :func:`default_artifact_location`. Existing experiments keep theirs.
        probe_timeout: for http(s) stores, seconds to wait for ``/health`` before each upload
            pass. MLflow's client retries an unreachable server for minutes; the probe makes an
            outage fail fast instead.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        artifact_location: str | None = None,
        probe_timeout: float = 5.0,
    ) -> None:
        self.tracking_uri = normalize_tracking_uri(tracking_uri)
        self.artifact_location = (
            artifact_location
            if artifact_location is not None
            else default_artifact_location(self.tracking_uri)
        )
        self.probe_timeout = float(probe_timeout)
        self._client: Any = None
        self._experiments: dict[str, str] = {}

    def client(self) -> Any:
        """The MlflowClient for this store (imports mlflow on first use)."""
        if self._client is None:
            self._client = _import_mlflow_client()(tracking_uri=self.tracking_uri)
        return self._client

    def probe(self) -> None:
        """Raise ConnectionError at once if an http(s) tracking server does not answer."""
        parts = urllib.parse.urlsplit(self.tracking_uri)
        if parts.scheme not in ("http", "https"):
            return
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        url = urllib.parse.urlunsplit(
            (parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", "")
        )
        try:
            with urllib.request.urlopen(url, timeout=self.probe_timeout):
                pass
        except urllib.error.HTTPError:
            return  # the server answered (maybe without a /health route): it is up
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConnectionError(
                f"MLflow tracking server {redact_uri(self.tracking_uri)} is unreachable: {reason}"
            ) from e

    # -------------------------------------------------------------------------------- upload
    def upload(
        self,
        run_dir: str | os.PathLike[str],
        *,
        experiment: str | None = None,
        running_status: str | None = None,
    ) -> str:
        """Upload what the store does not have yet of one spooled run; return its MLflow run id.

        Args:
            experiment: experiment for a run not uploaded to this store before (default: the
                one in meta.json).
            running_status: status to give the MLflow run while the spool still says RUNNING
                (a killed process): None leaves it RUNNING.
        """
        spool = RunSpool.open(run_dir)
        self.probe()
        client = self.client()
        with spool.sync_lock():
            states = spool.read_sync_states()
            state = states.setdefault(self.tracking_uri, {})

            def save() -> None:
                spool.write_sync_states(states)

            meta = spool.reload_meta()
            if not state.get("run_id"):
                run_id, experiment_id = self._find_or_create_run(client, spool, meta, experiment)
                state.clear()
                state.update(
                    run_id=run_id,
                    experiment_id=experiment_id,
                    params_lines=0,
                    params_offset=0,
                    metrics_lines=0,
                    metrics_offset=0,
                    tags={},
                    artifacts={},
                    status="RUNNING",
                    end_time=None,
                )
                save()
            run_id = str(state["run_id"])
            self._upload_tags(client, run_id, meta["tags"], state, save)
            self._upload_lines(client, spool.params_path, "params", state, save, self._params)
            self._upload_lines(client, spool.metrics_path, "metrics", state, save, self._metrics)
            self._upload_artifacts(client, spool, state, save)
            self._upload_status(client, spool, meta, running_status, state, save)
            return run_id

    def _experiment_id(self, client: Any, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = str(client.create_experiment(name, self.artifact_location))
            except Exception:
                exp = client.get_experiment_by_name(name)  # created meanwhile by another process
                if exp is None:
                    raise
                exp_id = str(exp.experiment_id)
        elif exp.lifecycle_stage != "active":
            raise ValueError(
                f"experiment {name!r} is deleted in {redact_uri(self.tracking_uri)}: restore it "
                f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or upload "
                "to another experiment name"
            )
        else:
            exp_id = str(exp.experiment_id)
        self._experiments[name] = exp_id
        return exp_id

    def _find_or_create_run(
        self, client: Any, spool: RunSpool, meta: dict[str, Any], experiment: str | None
    ) -> tuple[str, str]:
        exp_id = self._experiment_id(client, experiment or meta["experiment"])
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{SPOOL_RUN_ID_TAG}` = '{spool.run_id}'",
            max_results=1,
        )
        if found:
            return str(found[0].info.run_id), exp_id
        run = client.create_run(
            exp_id,
            start_time=meta["start_time"],
            tags={SPOOL_RUN_ID_TAG: spool.run_id},
            run_name=meta.get("run_name"),
        )
        return str(run.info.run_id), exp_id

    @staticmethod
    def _upload_tags(
        client: Any,
        run_id: str,
        tags: dict[str, str],
        state: dict[str, Any],
        save: Callable[[], None],
    ) -> None:
        from mlflow.entities import RunTag

        pending = [(k, v) for k, v in sorted(tags.items()) if state["tags"].get(k) != v]
        for i in range(0, len(pending), _TAGS_PER_BATCH):
            chunk = pending[i : i + _TAGS_PER_BATCH]
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in chunk], synchronous=True)
            state["tags"].update(chunk)
            save()

    @staticmethod
    def _params(client: Any, run_id: str, records: list[Any]) -> None:
        from mlflow.entities import Param

        params = [Param(r["key"], r["value"]) for r in records]
        client.log_batch(run_id, params=params, synchronous=True)

    @staticmethod
    def _metrics(client: Any, run_id: str, records: list[Any]) -> None:
        from mlflow.entities import Metric

        metrics = [
            Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"]))
            for r in records
        ]
        client.log_batch(run_id, metrics=metrics, synchronous=True)

    @staticmethod
    def _upload_lines(
        client: Any,
        path: Path,
        kind: str,
        state: dict[str, Any],
        save: Callable[[], None],
        send: Callable[[Any, str, list[Any]], None],
    ) -> None:
        batch_size = _PARAMS_PER_BATCH if kind == "params" else _METRICS_PER_BATCH
        offset = int(state[f"{kind}_offset"])
        lines = int(state[f"{kind}_lines"])
        size = path.stat().st_size if path.exists() else 0
        if offset > size:
            raise ValueError(
                f"{path} is shorter ({size} bytes) than what was already uploaded to this store "
                f"({offset} bytes): the spool file was replaced. Delete synced.json beside it "
                "to upload the run again (MLflow stores skip exact duplicates of metrics)"
            )
        batch: list[Any] = []
        end = offset
        for record, end_offset in iter_jsonl(path, offset, first_line=lines + 1):
            batch.append(record)
            end = end_offset
            if len(batch) == batch_size:
                send(client, state["run_id"], batch)
                lines += len(batch)
                state[f"{kind}_lines"], state[f"{kind}_offset"] = lines, end
                save()
                batch = []
        if batch:
            send(client, state["run_id"], batch)
            lines += len(batch)
            state[f"{kind}_lines"], state[f"{kind}_offset"] = lines, end
            save()

    @staticmethod
    def _upload_artifacts(
        client: Any, spool: RunSpool, state: dict[str, Any], save: Callable[[], None]
    ) -> None:
        for rel in spool.artifact_paths():
            path = spool.artifacts_dir.joinpath(*rel.split("/"))
            st = path.stat()
            signature = [st.st_size, st.st_mtime_ns]
            if state["artifacts"].get(rel) == signature:
                continue
            parent = posixpath.dirname(rel) or None
            client.log_artifact(state["run_id"], str(path), artifact_path=parent)
            state["artifacts"][rel] = signature
            save()

    def _upload_status(
        self,
        client: Any,
        spool: RunSpool,
        meta: dict[str, Any],
        running_status: str | None,
        state: dict[str, Any],
        save: Callable[[], None],
    ) -> None:
        status = meta["status"]
        end_time = meta.get("end_time")
        if status == "RUNNING":
            if running_status is None:
                return
            status, end_time = running_status, spool.last_activity_ms()
        changed = False
        if status in TERMINAL_STATUSES:
            reported = state.setdefault("incomplete_tails", {})
            for tail in spool.incomplete_tails():
                if reported.get(tail.path.name) != tail.nbytes:
                    warnings.warn(
                        f"{tail.path} ends in an incomplete line ({tail.nbytes} bytes, cut off "
                        "when the process stopped); it was not uploaded",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    reported[tail.path.name] = tail.nbytes
                    changed = True
        if [state.get("status"), state.get("end_time")] != [status, end_time]:
            client.set_terminated(state["run_id"], status, end_time)
            state["status"], state["end_time"] = status, end_time
            changed = True
        if changed:
            save()
