"""Draft an ``mtlbench`` spec for :func:`mtlrec.bench.table` from a file's schema and values
(what ``mtlbench init-spec FILE`` writes).

Everything the draft decides from the data is a guess, and says so in a comment beside it:
the separator (:class:`csv.Sniffer`), the header (a first line that is not a number where the
next lines hold numbers), the null tokens found, each column's kind (numbers -> ``"dense"``;
text and integer codes with few distinct values -> ``"sparse"``; text holding ``|``-joined
lists -> ``"multi_hot"``; empty columns and text with a different value in most rows ->
``"ignore"``) and one task: the last column, which is where most public tables keep their
label. The user edits the result.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ._toml import toml_key, toml_str, toml_value
from .data import scan_table
from .data._diagnose import reading
from .data.errors import ORIGIN_COLUMNS, DataError

__all__ = ["NULL_CANDIDATES", "Draft", "draft_table_spec"]

NULL_CANDIDATES = ("?", "NA", "N/A", "n/a", "NULL", "null", "None", "NaN", "nan", "#N/A")
"""Values the draft proposes as null tokens when a column holds them."""

_MULTI_HOT_SEPARATORS = ("|", ";")
_MAX_CODES = 64  # integer columns with at most this many values (and few per row) are codes
_MAX_CLASSES = 20  # a last column with up to this many text values is guessed multiclass


@dataclass
class Column:
    """What the draft learned about one column."""

    name: str
    rows: int
    nulls: int
    distinct: int
    numeric: bool
    integer: bool
    top: list[tuple[Any, int]]  # most frequent values with their counts
    role: Any = None
    note: str = ""


@dataclass
class Draft:
    """A drafted spec: its TOML ``text`` and what was guessed (for the command's summary)."""

    text: str
    name: str
    rows: int
    columns: list[Column] = field(default_factory=list)
    task: str | None = None

    def summary(self) -> str:
        """One line: how many columns of each role, and the guessed task."""
        counts: dict[str, int] = {}
        for c in self.columns:
            role = c.role if isinstance(c.role, str) else c.role.get("kind", "?")
            role = "task" if isinstance(c.role, dict) and "task" in c.role else role
            counts[role] = counts.get(role, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        task = f"; GUESSED task: {self.task}" if self.task else "; no task guessed"
        return f"{len(self.columns)} columns ({parts}){task}"


def draft_table_spec(
    path: str | Path,
    *,
    separator: str | None = None,
    header: bool | None = None,
    max_rows: int = 100_000,
    name: str | None = None,
) -> Draft:
    """Read up to ``max_rows`` rows of ``path`` (CSV/TSV, gzipped or not, or Parquet) and
    draft a spec for it. ``separator`` / ``header``: as given, else sniffed."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, not {max_rows}")
    kind = p.name.lower().removesuffix(".gz").rpartition(".")[2]
    parquet = kind in ("parquet", "pq")
    notes: dict[str, str] = {}
    if parquet:
        sep, has_header = ",", True
    else:
        sample = _sample(p)
        sep, sniffed_sep = _separator(sample, kind, separator)
        has_header, sniffed_header = _header(sample, sep, header)
        if sniffed_sep:
            notes["separator"] = "GUESS from the first lines"
        if sniffed_header:
            notes["header"] = (
                "GUESS: the first line names the columns"
                if has_header
                else "GUESS: the first line holds data, not names; columns are column_1, ..."
            )
    read: dict[str, Any] = {"separator": sep, "has_header": has_header, "trim": True}
    raw = _collect(scan_table(p, **read), max_rows)
    found = _null_tokens(raw)
    frame = raw
    if found:
        frame = _collect(scan_table(p, **read, null_values=list(found)), max_rows)
    columns = [_describe(frame, c) for c in frame.columns if c not in ORIGIN_COLUMNS]
    if not columns:
        raise DataError("no columns to draft a spec for", path=str(p))
    for c in columns:
        _guess_feature(c)
    task = _guess_task(columns[-1]) if len(columns) > 1 else None
    spec_name = name or _spec_name(p)
    text = _render(
        p,
        spec_name,
        parquet=parquet,
        read=read,
        notes=notes,
        found=found,
        columns=columns,
        task=task,
        rows=frame.height,
        max_rows=max_rows,
    )
    return Draft(text, spec_name, frame.height, columns, task)


# ------------------------------------------------------------------------------- sniffing
def _sample(p: Path, size: int = 1 << 16) -> str:
    with p.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(p, "rb") if gz else p.open("rb") as fh:
            data = fh.read(size)
    except (OSError, EOFError) as e:
        raise DataError(f"could not be read ({e})", path=str(p), fix="Check the file") from e
    text = data.decode("utf-8", "replace")
    cut = text.rfind("\n")
    return text[:cut] if cut > 0 else text


def _separator(sample: str, kind: str, given: str | None) -> tuple[str, bool]:
    if given is not None:
        return given, False
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter, True
    except csv.Error:
        return ("\t" if kind == "tsv" else ","), True


def _header(sample: str, separator: str, given: bool | None) -> tuple[bool, bool]:
    """Whether the first line names the columns: where most of the next lines hold numbers,
    a name is not a number (each such column votes); with no numeric column, names are
    values that never occur again in their column."""
    if given is not None:
        return given, False
    rows = list(csv.reader(io.StringIO(sample), delimiter=separator, skipinitialspace=True))
    rows = [r for r in rows[:200] if r]
    if len(rows) < 2:
        return True, True
    first, rest = rows[0], rows[1:]
    votes = 0
    for i, name in enumerate(first):
        values = [r[i].strip() for r in rest if i < len(r) and r[i].strip()]
        if values and sum(_is_number(v) for v in values) >= 0.9 * len(values):
            votes += -1 if _is_number(name.strip()) else 1
    if votes:
        return votes > 0, True
    seen = [{r[i].strip() for r in rest if i < len(r)} for i in range(len(first))]
    return all(name.strip() not in col for name, col in zip(first, seen, strict=True)), True


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _collect(lf: pl.LazyFrame, rows: int) -> pl.DataFrame:
    with reading(lf):
        return lf.head(rows).collect()


def _null_tokens(df: pl.DataFrame) -> dict[str, list[tuple[str, int]]]:
    """Null candidates present: token -> [(column, count), ...]."""
    found: dict[str, list[tuple[str, int]]] = {}
    for c in df.columns:
        if c in ORIGIN_COLUMNS or df.schema[c] != pl.String:
            continue
        counts = df.select(pl.col(c).is_in(NULL_CANDIDATES).sum()).item()
        if not counts:
            continue
        vc = df.filter(pl.col(c).is_in(NULL_CANDIDATES))[c].value_counts()
        for token, n in vc.iter_rows():
            found.setdefault(token, []).append((c, int(n)))
    return found


def _describe(df: pl.DataFrame, name: str) -> Column:
    s = df[name]
    nonnull = s.drop_nulls()
    numbers = nonnull.cast(pl.Float64, strict=False)
    numeric = nonnull.len() > 0 and numbers.null_count() == 0 and bool(numbers.is_finite().all())
    integer = numeric and bool((numbers == numbers.round(0)).all())
    top = [
        (v, int(n)) for v, n in nonnull.value_counts(sort=True).head(3).iter_rows()
    ]  # most frequent first
    return Column(
        name=name,
        rows=s.len(),
        nulls=s.null_count(),
        distinct=nonnull.n_unique(),
        numeric=numeric,
        integer=integer,
        top=top,
    )


def _examples(c: Column) -> str:
    return ", ".join(_short(v) for v, _ in c.top)


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 24 else text[:23] + "…"


def _missing(c: Column) -> str:
    return f"; {c.nulls:,} missing" if c.nulls else ""


def _guess_feature(c: Column) -> None:
    present = c.rows - c.nulls
    if present == 0:
        c.role, c.note = "ignore", "empty in the rows read"
    elif c.numeric:
        codes = c.integer and c.distinct <= min(_MAX_CODES, max(2, present // 20))
        if codes:
            c.role = "sparse"
            c.note = (
                f"GUESS: integer codes, {c.distinct} distinct: {_examples(c)}{_missing(c)} "
                '(make it "dense" if it is a quantity)'
            )
        elif c.nulls:
            c.role = {"kind": "dense", "nulls": "mean"}
            c.note = (
                f"numbers, {c.distinct:,} distinct: {_examples(c)}{_missing(c)} (-> train mean)"
            )
        else:
            c.role, c.note = "dense", f"numbers, {c.distinct:,} distinct: {_examples(c)}"
    else:
        values = [str(v) for v, _ in c.top]
        for sep in _MULTI_HOT_SEPARATORS:
            if sum(sep in v for v in values) >= 2:
                c.role = {"kind": "multi_hot", "separator": sep}
                c.note = f"GUESS: lists joined by {sep!r}: {_examples(c)}{_missing(c)}"
                return
        if present >= 100 and c.distinct >= present // 2:
            c.role = "ignore"
            c.note = (
                f"GUESS: a different value in most rows ({c.distinct:,} distinct: an id?); "
                'make it "sparse" if it carries information'
            )
        else:
            c.role = "sparse"
            c.note = f"text, {c.distinct:,} distinct: {_examples(c)}{_missing(c)}"


def _task_name(column: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", column).strip("_")
    return name or "task"


def _guess_task(c: Column) -> str | None:
    """Make the last column a task when its values suggest a kind; return the task name."""
    task = _task_name(c.name)
    present = c.rows - c.nulls
    if present == 0:
        return None
    shares = ", ".join(f"{_short(v)} ({100 * n / present:.1f}%)" for v, n in c.top)
    if c.distinct == 2:
        (a, _), (b, _) = c.top[0], c.top[1]
        if c.numeric and {float(a), float(b)} == {0.0, 1.0}:
            c.role = {"task": task, "kind": "binary"}
            c.note = f"GUESS: the last column is a task; 0/1: {shares}"
        else:
            c.role = {"task": task, "kind": "binary", "positive": [str(b)]}
            c.note = (
                f"GUESS: the last column is a task with 2 values: {shares}; positive = the "
                "rarer one"
            )
    elif c.numeric and c.role != "sparse":
        c.role = {"task": task, "kind": "regression"}
        c.note = f"GUESS: the last column is a task; numbers, {c.distinct:,} distinct"
    elif 2 < c.distinct <= _MAX_CLASSES:
        c.role = {"task": task, "kind": "multiclass"}
        c.note = f"GUESS: the last column is a task with {c.distinct} classes: {shares}, ..."
    else:
        return None
    if c.nulls:
        c.note += f"; {c.nulls:,} rows have no label: fill or drop them"
    return task


def _spec_name(p: Path) -> str:
    stem = p.name
    for suffix in (".gz", ".csv", ".tsv", ".txt", ".parquet", ".pq", ".data"):
        stem = stem.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-").lower() or "table"


# ------------------------------------------------------------------------------ rendering
def _line(key: str, value: Any, note: str = "") -> str:
    text = f"{key} = {toml_value(value)}"
    return f"{text}  # {note}" if note else text


def _render(
    p: Path,
    name: str,
    *,
    parquet: bool,
    read: dict[str, Any],
    notes: dict[str, str],
    found: dict[str, list[tuple[str, int]]],
    columns: list[Column],
    task: str | None,
    rows: int,
    max_rows: int,
) -> str:
    read_note = f"the first {rows:,} rows" if rows >= max_rows else f"all {rows:,} rows"
    out = [
        f"# Drafted by `mtlbench init-spec {p}` from {read_note}.",
        "# Every choice made from the data is marked GUESS: check them, name the tasks",
        "# (at least two for multi-task learning), then run",
        f"#   mtlbench run {name}.toml --stl",
        "# The format: docs/tutorial-own-table.md of mtlbalance, or help(mtlrec.table).",
        _line("name", name),
        _line("description", f"{p.name}: drafted by mtlbench init-spec"),
        _line("problem", "mtlrec.bench:table"),
        _line("methods", ["ew", "dbmtl"]),
        _line("seeds", 1),
        "",
        "[data]",
        _line("path", str(p), "relative paths are read from the current directory"),
        _line("split", [0.7, 0.15, 0.15], "train / validation / test fractions of the rows"),
        _line("split_seed", 0),
    ]
    if not parquet:
        out.append(_line("separator", read["separator"], notes.get("separator", "")))
        out.append(_line("header", read["has_header"], notes.get("header", "")))
        if not read["has_header"]:
            out.append(
                "# names = [...]  # name the columns of a headerless file here (one per field; "
                "then use the names below)"
            )
    out.append(_line("trim", True, "strip spaces around values (e.g. after ', ')"))
    if found:
        where = "; ".join(
            f"{toml_str(t)} in "
            + ", ".join(f"{c} ({n:,})" for c, n in cols[:4])
            + (f" and {len(cols) - 4} more columns" if len(cols) > 4 else "")
            for t, cols in found.items()
        )
        out.append(_line("nulls", list(found), f"GUESS: missing values; found {where}"))
    else:
        out.append(_line("nulls", [], 'values that mean "missing", e.g. ["?"]'))
    out += [
        "",
        '# The role of every column: "dense" (a number), "sparse" (a category), "multi_hot"',
        '# (several categories in one field), "ignore", or a task:',
        '#   {task = "NAME", kind = "binary", positive = ["VALUE"]}  (the value(s) that mean 1)',
        '#   {task = "NAME", kind = "regression"}  (learned standardised; standardize = false)',
        '#   {task = "NAME", kind = "multiclass"}',
        "# Each task also needs a [tasks.NAME] table at the end of the file.",
        "[data.columns]",
    ]
    out += [_line(toml_key(c.name), c.role, c.note) for c in columns]
    out += [
        "",
        "[model]",
        _line("arch", "mmoe", "shared_bottom, omoe, mmoe, cgc, ple, aitm"),
        _line("embedding_dim", 8),
        _line("tables", "approx", "embedding tables balanced by DB-MTL's per-task factors"),
        _line("num_experts", 4),
        _line("expert", [32]),
        _line("tower", [16]),
        "",
        "[train]",
        _line("epochs", 5),
        _line("batch_size", 512),
        _line("eval_batch_size", 8192),
        _line("lr", 0.001),
        "",
        "# The metrics of each task, for Δp and the report (their defaults: auc for binary,",
        "# mae for regression, accuracy for multiclass; others with metrics = [...] above).",
    ]
    tasks = [c for c in columns if isinstance(c.role, dict) and "task" in c.role]
    for c in tasks:
        t = c.role
        metric = {"binary": "auc", "regression": "mae", "multiclass": "accuracy"}[t["kind"]]
        direction = "lower" if metric == "mae" else "higher"
        out += [f"[tasks.{toml_key(t['task'])}]", _line(metric, direction)]
    if not tasks:
        out.append("# (no task guessed: make columns tasks above, then add their tables here)")
    return "\n".join(out) + "\n"
