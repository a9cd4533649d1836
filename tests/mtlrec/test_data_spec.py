"""Feature spec: fit on train, transform, save/load, errors; tensor containers; RecLoader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlrec.data import (
    NULL_TOKEN,
    DataError,
    DenseFeature,
    FeatureSpec,
    FittedFeatures,
    Jagged,
    Label,
    MultiHotFeature,
    RecBatch,
    RecLoader,
    SparseFeature,
)


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "cat": ["a", "b", "a", None, "c", "a"],
            "tags": ["x|y", "", "y|z|z", None, "w", "x"],
            "num": [1.0, 2.0, None, 4.0, 5.0, 6.0],
            "y": [0, 1, 1, 0, 1, 0],
            "t": [1.5, 2.0, 3.0, 4.0, 5.0, 0.5],
        }
    )


def _spec(**kw: object) -> FeatureSpec:
    return FeatureSpec(
        sparse=[SparseFeature("cat", **kw)],  # type: ignore[arg-type]
        multi_hot=[MultiHotFeature("tags")],
        dense=[DenseFeature("num", nulls="mean")],
        # raw targets: these tests follow the rows' values through transforms and loaders
        labels=[
            Label("ctr", column="y"),
            Label("time", "regression", column="t", standardize=False),
        ],
    )


def test_vocab_ids_by_frequency_and_oov_zero() -> None:
    fitted = _spec().fit(_frame())
    # 'a' occurs 3 times -> id 1; ties broken by value; null is a category of its own.
    assert fitted.vocabs["cat"] == ["a", NULL_TOKEN, "b", "c"]
    assert fitted.cardinalities == {"cat": 5, "tags": 5}
    out = fitted.transform(
        pl.DataFrame(
            {
                "cat": ["a", "zzz", None],
                "tags": ["q|x", "", "z"],
                "num": [1.0, 2.0, 3.0],
                "y": [0, 1, 0],
                "t": [0.0, 0.0, 0.0],
            }
        )
    )
    assert out.inputs.sparse["cat"].tolist() == [1, 0, 2]
    bag = out.inputs.multi_hot["tags"]
    assert bag.offsets.tolist() == [0, 2, 2, 3]
    assert bag.values[0].item() == 0  # unseen tag keeps its place as id 0
    assert out.inputs.sparse["cat"].dtype == torch.int64


def test_min_count_and_hash_buckets() -> None:
    spec = FeatureSpec(sparse=[SparseFeature("cat", min_count=2, oov="hash", hash_buckets=4)])
    fitted = spec.fit(_frame())
    assert fitted.vocabs["cat"] == ["a"]
    assert fitted.cardinalities["cat"] == 1 + 1 + 4
    ids = fitted.transform(pl.DataFrame({"cat": ["a", "b", "b", "new"]}), labels=False)
    got = ids.inputs.sparse["cat"].tolist()
    assert got[0] == 1 and got[1] == got[2]
    assert all(2 <= i < 6 for i in got[1:])
    # Hash ids do not depend on the process (crc32), so a reloaded spec agrees.
    again = FittedFeatures.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert (
        again.transform(pl.DataFrame({"cat": ["b", "new"]}), labels=False)
        .inputs.sparse["cat"]
        .tolist()
        == got[2:]
    )


def test_dense_standard_minmax_nulls() -> None:
    df = _frame()
    fitted = _spec().fit(df.lazy())
    x = fitted.transform(df).inputs.dense[:, 0].double()
    vals = np.array([1.0, 2.0, 4.0, 5.0, 6.0])
    mean, std = vals.mean(), vals.std()
    assert x[2].item() == pytest.approx(0.0, abs=1e-6)  # the null filled with the train mean
    assert x[0].item() == pytest.approx((1 - mean) / std, rel=1e-5)
    mm = FeatureSpec(dense=[DenseFeature("num", norm="minmax", nulls="zero")]).fit(df)
    got = mm.transform(df, labels=False).inputs.dense[:, 0]
    assert got.tolist() == pytest.approx([0.0, 0.2, -0.2, 0.6, 0.8, 1.0], abs=1e-6)


def test_fit_uses_train_only() -> None:
    train = pl.DataFrame({"cat": ["a", "a"], "num": [0.0, 2.0]})
    test = pl.DataFrame({"cat": ["b", "a"], "num": [10.0, 1.0]})
    f = FeatureSpec(sparse=[SparseFeature("cat")], dense=[DenseFeature("num")]).fit(train)
    out = f.transform(test, labels=False)
    assert out.inputs.sparse["cat"].tolist() == [0, 1]
    assert out.inputs.dense[:, 0].tolist() == pytest.approx([9.0, 0.0])


def test_spec_naming_a_column_twice() -> None:
    with pytest.raises(ValueError, match="'a' twice"):
        FeatureSpec(sparse=[SparseFeature("a")], dense=[DenseFeature("a")])
    with pytest.raises(ValueError, match="'y' twice"):
        FeatureSpec(sparse=[SparseFeature("y")], labels=[Label("ctr", column="y")])
    with pytest.raises(ValueError, match="hash_buckets"):
        SparseFeature("a", oov="hash")


def test_errors_name_column_and_row() -> None:
    fitted = _spec().fit(_frame())
    bad = _frame().with_columns(pl.Series("y", [0, 1, 2, 0, 1, 0]))
    # Index 2 of the frame: data row 3 (1-based), 13 after 10 rows of the file.
    with pytest.raises(
        DataError, match=r"f\.csv: data row 3 .*column 'y' \(task 'ctr'\): .* 0 or 1, not '2'"
    ):
        fitted.transform(bad, source="f.csv")
    with pytest.raises(DataError, match="data row 13"):
        fitted.transform(bad, source="f.csv", row_offset=10)
    text = _frame().with_columns(pl.Series("num", ["1", "2", "3", "oops", "5", None]))
    with pytest.raises(
        DataError, match=r"^row 4 of the frame \(1-based\), column 'num': not a number.*'oops'"
    ):
        fitted.transform(text)
    with pytest.raises(DataError, match=r"g\.csv: column 'tags': no such column"):
        fitted.transform(_frame().drop("tags"), source="g.csv")
    strict = FeatureSpec(dense=[DenseFeature("num")])
    with pytest.raises(DataError, match=r"row 3 of the frame .* a missing value"):
        strict.fit(_frame())
    with pytest.raises(DataError, match=r"empty\.csv: no data rows"):
        _spec().fit(_frame().head(0), source="empty.csv")


def test_transform_without_labels_at_serving_time(tmp_path: Path) -> None:
    fitted = _spec().fit(_frame())
    fitted.save(tmp_path / "features.json")
    served = FittedFeatures.load(tmp_path / "features.json").transform(
        _frame().drop("y", "t"), labels=False
    )
    assert served.labels == {}
    assert torch.equal(served.inputs.dense, fitted.transform(_frame()).inputs.dense)


_values = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "é", "1", "<x>"]))


@settings(max_examples=25, deadline=None)
@given(
    cats=st.lists(_values, min_size=1, max_size=30),
    nums=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=30, max_size=30),
    tags=st.lists(st.lists(st.sampled_from(["p", "q", "r"]), max_size=4), min_size=30, max_size=30),
    min_count=st.integers(1, 3),
    norm=st.sampled_from(["standard", "minmax", "none"]),
)
def test_fit_transform_save_load_roundtrip(
    tmp_path_factory: pytest.TempPathFactory,
    cats: list[str | None],
    nums: list[float],
    tags: list[list[str]],
    min_count: int,
    norm: str,
) -> None:
    n = len(cats)
    df = pl.DataFrame(
        {
            "c": cats,
            "d": nums[:n],
            "m": ["|".join(t) for t in tags[:n]],
            "y": [i % 2 for i in range(n)],
        },
        schema={"c": pl.String, "d": pl.Float64, "m": pl.String, "y": pl.Int64},
    )
    spec = FeatureSpec(
        sparse=[SparseFeature("c", min_count=min_count)],
        dense=[DenseFeature("d", norm=norm)],  # type: ignore[arg-type]
        multi_hot=[MultiHotFeature("m")],
        labels=[Label("y")],
    )
    fitted = spec.fit(df)
    out = fitted.transform(df)
    # Ids are in range and every kept value maps to its vocabulary position.
    ids = out.inputs.sparse["c"]
    assert int(ids.min()) >= 0 and int(ids.max()) < fitted.cardinalities["c"]
    counts = {v: cats.count(v) for v in set(cats)}
    for v, i in zip(cats, ids.tolist(), strict=True):
        key = NULL_TOKEN if v is None else v
        assert (i > 0) == (counts[v] >= min_count)
        if i:
            assert fitted.vocabs["c"][i - 1] == key
    assert out.inputs.multi_hot["m"].lengths.tolist() == [len(t) for t in tags[:n]]
    assert torch.isfinite(out.inputs.dense).all()
    path = tmp_path_factory.mktemp("spec") / "f.json"
    fitted.save(path)
    again = FittedFeatures.load(path).transform(df)
    assert torch.equal(again.inputs.sparse["c"], ids)
    assert torch.equal(again.inputs.dense, out.inputs.dense)
    assert torch.equal(again.inputs.multi_hot["m"].values, out.inputs.multi_hot["m"].values)
    assert torch.equal(again.labels["y"], out.labels["y"])


def test_jagged_index_and_cat() -> None:
    j = Jagged(torch.tensor([0, 2, 2, 5]), torch.tensor([1, 2, 3, 4, 5]))
    sub = j.index(torch.tensor([2, 0, 1]))
    assert sub.offsets.tolist() == [0, 3, 5, 5]
    assert sub.values.tolist() == [3, 4, 5, 1, 2]
    both = Jagged.cat([j, sub])
    assert both.offsets.tolist() == [0, 2, 2, 5, 8, 10, 10]
    assert len(both) == 6


def _batch() -> RecBatch:
    df = pl.DataFrame(
        {
            "cat": [str(i % 7) for i in range(23)],
            "tags": ["a|b"] * 23,
            "num": [float(i) for i in range(23)],
            "y": [i % 2 for i in range(23)],
            "t": [float(i) for i in range(23)],
        }
    )
    return _spec().fit(df).transform(df)


def test_recloader_covers_rows_and_replays_shuffle() -> None:
    data = _batch()
    loader = RecLoader(data, 5, shuffle=True)
    assert len(loader) == 5
    torch.manual_seed(3)
    first = [t["time"] for _, t in loader]
    torch.manual_seed(3)
    again = [t["time"] for _, t in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert sorted(torch.cat(first).tolist()) == sorted(data.labels["time"].tolist())
    inputs, targets = next(iter(RecLoader(data, 4)))
    # Rows stay aligned: the dense 'num' column was built from the same values as 'time'.
    assert inputs.to("cpu").dense.shape == (4, 1)
    assert inputs.multi_hot["tags"].offsets.tolist() == [0, 2, 4, 6, 8]
    assert targets["time"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert len(RecLoader(data, 5, drop_last=True)) == 4
    with pytest.raises(ValueError, match="batch_size"):
        RecLoader(data, 0)
