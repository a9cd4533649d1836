"""Benchmark specs: one TOML file per benchmark.

Where specs are found: a spec given by path (``mtlbench run ./my.toml``); else by name in the
folder of ``--specs DIR`` or ``$MTLBENCH_SPECS`` (searched first), then among the specs
shipped with mtlbench (``mtlbench/specs/*.toml``, package data, so ``mtlbench list`` works
anywhere). The repository's ``benchmarks/specs/`` only points there: each spec has one copy.

A spec is data, except for one line: the problem builder to call (``"module:function"``),
which is imported and run with the spec's data and model options. So a spec is as trusted as
a script: run only specs you would run as code. The rest is the training budget, every task's
metrics with their directions, the methods to run by default, and the paper's published table
for that data set. Example::

    name = "synthetic-hetero"
    description = "three tasks with losses of very different scales"
    problem = "mtlbench.problems.synthetic:build"
    methods = ["ew", "dbmtl", "uw"]

    [data]  # passed to the builder as data=...
    n_train = 8192

    [model]  # passed to the builder as model=...
    hidden = 64

    [train]
    epochs = 6
    batch_size = 256
    lr = 1e-3

    [tasks.click]  # task -> metric -> "higher" | "lower" (is better)
    auc = "higher"

    [method_options.dbmtl]  # hyperparameters for mtlbalance.make(method, ...)
    beta = 0.9

    [report]  # optional: the spec's own words for its report (what its results mean)
    note = "The tasks' loss scales conflict on purpose: multi-task rows below STL are expected."

    [paper]  # optional: published numbers in the same metrics and units
    source = "Table 2 of Lin et al."
    [paper.results.stl.click]
    auc = 0.75
    [paper.delta_p]
    ew = -2.05
"""

from __future__ import annotations

import importlib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtltrain.config import TrainerConfig

__all__ = [
    "PACKAGED_SPECS",
    "PaperTable",
    "Spec",
    "TrainSpec",
    "find_spec",
    "list_specs",
    "load_spec",
    "spec_dirs",
    "specs_dir",
]

SPECS_ENV = "MTLBENCH_SPECS"
_DIRECTIONS = {"higher": True, "lower": False}
#: the [train] keys that go to the trainer's config (the others are mtlbench's own)
TRAINER_KEYS = ("epochs", "accumulate", "precision", "selection", "early_stopping")
_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULERS = ("plateau", "step", "cosine")


@dataclass(frozen=True)
class TrainSpec:
    """The training budget and optimisation settings of a benchmark: ``trainer`` holds what
    :class:`mtltrain.config.TrainerConfig` takes from a spec (``epochs``, ``accumulate``,
    ``precision``, ``selection``, ``early_stopping``; validated there), the rest is how
    ``mtlbench`` builds batches, the optimizer and the scheduler."""

    trainer: TrainerConfig
    batch_size: int
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: dict[str, Any] | None = None
    eval_batch_size: int | None = None

    @property
    def epochs(self) -> int:
        return self.trainer.epochs

    def as_dict(self) -> dict[str, Any]:
        """The ``[train]`` table as written in a spec (flat)."""
        out = {k: getattr(self.trainer, k) for k in TRAINER_KEYS}
        out.update({k: getattr(self, k) for k in self.__dataclass_fields__ if k != "trainer"})
        return out


@dataclass(frozen=True)
class PaperTable:
    """Published numbers for a benchmark: method -> task -> metric -> value, the published
    Δp per method (in percent), and where they come from."""

    source: str
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    delta_p: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def stl(self) -> dict[str, dict[str, float]] | None:
        """The published single-task row, if the table has one (method key ``"stl"``)."""
        return self.results.get("stl")


@dataclass(frozen=True)
class Spec:
    """One benchmark, as read from its TOML file (see the module doc for the format)."""

    name: str
    description: str
    path: Path | None
    problem: str
    data: dict[str, Any]
    model: dict[str, Any]
    train: TrainSpec
    tasks: dict[str, dict[str, bool]]
    methods: tuple[str, ...]
    method_options: dict[str, dict[str, Any]]
    paper: PaperTable | None
    seeds: int = 1
    report_note: str = ""

    @property
    def experiment(self) -> str:
        """The MLflow experiment the benchmark's runs go to."""
        return f"mtlbench/{self.name}"

    def builder(self) -> Callable[..., Any]:
        """Import the problem builder named by ``problem`` (``"module:function"``)."""
        module_name, _, attr = self.problem.partition(":")
        where = f"spec {self.name!r} ({self.path})"
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ImportError(
                f"{where}: cannot import {module_name!r} for problem = {self.problem!r} ({e}); "
                f"install the package that provides it"
            ) from e
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ValueError(f"{where}: {module_name!r} has no callable {attr!r}")
        return fn

    def options_for(self, method: str) -> dict[str, Any]:
        """Hyperparameters for ``mtlbalance.make(method, ...)`` from ``[method_options]``."""
        return dict(self.method_options.get(method, {}))

    def as_dict(self) -> dict[str, Any]:
        """The resolved spec (for logging as the run's config)."""
        return {
            "name": self.name,
            "description": self.description,
            "path": None if self.path is None else str(self.path),
            "problem": self.problem,
            "data": self.data,
            "model": self.model,
            "train": self.train.as_dict(),
            "tasks": {
                t: {m: ("higher" if h else "lower") for m, h in ms.items()}
                for t, ms in self.tasks.items()
            },
            "methods": list(self.methods),
            "method_options": self.method_options,
            "seeds": self.seeds,
        }


# ---------------------------------------------------------------------------------- loading
PACKAGED_SPECS = Path(__file__).resolve().parent / "specs"
"""The specs shipped with mtlbench (package data)."""


def specs_dir(directory: str | os.PathLike[str] | None = None) -> Path | None:
    """The user's spec folder: ``directory`` (``--specs``), else ``$MTLBENCH_SPECS``, else
    None (only the shipped specs). A folder that does not exist is an error."""
    if directory is not None:
        path, what = Path(directory), f"--specs {str(directory)!r}"
    elif os.environ.get(SPECS_ENV):
        path, what = Path(os.environ[SPECS_ENV]), f"${SPECS_ENV}={os.environ[SPECS_ENV]!r}"
    else:
        return None
    if not path.is_dir():
        raise FileNotFoundError(f"{what} is not a directory")
    return path


def spec_dirs(directory: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for a spec by name, in order: the user's (:func:`specs_dir`),
    then :data:`PACKAGED_SPECS`."""
    user = specs_dir(directory)
    dirs = [user] if user is not None else []
    if PACKAGED_SPECS.is_dir() and not any(_same(d, PACKAGED_SPECS) for d in dirs):
        dirs.append(PACKAGED_SPECS)
    return dirs


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def list_specs(directory: str | os.PathLike[str] | None = None) -> list[Spec]:
    """Every spec of :func:`spec_dirs` sorted by name; a spec of the user's folder hides a
    shipped one of the same name."""
    found: dict[str, Spec] = {}
    for folder in spec_dirs(directory):
        for path in sorted(folder.glob("*.toml")):
            spec = load_spec(path)
            found.setdefault(spec.name, spec)
    return sorted(found.values(), key=lambda s: s.name)


def find_spec(name_or_path: str, directory: str | os.PathLike[str] | None = None) -> Spec:
    """A spec by name (``census-income-mmoe``: the file ``<name>.toml`` in :func:`spec_dirs`)
    or by path to its TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"spec file {str(path)!r} does not exist")
        return load_spec(path)
    dirs = spec_dirs(directory)
    for folder in dirs:
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return load_spec(candidate)
    known = sorted({p.stem for folder in dirs for p in folder.glob("*.toml")})
    where = ", ".join(str(d) for d in dirs) or "no folder"
    raise ValueError(
        f"no spec named {name_or_path!r} in {where}; known specs: {known} (or give a spec "
        "file's path; `mtlbench init-spec FILE` drafts one for a table)"
    )


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read and validate one spec file; errors name the file and the offending key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start : e.start + 1]!r}): "
            "save the spec as UTF-8"
        ) from e
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from e
    return parse_spec(raw, path=path)


def parse_spec(raw: Mapping[str, Any], *, path: Path | None = None) -> Spec:
    """Validate a spec given as a mapping (what :func:`load_spec` reads from TOML)."""
    where = str(path) if path is not None else "spec"
    known = {
        "name", "description", "problem", "data", "model", "train", "tasks", "methods",
        "method_options", "paper", "seeds", "report",
    }  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown top-level keys {unknown}; allowed: {sorted(known)}")
    name = _req(raw, "name", str, where)
    problem = _req(raw, "problem", str, where)
    if ":" not in problem:
        raise ValueError(f"{where}: problem must be 'module:function', not {problem!r}")
    tasks = _tasks(raw.get("tasks"), where)
    methods = raw.get("methods", ["ew", "dbmtl"])
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise ValueError(f"{where}: methods must be a list of method names, not {methods!r}")
    options = raw.get("method_options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ValueError(f"{where}: [method_options.<method>] tables expected")
    seeds = raw.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"{where}: seeds must be a positive integer, not {seeds!r}")
    return Spec(
        name=name,
        description=str(raw.get("description", "")),
        path=path,
        problem=problem,
        data=dict(_table(raw, "data", where)),
        model=dict(_table(raw, "model", where)),
        train=_train(_table(raw, "train", where), where),
        tasks=tasks,
        methods=tuple(methods),
        method_options={k: dict(v) for k, v in options.items()},
        paper=_paper(raw.get("paper"), tasks, where),
        seeds=seeds,
        report_note=_report_note(raw.get("report"), where),
    )


def _report_note(raw: Any, where: str) -> str:
    """``[report] note = "..."``: a sentence the report prints before its own words."""
    if raw is None:
        return ""
    if not isinstance(raw, dict) or set(raw) - {"note"}:
        keys = sorted(raw) if isinstance(raw, dict) else raw
        raise ValueError(f'{where}: [report] takes only note = "...", not {keys!r}')
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise ValueError(f"{where}: report.note must be a string, not {note!r}")
    return note.strip()


def _req(raw: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in raw:
        raise ValueError(f"{where}: missing required key {key!r}")
    value = raw[key]
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: {key!r} must be a non-empty {kind.__name__}, not {value!r}")
    return value


def _table(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{where}: [{key}] must be a table, not {value!r}")
    return value


def _tasks(raw: Any, where: str) -> dict[str, dict[str, bool]]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f'{where}: [tasks.<task>] tables with metric = "higher"|"lower" are required'
        )
    out: dict[str, dict[str, bool]] = {}
    for task, metrics in raw.items():
        if not isinstance(metrics, dict) or not metrics:
            raise ValueError(f"{where}: [tasks.{task}] must list at least one metric")
        out[task] = {}
        for metric, direction in metrics.items():
            if direction not in _DIRECTIONS:
                raise ValueError(
                    f'{where}: tasks.{task}.{metric} = {direction!r}; use "higher" or '
                    f'"lower" (which value of the metric is better)'
                )
            out[task][metric] = _DIRECTIONS[direction]
    return out


def _train(raw: Mapping[str, Any], where: str) -> TrainSpec:
    own = set(TrainSpec.__dataclass_fields__) - {"trainer"}
    unknown = sorted(set(raw) - own - set(TRAINER_KEYS))
    if unknown:
        allowed = sorted(own | set(TRAINER_KEYS))
        raise ValueError(f"{where}: unknown [train] keys {unknown}; allowed: {allowed}")
    for key in ("epochs", "batch_size"):
        if key not in raw:
            raise ValueError(f"{where}: [train] needs {key!r}")
    try:  # the trainer's settings are validated by the trainer's own config
        trainer = TrainerConfig(**{k: v for k, v in raw.items() if k in TRAINER_KEYS})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: [train] {e}") from e
    spec = TrainSpec(trainer=trainer, **{k: v for k, v in raw.items() if k in own})
    if not _positive_int(spec.batch_size):
        raise ValueError(
            f"{where}: train.batch_size must be a positive integer, not {spec.batch_size!r}"
        )
    if spec.eval_batch_size is not None and not _positive_int(spec.eval_batch_size):
        raise ValueError(
            f"{where}: train.eval_batch_size must be a positive integer (or left out), not "
            f"{spec.eval_batch_size!r}"
        )
    if not (_number(spec.lr) and math.isfinite(spec.lr) and spec.lr > 0):
        raise ValueError(f"{where}: train.lr must be a positive number, not {spec.lr!r}")
    for key in ("weight_decay", "momentum"):
        value = getattr(spec, key)
        if not (_number(value) and math.isfinite(value) and value >= 0):
            raise ValueError(
                f"{where}: train.{key} must be a number >= 0 (without quotes), not {value!r}"
            )
    if spec.optimizer not in _OPTIMIZERS:
        raise ValueError(
            f"{where}: train.optimizer must be one of {_OPTIMIZERS}, not {spec.optimizer!r}"
        )
    if spec.scheduler is not None:
        kind = spec.scheduler.get("type") if isinstance(spec.scheduler, dict) else None
        if kind not in _SCHEDULERS:
            raise ValueError(
                f"{where}: train.scheduler needs type = one of {_SCHEDULERS}, not {kind!r}"
            )
        assert isinstance(spec.scheduler, dict)
        for key, value in spec.scheduler.items():
            if key != "type" and isinstance(value, str):
                raise ValueError(
                    f"{where}: train.scheduler.{key} = {value!r} is a string; write the number "
                    "without quotes"
                )
    return spec


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _paper(raw: Any, tasks: Mapping[str, Mapping[str, bool]], where: str) -> PaperTable | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "source" not in raw:
        raise ValueError(f'{where}: [paper] needs source = "where the numbers come from"')
    results: dict[str, dict[str, dict[str, float]]] = {}
    for method, row in raw.get("results", {}).items():
        results[method] = {}
        for task, metrics in row.items():
            if task not in tasks:
                raise ValueError(
                    f"{where}: paper.results.{method} names task {task!r}, which the spec's "
                    f"[tasks] do not have ({sorted(tasks)})"
                )
            for metric, value in metrics.items():
                if metric not in tasks[task]:
                    raise ValueError(
                        f"{where}: paper.results.{method}.{task}.{metric} is not a metric of "
                        f"task {task!r} ({sorted(tasks[task])})"
                    )
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise ValueError(
                        f"{where}: paper.results.{method}.{task}.{metric} must be a number"
                    )
            results[method][task] = {m: float(v) for m, v in metrics.items()}
    delta = raw.get("delta_p", {})
    if not isinstance(delta, dict):
        raise ValueError(f"{where}: [paper.delta_p] must map method -> Δp in percent")
    return PaperTable(
        source=str(raw["source"]),
        results=results,
        delta_p={k: float(v) for k, v in delta.items()},
        note=str(raw.get("note", "")),
    )
