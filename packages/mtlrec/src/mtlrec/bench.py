"""Problem builders for ``mtlbench`` specs (``problem = "mtlrec.bench:<name>"``).

Each builder takes a spec's ``[data]`` and ``[model]`` options and returns a
:class:`mtltrain.problem.Problem`. :func:`table` reads any CSV/Parquet file described by the
spec alone (see :mod:`mtlrec.table`); the others build one data set each. ``[model]``
options: ``arch`` (``shared_bottom``, ``omoe``, ``mmoe``, ``cgc``, ``ple``, ``esmm``,
``aitm``), ``embedding_dim``, ``tables`` (``"approx"``: embedding tables balanced by DB-MTL's
per-task factors, one backward; ``"exact"``: tables in the per-task gradient matrix;
``"sharded"``: as approx, the tables sharded across the ranks of ``mtlbench run --nproc N``
by TorchRec and updated by a fused optimizer, see below), and anything the architecture's
constructor takes (``num_experts``, ``expert``, ``tower``, ...).

With ``tables = "sharded"`` (docs/distributed.md, "mtlbench and the Trainer with sharded
tables"): ``sharding`` (table or feature -> ``table_wise``, ``column_wise``,
``data_parallel``, ...; the rest is TorchRec's planner's choice), ``table_optimizer`` (a fused
optimizer: ``exact_sgd``, ``exact_adagrad`` (default), ``exact_row_wise_adagrad``, ``adam``)
``table_lr`` (default 0.01) and ``table_init``: ``"whole"`` (default; every rank draws the
whole tables from the seed, then keeps its shards — the unsharded run's start, the tables in
one rank's memory at build) or ``"shards"`` (each shard drawn on its rank by TorchRec: no
whole table in memory, other values than an unsharded run's). The spec's ``[train]``
optimizer steps the dense layers.

Regression targets are standardised with the training split's mean and std by default
(``standardize = false`` turns it off): the model learns ``(y - μ) / σ`` and MAE / MSE (and
so Δp) are reported in the target's own units.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from mtltrain.problem import Problem

from .data import (
    FittedFeatures,
    census_income,
    make_loader,
    mmoe_synthetic,
    mmoe_synthetic_spec,
    split_frame,
    synthetic_log,
    synthetic_log_spec,
)
from .metrics import make_task
from .models import make_model, meta_tables
from .table import StreamedSplit, parse_table_data

__all__ = ["census_income_problem", "mmoe_synthetic_problem", "synthetic_log_problem", "table"]

_MODEL_KEYS = ("arch", "embedding_dim", "tables")
_SHARDED_KEYS = ("sharding", "table_optimizer", "table_lr", "table_init")


def _options(given: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown [{what}] options {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def _problem(
    fitted: FittedFeatures,
    splits: Sequence[Any],
    model: Mapping[str, Any],
    metrics: Mapping[str, Sequence[str]],
    info: dict[str, Any],
) -> Problem:
    options = dict(model)
    arch = str(options.pop("arch", "mmoe"))
    dim = int(options.pop("embedding_dim", 8))
    tables = str(options.pop("tables", "approx"))
    if tables not in ("approx", "exact", "sharded"):
        raise ValueError(f"[model] tables must be 'approx', 'exact' or 'sharded', not {tables!r}")
    on_shards = options.get("table_init") == "shards"
    shard = _sharded_options(options, tables)
    if shard is not None:
        options["backend"] = "torchrec"
    features = {name: (rows, dim) for name, rows in fitted.cardinalities.items()}
    kinds = dict(fitted.task_kinds)
    dense_dim = len(fitted.dense_names)
    train, val, test = (s if isinstance(s, StreamedSplit) else fitted.transform(s) for s in splits)
    streamed = isinstance(train, StreamedSplit)
    classes = fitted.num_classes
    if classes:  # only then: ESMM takes no num_classes
        options["num_classes"] = classes

    def build() -> Any:
        # table_init = "shards": the tables on the meta device, DMP draws each rank's shards
        with meta_tables() if on_shards else contextlib.nullcontext():
            return make_model(arch, features, kinds, dense_dim=dense_dim, **options)

    build()  # fail now, not in the first run, on a bad option
    tasks = [
        make_task(
            t,
            kinds[t],
            list(metrics[t]),
            target_std=fitted.label_scale(t)[1],
            num_classes=classes.get(t),
        )
        for t in kinds
    ]
    info = {
        **info,
        "arch": arch,
        "tables": tables,
        "features": len(features),
        "dense": dense_dim,
        "embedding_rows": sum(r for r, _ in features.values()),
        **{f"target_scale.{t}": list(fitted.label_scale(t)) for t in fitted.label_stats},
    }
    return Problem(
        tasks=tasks,
        train=train,
        val=val,
        test=test,
        make_model=build,
        loader=_streaming_loader(fitted) if streamed else make_loader,
        info=info,
        balance_tables=tables,
        shard=shard,
        data_parallel="sharded_loader" if streamed else "split_batch",
    )


def _streaming_loader(fitted: FittedFeatures) -> Any:
    """``Problem.loader`` of a spec with a streamed training split: this rank's share of the
    training files' row groups, ``batch_size / W`` rows a batch (the spec's batch size is the
    global batch); the evaluation splits, in memory, as usual."""

    def loader(split: Any, batch_size: int, shuffle: bool) -> Any:
        if not isinstance(split, StreamedSplit):
            return make_loader(split, batch_size, shuffle)
        from mtltrain.distributed import world_size
        from mtltrain.progress import rank

        from .data import ShardedParquetLoader

        world = world_size()
        if batch_size % world:
            raise ValueError(
                f"[train] batch_size = {batch_size} is the global batch of a streamed split: it "
                f"must divide into {world} equal shares (one a rank); use a multiple of {world}"
            )
        return ShardedParquetLoader(
            list(split.paths),
            fitted,
            batch_size // world,
            rank=rank(),
            world=world,
            shuffle=shuffle and split.shuffle,
        )

    return loader


def _sharded_options(options: dict[str, Any], tables: str) -> Any:
    """Pop the ``[model]`` options of sharded tables; the ``(model, device) -> ShardedRun``
    that shards a model with them (None unless ``tables = "sharded"``)."""
    given = {k: options.pop(k) for k in _SHARDED_KEYS if k in options}
    if tables != "sharded":
        if given:
            raise ValueError(
                f"[model] {sorted(given)} apply to sharded tables only: set tables = "
                f"'sharded' (and run with --nproc N), or remove them"
            )
        return None
    from .distributed import FUSED_OPTIMIZERS, SHARDING_TYPES

    sharding = given.get("sharding", {})
    if not isinstance(sharding, Mapping) or not all(
        isinstance(v, str) and v in SHARDING_TYPES for v in sharding.values()
    ):
        raise ValueError(
            f"[model] sharding must map tables or features to one of {list(SHARDING_TYPES)}, "
            f'not {sharding!r} (e.g. sharding = {{ user_id = "table_wise" }})'
        )
    optimizer = given.get("table_optimizer", "exact_adagrad")
    if optimizer not in FUSED_OPTIMIZERS:
        raise ValueError(
            f"[model] table_optimizer = {optimizer!r} is not a fused optimizer; use one of "
            f"{list(FUSED_OPTIMIZERS)}"
        )
    lr = given.get("table_lr", 0.01)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"[model] table_lr must be a positive number, not {lr!r}")
    if given.get("table_init", "whole") not in ("whole", "shards"):
        raise ValueError(
            f"[model] table_init must be 'whole' (every rank draws the whole tables, then keeps "
            f"its shards) or 'shards' (each rank draws only its shards), not "
            f"{given['table_init']!r}"
        )

    def shard(model: Any, device: Any) -> Any:
        from .sharded_run import shard_run

        return shard_run(
            model, sharding=dict(sharding) or None, optimizer=optimizer, lr=lr, device=device
        )

    return shard


def census_income_problem(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """Census-Income (KDD), the MMoE paper's tasks: income > 50K and never married, on the
    real test half split with a fixed seed (``[data]``: ``path``, ``seed``)."""
    d = _options(data, {"path": None, "seed": 0}, "data")
    splits = census_income(d["path"], seed=int(d["seed"]))
    fitted = splits.fit()
    return _problem(
        fitted,
        (splits.train, splits.val, splits.test),
        model,
        {"income": ["auc"], "marital": ["auc"]},
        {**splits.info, "split_seed": d["seed"]},
    )


def mmoe_synthetic_problem(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """The MMoE paper's synthetic regression pair with task correlation ``correlation``
    (``[data]``: ``n``, ``correlation``, ``dim``, ``seed``, ``standardize``)."""
    defaults = {"n": 20000, "correlation": 0.5, "dim": 100, "seed": 0, "standardize": True}
    d = _options(data, defaults, "data")
    frame = mmoe_synthetic(
        int(d["n"]), float(d["correlation"]), dim=int(d["dim"]), seed=int(d["seed"])
    )
    train, val, test = split_frame(frame, (0.7, 0.15, 0.15), int(d["seed"]))
    spec = mmoe_synthetic_spec(dim=int(d["dim"]), standardize=_flag(d, "standardize"))
    return _problem(
        spec.fit(train),
        (train, val, test),
        model,
        {"y1": ["mse"], "y2": ["mse"]},
        {"n": d["n"], "correlation": d["correlation"], "standardize": d["standardize"]},
    )


def synthetic_log_problem(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """The Criteo-shaped synthetic log: click and conversion (binary) and dwell time in
    seconds (regression) (``[data]``: ``n``, ``seed``, ``num_sparse``, ``num_dense``,
    ``correlation``, ``standardize``). With ``standardize = false`` the dwell loss is an MSE
    in s², orders of magnitude above the two BCEs: the heterogeneous loss-scale case."""
    defaults = {
        "n": 50000,
        "seed": 0,
        "num_sparse": 8,
        "num_dense": 4,
        "correlation": 0.5,
        "standardize": True,
    }
    d = _options(data, defaults, "data")
    frame = synthetic_log(
        int(d["n"]),
        seed=int(d["seed"]),
        num_sparse=int(d["num_sparse"]),
        num_dense=int(d["num_dense"]),
        correlation=float(d["correlation"]),
    )
    train, val, test = split_frame(frame, (0.7, 0.15, 0.15), int(d["seed"]))
    spec = synthetic_log_spec(
        int(d["num_sparse"]),
        int(d["num_dense"]),
        min_count=2,
        standardize=_flag(d, "standardize"),
    )
    fitted = spec.fit(train)
    metrics = {"click": ["auc"], "conversion": ["auc"], "dwell": ["mae"]}
    return _problem(fitted, (train, val, test), model, metrics, dict(d))


def table(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """Any CSV/TSV/Parquet table described by the spec's ``[data]`` alone: the file(s), how
    to read them, every column's role (feature kind, ignored, or a task: binary with named
    positive values, regression, multiclass) — see :mod:`mtlrec.table`;
    ``mtlbench init-spec FILE`` drafts it."""
    parsed = parse_table_data(data)
    train, val, test, info = parsed.splits()
    fitted = parsed.spec.fit(parsed.fit_frame(train))
    return _problem(fitted, (train, val, test), model, parsed.metrics, info)


def _flag(d: Mapping[str, Any], key: str) -> bool:
    if not isinstance(d[key], bool):
        raise ValueError(f"[data] {key} must be true or false, not {d[key]!r}")
    return bool(d[key])
