"""The one rule for which runs count and what single-task reference Δp is measured against.

``mtlbench run`` uses it to pick the validation reference for model selection and the test
reference for ``final.test.delta_p``; ``mtlbench report`` uses it for the table. The same runs
therefore give the same numbers in both.

Which runs count: FINISHED ones with a finite value for every metric of their task(s); of
several with the same (method, seed[, STL task]) the newest. The reference: our STL runs
(mean over their seeds, per task) when every task has one, else the spec's published STL row
(test only: selection then falls back to each run's first epoch), else none (no Δp).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mtltrain.results import final_key

from .runs import STL, TAG_STL_TASK, RunRecord
from .spec import Spec

__all__ = ["Reference", "Usable", "stl_reference", "usable_runs"]

Table = dict[str, dict[str, float]]


@dataclass
class Usable:
    """The runs that count, and what was left out."""

    kept: list[RunRecord]
    not_finished: int = 0
    superseded: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reference:
    """What Δp is measured against: ``kind`` ``"ours"`` (our STL runs), ``"paper"`` (the
    published STL row) or None; ``test`` the test metrics, ``val`` the validation metrics
    (ours only), ``label`` how the report names it."""

    kind: str | None
    label: str
    test: Table | None
    val: Table | None
    notes: tuple[str, ...] = ()
    stl_runs: Mapping[str, list[RunRecord]] = field(default_factory=dict)


def usable_runs(spec: Spec, runs: Iterable[RunRecord]) -> Usable:
    """The runs that count (see the module doc), oldest first, with notes on the others."""
    runs = list(runs)
    finished = [r for r in runs if r.status == "FINISHED"]
    out = Usable(kept=[], not_finished=len(runs) - len(finished))
    if out.not_finished:
        states = sorted({r.status for r in runs if r.status != "FINISHED"})
        out.notes.append(
            f"{out.not_finished} run(s) not FINISHED ({', '.join(states)}) were left out."
        )
    complete: list[RunRecord] = []
    for r in finished:
        problem = _incomplete(spec, r)
        if problem:
            out.notes.append(f"{r.describe()} left out: {problem}.")
        else:
            complete.append(r)
    newest: dict[tuple[str, int, str | None], RunRecord] = {}
    for r in sorted(complete, key=lambda r: (r.start_time, r.run_id)):
        newest[r.key] = r
    out.superseded = len(complete) - len(newest)
    if out.superseded:
        out.notes.append(
            f"{out.superseded} older run(s) with the same method, seed (and STL task) as a "
            "newer finished run were superseded by it."
        )
    out.kept = sorted(newest.values(), key=lambda r: (r.start_time, r.run_id))
    return out


def stl_reference(spec: Spec, kept: Iterable[RunRecord]) -> Reference:
    """The Δp reference from the runs that count (:func:`usable_runs`)."""
    stl_runs: dict[str, list[RunRecord]] = defaultdict(list)
    for r in sorted(kept, key=lambda r: (r.seed, r.start_time)):
        if r.method == STL and r.stl_task is not None:
            stl_runs[r.stl_task].append(r)
    missing = [t for t in spec.tasks if not stl_runs.get(t)]
    if not missing:
        test = {t: {m: _mean(r.test[t][m] for r in stl_runs[t]) for m in ms}
                for t, ms in spec.tasks.items()}  # fmt: skip
        val: Table | None = None
        if all(m in r.val.get(t, {}) for t, ms in spec.tasks.items()
               for r in stl_runs[t] for m in ms):  # fmt: skip
            val = {t: {m: _mean(r.val[t][m] for r in stl_runs[t]) for m in ms}
                   for t, ms in spec.tasks.items()}  # fmt: skip
        counts = sorted({len(stl_runs[t]) for t in spec.tasks})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        label = f"our STL runs ({n} seed{'s' if counts[-1] > 1 else ''}"
        label += ")" if len(counts) == 1 else " per task)"
        return Reference("ours", label, test, val, stl_runs=dict(stl_runs))
    paper = spec.paper
    have_paper_stl = paper is not None and covers(paper.stl, spec.tasks)
    notes: list[str] = []
    if have_paper_stl:
        assert paper is not None and paper.stl is not None
        if stl_runs:
            notes.append(
                f"Our STL runs lack task(s) {', '.join(missing)}, so the published STL row is "
                "the Δp reference."
            )
        label = f"published STL row, {paper.source}"
        return Reference("paper", label, paper.stl, None, tuple(notes), dict(stl_runs))
    why = (
        "the spec's [paper] table has no complete STL row"
        if paper is not None
        else "the spec has no [paper] table with an STL row"
    )
    notes.append(
        f"No Δp: no STL run for task(s) {', '.join(missing)} and {why}; run the single-task "
        f"baselines (method {STL!r}) with `mtlbench run {spec.name} --stl`."
    )
    return Reference(None, "none (no Δp)", None, None, tuple(notes), dict(stl_runs))


def covers(
    table: Mapping[str, Mapping[str, float]] | None, directions: Mapping[str, Mapping[str, bool]]
) -> bool:
    """Whether ``table`` has a value for every task/metric of ``directions``."""
    if table is None:
        return False
    return all(m in table.get(t, {}) for t, ms in directions.items() for m in ms)


def _mean(values: Iterable[float]) -> float:
    return statistics.fmean(values)


def _incomplete(spec: Spec, run: RunRecord) -> str | None:
    """Why a finished run cannot be counted, or None."""
    if run.method == STL:
        if run.stl_task is None:
            return f"an STL run without a {TAG_STL_TASK} tag"
        if run.stl_task not in spec.tasks:
            return f"STL task {run.stl_task!r} is not a task of the spec ({sorted(spec.tasks)})"
        tasks = [run.stl_task]
    else:
        tasks = list(spec.tasks)
    missing = [
        final_key("test", t, m)
        for t in tasks
        for m in spec.tasks[t]
        if not math.isfinite(run.test.get(t, {}).get(m, math.nan))
    ]
    if missing:
        return f"no finite {', '.join(missing)}"
    return None
