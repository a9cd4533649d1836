"""What a user of the MLflow UI sees of a benchmark: the experiment's description and runs
view, and the report as a run of its own.

- **The experiment** is tagged as model training (``mlflow.experimentKind``), described
  (``mlflow.note.content``, shown above its runs) and given a saved runs view whose visible
  columns are Δp and every task's test metrics (``mlflow.sharedViewState.<key>``, the state
  the UI's *Share* button stores). :func:`runs_table_url` opens it: the MLflow 3 UI reads
  ``viewStateShareKey=<key>`` and, for the model-training view, ``workflowType``.
  Experiment tags are set only where the experiment does not have them, so a description
  edited in the UI stays.
- **The report** (``report.md``, ``report.png``, ``report.json``) goes to a run named
  ``report`` (tag ``mtlbench.kind = report``) on every ``mtlbench run`` and ``report``; its
  description is the report's Markdown with each row's method linking to its run (its group
  run), filled in when the run reaches the store (live, or by ``mtlbench sync`` later).

Everything goes through the spool like every other record; nothing here imports mlflow
unless a store is read.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtltrain.results import FINAL_TEST_DELTA_P, final_key
from mtltrain.tracking.mlflow_sink import redact_uri, ui_run_path, ui_runs_path

from .report import Report, render_markdown
from .runs import KIND_REPORT, TAG_KIND, TAG_SPEC
from .spec import Spec

__all__ = [
    "DELTA_P_STD",
    "SEEDS",
    "VIEW_TAG_PREFIX",
    "benchmark_links",
    "experiment_description",
    "experiment_tags",
    "log_report",
    "report_store",
    "run_url",
    "runs_table_url",
    "runs_view",
    "ui_base",
    "where_lines",
]

#: MLflow's experiment tag prefix for a shared runs view (``viewStateShareKey`` in the URL)
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: metrics of a group run beside the means under the seed runs' own names
DELTA_P_STD = "final.test.delta_p_std"
SEEDS = "final.seeds"
#: where ``mtlbench ui`` serves the UI by default
DEFAULT_UI = "http://127.0.0.1:5000"


def runs_view(spec: Spec) -> tuple[str, dict[str, Any]]:
    """(share key, view state) of the spec's runs view: runs nested under their group (the
    UI nests only in its default order, by start time), with Δp, its std over seeds and
    every task's test metrics as visible columns, in that order. The key is a digest of the
    state, so a spec with other tasks gets a view of its own."""
    columns = [FINAL_TEST_DELTA_P, DELTA_P_STD] + [
        final_key("test", t, m) for t, ms in spec.tasks.items() for m in ms
    ]
    ids = [f"metrics.`{c}`" for c in columns]
    # in this order, wide enough for the numbers (the UI's default width cuts them)
    state = {"selectedColumns": ids, "columnOrder": ids, "columnWidths": dict.fromkeys(ids, 160)}
    text = json.dumps(state, sort_keys=True)
    key = "mtlbench-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return key, state


def experiment_description(spec: Spec) -> str:
    """The experiment's description (Markdown): what the spec is and how its runs read."""
    metrics = ", ".join(
        f"`{final_key('test', t, m)}` ({'↑' if h else '↓'})"
        for t, ms in spec.tasks.items()
        for m, h in ms.items()
    )
    return (
        f"**{spec.name}**: {spec.description or 'a multi-task benchmark'}\n\n"
        f"Runs of `mtlbench run {spec.name}`: each method's seeds are grouped under a run named "
        "after the method, whose metrics are the mean over its seeds (expand the row for each "
        "seed's run); `stl` holds the single-task runs (one per task and seed). The `report` "
        "runs hold the Δp table (`report.md`, `.png`, `.json`) with links to the runs.\n\n"
        f"Columns: `{FINAL_TEST_DELTA_P}` is Δp in % against the single-task reference "
        f"(Eq. (2) of Lin et al.; higher is better), `{DELTA_P_STD}` its std over seeds; "
        f"{metrics} the test metrics at each run's selected epoch."
    )


def experiment_tags(spec: Spec) -> dict[str, str]:
    """Tags for the spec's experiment: model training, its description, its runs view."""
    key, state = runs_view(spec)
    return {
        "mlflow.experimentKind": "custom_model_development",
        "mlflow.note.content": experiment_description(spec),
        VIEW_TAG_PREFIX + key: json.dumps(state),
    }


def ui_base(tracking_uri: str, port: int = 5000) -> tuple[str, bool]:
    """(root URL of the MLflow UI for runs in ``tracking_uri``, whether ``mtlbench ui`` must
    serve it): an http(s) tracking server serves its own UI (the link leaves out any user,
    password or query: the browser asks); a database needs ``mtlbench ui`` (127.0.0.1,
    ``port``)."""
    if tracking_uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(tracking_uri)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/", False
    return f"http://127.0.0.1:{port}/", True


def runs_table_url(base: str, experiment_id: str, spec: Spec) -> str:
    """The spec's runs view (:func:`runs_view`) in the UI at ``base``."""
    key, _ = runs_view(spec)
    return base + ui_runs_path(experiment_id, "viewStateShareKey=" + urllib.parse.quote(key))


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the UI at ``base``."""
    return base + ui_run_path(experiment_id, run_id)


def log_report(
    report: Report,
    paths: Mapping[str, Path],
    *,
    spec: Spec,
    tracking_uri: str | None,
    spool_root: str | Path,
    close_timeout: float = 30.0,
    provenance: Mapping[str, str] | None = None,
) -> Any:
    """Track ``report`` as a run named ``report`` (spooled, uploaded to ``tracking_uri`` when
    given): the files in ``paths`` as artifacts, its Markdown with links to every row's run
    as the run's description. Returns the closed :class:`~mtltrain.tracking.Tracker` (its
    ``mlflow_run_id`` / ``mlflow_experiment_id`` say where it went)."""
    from mtltrain.tracking import Tracker
    from mtltrain.tracking.provenance import provenance_tags

    if provenance is None:
        provenance = provenance_tags(
            packages=("torch", "mtlbalance", "mtltrain", "mtlbench", "mlflow"), code=Path(__file__)
        )
    tags = {**provenance, TAG_SPEC: spec.name, TAG_KIND: KIND_REPORT}
    tracker = Tracker(
        spec.experiment,
        spool_root=spool_root,
        tracking_uri=tracking_uri,
        run_name="report",
        tags=tags,
        experiment_tags=experiment_tags(spec),
        close_timeout=close_timeout,
    )
    with tracker:
        for path in paths.values():
            tracker.log_artifact(path)
        note = render_markdown(report, links=True)
        try:
            tracker.set_linked_tags({"mlflow.note.content": note})
        except ValueError:  # too long for a tag: the table and the words, the rest in report.md
            short = note.split("\n## Δp per task", 1)[0].split("\n## Runs", 1)[0]
            tracker.set_linked_tags(
                {"mlflow.note.content": short + "\n\nThe whole report: `report.md` (Artifacts)."}
            )
    return tracker


def report_store(
    tracking_uri: str | None, spool_root: str | Path, *, from_spool: bool
) -> str | None:
    """Where ``mtlbench report`` logs its report run: the store it read (``tracking_uri``, or
    the default store beside the spool); with ``--from-spool``, the store given, else the
    default store only if it exists (a report read from the spool creates no database)."""
    from mtltrain.tracking.mlflow_sink import default_tracking_uri, sqlite_path

    if tracking_uri:
        return tracking_uri
    uri = default_tracking_uri(spool_root)
    if not from_spool:
        return uri
    db = sqlite_path(uri)
    return uri if db is not None and db.is_file() else None


def where_lines(
    run: Any, spec: Spec, report_md: Path | None, spool_root: str | Path, port: int = 5000
) -> list[str]:
    """What ``mtlbench run`` / ``report`` print last: where the report is, and the links that
    open the runs view and the report run in the MLflow UI (or how to get there)."""
    lines = [] if report_md is None else [f"report: {report_md}"]
    uri = run.tracking_uri
    if uri is None:
        lines.append(
            f"spool: {spool_root} (no MLflow store): `mtlbench sync` uploads it, "
            "`mtlbench ui` shows it"
        )
        return lines
    exp_id, run_id = run.mlflow_experiment_id, run.mlflow_run_id
    if exp_id is None or run_id is None:
        lines.append(
            f"MLflow: {redact_uri(uri)} did not get the runs yet; the spool {spool_root} has "
            f"them: `mtlbench sync {spool_root} --tracking-uri {redact_uri(uri)}`"
        )
        return lines
    base, serve = ui_base(uri, port)
    lines.append(f"MLflow: {redact_uri(uri)}" + ("  (open it with `mtlbench ui`)" if serve else ""))
    lines.append(f"  runs, Δp and test metrics: {runs_table_url(base, exp_id, spec)}")
    lines.append(f"  this report:               {run_url(base, exp_id, run_id)}")
    return lines


def benchmark_links(
    tracking_uri: str, port: int, specs: str | None, *, timeout: float = 30.0
) -> list[tuple[str, str]]:
    """(experiment name, runs view URL) of every ``mtlbench/<spec>`` experiment in the store,
    for ``mtlbench ui`` to print; empty when the store cannot be read (the UI still starts)."""
    from mtltrain.tracking.mlflow_sink import call_with_deadline, sqlite_path

    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return []

    def read() -> list[Any]:
        from mlflow import MlflowClient

        return list(MlflowClient(tracking_uri).search_experiments())

    try:
        experiments = call_with_deadline(read, timeout, "listing experiments", tracking_uri)
    except Exception:
        return []
    from .spec import find_spec

    base, _ = ui_base(tracking_uri, port)
    out = []
    for exp in experiments:
        if not exp.name.startswith("mtlbench/"):
            continue
        views = sorted(k for k in exp.tags if k.startswith(VIEW_TAG_PREFIX + "mtlbench-"))
        if not views:
            continue
        key = views[-1][len(VIEW_TAG_PREFIX) :]
        try:  # the spec's own view, when the spec is at hand and its view is in the store
            own, _ = runs_view(find_spec(exp.name[len("mtlbench/") :], specs))
            key = own if VIEW_TAG_PREFIX + own in exp.tags else key
        except Exception:
            pass
        query = "viewStateShareKey=" + urllib.parse.quote(key)
        out.append((exp.name, base + ui_runs_path(str(exp.experiment_id), query)))
    return out
