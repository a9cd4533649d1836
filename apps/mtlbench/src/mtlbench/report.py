"""``mtlbench report``: the paper's results table, with Δp, from a benchmark's finished runs.

Runs come from MLflow (:func:`collect_runs` with ``tracking_uri``) or from the local spool
that every run writes first. Each run records, as the runner writes them::

    tags     mtlbench.spec, mtlbench.method, mtlbench.seed, mtlbench.stl_task (STL runs only),
             mtlbench.selection
    metrics  final.test.<task>.<metric>, final.val.<task>.<metric>, final.epoch   (step 0)

:func:`build_report` turns them into a :class:`Report`: per method the test metrics as
mean ± std over seeds and Δp (Lin et al., Eq. (2))

    Δp = (1/T) Σ_t (100/N_t) Σ_i (−1)^{s_ti} (M_ti − M_ti^STL) / M_ti^STL

computed per seed against one single-task reference, then mean ± std. The reference is our
own STL runs (mean over seeds, per task) when every task has one, else the benchmark's
published STL row; the report says which. The paper's numbers are shown beside ours.
:func:`write_report` writes ``report.md``, ``report.png`` and ``report.json``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mtltrain import delta_p, delta_p_per_task, mean_std

from .reference import covers, stl_reference, usable_runs
from .runs import STL, NoRunsError, RunRecord, collect_runs
from .spec import Spec

__all__ = [
    "STL",
    "MethodResult",
    "NoRunsError",
    "PaperRow",
    "Report",
    "RunRecord",
    "Stat",
    "build_report",
    "collect_runs",
    "render_markdown",
    "render_png",
    "summary_lines",
    "write_report",
]

Table = dict[str, dict[str, float]]
"""task -> metric -> value"""


class Stat(NamedTuple):
    """Mean and sample standard deviation over ``n`` seeds (std 0 for one seed)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        mean, std = mean_std(values)
        return cls(mean, std, len(values))


@dataclass
class MethodResult:
    """Our numbers for one method: test metrics and Δp as mean ± std over seeds."""

    method: str
    seeds: tuple[int, ...]
    run_ids: tuple[str, ...]
    metrics: dict[str, dict[str, Stat]]
    delta_p: Stat | None = None
    delta_p_per_seed: dict[int, float] = field(default_factory=dict)
    delta_p_per_task: dict[str, Stat] = field(default_factory=dict)
    selections: tuple[str, ...] = ()
    runs: tuple[RunRecord, ...] = ()

    @property
    def group_run_id(self) -> str | None:
        """The spool run id of the group run all of this row's runs belong to, if one does."""
        parents = {r.parent_run_id for r in self.runs}
        if len(parents) == 1:
            return next(iter(parents))
        return None

    @property
    def seed_counts(self) -> tuple[int, int]:
        """Fewest and most seeds behind any metric (they differ only for STL tasks)."""
        counts = [s.n for ms in self.metrics.values() for s in ms.values()] or [0]
        return min(counts), max(counts)


@dataclass
class PaperRow:
    """The published numbers for one method (metrics may cover only some tasks)."""

    method: str
    metrics: Table
    delta_p: float | None  # as published
    delta_p_recomputed: float | None  # from the published metrics, against the published STL


@dataclass
class Report:
    """Everything :func:`render_markdown`, :func:`render_png` and the JSON need."""

    spec_name: str
    experiment: str
    directions: dict[str, dict[str, bool]]
    methods: list[str]  # display order: stl, the spec's methods, others alphabetically
    ours: dict[str, MethodResult]
    paper: dict[str, PaperRow]
    reference_kind: str | None  # "ours" | "paper" | None (no Δp)
    reference_label: str
    reference: Table | None
    paper_source: str | None
    paper_note: str
    spec_seeds: int
    sources: tuple[str, ...]
    n_runs: int  # finished runs counted (after duplicates were superseded)
    superseded: int
    not_finished: int
    notes: list[str]
    report_note: str = ""  # the spec's own words about its results ([report] note)

    def to_dict(self) -> dict[str, Any]:
        """All numbers, JSON-ready."""

        def stat(s: Stat | None) -> dict[str, float] | None:
            return None if s is None else {"mean": s.mean, "std": s.std, "n": s.n}

        return {
            "spec": self.spec_name,
            "experiment": self.experiment,
            "directions": {
                t: {m: ("higher" if h else "lower") for m, h in ms.items()}
                for t, ms in self.directions.items()
            },
            "methods": self.methods,
            "reference": {
                "kind": self.reference_kind,
                "label": self.reference_label,
                "values": self.reference,
            },
            "ours": {
                m: {
                    "seeds": list(r.seeds),
                    "run_ids": list(r.run_ids),
                    "spool_run_ids": [x.spool_run_id for x in r.runs],
                    "group_run_id": r.group_run_id,
                    "selections": list(r.selections),
                    "test": {t: {k: stat(s) for k, s in ms.items()} for t, ms in r.metrics.items()},
                    "delta_p": stat(r.delta_p),
                    "delta_p_per_seed": {str(k): v for k, v in r.delta_p_per_seed.items()},
                    "delta_p_per_task": {t: stat(s) for t, s in r.delta_p_per_task.items()},
                }
                for m, r in self.ours.items()
            },
            "paper": {
                "source": self.paper_source,
                "note": self.paper_note,
                "rows": {
                    m: {
                        "test": p.metrics,
                        "delta_p": p.delta_p,
                        "delta_p_recomputed": p.delta_p_recomputed,
                    }
                    for m, p in self.paper.items()
                },
            },
            "spec_seeds": self.spec_seeds,
            "sources": list(self.sources),
            "runs": self.n_runs,
            "superseded": self.superseded,
            "not_finished": self.not_finished,
            "notes": self.notes,
            "summary": summary_lines(self),
        }


# ------------------------------------------------------------------------------------- build
def build_report(spec: Spec, runs: Iterable[RunRecord]) -> Report:
    """Aggregate ``runs`` of ``spec`` into a :class:`Report` (see the module doc). Which runs
    count and the Δp reference follow :mod:`mtlbench.reference`, as in ``mtlbench run``."""
    usable = usable_runs(spec, runs)
    kept = usable.kept
    notes = list(usable.notes)
    ref = stl_reference(spec, kept)
    notes += ref.notes
    reference, kind, label = ref.test, ref.kind, ref.label
    stl_runs = ref.stl_runs
    mtl_runs: dict[str, list[RunRecord]] = defaultdict(list)
    for r in sorted(kept, key=lambda r: (r.seed, r.start_time)):
        if r.method != STL:
            mtl_runs[r.method].append(r)
    paper = spec.paper

    ours: dict[str, MethodResult] = {}
    if stl_runs:
        ours[STL] = _stl_result(spec, stl_runs, reference)
    for method, group in mtl_runs.items():
        ours[method] = _method_result(spec, method, group, reference)

    rows: dict[str, PaperRow] = {}
    if paper is not None:
        paper_stl = paper.stl if covers(paper.stl, spec.tasks) else None
        for method in dict.fromkeys([*paper.results, *paper.delta_p]):
            values = paper.results.get(method, {})
            recomputed = (
                delta_p(values, paper_stl, spec.tasks)
                if paper_stl is not None and covers(values, spec.tasks)
                else None
            )
            rows[method] = PaperRow(method, values, paper.delta_p.get(method), recomputed)

    # What the spec asks for and is not there.
    for method in spec.methods:
        if method == STL:
            continue
        got = len(ours[method].seeds) if method in ours else 0
        if got == 0:
            notes.append(f"{method}: no finished run (run it with `mtlbench run {spec.name}`).")
        elif got < spec.seeds:
            notes.append(f"{method}: {got} of the spec's {spec.seeds} seeds finished.")
    if stl_runs:
        for task in spec.tasks:
            got = len(stl_runs.get(task, []))
            if 0 < got < spec.seeds:
                notes.append(f"STL {task}: {got} of the spec's {spec.seeds} seeds finished.")
    if not kept:
        notes.append(
            f"No finished run of {spec.name} to report: run `mtlbench run {spec.name}` first."
        )

    return Report(
        spec_name=spec.name,
        experiment=spec.experiment,
        directions={t: dict(ms) for t, ms in spec.tasks.items()},
        methods=_order([*ours, *rows], spec.methods),
        ours=ours,
        paper=rows,
        reference_kind=kind,
        reference_label=label,
        reference=reference,
        paper_source=None if paper is None else paper.source,
        paper_note="" if paper is None else paper.note,
        spec_seeds=spec.seeds,
        sources=tuple(sorted({r.source for r in kept})),
        n_runs=len(kept),
        superseded=usable.superseded,
        not_finished=usable.not_finished,
        notes=notes,
        report_note=spec.report_note,
    )


def _per_task_stats(values: Sequence[Mapping[str, float]]) -> dict[str, Stat]:
    tasks = list(values[0]) if values else []
    return {t: Stat.of([v[t] for v in values]) for t in tasks}


def _method_result(
    spec: Spec, method: str, runs: list[RunRecord], reference: Table | None
) -> MethodResult:
    metrics = {
        t: {m: Stat.of([r.test[t][m] for r in runs]) for m in ms} for t, ms in spec.tasks.items()
    }
    result = MethodResult(
        method=method,
        seeds=tuple(r.seed for r in runs),
        run_ids=tuple(r.run_id for r in runs),
        metrics=metrics,
        selections=tuple(sorted({r.selection for r in runs if r.selection})),
        runs=tuple(runs),
    )
    if reference is not None:
        result.delta_p_per_seed = {r.seed: delta_p(r.test, reference, spec.tasks) for r in runs}
        result.delta_p = Stat.of(list(result.delta_p_per_seed.values()))
        result.delta_p_per_task = _per_task_stats(
            [delta_p_per_task(r.test, reference, spec.tasks) for r in runs]
        )
    return result


def _stl_result(
    spec: Spec, stl_runs: Mapping[str, list[RunRecord]], reference: Table | None
) -> MethodResult:
    """The STL row: each task's metrics from its own STL runs; Δp per seed where every task
    has a run of that seed (≈ 0 on average against our own STL reference)."""
    metrics = {
        t: {m: Stat.of([r.test[t][m] for r in stl_runs[t]]) for m in spec.tasks[t]}
        for t in spec.tasks
        if stl_runs.get(t)
    }
    all_runs = [r for t in spec.tasks for r in stl_runs.get(t, [])]
    result = MethodResult(
        method=STL,
        seeds=tuple(sorted({r.seed for r in all_runs})),
        run_ids=tuple(r.run_id for r in all_runs),
        metrics=metrics,
        selections=tuple(sorted({r.selection for r in all_runs if r.selection})),
        runs=tuple(all_runs),
    )
    if reference is None:
        return result
    by_seed: dict[int, Table] = defaultdict(dict)
    for task, runs in stl_runs.items():
        for r in runs:
            by_seed[r.seed][task] = r.test[task]
    combined = {s: t for s, t in sorted(by_seed.items()) if covers(t, spec.tasks)}
    if combined:
        result.delta_p_per_seed = {
            s: delta_p(t, reference, spec.tasks) for s, t in combined.items()
        }
        result.delta_p = Stat.of(list(result.delta_p_per_seed.values()))
        result.delta_p_per_task = _per_task_stats(
            [delta_p_per_task(t, reference, spec.tasks) for t in combined.values()]
        )
    return result


def _order(methods: Iterable[str], spec_methods: Sequence[str]) -> list[str]:
    present = set(methods)
    first = [STL] if STL in present else []
    listed = [m for m in dict.fromkeys(spec_methods) if m != STL and m in present]
    rest = sorted(present - set(first) - set(listed))
    return first + listed + rest


# ------------------------------------------------------------------------------------ render
def _name(method: str) -> str:
    return "STL" if method == STL else method


def _columns(report: Report) -> list[tuple[str, str, bool]]:
    return [(t, m, h) for t, ms in report.directions.items() for m, h in ms.items()]


def _column_decimals(report: Report) -> dict[tuple[str, str], int]:
    """Decimals per metric column: 4 significant digits at the column's largest magnitude
    (69.06, 0.01282, 0.7512), like the paper's tables."""
    out: dict[tuple[str, str], int] = {}
    for task, metric, _ in _columns(report):
        values = [r.metrics[task][metric].mean for r in report.ours.values()
                  if metric in r.metrics.get(task, {})]  # fmt: skip
        values += [p.metrics[task][metric] for p in report.paper.values()
                   if metric in p.metrics.get(task, {})]  # fmt: skip
        big = max((abs(v) for v in values if math.isfinite(v) and v != 0), default=1.0)
        out[(task, metric)] = min(6, max(0, 3 - math.floor(math.log10(big))))
    return out


def _fmt_stat(s: Stat, decimals: int, signed: bool = False) -> str:
    text = _fmt(s.mean, decimals, signed)
    return text if s.n <= 1 else f"{text} ± {s.std:.{decimals}f}"


def _fmt(v: float, decimals: int, signed: bool = False) -> str:
    if round(v, decimals) == 0:  # no "-0.00"
        v = 0.0
    return f"{v:{'+' if signed else ''}.{decimals}f}"


def _seeds_text(r: MethodResult) -> str:
    lo, hi = r.seed_counts
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _table_rows(
    report: Report, *, bold: bool, link: Callable[[MethodResult], str | None] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the results table (ours and the paper's rows); ``link`` gives
    the address our rows' method names link to (Markdown)."""
    cols = _columns(report)
    dec = _column_decimals(report)
    header = ["Method", "Seeds"]
    header += [f"{t} {m} {'↑' if h else '↓'}" for t, m, h in cols] + ["Δp ↑"]

    best: dict[tuple[str, str], float] = {}
    if bold:  # the best mean of our multi-task rows, per column, as the paper marks it
        mtl = [r for m, r in report.ours.items() if m != STL]
        if len(mtl) > 1:
            for t, m, h in cols:
                means = [r.metrics[t][m].mean for r in mtl]
                best[(t, m)] = max(means) if h else min(means)
            dps = [r.delta_p.mean for r in mtl if r.delta_p is not None]
            if len(dps) > 1:
                best[("", "Δp")] = max(dps)

    def mark(text: str, key: tuple[str, str], value: float) -> str:
        if key in best and value == best[key]:
            head, sep, tail = text.partition(" ± ")
            return f"**{head}**{sep}{tail}"
        return text

    body: list[list[str]] = []
    for method in report.methods:
        ours = report.ours.get(method)
        if ours is not None:
            url = None if link is None else link(ours)
            name = _name(method) if url is None else f"[{_name(method)}]({url})"
            row = [name, _seeds_text(ours)]
            for t, m, _ in cols:
                s = ours.metrics.get(t, {}).get(m)
                row.append("—" if s is None else mark(_fmt_stat(s, dec[(t, m)]), (t, m), s.mean))
            dp = ours.delta_p
            row.append("—" if dp is None else mark(_fmt_stat(dp, 2, True), ("", "Δp"), dp.mean))
            body.append(row)
        pub = report.paper.get(method)
        if pub is not None:
            row = [f"{_name(method)} (paper)", ""]
            for t, m, _ in cols:
                v = pub.metrics.get(t, {}).get(m)
                row.append("—" if v is None else _fmt(v, dec[(t, m)]))
            if pub.delta_p is not None:
                row.append(_fmt(pub.delta_p, 2, True))
            elif pub.delta_p_recomputed is not None:
                row.append(_fmt(pub.delta_p_recomputed, 2, True) + " †")
            else:
                row.append("—")
            body.append(row)
    return header, body


_SELECTION_MEANING = {
    "stl": "the epoch with the best validation Δp against our STL runs' validation metrics",
    "first_epoch": "the epoch with the best validation Δp against the run's own first epoch",
    "last": "the last epoch (no selection)",
}


def _selection_text(report: Report) -> list[str]:
    """What each model-selection rule in the report means, and which rows used it."""
    rows: dict[str, list[str]] = defaultdict(list)
    for method in report.methods:
        r = report.ours.get(method)
        for s in r.selections if r is not None else ():
            rows[s].append(_name(method))
    out = []
    for kind, names in sorted(rows.items()):
        meaning = _SELECTION_MEANING.get(kind, kind)
        text = f"`{kind}` ({', '.join(names)}): {meaning}"
        if kind == "first_epoch":
            mtl = [n for n in names if n != "STL"]
            why = []
            if "STL" in names:
                why.append("a single-task run is compared with itself, on its one task")
            if mtl:
                why.append(
                    f"{', '.join(mtl)} had no STL validation reference (LibMTL's rule; train "
                    "STL first, e.g. with `--stl`, to select against it)"
                )
            text += " — " + "; ".join(why)
        out.append(text)
    return out


def _fmt_dp(s: Stat) -> str:
    return _fmt_stat(s, 2, True) + "%"


def summary_lines(report: Report) -> list[str]:
    """The report in words, from its numbers: where the multi-task rows stand against the
    single-task reference, which method wins and by how much (against the runner-up and EW,
    and against the spread over seeds), and where the winner gains or loses per task; the
    spec's own note first."""
    lines = [report.report_note] if report.report_note else []
    dp = {m: r.delta_p for m, r in report.ours.items() if m != STL and r.delta_p is not None}
    if not dp:
        return lines
    ranked = sorted(dp, key=lambda m: dp[m].mean, reverse=True)
    ref = "STL" if report.reference_kind == "ours" else "the published STL row"
    above = [m for m in ranked if dp[m].mean > 0]
    n = len(ranked)
    if not above:
        lines.append(
            f"Every multi-task row is below {ref} (Δp < 0 for {'both' if n == 2 else f'all {n}'}): "
            "none matched "
            "single-task training on all tasks at once."
            if n > 1
            else f"{ranked[0]} is below {ref} (Δp < 0)."
        )
    elif len(above) == n:
        lines.append(
            f"Every multi-task row is above {ref} (Δp > 0 for {'both' if n == 2 else f'all {n}'})."
        )
    else:
        lines.append(
            f"{len(above)} of {n} multi-task rows are above {ref} ({', '.join(above)}); "
            "the others are below."
        )
    best = ranked[0]
    text = f"Best Δp: **{best}**, {_fmt_dp(dp[best])}"
    if n > 1:
        second = ranked[1]
        gap = dp[best].mean - dp[second].mean
        text += f", {gap:.2f} points ahead of {second} ({_fmt_dp(dp[second])})"
        if "ew" in dp and "ew" not in (best, second):
            text += f" and {dp[best].mean - dp['ew'].mean:.2f} ahead of ew ({_fmt_dp(dp['ew'])})"
        if min(dp[best].n, dp[second].n) > 1:
            spread = max(dp[best].std, dp[second].std)
            text += (
                f"; the lead is larger than the spread over seeds (std ≤ {spread:.2f})"
                if gap > spread
                else f"; the lead is within the spread over seeds (std up to {spread:.2f}): "
                "not a clear win"
            )
        else:
            text += "; one seed each, so no spread over seeds to weigh the lead against"
    lines.append(text + ".")
    per_task = report.ours[best].delta_p_per_task
    if len(per_task) > 1:
        parts = ", ".join(f"{t} {_fmt_dp(v)}" for t, v in per_task.items())
        worst = min(per_task, key=lambda t: per_task[t].mean)
        tail = f": it gives up most on {worst}" if per_task[worst].mean < 0 else ""
        lines.append(f"{best}'s Δp per task: {parts}{tail}.")
    return lines


def render_markdown(report: Report, *, links: bool = False) -> str:
    """The paper's table layout: one row per method, every task's metrics with ↑/↓, then Δp;
    ours as mean ± std over seeds, the published row ``<method> (paper)`` right under it; then
    the report in words (:func:`summary_lines`).

    With ``links``, the words come first, each of our rows' method names links to its run (its
    group run when its seeds share one, else its first run) and a section lists every run, as
    ``{{run:<spool run id>}}`` placeholders: text for a tracked run's description, where the
    upload fills in the MLflow UI's addresses (:meth:`mtltrain.tracking.Tracker.set_linked_tags`).
    """
    lines = [f"# {report.spec_name}: results and Δp", ""]
    summary = summary_lines(report)
    if links and summary:  # a run's description shows its first lines: the words go first
        lines += [f"- {s}" for s in summary] + [""]
    runs = f"{report.n_runs} finished run(s)"
    if report.sources:
        runs += f" from {' and '.join(report.sources)}"
    lines.append(f"- Experiment: `{report.experiment}`, {runs}")
    lines.append(f"- Δp reference: {report.reference_label}")
    mtl = [r for m, r in report.ours.items() if m != STL]
    if mtl:
        counts = sorted({len(r.seeds) for r in mtl})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        lines.append(f"- Seeds: {n} per method (the spec asks for {report.spec_seeds})")
    selection = _selection_text(report)
    if len(selection) == 1:
        lines.append(f"- Model selection: {selection[0]}")
    elif selection:
        lines.append("- Model selection (the epoch each run reports):")
        lines += [f"  - {s}" for s in selection]
    if report.paper_source is not None:
        paper = f"- Paper: {report.paper_source}"
        if report.paper_note:
            paper += f" ({report.paper_note})"
        lines.append(paper)
    lines.append("")

    header, body = _table_rows(report, bold=True, link=_run_link if links else None)
    lines += _md_table(header, body, first_left=1)
    legend = (
        "Test metrics, mean ± std over seeds (std omitted for one seed); ↑ higher / ↓ lower "
        "is better; Δp in % (Lin et al., Eq. (2)); **bold**: our best multi-task row."
    )
    if any(p.delta_p is None and p.delta_p_recomputed is not None for p in report.paper.values()):
        legend += " †: not published, computed from the paper's metrics against its STL row."
    lines += ["", legend]

    if summary and not links:
        lines += ["", "## What it shows", ""]
        lines += [f"- {s}" for s in summary]

    with_tasks = [m for m in report.methods if m in report.ours and report.ours[m].delta_p_per_task]
    if with_tasks and len(report.directions) > 1:
        tasks = list(report.directions)
        lines += ["", "## Δp per task (ours, %)", ""]
        rows = [
            [_name(m)] + [_fmt_stat(report.ours[m].delta_p_per_task[t], 2, True) for t in tasks]
            for m in with_tasks
        ]
        lines += _md_table(["Method", *(f"Δp {t}" for t in tasks)], rows, first_left=1)

    if links:
        listed = [
            (m, [x for x in report.ours[m].runs if x.spool_run_id])
            for m in report.methods
            if m in report.ours
        ]
        if any(rs for _, rs in listed):
            lines += ["", "## Runs", ""]
            for m, rs in listed:
                cells = [
                    f"[seed {x.seed}{' ' + x.stl_task if x.stl_task else ''}]"
                    f"({_placeholder(x.spool_run_id)})"
                    for x in rs
                    if x.spool_run_id
                ]
                lines.append(f"- {_name(m)}: {', '.join(cells)}")

    if report.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def _placeholder(spool_run_id: str) -> str:
    return "{{run:" + spool_run_id + "}}"


def _run_link(r: MethodResult) -> str | None:
    """Where a row links: its group run, else its first run (spool ids as placeholders)."""
    target = r.group_run_id or next((x.spool_run_id for x in r.runs if x.spool_run_id), None)
    return None if target is None else _placeholder(target)


def _md_table(header: list[str], body: list[list[str]], *, first_left: int) -> list[str]:
    align = [":---" if i < first_left else "---:" for i in range(len(header))]
    return ["| " + " | ".join(r) + " |" for r in (header, align, *body)]


def render_png(report: Report, path: str | Path) -> Path:
    """A horizontal bar chart of Δp per method (ours with std error bars, the paper's value
    beside it) above the results table, as a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    header, body = _table_rows(report, bold=False)
    bars = [
        m
        for m in report.methods
        if (m in report.ours and report.ours[m].delta_p is not None)
        or (m in report.paper and _paper_dp(report.paper[m]) is not None)
    ]
    chart_h = 0.5 + 0.42 * max(1, len(bars))
    table_h = 0.3 + 0.22 * (len(body) + 1)
    width = max(8.0, 2.0 + 1.45 * (len(header) - 1))
    fig = Figure(figsize=(width, chart_h + table_h + 0.8))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 1, height_ratios=[chart_h, table_h], hspace=0.6)
    ax = fig.add_subplot(grid[0])
    if bars:
        h = 0.38
        labelled: set[str] = set()

        def label(kind: str) -> str | None:  # one legend entry per kind
            if kind in labelled:
                return None
            labelled.add(kind)
            return kind

        for i, m in enumerate(bars):
            ours = report.ours.get(m)
            if ours is not None and ours.delta_p is not None:
                dp = ours.delta_p
                err = dp.std if dp.n > 1 else None
                ax.barh(i - h / 2, dp.mean, h, xerr=err, color="tab:blue", capsize=3,
                        label=label("ours"))  # fmt: skip
            pub = report.paper.get(m)
            value = None if pub is None else _paper_dp(pub)
            if value is not None:
                ax.barh(i + h / 2, value, h, color="tab:gray", alpha=0.7, label=label("paper"))
        ax.set_yticks(range(len(bars)), [_name(m) for m in bars])
        ax.invert_yaxis()
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("Δp (%) ↑")
        handles, names = ax.get_legend_handles_labels()
        order = sorted(range(len(names)), key=lambda i: names[i] != "ours")
        ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize="small")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no Δp: " + report.reference_label, ha="center", va="center")
    ax.set_title(f"{report.spec_name} — Δp vs {report.reference_label}", fontsize="medium")

    tab_ax = fig.add_subplot(grid[1])
    tab_ax.set_axis_off()
    if body:
        table = tab_ax.table(cellText=body, colLabels=header, loc="upper center",
                             cellLoc="right", colLoc="center")  # fmt: skip
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.auto_set_column_width(list(range(len(header))))
        for (row, col), cell in table.get_celld().items():
            if row == 0:
                cell.set_text_props(weight="bold")
            elif body[row - 1][0].endswith("(paper)"):
                cell.set_facecolor("#f0f0f0")
            if col == 0:
                cell.set_text_props(ha="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def _paper_dp(row: PaperRow) -> float | None:
    return row.delta_p if row.delta_p is not None else row.delta_p_recomputed


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.png`` and ``report.json`` (every number) in ``out_dir``
    (created if missing); returns their paths by kind (``md``, ``png``, ``json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "png": out / "report.png", "json": out / "report.json"}
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    render_png(report, paths["png"])
    paths["json"].write_text(
        json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return paths
