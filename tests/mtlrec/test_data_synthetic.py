"""Generators (MMoE synthetic, Criteo-shaped log) and streamed batches of larger files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from mtlrec.data import (
    FeatureSpec,
    LazyLoader,
    MultiHotFeature,
    RecBatch,
    iter_batches,
    mmoe_synthetic,
    mmoe_synthetic_spec,
    read_table,
    synthetic_log,
    synthetic_log_spec,
    write_frame,
)


def _corr(df: pl.DataFrame, a: str, b: str) -> float:
    return float(np.corrcoef(df[a].to_numpy(), df[b].to_numpy())[0, 1])


def test_mmoe_synthetic_correlation_knob() -> None:
    low = mmoe_synthetic(4000, 0.0, dim=20, seed=1)
    high = mmoe_synthetic(4000, 0.9, dim=20, seed=1)
    same = mmoe_synthetic(4000, 1.0, dim=20, seed=1, noise_std=0.0)
    assert low.shape == (4000, 22)
    assert abs(_corr(low, "y1", "y2")) < 0.15
    assert _corr(high, "y1", "y2") > _corr(low, "y1", "y2") + 0.5
    assert np.allclose(same["y1"].to_numpy(), same["y2"].to_numpy())
    # Seeded: same seed, same data.
    assert mmoe_synthetic(50, 0.5, seed=3).equals(mmoe_synthetic(50, 0.5, seed=3))
    fitted = mmoe_synthetic_spec(20, standardize=False).fit(low)
    out = fitted.transform(low)
    assert out.inputs.dense.shape == (4000, 20)
    assert torch.equal(out.labels["y1"], torch.tensor(low["y1"].to_numpy(), dtype=torch.float32))
    # by default the targets are standardised with the fitted frame's mean and std
    y1 = low["y1"].to_numpy()
    std = mmoe_synthetic_spec(20).fit(low).transform(low).labels["y1"].numpy()
    np.testing.assert_allclose(std, (y1 - y1.mean()) / y1.std(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="correlation"):
        mmoe_synthetic(10, 1.5)


def test_synthetic_log_objectives() -> None:
    df = synthetic_log(
        20_000, seed=0, num_sparse=4, num_dense=3, click_rate=0.2, conversion_rate=0.1
    )
    assert df.columns == ["C1", "C2", "C3", "C4", "I1", "I2", "I3", "click", "conversion", "dwell"]
    click = df["click"].to_numpy().astype(bool)
    conv = df["conversion"].to_numpy().astype(bool)
    dwell = df["dwell"].to_numpy()
    assert 0.17 < click.mean() < 0.23
    assert not (conv & ~click).any()  # conversion only after a click
    assert 0.07 < conv[click].mean() < 0.13
    assert (dwell[~click] == 0).all() and (dwell[click] > 0).all()
    assert 10 < np.median(dwell[click]) < 90
    # Zipf-like: the most frequent id of the widest feature is far above uniform.
    top = df["C4"].value_counts(sort=True)["count"][0] / df.height
    assert top > 50 / 100_000
    assert synthetic_log(100, seed=5).equals(synthetic_log(100, seed=5))


def test_synthetic_log_correlation_knob() -> None:
    def conv_dwell_corr(rho: float) -> float:
        df = synthetic_log(
            30_000, seed=2, num_sparse=4, num_dense=1, correlation=rho, conversion_rate=0.3
        ).filter(pl.col("click") == 1)
        return _corr(df, "conversion", "dwell")

    assert conv_dwell_corr(0.9) > conv_dwell_corr(0.0) + 0.1


def test_synthetic_log_loss_scales_differ() -> None:
    """In raw seconds (standardize=False) the dwell MSE dwarfs the click BCE; standardised
    (the default) it is the target's variance, 1."""
    df = synthetic_log(5000, seed=0, num_sparse=3, num_dense=2)
    out = synthetic_log_spec(3, 2, standardize=False).fit(df).transform(df)
    y = out.labels
    bce = torch.nn.functional.binary_cross_entropy(
        torch.full_like(y["click"], float(y["click"].mean())), y["click"]
    )
    mse = torch.mean((y["dwell"] - y["dwell"].mean()) ** 2)
    assert mse > 100 * bce
    dwell = synthetic_log_spec(3, 2).fit(df).transform(df).labels["dwell"]
    assert float(torch.mean((dwell - dwell.mean()) ** 2)) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_lazy_batches_equal_whole_file(tmp_path: Path, suffix: str) -> None:
    df = synthetic_log(2_345, seed=1, num_sparse=5, num_dense=3)
    df = df.with_columns(pl.concat_str([pl.col("C1"), pl.col("C2")], separator="|").alias("M"))
    path = write_frame(df, tmp_path / f"log{suffix}")
    base = synthetic_log_spec(5, 3, min_count=2, hash_buckets=7)
    spec = FeatureSpec(base.sparse, base.dense, [MultiHotFeature("M")], base.labels)
    src = read_table(path, spec)
    fitted = spec.fit(src.frame)  # fit streams too: only counts and statistics are held
    whole = fitted.transform(src.frame)
    parts = list(iter_batches(src.frame, fitted, 500, source=src.path))
    assert [len(p) for p in parts] == [500, 500, 500, 500, 345]
    joined = RecBatch.cat(parts)
    for k in whole.inputs.sparse:
        assert torch.equal(joined.inputs.sparse[k], whole.inputs.sparse[k])
    assert torch.equal(joined.inputs.dense, whole.inputs.dense)
    assert torch.equal(joined.inputs.multi_hot["M"].offsets, whole.inputs.multi_hot["M"].offsets)
    assert torch.equal(joined.inputs.multi_hot["M"].values, whole.inputs.multi_hot["M"].values)
    for t in whole.labels:
        assert torch.equal(joined.labels[t], whole.labels[t])
    assert len(list(iter_batches(src.frame, fitted, 500, drop_last=True))) == 4


def test_lazy_loader_shuffles_within_window_and_replays(tmp_path: Path) -> None:
    df = synthetic_log(1_000, seed=3, num_sparse=2, num_dense=1)
    path = write_frame(df, tmp_path / "log.csv")
    spec = synthetic_log_spec(2, 1)
    src = read_table(path, spec)
    fitted = spec.fit(src.frame)
    loader = LazyLoader(src.frame, fitted, 64, shuffle=True, shuffle_window=4)
    torch.manual_seed(0)
    a = torch.cat([t["dwell"] for _, t in loader])
    torch.manual_seed(0)
    b = torch.cat([t["dwell"] for _, t in loader])
    assert torch.equal(a, b)
    whole = fitted.transform(src.frame).labels["dwell"]
    assert not torch.equal(a, whole)
    assert torch.equal(a.sort().values, whole.sort().values)
