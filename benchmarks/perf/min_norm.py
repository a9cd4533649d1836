"""Time of MGDA's minimum-norm weights from a T x T Gram matrix: SciPy's NNLS path against the
torch fallback (the same least-distance algorithm, used where SciPy is not installed).

    python benchmarks/perf/min_norm.py [--tasks 3 11 40] [--reps 200] [--out DIR]

Gram matrices of random rows (P = 64) whose norms span 1..1e4; the median over ``reps``
calls, alternating the solvers call by call (the machine is shared). Writes
``<out>/min_norm-cpu.md`` with the command and machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mtlbalance.aggregators._min_norm import min_norm_weights


def gram(tasks: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(tasks, 64, generator=g, dtype=torch.float64)
    rows *= torch.logspace(0, 4, tasks, dtype=torch.float64)[:, None]
    return rows @ rows.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 11, 40])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/min_norm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for t in args.tasks:
        times: dict[str, list[float]] = {"scipy": [], "torch": []}
        for rep in range(args.reps):
            g = gram(t, rep % 10)
            for solver in ("scipy", "torch") if rep % 2 == 0 else ("torch", "scipy"):
                start = time.perf_counter()
                min_norm_weights(g, solver=solver)  # type: ignore[arg-type]
                times[solver].append(time.perf_counter() - start)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append((t, med["scipy"], med["torch"], med["torch"] / med["scipy"]))
        print(f"T={t}: scipy {med['scipy']:.3f} ms, torch {med['torch']:.3f} ms", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# MGDA minimum-norm weights: SciPy NNLS path vs the torch fallback (CPU)",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), "
        f"torch {torch.__version__}, 1 torch thread, {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%MZ}",
        f"- median of {args.reps} calls each, alternating; Gram of random rows (P = 64) with "
        "norms from 1 to 1e4",
        "",
        "| T | scipy ms | torch ms | torch / scipy |",
        "|---:|---:|---:|---:|",
        *(f"| {t} | {s:.3f} | {q:.3f} | {r:.1f} |" for t, s, q, r in rows),
    ]
    (out / "min_norm-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
