"""The Criteo-shaped generated log and the rank-sharded Parquet loader (real Parquet files
written by the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mtlrec.data import DataError
from mtlrec.data.stream import (
    ShardedParquetLoader,
    criteo_cardinalities,
    criteo_log_spec,
    parquet_row_groups,
    write_criteo_log,
)

CARDS = criteo_cardinalities(largest=5000, smallest=3)


def _fitted(paths: list[Path]):
    # no vocabulary to learn: a sample fits the dense statistics
    return criteo_log_spec(CARDS, standardize=False).fit(pl.scan_parquet(paths[0]).head(200))


def test_log_shape_labels_and_determinism(tmp_path: Path) -> None:
    paths = write_criteo_log(
        tmp_path / "a", 20_000, files=3, row_group_size=3000, cardinalities=CARDS
    )
    assert [p.name for p in paths] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    df = pl.read_parquet(paths)
    assert df.height == 20_000
    assert df.columns == [
        *(f"C{i}" for i in range(1, 27)),
        *(f"I{j}" for j in range(1, 14)),
        "click",
        "conversion",
        "dwell",
    ]
    for i, card in enumerate(CARDS):
        ids = df[f"C{i + 1}"]
        assert ids.min() >= 0 and ids.max() < card, i  # type: ignore[operator]
    assert df["C26"].n_unique() > 1000  # a large table is used widely (Zipf tail)
    click, conv, dwell = df["click"], df["conversion"], df["dwell"]
    assert 0.17 < click.mean() < 0.23  # type: ignore[operator]
    assert (conv <= click).all()  # conversion only after a click
    assert 0.07 < conv.filter(click == 1).mean() < 0.13  # type: ignore[operator]
    assert (dwell.filter(click == 0) == 0).all() and (dwell.filter(click == 1) > 0).all()
    # files 1.. do not depend on how many rows came before: same seed, same frames
    again = write_criteo_log(
        tmp_path / "b", 20_000, files=3, row_group_size=3000, cardinalities=CARDS
    )
    assert pl.read_parquet(again).equals(df)
    other = write_criteo_log(
        tmp_path / "c", 20_000, files=3, row_group_size=3000, cardinalities=CARDS, seed=1
    )
    assert not pl.read_parquet(other).equals(df)
    # row groups as asked: 6667 + 6667 + 6666 rows in groups of 3000
    assert [g.rows for g in parquet_row_groups(paths)] == [3000, 3000, 667] * 2 + [3000, 3000, 666]


def test_labels_depend_on_the_features(tmp_path: Path) -> None:
    """A model can learn: a logistic regression on the dense counts alone predicts click and
    conversion on held-out rows well above chance (AUC 0.5)."""
    df = pl.read_parquet(write_criteo_log(tmp_path, 40_000, cardinalities=CARDS))
    x = np.log1p(df.select([f"I{j}" for j in range(1, 14)]).to_numpy())
    for task, floor in (("click", 0.65), ("conversion", 0.6)):
        y = df[task].to_numpy()
        model = LogisticRegression(max_iter=500).fit(x[:30_000], y[:30_000])
        auc = roc_auc_score(y[30_000:], model.predict_proba(x[30_000:])[:, 1])
        assert auc > floor, (task, auc)
    clicked = df.filter(pl.col("click") == 1)
    corr = np.corrcoef(np.log1p(clicked["I1"].to_numpy()), np.log(clicked["dwell"].to_numpy()))
    assert abs(corr[0, 1]) > 0.05  # dwell depends on the features too


def _layout(tmp_path: Path) -> list[Path]:
    # 3 files of 120 rows in row groups of 50: groups 50, 50, 20 per file (9 in all)
    return write_criteo_log(tmp_path, 360, files=3, row_group_size=50, cardinalities=CARDS)


def test_ranks_read_disjoint_row_groups_round_robin(tmp_path: Path) -> None:
    paths = _layout(tmp_path)
    fitted = _fitted(paths)
    whole = pl.read_parquet(paths)["dwell"].to_numpy()
    groups = [(0, 50), (50, 100), (100, 120)]  # per file, [start, end)
    flat = [(k * 120 + a, k * 120 + b) for k in range(3) for a, b in groups]
    # rank 0: groups 0, 2, 4, 6, 8 = 50 + 20 + 50 + 50 + 20 = 190 rows; rank 1: 1, 3, 5, 7 =
    # 50 + 50 + 20 + 50 = 170 rows -> both take 170 // 40 = 4 batches of 40
    expected_rows = {
        0: np.concatenate([np.arange(*flat[i]) for i in (0, 2, 4, 6, 8)]),
        1: np.concatenate([np.arange(*flat[i]) for i in (1, 3, 5, 7)]),
    }
    for rank in (0, 1):
        loader = ShardedParquetLoader(paths, fitted, 40, rank=rank, world=2)
        assert len(loader) == 4
        batches = list(loader)
        assert len(batches) == 4
        assert loader.skipped_rows == {0: 30, 1: 10}[rank]
        got = torch.cat([t["dwell"] for _, t in batches]).numpy()
        want = whole[expected_rows[rank][:160]].astype(np.float32)
        np.testing.assert_array_equal(got, want)
        inputs, _ = batches[0]
        assert inputs.dense.shape == (40, 13) and set(inputs.sparse) == {
            f"C{i}" for i in range(1, 27)
        }
        assert all(int(inputs.sparse[f"C{i + 1}"].max()) <= CARDS[i] for i in range(26))
    # one rank: everything, in file order
    solo = ShardedParquetLoader(paths, fitted, 60, rank=0, world=1)
    got = torch.cat([t["dwell"] for _, t in solo]).numpy()
    np.testing.assert_array_equal(got, whole.astype(np.float32))


def test_shuffle_keeps_the_rank_share(tmp_path: Path) -> None:
    paths = _layout(tmp_path)
    fitted = _fitted(paths)
    plain = ShardedParquetLoader(paths, fitted, 20, rank=1, world=2)
    torch.manual_seed(3)
    mixed = ShardedParquetLoader(paths, fitted, 20, rank=1, world=2, shuffle=True, shuffle_window=4)
    a = torch.cat([t["dwell"] for _, t in plain])
    b = torch.cat([t["dwell"] for _, t in mixed])
    assert len(a) == len(b) == 160
    assert not torch.equal(a, b)
    # within windows of 4 batches (80 rows) the same rows, in another order
    for lo in range(0, 160, 80):
        assert torch.equal(a[lo : lo + 80].sort().values, b[lo : lo + 80].sort().values)


def test_errors_name_file_row_group_and_column(tmp_path: Path) -> None:
    paths = _layout(tmp_path / "ok")
    fitted = _fitted(paths)
    # not Parquet
    bad = tmp_path / "bad.parquet"
    bad.write_text("C1,C2\n1,2\n")
    with pytest.raises(DataError, match=r"bad\.parquet: the file is not readable as Parquet"):
        ShardedParquetLoader([paths[0], bad], fitted, 10)
    # a column missing from one file
    df = pl.read_parquet(paths[1])
    short = tmp_path / "short.parquet"
    df.drop("I7").write_parquet(short)
    with pytest.raises(DataError, match=r"short\.parquet: column 'I7': the file has no column"):
        ShardedParquetLoader([paths[0], short], fitted, 10)
    # a column of another type than in the first file
    typed = tmp_path / "typed.parquet"
    df.with_columns(pl.col("C3").cast(pl.String)).write_parquet(typed)
    with pytest.raises(
        DataError,
        match=r"typed\.parquet: column 'C3': the column has type large_string here but int64",
    ):
        ShardedParquetLoader([paths[0], typed], fitted, 10)
    # a missing dense value in row group 1 of the second file: data row 76
    holed = tmp_path / "holed.parquet"
    df.with_columns(
        pl.when(pl.int_range(pl.len()) == 75).then(None).otherwise(pl.col("I3")).alias("I3")
    ).write_parquet(holed, row_group_size=50)
    loader = ShardedParquetLoader([paths[0], holed], fitted, 10, rank=0, world=2)  # groups 0, 2, 4
    with pytest.raises(DataError) as err:
        list(loader)
    msg = str(err.value)
    assert "holed.parquet" in msg and "data row 76" in msg and "column 'I3'" in msg, msg
    assert "(row group 1)" in msg, msg


def test_loader_argument_errors(tmp_path: Path) -> None:
    paths = _layout(tmp_path)
    fitted = _fitted(paths)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        ShardedParquetLoader(paths, fitted, 10, rank=2, world=2)
    with pytest.raises(ValueError, match="9 row group"):
        ShardedParquetLoader(paths, fitted, 10, rank=0, world=10)
    with pytest.raises(ValueError, match="less than one batch"):
        ShardedParquetLoader(paths, fitted, 500, rank=0, world=2)
    with pytest.raises(ValueError, match="no files"):
        parquet_row_groups([])
