"""Training throughput (examples/s) of a multi-task ranking model: EW vs DB-MTL.

Data: mtlrec's Criteo-shaped synthetic log (click, conversion, dwell time), transformed once
and held in memory; the timed loop is forward + balancer.backward + optimizer.step over
fixed batches (no data loading). DB-MTL runs twice: with the embedding tables balanced
approximately (``Balancer(tables=...)``, the default in mtlbench's recsys specs) and exactly
(tables inside the per-task gradient matrix).

    python benchmarks/perf/rec_throughput.py --device cpu --tag cpu
    python benchmarks/perf/rec_throughput.py --device cuda --rows 2000000 --batch 8192 --tag h100

Writes benchmarks/results/perf/rec_throughput-<tag>.{json,md} with the command and machine.
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
from _common import command, machine, sync

import mtlbalance
from mtlrec.data import synthetic_log, synthetic_log_spec
from mtlrec.metrics import task_loss
from mtlrec.models import make_model

RESULTS = Path(__file__).resolve().parents[1] / "results" / "perf"
CONFIGS = {
    "ew": ("ew", "exact"),
    "dbmtl (tables approx)": ("dbmtl", "approx"),
    "dbmtl (tables exact)": ("dbmtl", "exact"),
    # the fast, approximate modes (issue 12), tables approx
    "dbmtl probe (tables approx)": ("dbmtl_probe", "approx"),
    "dbmtl representation (tables approx)": ("dbmtl_rep", "approx"),
    "dbmtl periodic (tables approx)": ("dbmtl_periodic", "approx"),
}


def _count(source: Any) -> int:
    params = source.parameters() if isinstance(source, torch.nn.Module) else source
    return sum(p.numel() for p in params)


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    frame = synthetic_log(args.rows, seed=0, num_sparse=args.sparse, num_dense=4)
    fitted = synthetic_log_spec(args.sparse, 4).fit(frame)
    data = fitted.transform(frame)
    features = {n: (rows, args.dim) for n, rows in fitted.cardinalities.items()}
    kinds = dict(fitted.task_kinds)
    losses_fn = {t: task_loss(k) for t, k in kinds.items()}
    n_batches = len(data) // args.batch
    batches = [
        data.index(torch.arange(i * args.batch, (i + 1) * args.batch)).to(device)
        for i in range(n_batches)
    ]
    out: dict[str, Any] = {}
    for label, (method, tables) in CONFIGS.items():
        if args.configs and label != "ew" and label not in args.configs:
            continue
        torch.manual_seed(0)
        model = make_model(
            "mmoe",
            features,
            kinds,
            dense_dim=len(fitted.dense_names),
            num_experts=8,
            expert=(256, 128),
            tower=(64,),
        ).to(device)
        if tables == "approx":
            balancer = mtlbalance.make(
                method,
                model.dense_shared_parameters(),
                model.task_parameters(),
                tables=model.embedding_parameters(),
            )
        else:
            balancer = mtlbalance.make(method, model.shared_parameters(), model.task_parameters())
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        times, cpu_times = [], []
        for rep in range(args.warmup + args.repeats):
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                z, preds = model(batch.inputs)
                losses = {t: losses_fn[t](preds[t], batch.labels[t]) for t in kinds}
                opt.zero_grad(set_to_none=True)
                balancer.backward(losses, representation=z)
                opt.step()
            sync(device)
            if rep >= args.warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu)
        examples = n_batches * args.batch
        rates = [examples / t for t in times]
        # per CPU second of this process: on a shared machine, its work without the waits
        # (with --threads 1; on a GPU the wall time is what counts)
        cpu_rates = [examples / t for t in cpu_times]
        out[label] = {
            "examples_per_s_median": statistics.median(rates),
            "examples_per_s_all": rates,
            "examples_per_cpu_s_median": statistics.median(cpu_rates),
            "examples_per_cpu_s_all": cpu_rates,
        }
        print(f"{label:<24} {statistics.median(rates):>12,.0f} examples/s", file=sys.stderr)
    ew = out["ew"]["examples_per_s_median"]
    ew_cpu = out["ew"]["examples_per_cpu_s_median"]
    for v in out.values():
        v["relative_to_ew"] = v["examples_per_s_median"] / ew
        v["cpu_relative_to_ew"] = v["examples_per_cpu_s_median"] / ew_cpu
    return {
        "params": {
            "shared_dense": _count(model.dense_shared_parameters()),
            "tables": _count(model.embedding_parameters()),
        },
        "results": out,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--sparse", type=int, default=8)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--tag", default="cpu")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the .json/.md")
    p.add_argument(
        "--configs", nargs="+", choices=list(CONFIGS), default=None, help="default: all (ew always)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = measure(args, device)
    result["command"] = command(__file__)
    result["machine"] = machine(device)
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"rec_throughput-{args.tag}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Recsys training throughput ({args.tag})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Model: MMoE (8 experts 256-128, towers 64), {args.sparse} sparse features x dim "
        f"{args.dim}, 4 dense; {result['params']['shared_dense']:,} dense shared parameters, "
        f"{result['params']['tables']:,} embedding parameters; batch {args.batch}; median of "
        f"{args.repeats} passes over {args.rows:,} rows (after {args.warmup} warm-up).",
        "",
        "| configuration | examples/s | relative to EW | examples per CPU s | relative to EW |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, v in result["results"].items():
        lines.append(
            f"| {label} | {v['examples_per_s_median']:,.0f} | {v['relative_to_ew']:.2f} | "
            f"{v['examples_per_cpu_s_median']:,.0f} | {v['cpu_relative_to_ew']:.2f} |"
        )
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
