"""`mtlbench report`: Δp tables from runs read back from the spool and a real MLflow store."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from mtlbench.report import (
    NoRunsError,
    Report,
    RunRecord,
    build_report,
    collect_runs,
    render_markdown,
    render_png,
    summary_lines,
    write_report,
)
from mtlbench.spec import Spec, parse_spec
from mtltrain import Tracker, delta_p

# Table 2 of Lin et al. (Cityscapes): segmentation mIoU↑ pixAcc↑, depth AbsErr↓ RelErr↓.
PAPER_STL = {"segmentation": {"mIoU": 69.06, "pixAcc": 91.54},
             "depth": {"AbsErr": 0.01282, "RelErr": 43.53}}  # fmt: skip
PAPER_EW = {"segmentation": {"mIoU": 68.93, "pixAcc": 91.58},
            "depth": {"AbsErr": 0.01315, "RelErr": 45.90}}  # fmt: skip
DIRECTIONS = {"segmentation": {"mIoU": True, "pixAcc": True},
              "depth": {"AbsErr": False, "RelErr": False}}  # fmt: skip


def make_spec(*, paper: bool = True, stl_row: bool = True, **extra: Any) -> Spec:
    raw: dict[str, Any] = {
        "name": "cityscapes",
        "problem": "mtlbench.problems.cityscapes:build",
        "train": {"epochs": 2, "batch_size": 8},
        "tasks": {
            "segmentation": {"mIoU": "higher", "pixAcc": "higher"},
            "depth": {"AbsErr": "lower", "RelErr": "lower"},
        },
        "methods": ["ew", "dbmtl"],
        "seeds": 2,
        **extra,
    }
    if paper:
        results = {"ew": PAPER_EW, **({"stl": PAPER_STL} if stl_row else {})}
        raw["paper"] = {
            "source": "Table 2 of Lin et al.",
            "results": results,
            "delta_p": {"ew": -2.05, "dbmtl": 0.20},
        }
    return parse_spec(raw)


def scaled(table: dict[str, dict[str, float]], factor: float) -> dict[str, dict[str, float]]:
    return {t: {m: v * factor for m, v in ms.items()} for t, ms in table.items()}


def record(
    method: str,
    seed: int,
    test: dict[str, dict[str, float]],
    *,
    stl_task: str | None = None,
    start: int = 1_000,
    status: str = "FINISHED",
    run_id: str | None = None,
) -> RunRecord:
    if stl_task is not None:
        test = {stl_task: test[stl_task]}
    return RunRecord(
        run_id=run_id or f"{method}-{stl_task}-{seed}-{start}",
        method=method,
        seed=seed,
        stl_task=stl_task,
        test=test,
        val=test,
        start_time=start,
        source="spool",
        status=status,
        selection="stl",
    )


# ------------------------------------------------------------------------------------- build
def test_delta_p_against_the_published_stl_row() -> None:
    spec = make_spec()
    report = build_report(spec, [record("ew", 0, PAPER_EW)])

    assert report.reference_kind == "paper"
    assert report.reference == PAPER_STL
    assert report.reference_label.startswith("published STL row")
    assert "Table 2 of Lin et al." in report.reference_label
    ew = report.ours["ew"]
    assert ew.delta_p is not None
    assert ew.delta_p.mean == pytest.approx(-2.04, abs=0.005)
    assert ew.delta_p.n == 1 and ew.delta_p.std == 0.0
    # Per-task Δp: segmentation about 0, depth carries the loss; Δp is their mean.
    per_task = {t: s.mean for t, s in ew.delta_p_per_task.items()}
    assert per_task["depth"] < -3.5 < per_task["segmentation"]
    assert statistics.fmean(per_task.values()) == pytest.approx(ew.delta_p.mean)
    # The paper's rows: published Δp as given, and recomputed from its metrics.
    assert report.paper["ew"].delta_p == -2.05
    assert report.paper["ew"].delta_p_recomputed == pytest.approx(ew.delta_p.mean)
    assert report.paper["dbmtl"].metrics == {}
    assert report.paper["dbmtl"].delta_p_recomputed is None
    md = render_markdown(report)
    assert "Δp reference: published STL row, Table 2 of Lin et al." in md


def test_our_stl_runs_are_the_reference_with_seeds_duplicates_and_failures() -> None:
    spec = make_spec()
    stl = {0: scaled(PAPER_STL, 1.03), 1: scaled(PAPER_STL, 0.99)}  # mean: 1.01 x the paper
    ew = {0: scaled(PAPER_EW, 1.01), 1: scaled(PAPER_EW, 0.97)}
    runs = [record("stl", s, stl[s], stl_task=t, start=100 + s) for s in (0, 1) for t in PAPER_STL]
    runs += [record("ew", s, ew[s], start=200 + s) for s in (0, 1)]
    # An older ew seed-0 run (superseded), newer ones that did not finish (ignored).
    runs.append(record("ew", 0, scaled(PAPER_EW, 0.5), start=50))
    runs.append(record("ew", 0, scaled(PAPER_EW, 0.1), start=900, status="FAILED"))
    runs.append(record("stl", 1, scaled(PAPER_STL, 3.0), stl_task="depth", start=901,
                       status="RUNNING"))  # fmt: skip

    report = build_report(spec, runs)

    assert report.reference_kind == "ours"
    assert report.reference_label == "our STL runs (2 seeds)"
    expected_ref = {
        t: {m: (stl[0][t][m] + stl[1][t][m]) / 2 for m in ms} for t, ms in DIRECTIONS.items()
    }
    assert report.reference is not None
    for t, ms in DIRECTIONS.items():
        for m in ms:
            assert report.reference[t][m] == pytest.approx(expected_ref[t][m])
            assert report.reference[t][m] == pytest.approx(1.01 * PAPER_STL[t][m])
    assert report.superseded == 1
    assert report.not_finished == 2
    assert report.n_runs == 6

    row = report.ours["ew"]
    assert row.seeds == (0, 1)
    per_seed = [delta_p(ew[s], expected_ref, DIRECTIONS) for s in (0, 1)]
    assert [row.delta_p_per_seed[s] for s in (0, 1)] == pytest.approx(per_seed)
    assert row.delta_p is not None
    assert row.delta_p.mean == pytest.approx(statistics.fmean(per_seed))
    assert row.delta_p.std == pytest.approx(statistics.stdev(per_seed))
    assert row.delta_p.mean != pytest.approx(delta_p(PAPER_EW, PAPER_STL, DIRECTIONS), abs=0.01)
    miou = row.metrics["segmentation"]["mIoU"]
    mious = [ew[s]["segmentation"]["mIoU"] for s in (0, 1)]
    assert miou.mean == pytest.approx(statistics.fmean(mious))
    assert miou.std == pytest.approx(statistics.stdev(mious))
    # Our STL row against our own reference: 0 on average, seed spread as its std.
    assert report.ours["stl"].delta_p is not None
    assert report.ours["stl"].delta_p.mean == pytest.approx(0.0, abs=1e-9)
    assert report.ours["stl"].delta_p.std > 0

    notes = " ".join(report.notes)
    assert "superseded" in notes and "not FINISHED" in notes
    assert "dbmtl: no finished run" in notes


def test_partial_stl_runs_fall_back_to_the_published_row() -> None:
    spec = make_spec()
    runs = [record("stl", 0, PAPER_STL, stl_task="segmentation"), record("ew", 0, PAPER_EW)]
    report = build_report(spec, runs)
    assert report.reference_kind == "paper"
    assert report.ours["ew"].delta_p is not None
    assert report.ours["ew"].delta_p.mean == pytest.approx(-2.04, abs=0.005)
    assert set(report.ours["stl"].metrics) == {"segmentation"}
    assert any("lack task(s) depth" in n for n in report.notes)


def test_without_any_stl_reference_there_is_no_delta_p() -> None:
    spec = make_spec(paper=False)
    report = build_report(spec, [record("ew", 0, PAPER_EW), record("dbmtl", 0, PAPER_EW)])
    assert report.reference_kind is None and report.reference is None
    assert all(r.delta_p is None for r in report.ours.values())
    assert any(n.startswith("No Δp") for n in report.notes)
    md = render_markdown(report)
    assert "Δp reference: none (no Δp)" in md
    ew_line = next(line for line in md.splitlines() if line.startswith("| ew |"))
    assert ew_line.rstrip(" |").endswith("—")

    # A published table without a complete STL row gives no reference either.
    report = build_report(make_spec(stl_row=False), [record("ew", 0, PAPER_EW)])
    assert report.reference_kind is None
    assert report.paper["ew"].delta_p_recomputed is None


def test_incomplete_and_malformed_runs_are_left_out_with_a_note() -> None:
    spec = make_spec()
    partial = {"segmentation": PAPER_EW["segmentation"], "depth": {"AbsErr": 0.013}}
    runs = [
        record("ew", 0, PAPER_EW),
        record("ew", 1, partial, run_id="partial"),
        RunRecord("bad-task", "stl", 0, "normals", {"normals": {"mErr": 1.0}}, {}, 5, "spool"),
        RunRecord("no-task", "stl", 0, None, PAPER_STL, {}, 5, "spool"),
    ]
    report = build_report(spec, runs)
    assert report.ours["ew"].seeds == (0,)
    assert "stl" not in report.ours
    notes = "\n".join(report.notes)
    assert "run partial (ew, seed 1) left out: no finite final.test.depth.RelErr" in notes
    assert "'normals' is not a task of the spec" in notes
    assert "without a mtlbench.stl_task tag" in notes


def test_methods_in_stable_order() -> None:
    spec = make_spec(methods=["log+pcgrad", "ew", "dbmtl"])
    runs = [record(m, 0, PAPER_EW) for m in ("zeta", "dbmtl", "alpha", "ew", "log+pcgrad")]
    runs += [record("stl", 0, PAPER_STL, stl_task=t) for t in PAPER_STL]
    report = build_report(spec, runs)
    assert report.methods == ["stl", "log+pcgrad", "ew", "dbmtl", "alpha", "zeta"]


# ------------------------------------------------------------------------------------ render
@pytest.fixture
def full_report() -> Report:
    spec = make_spec(methods=["ew", "dbmtl", "log+pcgrad"])
    runs = [record("ew", s, scaled(PAPER_EW, 1 + 0.01 * s)) for s in (0, 1)]
    runs += [record("dbmtl", 0, scaled(PAPER_STL, 1.001))]  # better than STL
    return build_report(spec, runs)


def test_markdown_has_every_method_paper_rows_arrows_and_delta_p(full_report: Report) -> None:
    md = render_markdown(full_report)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    for col in ("segmentation mIoU ↑", "segmentation pixAcc ↑", "depth AbsErr ↓",
                "depth RelErr ↓", "Δp ↑"):  # fmt: skip
        assert col in header
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith("| ")][2:]
    assert rows[:5] == ["STL (paper)", "ew", "ew (paper)", "dbmtl", "dbmtl (paper)"]
    ew = full_report.ours["ew"].delta_p
    assert ew is not None and ew.n == 2
    assert f"{ew.mean:+.2f} ± {ew.std:.2f}" in md
    assert "| -2.05 |" in md and "| +0.20 |" in md  # published Δp
    assert "69.06" in md and "0.01282" in md  # the paper's precision per column
    dbmtl_line = next(line for line in lines if line.startswith("| dbmtl |"))
    best = full_report.ours["dbmtl"].delta_p
    assert best is not None and best.mean > ew.mean
    assert f"**{best.mean:+.2f}**" in dbmtl_line  # the best Δp is bold
    assert "Seeds: 1–2 per method (the spec asks for 2)" in md
    assert (
        "Model selection: `stl` (ew, dbmtl): the epoch with the best validation Δp against our "
        "STL runs' validation metrics" in md
    )
    assert "log+pcgrad: no finished run" in md


def test_png_and_write_report(full_report: Report, tmp_path: Path) -> None:
    png = render_png(full_report, tmp_path / "plots" / "delta.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    paths = write_report(full_report, tmp_path / "out")
    assert set(paths) == {"md", "png", "json"}
    assert paths["md"].read_text(encoding="utf-8") == render_markdown(full_report)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["reference"]["kind"] == "paper"
    ew = full_report.ours["ew"].delta_p
    assert ew is not None
    assert data["ours"]["ew"]["delta_p"] == {"mean": ew.mean, "std": ew.std, "n": 2}
    assert data["ours"]["ew"]["test"]["depth"]["AbsErr"]["n"] == 2
    assert data["paper"]["rows"]["ew"]["delta_p"] == -2.05


def test_png_without_delta_p(tmp_path: Path) -> None:
    report = build_report(make_spec(paper=False), [record("ew", 0, PAPER_EW)])
    path = render_png(report, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------- collect
def track(
    spec: Spec,
    spool: Path,
    method: str,
    seed: int,
    test: dict[str, dict[str, float]],
    *,
    stl_task: str | None = None,
    status: str = "FINISHED",
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
    legacy: bool = False,
) -> Tracker:
    """A run recorded the way the runner records it (``legacy``: with ``final/...`` keys,
    as before they were renamed ``final.*``)."""
    run_tags = {
        "mtlbench.spec": spec.name,
        "mtlbench.method": method,
        "mtlbench.seed": str(seed),
        "mtlbench.selection": "stl",
    }
    if stl_task is not None:
        run_tags["mtlbench.stl_task"] = stl_task
        test = {stl_task: test[stl_task]}
    tracker = Tracker(
        spec.experiment,
        spool_root=spool,
        tracking_uri=tracking_uri,
        tags=tags if tags is not None else run_tags,
        upload_interval=0.0,
    )
    for epoch in range(2):  # per-epoch history: the final values are what counts
        tracker.log_metrics({"val/segmentation/mIoU": 10.0 + epoch}, step=epoch)
    sep = "/" if legacy else "."  # runs tracked before the final keys lost their slashes
    final = {sep.join(["final", split, t, m]): v for split in ("test", "val")
             for t, ms in test.items() for m, v in ms.items()}  # fmt: skip
    tracker.log_metrics({**final, f"final{sep}epoch": 1.0}, step=0)
    tracker.close(status)
    time.sleep(0.002)  # distinct start times, so "newest" is well defined
    return tracker


def test_collect_runs_from_the_spool(tmp_path: Path) -> None:
    spec = make_spec()
    spool = tmp_path / "spool"
    for t in PAPER_STL:
        track(spec, spool, "stl", 0, PAPER_STL, stl_task=t)
    track(spec, spool, "ew", 0, scaled(PAPER_EW, 0.5))  # superseded by the next one
    newest = track(spec, spool, "ew", 0, PAPER_EW)
    track(spec, spool, "dbmtl", 0, PAPER_STL, status="FAILED")
    other = make_spec(name="nyuv2")
    track(other, spool, "ew", 0, PAPER_EW)  # another spec: not collected
    track(spec, spool, "ew", 1, PAPER_EW, tags={"mtlbench.spec": spec.name})  # no method tag

    with pytest.warns(UserWarning, match="no valid mtlbench.method"):
        runs = collect_runs(spec, spool_root=spool)

    assert len(runs) == 5
    assert {r.source for r in runs} == {"spool"}
    by_id = {r.run_id: r for r in runs}
    ew = by_id[newest.run_id]
    assert (ew.method, ew.seed, ew.stl_task, ew.status) == ("ew", 0, None, "FINISHED")
    assert ew.test == PAPER_EW and ew.val == PAPER_EW
    assert ew.selection == "stl" and ew.epoch == 1
    stl = [r for r in runs if r.method == "stl"]
    assert {r.stl_task for r in stl} == set(PAPER_STL)
    assert all(set(r.test) == {r.stl_task} for r in stl)
    assert [r.status for r in runs if r.method == "dbmtl"] == ["FAILED"]

    report = build_report(spec, runs)
    assert report.reference_kind == "ours"
    assert report.superseded == 1 and report.not_finished == 1
    assert report.ours["ew"].run_ids == (newest.run_id,)
    assert report.ours["ew"].delta_p is not None
    assert report.ours["ew"].delta_p.mean == pytest.approx(-2.04, abs=0.005)


def test_collect_runs_from_a_real_mlflow_store(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    spec = make_spec()
    spool = tmp_path / "spool"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trackers = [
        track(spec, spool, "stl", 0, PAPER_STL, stl_task=t, tracking_uri=uri) for t in PAPER_STL
    ]
    trackers.append(track(spec, spool, "ew", 0, PAPER_EW, tracking_uri=uri))
    trackers.append(track(spec, spool, "ew", 1, PAPER_EW, tracking_uri=uri, status="KILLED"))
    assert all(t.mlflow_run_id is not None for t in trackers)

    runs = collect_runs(spec, tracking_uri=uri)
    assert {r.source for r in runs} == {"mlflow"}
    assert {r.run_id for r in runs} == {t.mlflow_run_id for t in trackers}
    from_spool = {(r.method, r.seed, r.stl_task): r for r in collect_runs(spec, spool_root=spool)}
    for r in runs:  # the store holds what the spool holds
        twin = from_spool[(r.method, r.seed, r.stl_task)]
        assert (r.test, r.val, r.status, r.start_time, r.selection, r.epoch) == (
            twin.test, twin.val, twin.status, twin.start_time, twin.selection, twin.epoch
        )  # fmt: skip
    report = build_report(spec, runs)
    assert report.reference_kind == "ours" and report.not_finished == 1
    assert report.ours["ew"].seeds == (0,)
    assert report.sources == ("mlflow",)

    # An existing store without this spec's experiment.
    with pytest.raises(NoRunsError, match=r"no experiment 'mtlbench/nyuv2'.*mtlbench run nyuv2"):
        collect_runs(make_spec(name="nyuv2"), tracking_uri=uri)


def test_collect_runs_says_what_to_run_when_there_is_nothing(tmp_path: Path) -> None:
    spec = make_spec()
    with pytest.raises(NoRunsError, match=r"spool root .* does not exist.*mtlbench run cityscapes"):
        collect_runs(spec, spool_root=tmp_path / "missing")
    track(make_spec(name="nyuv2"), tmp_path / "spool", "ew", 0, PAPER_EW)
    with pytest.raises(NoRunsError, match=r"no run tagged mtlbench.spec='cityscapes'"):
        collect_runs(spec, spool_root=tmp_path / "spool")
    db = tmp_path / "nothing.db"
    with pytest.raises(NoRunsError, match=r"no MLflow store.*mtlbench run cityscapes"):
        collect_runs(spec, tracking_uri=f"sqlite:///{db}")
    assert not db.exists()  # reading did not create an empty store


# ------------------------------------------------------------------------- the report in words
WORDS_TASKS = {"a": {"m": "higher"}, "b": {"m": "lower"}}


def words_spec(**extra: Any) -> Spec:
    raw: dict[str, Any] = {
        "name": "words",
        "problem": "mtlbench.problems.synthetic:build",
        "train": {"epochs": 1, "batch_size": 8},
        "tasks": WORDS_TASKS,
        "methods": ["ew", "dbmtl", "uw"],
        **extra,
    }
    return parse_spec(raw)


def words_runs(results: dict[str, list[tuple[float, float]]]) -> list[RunRecord]:
    """STL a.m = b.m = 1.0 (seed 0), and each method's (a.m, b.m) per seed."""
    runs = [record("stl", 0, {"a": {"m": 1.0}, "b": {"m": 1.0}}, stl_task=t) for t in ("a", "b")]
    for method, seeds in results.items():
        for seed, (a, b) in enumerate(seeds):
            runs.append(record(method, seed, {"a": {"m": a}, "b": {"m": b}}))
    return runs


def test_the_report_says_who_wins_by_how_much_and_where(tmp_path: Path) -> None:
    # Δp = ½ (100 (a - 1) / 1 - 100 (b - 1) / 1), by hand:
    #   ew (0.9, 1.2): ½ (-10 - 20) = -15;  dbmtl (1.0, 1.1): ½ (0 - 10) = -5;
    #   uw (0.96, 1.1): ½ (-4 - 10) = -7
    note = "These tasks conflict on purpose: rows below STL are expected."
    spec = words_spec(report={"note": note})
    report = build_report(spec, words_runs({"ew": [(0.9, 1.2)], "dbmtl": [(1.0, 1.1)],
                                            "uw": [(0.96, 1.1)]}))  # fmt: skip
    md = render_markdown(report)
    words = md.split("## What it shows\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert words == [
        f"- {note}",
        "- Every multi-task row is below STL (Δp < 0 for all 3): none matched single-task "
        "training on all tasks at once.",
        "- Best Δp: **dbmtl**, -5.00%, 2.00 points ahead of uw (-7.00%) and 10.00 ahead of ew "
        "(-15.00%); one seed each, so no spread over seeds to weigh the lead against.",
        "- dbmtl's Δp per task: a +0.00%, b -10.00%: it gives up most on b.",
    ]
    assert json.loads(json.dumps(report.to_dict()))["summary"] == [w[2:] for w in words]


def test_the_report_weighs_the_lead_against_the_spread_over_seeds() -> None:
    # ew: Δp -15 and -5 (mean -10, std 7.07); dbmtl: -5 and -7 (mean -6, std 1.41) -> a lead
    # of 4 points, within the std of 7.07: not a clear win. One row above STL (+5).
    runs = words_runs({"ew": [(0.9, 1.2), (1.0, 1.1)], "dbmtl": [(1.0, 1.1), (0.96, 1.1)],
                       "uw": [(1.1, 1.0), (1.1, 1.0)]})  # fmt: skip
    report = build_report(words_spec(), runs)
    words = summary_lines(report)
    assert words[0] == "1 of 3 multi-task rows are above STL (uw); the others are below."
    assert words[1].startswith("Best Δp: **uw**, +5.00 ± 0.00%, 11.00 points ahead of dbmtl")
    runs = words_runs({"ew": [(0.9, 1.2), (1.0, 1.1)], "dbmtl": [(1.0, 1.1), (0.96, 1.1)]})
    words = summary_lines(build_report(words_spec(methods=["ew", "dbmtl"]), runs))
    assert words[1] == (
        "Best Δp: **dbmtl**, -6.00 ± 1.41%, 4.00 points ahead of ew (-10.00 ± 7.07%); the lead "
        "is within the spread over seeds (std up to 7.07): not a clear win."
    )


def test_the_report_explains_model_selection() -> None:
    runs = words_runs({"ew": [(0.9, 1.2)], "dbmtl": [(1.0, 1.1)]})
    stl = [dataclasses.replace(r, selection="first_epoch") for r in runs if r.method == "stl"]
    first = [dataclasses.replace(r, selection="first_epoch") for r in runs if r.method == "ew"]
    rest = [r for r in runs if r.method == "dbmtl"]
    md = render_markdown(build_report(words_spec(), stl + first + rest))
    assert (
        "  - `first_epoch` (STL, ew): the epoch with the best validation Δp against the run's "
        "own first epoch — a single-task run is compared with itself, on its one task; ew had "
        "no STL validation reference (LibMTL's rule; train STL first, e.g. with `--stl`, to "
        "select against it)"
    ) in md.splitlines()
    assert (
        "  - `stl` (dbmtl): the epoch with the best validation Δp against our STL runs' "
        "validation metrics"
    ) in md.splitlines()


def test_a_bad_report_table_in_a_spec_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[report\] takes only note"):
        words_spec(report={"note": "x", "colour": "red"})
    with pytest.raises(ValueError, match=r"report\.note must be a string"):
        words_spec(report={"note": 3})
    assert words_spec().report_note == ""


def test_with_links_each_row_and_seed_links_to_its_run() -> None:
    runs = [
        dataclasses.replace(
            r,
            spool_run_id=f"sp-{r.method}-{r.seed}-{r.stl_task}",
            parent_run_id=f"group-{r.method}",
        )
        for r in words_runs({"ew": [(0.9, 1.2), (0.9, 1.2)], "dbmtl": [(1.0, 1.1)]})
    ]
    md = render_markdown(build_report(words_spec(methods=["ew", "dbmtl"]), runs), links=True)
    assert "| [ew]({{run:group-ew}}) | 2 |" in md
    assert "| [STL]({{run:group-stl}}) | 1 |" in md
    assert "- ew: [seed 0]({{run:sp-ew-0-None}}), [seed 1]({{run:sp-ew-1-None}})" in md
    assert "- STL: [seed 0 a]({{run:sp-stl-0-a}}), [seed 0 b]({{run:sp-stl-0-b}})" in md
    assert "{{run:" not in render_markdown(build_report(words_spec(), runs))  # the file: no links


def test_runs_tracked_with_the_old_final_slash_keys_are_read(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    spec = make_spec()
    spool = tmp_path / "spool"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for t in PAPER_STL:
        track(spec, spool, "stl", 0, PAPER_STL, stl_task=t, tracking_uri=uri, legacy=True)
    track(spec, spool, "ew", 0, PAPER_EW, tracking_uri=uri, legacy=True)
    for runs in (collect_runs(spec, spool_root=spool), collect_runs(spec, tracking_uri=uri)):
        ew = next(r for r in runs if r.method == "ew")
        assert ew.test == PAPER_EW and ew.epoch == 1
        assert build_report(spec, runs).reference_kind == "ours"
