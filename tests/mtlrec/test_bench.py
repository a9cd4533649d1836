"""mtlrec's benchmark builders end to end through mtlbench: a census-income smoke run on the
real file (one short epoch), with the embedding tables balanced approximately."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlbench.runner import build_problem, run_benchmark
from mtlbench.spec import parse_spec

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "census-income"


def _spec(**model: object) -> object:
    return parse_spec(
        {
            "name": "census-smoke",
            "problem": "mtlrec.bench:census_income_problem",
            "methods": ["dbmtl"],
            "data": {"path": str(DATA), "seed": 0},
            "model": {
                "arch": "mmoe",
                "embedding_dim": 2,
                "num_experts": 2,
                "expert": [8],
                "tower": [4],
                **model,
            },
            "train": {"epochs": 1, "batch_size": 1024, "eval_batch_size": 16384, "lr": 1e-2},
            "tasks": {"income": {"auc": "higher"}, "marital": {"auc": "higher"}},
        }
    )


@pytest.mark.skipif(not DATA.is_dir(), reason=f"census-income data not at {DATA}")
def test_census_income_smoke_run(tmp_path: Path) -> None:
    spec = _spec()
    problem = build_problem(spec)  # type: ignore[arg-type]
    assert problem.balance_tables == "approx"
    assert len(problem.train) + len(problem.val) + len(problem.test) == 99_762
    records = run_benchmark(
        spec,  # type: ignore[arg-type]
        methods=["dbmtl"],
        seeds=[0],
        stl=False,
        tracking_uri=None,
        spool_root=tmp_path / "spool",
        out_dir=tmp_path / "out",
        progress=False,
        echo=lambda _: None,
    )
    (run,) = records
    # one epoch of a tiny MMoE already ranks both tasks far above chance
    assert run.test["income"]["auc"] > 0.8
    assert run.test["marital"]["auc"] > 0.9


@pytest.mark.skipif(not DATA.is_dir(), reason=f"census-income data not at {DATA}")
def test_bad_model_option_fails_before_training() -> None:
    with pytest.raises((TypeError, ValueError), match="nope"):
        build_problem(_spec(nope=3))  # type: ignore[arg-type]
