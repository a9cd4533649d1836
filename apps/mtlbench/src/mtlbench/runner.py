"""Run a benchmark spec: spec -> problem -> model -> balancer -> trainer -> tracking.

Every run is tracked with the tags :mod:`mtlbench.report` reads back (``mtlbench.spec``,
``mtlbench.method``, ``mtlbench.seed``, ``mtlbench.stl_task``, ``mtlbench.selection``) and logs
its selected epoch's metrics as ``final.{val,test}.<task>.<metric>``. Every run also records
where it came from (command line with secrets redacted, git commit, package versions: see
:mod:`mtltrain.tracking.provenance`), its spec (file and resolved values) and MLflow's system
metrics; the seeds of each method run under a *group* run for the method (MLflow's parent run),
which ends with their mean metrics (:mod:`mtlbench.publish` describes what the UI shows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import mtlbalance
from mtltrain.distributed import is_distributed, local_device, world_size
from mtltrain.problem import Problem
from mtltrain.results import FINAL_TEST_DELTA_P, final_key
from mtltrain.tracking import Tracker
from mtltrain.tracking.mlflow_sink import MlflowSink, call_with_deadline, redact_uri
from mtltrain.tracking.provenance import environment, provenance_tags
from mtltrain.trainer import (
    FitResult,
    Trainer,
    load_checkpoint_info,
    seed_everything,
)

from .launch import NullTracker, is_rank0, quiet_preflight
from .preflight import (
    check_checkpoints,
    check_methods,
    delete_checkpoints,
    lock_out_dir,
    saved_checkpoint,
)
from .publish import DELTA_P_STD, SEEDS, experiment_tags
from .reference import stl_reference, usable_runs
from .runs import (
    KIND_GROUP,
    STL,
    TAG_KIND,
    TAG_METHOD,
    TAG_SPEC,
    NoRunsError,
    RunRecord,
    collect_runs,
)
from .spec import Spec

__all__ = [
    "build_problem",
    "earlier_stl_runs",
    "resolve_device",
    "run_benchmark",
    "run_one",
    "run_provenance",
    "stl_references",
    "with_epochs",
]

Table = dict[str, dict[str, float]]

#: packages whose versions every run records (with python and the problem's own package)
VERSIONED = ("torch", "mtlbalance", "mtltrain", "mtlbench", "mlflow", "numpy", "polars")


def run_provenance(spec: Spec) -> dict[str, str]:
    """The provenance tags of a run of ``spec`` (:func:`mtltrain.tracking.provenance_tags`):
    the command, the commit of the code's git work tree, the versions of :data:`VERSIONED`
    and of the package providing the spec's problem builder."""
    return provenance_tags(packages=_versioned(spec), code=Path(__file__))


def _versioned(spec: Spec) -> list[str]:
    top = spec.problem.partition(":")[0].partition(".")[0]
    return list(dict.fromkeys([*VERSIONED, top]))


def _silent(text: str) -> None:
    """The echo of ranks other than 0."""


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given (``cuda`` in a
    job: this rank's GPU, ``cuda:LOCAL_RANK``)."""
    if device == "auto":
        return local_device("cuda" if torch.cuda.is_available() else "cpu")
    dev = local_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use cpu or auto")
    return dev


def build_problem(spec: Spec) -> Problem:
    """Build the spec's problem and check its tasks and metrics against the spec's."""
    problem = spec.builder()(data=spec.data, model=spec.model)
    if not isinstance(problem, Problem):
        raise TypeError(
            f"{spec.problem} returned {type(problem).__name__}, not mtltrain.problem.Problem"
        )
    got = {
        t.name: {m: metric.higher_is_better for m, metric in t.metrics.items()}
        for t in problem.tasks
    }
    if got != spec.tasks:
        raise ValueError(
            f"spec {spec.name!r} declares tasks/metrics {spec.tasks} (True = higher is better), "
            f"but {spec.problem} provides {got}; make [tasks] in {spec.path} match the problem"
        )
    return problem


def run_benchmark(
    spec: Spec,
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    stl: bool,
    tracking_uri: str | None,
    spool_root: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    resume: bool = False,
    restart: bool = False,
    progress: bool | None = None,
    log_every: int = 50,
    store_timeout: float = 30.0,
    echo: Callable[[str], None] = print,
) -> list[RunRecord]:
    """Run STL (when ``stl``) and every method for every seed; return the finished runs, and
    the earlier STL runs used as the reference when this call trained none.

    Before anything trains, every method is built with its spec options and takes one step
    on a tiny problem, and runs that already have a checkpoint in ``out_dir`` are refused
    unless ``resume`` (continue them) or ``restart`` (delete them and start over) says what to
    do; one invocation at a time may use ``out_dir``.

    Model selection and ``final.test.delta_p`` use our STL runs as the reference when every
    task has one (from this call, or earlier runs of the spec in the same store/spool);
    otherwise selection falls back to each run's first epoch and the test Δp to the spec's
    published STL row (when it has one). Store lookups give up after ``store_timeout``
    seconds (with a warning: the spool keeps everything).
    """
    if resume and restart:
        raise ValueError("--resume continues earlier runs, --restart deletes them: pick one")
    with quiet_preflight():
        check_methods(spec, [*methods, *([STL] if stl else [])])
    if not is_rank0():  # rank 0 speaks for the job
        echo = _silent
    out_dir = Path(out_dir)
    planned: list[tuple[str, int, str | None]] = []
    if stl:
        planned += [(STL, seed, task) for seed in seeds for task in spec.tasks]
    planned += [(method, seed, None) for seed in seeds for method in methods]
    check_checkpoints(
        [checkpoint_path(spec, out_dir, *run) for run in planned],
        resume=resume,
        restart=restart,
    )
    lock = lock_out_dir(out_dir) if is_rank0() else contextlib.nullcontext()
    with lock, contextlib.ExitStack() as groups_open:
        dev = resolve_device(device)
        problem = build_problem(spec)
        records: list[RunRecord] = []
        tags = run_provenance(spec)
        env = environment(packages=_versioned(spec), code=Path(__file__))
        env_json = json.dumps(env, indent=1, sort_keys=True) + "\n"
        common: dict[str, Any] = {
            "problem": problem,
            "tracking_uri": tracking_uri,
            "spool_root": Path(spool_root),
            "out_dir": out_dir,
            "device": dev,
            "resume": resume,
            "restart": restart,
            "progress": progress,
            "log_every": log_every,
            "provenance": tags,
            "environment_json": env_json,
        }
        groups: dict[str, Tracker] = {}

        def group(method: str) -> str | None:
            """The spool run id of ``method``'s group run, started on first use (rank 0)."""
            if not is_rank0():
                return None
            if method not in groups:
                groups[method] = groups_open.enter_context(
                    _group_tracker(spec, method, seeds, tracking_uri, Path(spool_root), tags)
                )
            return groups[method].run_id

        for k, (method, seed, task) in enumerate(planned, 1):
            if method != STL:
                continue
            label = f"run {k} of {len(planned)}, stl ({task}) seed {seed}"
            echo(f"[{spec.name}] {label}")
            records.append(
                run_one(spec, STL, seed, stl_task=task, label=label, parent=group(STL), **common)
            )
        earlier: list[RunRecord] = []
        if not records:
            earlier = earlier_stl_runs(spec, tracking_uri, spool_root, timeout=store_timeout)
        val_ref, test_ref = stl_references(spec, records or earlier)
        if val_ref is None and methods:
            where = "the published STL row" if test_ref is not None else "nothing (no Δp)"
            echo(
                f"[{spec.name}] no STL runs cover every task: model selection uses each run's "
                f"first epoch, test Δp uses {where}; add --stl for our own STL reference"
            )
        for k, (method, seed, _) in enumerate(planned, 1):
            if method == STL:
                continue
            label = f"run {k} of {len(planned)}, {method} seed {seed}"
            echo(f"[{spec.name}] {label}")
            records.append(
                run_one(
                    spec,
                    method,
                    seed,
                    label=label,
                    val_reference=val_ref,
                    test_reference=test_ref,
                    parent=group(method),
                    **common,
                )
            )
        if is_rank0():
            _close_groups(spec, groups, records + earlier)
    return records + earlier


def _group_tracker(
    spec: Spec,
    method: str,
    seeds: Sequence[int],
    tracking_uri: str | None,
    spool_root: Path,
    provenance: dict[str, str],
) -> Tracker:
    """The group run of ``method``: the parent of its seed runs in this invocation."""
    tracker = Tracker(
        spec.experiment,
        spool_root=spool_root,
        tracking_uri=tracking_uri,
        run_name=method,
        tags={**provenance, TAG_SPEC: spec.name, TAG_METHOD: method, TAG_KIND: KIND_GROUP},
        experiment_tags=experiment_tags(spec),
    )
    tracker.log_params({"method": method, "seeds": " ".join(str(s) for s in seeds)})
    return tracker


def _close_groups(spec: Spec, groups: Mapping[str, Tracker], runs: Sequence[RunRecord]) -> None:
    """Log each group's mean metrics over its seeds (the report's numbers for its row:
    ``final.test.<task>.<metric>``, ``final.test.delta_p`` and its std, ``final.seeds``) and a
    description linking to its runs; the groups are closed by the caller."""
    from .report import build_report

    report = build_report(spec, runs)
    for method, tracker in groups.items():
        row = report.ours.get(method)
        mine = [
            r for r in (row.runs if row is not None else ()) if r.parent_run_id == tracker.run_id
        ]
        if row is None or not mine:
            continue
        values = {
            final_key("test", t, m): s.mean for t, ms in row.metrics.items() for m, s in ms.items()
        }
        values[SEEDS] = float(len(row.seeds))
        if row.delta_p is not None:  # the STL row's is 0 up to rounding: no -2.6e-15 shown
            values[FINAL_TEST_DELTA_P] = round(row.delta_p.mean, 10) + 0.0
            values[DELTA_P_STD] = round(row.delta_p.std, 10) + 0.0
        tracker.log_metrics(values, step=0)
        seeds = ", ".join(
            f"[seed {r.seed}{' ' + r.stl_task if r.stl_task else ''}]({{{{run:{r.run_id}}}}})"
            for r in mine
        )
        what = "single-task runs" if method == STL else f"`{method}`"
        tracker.set_linked_tags(
            {
                "mlflow.note.content": f"{what} on `{spec.name}`: the mean over its runs "
                f"({seeds}); Δp against {report.reference_label}."
            }
        )


def checkpoint_path(spec: Spec, out_dir: Path, method: str, seed: int, task: str | None) -> Path:
    """Where one run of ``spec`` keeps its checkpoints under ``out_dir``."""
    return out_dir / "checkpoints" / spec.name / _run_name(method, seed, task).replace("+", "_")


def _run_name(method: str, seed: int, task: str | None) -> str:
    return f"{method}-seed{seed}" + (f"-{task}" if task else "")


def stl_references(spec: Spec, stl_runs: Sequence[RunRecord]) -> tuple[Table | None, Table | None]:
    """(validation, test) references from ``stl_runs`` by the rule the report uses
    (:mod:`mtlbench.reference`): validation only from our own STL runs."""
    ref = stl_reference(spec, usable_runs(spec, stl_runs).kept)
    return ref.val, ref.test


def earlier_stl_runs(
    spec: Spec, tracking_uri: str | None, spool_root: str | Path, *, timeout: float = 30.0
) -> list[RunRecord]:
    """FINISHED STL runs of ``spec`` from earlier invocations: from the local spool, else from
    the tracking store (runs synced there from elsewhere). A store that cannot be read within
    ``timeout`` seconds is reported and skipped: it only means no earlier reference."""
    runs: list[RunRecord] = []
    with contextlib.suppress(NoRunsError):
        runs = collect_runs(spec, spool_root=spool_root)
    stl = [r for r in runs if r.method == STL and r.status == "FINISHED"]
    if stl or tracking_uri is None:
        return stl

    def lookup() -> list[RunRecord]:
        MlflowSink(tracking_uri).probe()  # a server that is down: one failed connect
        return collect_runs(spec, tracking_uri=tracking_uri)

    try:
        runs = call_with_deadline(lookup, timeout, "looking up earlier STL runs", tracking_uri)
    except NoRunsError:
        return []
    except Exception as e:  # an unreachable, stalled or broken store must not stop training
        warnings.warn(
            f"could not look up earlier STL runs in {redact_uri(tracking_uri)} "
            f"({type(e).__name__}: {e}); going on without them",
            RuntimeWarning,
            stacklevel=2,
        )
        return []
    return [r for r in runs if r.method == STL and r.status == "FINISHED"]


def run_one(
    spec: Spec,
    method: str,
    seed: int,
    *,
    problem: Problem,
    tracking_uri: str | None,
    spool_root: Path,
    out_dir: Path,
    device: torch.device,
    stl_task: str | None = None,
    val_reference: Table | None = None,
    test_reference: Table | None = None,
    resume: bool = False,
    restart: bool = False,
    progress: bool | None = None,
    log_every: int = 50,
    label: str | None = None,
    parent: str | None = None,
    provenance: Mapping[str, str] | None = None,
    environment_json: str | None = None,
) -> RunRecord:
    """Train one (method, seed[, STL task]) run of ``spec`` and return its record.

    An earlier checkpoint of the run is continued with ``resume``, deleted with ``restart``,
    and otherwise an error (never silently overwritten). ``parent``: the spool run id of its
    group run; ``provenance``: tags saying where it came from (:func:`run_provenance`);
    ``environment_json``: the text of its ``environment.json`` (made once per invocation)."""
    train = spec.train
    run_name = _run_name(method, seed, stl_task)
    ckpt_dir = checkpoint_path(spec, out_dir, method, seed, stl_task)
    resume_id = None
    last = saved_checkpoint(ckpt_dir)
    if last is not None:
        check_checkpoints([ckpt_dir], resume=resume, restart=restart)
        if resume:
            resume_id = _tracker_run_id(last)
            if resume_id is not None and not (spool_root / resume_id).is_dir():
                resume_id = None  # the spool went elsewhere: continue training, new tracked run
        else:  # --restart: start over, as asked
            delete_checkpoints(ckpt_dir)

    seed_everything(seed)
    model = problem.make_model()
    sharded = None
    if problem.shard is None:
        model = model.to(device)
    else:  # (shard moves the model: its tables may be on the meta device)
        if not is_distributed():
            raise ValueError(
                f"spec {spec.name!r} has [model] tables = 'sharded': the tables are sharded "
                f"across the ranks of a distributed run; run it with --nproc N (N >= 2) or "
                f"under torchrun, or use tables = 'approx' in one process"
            )
        sharded = problem.shard(model, device)  # a collective: every rank
    params = problem.balancer_parameters(model)
    options = spec.options_for(method)
    if method == STL:
        options["task"] = stl_task
    if params.tables is not None:
        options["tables"] = params.tables
    if is_distributed():  # every rank balances the global batch (docs/distributed.md)
        options["process_group"] = "world"
    balancer = mtlbalance.make(method, params.shared, params.tasks, **options)
    trained = sharded.replicated_parameters() if sharded is not None else model.parameters()
    optimizer = _optimizer(spec, [*trained, *balancer.parameters()])
    scheduler = _scheduler(spec, optimizer)
    tags = {
        **(provenance or {}),
        "mtlbench.spec": spec.name,
        "mtlbench.method": method,
        "mtlbench.seed": str(seed),
        "mlflow.note.content": _run_note(spec, method, seed, stl_task),
    }
    if stl_task is not None:
        tags["mtlbench.stl_task"] = stl_task
    config = {
        "spec": spec.as_dict(),
        "method": method,
        "method_options": {
            k: v for k, v in options.items() if k not in ("tables", "process_group")
        },
        "world_size": world_size(),
        "balance_tables": problem.balance_tables,
        "seed": seed,
        "stl_task": stl_task,
        "device": str(device),
        "problem": problem.info,
        "reference": "stl" if val_reference is not None else "first_epoch",
    }
    tracker: Any = (
        NullTracker()
        if not is_rank0()
        else Tracker(
            spec.experiment,
            spool_root=spool_root,
            tracking_uri=tracking_uri,
            run_name=run_name,
            tags=tags,
            log_every=log_every,
            resume=resume_id,
            parent=parent,
            experiment_tags=experiment_tags(spec),
            system_metrics=True,
        )
    )
    with tracker:
        if resume_id is None:
            tracker.log_params(config)
            tracker.log_dict(config, "config.json")
            if spec.path is not None and spec.path.is_file():
                tracker.log_artifact(spec.path, "spec")
        else:  # a resumed run: where it came from this time
            tracker.set_tags(dict(provenance or {}))
        if environment_json is not None:
            tracker.log_text(environment_json, "environment.json")
        trainer = Trainer(
            model,
            problem.tasks,
            balancer,
            optimizer,
            config=dataclasses.replace(
                train.trainer,
                data_parallel=problem.data_parallel,
                checkpoint_dir=str(ckpt_dir),
                seed=seed,
                progress=progress,
                progress_label=label,
                log_every=log_every,
            ),
            scheduler=scheduler,
            tracker=tracker,
            val_reference=val_reference if stl_task is None else None,
            test_reference=test_reference,
            select_tasks=[stl_task] if stl_task is not None else None,
            device=device,
            unpack=problem.unpack,
            sharded=sharded,
        )
        start = time.time()
        eval_bs = train.eval_batch_size or train.batch_size
        result = trainer.fit(
            problem.loader(problem.train, train.batch_size, True),
            problem.loader(problem.val, eval_bs, False),
            problem.loader(problem.test, eval_bs, False),
            resume=resume,
        )
        tracker.set_tags({"mtlbench.selection": result.selection})
        tracker.log_metrics({"final.seconds": time.time() - start}, step=0)
        return _record(
            tracker.run_id, method, seed, stl_task, result, int(start * 1000), tracker.parent
        )


def _tracker_run_id(last: Path) -> str | None:
    """The tracked run a checkpoint belongs to (``last.pt``, or a sharded run's ``last/``:
    rank 0's saved values, read by mtlrec without a model)."""
    if last.is_file():
        run_id = load_checkpoint_info(last)["tracker_run_id"]
    else:
        from mtlrec.sharded_checkpoint import has_sharded_checkpoint, saved_extra

        if not has_sharded_checkpoint(last):
            return None  # a save that never finished: the run starts over
        run_id = saved_extra(last).get("tracker_run_id")
    return None if run_id is None else str(run_id)


def _run_note(spec: Spec, method: str, seed: int, stl_task: str | None) -> str:
    """A run's description (Markdown, shown on its page)."""
    what = f"single-task run for `{stl_task}`" if stl_task else f"`{method}`"
    return (
        f"{what}, seed {seed}, on `{spec.name}`: {spec.description}\n\n"
        "Curves per task: `train/<loss|grad_norm|weight>/<task>` per step, `val/<task>/...` "
        "and `test/<task>/...` per epoch (Model metrics; `plots/` has them on log axes). The "
        "selected epoch's values: `final.*`. Where it came from: the tags `mtltrain.command`, "
        "`mlflow.source.git.commit`, `versions.*`; the artifacts `config.json`, `spec/`, "
        "`environment.json`."
    )


def _record(
    run_id: str,
    method: str,
    seed: int,
    stl_task: str | None,
    result: FitResult,
    start_ms: int,
    parent: str | None = None,
) -> RunRecord:
    tasks = [stl_task] if stl_task is not None else None

    def pick(table: Mapping[str, Mapping[str, float]] | None) -> Table:
        if table is None:
            return {}
        return {t: dict(v) for t, v in table.items() if tasks is None or t in tasks}

    return RunRecord(
        run_id=run_id,
        method=method,
        seed=seed,
        stl_task=stl_task,
        test=pick(result.test),
        val=pick(result.val),
        start_time=start_ms,
        source="spool",
        status="FINISHED",
        selection=result.selection,
        epoch=result.best_epoch,
        spool_run_id=run_id,
        parent_run_id=parent,
    )


def _optimizer(spec: Spec, params: list[Any]) -> torch.optim.Optimizer:
    t = spec.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def _scheduler(spec: Spec, optimizer: torch.optim.Optimizer) -> Any:
    cfg = spec.train.scheduler
    if cfg is None:
        return None
    options = {k: v for k, v in cfg.items() if k != "type"}
    kind = cfg["type"]
    try:
        if kind == "plateau":  # stepped with the validation Δp: larger is better
            return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", **options)
        if kind == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, **options)
        options.setdefault("T_max", spec.train.epochs)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **options)
    except TypeError as e:
        raise ValueError(f"{spec.path}: train.scheduler options {options} for {kind!r}: {e}") from e


def with_epochs(spec: Spec, epochs: int | None) -> Spec:
    """The spec with its epoch budget replaced (``mtlbench run --epochs``)."""
    if epochs is None:
        return spec
    trainer = dataclasses.replace(spec.train.trainer, epochs=epochs)
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, trainer=trainer))
