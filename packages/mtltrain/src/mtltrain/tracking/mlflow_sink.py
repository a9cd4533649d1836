"""Upload spooled runs to an MLflow tracking store, incrementally and idempotently.

The one place (with :mod:`.sync`) that imports ``mlflow``, lazily: the package imports and runs
without it. The live :class:`~mtltrain.tracking.Tracker` and :func:`~mtltrain.tracking.sync`
share this code: both read the spool and upload what the store does not have yet, recording
progress in the run's ``synced.json`` after every batch::

    {
        "stores": {
            "<tracking uri, secrets redacted>": {
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

Runs name each other by spool run id (:mod:`.spool`); here those names become the store's:

- a run's parent (``parent_run_id`` in its meta.json) becomes MLflow's ``mlflow.parentRunId``
  tag, so the UI nests the run under it. A parent not in the store yet is uploaded first
  (from the same spool root), else looked up by its ``mtltrain.spool_run_id`` tag;
- every ``{{run:<spool run id>}}`` in a linked tag becomes the address of that run's page in
  the MLflow UI (``#/experiments/<id>/runs/<run id>``, relative to the UI's root, as Markdown
  in a run's description links); a run the store does not have yet becomes a link to a search
  for its ``mtltrain.spool_run_id``, which finds it once it is uploaded, and the tag is
  rewritten with the direct link on a later upload;
- experiment tags (meta.json ``experiment_tags``) are set on the experiment where it does not
  have them yet: a description edited in the UI is kept.

So parents and links come out right whether a run is uploaded live, by ``sync`` after the
store was down, or from a copy of the spool on another machine.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .spool import (
    META_FILE,
    RUN_REF_RE,
    TERMINAL_STATUSES,
    RunSpool,
    iter_jsonl,
    metric_record,
    param_record,
)

__all__ = [
    "PARENT_RUN_TAG",
    "SPOOL_RUN_ID_TAG",
    "MlflowSink",
    "StoreTimeout",
    "call_with_deadline",
    "default_artifact_location",
    "default_tracking_uri",
    "normalize_tracking_uri",
    "redact_uri",
    "sqlite_path",
    "store_key",
    "ui_run_path",
    "ui_runs_path",
]

#: MLflow run tag holding the spool's run id (finds the MLflow run again without synced.json).
SPOOL_RUN_ID_TAG = "mtltrain.spool_run_id"
#: MLflow's tag naming a run's parent run (the UI nests the run under it).
PARENT_RUN_TAG = "mlflow.parentRunId"
#: The MLflow 3 UI shows an experiment as GenAI or model training after this URL parameter
#: (else after the GenAI / Model training switch it remembers per browser, GenAI at first).
_UI_TRAINING_VIEW = "workflowType=machine_learning"


def ui_run_path(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI, relative to the UI's root (``http://host:5000/``)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{_UI_TRAINING_VIEW}"


def ui_runs_path(experiment_id: str, query: str = "") -> str:
    """An experiment's runs table in the MLflow UI, relative to the UI's root; ``query``
    (URL-encoded ``key=value`` pairs joined by ``&``) adds the table's URL state, e.g.
    ``viewStateShareKey=...`` or ``searchFilter=...``."""
    extra = f"&{query}" if query else ""
    return f"#/experiments/{experiment_id}/runs?{_UI_TRAINING_VIEW}{extra}"


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


_SECRET_QUERY = ("password", "passwd", "pwd", "secret", "token", "key", "signature", "sig")


def redact_uri(uri: str) -> str:
    """``uri`` with its secrets replaced by ``***``: the password of ``user:password@host``
    and the values of query parameters named like a secret (``password``, ``token``,
    ``access_key``, ...). Every URI this package prints or writes goes through it."""
    try:
        parts = urllib.parse.urlsplit(uri)
        password = parts.password
    except ValueError:  # unparsable (e.g. a bad port): hide everything between // and @
        head, sep, tail = uri.partition("@")
        return f"{head.partition('//')[0]}//***@{tail}" if sep else uri
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(any(s in k.lower() for s in _SECRET_QUERY) for k, _ in pairs):
            query = "&".join(
                f"{k}=***" if any(s in k.lower() for s in _SECRET_QUERY) else f"{k}={v}"
                for k, v in pairs
            )
    # replace the parts in place (urlunsplit would turn sqlite://// into sqlite://)
    if netloc != parts.netloc:
        uri = uri.replace(f"//{parts.netloc}", f"//{netloc}", 1)
    if query != parts.query:
        uri = uri.replace(f"?{parts.query}", f"?{query}", 1)
    return uri


def store_key(uri: str) -> str:
    """How a store is named in a spool's ``synced.json``: its URI without secrets (the same
    store reached with another password is the same store)."""
    return redact_uri(normalize_tracking_uri(uri))


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and ``:memory:``)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


# What MLflow says of a SQLite store whose creation was cut off: its tables exist but no
# schema version was recorded, so it either recreates them or refuses the schema.
_HALF_CREATED = ("already exists", "found version None")


class StoreTimeout(TimeoutError):
    """A tracking store did not answer within the deadline."""


T = TypeVar("T")


def call_with_deadline(fn: Callable[[], T], timeout: float, what: str, uri: str) -> T:
    """``fn()``, or :class:`StoreTimeout` after ``timeout`` seconds.

    MLflow's client retries a stalled server for many minutes; a call that must not hold up
    training (or a command) runs in a daemon thread and is abandoned at the deadline (it ends
    with its connection). ``what`` and ``uri`` (redacted) name it in the error."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=target, name=f"mtltrain-store-call-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StoreTimeout(
            f"the tracking store {redact_uri(uri)} did not answer within {timeout:g} s ({what})"
        )
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifact location for an experiment this package creates: ``mlartifacts/`` beside a
    SQLite database (MLflow's own client default would be ``./mlruns`` in whatever the working
    directory happens to be); None (the store's default) for every other store."""
    db = sqlite_path(tracking_uri)
    return None if db is None else (db.absolute().parent / "mlartifacts").as_uri()


#: Held while a thread imports mlflow: the upload thread and the system-metrics thread may
#: start at the same moment, and two threads importing one package tree can deadlock.
MLFLOW_IMPORT_LOCK = threading.Lock()


def _import_mlflow_client() -> Any:
    try:
        with MLFLOW_IMPORT_LOCK:
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
        self._resolved: dict[str, tuple[str, str]] = {}  # spool run id -> (experiment, run)
        self._visiting: set[str] = set()  # runs being uploaded up the call stack

    def client(self) -> Any:
        """The MlflowClient for this store (imports mlflow on first use)."""
        if self._client is None:
            self._client = _import_mlflow_client()(tracking_uri=self.tracking_uri)
        return self._client

    def prepare(self) -> None:
        """Make sure a local SQLite store exists with its full schema before anything uses it.

        MLflow creates a missing database on first use and runs its schema migrations over
        several seconds; a process killed in between leaves a database that fails forever
        after ("table ... already exists"). Here a missing database is created and migrated
        under a temporary name beside it, then linked into place only when complete (a link
        never replaces a database another process created meanwhile). Other stores: nothing
        to do."""
        db = sqlite_path(self.tracking_uri)
        if db is None or db.exists():
            return
        db.parent.mkdir(parents=True, exist_ok=True)
        tmp = db.with_name(f".{db.name}.{uuid.uuid4().hex}.creating")
        try:
            client = _import_mlflow_client()(tracking_uri=f"sqlite:///{tmp}")
            client.search_experiments()  # creates and migrates the schema
            engine = getattr(getattr(client, "_tracking_client", None), "store", None)
            with contextlib.suppress(Exception):
                engine.engine.dispose()  # type: ignore[union-attr]
            with contextlib.suppress(FileExistsError):  # created by another process meanwhile
                os.link(tmp, db)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

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
        self.prepare()
        try:
            client = self.client()
            return self._upload(client, spool, experiment, running_status)
        except Exception as e:
            db = sqlite_path(self.tracking_uri)
            if db is not None and any(sign in str(e) for sign in _HALF_CREATED):
                raise RuntimeError(
                    f"the MLflow database {db} is half-created (a process was stopped while "
                    "MLflow was creating its tables, before mtltrain created stores safely): "
                    "if it holds no runs you need, move it away or delete it and sync again; "
                    "the spool keeps every record"
                ) from e
            raise

    def _upload(
        self, client: Any, spool: RunSpool, experiment: str | None, running_status: str | None
    ) -> str:
        self._visiting.add(spool.run_id)
        try:
            with spool.sync_lock():
                return self._upload_locked(client, spool, experiment, running_status)
        finally:
            self._visiting.discard(spool.run_id)

    def _upload_locked(
        self, client: Any, spool: RunSpool, experiment: str | None, running_status: str | None
    ) -> str:
        states = spool.read_sync_states()
        key = store_key(self.tracking_uri)
        if self.tracking_uri in states and key != self.tracking_uri:
            states[key] = states.pop(self.tracking_uri)  # written before URIs were redacted
            spool.write_sync_states(states)
        state = states.setdefault(key, {})

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
        experiment_id = str(state["experiment_id"])
        self._resolved[spool.run_id] = (experiment_id, run_id)
        self._upload_experiment_tags(client, experiment_id, spool, state, save)
        tags = self._run_tags(client, spool, meta, experiment_id, experiment)
        self._upload_tags(client, run_id, tags, state, save)
        self._upload_lines(client, spool.params_path, "params", state, save, self._params)
        self._upload_lines(client, spool.metrics_path, "metrics", state, save, self._metrics)
        self._upload_artifacts(client, spool, state, save)
        self._upload_status(client, spool, meta, running_status, state, save)
        return run_id

    # ----------------------------------------------------------------- runs naming runs
    def _run_tags(
        self,
        client: Any,
        spool: RunSpool,
        meta: dict[str, Any],
        experiment_id: str,
        experiment: str | None,
    ) -> dict[str, str]:
        """The run's tags as the store gets them: its own, its parent's id in this store, and
        its linked tags with their links filled in (see the module doc)."""
        tags = dict(meta["tags"])
        parent = spool.parent_run_id
        if parent is not None:
            found = self._resolve(client, spool.dir.parent, parent, experiment_id, experiment)
            if found is not None:
                tags[PARENT_RUN_TAG] = found[1]

        def link(match: re.Match[str]) -> str:
            ref = match.group(1)
            found = self._resolve(client, spool.dir.parent, ref, experiment_id, experiment)
            if found is not None:
                return ui_run_path(*found)
            query = f"tags.`{SPOOL_RUN_ID_TAG}` = '{ref}'"
            return ui_runs_path(experiment_id, "searchFilter=" + urllib.parse.quote(query))

        for key, template in spool.linked_tags.items():
            tags[key] = RUN_REF_RE.sub(link, template)
        return tags

    def _resolve(
        self,
        client: Any,
        spool_root: Path,
        ref: str,
        experiment_id: str,
        experiment: str | None,
    ) -> tuple[str, str] | None:
        """(experiment id, run id) in this store of the spooled run ``ref``, uploading it
        first when it lies under ``spool_root`` and was never uploaded here; else found by its
        spool-id tag in ``experiment_id``; None when the store does not have it (yet)."""
        if ref in self._resolved:
            return self._resolved[ref]
        run_dir = spool_root / ref
        if (run_dir / META_FILE).is_file() and ref not in self._visiting:
            other = RunSpool.open(run_dir)
            state = other.read_sync_states().get(store_key(self.tracking_uri), {})
            if not state.get("run_id"):
                self._upload(client, other, experiment, None)  # leaves its status as it is
                state = other.read_sync_states().get(store_key(self.tracking_uri), {})
            if state.get("run_id") and state.get("experiment_id"):
                found = (str(state["experiment_id"]), str(state["run_id"]))
                self._resolved[ref] = found
                return found
        runs = client.search_runs(
            [experiment_id], filter_string=f"tags.`{SPOOL_RUN_ID_TAG}` = '{ref}'", max_results=1
        )
        if runs:
            found = (str(runs[0].info.experiment_id), str(runs[0].info.run_id))
            self._resolved[ref] = found
            return found
        return None

    @staticmethod
    def _upload_experiment_tags(
        client: Any,
        experiment_id: str,
        spool: RunSpool,
        state: dict[str, Any],
        save: Callable[[], None],
    ) -> None:
        """Set the run's experiment tags the experiment does not have yet (its own win)."""
        done = state.setdefault("experiment_tags", {})
        pending = {k: v for k, v in spool.experiment_tags.items() if done.get(k) != v}
        if not pending:
            return
        have = client.get_experiment(experiment_id).tags
        for k, v in sorted(pending.items()):
            if k not in have:
                try:
                    client.set_experiment_tag(experiment_id, k, v)
                except Exception:
                    # another run's uploader set it between our read and write (the SQL
                    # store then fails on its unique key): its value stands, as if read first
                    if k not in client.get_experiment(experiment_id).tags:
                        raise
            done[k] = v
        save()

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

        params = [Param(r["key"], r["value"]) for r in records]  # checked by param_record
        client.log_batch(run_id, params=params, synchronous=True)

    @staticmethod
    def _metrics(client: Any, run_id: str, records: list[Any]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(r.key, r.value, r.timestamp, r.step) for r in records]
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
        convert = param_record if kind == "params" else metric_record
        for record, end_offset in iter_jsonl(path, offset, lines + 1, convert):
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
