"""Readers on the real sample files in ../shared/data and on malformed copies of them."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from mtlrec.data import (
    ALI_CCP_ESMM_FIELDS,
    CENSUS_COLUMNS,
    DataError,
    DenseFeature,
    FeatureSpec,
    Label,
    SparseFeature,
    census_income,
    iter_batches,
    read_ali_ccp_csv,
    read_ali_ccp_esmm,
    read_aliexpress,
    read_criteo,
    read_table,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FORMATS = DATA / "formats"
needs_data = pytest.mark.skipif(
    not FORMATS.is_dir(), reason=f"real sample files not found at {FORMATS} (../shared/data)"
)


def _copy_lines(src: Path, dst: Path, edit: dict[int, str] | None = None) -> Path:
    lines = src.read_text().splitlines()
    for i, text in (edit or {}).items():
        lines[i] = text
    dst.write_text("\n".join(lines) + "\n")
    return dst


@needs_data
def test_aliexpress_sample() -> None:
    src = read_aliexpress(FORMATS / "aliexpress" / "aliexpress_train_sample.csv")
    assert len(src.spec.sparse) == 16 and len(src.spec.dense) == 63
    fitted = src.spec.fit(src.frame, source=src.path)
    test = read_aliexpress(FORMATS / "aliexpress" / "aliexpress_test_sample.csv")
    out = fitted.transform(test.frame, source=test.path)
    assert len(out) == 20 and out.inputs.dense.shape == (20, 63)
    assert set(out.labels) == {"click", "conversion"}
    assert (out.labels["conversion"] <= out.labels["click"]).all()
    raw = pl.read_csv(FORMATS / "aliexpress" / "aliexpress_test_sample.csv")
    assert out.labels["click"].tolist() == raw["click"].cast(pl.Float32).to_list()


@needs_data
def test_ali_ccp_csv_sample() -> None:
    src = read_ali_ccp_csv(FORMATS / "ali-ccp" / "ali_ccp_train_sample.csv")
    assert [d.name for d in src.spec.dense][:2] == ["D109_14", "D110_14"]
    assert "150_14" in [s.name for s in src.spec.sparse] and len(src.spec.sparse) == 23
    fitted = src.spec.fit(src.frame)
    val = read_ali_ccp_csv(FORMATS / "ali-ccp" / "ali_ccp_val_sample.csv")
    out = fitted.transform(val.frame)
    n = pl.read_csv(FORMATS / "ali-ccp" / "ali_ccp_val_sample.csv").height
    assert len(out) == n and out.inputs.dense.shape == (n, 8)
    assert all(int(v.max()) < fitted.cardinalities[k] for k, v in out.inputs.sparse.items())


@needs_data
def test_ali_ccp_esmm_sample() -> None:
    path = FORMATS / "ali-ccp" / "aliccp_esmm_small.txt"
    src = read_ali_ccp_esmm(path)
    fitted = src.spec.fit(src.frame)
    out = fitted.transform(src.frame)
    assert len(out) == 10 and set(out.inputs.multi_hot) == set(ALI_CCP_ESMM_FIELDS)
    first = path.read_text().splitlines()[0].split(",")
    n210 = sum(t.startswith("210:") for t in first[3:])
    assert out.inputs.multi_hot["210"].lengths[0].item() == n210 == 3
    assert out.inputs.multi_hot["150_14"].lengths[0].item() == 191
    assert out.labels["click"].tolist()[:3] == [1.0, 0.0, 1.0]
    assert out.labels["purchase"].tolist()[:3] == [1.0, 0.0, 0.0]


@needs_data
def test_ali_ccp_esmm_unknown_field(tmp_path: Path) -> None:
    src = FORMATS / "ali-ccp" / "aliccp_esmm_small.txt"
    line = src.read_text().splitlines()[1] + ",999:5"
    bad = _copy_lines(src, tmp_path / "bad.txt", {1: line})
    with pytest.raises(DataError, match=r"bad\.txt: line 2 .*not a 'field:id' pair.*'999:5'") as e:
        read_ali_ccp_esmm(bad)
    assert (e.value.path, e.value.line, e.value.row) == (str(bad), 2, 2)


@needs_data
def test_criteo_sample_and_headerless_tsv(tmp_path: Path) -> None:
    src = read_criteo(FORMATS / "criteo_sample.txt")
    fitted = src.spec.fit(src.frame)
    out = fitted.transform(src.frame)
    assert out.inputs.dense.shape == (200, 13) and len(out.inputs.sparse) == 26
    assert torch.isfinite(out.inputs.dense).all()
    # The same rows as Criteo's own layout: tab-separated, no header.
    df = pl.read_csv(FORMATS / "criteo_sample.txt", infer_schema=False)
    tsv = tmp_path / "train.txt"
    df.write_csv(tsv, separator="\t", include_header=False)
    again = read_criteo(tsv)
    out2 = again.spec.fit(again.frame).transform(again.frame)
    assert torch.equal(out.inputs.dense, out2.inputs.dense)
    assert all(torch.equal(out.inputs.sparse[k], out2.inputs.sparse[k]) for k in out.inputs.sparse)


@needs_data
def test_malformed_copies(tmp_path: Path) -> None:
    src = FORMATS / "aliexpress" / "aliexpress_test_sample.csv"
    header = src.read_text().splitlines()[0].split(",")
    k = header.index("numerical_5")
    row = src.read_text().splitlines()[4].split(",")
    row[k] = "n/a"
    bad = _copy_lines(src, tmp_path / "nonnum.csv", {4: ",".join(row)})
    r = read_aliexpress(bad)
    # Line 5 of the file (index 4) is data row 4 (header not counted).
    with pytest.raises(
        DataError, match=r"nonnum\.csv: data row 4 .*column 'numerical_5': not a number.*'n/a'"
    ):
        r.spec.fit(r.frame, source=r.path)
    # Non-binary label, found by the streamed batches with its row in the whole file.
    row = src.read_text().splitlines()[15].split(",")
    row[-2] = "3"
    bad = _copy_lines(src, tmp_path / "label.csv", {15: ",".join(row)})
    r = read_aliexpress(bad)
    fitted = r.spec.fit(r.frame.head(10))
    with pytest.raises(DataError, match=r"label\.csv: data row 15 .*column 'click'.*not '3'"):
        list(iter_batches(r.frame, fitted, 4, source=r.path))
    # Missing column.
    cut = pl.read_csv(src, infer_schema=False).drop("categorical_3")
    cut.write_csv(tmp_path / "missing.csv")
    with pytest.raises(DataError, match=r"missing\.csv: column 'categorical_3': no such column"):
        read_aliexpress(tmp_path / "missing.csv")
    # Empty file and header-only file.
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        read_criteo(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text(",".join(header) + "\n")
    r = read_aliexpress(tmp_path / "header.csv")
    with pytest.raises(DataError, match=r"header\.csv: no data rows"):
        r.spec.fit(r.frame, source=r.path)
    with pytest.raises(FileNotFoundError, match="AliExpress"):
        read_aliexpress(tmp_path / "nowhere.csv")


def test_read_table_csv_and_parquet_with_user_spec(tmp_path: Path) -> None:
    df = pl.DataFrame({"u": ["a", "b", "a"], "x": [1.0, 2.0, 3.0], "buy": [0, 1, 1]})
    spec = FeatureSpec(
        sparse=[SparseFeature("u")], dense=[DenseFeature("x")], labels=[Label("buy")]
    )
    df.write_csv(tmp_path / "t.csv")
    df.write_parquet(tmp_path / "t.parquet")
    a = read_table(tmp_path / "t.csv", spec)
    b = read_table(tmp_path / "t.parquet", spec)
    fa, fb = spec.fit(a.frame), spec.fit(b.frame)
    assert fa.vocabs == fb.vocabs and fa.stats == fb.stats
    assert torch.equal(fa.transform(a.frame).inputs.dense, fb.transform(b.frame).inputs.dense)
    with pytest.raises(DataError, match=r"t\.parquet: column 'z': no such column"):
        read_table(tmp_path / "t.parquet", FeatureSpec(dense=[DenseFeature("z")]))


@pytest.mark.skipif(
    not (DATA / "census-income" / "census-income.test.gz").is_file(),
    reason=f"census-income.test.gz not found under {DATA / 'census-income'}",
)
def test_census_income_real_file() -> None:
    splits = census_income(DATA)
    sizes = splits.info["split_rows"]
    assert splits.info["rows"] == 99_762 == sum(sizes)
    assert sizes[0] == pytest.approx(0.7 * 99_762, abs=1)
    names = (DATA / "census-income" / "census-income.names").read_text()
    assert "instance weight" in names and len(CENSUS_COLUMNS) == 42
    feats = [f.name for f in (*splits.spec.sparse, *splits.spec.dense)]
    assert len(feats) == 39
    assert not {"marital_stat", "income_50k", "instance_weight"} & set(feats)
    assert "det_hh_fam_stat" in feats
    fitted = splits.fit()
    test = fitted.transform(splits.test)
    rates = {t: float(y.mean()) for t, y in test.labels.items()}
    assert 0.04 < rates["income"] < 0.09 and 0.38 < rates["marital"] < 0.48
    assert test.inputs.dense.shape == (sizes[2], 7)
    assert abs(float(fitted.transform(splits.train).inputs.dense.mean())) < 1e-3
    # Same seed, same split; another seed, another split.
    again = census_income(DATA, seed=0)
    assert again.test.collect().equals(splits.test.collect())
    other = census_income(DATA, seed=1)
    assert not other.test.collect().equals(splits.test.collect())
