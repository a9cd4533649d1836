"""The runs of a benchmark as ``mtlbench run`` records them and everything else reads them back.

Each run is tracked with the tags below and ends with the selected epoch's metrics,
``final.{val,test}.<task>.<metric>`` and ``final.epoch`` (named by :mod:`mtltrain.results`,
which writes them; runs tracked before they were renamed have ``final/...``, read too).
:func:`collect_runs` reads them from MLflow or from the local spool.

Besides the training runs, ``mtlbench`` tracks two kinds of run of its own, tagged
``mtlbench.kind``: a ``group`` run per method and invocation, the parent of that method's
seed runs (its metrics are their mean), and a ``report`` run holding the report. Neither is a
result of its own: :func:`collect_runs` leaves them out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mtltrain.results import FINAL_EPOCH, final_key
from mtltrain.tracking.mlflow_sink import PARENT_RUN_TAG, SPOOL_RUN_ID_TAG

from .spec import Spec

__all__ = [
    "KIND_GROUP",
    "KIND_REPORT",
    "STL",
    "TAG_KIND",
    "TAG_METHOD",
    "TAG_SEED",
    "TAG_SELECTION",
    "TAG_SPEC",
    "TAG_STL_TASK",
    "NoRunsError",
    "RunRecord",
    "collect_runs",
]

#: The method name of single-task runs (one run per task and seed).
STL = "stl"
TAG_SPEC = "mtlbench.spec"
TAG_METHOD = "mtlbench.method"
TAG_SEED = "mtlbench.seed"
TAG_STL_TASK = "mtlbench.stl_task"
TAG_SELECTION = "mtlbench.selection"
#: what an mtlbench run that is not a training run is (absent on training runs)
TAG_KIND = "mtlbench.kind"
KIND_GROUP = "group"
KIND_REPORT = "report"
_LEGACY_FINAL_EPOCH = "final/epoch"  # FINAL_EPOCH's name before it lost its slash

Table = dict[str, dict[str, float]]
"""task -> metric -> value"""


class NoRunsError(LookupError):
    """There is nothing to report: no store, no experiment, or no runs of the spec in it."""


# ----------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class RunRecord:
    """One benchmark run as read back from MLflow or the spool.

    ``test`` / ``val`` hold the run's final metrics (task -> metric -> value; an STL run has
    only its own task). Only ``status == "FINISHED"`` runs count in a report. ``run_id`` is
    the id where the run was read (the store's, or the spool's); ``spool_run_id`` the spool's
    (what a report links by, see :mod:`mtltrain.tracking.mlflow_sink`), ``parent_run_id`` its
    group run's id where it was read.
    """

    run_id: str
    method: str
    seed: int
    stl_task: str | None
    test: Table
    val: Table
    start_time: int  # milliseconds since the epoch
    source: str  # "mlflow" | "spool"
    status: str = "FINISHED"
    selection: str | None = None
    epoch: int | None = None
    spool_run_id: str | None = None
    parent_run_id: str | None = None

    @property
    def key(self) -> tuple[str, int, str | None]:
        """What makes two runs duplicates: (method, seed, STL task)."""
        return (self.method, self.seed, self.stl_task if self.method == STL else None)

    def describe(self) -> str:
        task = f", task {self.stl_task}" if self.method == STL else ""
        return f"run {self.run_id} ({self.method}, seed {self.seed}{task})"


# ----------------------------------------------------------------------------------- collect
def collect_runs(
    spec: Spec,
    *,
    tracking_uri: str | None = None,
    spool_root: str | Path | None = None,
) -> list[RunRecord]:
    """Every run of ``spec`` (any status; :func:`build_report` keeps the FINISHED ones).

    From the MLflow store at ``tracking_uri`` when given (experiment ``spec.experiment``, runs
    tagged ``mtlbench.spec = spec.name``), else from the spool under ``spool_root`` (default
    ``./mtlruns-spool``). Runs without valid method/seed tags are skipped with a warning.

    Raises:
        NoRunsError: the store, experiment or spool does not exist, or holds no run of the
            spec; the message says to run ``mtlbench run <spec>``.
    """
    if tracking_uri is not None:
        return _collect_mlflow(spec, tracking_uri)
    from mtltrain.tracking import DEFAULT_SPOOL_ROOT

    return _collect_spool(spec, Path(spool_root) if spool_root is not None else DEFAULT_SPOOL_ROOT)


def _hint(spec: Spec) -> str:
    return f"run `mtlbench run {spec.name}` first"


def _collect_mlflow(spec: Spec, tracking_uri: str) -> list[RunRecord]:
    from mtltrain.tracking.mlflow_sink import normalize_tracking_uri, redact_uri

    uri = normalize_tracking_uri(tracking_uri)
    shown = redact_uri(uri)
    if uri.startswith("sqlite:///"):  # do not create an empty database by reading one
        db = uri[len("sqlite:///") :].partition("?")[0]
        if db != ":memory:" and not Path(db).is_file():
            raise NoRunsError(
                f"no MLflow store at {shown} (the file {db!r} does not exist): {_hint(spec)} "
                f"with that tracking URI, or pass the store the runs went to"
            )
    try:
        from mlflow import MlflowClient
    except ImportError as e:
        raise ImportError(
            f"reading runs from {shown} needs MLflow ({e}): pip install 'mtlbench[mlflow]', or "
            f"report from the local spool instead (no tracking URI)"
        ) from e
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is None:
        raise NoRunsError(
            f"MLflow store {shown} has no experiment {spec.experiment!r}: {_hint(spec)} with "
            f"this tracking URI (or pass the store the runs went to)"
        )
    # A name with a quote cannot go into MLflow's filter syntax: filter here instead.
    query = "" if "'" in spec.name else f"tags.`{TAG_SPEC}` = '{spec.name}'"
    records: list[RunRecord] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment.experiment_id], filter_string=query, max_results=1000, page_token=token
        )
        for run in page:
            tags = dict(run.data.tags)
            if tags.get(TAG_SPEC) != spec.name or tags.get(TAG_KIND):
                continue
            record = _record(
                spec,
                run_id=run.info.run_id,
                tags=tags,
                metrics=dict(run.data.metrics),
                start_time=run.info.start_time,
                status=run.info.status,
                source="mlflow",
                where=f"MLflow run {run.info.run_id} in {shown}",
                spool_run_id=tags.get(SPOOL_RUN_ID_TAG),
                parent_run_id=tags.get(PARENT_RUN_TAG),
            )
            if record is not None:
                records.append(record)
        token = page.token
        if not token:
            break
    if not records:
        raise NoRunsError(
            f"experiment {spec.experiment!r} in {shown} has no run tagged "
            f"{TAG_SPEC}={spec.name!r}: {_hint(spec)}"
        )
    return records


def _collect_spool(spec: Spec, root: Path) -> list[RunRecord]:
    from mtltrain.tracking import RunSpool, find_runs

    if not root.is_dir():
        raise NoRunsError(
            f"spool root {str(root)!r} does not exist: {_hint(spec)} (it spools there), pass "
            f"the spool root the runs went to, or read them from MLflow with a tracking URI"
        )
    records: list[RunRecord] = []
    for run_dir in find_runs(root):
        spool = RunSpool.open(run_dir)
        meta = spool.meta
        tags = {str(k): str(v) for k, v in (meta.get("tags") or {}).items()}
        if tags.get(TAG_SPEC) != spec.name or tags.get(TAG_KIND):
            continue
        latest: dict[str, tuple[int, int, float]] = {}
        for rec in spool.read_metrics():  # MLflow's "latest": largest step, then timestamp
            old = latest.get(rec.key)
            if old is None or (rec.step, rec.timestamp) >= old[:2]:
                latest[rec.key] = (rec.step, rec.timestamp, rec.value)
        record = _record(
            spec,
            run_id=spool.run_id,
            tags=tags,
            metrics={k: v[2] for k, v in latest.items()},
            start_time=int(meta.get("start_time") or 0),
            status=str(meta.get("status")),
            source="spool",
            where=f"spooled run {run_dir}",
            spool_run_id=spool.run_id,
            parent_run_id=spool.parent_run_id,
        )
        if record is not None:
            records.append(record)
    if not records:
        raise NoRunsError(
            f"the spool {str(root)!r} has no run tagged {TAG_SPEC}={spec.name!r}: {_hint(spec)}"
        )
    return records


def _record(
    spec: Spec,
    *,
    run_id: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    start_time: int,
    status: str,
    source: str,
    where: str,
    spool_run_id: str | None = None,
    parent_run_id: str | None = None,
) -> RunRecord | None:
    method = tags.get(TAG_METHOD)
    seed_text = tags.get(TAG_SEED)
    try:
        seed = int(seed_text) if seed_text is not None else None
    except ValueError:
        seed = None
    if not method or seed is None:
        warnings.warn(
            f"{where} is tagged {TAG_SPEC}={spec.name!r} but has no valid {TAG_METHOD} / "
            f"{TAG_SEED} tags ({TAG_METHOD}={method!r}, {TAG_SEED}={seed_text!r}): left out of "
            f"the report; was it started by something other than `mtlbench run`?",
            UserWarning,
            stacklevel=4,
        )
        return None
    epoch = metrics.get(FINAL_EPOCH, metrics.get(_LEGACY_FINAL_EPOCH))
    return RunRecord(
        run_id=run_id,
        method=method,
        seed=seed,
        stl_task=tags.get(TAG_STL_TASK) or None,
        test=_final(spec, metrics, "test"),
        val=_final(spec, metrics, "val"),
        start_time=int(start_time or 0),
        source=source,
        status=status,
        selection=tags.get(TAG_SELECTION),
        epoch=None if epoch is None or not math.isfinite(epoch) else int(epoch),
        spool_run_id=spool_run_id,
        parent_run_id=parent_run_id,
    )


def _final(spec: Spec, metrics: Mapping[str, float], split: str) -> Table:
    """``final.<split>.<task>.<metric>`` of every task/metric of the spec that the run has."""
    out: Table = {}
    for task, names in spec.tasks.items():
        for metric in names:
            value = metrics.get(final_key(split, task, metric))
            if value is None:  # a run tracked before the final.* keys lost their slashes
                value = metrics.get(f"final/{split}/{task}/{metric}")
            if value is not None:
                out.setdefault(task, {})[metric] = float(value)
    return out
