"""Sharded tables trained through the Balancer's own data-parallel reduce stage (the way;
docs/distributed.md, "Sharded embeddings"): ``Balancer(tables=[model.table_frontier()],
process_group="world")`` on each rank's LOCAL mean losses — no DenseGradSync, no
global_mean_losses, any engine. 2 real processes (gloo, CPU) against unsharded one-process
training on the same global batch (the reference: torch's optimizers on the whole tables, no
TorchRec sharding, no split backward, no collectives)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlrec.models import torchrec_available

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _identical import assert_identical  # noqa: E402
from _sharded_common import compare, reference, run_two, start  # noqa: E402

pytestmark = pytest.mark.skipif(not torchrec_available(), reason="torchrec is not installed")

BASE = {"batch": 16, "steps": 4, "lr": 0.05, "path": "balancer", "optimizer": "exact_sgd"}
TABLE_WISE = {f: "table_wise" for f in ("user", "item", "tags", "city")}
# (method, extra config): EW, exact DB-MTL on the default (auto) engine, DB-MTL's fast mode,
# IMTL-G (a Gram weighting: its tables get its loss weights)
CASES = {
    "ew": ("ew", {"table_lr": 0.05}),
    "dbmtl": ("dbmtl", {"table_lr": 4.0, "engine": "auto"}),
    "dbmtl_fast": ("dbmtl", {"table_lr": 4.0, "engine": "auto", "mode": "fast"}),
    "imtl_g": ("imtl_g", {"table_lr": 4.0, "engine": "auto"}),
}


def _ranks(tmp_path: Path) -> list[dict[str, Any]]:
    """Each rank's dense and replicated parameters, balancer state and stats. The auto
    engine's timings are left out: each rank times itself (its choice does not change the
    averaged rows every rank then reads)."""
    out = [torch.load(f"{tmp_path / 'out.pt'}.rank{r}") for r in (0, 1)]
    for r in out:
        r["balancer"].pop("engine")
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_table_wise_through_the_balancer_equals_unsharded(case: str, tmp_path: Path) -> None:
    method, extra = CASES[case]
    config = {**BASE, "method": method, "sharding": TABLE_WISE, **extra}
    compare(run_two(config, tmp_path), reference(config), start(config))
    r0, r1 = _ranks(tmp_path)
    assert_identical(r0, r1, f"{case}: rank 0 vs rank 1")
    assert not any(s.get("skipped") for s in r0["stats"])


def test_column_wise_and_data_parallel_through_the_balancer(tmp_path: Path) -> None:
    """Replicated (data_parallel) tables get their gradient from the tables' one backward
    (a DDP inside TorchRec's lookup, its hook a sum): the sum of the ranks' 1/W-scaled
    shares is the global gradient; column_wise tables from the all-to-all, undivided."""
    sharding = {"user": "column_wise", "item": "data_parallel", "tags": "table_wise"}
    config = {
        **BASE,
        "method": "dbmtl",
        "engine": "auto",
        "table_lr": 4.0,
        "sharding": {**sharding, "city": "data_parallel"},
    }
    got = run_two(config, tmp_path)
    assert got["replicated"] >= 1
    compare(got, reference(config), start(config))
    r0, r1 = _ranks(tmp_path)
    assert_identical(r0, r1, "rank 0 vs rank 1")  # (the replicated tables included)


def test_one_ranks_non_finite_frontier_skips_the_step_on_both(tmp_path: Path) -> None:
    """Rank 1's frontier gradient is NaN on step 1 (rank 0's finite), under a loss scale:
    both ranks skip the step — no dense update, no table update (the fused optimizer never
    runs: skip_tables) — and neither hangs; the run equals unsharded training on the other
    batches (1 left out), the balancer state included (its step count)."""
    config = {
        **BASE,
        "method": "dbmtl",
        "engine": "auto",
        "table_lr": 4.0,
        "sharding": TABLE_WISE,
        "nan_at": [1, 1],
        "loss_scale": 1.0,
    }
    got = run_two(config, tmp_path)
    compare(got, reference({**config, "skip_batches": [1]}), start(config))
    r0, r1 = _ranks(tmp_path)
    for r in (r0, r1):
        assert [s.get("skipped", 0.0) for s in r["stats"]] == [0.0, 1.0, 0.0, 0.0]
        assert r["balancer"]["step"] == 3
    assert_identical(r0, r1, "rank 0 vs rank 1")
