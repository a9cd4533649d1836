"""Declarative feature specs: fit on the training split, apply the same at serving time.

A :class:`FeatureSpec` names the columns and what to do with them; :meth:`FeatureSpec.fit`
learns vocabularies and normalisation statistics from a (lazy) frame of the *training* split
and returns :class:`FittedFeatures`, whose :meth:`~FittedFeatures.transform` turns any frame
with the same columns into tensors (:class:`~mtlrec.data.batch.RecBatch`), and which saves to
and loads from JSON.

Id layout of a categorical feature with vocabulary ``V`` (values seen at least ``min_count``
times in train, most frequent first, ties by value): id 0 is reserved for values out of the
vocabulary (unseen or rare); vocabulary values get ids ``1..|V|``; with ``oov="hash"`` unseen
and rare values go to ``|V| + 1 + crc32(value) % hash_buckets`` instead of 0 (0 stays
reserved). Missing values (null) are the category ``"<null>"``, counted like any other value.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from ._diagnose import exact_line, frame_paths, reading
from .batch import Jagged, RecBatch, RecInputs
from .errors import ORIGIN_COLUMNS, ORIGIN_FILE, ORIGIN_ROW, DataError, show_value

__all__ = [
    "LABEL_KINDS",
    "NULL_TOKEN",
    "DataError",
    "DenseFeature",
    "FeatureSpec",
    "FittedFeatures",
    "Label",
    "MultiHotFeature",
    "SparseFeature",
]

NULL_TOKEN = "<null>"
"""The category a missing (null) categorical value becomes."""

_FORMAT_VERSION = 2
# version 1 (before label standardisation and multiclass labels) still loads


@dataclass(frozen=True)
class SparseFeature:
    """A single-valued categorical feature (one id per row).

    Args:
        name: the column.
        min_count: values seen fewer times in train are out of vocabulary.
        max_vocab: keep at most this many (most frequent) values; ``None``: all.
        oov: ``"zero"`` maps out-of-vocabulary values to id 0; ``"hash"`` to one of
            ``hash_buckets`` ids after the vocabulary (crc32 of the value, stable across
            processes and versions).
        hash_buckets: number of hash buckets for ``oov="hash"``.
        embedding_dim: a hint for the model (``None``: the model's default).
    """

    name: str
    min_count: int = 1
    max_vocab: int | None = None
    oov: Literal["zero", "hash"] = "zero"
    hash_buckets: int = 0
    embedding_dim: int | None = None

    def __post_init__(self) -> None:
        _check_categorical(self.name, self.min_count, self.max_vocab, self.oov, self.hash_buckets)


@dataclass(frozen=True)
class MultiHotFeature:
    """A multi-valued categorical feature: a bag of ids per row.

    The column is either a string of values joined by ``separator`` (empty or null: an empty
    bag) or a polars ``List`` column. Vocabulary and out-of-vocabulary handling as
    :class:`SparseFeature`; an out-of-vocabulary element keeps its place in the bag (id 0 or
    its hash bucket).
    """

    name: str
    separator: str = "|"
    min_count: int = 1
    max_vocab: int | None = None
    oov: Literal["zero", "hash"] = "zero"
    hash_buckets: int = 0
    embedding_dim: int | None = None

    def __post_init__(self) -> None:
        _check_categorical(self.name, self.min_count, self.max_vocab, self.oov, self.hash_buckets)
        if not self.separator:
            raise ValueError(f"multi-hot feature {self.name!r}: separator must not be empty")


@dataclass(frozen=True)
class DenseFeature:
    """A numeric feature, one column of the dense matrix.

    Args:
        name: the column.
        norm: ``"standard"`` ((x - mean) / std fitted on train; std 0 -> 1), ``"minmax"``
            ((x - min) / (max - min) fitted on train; a constant column -> 0) or ``"none"``.
        nulls: what a missing value becomes: ``"error"`` (refuse, naming the first such row),
            ``"mean"`` (the train mean, after ``log``), ``"zero"`` (0 before normalisation).
        log: apply ``sign(x) * log1p(|x|)`` first (heavy-tailed counts such as Criteo's I1–I13).
    """

    name: str
    norm: Literal["standard", "minmax", "none"] = "standard"
    nulls: Literal["error", "mean", "zero"] = "error"
    log: bool = False

    def __post_init__(self) -> None:
        if self.norm not in ("standard", "minmax", "none"):
            raise ValueError(
                f"dense feature {self.name!r}: norm must be 'standard', 'minmax' or 'none', "
                f"not {self.norm!r}"
            )
        if self.nulls not in ("error", "mean", "zero"):
            raise ValueError(
                f"dense feature {self.name!r}: nulls must be 'error', 'mean' or 'zero', "
                f"not {self.nulls!r}"
            )


LABEL_KINDS = ("binary", "regression", "multiclass")
"""What a :class:`Label` can be: ``binary`` (0/1, or named positive values), ``regression``
(a number) or ``multiclass`` (one of several classes)."""


@dataclass(frozen=True)
class Label:
    """The target of one task.

    Args:
        task: the task name (the key in the targets dict).
        kind: ``"binary"`` (target 0 or 1), ``"regression"`` (any finite number) or
            ``"multiclass"`` (a class; the target is its index in ``classes``, int64).
        column: the column holding it (default: ``task``).
        positive: binary only: the values of ``column`` that mean 1, compared as text (after
            the reader's trimming), e.g. ``(">50K",)``. ``None``: the column must hold 0 and 1.
        negative: binary with ``positive`` only: the values that mean 0. ``None``: every other
            value does; given, any value outside ``positive`` and ``negative`` is an error
            (e.g. a stray ``">50K."`` beside ``">50K"``).
        standardize: regression only: the task learns ``(y - mean) / std`` with the *training*
            split's mean and std (:meth:`FittedFeatures.label_scale`); metrics and predictions
            convert back to the column's units (:meth:`FittedFeatures.inverse_label`;
            ``mtlrec.metrics.make_task(target_std=...)``). ``False``: the task learns ``y``
            as it is. Ignored for the other kinds.
        classes: multiclass only: the classes in order (their position is the target).
            ``None``: every value of the training split, sorted as text.
    """

    task: str
    kind: Literal["binary", "regression", "multiclass"] = "binary"
    column: str | None = None
    positive: tuple[str, ...] | None = None
    negative: tuple[str, ...] | None = None
    standardize: bool = True
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(
                f"label {self.task!r}: kind must be one of {LABEL_KINDS}, not {self.kind!r}"
            )
        for key in ("positive", "negative", "classes"):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TypeError(
                    f"label {self.task!r}: {key} must be a list of values, not {value!r}"
                )
            values = tuple(str(v) for v in value)
            if not values:
                raise ValueError(
                    f"label {self.task!r}: {key} is empty; leave it out or name values"
                )
            object.__setattr__(self, key, values)
        if not isinstance(self.standardize, bool):
            raise TypeError(
                f"label {self.task!r}: standardize must be true or false, not {self.standardize!r}"
            )
        if (self.positive is not None or self.negative is not None) and self.kind != "binary":
            raise ValueError(
                f"label {self.task!r}: positive/negative values are for binary tasks, not "
                f"{self.kind!r}"
            )
        if self.negative is not None and self.positive is None:
            raise ValueError(f"label {self.task!r}: negative needs positive values too")
        if self.positive is not None and self.negative is not None:
            both = sorted(set(self.positive) & set(self.negative))
            if both:
                raise ValueError(f"label {self.task!r}: {both} both positive and negative")
        if self.classes is not None:
            if self.kind != "multiclass":
                raise ValueError(
                    f"label {self.task!r}: classes are for multiclass tasks, not {self.kind!r}"
                )
            if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
                raise ValueError(
                    f"label {self.task!r}: classes must be at least two distinct values, not "
                    f"{list(self.classes)}"
                )

    @property
    def col(self) -> str:
        """The column read for this task."""
        return self.column if self.column is not None else self.task

    @property
    def standardized(self) -> bool:
        """Whether the target is standardised (a regression task with ``standardize``)."""
        return self.kind == "regression" and self.standardize


def _check_categorical(
    name: str, min_count: int, max_vocab: int | None, oov: str, hash_buckets: int
) -> None:
    if min_count < 1:
        raise ValueError(f"feature {name!r}: min_count must be >= 1, not {min_count}")
    if max_vocab is not None and max_vocab < 0:
        raise ValueError(f"feature {name!r}: max_vocab must be >= 0 or None, not {max_vocab}")
    if oov not in ("zero", "hash"):
        raise ValueError(f"feature {name!r}: oov must be 'zero' or 'hash', not {oov!r}")
    if oov == "hash" and hash_buckets < 1:
        raise ValueError(f"feature {name!r}: oov='hash' needs hash_buckets >= 1")
    if oov == "zero" and hash_buckets != 0:
        raise ValueError(f"feature {name!r}: hash_buckets is only used with oov='hash'")


Categorical = SparseFeature | MultiHotFeature


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns are sparse, multi-hot and dense features and which are task labels.

    A column may appear only once across all features and labels.
    """

    sparse: tuple[SparseFeature, ...] = ()
    dense: tuple[DenseFeature, ...] = ()
    multi_hot: tuple[MultiHotFeature, ...] = ()
    labels: tuple[Label, ...] = ()

    def __init__(
        self,
        sparse: Iterable[SparseFeature] = (),
        dense: Iterable[DenseFeature] = (),
        multi_hot: Iterable[MultiHotFeature] = (),
        labels: Iterable[Label] = (),
    ) -> None:
        object.__setattr__(self, "sparse", tuple(sparse))
        object.__setattr__(self, "dense", tuple(dense))
        object.__setattr__(self, "multi_hot", tuple(multi_hot))
        object.__setattr__(self, "labels", tuple(labels))
        seen: dict[str, str] = {}
        for kind, cols in (
            ("sparse", [f.name for f in self.sparse]),
            ("dense", [f.name for f in self.dense]),
            ("multi_hot", [f.name for f in self.multi_hot]),
            ("label", [lab.col for lab in self.labels]),
        ):
            for c in cols:
                if c in seen:
                    raise ValueError(
                        f"feature spec names column {c!r} twice ({seen[c]} and {kind}); "
                        "each column may be used once — drop one or copy the column under "
                        "another name"
                    )
                seen[c] = kind
        tasks = [lab.task for lab in self.labels]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"feature spec names a task twice: {tasks}")
        if not (self.sparse or self.dense or self.multi_hot):
            raise ValueError("feature spec has no features")

    @property
    def columns(self) -> list[str]:
        """Every column the spec reads (features, then labels)."""
        return [
            *(f.name for f in self.sparse),
            *(f.name for f in self.multi_hot),
            *(f.name for f in self.dense),
            *(lab.col for lab in self.labels),
        ]

    @property
    def tasks(self) -> list[str]:
        """Task names in order."""
        return [lab.task for lab in self.labels]

    def fit(
        self, data: pl.DataFrame | pl.LazyFrame, *, source: str | None = None
    ) -> FittedFeatures:
        """Learn vocabularies and normalisation from ``data`` (the training split only).

        Works on a LazyFrame without collecting it: only value counts and column statistics
        are materialised, after one pass that parses every column (so a malformed file fails
        here, as a :class:`DataError` naming its line). ``source`` names the file in errors
        when ``data`` has no origin columns (see :mod:`mtlrec.data.errors`).
        """
        with reading(data, source):
            return self._fit(data.lazy(), source)

    def _fit(self, lf: pl.LazyFrame, source: str | None) -> FittedFeatures:
        check_columns(lf, self.columns, source)
        # One pass over every column, not only the spec's: polars checks a CSV record's field
        # count only when it parses the whole record, so a malformed file fails here.
        n = lf.select(pl.len().alias("\0n"), pl.all().null_count()).collect()["\0n"].item()
        if n == 0:
            raise DataError(
                "no data rows to fit the feature spec on",
                path=_path_of(lf, source),
                fix="Fit on the training data (a header alone is not enough)",
            )
        vocabs: dict[str, list[str]] = {}
        for f in self.sparse:
            vocabs[f.name] = _fit_vocab(lf.select(_as_str(f.name)), f)
        for m in self.multi_hot:
            vocabs[m.name] = _fit_vocab(lf.select(_bag(lf, m).explode().alias(m.name)), m)
        stats: dict[str, dict[str, float]] = {}
        if self.dense:
            exprs = []
            for d in self.dense:
                x = _dense_expr(d)
                exprs += [
                    x.mean().alias(f"{d.name}\0mean"),
                    x.std(ddof=0).alias(f"{d.name}\0std"),
                    x.min().alias(f"{d.name}\0min"),
                    x.max().alias(f"{d.name}\0max"),
                ]
            # Check first so a bad value is reported with its row, not as a cast failure.
            _check_dense(lf, self.dense, source, 0)
            row = lf.select(exprs).collect().row(0, named=True)
            for d in self.dense:
                s = {k: row[f"{d.name}\0{k}"] for k in ("mean", "std", "min", "max")}
                if s["mean"] is None:
                    raise DataError(
                        "the dense column holds no values in the training data",
                        path=_path_of(lf, source),
                        column=d.name,
                        fix="Drop it from the spec, or fill it",
                    )
                stats[d.name] = {k: float(v) for k, v in s.items()}
        label_stats, classes = _fit_labels(lf, self.labels, source)
        return FittedFeatures(self, vocabs, stats, label_stats, classes)


def _as_str(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.String).fill_null(NULL_TOKEN).alias(col)


def _bag(lf: pl.LazyFrame | pl.DataFrame, m: MultiHotFeature) -> pl.Expr:
    dtype = lf.collect_schema()[m.name] if isinstance(lf, pl.LazyFrame) else lf.schema[m.name]
    if isinstance(dtype, pl.List):
        return pl.col(m.name).list.eval(pl.element().cast(pl.String)).fill_null([])
    return (
        pl.when(pl.col(m.name).cast(pl.String).fill_null("") == "")
        .then(pl.lit([], dtype=pl.List(pl.String)))
        .otherwise(pl.col(m.name).cast(pl.String).str.split(m.separator))
        .alias(m.name)
    )


def _fit_vocab(values: pl.LazyFrame, f: Categorical) -> list[str]:
    counts = (
        values.group_by(f.name)
        .agg(pl.len().alias("n"))
        .filter(pl.col("n") >= f.min_count)
        .sort(["n", f.name], descending=[True, False])
        .collect()
    )
    vocab = counts[f.name].drop_nulls().to_list()
    if f.max_vocab is not None:
        vocab = vocab[: f.max_vocab]
    return [str(v) for v in vocab]


def _dense_expr(d: DenseFeature) -> pl.Expr:
    x = pl.col(d.name).cast(pl.Float64, strict=False)
    if d.log:
        x = x.sign() * x.abs().log1p()
    return x


def _path_of(frame: pl.LazyFrame | pl.DataFrame, source: str | None) -> str | None:
    """The file to name for ``frame``: ``source``, else the file(s) it was read from."""
    if source is not None:
        return source
    paths = frame_paths(frame, None)
    return ", ".join(paths) if paths else None


def _user_columns(frame: pl.LazyFrame | pl.DataFrame) -> list[str]:
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    return [c for c in names if c not in ORIGIN_COLUMNS]


def check_columns(
    lf: pl.LazyFrame | pl.DataFrame, columns: Sequence[str], source: str | None
) -> None:
    """Raise :class:`DataError` naming the file and every column in ``columns`` it lacks."""
    have = _user_columns(lf)
    missing = [c for c in columns if c not in have]
    if missing:
        shown = f"{have[:50]}{' ...' if len(have) > 50 else ''}"
        more = f" (nor are {missing[1:]})" if len(missing) > 1 else ""
        raise DataError(
            f"no such column{more}; the data has {len(have)} columns: {shown}",
            path=_path_of(lf, source),
            column=missing[0],
            fix="Fix the file's header or the feature spec",
        )


@dataclass(frozen=True)
class _Hit:
    """Where a bad value is: file, data row (1-based), line when known, and the value."""

    path: str | None
    row: int
    line: int | None
    value: Any

    def error(self, problem: str, column: str, fix: str, task: str | None = None) -> DataError:
        return DataError(
            problem,
            path=self.path,
            row=self.row,
            line=self.line,
            column=column,
            value=self.value,
            fix=fix,
            task=task,
        )


def _first_bad(
    lf: pl.LazyFrame | pl.DataFrame, bad: pl.Expr, col: str, source: str | None, offset: int
) -> _Hit | None:
    """The first row where ``bad`` holds, located in its file.

    Rows read by this package's readers carry their file and 1-based data row (the origin
    columns), which survive splitting and shuffling; other frames are located by position:
    row ``offset + i + 1`` of ``source``.
    """
    names = lf.collect_schema().names() if isinstance(lf, pl.LazyFrame) else lf.columns
    value = pl.col(col).cast(pl.String)
    q = lf.lazy()
    if ORIGIN_FILE in names and ORIGIN_ROW in names:
        out = q.filter(bad).select(ORIGIN_FILE, ORIGIN_ROW, value).head(1).collect()
        if out.height == 0:
            return None
        path, row = out[ORIGIN_FILE][0], int(out[ORIGIN_ROW][0])
    else:
        idx = "__mtlrec_index"
        out = q.with_row_index(idx).filter(bad).select(idx, value).head(1).collect()
        if out.height == 0:
            return None
        path, row = _path_of(lf, source), offset + int(out[idx][0]) + 1
    return _Hit(path, row, exact_line(path, row) if path else None, out[col][0])


def _check_dense(
    lf: pl.LazyFrame | pl.DataFrame, dense: Sequence[DenseFeature], source: str | None, offset: int
) -> None:
    schema = lf.collect_schema() if isinstance(lf, pl.LazyFrame) else lf.schema
    for d in dense:
        raw = pl.col(d.name)
        if not schema[d.name].is_numeric():
            cast = raw.cast(pl.Float64, strict=False)
            stripped = raw.cast(pl.String).str.strip_chars()
            bad_value = raw.is_not_null() & (stripped != "") & cast.is_null()
            hit = _first_bad(lf, bad_value, d.name, source, offset)
            if hit is not None:
                raise hit.error(
                    "not a number in a dense column",
                    d.name,
                    "Fix the value, or declare the column a SparseFeature if it is categorical",
                )
        inf = raw.cast(pl.Float64, strict=False).is_infinite()
        hit = _first_bad(lf, inf, d.name, source, offset)
        if hit is not None:
            raise hit.error(
                "a non-finite number in a dense column",
                d.name,
                "Replace it with a finite number, or leave it empty and set "
                "DenseFeature(nulls='mean' or 'zero')",
            )
        if d.nulls == "error":
            missing = raw.cast(pl.Float64, strict=False).is_null()
            hit = _first_bad(lf, missing, d.name, source, offset)
            if hit is not None:
                raise hit.error(
                    "a missing value in a dense column with nulls='error'",
                    d.name,
                    "Fill it in the file, or set DenseFeature(nulls='mean' or 'zero')",
                )


def _check_labels(
    lf: pl.LazyFrame | pl.DataFrame,
    labels: Sequence[Label],
    source: str | None,
    offset: int,
    classes: Mapping[str, Sequence[str]],
) -> None:
    """Raise :class:`DataError` at the first bad label of each task (its file row and
    value): missing, not 0/1 (binary without ``positive``), outside ``positive`` and
    ``negative``, not a finite number (regression), not a known class (multiclass, once
    ``classes`` are known)."""
    for lab in labels:
        raw = pl.col(lab.col)
        text = raw.cast(pl.String)
        hit = _first_bad(lf, raw.is_null(), lab.col, source, offset)
        if hit is not None:
            raise hit.error(
                "the label is missing",
                lab.col,
                "Every row needs a label: fill or drop the row",
                lab.task,
            )
        if lab.kind == "binary" and lab.positive is None:
            y = raw.cast(pl.Float64, strict=False)
            hit = _first_bad(lf, y.is_null() | ~y.is_in([0.0, 1.0]), lab.col, source, offset)
            if hit is not None:
                raise hit.error(
                    "a binary label must be 0 or 1, not {value}",
                    lab.col,
                    _positive_hint(lf, lab.col, hit.value),
                    lab.task,
                )
        elif lab.kind == "binary" and lab.negative is not None:
            assert lab.positive is not None
            known = [*lab.positive, *lab.negative]
            hit = _first_bad(lf, ~text.is_in(known), lab.col, source, offset)
            if hit is not None:
                raise hit.error(
                    f"{{value}} is neither a positive {list(lab.positive)} nor a negative "
                    f"{list(lab.negative)} value",
                    lab.col,
                    "Add it to positive or negative, or fix or drop the row",
                    lab.task,
                )
        elif lab.kind == "regression":
            y = raw.cast(pl.Float64, strict=False)
            hit = _first_bad(lf, y.is_null(), lab.col, source, offset)
            if hit is not None:
                raise hit.error(
                    "a regression label must be a number, not {value}",
                    lab.col,
                    "Fix or drop the row, or make the task's kind 'binary' or 'multiclass'",
                    lab.task,
                )
            hit = _first_bad(lf, ~y.is_finite(), lab.col, source, offset)
            if hit is not None:
                raise hit.error(
                    "a regression label must be a finite number, not {value}",
                    lab.col,
                    "Fix or drop the row",
                    lab.task,
                )
        elif lab.kind == "multiclass" and lab.task in classes:
            known = list(classes[lab.task])
            hit = _first_bad(lf, ~text.is_in(known), lab.col, source, offset)
            if hit is not None:
                shown = known[:20] + (["..."] if len(known) > 20 else [])
                how = (
                    "Add it to the task's classes"
                    if lab.classes is not None
                    else "The classes are those of the training split: list every class in "
                    "the task's classes = [...] (a class never seen in training cannot be "
                    "learned), or drop the row"
                )
                raise hit.error(
                    f"{{value}} is not one of the task's {len(known)} classes {shown}",
                    lab.col,
                    how,
                    lab.task,
                )


def _positive_hint(lf: pl.LazyFrame | pl.DataFrame, col: str, value: Any) -> str:
    """The fix for a text label in a binary task: name the positive value(s), with the
    column's values and counts to choose from (the rarer of two suggested, as a guess)."""
    counts = (
        lf.lazy()
        .select(pl.col(col).cast(pl.String).alias("v"))
        .drop_nulls()
        .group_by("v")
        .agg(pl.len().alias("n"))
        .sort(["n", "v"], descending=[True, False])
        .head(6)
        .collect()
    )
    pairs = list(counts.iter_rows())
    shown = ", ".join(f"{show_value(v)} ({n:,} row{'s' if n > 1 else ''})" for v, n in pairs[:5])
    shown += ", ..." if len(pairs) > 5 else ""
    guess = pairs[-1][0] if len(pairs) == 2 else str(value)
    example = json.dumps(str(guess), ensure_ascii=False)
    return (
        f"These rows hold {shown}. Name the value(s) that mean 1 in the task's spec entry, "
        f"e.g. positive = [{example}] (Label(positive=[...]) in Python); or fix or drop the "
        "row; or make the task's kind 'regression' or 'multiclass'"
    )


def _fit_labels(
    lf: pl.LazyFrame, labels: Sequence[Label], source: str | None
) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """Check the training labels; return regression scales ``{task: {"mean", "std"}}``
    (standardised tasks) and the classes of multiclass tasks."""
    given = {lab.task: list(lab.classes) for lab in labels if lab.classes is not None}
    _check_labels(lf, labels, source, 0, given)
    label_stats: dict[str, dict[str, float]] = {}
    classes: dict[str, list[str]] = {}
    for lab in labels:
        where: dict[str, Any] = {"path": _path_of(lf, source), "column": lab.col, "task": lab.task}
        text = pl.col(lab.col).cast(pl.String)
        if lab.kind == "binary" and lab.positive is not None:
            counts = (
                lf.select(text.alias("v"))
                .group_by("v")
                .agg(pl.len().alias("n"))
                .sort(["n", "v"], descending=[True, False])
                .collect()
            )
            values = counts["v"].to_list()
            pos = [v for v in values if v in lab.positive]
            if not pos:
                raise DataError(
                    f"none of the positive values {list(lab.positive)} occurs in the training "
                    f"data; its most frequent values are {values[:8]}",
                    fix="Check the spelling: values are compared as text, after trimming",
                    **where,
                )
            if len(pos) == len(values):
                raise DataError(
                    f"every training row is positive ({pos}): there is nothing to tell apart",
                    fix="Check positive = [...]",
                    **where,
                )
        elif lab.kind == "multiclass":
            if lab.classes is not None:
                classes[lab.task] = list(lab.classes)
            else:
                seen = lf.select(text.unique().sort().alias("v")).collect()["v"].to_list()
                if len(seen) < 2:
                    raise DataError(
                        f"a multiclass label needs at least two classes in the training data; "
                        f"it has {seen}",
                        fix="Check the column, or give classes = [...]",
                        **where,
                    )
                classes[lab.task] = [str(v) for v in seen]
        elif lab.standardized:
            y = pl.col(lab.col).cast(pl.Float64, strict=False)
            row = lf.select(y.mean().alias("mean"), y.std(ddof=0).alias("std")).collect()
            mean, std = float(row["mean"][0]), float(row["std"][0])
            label_stats[lab.task] = {"mean": mean, "std": std if std > 0 else 1.0}
    return label_stats, classes


def _crc32_ids(values: list[str], base: int, buckets: int) -> list[int]:
    return [base + zlib.crc32(v.encode("utf-8")) % buckets for v in values]


@dataclass
class FittedFeatures:
    """A :class:`FeatureSpec` with its fitted vocabularies and dense statistics."""

    spec: FeatureSpec
    vocabs: dict[str, list[str]]
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    label_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    """``{task: {"mean", "std"}}`` of the standardised regression targets (training split)."""
    classes: dict[str, list[str]] = field(default_factory=dict)
    """``{task: classes}`` of the multiclass tasks (the target is the index)."""

    def __post_init__(self) -> None:
        self._lookup: dict[str, dict[str, int]] = {
            name: {v: i + 1 for i, v in enumerate(vocab)} for name, vocab in self.vocabs.items()
        }

    # ----------------------------------------------------------------------------- sizes
    @property
    def cardinalities(self) -> dict[str, int]:
        """Embedding-table rows per sparse and multi-hot feature (reserved 0 + vocabulary +
        hash buckets)."""
        out: dict[str, int] = {}
        feats: list[Categorical] = [*self.spec.sparse, *self.spec.multi_hot]
        for f in feats:
            out[f.name] = 1 + len(self.vocabs[f.name]) + f.hash_buckets
        return out

    @property
    def sparse_names(self) -> list[str]:
        """Single-valued categorical features in order."""
        return [f.name for f in self.spec.sparse]

    @property
    def multi_hot_names(self) -> list[str]:
        """Multi-hot features in order."""
        return [f.name for f in self.spec.multi_hot]

    @property
    def dense_names(self) -> list[str]:
        """Columns of the dense matrix in order."""
        return [d.name for d in self.spec.dense]

    @property
    def tasks(self) -> list[str]:
        """Task names in order."""
        return self.spec.tasks

    @property
    def task_kinds(self) -> dict[str, str]:
        """Task -> ``"binary"``, ``"regression"`` or ``"multiclass"``."""
        return {lab.task: lab.kind for lab in self.spec.labels}

    @property
    def num_classes(self) -> dict[str, int]:
        """Multiclass task -> number of classes (the width of its model output)."""
        return {t: len(c) for t, c in self.classes.items()}

    def label_scale(self, task: str) -> tuple[float, float]:
        """``(mean, std)`` with target ``= (y - mean) / std``: the training statistics of a
        standardised regression task, ``(0.0, 1.0)`` for any other task."""
        if task not in self.task_kinds:
            raise KeyError(f"no task {task!r}; the tasks are {self.tasks}")
        st = self.label_stats.get(task)
        return (st["mean"], st["std"]) if st is not None else (0.0, 1.0)

    def inverse_label(self, task: str, target: torch.Tensor) -> torch.Tensor:
        """A prediction (or target) of ``task`` in the label column's units:
        ``target · std + mean`` (identity unless the task is standardised)."""
        mean, std = self.label_scale(task)
        return target * std + mean if task in self.label_stats else target

    # ------------------------------------------------------------------------- transform
    def transform(
        self,
        data: pl.DataFrame | pl.LazyFrame,
        *,
        source: str | None = None,
        row_offset: int = 0,
        labels: bool = True,
    ) -> RecBatch:
        """Tensors for every row of ``data``.

        Args:
            data: a frame with the spec's feature columns (and label columns if ``labels``).
            source: the file named in errors when ``data`` has no origin columns (rows read
                by this package's readers name their own file and data row).
            row_offset: for data without origin columns: rows already read before ``data``
                (error rows are ``row_offset + i + 1``, for batches of a file).
            labels: read the label columns (``False`` at serving time: labels come back empty).
        """
        if isinstance(data, pl.LazyFrame):
            with reading(data, source):
                df = data.collect()
        else:
            df = data
        spec = self.spec
        need = [c for c in spec.columns if labels or c not in {lab.col for lab in spec.labels}]
        check_columns(df, need, source)
        n = df.height
        sparse = {
            f.name: self._ids(df[f.name].cast(pl.String).fill_null(NULL_TOKEN), f)
            for f in spec.sparse
        }
        multi: dict[str, Jagged] = {}
        for m in spec.multi_hot:
            bags = df.select(_bag(df, m))[m.name]
            lengths = bags.list.len().fill_null(0).to_numpy().astype(np.int64)
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            values = (
                self._ids(bags.explode().drop_nulls(), m)
                if offsets[-1]
                else torch.zeros(0, dtype=torch.int64)
            )
            multi[m.name] = Jagged(torch.from_numpy(offsets), values)
        if spec.dense:
            _check_dense(df, spec.dense, source, row_offset)
            cols = []
            for d in spec.dense:
                x = df.select(_dense_expr(d))[d.name].to_numpy().astype(np.float64)
                st = self.stats[d.name]
                fill = st["mean"] if d.nulls == "mean" else 0.0
                x = np.where(np.isnan(x), fill, x)
                if d.norm == "standard":
                    x = (x - st["mean"]) / (st["std"] if st["std"] > 0 else 1.0)
                elif d.norm == "minmax":
                    span = st["max"] - st["min"]
                    x = (x - st["min"]) / span if span > 0 else np.zeros_like(x)
                cols.append(x.astype(np.float32))
            dense = torch.from_numpy(np.stack(cols, axis=1))
        else:
            dense = torch.zeros(n, 0)
        targets: dict[str, torch.Tensor] = {}
        if labels and spec.labels:
            _check_labels(df, spec.labels, source, row_offset, self.classes)
            for lab in spec.labels:
                targets[lab.task] = self._target(df[lab.col], lab)
        return RecBatch(RecInputs(sparse, dense, multi), targets)

    def _target(self, column: pl.Series, lab: Label) -> torch.Tensor:
        """The checked label column as the task's target: float32 0/1 (binary), float32
        (regression, standardised if so fitted), int64 class index (multiclass)."""
        if lab.kind == "multiclass":
            cls = self.classes[lab.task]
            idx = column.cast(pl.String).replace_strict(
                cls, list(range(len(cls))), return_dtype=pl.Int64
            )
            return torch.from_numpy(idx.to_numpy().astype(np.int64))
        if lab.kind == "binary" and lab.positive is not None:
            y = column.cast(pl.String).is_in(list(lab.positive)).to_numpy().astype(np.float32)
            return torch.from_numpy(y)
        x = column.cast(pl.Float64, strict=False).to_numpy().astype(np.float64)
        if lab.task in self.label_stats:
            st = self.label_stats[lab.task]
            x = (x - st["mean"]) / st["std"]
        return torch.from_numpy(x.astype(np.float32))

    def _ids(self, values: pl.Series, f: Categorical) -> torch.Tensor:
        lookup = self._lookup[f.name]
        if lookup:
            ids = values.replace_strict(
                list(lookup), list(lookup.values()), default=0, return_dtype=pl.Int64
            )
        else:
            ids = pl.Series(values.name, [0] * len(values), dtype=pl.Int64)
        if f.oov == "hash":
            unseen = values.filter(ids == 0).unique().to_list()
            if unseen:
                hashed = _crc32_ids(unseen, 1 + len(lookup), f.hash_buckets)
                extra = values.replace_strict(unseen, hashed, default=0, return_dtype=pl.Int64)
                ids = pl.select(pl.when(ids == 0).then(extra).otherwise(ids)).to_series()
        return torch.from_numpy(np.array(ids.to_numpy(), dtype=np.int64))

    # ------------------------------------------------------------------------ save / load
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (spec, vocabularies, statistics)."""
        return {
            "format": "mtlrec.FittedFeatures",
            "version": _FORMAT_VERSION,
            "spec": {
                "sparse": [asdict(f) for f in self.spec.sparse],
                "dense": [asdict(d) for d in self.spec.dense],
                "multi_hot": [asdict(m) for m in self.spec.multi_hot],
                "labels": [asdict(lab) for lab in self.spec.labels],
            },
            "vocabs": self.vocabs,
            "stats": self.stats,
            "label_stats": self.label_stats,
            "classes": self.classes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FittedFeatures:
        """Inverse of :meth:`to_dict`."""
        version = d.get("version")
        if d.get("format") != "mtlrec.FittedFeatures" or version not in (1, _FORMAT_VERSION):
            raise ValueError(
                "not a saved mtlrec.FittedFeatures (version "
                f"{_FORMAT_VERSION}): format={d.get('format')!r} version={version!r}"
            )
        s = d["spec"]
        # version 1 had no label options: its regression targets were not standardised
        old = {"standardize": False} if version == 1 else {}
        spec = FeatureSpec(
            sparse=[SparseFeature(**f) for f in s["sparse"]],
            dense=[DenseFeature(**f) for f in s["dense"]],
            multi_hot=[MultiHotFeature(**f) for f in s["multi_hot"]],
            labels=[Label(**{**old, **f}) for f in s["labels"]],
        )

        def floats(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
            return {k: {kk: float(vv) for kk, vv in v.items()} for k, v in table.items()}

        return cls(
            spec,
            {k: list(v) for k, v in d["vocabs"].items()},
            floats(d["stats"]),
            floats(d.get("label_stats", {})),
            {k: [str(c) for c in v] for k, v in d.get("classes", {}).items()},
        )

    def save(self, path: str | Path) -> None:
        """Write JSON to ``path`` (what :meth:`load` reads, e.g. beside a model checkpoint)."""
        Path(path).write_text(json.dumps(self.to_dict(), allow_nan=False))

    @classmethod
    def load(cls, path: str | Path) -> FittedFeatures:
        """Read what :meth:`save` wrote."""
        return cls.from_dict(json.loads(Path(path).read_text()))
