#!/usr/bin/env python3
"""Is forming the Gram matrix block by block cheaper than through the flat (T, P) matrix?

Issue 11 asks, for the Gram-only methods (a weighting of ``G = J Jᵀ``, aggregated as
``wᵀJ``): where an engine can form G without materialising the (T, P) matrix, measure
whether that is cheaper on the perf shapes. The engines return per-parameter gradient blocks
(one (T, n_p) block per shared parameter from a vmapped backward; T per-parameter lists from
the loop engine). Today they are copied into the flat (T, P) buffer, and the method reads it:

* **flat**: copy the blocks into the (T, P) buffer, ``G = J Jᵀ`` (one GEMM), update
  ``wᵀJ`` (one GEMV into the flat update buffer);
* **blocks**: no copy; ``G = Σ_p B_p B_pᵀ`` (one small GEMM per parameter tensor), update
  ``w B_p`` per parameter tensor into the update buffer's views.

Both are measured on the same blocks (from a real backward of each shape, seeded with the log
transform's Jacobian), after warm-up, alternating, many repetitions; only the part that
differs is timed, and the backward itself is timed once for scale. Usage::

    python benchmarks/perf/gram_blocks.py --size small --out benchmarks/results/pipeline
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "packages" / "mtlbalance" / "src"))

from _common import command, machine  # noqa: E402
from _step_shapes import SHAPE_CLASSES, SHAPES  # noqa: E402

from mtlbalance._params import FlatLayout  # noqa: E402
from mtlbalance.engines.base import write_row  # noqa: E402


def blocks_of(name: str, small: bool, seed: int) -> tuple[list[torch.Tensor], FlatLayout, float]:
    """The per-parameter (T, *shape) gradient blocks of one step of the shape (a vmapped
    backward of the T log-losses), the layout, and that backward's time (ms)."""
    torch.manual_seed(seed)
    shape = SHAPE_CLASSES[name](small=small)
    data = shape.make_data(torch.Generator().manual_seed(seed), torch.device("cpu"))
    encoder, heads = shape.make_model()
    params = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    layout = FlatLayout(params)
    _, losses = shape.forward(encoder, heads, data)
    vec = torch.stack(list(losses.values()))
    seeds = torch.diag(1.0 / (vec.detach() + 1e-8))
    start = time.perf_counter()
    grads = torch.autograd.grad(
        list(vec.unbind()),
        layout.params,
        grad_outputs=[seeds[:, t] for t in range(vec.shape[0])],
        is_grads_batched=True,
        allow_unused=True,
    )
    backward_ms = (time.perf_counter() - start) * 1e3
    blocks = [
        torch.zeros((vec.shape[0], *p.shape)) if g is None else g
        for g, p in zip(grads, layout.params, strict=True)
    ]
    return blocks, layout, backward_ms


def flat(blocks: list[torch.Tensor], layout: FlatLayout, rows: torch.Tensor, update: torch.Tensor):
    write_row(rows, blocks, layout)
    gram = rows @ rows.T
    w = 1.0 / gram.diagonal().sqrt()  # (any weights: the weighting is the same on both paths)
    torch.mv(rows.T, w, out=update)
    return gram


def blocked(blocks: list[torch.Tensor], views: list[torch.Tensor]):
    flats = [b.reshape(b.shape[0], -1) for b in blocks]
    gram = sum(f @ f.T for f in flats)
    assert isinstance(gram, torch.Tensor)
    w = 1.0 / gram.diagonal().sqrt()
    for f, v in zip(flats, views, strict=True):
        torch.matmul(w, f, out=v.view(-1))  # (T,) @ (T, n): contiguous rows
    return gram


def measure(name: str, small: bool, reps: int, seed: int) -> dict[str, object]:
    blocks, layout, backward_ms = blocks_of(name, small, seed)
    num_tasks = blocks[0].shape[0]
    rows = torch.empty(num_tasks, layout.total)
    update = torch.empty(layout.total)
    views = layout.views(torch.empty(layout.total))
    g1, g2 = flat(blocks, layout, rows, update), blocked(blocks, views)  # warm-up + agreement
    agree = float((g1 - g2).abs().max() / g1.abs().max())
    times: dict[str, list[float]] = {"flat": [], "blocks": []}
    for i in range(reps):
        order = ("flat", "blocks") if i % 2 == 0 else ("blocks", "flat")
        for path in order:
            start = time.perf_counter()
            if path == "flat":
                flat(blocks, layout, rows, update)
            else:
                blocked(blocks, views)
            times[path].append((time.perf_counter() - start) * 1e3)
    flat_ms, blocks_ms = statistics.median(times["flat"]), statistics.median(times["blocks"])
    return {
        "shape": name,
        "tasks": num_tasks,
        "shared_values": layout.total,
        "parameter_tensors": len(layout.params),
        "backward_ms": round(backward_ms, 2),
        "flat_ms": round(flat_ms, 3),
        "blocks_ms": round(blocks_ms, 3),
        "blocks_over_flat": round(blocks_ms / flat_ms, 3),
        "saved_bytes": rows.numel() * rows.element_size(),
        "gram_relative_difference": agree,
        "times_ms": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pipeline")
    args = parser.parse_args()
    rows = []
    for name in args.shapes:
        row = measure(name, args.size == "small", args.reps, args.seed)
        print(json.dumps({k: v for k, v in row.items() if k != "times_ms"}), flush=True)
        rows.append(row)
    result = {"command": command(__file__), "machine": machine(torch.device("cpu")), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gram_blocks-cpu-{args.size}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Gram matrix from the flat (T, P) matrix vs block by block (CPU, size {args.size})",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['machine']}",
        f"- median of {args.reps} alternating repetitions of the part that differs (copy into "
        "the flat buffer + one GEMM + one GEMV, vs one GEMM and one GEMV per parameter "
        "tensor), on the blocks of one vmapped backward of the shape; the backward's own time "
        "(one run) for scale",
        "",
        "| shape | T | P | tensors | backward ms | flat ms | blocks ms | blocks/flat | "
        "(T, P) buffer saved |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['tasks']} | {r['shared_values']} | {r['parameter_tensors']} | "
            f"{r['backward_ms']:.1f} | {r['flat_ms']:.3f} | {r['blocks_ms']:.3f} | "
            f"{r['blocks_over_flat']:.2f} | {r['saved_bytes'] / 2**20:.1f} MiB |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
