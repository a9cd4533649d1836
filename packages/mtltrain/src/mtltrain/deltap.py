"""Δp, the relative multi-task improvement over single-task learning (Lin et al., Eq. (2)).

    Δp = (1/T) Σ_t Δp_t,   Δp_t = 100 · (1/N_t) Σ_i (−1)^{s_ti} (M_ti − M_ti^STL) / M_ti^STL

with s_ti = 0 where a larger value of metric i of task t is better and 1 otherwise. The
reference is always an explicit single-task result (our STL runs, or a benchmark's published
STL row) — never a run's own first epoch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

Metrics = Mapping[str, Mapping[str, float]]
"""task -> metric name -> value"""
Directions = Mapping[str, Mapping[str, bool]]
"""task -> metric name -> higher is better"""


def delta_p_per_task(
    results: Metrics, reference: Metrics, directions: Directions
) -> dict[str, float]:
    """Δp_t for every task of ``directions`` (in percent)."""
    if not directions:
        raise ValueError("directions name no task: give task -> metric -> higher_is_better")
    out: dict[str, float] = {}
    for task, metrics in directions.items():
        if not metrics:
            raise ValueError(f"task {task!r} has no metrics in directions")
        terms = []
        for metric, higher in metrics.items():
            value = _lookup(results, task, metric, "results")
            ref = _lookup(reference, task, metric, "the STL reference")
            if ref <= 0:
                raise ValueError(
                    f"the STL reference of {task}/{metric} is {ref}: Δp (Eq. (2)) divides by it "
                    "and reads a larger value as better only for a positive reference; use a "
                    "metric that is positive for the reference (e.g. an error rate instead of 0 "
                    "errors, a loss instead of a negative score)"
                )
            sign = 1.0 if higher else -1.0
            terms.append(sign * (value - ref) / ref)
        out[task] = 100.0 * sum(terms) / len(terms)
    return out


def delta_p(results: Metrics, reference: Metrics, directions: Directions) -> float:
    """Δp of ``results`` against the single-task ``reference`` (in percent)."""
    per_task = delta_p_per_task(results, reference, directions)
    return sum(per_task.values()) / len(per_task)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1) of per-seed results; std 0 for one seed."""
    if not values:
        raise ValueError("no values: run at least one seed")
    vals = [float(v) for v in values]
    if any(not math.isfinite(v) for v in vals):
        raise ValueError(f"non-finite value among {vals}")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _lookup(table: Metrics, task: str, metric: str, what: str) -> float:
    if task not in table:
        raise ValueError(f"{what} has no task {task!r} (it has {sorted(table)})")
    if metric not in table[task]:
        raise ValueError(
            f"{what} has no metric {metric!r} for task {task!r} (it has {sorted(table[task])})"
        )
    value = float(table[task][metric])
    if not math.isfinite(value):
        raise ValueError(f"{what}: {task}/{metric} is {value}")
    return value
