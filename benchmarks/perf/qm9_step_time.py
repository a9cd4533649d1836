"""Step time of mtlmolecule's MPNN on real QM9 batches: EW vs DB-MTL, edge network shared or not.

One step = zero_grad + forward + backward (``sum(losses).backward()`` for EW,
``balancer.backward(losses, representation=z)`` for DB-MTL) + ``Adam.step()`` over batches of
the published training split built once (graph construction is not timed). Each configuration
runs with the edge network evaluated once per forward (``share_edge_weights=True``, the
default) and once per message-passing round (as PyG's ``NNConv``).

Runs from a checkout without installing anything but torch and torch_geometric (the GPU
machine): the repository's package sources are put on ``sys.path`` when not installed.

    python benchmarks/perf/qm9_step_time.py --device cpu --width 32 --steps 8 --tag cpu-w32
    python benchmarks/perf/qm9_step_time.py --device cuda --width 64 --steps 30 --tag h100

Needs the converted cache (``python -m mtlmolecule.convert``; ``--cache-dir`` or
``$MTLMOLECULE_CACHE``). Writes benchmarks/results/perf/qm9_step_time-<tag>.{json,md} (or
under ``--out``) with the command and machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
for _src in ("packages/mtlbalance/src", "packages/mtlmolecule/src"):
    if str(REPO / _src) not in sys.path:
        sys.path.append(str(REPO / _src))  # installed copies, when present, come first

from _common import command, machine, sync  # noqa: E402

import mtlbalance  # noqa: E402
from mtlmolecule.convert import TASKS  # noqa: E402
from mtlmolecule.data import QM9Graphs, load_molecules, make_loader, make_splits  # noqa: E402
from mtlmolecule.model import MPNN  # noqa: E402

CONFIGS = ("ew", "dbmtl")
SPLIT = REPO.parent / "shared" / "data" / "qm9" / "random_split.t"


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    molecules = load_molecules(args.cache_dir)
    split = SPLIT if SPLIT.is_file() else None
    splits = make_splits(len(molecules), split_file=split, targets=molecules.targets)
    train = QM9Graphs(molecules, splits.train, splits.mean, splits.std)
    torch.manual_seed(0)
    batches = []
    for batch in make_loader(train, args.batch, True):
        batches.append(batch.to(device))
        if len(batches) == args.warmup + args.steps:
            break
    tasks = list(TASKS)
    out: dict[str, Any] = {}
    for shared in (True, False):
        for method in CONFIGS:
            torch.manual_seed(0)
            model = MPNN(tasks, width=args.width, share_edge_weights=shared).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            balancer = (
                None
                if method == "ew"
                else mtlbalance.make(
                    method, model.shared_parameters(), model.task_parameters(), engine="loop"
                )
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for i, batch in enumerate(batches):
                sync(device)
                start = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                z, preds = model(batch)
                losses = {t: F.mse_loss(preds[t], batch.y[:, k]) for k, t in enumerate(tasks)}
                if balancer is None:
                    torch.stack(list(losses.values())).sum().backward()
                else:
                    balancer.backward(losses, representation=z)
                opt.step()
                sync(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
            label = f"{method} ({'edge net once' if shared else 'edge net per round'})"
            out[label] = {
                "ms_median": 1e3 * statistics.median(times),
                "ms_all": [1e3 * t for t in times],
                "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20
                if device.type == "cuda"
                else None,
            }
            print(f"{label:<32} {out[label]['ms_median']:>10.1f} ms/step", file=sys.stderr)
    base = out["ew (edge net per round)"]["ms_median"]
    for v in out.values():
        v["relative_to_pyg_ew"] = v["ms_median"] / base
    return {
        "split": str(split) if split else "seeded permutation",
        "parameters": sum(p.numel() for p in model.parameters()),
        "edges_per_batch_mean": statistics.mean(int(b.edge_index.shape[1]) for b in batches),
        "results": out,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "perf"))
    p.add_argument("--tag", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit in torch_geometric
    device = torch.device(args.device)
    result = measure(args, device)
    result["command"] = command(__file__)
    result["machine"] = machine(device)
    result["args"] = vars(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"qm9_step_time-{args.tag}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# QM9 MPNN step time ({args.tag})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Model: mtlmolecule MPNN width {args.width} ({result['parameters']:,} parameters), "
        f"11 heads; batch {args.batch} molecules of the training split "
        f"({result['edges_per_batch_mean']:,.0f} directed edges per batch on average, complete "
        f"graphs); median of {args.steps} steps after {args.warmup} warm-up; DB-MTL with the "
        "loop engine.",
        "",
        "| configuration | ms/step | relative to EW with PyG's per-round edge network | peak MiB |",
        "|---|---:|---:|---:|",
    ]
    for label, v in result["results"].items():
        peak = "—" if v["peak_mib"] is None else f"{v['peak_mib']:,.0f}"
        relative = v["relative_to_pyg_ew"]
        lines.append(f"| {label} | {v['ms_median']:,.1f} | {relative:.2f} | {peak} |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
