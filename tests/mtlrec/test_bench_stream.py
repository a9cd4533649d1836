"""A table spec with ``stream = true``: the training Parquet files are streamed, each rank of
``mtlbench run --nproc 2`` reading its share of their row groups. With row groups of half a
global batch and no shuffling, rank 0 reads groups 0, 2, 4, … and rank 1 groups 1, 3, 5, …:
every global batch is the one-process run's, so the runs must train the same model (2 real
processes, gloo, CPU). Errors in the streaming options name the key."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from mtlrec.models import torchrec_available

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench_common import model_and_train, mtlbench_run, plain_state, sharded_state  # noqa: E402

BATCH = 128  # global; 64 a rank
GROUP = BATCH // 2
RUN = "streamed/dbmtl-seed0"


def _frame(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 40, n)
    item = rng.integers(0, 25, n)
    x = rng.normal(size=n)
    logit = 0.08 * (user % 7) - 0.1 * (item % 5) + x
    return pl.DataFrame(
        {
            "user": [f"u{u}" for u in user],
            "item": [f"i{i}" for i in item],
            "x": x,
            "note": ["-"] * n,
            "click": np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "y", "n"),
            "dwell": 30.0 + 10.0 * x + rng.normal(size=n),
        }
    )


SPEC = """
name = "streamed"
problem = "mtlrec.bench:table"
methods = ["dbmtl"]
seeds = 1

[data]
stream = true
train = "{train}"
val = "{val}"
test = "{test}"
shuffle = false

[data.columns]
user = "sparse"
item = "sparse"
x = "dense"
note = "ignore"
click = {{ task = "click", kind = "binary", positive = ["y"] }}
dwell = {{ task = "dwell", kind = "regression" }}

{model_and_train}
[tasks.click]
auc = "higher"

[tasks.dwell]
mae = "lower"
"""
SHARDING = '{ user = "table_wise", item = "column_wise" }'


def _data(folder: Path) -> dict[str, str]:
    """Training rows in two files of row groups of GROUP rows (12 groups: 6 global batches),
    and the evaluation files."""
    folder.mkdir(parents=True, exist_ok=True)
    train = _frame(12 * GROUP, 0)
    train[: 8 * GROUP].write_parquet(folder / "part-0.parquet", row_group_size=GROUP)
    train[8 * GROUP :].write_parquet(folder / "part-1.parquet", row_group_size=GROUP)
    _frame(300, 1).write_parquet(folder / "val.parquet")
    _frame(300, 2).write_parquet(folder / "test.parquet")
    return {
        "train": str(folder / "part-*.parquet"),
        "val": str(folder / "val.parquet"),
        "test": str(folder / "test.parquet"),
    }


def _spec(folder: Path, data: dict[str, str], tables: str, batch: int = BATCH) -> Path:
    path = folder / f"{tables}.toml"
    sections = model_and_train(tables, SHARDING, batch=batch, eval_batch=500)
    path.write_text(SPEC.format(**data, model_and_train=sections))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    data = _data(tmp_path_factory.mktemp("data"))
    dirs = {k: tmp_path_factory.mktemp(k) for k in ("one", "two", "sharded")}
    mtlbench_run(dirs["one"], _spec(dirs["one"], data, "approx"))
    mtlbench_run(dirs["two"], _spec(dirs["two"], data, "approx"), "--nproc", "2")
    if torchrec_available():
        mtlbench_run(dirs["sharded"], _spec(dirs["sharded"], data, "sharded"), "--nproc", "2")
    return dirs


def test_two_ranks_streaming_their_shares_train_what_one_process_trains(
    runs: dict[str, Path],
) -> None:
    want = plain_state(runs["one"] / "checkpoints" / RUN / "last.pt")
    got = plain_state(runs["two"] / "checkpoints" / RUN / "last.pt")
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.skipif(not torchrec_available(), reason="torchrec is not installed")
def test_streamed_data_with_sharded_tables(runs: dict[str, Path]) -> None:
    want = plain_state(runs["one"] / "checkpoints" / RUN / "last.pt")
    got = sharded_state(runs["sharded"] / "checkpoints" / RUN / "last")
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)


def test_the_streamed_run_read_every_training_row_once(runs: dict[str, Path]) -> None:
    """12 row groups of 64 rows, 128-row global batches: 6 steps an epoch, 2 epochs."""
    from mtltrain.checkpoint import load_file

    for name in ("one", "two"):
        assert load_file(runs[name] / "checkpoints" / RUN / "last.pt")["step"] == 12, name


def test_a_global_batch_must_divide_across_the_ranks(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    done = mtlbench_run(
        tmp_path, _spec(tmp_path, data, "approx", batch=127), "--nproc", "2", check=False
    )
    assert done.returncode != 0
    assert "batch_size = 127" in done.stderr and "multiple of 2" in done.stderr


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"train": "nothing-*.parquet"}, "names no file"),
        ({"shuffle": "no"}, "shuffle must be true or false"),
        ({"stream": False, "shuffle": False}, "shuffle is for stream = true"),
        ({"val": None}, "stream = true needs train"),
        ({"train": ["val.parquet", 3]}, "train must be a Parquet file, a glob or a list"),
    ],
)
def test_bad_streaming_options_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], match: str
) -> None:
    from mtlrec.table import parse_table_data

    data = _data(tmp_path)
    monkeypatch.chdir(tmp_path)
    raw: dict[str, Any] = {
        "stream": True,
        **data,
        "columns": {"user": "sparse", "click": {"task": "click", "kind": "binary"}},
    }
    raw.update(change)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        parse_table_data(raw)
