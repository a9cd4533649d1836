#!/usr/bin/env python3
"""Step time of the fast DB-MTL modes (issue 12) as a ratio to EW: interleaved, wall and CPU.

The shapes of ``step_time.py`` (``_step_shapes.py``); one fresh model, Adam and balancer per
configuration, all built first; then round after round, ONE step of each configuration in
turn (the order rotated every round), so that a change of load on a shared machine hits every
configuration alike (``step_time.py`` times the configurations one after the other). Reports
per configuration the median and the MEAN step time over the timed rounds and their ratios to
EW's: the mean is the cost that matters for ``periodic`` (one exact step in K: its median is a
cheap step). Besides the wall time, the process's CPU time per step (``time.process_time``):
on a machine shared with other jobs it counts the work of this process only, not the time it
waited for a core (run with ``--threads 1`` so that idle worker threads do not add to it).

    python benchmarks/perf/fast_modes.py --shapes ctr --size small --warmup 3 --rounds 12 \\
        --out benchmarks/results/fast
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import command, machine
from _step_shapes import SHAPE_CLASSES, SHAPES

import mtlbalance

CONFIGS: dict[str, dict[str, Any] | None] = {
    "ew": None,  # plain sum(losses).backward()
    "dbmtl (exact)": {},
    "dbmtl probe": {"mode": "probe"},
    "dbmtl representation": {"mode": "representation"},
    "dbmtl periodic (K=4)": {"mode": "periodic", "period": 4},
}


def run_shape(name: str, args: argparse.Namespace) -> dict[str, Any]:
    shape = SHAPE_CLASSES[name](args.size == "small")
    device = torch.device("cpu")
    data = shape.make_data(torch.Generator().manual_seed(0), device)
    runs = {}
    for label, options in CONFIGS.items():
        torch.manual_seed(0)
        encoder, heads = shape.make_model()
        opt = torch.optim.Adam([*encoder.parameters(), *heads.parameters()], lr=1e-4)
        balancer = (
            None
            if options is None
            else mtlbalance.DBMTL(encoder, dict(heads), engine=args.engine, **options)
        )
        runs[label] = (encoder, heads, opt, balancer)

    def step(label: str) -> tuple[float, float]:
        encoder, heads, opt, balancer = runs[label]
        start, cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        z, losses = shape.forward(encoder, heads, data)
        if balancer is None:
            sum(losses.values(), torch.zeros(())).backward()
        else:
            balancer.backward(losses, representation=z)
        opt.step()
        return time.perf_counter() - start, time.process_time() - cpu

    labels = list(CONFIGS)
    times: dict[str, list[float]] = {k: [] for k in labels}
    cpus: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(args.warmup + args.rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            t, c = step(label)
            if r >= args.warmup:
                times[label].append(t * 1e3)
                cpus[label].append(c * 1e3)
    ew_med, ew_mean = statistics.median(times["ew"]), statistics.mean(times["ew"])
    ew_cpu = statistics.mean(cpus["ew"])
    rows = {}
    for label, ts in times.items():
        med, mean, cpu = statistics.median(ts), statistics.mean(ts), statistics.mean(cpus[label])
        rows[label] = {
            "median_ms": round(med, 2),
            "mean_ms": round(mean, 2),
            "cpu_mean_ms": round(cpu, 2),
            "ratio_median": round(med / ew_med, 3),
            "ratio_mean": round(mean / ew_mean, 3),
            "ratio_cpu": round(cpu / ew_cpu, 3),
            "times_ms": [round(t, 2) for t in ts],
            "cpu_ms": [round(t, 2) for t in cpus[label]],
        }
        print(
            f"[{name}] {label:<22} wall median {med:9.1f} ms ({med / ew_med:.2f}x EW), mean "
            f"{mean / ew_mean:.2f}x EW; CPU mean {cpu:9.1f} ms ({cpu / ew_cpu:.2f}x EW)",
            file=sys.stderr,
        )
    return {"shape": shape.describe(), "configs": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", choices=SHAPES, default=["ctr"])
    p.add_argument("--size", choices=("small", "full"), default="small")
    p.add_argument("--engine", default="loop", help="gradient engine of exact, probe, periodic")
    p.add_argument("--warmup", type=int, default=3, help="rounds not timed")
    p.add_argument("--rounds", type=int, default=12, help="timed rounds")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fast"))
    p.add_argument("--tag", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "command": command(__file__),
        "machine": machine(torch.device("cpu")),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "shapes": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"fast_modes-{args.tag}-{args.size}"
    for name in args.shapes:
        result["shapes"][name] = run_shape(name, args)
        base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Fast DB-MTL modes: step time relative to EW ({args.tag}, {args.size})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Interleaved: {args.warmup} warm-up rounds, then {args.rounds} timed rounds of one step "
        f"per configuration (order rotated each round); engine `{args.engine}` for the exact, "
        "probe and periodic steps.",
        "",
        "| shape | configuration | wall median ms | × EW | wall mean ms | × EW | CPU mean ms "
        "| × EW |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, shape in result["shapes"].items():
        for label, v in shape["configs"].items():
            lines.append(
                f"| {name} | {label} | {v['median_ms']:.1f} | {v['ratio_median']:.2f} | "
                f"{v['mean_ms']:.1f} | {v['ratio_mean']:.2f} | {v['cpu_mean_ms']:.1f} | "
                f"{v['ratio_cpu']:.2f} |"
            )
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
