"""Readers for real recommendation data formats. Each returns polars LazyFrames and the
matching :class:`~mtlrec.data.spec.FeatureSpec`.

- :func:`census_income` — UCI Census-Income (KDD), the MMoE paper's income / marital tasks,
  split with a fixed seed.
- :func:`read_aliexpress` — AliExpress in MTReclib's CSV layout.
- :func:`read_ali_ccp_csv` — Ali-CCP in torch-rechub's CSV layout.
- :func:`read_ali_ccp_esmm` — Ali-CCP in the ESMM / PaddleRec ``field:id`` text layout.
- :func:`read_criteo` — Criteo (label, I1–I13, C1–C26), TSV without header or CSV with one.
- :func:`read_table` — any CSV or Parquet file with a user-written spec (:func:`scan_table`:
  separator, header or column names, null tokens such as ``?``, whitespace trimming).

CSV files are scanned with every column as text (``infer_schema=False``): categorical values
keep their exact spelling, and a non-numeric value in a dense column is reported with its row
by :meth:`FittedFeatures.transform <mtlrec.data.spec.FittedFeatures.transform>` instead of
failing inside the CSV parser.

Every frame a reader returns carries two origin columns, :data:`~mtlrec.data.errors.ORIGIN_FILE`
(the path) and :data:`~mtlrec.data.errors.ORIGIN_ROW` (the 1-based data row in that file), so
that an error found after splitting, shuffling or filtering still names the file's row; specs
never read them. A file polars cannot parse (an extra field, an unclosed quote, invalid
UTF-8, a truncated gzip or Parquet file) gives a :class:`~mtlrec.data.errors.DataError` naming
the file, line, data row and column, wherever the lazy frame is collected by this package.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from ._diagnose import CsvFormat, ParquetFormat, reading, remember, translate
from .errors import ORIGIN_COLUMNS, ORIGIN_FILE, ORIGIN_ROW, DataError
from .spec import (
    DenseFeature,
    FeatureSpec,
    FittedFeatures,
    Label,
    MultiHotFeature,
    SparseFeature,
    check_columns,
)

__all__ = [
    "ALI_CCP_ESMM_FIELDS",
    "CENSUS_COLUMNS",
    "CENSUS_DENSE",
    "Source",
    "Splits",
    "census_income",
    "data_dir",
    "read_ali_ccp_csv",
    "read_ali_ccp_esmm",
    "read_aliexpress",
    "read_criteo",
    "read_table",
    "scan_table",
    "split_frame",
]


class Source(NamedTuple):
    """A lazily read file and the spec for it."""

    frame: pl.LazyFrame
    spec: FeatureSpec
    path: str


@dataclass
class Splits:
    """Train / validation / test frames of one data set and its spec (fit on ``train``)."""

    train: pl.LazyFrame
    val: pl.LazyFrame
    test: pl.LazyFrame
    spec: FeatureSpec
    info: dict[str, Any] = field(default_factory=dict)

    def fit(self) -> FittedFeatures:
        """The spec fitted on the training split."""
        return self.spec.fit(self.train, source=self.info.get("source"))


def data_dir(path: str | Path | None = None) -> Path:
    """The data directory: ``path``, else ``$MTLREC_DATA_DIR``, else ``../shared/data`` from
    the working directory (where this project's machines keep it)."""
    if path is not None:
        return Path(path)
    env = os.environ.get("MTLREC_DATA_DIR")
    if env:
        return Path(env)
    return Path.cwd().parent / "shared" / "data"


def _require_file(path: Path, what: str, how: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}. {how}")
    if path.stat().st_size == 0:
        raise DataError(
            "the file is empty (0 bytes)", path=str(path), fix=f"{what} needs a header and rows"
        )


def _with_origin(lf: pl.LazyFrame, path: str) -> pl.LazyFrame:
    """``lf`` with the origin columns: ``path`` and the 1-based data row (replacing origin
    columns the file itself holds, e.g. a frame of this package written back to disk)."""
    have = [c for c in ORIGIN_COLUMNS if c in lf.collect_schema().names()]
    return (
        lf.drop(have)
        .with_row_index(ORIGIN_ROW, offset=1)
        .with_columns(pl.lit(path, dtype=pl.String).alias(ORIGIN_FILE))
    )


def _scan_csv(
    path: Path,
    *,
    separator: str = ",",
    has_header: bool = True,
    new_columns: Sequence[str] | None = None,
    quote_char: str | None = '"',
) -> pl.LazyFrame:
    """``pl.scan_csv`` with every column as text and the origin columns; the header is read
    now, so an empty or unreadable file fails here with a :class:`DataError`."""
    p = str(path)
    remember(
        p,
        CsvFormat(
            separator,
            quote_char,
            has_header,
            tuple(new_columns) if new_columns is not None else None,
        ),
    )
    with reading([p]):
        try:
            lf = pl.scan_csv(
                path,
                separator=separator,
                has_header=has_header,
                new_columns=list(new_columns) if new_columns is not None else None,
                quote_char=quote_char,
                infer_schema=False,
            )
            return _with_origin(lf, p)
        except pl.exceptions.NoDataError as e:
            raise DataError(
                "the file holds no lines (nothing, not even a header)",
                path=p,
                fix="It needs a header and rows",
            ) from e


def _scan_parquet(path: Path) -> pl.LazyFrame:
    p = str(path)
    remember(p, ParquetFormat())
    with reading([p]):
        return _with_origin(pl.scan_parquet(path), p)


def split_frame(
    df: pl.DataFrame, fractions: Sequence[float], seed: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Shuffle rows with ``numpy.random.default_rng(seed)`` and cut them into train / val /
    test of the given ``fractions`` (summing to 1; test takes the remainder)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    n = df.height
    perm = np.random.default_rng(seed).permutation(n)
    a = round(fractions[0] * n)
    b = a + round(fractions[1] * n)
    return df[perm[:a]], df[perm[a:b]], df[perm[b:]]


# --------------------------------------------------------------------------- census-income
CENSUS_COLUMNS: tuple[str, ...] = (
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour",
    "hs_college", "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin",
    "sex", "union_member", "unemp_reason", "full_or_part_emp", "capital_gains",
    "capital_losses", "stock_dividends", "tax_filer_stat", "region_prev_res",
    "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa",
    "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18",
    "country_father", "country_mother", "country_self", "citizenship", "own_or_self",
    "vet_question", "vet_benefits", "weeks_worked", "year", "income_50k",
)  # fmt: skip
"""The 42 columns of census-income.{data,test}.gz in file order (names as in the MMoE
reimplementations, e.g. drawbridge/keras-mmoe; the long names are in census-income.names)."""

CENSUS_DENSE: tuple[str, ...] = (
    "age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp",
    "weeks_worked",
)  # fmt: skip
"""The seven continuous attributes (census-income.names); the other 33 are categorical."""


def census_income(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    files: Sequence[str] = ("census-income.test.gz",),
) -> Splits:
    """Census-Income (KDD) with the MMoE paper's two tasks, split with a fixed seed.

    Tasks (both binary): ``income`` — the label column is ``50000+.`` (vs ``- 50000.``);
    ``marital`` — ``marital_stat == "Never married"``. Features: every other column but the
    instance weight: 7 dense (:data:`CENSUS_DENSE`, standardised on train) and 32 sparse.
    Household-status columns (``det_hh_fam_stat`` values like "Child <18 never marr ...")
    nearly give the marital label away, so that task is easy (AUC ≈ 0.99).

    Args:
        path: the ``census-income/`` directory, a directory holding it, or a file; default
            ``data_dir() / "census-income"``.
        seed: seed of the row permutation (:func:`split_frame`).
        fractions: train / val / test fractions of the rows (default 70/15/15).
        files: which files of the directory to read and concatenate (default only the
            official test half, 99,762 rows, which is what this project's machines have).
    """
    base = data_dir(path) if path is None or Path(path).is_dir() else Path(path)
    if base.is_dir() and (base / "census-income").is_dir():
        base = base / "census-income"
    paths = [base] if base.is_file() else [base / f for f in files]
    frames = []
    for p in paths:
        _require_file(
            p,
            "Census-Income (KDD)",
            "Download census-income.data.gz / census-income.test.gz from "
            "https://archive.ics.uci.edu/dataset/117/census+income+kdd and pass their "
            "directory (or set MTLREC_DATA_DIR).",
        )
        name = str(p)
        remember(name, CsvFormat(",", None, False, CENSUS_COLUMNS))
        with reading([name]):
            raw = pl.read_csv(p, has_header=False, infer_schema=False, quote_char=None)
        if raw.width != len(CENSUS_COLUMNS):
            raise DataError(
                f"{raw.width} comma-separated fields on the first line; Census-Income has "
                f"{len(CENSUS_COLUMNS)} (census-income.names)",
                path=name,
                line=1,
                row=1,
                fix="Check that this is census-income.data.gz or census-income.test.gz",
            )
        frames.append(
            _with_origin(raw.lazy(), name)
            .rename(dict(zip(raw.columns, CENSUS_COLUMNS, strict=True)))
            .with_columns(pl.col(CENSUS_COLUMNS).str.strip_chars())
            .collect()
        )
    df = pl.concat(frames)
    bad = df.filter(
        ~pl.col("income_50k").is_in(["- 50000.", "50000+."]) | pl.col("income_50k").is_null()
    ).head(1)
    if bad.height:
        row, value = int(bad[ORIGIN_ROW][0]), bad["income_50k"][0]
        raise DataError(
            "the income label (42nd field) must be '- 50000.' or '50000+.', not {value}",
            path=bad[ORIGIN_FILE][0],
            row=row,
            line=row,
            column="income_50k",
            value=value,
            fix="Fix the line"
            + (" (it has fewer than 42 fields: cut short?)" if value is None else ""),
        )
    df = df.with_columns(
        (pl.col("income_50k") == "50000+.").cast(pl.Int8).alias("income"),
        (pl.col("marital_stat") == "Never married").cast(pl.Int8).alias("marital"),
    ).drop("income_50k", "marital_stat", "instance_weight")
    sparse = [
        SparseFeature(c)
        for c in CENSUS_COLUMNS
        if c not in CENSUS_DENSE and c not in ("income_50k", "marital_stat", "instance_weight")
    ]
    spec = FeatureSpec(
        sparse=sparse,
        dense=[DenseFeature(c) for c in CENSUS_DENSE],
        labels=[Label("income"), Label("marital")],
    )
    train, val, test = split_frame(df, fractions, seed)
    info = {
        "source": ",".join(str(p) for p in paths),
        "rows": df.height,
        "split_seed": seed,
        "fractions": list(fractions),
        "split_rows": [train.height, val.height, test.height],
    }
    return Splits(train.lazy(), val.lazy(), test.lazy(), spec, info)


# ------------------------------------------------------------------------------ AliExpress
def read_aliexpress(path: str | Path) -> Source:
    """One AliExpress CSV in MTReclib's layout: ``search_id``, ``categorical_1..16``,
    ``numerical_1..63``, ``click``, ``conversion`` (with header). ``search_id`` is not a
    feature. Tasks ``click`` and ``conversion`` (binary)."""
    p = Path(path)
    _require_file(
        p,
        "AliExpress CSV",
        "Get the MTReclib AliExpress_{NL,ES,FR,US} files (https://tianchi.aliyun.com/dataset/"
        "74690, preprocessed as in easezyc/Multitask-Recommendation-Library).",
    )
    lf = _scan_csv(p)
    spec = FeatureSpec(
        sparse=[SparseFeature(f"categorical_{i}") for i in range(1, 17)],
        dense=[DenseFeature(f"numerical_{i}") for i in range(1, 64)],
        labels=[Label("click"), Label("conversion")],
    )
    check_columns(lf, spec.columns, str(p))
    return Source(lf, spec, str(p))


# -------------------------------------------------------------------------------- Ali-CCP
def read_ali_ccp_csv(path: str | Path) -> Source:
    """One Ali-CCP CSV in torch-rechub's layout: ``click``, ``purchase``, then sparse id
    columns (``101``, ``121``, ..., ``150_14``) and dense columns whose names start with
    ``D`` (``D109_14``, ...). Tasks ``click`` and ``purchase`` (binary)."""
    p = Path(path)
    _require_file(
        p,
        "Ali-CCP CSV",
        "Get Ali-CCP from https://tianchi.aliyun.com/dataset/408 and convert it with "
        "torch-rechub's examples/ranking/data/ali-ccp preprocessing.",
    )
    lf = _scan_csv(p)
    cols = lf.collect_schema().names()
    check_columns(lf, ["click", "purchase"], str(p))
    feats = [c for c in cols if c not in ("click", "purchase", *ORIGIN_COLUMNS)]
    spec = FeatureSpec(
        sparse=[SparseFeature(c) for c in feats if not c.startswith("D")],
        dense=[DenseFeature(c) for c in feats if c.startswith("D")],
        labels=[Label("click"), Label("purchase")],
    )
    return Source(lf, spec, str(p))


ALI_CCP_ESMM_FIELDS: tuple[str, ...] = (
    "101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126", "127",
    "128", "129", "205", "206", "207", "210", "216", "508", "509", "702", "853", "301",
)  # fmt: skip
"""The 23 feature fields of Ali-CCP in the ESMM paper's release (PaddleRec's ESMM reader)."""


def read_ali_ccp_esmm(path: str | Path, fields: Sequence[str] | None = None) -> Source:
    """Ali-CCP in the ESMM ``field:id`` text layout (PaddleRec ``models/multitask/esmm``).

    Each line: ``sample_id,click,purchase,field:id,field:id,...``. A field may occur several
    times in a line (``210`` usually does) or not at all, so every field is a
    :class:`MultiHotFeature` (a ``List`` column of id strings; an absent field is an empty
    bag). Tasks ``click`` and ``purchase`` (= click-through conversion, ESMM's CTCVR).

    Args:
        fields: the expected fields (default :data:`ALI_CCP_ESMM_FIELDS`); a token of any
            other field is an error naming it and its line.
    """
    p = Path(path)
    _require_file(
        p,
        "Ali-CCP ESMM text",
        "Get it from https://tianchi.aliyun.com/dataset/408 (the ESMM paper's release) or "
        "PaddleRec's datasets/ali-ccp download script.",
    )
    fields = tuple(fields) if fields is not None else ALI_CCP_ESMM_FIELDS
    # One field per line: the unit separator (0x1f) does not occur in this format.
    lines = _scan_csv(p, separator="\x1f", has_header=False, new_columns=["line"], quote_char=None)
    tok = lines.select(*ORIGIN_COLUMNS, pl.col("line").str.split(",").alias("tok"))
    head = tok.select(
        *ORIGIN_COLUMNS,
        pl.col("tok").list.get(0, null_on_oob=True).alias("sample_id"),
        pl.col("tok").list.get(1, null_on_oob=True).alias("click"),
        pl.col("tok").list.get(2, null_on_oob=True).alias("purchase"),
        pl.col("tok").list.slice(3).alias("pairs"),
    )
    # Validate: every pair is field:id with a known field (one streaming pass).
    known = list(fields)
    with reading([str(p)]):
        bad = (
            head.select(ORIGIN_ROW, "pairs")
            .explode("pairs")
            .filter(
                ~pl.col("pairs").str.contains(":")
                | ~pl.col("pairs").str.split_exact(":", 1).struct.field("field_0").is_in(known)
            )
            .head(1)
            .collect()
        )
    if bad.height:
        row = int(bad[ORIGIN_ROW][0])
        raise DataError(
            "not a 'field:id' pair of a known field: {value}",
            path=str(p),
            line=row,
            row=row,
            value=bad["pairs"][0],
            fix=f"The known fields are {known}; pass fields=[...] to accept others",
        )
    frame = head.select(
        *ORIGIN_COLUMNS,
        "sample_id",
        "click",
        "purchase",
        *(
            pl.col("pairs")
            .list.eval(
                pl.element().filter(pl.element().str.starts_with(f"{f}:")).str.slice(len(f) + 1)
            )
            .alias(f)
            for f in fields
        ),
    )
    spec = FeatureSpec(
        multi_hot=[MultiHotFeature(f) for f in fields],
        labels=[Label("click"), Label("purchase")],
    )
    return Source(frame, spec, str(p))


# --------------------------------------------------------------------------------- Criteo
CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_SPARSE = tuple(f"C{i}" for i in range(1, 27))


def read_criteo(
    path: str | Path,
    *,
    separator: str | None = None,
    has_header: bool | None = None,
    min_count: int = 1,
) -> Source:
    """Criteo display-ads format: ``label``, ``I1..I13`` (integer counts), ``C1..C26`` (hashed
    categories). Reads Criteo's own TSV without header and CSV/TSV with a header (as in
    DeepCTR's sample); ``separator`` and ``has_header`` are sniffed from the first line when
    not given. Dense features get ``sign(x)·log1p(|x|)`` then standardisation; missing
    counts are filled with the train mean. Task ``click`` (column ``label``)."""
    p = Path(path)
    _require_file(
        p,
        "Criteo file",
        "Get Criteo from https://ailab.criteo.com/ressources/ (Kaggle display advertising "
        "challenge train.txt or the 1TB click logs).",
    )
    first = _first_line(p)
    sep = separator or ("\t" if "\t" in first else ",")
    header = has_header if has_header is not None else first.split(sep)[0].strip() == "label"
    names = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
    if header:
        lf = _scan_csv(p, separator=sep)
    else:
        if len(first.split(sep)) != len(names):
            raise DataError(
                f"{len(first.split(sep))} fields separated by {sep!r}; Criteo has "
                f"{len(names)} (label, I1-I13, C1-C26)",
                path=str(p),
                line=1,
                row=1,
                fix="Check the file, or pass separator= and has_header=",
            )
        lf = _scan_csv(p, separator=sep, has_header=False, new_columns=names)
    spec = FeatureSpec(
        sparse=[SparseFeature(c, min_count=min_count) for c in CRITEO_SPARSE],
        dense=[DenseFeature(c, nulls="mean", log=True) for c in CRITEO_DENSE],
        labels=[Label("click", column="label")],
    )
    check_columns(lf, spec.columns, str(p))
    return Source(lf, spec, str(p))


def _first_line(p: Path) -> str:
    """The first line of a (possibly gzipped) text file, for sniffing its layout."""
    try:
        with p.open("rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with gzip.open(p, "rb") if gz else p.open("rb") as fh:
            raw = fh.readline(1 << 20)
    except (EOFError, OSError) as e:  # a damaged .gz
        raise translate(e, [str(p)]) from e
    return raw.decode("utf-8", "replace").rstrip("\r\n")


# ---------------------------------------------------------------------------------- generic
def scan_table(
    path: str | Path,
    *,
    separator: str = ",",
    has_header: bool = True,
    names: Sequence[str] | None = None,
    null_values: Sequence[str] = (),
    trim: bool = False,
    quote_char: str | None = '"',
) -> pl.LazyFrame:
    """Any CSV/TSV (optionally gzipped) or Parquet file as a lazy frame with the origin
    columns, every CSV column as text.

    Args:
        separator: one character (``"\\t"`` for tabs); a ``.tsv`` file with the default
            ``","`` is read with tabs. For fields separated by ``", "`` (comma and space, as
            in the UCI census files) use ``","`` and ``trim=True``.
        has_header: whether the first line names the columns.
        names: the column names of a headerless file, one per field (default ``column_1``,
            ``column_2``, ... — 1-based, as error messages count fields); for a file with a
            header, the header's names are replaced (the number must match).
        null_values: values (after trimming) that mean "missing", e.g. ``["?"]`` or
            ``["NA"]``; an empty field is always missing.
        trim: strip spaces and tabs around every text value and header name (after reading,
            so quoted values are trimmed too).
        quote_char: the quote character; ``None`` reads quotes as ordinary characters (every
            record is then one line, so errors can name the line exactly).
    """
    p = Path(path)
    _require_file(
        p, "data file", "Check the path (a relative path is read from the current directory)"
    )
    if len(separator) != 1:
        raise ValueError(
            f"{p}: the separator must be one character, not {separator!r}"
            + (
                "; for fields separated by a comma and a space use separator=',' and trim=True"
                if separator.strip() == ","
                else ""
            )
        )
    kind = p.name.lower().removesuffix(".gz").rpartition(".")[2]
    if kind in ("parquet", "pq"):
        lf = _scan_parquet(p)
        if names is not None:
            lf = _rename(lf, names, p)
    else:
        sep = "\t" if kind == "tsv" and separator == "," else separator
        lf = _scan_csv(p, separator=sep, has_header=has_header, quote_char=quote_char)
        width = len(lf.collect_schema().names()) - len(ORIGIN_COLUMNS)
        if names is not None and len(names) != width:
            first = "header" if has_header else "first line"
            raise DataError(
                f"{len(names)} column names given, but the {first} has {width} fields "
                f"(separator {sep!r})",
                path=str(p),
                line=1,
                fix="Give one name per field, or check the separator",
            )
        if not has_header:
            names = names if names is not None else [f"column_{i}" for i in range(1, width + 1)]
            _check_names(names, p)
            lf = _scan_csv(
                p, separator=sep, has_header=False, new_columns=names, quote_char=quote_char
            )
        elif names is not None:
            lf = _rename(lf, names, p)
        elif trim:  # the header's names too (", "-separated: " age")
            have = [c for c in lf.collect_schema().names() if c not in ORIGIN_COLUMNS]
            if any(c != c.strip(" \t") for c in have):
                lf = _rename(lf, [c.strip(" \t") for c in have], p)
    text = [c for c, t in lf.collect_schema().items() if t == pl.String and c not in ORIGIN_COLUMNS]
    tokens = [str(v) for v in null_values]
    if trim and text:
        lf = lf.with_columns(pl.col(text).str.strip_chars(" \t"))
        tokens.append("")  # a field of spaces only is as missing as an empty one
    if tokens and text:
        lf = lf.with_columns(
            pl.when(pl.col(c).is_in(tokens)).then(None).otherwise(pl.col(c)).alias(c) for c in text
        )
    return lf


def _check_names(names: Sequence[str], p: Path) -> None:
    twice = sorted({str(n) for n in names if list(names).count(n) > 1})
    if twice:
        raise ValueError(f"{p}: column names must be unique; given twice: {twice}")
    bad = [n for n in names if not isinstance(n, str) or not n or n in ORIGIN_COLUMNS]
    if bad:
        raise ValueError(f"{p}: column names must be non-empty text (not {ORIGIN_COLUMNS}): {bad}")


def _rename(lf: pl.LazyFrame, names: Sequence[str], p: Path) -> pl.LazyFrame:
    have = [c for c in lf.collect_schema().names() if c not in ORIGIN_COLUMNS]
    if len(names) != len(have):
        raise DataError(
            f"{len(names)} column names given for {len(have)} columns",
            path=str(p),
            fix="Give one name per column",
        )
    _check_names(names, p)
    return lf.rename(dict(zip(have, names, strict=True)))


def read_table(
    path: str | Path,
    spec: FeatureSpec,
    *,
    separator: str = ",",
    has_header: bool = True,
    names: Sequence[str] | None = None,
    null_values: Sequence[str] = (),
    trim: bool = False,
    quote_char: str | None = '"',
) -> Source:
    """Any CSV (``.csv``, ``.tsv``, ``.txt``, gzipped or not, other separators) or Parquet
    (``.parquet``/``.pq``) file, lazily (:func:`scan_table`: header or column names, null
    tokens, trimming), checked to hold every column ``spec`` names."""
    lf = scan_table(
        path,
        separator=separator,
        has_header=has_header,
        names=names,
        null_values=null_values,
        trim=trim,
        quote_char=quote_char,
    )
    check_columns(lf, spec.columns, str(path))
    return Source(lf, spec, str(path))
