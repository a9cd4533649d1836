"""Any table as a multi-task problem, described by a spec's ``[data]`` alone (no Python).

``problem = "mtlrec.bench:table"`` in an ``mtlbench`` spec; ``mtlbench init-spec FILE`` drafts
one. The ``[data]`` table::

    [data]
    path = "census-income.test.gz"  # one file, split by `split` with `split_seed` ...
    split = [0.7, 0.15, 0.15]        # train / validation / test fractions of its rows
    split_seed = 0
    # train = "train.csv"            # ... or train / val / test files (without `val`, a
    # val = "val.csv"                # `val_fraction` of the training rows is held out)
    # test = "test.csv"
    separator = ","                  # one character; "\t" for tabs
    header = false                   # the first line holds data, not names
    names = ["age", "workclass", ...]  # a headerless file's columns (default column_1, ...)
    nulls = ["?"]                    # values that mean "missing" (an empty field always does)
    trim = true                      # strip spaces around values (", "-separated files)
    quote = '"'                      # "" when quotes are ordinary characters

    [data.columns]                   # every column of the file, once
    age = "dense"                    # a number (standardised on the training split)
    workclass = "sparse"             # a category (an embedding)
    tags = {kind = "multi_hot", separator = "|"}  # several categories in one field
    fnlwgt = "ignore"                # not used
    capital_gain = {kind = "dense", log = true, nulls = "mean"}  # options of the feature
    income = {task = "income", kind = "binary", positive = [">50K"]}
    hours = {task = "hours", kind = "regression"}        # standardize = true by default
    relationship = {task = "relationship", kind = "multiclass"}

Streaming (``stream = true``): the training data is never loaded whole. ``train`` names
Parquet files (a path, a glob such as ``"log/part-*.parquet"``, or a list of them), and
``val`` and ``test`` files are given (they are read into memory); the features are fitted on
a lazy scan of the training files, and under ``mtlbench run --nproc N`` each rank streams its
share of their row groups (:class:`~mtlrec.data.ShardedParquetLoader`: rank r reads groups r,
r + N, …; the spec's ``batch_size`` is the global batch, ``batch_size / N`` rows a rank).
``shuffle = false`` reads in file order (default: shuffled within a window of batches).

Relative paths are read from the current directory. Every column of every file must have a
role: a column the spec does not mention is an error naming it (nothing is dropped silently).
Feature options are those of :class:`~mtlrec.data.DenseFeature` (``norm``, ``nulls``,
``log``), :class:`~mtlrec.data.SparseFeature` (``min_count``, ``max_vocab``, ``oov``,
``hash_buckets``) and :class:`~mtlrec.data.MultiHotFeature` (``separator`` and the sparse
ones); task options those of :class:`~mtlrec.data.Label` (``positive``, ``negative``,
``standardize``, ``classes``) and ``metrics`` (default ``["auc"]`` binary, ``["mae"]``
regression, ``["accuracy"]`` multiclass; the spec's ``[tasks.<task>]`` must list the same).
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import polars as pl

from ._toml import toml_key
from .data import (
    DataError,
    DenseFeature,
    FeatureSpec,
    Label,
    MultiHotFeature,
    SparseFeature,
    scan_table,
    split_frame,
)
from .data._diagnose import reading
from .data.errors import ORIGIN_COLUMNS

__all__ = ["DEFAULT_METRICS", "FEATURE_KINDS", "StreamedSplit", "TableData", "parse_table_data"]

FEATURE_KINDS = ("dense", "sparse", "multi_hot")
DEFAULT_METRICS = {"binary": ["auc"], "regression": ["mae"], "multiclass": ["accuracy"]}
"""The metric a task gets when its entry names none (the first is what Δp weighs)."""

_FEATURE_CLASSES: dict[str, type] = {
    "dense": DenseFeature,
    "sparse": SparseFeature,
    "multi_hot": MultiHotFeature,
}
_TASK_KEYS = ("task", "kind", "positive", "negative", "standardize", "classes", "metrics")
_DATA_KEYS = (
    "path", "train", "val", "test", "split", "split_seed", "val_fraction", "separator",
    "header", "names", "nulls", "trim", "quote", "columns", "stream", "shuffle",
)  # fmt: skip


@dataclass(frozen=True)
class StreamedSplit:
    """A split read as a stream: Parquet files, in order (``stream = true``)."""

    paths: tuple[str, ...]
    rows: int
    shuffle: bool = True


@dataclass(frozen=True)
class TableData:
    """A validated ``[data]`` table: how to read the file(s), the feature spec, the metrics."""

    files: dict[str, str]  # "path" or "train"/"val"/"test" -> path (stream: "val"/"test")
    split: tuple[float, float, float]
    split_seed: int
    val_fraction: float
    read: dict[str, Any]  # scan_table options
    spec: FeatureSpec
    ignore: tuple[str, ...]
    metrics: dict[str, list[str]]  # task -> metric names
    stream: StreamedSplit | None = None  # the training files, streamed (stream = true)

    @property
    def columns(self) -> list[str]:
        """Every column the spec gives a role (features, tasks and ignored ones)."""
        return [*self.spec.columns, *self.ignore]

    def scan(self, path: str) -> pl.LazyFrame:
        """``path`` read with the spec's options, checked to have exactly the listed columns."""
        lf = scan_table(path, **self.read)
        have = [c for c in lf.collect_schema().names() if c not in ORIGIN_COLUMNS]
        listed = set(self.columns)
        extra = [c for c in have if c not in listed]
        if extra:
            example = toml_key(extra[0])
            raise DataError(
                f"{len(extra)} column(s) that [data.columns] does not list: {extra[:20]}"
                + (" ..." if len(extra) > 20 else ""),
                path=path,
                fix='Give each one a role ("dense", "sparse", "multi_hot", "ignore" or a '
                f'task), e.g. {example} = "ignore"',
            )
        missing = [c for c in self.columns if c not in have]
        if missing:
            raise DataError(
                f"no column(s) {missing[:20]}; the file has {have[:50]}",
                path=path,
                fix="Fix the names in [data.columns] (or [data] names for a headerless file)",
            )
        return lf

    def splits(self) -> tuple[Any, Any, Any, dict[str, Any]]:
        """``(train, val, test, info)``: frames of the three splits and what to log."""
        info: dict[str, Any] = {}
        train: pl.DataFrame | pl.LazyFrame | StreamedSplit
        val: pl.DataFrame | pl.LazyFrame
        test: pl.DataFrame | pl.LazyFrame
        if self.stream is not None:
            val, test = self.scan(self.files["val"]), self.scan(self.files["test"])
            train = self.stream
            info.update(source=",".join(self.stream.paths), stream=True)
        elif "path" in self.files:
            path = self.files["path"]
            lf = self.scan(path)
            with reading(lf):
                df = lf.collect()
            train, val, test = split_frame(df, self.split, self.split_seed)
            info.update(source=path, rows=df.height, split=list(self.split))
        else:
            train_lf = self.scan(self.files["train"])
            test = self.scan(self.files["test"])
            if "val" in self.files:
                train, val = train_lf, self.scan(self.files["val"])
            else:
                with reading(train_lf):
                    df = train_lf.collect()
                f = self.val_fraction
                train, val, _ = split_frame(df, (1.0 - f, f, 0.0), self.split_seed)
                info["val_fraction"] = f
            info["source"] = ",".join(self.files.values())
        sizes = []
        for name, part in (("train", train), ("val", val), ("test", test)):
            if isinstance(part, StreamedSplit):
                n = part.rows
            else:
                n = part.height if isinstance(part, pl.DataFrame) else _height(part)
            if n == 0:
                raise ValueError(
                    f"[data]: the {name} split has no rows; give the file(s) more rows or "
                    "change split / val_fraction"
                )
            sizes.append(n)
        info.update(split_seed=self.split_seed, split_rows=sizes)
        return train, val, test, info

    def fit_frame(self, train: Any) -> pl.LazyFrame | pl.DataFrame:
        """What the features are fitted on: the training split, or a lazy scan of every
        streamed training file (value counts and statistics only; nothing is collected)."""
        if isinstance(train, StreamedSplit):
            scans = [self.scan(p) for p in train.paths]
            return pl.concat(scans, how="vertical") if len(scans) > 1 else scans[0]
        return train


def _height(lf: pl.LazyFrame) -> int:
    with reading(lf):
        return int(lf.select(pl.len()).collect().item())


def parse_table_data(data: Mapping[str, Any]) -> TableData:
    """Validate a spec's ``[data]`` for :func:`mtlrec.bench.table`; errors name the key."""
    unknown = sorted(set(data) - set(_DATA_KEYS))
    if unknown:
        raise ValueError(f"[data]: unknown keys {unknown}; known: {sorted(_DATA_KEYS)}")
    stream = _stream(data)
    files = {
        k: _str(data, k)
        for k in ("path", "train", "val", "test")
        if k in data and not (k == "train" and stream is not None)
    }
    if "path" in files and len(files) > 1:
        raise ValueError("[data]: give either path (one file, split) or train/val/test files")
    if stream is None and "path" not in files and not {"train", "test"} <= set(files):
        raise ValueError(
            '[data]: name the data: path = "FILE" (split into train/val/test), or '
            'train = "FILE" and test = "FILE" (and optionally val)'
        )
    if "path" not in files and "split" in data:
        raise ValueError("[data]: split is for one file (path); with train/test files leave it out")
    split = data.get("split", [0.7, 0.15, 0.15])
    if (
        not isinstance(split, list)
        or len(split) != 3
        or not all(_number(x) and x >= 0 for x in split)
        or abs(sum(split) - 1) > 1e-9
        or split[0] == 0
    ):
        raise ValueError(
            f"[data] split must be three fractions (train, val, test) summing to 1, not {split!r}"
        )
    seed = data.get("split_seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"[data] split_seed must be an integer, not {seed!r}")
    val_fraction = data.get("val_fraction", 0.15)
    if not (_number(val_fraction) and 0 < val_fraction < 1):
        raise ValueError(f"[data] val_fraction must be between 0 and 1, not {val_fraction!r}")
    if "val_fraction" in data and ("path" in files or "val" in files):
        raise ValueError("[data] val_fraction is for train/test files without a val file")
    header = data.get("header", True)
    if not isinstance(header, bool):
        raise ValueError(f"[data] header must be true or false, not {header!r}")
    names = data.get("names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) and n for n in names)
    ):
        raise ValueError(f"[data] names must be a list of column names, not {names!r}")
    nulls = data.get("nulls", [])
    if not (isinstance(nulls, list) and all(isinstance(v, str) for v in nulls)):
        raise ValueError(f'[data] nulls must be a list of strings such as ["?"], not {nulls!r}')
    trim = data.get("trim", True)
    if not isinstance(trim, bool):
        raise ValueError(f"[data] trim must be true or false, not {trim!r}")
    quote = data.get("quote", '"')
    if not isinstance(quote, str) or len(quote) > 1:
        raise ValueError(f'[data] quote must be one character or "" (none), not {quote!r}')
    separator = data.get("separator", ",")
    if not isinstance(separator, str) or len(separator) != 1:
        hint = (
            ' (for ", " write separator = "," and trim = true)'
            if isinstance(separator, str) and separator.strip() == ","
            else ""
        )
        raise ValueError(f"[data] separator must be one character, not {separator!r}{hint}")
    read = {
        "separator": separator,
        "has_header": header,
        "names": names,
        "null_values": list(nulls),
        "trim": trim,
        "quote_char": quote or None,
    }
    spec, ignore, metrics = _columns(data.get("columns"))
    return TableData(
        files=files,
        split=(float(split[0]), float(split[1]), float(split[2])),
        split_seed=seed,
        val_fraction=float(val_fraction),
        read=read,
        spec=spec,
        ignore=ignore,
        metrics=metrics,
        stream=stream,
    )


def _stream(data: Mapping[str, Any]) -> StreamedSplit | None:
    """``stream = true``: the training Parquet files (a path, a glob or a list), checked."""
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ValueError(f"[data] stream must be true or false, not {stream!r}")
    shuffle = data.get("shuffle", True)
    if not isinstance(shuffle, bool):
        raise ValueError(f"[data] shuffle must be true or false, not {shuffle!r}")
    if not stream:
        if "shuffle" in data:
            raise ValueError("[data] shuffle is for stream = true (in memory, batches shuffle)")
        return None
    missing = [k for k in ("train", "val", "test") if k not in data]
    if missing or "path" in data or "val_fraction" in data:
        raise ValueError(
            "[data] stream = true needs train (Parquet files: a path, a glob or a list), val "
            f"and test files, and no path or val_fraction (missing: {missing or 'none'})"
        )
    raw = data["train"]
    patterns = [raw] if isinstance(raw, str) else raw
    if not (isinstance(patterns, list) and patterns and all(isinstance(x, str) for x in patterns)):
        raise ValueError(
            f"[data] train must be a Parquet file, a glob or a list of them, not {raw!r}"
        )
    paths: list[str] = []
    for pattern in patterns:
        expanded = Path(pattern).expanduser()
        found = (
            sorted(q for q in glob.glob(str(expanded)) if Path(q).is_file())
            if glob.has_magic(pattern)
            else ([str(expanded)] if expanded.is_file() else [])
        )
        if not found:
            raise FileNotFoundError(
                f"[data] train: {pattern!r} names no file (relative paths are read from the "
                f"current directory, {Path.cwd()})"
            )
        paths += found
    from .data.stream import parquet_row_groups

    groups = parquet_row_groups(paths)
    return StreamedSplit(tuple(paths), sum(g.rows for g in groups), shuffle)


def _columns(raw: Any) -> tuple[FeatureSpec, tuple[str, ...], dict[str, list[str]]]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            '[data.columns] is required: one line per column of the file, e.g. age = "dense", '
            'job = "sparse", id = "ignore", income = {task = "income", kind = "binary", '
            'positive = [">50K"]} (mtlbench init-spec FILE drafts it)'
        )
    feats: dict[str, list[Any]] = {k: [] for k in FEATURE_KINDS}
    labels: list[Label] = []
    ignore: list[str] = []
    metrics: dict[str, list[str]] = {}
    for column, role in raw.items():
        where = f"[data.columns] {toml_key(column)}"
        if isinstance(role, str):
            role = {"kind": role}
        if not isinstance(role, dict):
            raise ValueError(
                f'{where}: give a role ("dense", "sparse", "multi_hot", "ignore") or a table '
                f"such as {{task = ..., kind = ...}}, not {role!r}"
            )
        if "task" in role:
            label, names = _task(column, role, where)
            labels.append(label)
            metrics[label.task] = names
            continue
        kind = role.get("kind")
        if kind == "ignore":
            if len(role) > 1:
                raise ValueError(f"{where}: an ignored column takes no options")
            ignore.append(column)
            continue
        if kind not in FEATURE_KINDS:
            raise ValueError(
                f'{where}: kind must be "dense", "sparse", "multi_hot" or "ignore" (or the '
                f"column is a task: {{task = ..., kind = ...}}), not {kind!r}"
            )
        cls = _FEATURE_CLASSES[kind]
        options = {k: v for k, v in role.items() if k != "kind"}
        allowed = [f.name for f in fields(cls) if f.name != "name"]
        bad = sorted(set(options) - set(allowed))
        if bad:
            raise ValueError(f"{where}: unknown {kind} options {bad}; known: {allowed}")
        try:
            feats[kind].append(cls(column, **options))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e
    if not labels:
        raise ValueError(
            "[data.columns] names no task: make at least one column a task, e.g. "
            'income = {task = "income", kind = "binary", positive = [">50K"]}'
        )
    try:
        spec = FeatureSpec(
            sparse=feats["sparse"],
            dense=feats["dense"],
            multi_hot=feats["multi_hot"],
            labels=labels,
        )
    except ValueError as e:
        raise ValueError(f"[data.columns]: {e}") from e
    return spec, tuple(ignore), metrics


def _task(column: str, role: Mapping[str, Any], where: str) -> tuple[Label, list[str]]:
    bad = sorted(set(role) - set(_TASK_KEYS))
    if bad:
        raise ValueError(f"{where}: unknown task keys {bad}; known: {list(_TASK_KEYS)}")
    task = role["task"]
    if not isinstance(task, str) or not task or "." in task:
        raise ValueError(f"{where}: task must be a name without '.', not {task!r}")
    kind = role.get("kind")
    if kind not in DEFAULT_METRICS:
        raise ValueError(
            f'{where}: a task needs kind = "binary", "regression" or "multiclass", not {kind!r}'
        )
    names = role.get("metrics", DEFAULT_METRICS[kind])
    if not (isinstance(names, list) and names and all(isinstance(m, str) for m in names)):
        raise ValueError(f'{where}: metrics must be a list such as ["auc"], not {names!r}')
    options = {k: role[k] for k in ("positive", "negative", "standardize", "classes") if k in role}
    try:
        label = Label(task, kind, column=column, **options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    return label, list(names)


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"[data] {key} must be a file path, not {value!r}")
    if not Path(value).expanduser().is_file():
        raise FileNotFoundError(
            f"[data] {key} = {value!r}: no such file (relative paths are read from the current "
            f"directory, {Path.cwd()})"
        )
    return str(Path(value).expanduser())


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
