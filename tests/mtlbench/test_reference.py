"""The one rule for which runs count and what Δp is measured against (mtlbench.reference),
checked directly on hand-made run records: expected values worked out by hand."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest

from mtlbench.reference import covers, stl_reference, usable_runs
from mtlbench.runs import RunRecord
from mtlbench.spec import Spec, parse_spec

from .conftest import TINY

TASKS = {"click": "auc", "rating": "mae", "price": "mae"}


def _spec(paper_stl: dict[str, float] | None = None) -> Spec:
    raw: dict[str, Any] = tomllib.loads(TINY)
    if paper_stl is not None:
        raw["paper"]["results"] = {"stl": {t: {TASKS[t]: v} for t, v in paper_stl.items()}}
    return parse_spec(raw)


def _run(
    method: str, seed: int, start: int, values: dict[str, float], *, task: str | None = None,
    status: str = "FINISHED", val: dict[str, float] | None = None, run_id: str | None = None,
) -> RunRecord:  # fmt: skip
    return RunRecord(
        run_id=run_id or f"{method}-{seed}-{task}-{start}",
        method=method,
        seed=seed,
        stl_task=task,
        test={t: {TASKS[t]: v} for t, v in values.items()},
        val={t: {TASKS[t]: v} for t, v in (val or {}).items()},
        start_time=start,
        source="spool",
        status=status,
    )


def _stl(task: str, seed: int, start: int, value: float, **kw: Any) -> RunRecord:
    return _run("stl", seed, start, {task: value}, task=task, **kw)


FULL = {"click": 0.8, "rating": 0.5, "price": 40.0}


def test_usable_runs_counts_what_it_leaves_out_and_keeps_the_newest() -> None:
    spec = _spec()
    old = _run("ew", 0, 100, FULL, run_id="old")
    new = _run("ew", 0, 200, {**FULL, "click": 0.9}, run_id="new")
    other_seed = _run("ew", 1, 150, FULL, run_id="seed1")
    failed = _run("dbmtl", 0, 300, FULL, status="FAILED")
    killed = _run("dbmtl", 1, 310, FULL, status="KILLED")
    nan = _run("dbmtl", 2, 320, {**FULL, "price": math.nan}, run_id="nan")
    partial = _run("dbmtl", 3, 330, {"click": 0.7}, run_id="partial")
    out = usable_runs(spec, [new, failed, old, nan, other_seed, killed, partial])
    assert [r.run_id for r in out.kept] == ["seed1", "new"]  # oldest first
    assert out.not_finished == 2 and out.superseded == 1
    notes = "\n".join(out.notes)
    assert "2 run(s) not FINISHED (FAILED, KILLED)" in notes
    assert "run nan (dbmtl, seed 2) left out: no finite final.test.price.mae" in notes
    assert "run partial (dbmtl, seed 3) left out: no finite" in notes
    assert "final.test.rating.mae" in notes and "1 older run(s)" in notes


def test_usable_runs_without_problems_has_no_notes() -> None:
    runs = [_run("ew", s, 10 * s, FULL) for s in range(3)]
    out = usable_runs(_spec(), runs)
    assert out.kept == runs and out.notes == [] and (out.not_finished, out.superseded) == (0, 0)


def test_stl_runs_need_their_task_tag_and_a_task_of_the_spec() -> None:
    spec = _spec()
    untagged = _run("stl", 0, 1, {"click": 0.8}, run_id="untagged")
    foreign = _run("stl", 0, 2, {"click": 0.8}, task="dwell", run_id="foreign")
    fine = _stl("click", 0, 3, 0.8)
    out = usable_runs(spec, [untagged, foreign, fine])
    assert out.kept == [fine]
    notes = "\n".join(out.notes)
    assert "untagged" in notes and "without a" in notes
    assert "foreign" in notes and "'dwell' is not a task of the spec" in notes


def test_two_stl_runs_of_one_task_and_seed_the_newer_counts() -> None:
    out = usable_runs(_spec(), [_stl("click", 0, 5, 0.7), _stl("click", 0, 9, 0.9)])
    assert [r.test["click"]["auc"] for r in out.kept] == [0.9] and out.superseded == 1


def test_reference_is_the_mean_of_our_stl_seeds_per_task() -> None:
    runs = [
        _stl("click", 0, 1, 0.70, val={"click": 0.6}),
        _stl("click", 1, 2, 0.80, val={"click": 0.7}),
        _stl("rating", 0, 3, 0.50, val={"rating": 0.4}),
        _stl("rating", 1, 4, 0.70, val={"rating": 0.6}),
        _stl("price", 0, 5, 40.0, val={"price": 30.0}),
        _stl("price", 1, 6, 44.0, val={"price": 34.0}),
        _run("ew", 0, 7, FULL),  # not an STL run: no part in the reference
    ]
    ref = stl_reference(_spec(), runs)
    assert ref.kind == "ours" and ref.label == "our STL runs (2 seeds)"
    assert ref.test == {
        "click": {"auc": pytest.approx(0.75)},
        "rating": {"mae": pytest.approx(0.60)},
        "price": {"mae": pytest.approx(42.0)},
    }
    assert ref.val == {
        "click": {"auc": pytest.approx(0.65)},
        "rating": {"mae": pytest.approx(0.50)},
        "price": {"mae": pytest.approx(32.0)},
    }
    assert {t: len(rs) for t, rs in ref.stl_runs.items()} == {"click": 2, "rating": 2, "price": 2}
    assert ref.notes == ()


def test_unequal_seed_counts_are_named_and_val_needs_every_run() -> None:
    runs = [
        _stl("click", 0, 1, 0.7, val={"click": 0.6}),
        _stl("click", 1, 2, 0.9),  # no validation metric
        _stl("rating", 0, 3, 0.5, val={"rating": 0.4}),
        _stl("price", 0, 4, 40.0, val={"price": 30.0}),
    ]
    ref = stl_reference(_spec(), runs)
    assert ref.kind == "ours" and ref.label == "our STL runs (1–2 seeds per task)"
    assert ref.test is not None and ref.test["click"]["auc"] == pytest.approx(0.8)
    assert ref.val is None  # one STL run without validation metrics: no val reference


def test_one_seed_is_singular() -> None:
    runs = [_stl(t, 0, i, v) for i, (t, v) in enumerate(FULL.items())]
    assert stl_reference(_spec(), runs).label == "our STL runs (1 seed)"


def test_missing_stl_task_falls_back_to_the_published_row() -> None:
    paper = {"click": 0.81, "rating": 0.52, "price": 41.0}
    runs = [_stl("click", 0, 1, 0.7), _stl("rating", 0, 2, 0.5)]  # no price
    ref = stl_reference(_spec(paper), runs)
    assert ref.kind == "paper" and ref.label.startswith("published STL row, made-up numbers")
    assert ref.test == {t: {TASKS[t]: v} for t, v in paper.items()} and ref.val is None
    assert ref.notes == (
        "Our STL runs lack task(s) price, so the published STL row is the Δp reference.",
    )
    assert set(ref.stl_runs) == {"click", "rating"}
    # without any STL run of ours: the published row, and nothing to explain
    quiet = stl_reference(_spec(paper), [])
    assert quiet.kind == "paper" and quiet.notes == ()


def test_no_reference_says_why_and_what_to_run() -> None:
    ref = stl_reference(_spec(), [_stl("click", 0, 1, 0.7)])
    assert (ref.kind, ref.test, ref.val) == (None, None, None)
    assert ref.label == "none (no Δp)"
    (note,) = ref.notes
    assert "no STL run for task(s) rating, price" in note
    assert "the spec's [paper] table has no complete STL row" in note
    assert "mtlbench run tiny --stl" in note
    partial_paper = stl_reference(_spec({"click": 0.8, "rating": 0.5}), [])
    assert partial_paper.kind is None  # a published row without price does not cover the spec
    raw = tomllib.loads(TINY)
    del raw["paper"]
    (note,) = stl_reference(parse_spec(raw), []).notes
    assert "the spec has no [paper] table with an STL row" in note


def test_covers() -> None:
    directions = {"a": {"x": True, "y": False}, "b": {"z": True}}
    assert covers({"a": {"x": 1.0, "y": 2.0}, "b": {"z": 3.0}}, directions)
    assert not covers({"a": {"x": 1.0}, "b": {"z": 3.0}}, directions)
    assert not covers({"a": {"x": 1.0, "y": 2.0}}, directions)
    assert not covers(None, directions)
