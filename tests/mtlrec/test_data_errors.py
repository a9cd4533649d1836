"""Data errors name the file, the line / data row and the column (issue 15, item 10).

Each test writes a small broken file in the real format and reads it through the public
readers and loaders. Expected lines and rows are counted from the text the test writes (and,
for data rows, checked against what polars reads from the intact part of the file).
Terms: "line" is the 1-based physical line, header counted; "data row" the 1-based record
after the header.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from mtlrec.data import (
    CENSUS_COLUMNS,
    CENSUS_DENSE,
    DataError,
    DenseFeature,
    FeatureSpec,
    FittedFeatures,
    Label,
    LazyLoader,
    SparseFeature,
    census_income,
    iter_batches,
    read_ali_ccp_csv,
    read_ali_ccp_esmm,
    read_aliexpress,
    read_criteo,
    read_table,
    split_frame,
)
from mtlrec.data._diagnose import diagnose

SPEC = FeatureSpec(
    sparse=[SparseFeature("user")],
    dense=[DenseFeature("price")],
    labels=[Label("click")],
)
HEADER = "user,price,click"


def _rows(n: int) -> list[str]:
    return [f"u{i % 4},{i}.5,{i % 2}" for i in range(n)]


def _write(path: Path, lines: list[str], *, gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _raises(fn: Callable[[], object]) -> DataError:
    with pytest.raises(DataError) as info:
        fn()
    err = info.value
    assert "\n" not in str(err), "the message must be one line"
    return err


def _fitted() -> FittedFeatures:
    return SPEC.fit(pl.DataFrame({"user": ["u0"], "price": [1.0], "click": [0]}))


# ------------------------------------------------------------------------- parse errors
@pytest.mark.parametrize("where", ["fit", "stream", "lazyloader"])
def test_extra_field_names_line_row_and_field(tmp_path: Path, where: str) -> None:
    rows = _rows(30)
    rows[11] += ",surplus"  # data row 12, line 13 (header is line 1)
    path = _write(tmp_path / "extra.csv", [HEADER, *rows])
    src = read_table(path, SPEC)
    if where == "fit":
        err = _raises(lambda: SPEC.fit(src.frame))
    elif where == "stream":
        err = _raises(lambda: list(iter_batches(src.frame, _fitted(), 4)))
    else:
        err = _raises(lambda: list(LazyLoader(src.frame, _fitted(), 4, shuffle=True)))
    assert (err.path, err.line, err.row, err.column) == (str(path), 13, 12, "field 4")
    assert str(err).startswith(f"{path}: line 13 (data row 12), field 4: 4 fields")
    assert "header has 3" in str(err)
    assert "surplus" not in str(err)
    assert isinstance(err.__cause__, pl.exceptions.ComputeError)


def test_extra_field_in_headerless_criteo_tsv(tmp_path: Path) -> None:
    good = "\t".join(["1", *(str(i) for i in range(13)), *(f"{i:08x}" for i in range(26))])
    lines = [good] * 9
    lines[6] = good + "\t" + "deadbeef"  # line 7 = data row 7: no header
    path = _write(tmp_path / "train.txt", lines)
    src = read_criteo(path)
    err = _raises(lambda: src.spec.fit(src.frame))
    assert (err.path, err.line, err.row, err.column) == (str(path), 7, 7, "field 41")
    assert "41 fields where the format has 40" in str(err)


def test_unclosed_quote_names_line_and_column_and_never_shows_content(tmp_path: Path) -> None:
    marker = "SECRET-MARKER-7f3a"
    rows = _rows(20)
    rows[4] = f'u1,"{marker} 5.5,1'  # data row 5, line 6; the quote runs to the end of the file
    path = _write(tmp_path / "quote.csv", [HEADER, *rows])
    for read in (
        lambda: SPEC.fit(read_table(path, SPEC).frame),
        lambda: list(iter_batches(read_table(path, SPEC).frame, _fitted(), 8)),
    ):
        err = _raises(read)
        assert (err.path, err.line, err.row, err.column) == (str(path), 6, 5, "price")
        assert "never closed" in str(err)
        assert marker not in str(err) and "u3" not in str(err)
        # polars' own message shows the rest of the file; it is only chained
        assert marker in str(err.__cause__)


def test_invalid_utf8_names_line_row_column_and_byte(tmp_path: Path) -> None:
    lines = [HEADER.encode(), *(r.encode() for r in _rows(10))]
    lines[8] = b"caf\xe9,7.5,1"  # latin-1 'é': data row 8, line 9
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    err = _raises(lambda: SPEC.fit(read_table(path, SPEC).frame))
    assert (err.path, err.line, err.row, err.column) == (str(path), 9, 8, "user")
    assert "invalid UTF-8 at byte 4 of line 9" in str(err) and "iconv" in str(err)


def _census_line(i: int, **override: str) -> str:
    values = []
    for c in CENSUS_COLUMNS:
        if c in override:
            values.append(override[c])
        elif c in CENSUS_DENSE:
            values.append(str(i % 7))
        elif c == "income_50k":
            values.append("50000+." if i % 5 == 0 else "- 50000.")
        elif c == "marital_stat":
            values.append("Never married" if i % 2 else "Married-civilian spouse present")
        else:
            values.append(f"{c}-{i % 3}")
    return ", ".join(values)  # the real file's comma-space layout


def test_truncated_gzip_names_file_and_last_good_line(tmp_path: Path) -> None:
    full = _write(tmp_path / "full.gz", [_census_line(i) for i in range(3000)], gz=True)
    blob = full.read_bytes()
    path = tmp_path / "census-income.test.gz"
    path.write_bytes(blob[: len(blob) // 2])
    err = _raises(lambda: census_income(path))
    assert err.path == str(path)
    assert "truncated" in str(err) and "gzip" in str(err)
    # the same through read_table's lazy CSV scan of a .csv.gz
    rows = [HEADER, *_rows(20000)]
    blob = gzip.compress(("\n".join(rows) + "\n").encode())
    path2 = tmp_path / "big.csv.gz"
    path2.write_bytes(blob[: len(blob) // 2])
    err = _raises(lambda: SPEC.fit(read_table(path2, SPEC).frame))
    assert err.path == str(path2) and "truncated" in str(err)
    # "after line N": the lines before N are intact in the file
    n = int(str(err).split("after line ")[1].split(".")[0])
    whole = "\n".join(rows).encode()
    assert 1 < n < len(rows)
    assert gzip.decompress(blob)[: len(whole)] == whole  # (fixture sanity)


def test_truncated_parquet_names_file(tmp_path: Path) -> None:
    full = tmp_path / "full.parquet"
    pl.DataFrame(
        {"user": ["a", "b"] * 500, "price": [1.0] * 1000, "click": [0, 1] * 500}
    ).write_parquet(full)
    blob = full.read_bytes()
    path = tmp_path / "cut.parquet"
    path.write_bytes(blob[: len(blob) - 100])
    err = _raises(lambda: read_table(path, SPEC))
    assert err.path == str(path)
    assert "incomplete" in str(err) and "truncated" in str(err)
    assert isinstance(err.__cause__, pl.exceptions.PolarsError)


def test_empty_files_name_the_file(tmp_path: Path) -> None:
    # a gzip file holding nothing: census reads it eagerly
    empty_gz = tmp_path / "census-income.test.gz"
    empty_gz.write_bytes(gzip.compress(b""))
    err = _raises(lambda: census_income(empty_gz))
    assert err.path == str(empty_gz) and "no lines" in str(err)
    # a header and no rows: the error names the file without source=
    header_only = _write(tmp_path / "header.csv", [HEADER])
    err = _raises(lambda: SPEC.fit(read_table(header_only, SPEC).frame))
    assert err.path == str(header_only) and "no data rows" in str(err)
    # zero bytes
    (tmp_path / "zero.parquet").write_bytes(b"")
    err = _raises(lambda: read_table(tmp_path / "zero.parquet", SPEC))
    assert err.path == str(tmp_path / "zero.parquet") and "empty" in str(err)


def test_missing_column_names_file_and_column_without_source(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", [HEADER, *_rows(5)])
    wider = FeatureSpec(
        sparse=[SparseFeature("user")],
        dense=[DenseFeature("price"), DenseFeature("age"), DenseFeature("height")],
    )
    err = _raises(lambda: wider.fit(read_table(path, SPEC).frame))
    assert (err.path, err.column) == (str(path), "age")
    assert "'height'" in str(err) and "['user', 'price', 'click']" in str(err)
    assert "__mtlrec" not in str(err)  # the origin columns are not the user's


# ------------------------------------------------------------------------- value errors
def test_bad_label_after_shuffling_names_the_file_row(tmp_path: Path) -> None:
    rows = _rows(60)
    k = 37  # data row 37 (line 38) holds a label that is not 0/1
    rows[k - 1] = "u2,3.5,7"
    path = _write(tmp_path / "log.csv", [HEADER, *rows])
    frame = read_table(path, SPEC).frame.collect()
    # polars reads the row as the k-th record
    assert pl.read_csv(path, infer_schema=False)["click"][k - 1] == "7"
    parts = split_frame(frame, (0.5, 0.25, 0.25), seed=3)
    fitted = SPEC.fit(parts[0].filter(pl.col("click") != "7"))
    errors = []
    for part in parts:
        try:
            fitted.transform(part)
        except DataError as e:
            errors.append(e)
    assert len(errors) == 1
    err = errors[0]
    assert (err.path, err.row, err.column, err.task) == (str(path), k, "click", "click")
    assert f"data row {k} " in str(err) and "not '7'" in str(err)
    # a streamed, filtered frame: still the file's row, not the position in the stream
    odd = read_table(path, SPEC).frame.filter(pl.col("price").str.starts_with("3"))
    err = _raises(lambda: list(iter_batches(odd, fitted, 2)))
    assert (err.path, err.row) == (str(path), k)


def test_census_value_error_after_split_names_the_line(tmp_path: Path) -> None:
    lines = [_census_line(i) for i in range(50)]
    k = 23
    lines[k - 1] = _census_line(k - 1, age="forty")  # line 23 (no header: data row 23)
    path = _write(tmp_path / "census-income.test.gz", lines, gz=True)
    splits = census_income(path, seed=1)
    fitted = splits.spec.fit(splits.train.filter(pl.col("age") != "forty"))
    errors = []
    for part in (splits.train, splits.val, splits.test):
        try:
            fitted.transform(part)
        except DataError as e:
            errors.append(e)
    assert len(errors) == 1
    err = errors[0]
    assert (err.path, err.line, err.row, err.column) == (str(path), k, k, "age")
    assert str(err).startswith(f"{path}: line {k} (data row {k}), column 'age': not a number")


def test_census_short_line_names_the_line(tmp_path: Path) -> None:
    lines = [_census_line(i) for i in range(12)]
    lines[8] = ", ".join(_census_line(8).split(", ")[:30])  # cut short: line 9
    path = _write(tmp_path / "census-income.test.gz", lines, gz=True)
    err = _raises(lambda: census_income(path))
    assert (err.path, err.line, err.column) == (str(path), 9, "income_50k")
    assert "fewer than 42 fields" in str(err)
    # a line with one field too many fails in polars' parser: the checker names it
    lines[8] = _census_line(8) + ", 7"
    path = _write(tmp_path / "census-income.data.gz", lines, gz=True)
    err = _raises(lambda: census_income(path))
    assert (err.path, err.line, err.row, err.column) == (str(path), 9, 9, "field 43")
    assert "43 fields where the format has 42" in str(err)


def test_esmm_bad_label_names_the_line(tmp_path: Path) -> None:
    lines = [f"{i},{i % 2},0,101:{i},205:{i + 1}" for i in range(1, 9)]
    lines[4] = "5,yes,0,101:5,205:6"  # line 5
    path = _write(tmp_path / "esmm.txt", lines)
    src = read_ali_ccp_esmm(path)
    # fitting checks the training labels: the bad one stops it, before anything trains
    err = _raises(lambda: src.spec.fit(src.frame))
    assert (err.path, err.line, err.row, err.column) == (str(path), 5, 5, "click")
    assert "must be 0 or 1, not 'yes'" in str(err) and 'positive = ["yes"]' in str(err)
    fitted = src.spec.fit(src.frame.filter(pl.col("click") != "yes"))
    err = _raises(lambda: fitted.transform(src.frame))
    assert (err.path, err.line, err.row, err.column) == (str(path), 5, 5, "click")


def test_long_value_is_cut_and_error_pickles(tmp_path: Path) -> None:
    rows = _rows(6)
    rows[2] = "u1," + "x" * 500 + ",1"
    path = _write(tmp_path / "long.csv", [HEADER, *rows])
    err = _raises(lambda: SPEC.fit(read_table(path, SPEC).frame))
    assert "x" * 41 not in str(err) and "(500 characters)" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is DataError and str(again) == str(err)
    assert (again.path, again.row, again.column) == (str(path), 3, "price")


def test_rows_agree_with_polars_on_a_tricky_valid_prefix(tmp_path: Path) -> None:
    """Quoted separators, doubled quotes, a newline inside quotes, CRLF and a blank line
    (polars reads it as a row of nulls): the checker's data row and line for the first bad
    record are what polars and the file's text say."""
    good = (
        "user,price,click\r\n"
        'u1,"1.5",0\r\n'
        '"u,2",2.5,1\r\n'
        '"say ""hi""",3.5,0\r\n'
        '"two\nlines",4.5,1\r\n'
        "\r\n"
        "u6,6.5,0\r\n"
    )
    prefix = tmp_path / "prefix.csv"
    prefix.write_text(good, newline="")
    n_rows = pl.read_csv(prefix, infer_schema=False).height
    n_lines = good.count("\n")
    path = tmp_path / "tricky.csv"
    path.write_text(good + "u7,7.5,1,extra\r\n", newline="")
    err = _raises(lambda: SPEC.fit(read_table(path, SPEC).frame))
    assert (err.row, err.line) == (n_rows + 1, n_lines + 1) == (7, 9)


DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "formats").is_dir(), reason=f"no sample files at {DATA}")
def test_checker_finds_nothing_in_the_real_files() -> None:
    """No false alarm on the real formats: the checker (error path) passes every real file
    as it was scanned by its reader."""
    formats = DATA / "formats"
    files = {
        formats / "criteo_sample.txt": read_criteo,
        formats / "ali-ccp" / "aliccp_esmm_small.txt": read_ali_ccp_esmm,
        **{p: read_aliexpress for p in (formats / "aliexpress").glob("*.csv")},
        **{p: read_ali_ccp_csv for p in (formats / "ali-ccp").glob("*.csv")},
    }
    census = DATA / "census-income" / "census-income.test.gz"
    assert len(files) == 7
    for path, reader in files.items():
        reader(path)
        assert diagnose(str(path)) is None, path
    if census.is_file():
        census_income(census)
        assert diagnose(str(census)) is None
