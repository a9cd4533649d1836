"""The local spool: every tracking record is written here first, whether MLflow is reachable,
installed, or not asked for at all.

One directory per run under a spool root (default ``./mtlruns-spool``)::

    <root>/<run_id>/
        meta.json       experiment, run name, tags, start/end time (ms), status, pid, host;
                        optional: the parent run (a spool run id), experiment tags, and
                        tags that link to other spooled runs (see below); replaced atomically
                        on every change
        params.jsonl    {"key": ..., "value": ...}                          one param a line
        metrics.jsonl   {"key": ..., "value": ..., "step": ..., "timestamp": ...}  one value a line
        artifacts/      files copied in, keeping their relative artifact paths
        synced.json     per tracking URI: the MLflow run id and how much has been uploaded
                        (written by the uploader, see :mod:`.mlflow_sink`)

Runs refer to each other by spool run id, never by a store's id: the id a tracking store gives a
run is known only once it is uploaded (maybe much later, by ``sync``), and differs per store. A
run's ``parent_run_id`` names its parent (a run of the same spool root); ``linked_tags`` are tag
values with ``{{run:<spool run id>}}`` placeholders (a Markdown table linking to runs, say); the
uploader turns both into the store's ids and links when it uploads (:mod:`.mlflow_sink`).

The ``.jsonl`` files are append-only and flushed to the OS on every write, so a killed process
loses at most the line it was writing; readers stop before an incomplete last line. Keys follow
MLflow's rules (checked here, so a bad key fails at the call that made it, not an hour later in
an upload). Metric values are stored as given, NaN and ±inf included (they are data; MLflow
accepts them).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_SPOOL_ROOT",
    "MAX_KEY_LENGTH",
    "MAX_PARAM_VALUE_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "RUN_REF_RE",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "MetricRecord",
    "RunSpool",
    "SpoolWarning",
    "check_inside",
    "find_runs",
    "iter_jsonl",
    "validate_key",
]

#: Spool root used when none is given (relative to the working directory at construction).
DEFAULT_SPOOL_ROOT = Path("mtlruns-spool")
#: Version of the on-disk layout, stored in every meta.json.
SPOOL_FORMAT = 1

RUN_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow's limits (mlflow/utils/validation.py), checked here so a bad record fails when logged.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_EXPERIMENT_TAG_VALUE_LENGTH = 20000
#: a ``{{run:<spool run id>}}`` placeholder in a linked tag (see the module doc)
RUN_REF_RE = re.compile(r"\{\{run:([0-9A-Za-z_\-]+)\}\}")
#: what a placeholder may grow to once replaced by a link (``#/experiments/.../runs/<id>?...``)
RUN_REF_BUDGET = 200
_KEY_RE = re.compile(r"^[/\w.\- :]*$")
_KEY_CHAR_RE = re.compile(r"[/\w.\- :]")

META_FILE = "meta.json"
PARAMS_FILE = "params.jsonl"
METRICS_FILE = "metrics.jsonl"
ARTIFACTS_DIR = "artifacts"
SYNC_FILE = "synced.json"
_INCOMING_DIR = ".incoming"  # artifacts are copied here first, then renamed into artifacts/
_LOCK_FILE = ".sync.lock"


class MetricRecord(NamedTuple):
    """One metric value as spooled (and as MLflow stores it)."""

    key: str
    value: float
    step: int
    timestamp: int  # milliseconds since the epoch


def param_record(rec: Any) -> dict[str, str]:
    """A params.jsonl record, checked (KeyError / TypeError when malformed)."""
    key, value = rec["key"], rec["value"]
    if not isinstance(key, str) or not isinstance(value, str):
        raise TypeError("a param record holds a str key and a str value")
    return {"key": key, "value": value}


def metric_record(rec: Any) -> MetricRecord:
    """A metrics.jsonl record, checked (KeyError / TypeError / ValueError when malformed)."""
    key, value, step, ts = rec["key"], rec["value"], rec["step"], rec["timestamp"]
    if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("a metric record holds a str key and a numeric value")
    if not isinstance(step, int) or not isinstance(ts, int):
        raise TypeError("a metric record holds an int step and an int timestamp")
    return MetricRecord(key, float(value), step, ts)


def now_ms() -> int:
    return int(time.time() * 1000)


def validate_key(key: object, kind: str = "metric") -> str:
    """Check ``key`` against MLflow's rules for metric, param and tag names; return it.

    Raises TypeError / ValueError naming the key, what is wrong and how to fix it.
    """
    if not isinstance(key, str):
        raise TypeError(f"{kind} key {key!r} must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError(f"empty {kind} key: give every {kind} a non-empty name")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"{kind} key {key[:60]!r}... is {len(key)} characters long; MLflow allows at most "
            f"{MAX_KEY_LENGTH}: shorten it"
        )
    if not _KEY_RE.match(key):
        bad = sorted({c for c in key if not _KEY_CHAR_RE.match(c)})
        raise ValueError(
            f"{kind} key {key!r} contains {', '.join(repr(c) for c in bad)}: MLflow allows only "
            "letters, digits, '_', '-', '.', ' ', ':' and '/' in names. Rename it (for a task "
            "name, rename the task)"
        )
    norm = posixpath.normpath(key)
    if norm != key or norm.startswith(("..", "/")) or norm == ".":
        raise ValueError(
            f"{kind} key {key!r} is not a clean path (MLflow stores names as paths; it would "
            f"resolve to {norm!r}): drop leading, trailing or doubled '/' and '.'/'..' parts"
        )
    return key


def _validate_status(status: object, allowed: tuple[str, ...] = RUN_STATUSES) -> str:
    if status not in allowed:
        raise ValueError(f"run status must be one of {', '.join(allowed)}, not {status!r}")
    assert isinstance(status, str)
    return status


def _validate_artifact_path(artifact_path: str | None) -> str:
    """Normalised relative POSIX path inside the run's artifacts ('' for the top level)."""
    if artifact_path is None or artifact_path in ("", "."):
        return ""
    if not isinstance(artifact_path, str):
        raise TypeError(f"artifact_path must be a str or None, not {type(artifact_path).__name__}")
    p = artifact_path.replace("\\", "/")
    norm = posixpath.normpath(p)
    if (
        p.startswith("/")
        or norm.startswith("..")
        or any(part in ("", ".", "..") for part in norm.split("/"))
    ):
        raise ValueError(
            f"artifact_path {artifact_path!r} must be a relative path inside the run's "
            "artifacts (like 'plots' or 'tables/final'), without '..' or a leading '/'"
        )
    return norm


def _tmp_name(directory: Path, stem: str) -> Path:
    """A fresh temporary file name in ``directory`` (created with the umask's permissions by
    whoever opens it with mode 'x', unlike mkstemp's 0600)."""
    return directory / f".{stem}.{uuid.uuid4().hex}.tmp"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = _tmp_name(path.parent, path.name)
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the spool file is damaged") from e


class SpoolWarning(UserWarning):
    """A spool file has a damaged record (skipped) or was repaired."""


def iter_jsonl(
    path: Path,
    offset: int = 0,
    first_line: int = 1,
    convert: Callable[[Any], Any] | None = None,
) -> Iterator[tuple[Any, int]]:
    """Yield ``(record, end_offset)`` for each complete line of ``path`` from byte ``offset``.

    Stops before an incomplete last line (a line being written, or cut off by a kill), so its
    bytes are read again next time. ``convert`` turns each JSON value into the record yielded
    (raising ValueError, TypeError or KeyError for a malformed one). A complete line that is not
    valid JSON or that ``convert`` rejects (damaged by an earlier crash, or by hand) is skipped
    with a :class:`SpoolWarning` naming the file and line; reading goes on. ``first_line``
    numbers lines for those messages.
    """
    if not path.exists():
        return
    with open(path, "rb") as f:
        f.seek(offset)
        lineno = first_line
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            offset += len(raw)
            try:
                record = json.loads(raw)
                if convert is not None:
                    record = convert(record)
            except (ValueError, TypeError, KeyError) as e:
                warnings.warn(
                    f"{path}, line {lineno}: damaged record skipped ({e!r:.120}); the other "
                    "records of the file are read as usual",
                    SpoolWarning,
                    stacklevel=3,
                )
            else:
                yield record, offset
            lineno += 1


def check_inside(run_dir: Path, path: Path) -> Path:
    """``path`` if it lies inside ``run_dir`` once symlinks are resolved; else a ValueError.
    A spool may come from someone else: nothing in it is followed outside its directory."""
    resolved = path.resolve()
    if not resolved.is_relative_to(run_dir.resolve()):
        raise ValueError(
            f"{path} points outside its run directory {run_dir} (to {resolved}): a spool's "
            "files must lie inside it; remove the link (nothing was read through it)"
        )
    return path


@dataclass(frozen=True)
class _Tail:
    """Bytes after the last complete line of a spool file (a line cut off by a kill)."""

    path: Path
    nbytes: int


def find_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Run directories (holding a ``meta.json``) directly under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"spool root {str(root)!r} does not exist or is not a directory: pass the directory "
            "given as spool_root to the Tracker (default ./mtlruns-spool) or one run inside it"
        )
    runs = [p for p in root.iterdir() if p.is_dir() and (p / META_FILE).is_file()]
    return sorted(runs, key=lambda p: (_read_json(p / META_FILE).get("start_time", 0), p.name))


class RunSpool:
    """One run's spool directory: the writer side (:meth:`create`) and the reader side
    (:meth:`open`). Writers are single-process; readers may run at the same time (the
    uploader thread, or ``sync`` from another process)."""

    def __init__(self, run_dir: str | os.PathLike[str], *, _writable: bool = False) -> None:
        self.dir = Path(run_dir).absolute()
        meta_path = self.dir / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{str(self.dir)!r} is not a spooled run (it has no {META_FILE}): pass a spool "
                "root or one run directory inside it"
            )
        self._meta: dict[str, Any] = _read_json(check_inside(self.dir, meta_path))
        if self._meta.get("format") != SPOOL_FORMAT:
            raise ValueError(
                f"{meta_path} has spool format {self._meta.get('format')!r}; this mtltrain reads "
                f"format {SPOOL_FORMAT}: upgrade mtltrain to read it"
            )
        self._writable = _writable
        self._params: dict[str, str] | None = None
        self._params_file: Any = None
        self._metrics_file: Any = None
        self._key_json: dict[str, str] = {}

    # ---------------------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str] = DEFAULT_SPOOL_ROOT,
        *,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: str | None = None,
        experiment_tags: Mapping[str, Any] | None = None,
    ) -> RunSpool:
        """Start a new run directory under ``root`` (created if missing), status RUNNING.

        ``parent`` is the spool run id of this run's parent (a run under the same root);
        ``experiment_tags`` are set on the experiment when the run is uploaded, where the
        experiment does not have them yet (a user's edits in the store win)."""
        if not isinstance(experiment, str) or not experiment.strip():
            raise ValueError(f"experiment must be a non-empty name, not {experiment!r}")
        if run_name is not None and not isinstance(run_name, str):
            raise TypeError(f"run_name must be a str or None, not {type(run_name).__name__}")
        clean_tags = _validate_tags(tags or {})
        clean_exp_tags = _validate_tags(
            experiment_tags or {}, MAX_EXPERIMENT_TAG_VALUE_LENGTH, "experiment tag"
        )
        root = Path(root).absolute()
        if parent is not None:
            _check_run_ref(root, parent, "parent")
        root = Path(root).absolute()
        root.mkdir(parents=True, exist_ok=True)
        start = now_ms()
        run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(start / 1000))
        run_id += f"-{uuid.uuid4().hex[:8]}"
        run_dir = root / run_id
        run_dir.mkdir()
        (run_dir / ARTIFACTS_DIR).mkdir()
        meta = {
            "format": SPOOL_FORMAT,
            "run_id": run_id,
            "experiment": experiment,
            "run_name": run_name,
            "tags": clean_tags,
            "parent_run_id": parent,
            "experiment_tags": clean_exp_tags,
            "linked_tags": {},
            "start_time": start,
            "end_time": None,
            "status": "RUNNING",
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        _write_json_atomic(run_dir / META_FILE, meta)
        (run_dir / PARAMS_FILE).touch()
        (run_dir / METRICS_FILE).touch()
        return cls(run_dir, _writable=True)

    @classmethod
    def reopen(cls, run_dir: str | os.PathLike[str]) -> RunSpool:
        """Continue writing an existing run (a training run resumed from a checkpoint): the run
        goes back to RUNNING, owned by this process; records append after the old ones."""
        spool = cls(run_dir, _writable=True)
        spool.repair_tails()
        spool._meta.update(
            status="RUNNING", end_time=None, pid=os.getpid(), host=socket.gethostname()
        )
        _write_json_atomic(spool.dir / META_FILE, spool._meta)
        return spool

    @classmethod
    def open(cls, run_dir: str | os.PathLike[str]) -> RunSpool:
        """Open an existing run directory for reading."""
        return cls(run_dir)

    # ---------------------------------------------------------------------------- properties
    @property
    def run_id(self) -> str:
        return str(self._meta["run_id"])

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of meta.json as last read or written by this object."""
        return json.loads(json.dumps(self._meta))

    def reload_meta(self) -> dict[str, Any]:
        self._meta = _read_json(self._inside(self.dir / META_FILE))
        return self.meta

    @property
    def status(self) -> str:
        return str(self._meta["status"])

    @property
    def params_path(self) -> Path:
        return self.dir / PARAMS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.dir / METRICS_FILE

    @property
    def artifacts_dir(self) -> Path:
        return self.dir / ARTIFACTS_DIR

    # ---------------------------------------------------------------------------- writing
    def _check_writable(self) -> None:
        if not self._writable:
            raise RuntimeError(f"spooled run {self.dir} was opened for reading only")
        if self._meta["status"] != "RUNNING":
            raise RuntimeError(
                f"run {self.run_id} is already {self._meta['status']}: start a new run to log more"
            )

    def _append(self, attr: str, path: Path, lines: list[str]) -> None:
        f = getattr(self, attr)
        try:
            if f is None:
                f = open(self._inside(path), "a", encoding="utf-8")  # noqa: SIM115 (kept open)
                setattr(self, attr, f)
            f.write("".join(lines))
            f.flush()
        except OSError as e:
            raise OSError(
                e.errno,
                f"could not append to the spool file {path}: {e.strerror or e} (free disk space; "
                "a line cut off here is repaired when the run is resumed)",
            ) from e

    def logged_params(self) -> dict[str, str]:
        if self._params is None:
            self._params = self.read_params()
        return dict(self._params)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Append params (values as ``str(value)``). A key logged before with the same value is
        skipped; with a different value it is a ValueError (MLflow's rule: params are
        immutable). Nothing is written unless every param is valid."""
        self._check_writable()
        if self._params is None:
            self._params = self.read_params()
        new: dict[str, str] = {}
        for key, value in params.items():
            validate_key(key, "param")
            text = value if isinstance(value, str) else str(value)
            if len(text) > MAX_PARAM_VALUE_LENGTH:
                raise ValueError(
                    f"param {key!r} is {len(text)} characters long; MLflow allows at most "
                    f"{MAX_PARAM_VALUE_LENGTH}: log long values (a whole config) as an "
                    "artifact instead (Tracker.log_dict / log_text)"
                )
            old = self._params.get(key, new.get(key))
            if old is not None and old != text:
                raise ValueError(
                    f"param {key!r} was already logged as {old!r} and cannot change to {text!r} "
                    "(MLflow params are immutable): log the new value under another key, or "
                    "as a metric or tag if it changes during the run"
                )
            if old is None:
                new[key] = text
        if new:
            lines = [json.dumps({"key": k, "value": v}) + "\n" for k, v in new.items()]
            self._append("_params_file", self.params_path, lines)
            self._params.update(new)

    def log_metric_records(self, records: Iterable[MetricRecord]) -> int:
        """Append metric records (already validated); returns how many were written."""
        self._check_writable()
        keys = self._key_json
        lines = []
        for key, value, step, timestamp in records:
            k = keys.get(key)
            if k is None:
                k = keys[key] = json.dumps(key)
            # repr of a finite float is valid JSON; json.dumps writes NaN / Infinity
            v = repr(value) if math.isfinite(value) else json.dumps(value)
            lines.append(
                f'{{"key": {k}, "value": {v}, "step": {step}, "timestamp": {timestamp}}}\n'
            )
        if lines:
            self._append("_metrics_file", self.metrics_path, lines)
        return len(lines)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags; values as ``str(value)``."""
        self._check_writable()
        clean = _validate_tags(tags)
        if clean:
            self._meta["tags"].update(clean)
            _write_json_atomic(self.dir / META_FILE, self._meta)

    def set_linked_tags(self, tags: Mapping[str, str]) -> None:
        """Set (or overwrite) tags whose values link to other spooled runs: every
        ``{{run:<spool run id>}}`` in a value becomes that run's address in the store when the
        run is uploaded (see the module doc). The runs named must lie under the same spool root
        (or be in the store already, uploaded from elsewhere)."""
        self._check_writable()
        clean: dict[str, str] = {}
        for key, value in tags.items():
            validate_key(key, "tag")
            if not isinstance(value, str):
                raise TypeError(f"linked tag {key!r} must be a str, not {type(value).__name__}")
            refs = RUN_REF_RE.findall(value)
            longest = len(RUN_REF_RE.sub("", value)) + RUN_REF_BUDGET * len(refs)
            if longest > MAX_TAG_VALUE_LENGTH:
                raise ValueError(
                    f"linked tag {key!r} may grow to {longest} characters once its {len(refs)} "
                    f"link(s) are filled in; MLflow allows at most {MAX_TAG_VALUE_LENGTH}: shorten "
                    "it, or log the text as an artifact"
                )
            clean[key] = value
        if clean:
            self._meta.setdefault("linked_tags", {}).update(clean)
            _write_json_atomic(self.dir / META_FILE, self._meta)

    def set_parent(self, parent: str | None) -> None:
        """Make ``parent`` (a spool run id under the same root, or None) this run's parent: a
        resumed run joins the group of the invocation that resumed it."""
        self._check_writable()
        if parent is not None:
            _check_run_ref(self.dir.parent, parent, "parent")
            if parent == self.run_id:
                raise ValueError(f"run {self.run_id} cannot be its own parent")
        self._meta["parent_run_id"] = parent
        _write_json_atomic(self.dir / META_FILE, self._meta)

    @property
    def parent_run_id(self) -> str | None:
        """The spool run id of this run's parent (None for a top-level run)."""
        parent = self._meta.get("parent_run_id")
        return parent if isinstance(parent, str) and parent else None

    @property
    def experiment_tags(self) -> dict[str, str]:
        tags = self._meta.get("experiment_tags")
        return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}

    @property
    def linked_tags(self) -> dict[str, str]:
        tags = self._meta.get("linked_tags")
        return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None
    ) -> list[str]:
        """Copy a file, or a directory with its contents, into ``artifacts/<artifact_path>/``
        (like ``MlflowClient.log_artifact``). Returns the relative artifact paths written.
        Each file is copied under a temporary name and renamed into place, so a reader never
        sees half a file."""
        self._check_writable()
        src = Path(local_path)
        if not src.exists():
            raise FileNotFoundError(f"artifact {str(src)!r} does not exist: log an existing file")
        base = _validate_artifact_path(artifact_path)
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file())
            pairs = [(p, posixpath.join(base, src.name, *p.relative_to(src).parts)) for p in files]
        else:
            pairs = [(src, posixpath.join(base, src.name))]
        for file, rel in pairs:
            self._copy_in(file, rel)
        return [rel for _, rel in pairs]

    def write_artifact(self, data: bytes, artifact_file: str) -> str:
        """Write ``data`` as the artifact ``artifact_file`` (a relative path with a file name)."""
        self._check_writable()
        rel = _validate_artifact_path(artifact_file)
        if not rel:
            raise ValueError(f"artifact_file must name a file, like 'config.json', not {rel!r}")
        tmp = self._incoming()
        with open(tmp, "xb") as f:
            f.write(data)
        self._move_in(tmp, rel)
        return rel

    def _incoming(self) -> Path:
        incoming = self.dir / _INCOMING_DIR
        incoming.mkdir(exist_ok=True)
        return _tmp_name(incoming, "artifact")

    def _copy_in(self, src: Path, rel: str) -> None:
        tmp = self._incoming()
        shutil.copyfile(src, tmp)
        self._move_in(tmp, rel)

    def _move_in(self, tmp: Path, rel: str) -> None:
        dest = self.artifacts_dir.joinpath(*rel.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            tmp.unlink()
            raise ValueError(
                f"artifact {rel!r} is already a directory in this run: pick another name"
            )
        os.replace(tmp, dest)

    def finish(self, status: str = "FINISHED", end_time: int | None = None) -> None:
        """Mark the run terminated; closes and fsyncs the spool files."""
        _validate_status(status, TERMINAL_STATUSES)
        self._check_writable()
        self.close_files(sync=True)
        self._meta["status"] = status
        self._meta["end_time"] = now_ms() if end_time is None else int(end_time)
        _write_json_atomic(self.dir / META_FILE, self._meta)

    def close_files(self, *, sync: bool = False) -> None:
        for attr in ("_params_file", "_metrics_file"):
            f = getattr(self, attr)
            if f is not None:
                f.flush()
                if sync:
                    os.fsync(f.fileno())
                f.close()
                setattr(self, attr, None)

    # ---------------------------------------------------------------------------- reading
    def read_params(self) -> dict[str, str]:
        records = iter_jsonl(self._inside(self.params_path), convert=param_record)
        return {rec["key"]: rec["value"] for rec, _ in records}

    def read_metrics(self) -> list[MetricRecord]:
        return [
            rec for rec, _ in iter_jsonl(self._inside(self.metrics_path), convert=metric_record)
        ]

    def _inside(self, path: Path) -> Path:
        return check_inside(self.dir, path)

    def artifact_paths(self) -> list[str]:
        """Relative POSIX paths of every artifact file, sorted. Symlinks are not followed out
        of the run directory: one that points outside it is a ValueError naming it."""
        root = self.artifacts_dir
        if not root.is_dir():
            return []
        self._inside(root)
        out = []
        for folder, dirs, files in os.walk(root, followlinks=False):
            for name in [*dirs, *files]:
                path = Path(folder, name)
                if path.is_symlink():
                    self._inside(path)
            out += ["/".join(Path(folder, f).relative_to(root).parts) for f in files]
            dirs[:] = [d for d in dirs if not Path(folder, d).is_symlink()]
        return sorted(rel for rel in out if root.joinpath(*rel.split("/")).is_file())

    def incomplete_tails(self) -> list[_Tail]:
        """Spool files ending in an incomplete line (cut off by a kill mid-write)."""
        tails = []
        for path in (self.params_path, self.metrics_path):
            if not path.exists():
                continue
            with open(self._inside(path), "rb") as f:
                size = f.seek(0, os.SEEK_END)
                block = min(size, 1 << 16)
                while True:  # read backwards until a newline (lines are short)
                    f.seek(size - block)
                    data = f.read(block)
                    if b"\n" in data or block == size:
                        break
                    block = min(size, block * 4)
            cut = len(data) - (data.rfind(b"\n") + 1)
            if cut:
                tails.append(_Tail(path, cut))
        return tails

    def repair_tails(self) -> list[_Tail]:
        """Cut incomplete last lines (a write cut off by a kill or a full disk) so that
        appending continues on a clean line; returns what was cut (with a SpoolWarning)."""
        tails = self.incomplete_tails()
        for tail in tails:
            with open(tail.path, "r+b") as f:
                f.truncate(f.seek(0, os.SEEK_END) - tail.nbytes)
            warnings.warn(
                f"{tail.path}: cut an incomplete last line of {tail.nbytes} bytes (written when "
                "the process was stopped) before appending",
                SpoolWarning,
                stacklevel=3,
            )
        return tails

    def last_activity_ms(self) -> int:
        """Latest modification time of the run's record files (when a killed run last wrote)."""
        paths = [self.dir / META_FILE, self.params_path, self.metrics_path]
        mtimes = [p.stat().st_mtime_ns for p in paths if p.exists()]
        return max(mtimes) // 1_000_000

    # ---------------------------------------------------------------------------- sync state
    def read_sync_states(self) -> dict[str, dict[str, Any]]:
        """``{tracking_uri: state}`` from synced.json (empty when never uploaded)."""
        path = self.dir / SYNC_FILE
        if not path.exists():
            return {}
        data = _read_json(path)
        stores = data.get("stores", {}) if isinstance(data, dict) else {}
        return stores if isinstance(stores, dict) else {}

    def write_sync_states(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        _write_json_atomic(self.dir / SYNC_FILE, {"format": SPOOL_FORMAT, "stores": states})

    @contextlib.contextmanager
    def sync_lock(self) -> Iterator[None]:
        """Serialise uploads of this run (a live uploader and a ``sync`` from another process)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no inter-process lock
            yield
            return
        with open(self.dir / _LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _validate_tags(
    tags: Mapping[str, Any], max_length: int = MAX_TAG_VALUE_LENGTH, kind: str = "tag"
) -> dict[str, str]:
    if not isinstance(tags, Mapping):
        raise TypeError(f"{kind}s must be a mapping of str to str, not {type(tags).__name__}")
    out: dict[str, str] = {}
    for key, value in tags.items():
        validate_key(key, "tag")
        text = value if isinstance(value, str) else str(value)
        if len(text) > max_length:
            raise ValueError(
                f"{kind} {key!r} is {len(text)} characters long; MLflow allows at most "
                f"{max_length}: log it as an artifact instead"
            )
        out[key] = text
    return out


_RUN_ID_RE = re.compile(r"^[0-9A-Za-z_\-]+$")


def _check_run_ref(root: Path, run_id: object, what: str) -> str:
    """``run_id`` if it names a spooled run directly under ``root``; else a ValueError."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise ValueError(
            f"{what} must be a spool run id (like '20260101-120000-ab12cd34'), not {run_id!r}"
        )
    if not (root / run_id / META_FILE).is_file():
        raise ValueError(
            f"{what} run {run_id!r} is not a spooled run under {root}: a run's {what} must be "
            "spooled under the same spool root"
        )
    return run_id
