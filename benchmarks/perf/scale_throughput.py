"""Scale benchmark: examples/s and bytes communicated per step of sharded multi-task ranking
(TorchRec DMP tables, fused optimizer) at 1 and N processes, for EW, exact DB-MTL and the fast
(approximate) DB-MTL modes that need no representation (probe, periodic), with MMoE and PLE.

Data: a Criteo-shaped log (26 sparse features with large tables, 13 dense, click /
conversion / dwell) written as Parquet by ``mtlrec.data.write_criteo_log`` and read by each
rank's ``ShardedParquetLoader`` (its share of the row groups, streamed). The loader's rate is
measured on its own (rows/s per rank); the timed training steps read batches already
streamed into memory, so examples/s is training only.

One step on every rank, ``--path balancer`` (the way, default): DMP forward (the tables'
all-to-all), ``balancer.backward`` on the rank's LOCAL mean losses with
``Balancer(tables=[model.table_frontier()], process_group="world")`` (its reduce stage
averages the T losses and what the method reads, in a few bucketed all-reduces after the
backwards: EW the one combined gradient, exact DB-MTL the T rows; the per-rank frontier's
gradient is scaled locally, one float64 norm crosses), then ``model.backward_tables()`` (the
one backward into the tables, fused update) and the dense optimizer step. ``--path sync``
(the older alternative): ``global_mean_losses`` (one all-reduce of T + 1 floats) and a
one-process balancer with ``DenseGradSync`` (every backward's dense gradients summed across
ranks inside the backward: EW one, exact DB-MTL with the loop engine T, the probe mode one
more small one per task). examples/s = global batch × timed steps / rank 0's wall time (after a
barrier). Bytes per step: every tensor handed to ``torch.distributed`` collectives
(all_reduce, all_to_all_single, all_gather*, reduce_scatter*, broadcast) is counted by a
wrapper around those functions — what THIS rank sends, by kind, averaged over the timed steps.

    python benchmarks/perf/scale_throughput.py --tag cpu-small            # gloo, CPU
    python benchmarks/perf/scale_throughput.py --device cuda --nproc 1 --rows 2000000 \
        --largest 10000000 --batch 8192 --tag h200                         # nccl, one GPU

Writes benchmarks/results/scale/scale_throughput-<tag>.{json,md} with the command and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from _common import command, machine

RESULTS = Path(__file__).resolve().parents[1] / "results" / "scale"
PATHS = {
    "balancer": "Balancer(tables=[model.table_frontier()], process_group='world') on local "
    "mean losses: the Balancer's reduce stage, after the backwards (no DenseGradSync).",
    "sync": "global_mean_losses + DenseGradSync (the older alternative): a one-process "
    "balancer, every dense backward all-reduced inside it.",
}
ARCHS = {
    "mmoe": {"num_experts": 4, "expert": (128, 64), "tower": (32,)},
    "ple": {"num_levels": 2, "shared_experts": 2, "task_experts": 1, "expert": (128, 64),
            "tower": (32,)},
}  # fmt: skip
COLLECTIVES = (
    "all_reduce",
    "all_to_all_single",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "broadcast",
)


# ---------------------------------------------------------------------- one rank
class _Bytes:
    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}
        self.on = False

    def add(self, kind: str, tensors: Any) -> None:
        if not self.on:
            return
        items = tensors if isinstance(tensors, list | tuple) else [tensors]
        n = sum(t.numel() * t.element_size() for t in items if isinstance(t, torch.Tensor))
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n


def _count_collectives(counter: _Bytes) -> None:
    """Wrap torch.distributed's collectives (looked up at call time by TorchRec and by
    mtlrec.distributed) to count the bytes this rank sends."""
    for name in COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def wrapped(*args: Any, __original: Any = original, __name: str = name, **kw: Any) -> Any:
            # the tensor this rank sends: the input (2nd positional argument of the
            # collectives with an output first), else the tensor itself
            second = __name not in ("all_reduce", "broadcast")
            if "input" in kw:
                sent = kw["input"]
            elif "tensor" in kw:
                sent = kw["tensor"]
            elif second and len(args) > 1:
                sent = args[1]
            else:
                sent = args[0] if args else None
            counter.add(__name, sent)
            return __original(*args, **kw)

        setattr(dist, name, wrapped)


def _worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rank, world = args.rank, args.world
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=f"file://{args.store}", rank=rank, world_size=world
    )
    counter = _Bytes()
    _count_collectives(counter)
    import polars as pl

    from mtlrec.data.stream import ShardedParquetLoader, criteo_log_spec

    paths = sorted(Path(args.data).glob("part-*.parquet"))
    cards = json.loads((Path(args.data) / "cardinalities.json").read_text())
    fitted = criteo_log_spec(cards).fit(pl.scan_parquet(paths[0]).head(5000))
    per_rank = args.batch // world
    loader = ShardedParquetLoader(paths, fitted, per_rank, rank=rank, world=world)
    need = args.warmup + args.steps
    if len(loader) < need:
        raise SystemExit(
            f"rank {rank}: {len(loader)} batches of {per_rank} in its share, {need} needed: "
            f"more --rows or fewer --steps"
        )
    start = time.perf_counter()
    batches = []
    for i, (inputs, targets) in enumerate(loader):
        if i == need:
            break
        batches.append((inputs.to(device), {t: y.to(device) for t, y in targets.items()}))
    load_s = time.perf_counter() - start
    out: dict[str, Any] = {"loader_rows_per_s": need * per_rank / load_s, "runs": {}}
    methods = [m for m in args.methods.split(",") if m]
    for arch in args.archs.split(","):
        for method in methods:
            label = f"{arch} / {method}"
            out["runs"][label] = _time_run(args, arch, method, fitted, batches, device, counter)
    Path(args.out).with_suffix(f".rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def _time_run(
    args: argparse.Namespace,
    arch: str,
    method: str,
    fitted: Any,
    batches: list[Any],
    device: torch.device,
    counter: _Bytes,
) -> dict[str, Any]:
    """Build, shard and train ``arch`` with ``method``: warm-up steps, then the timed ones
    (examples/s from rank 0's wall time between two barriers, bytes sent per step)."""
    import mtlbalance
    from mtlrec.distributed import (
        DenseGradSync,
        global_mean_losses,
        replicated_table_parameters,
        shard_model,
    )

    through_balancer = args.path == "balancer"
    from mtlrec.metrics import task_loss
    from mtlrec.models import make_model, meta_tables

    world = dist.get_world_size()
    kinds = fitted.task_kinds
    features = {n: (rows, args.dim) for n, rows in fitted.cardinalities.items()}
    torch.manual_seed(0)
    with meta_tables():
        model = make_model(
            arch, features, kinds, dense_dim=len(fitted.dense_names), **ARCHS[arch],
            backend="torchrec", check_ids=False,
        )  # fmt: skip
    # the tables stay on meta for DMP to allocate per shard; the dense layers move
    for m in [*model.dense_shared_modules(), *model.task_modules().values()]:
        m.to(device)
    dmp = shard_model(
        model, sharding={f: args.sharding for f in features}, device=device,
        optimizer="exact_adagrad", lr=0.02, optimizer_args={"eps": 1e-8},
    )  # fmt: skip
    dense = model.dense_shared_parameters()
    towers = [p for m in model.task_parameters().values() for p in m.parameters()]
    replicated = replicated_table_parameters(model)
    sync = DenseGradSync([*dense, *towers]) if world > 1 and not through_balancer else None
    balancer = mtlbalance.make(
        method,
        dense,
        model.task_parameters(),
        engine=args.engine,
        tables=[model.table_frontier()],
        process_group="world" if world > 1 and through_balancer else None,
    )
    opt = torch.optim.Adam([*dense, *towers, *replicated], lr=1e-3)
    losses_fn = {t: task_loss(k) for t, k in kinds.items()}

    def step(inputs: Any, targets: dict[str, torch.Tensor]) -> None:
        _, preds = dmp(inputs)
        local = {t: losses_fn[t](preds[t], targets[t]) for t in kinds}
        losses = local
        if world > 1 and not through_balancer:
            losses = global_mean_losses(local, count=inputs.batch_size)
        opt.zero_grad(set_to_none=True)
        balancer.backward(losses)
        model.backward_tables()
        opt.step()

    for inputs, targets in batches[: args.warmup]:
        step(inputs, targets)
    dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    counter.by_kind.clear()
    counter.on = True
    t0 = time.perf_counter()
    for inputs, targets in batches[args.warmup :]:
        step(inputs, targets)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    counter.on = False
    dist.barrier()
    elapsed = time.perf_counter() - t0
    if sync is not None:
        sync.close()
    mode = balancer.mode
    return {
        "mode": mode.name,
        "probe_params": None if mode.probe is None else mode.probe_layout.total,
        "period": mode.period if mode.name == "periodic" else None,
        "examples_per_s": args.batch * args.steps / elapsed,
        "bytes_per_step": {k: v / args.steps for k, v in counter.by_kind.items()},
        "dense_shared_params": sum(p.numel() for p in dense),
        "task_params": sum(p.numel() for p in towers),
    }


# ---------------------------------------------------------------------- driver
def _launch(args: argparse.Namespace, world: int, data: Path, tmp: Path) -> list[dict[str, Any]]:
    store = tmp / f"store-{world}"
    out = tmp / f"out-{world}"
    base = [
        sys.executable, __file__, "--worker", "--world", str(world), "--store", str(store),
        "--out", str(out), "--data", str(data), "--device", args.device,
        "--batch", str(args.batch), "--dim", str(args.dim), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--archs", args.archs, "--methods", args.methods,
        "--threads", str(args.threads), "--sharding", args.sharding,
        "--path", args.path, "--engine", args.engine,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(args.threads)}
    procs = [
        subprocess.Popen([*base, "--rank", str(r)], env=env, stderr=subprocess.PIPE, text=True)
        for r in range(world)
    ]
    errors = []
    try:
        for r, p in enumerate(procs):
            _, err = p.communicate(timeout=args.timeout)
            if p.returncode:
                errors.append(f"rank {r} exited {p.returncode}:\n{err[-3000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if errors:
        raise SystemExit("\n".join(errors))
    return [json.loads(out.with_suffix(f".rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", default="1,2", help="process counts, e.g. 1,2")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--row-group", type=int, default=16_384)
    p.add_argument("--largest", type=int, default=100_000, help="rows of the largest table")
    p.add_argument("--batch", type=int, default=2048, help="global batch (split over ranks)")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--archs", default="mmoe,ple")
    p.add_argument("--methods", default="ew,dbmtl,dbmtl_probe,dbmtl_periodic")
    p.add_argument("--sharding", default="table_wise")
    p.add_argument(
        "--path",
        default="balancer",
        choices=("balancer", "sync"),
        help="balancer: Balancer(process_group='world') (the way); sync: the older "
        "global_mean_losses + DenseGradSync",
    )
    p.add_argument("--engine", default="loop", help="the balancer's engine (sync: loop only)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--data", default=None, help="reuse a log written by an earlier run")
    p.add_argument("--tag", default="cpu-small")
    # worker-only
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--store", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        from mtltrain.distributed import end_rank

        end_rank(0)  # skip the interpreter's finalisation (docs/distributed.md)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (the nccl path needs one GPU)")
    worlds = [int(n) for n in args.nproc.split(",")]
    if device.type == "cuda" and max(worlds) > torch.cuda.device_count():
        raise SystemExit(f"--nproc {args.nproc}: {torch.cuda.device_count()} GPU(s) here")
    from mtlrec.data.stream import criteo_cardinalities, write_criteo_log

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        data = Path(args.data) if args.data else tmp / "log"
        cards = criteo_cardinalities(largest=args.largest)
        if not args.data:
            t0 = time.perf_counter()
            write_criteo_log(data, args.rows, files=args.files, row_group_size=args.row_group,
                             cardinalities=cards)  # fmt: skip
            write_s = time.perf_counter() - t0
            (data / "cardinalities.json").write_text(json.dumps(cards))
        else:
            write_s = None
        results: dict[str, Any] = {}
        for world in worlds:
            ranks = _launch(args, world, data, tmp)
            for label, run in ranks[0]["runs"].items():
                entry = results.setdefault(label, {})
                entry[str(world)] = {
                    "examples_per_s": run["examples_per_s"],
                    "bytes_per_step_rank0": run["bytes_per_step"],
                    "dense_shared_params": run["dense_shared_params"],
                    "task_params": run["task_params"],
                    "mode": run["mode"],
                    "probe_params": run["probe_params"],
                    "period": run["period"],
                }
            results.setdefault("_loader_rows_per_s", {})[str(world)] = [
                r["loader_rows_per_s"] for r in ranks
            ]
            print(f"{world} process(es) done", file=sys.stderr)
    result = {
        "command": command(__file__),
        "machine": machine(device),
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "rank", "world",
                                                                  "store", "out")},
        "table_rows": sum(cards) + len(cards),
        "write_log_s": write_s,
        "load_at_end": " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if Path("/proc/loadavg").exists() else None,
        "results": results,
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"scale_throughput-{args.tag}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    base.with_suffix(".md").write_text(_markdown(result, args, worlds) + "\n")
    print(_markdown(result, args, worlds))


def _reduced_values(label: str, v: dict[str, Any], p: int, t: int, args: Any) -> float:
    """Shared values summed per step (mean over the timed steps), from the shapes."""
    if v.get("mode") == "probe":
        return t * v["probe_params"] + p
    if v.get("mode") == "periodic":  # exact on the mode's steps 0, K, 2K, … (warm-up counted)
        timed = range(args.warmup, args.warmup + args.steps)
        exact = sum(1 for k in timed if k % v["period"] == 0)
        return (exact * t * p + (args.steps - exact) * p) / args.steps
    return t * p if label.endswith("/ dbmtl") else p


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:,.0f} {unit}" if unit == "B" else f"{b:,.1f} {unit}"
        b /= 1024
    return f"{b:.1f}"


def _markdown(result: dict[str, Any], args: argparse.Namespace, worlds: list[int]) -> str:
    res = result["results"]
    lines = [
        f"# Scale throughput ({args.tag})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Data: {args.rows:,} generated rows (26 sparse, tables 4 .. {args.largest:,} rows, "
        f"{result['table_rows']:,} table rows in all, dim {args.dim}; 13 dense; click, "
        f"conversion, dwell) in {args.files} Parquet files, row groups of {args.row_group:,}; "
        f"each rank streams its row groups. Global batch {args.batch} (split over the ranks), "
        f"{args.steps} timed steps after {args.warmup} warm-up; tables {args.sharding}, "
        f"fused EXACT_ADAGRAD; dense Adam; {args.threads} torch thread(s) per process; "
        f"engine {args.engine}.",
        "",
        f"Path: {PATHS[args.path]}",
        "",
        "Bytes per step: what rank 0 hands to torch.distributed collectives (counted by a "
        "wrapper), averaged over the timed steps; all_reduce = the task losses + the dense "
        "gradients, all_to_all_single = TorchRec's table lookups (ids forward, "
        "pooled embeddings forward and their gradients backward).",
        "",
    ]
    head = "| model / method |" + "".join(f" examples/s, {w} proc |" for w in worlds)
    head += "".join(f" bytes/step ({w} proc): all_reduce / all_to_all |" for w in worlds if w > 1)
    lines += [head, "|---|" + "---:|" * (len(worlds) + sum(w > 1 for w in worlds))]
    for label, per in res.items():
        if label.startswith("_"):
            continue
        row = f"| {label} |"
        for w in worlds:
            v = per.get(str(w))
            row += f" {v['examples_per_s']:,.0f} |" if v else " — |"
        for w in worlds:
            if w == 1:
                continue
            v = per.get(str(w))
            if not v:
                row += " — |"
                continue
            b = v["bytes_per_step_rank0"]
            ar = b.get("all_reduce", 0.0)
            a2a = b.get("all_to_all_single", 0.0)
            ew = res.get(label.split(" / ")[0] + " / ew", {}).get(str(w))
            ew_ar = ew["bytes_per_step_rank0"].get("all_reduce", 0.0) if ew else 0.0
            ratio = f" ({ar / ew_ar:.2f}× EW)" if ew_ar else ""
            row += f" {_fmt_bytes(ar)}{ratio} / {_fmt_bytes(a2a)} |"
        lines.append(row)
    checks = []
    for label, per in res.items():
        for w, v in per.items() if not label.startswith("_") else ():
            if w == "1":
                continue
            p, q = v["dense_shared_params"], v["task_params"]
            t = 3  # click, conversion, dwell
            # sync: + the row count of global_mean_losses; balancer: + the frontier's
            # squared norm, one float64 (2 × 4 B)
            extra = 1 if args.path == "sync" else 2
            want = 4 * (_reduced_values(label, v, p, t, args) + q + t + extra)
            got = v["bytes_per_step_rank0"].get("all_reduce", 0.0)
            checks.append(f"{label}, {w} proc: {got:,.0f} counted, {want:,.0f} from shapes")
    if checks:
        lines += [
            "",
            "all_reduce bytes against the shapes, 4 B × (S + P_towers + T + 1) (sync) or "
            "4 B × (S + P_towers + T + 2) (balancer): S the shared values whose gradients "
            "are reduced, P_shared for EW, "
            "T·P_shared for exact DB-MTL (loop engine), T·P_probe + P_shared for the probe "
            "mode (the T probe backwards, then the one weighted backward), and for the "
            "periodic mode T·P_shared on its exact steps, P_shared between (averaged over the "
            "timed steps); plus the tower gradients, the T losses and the row count (sync) "
            "or the frontier's norm (balancer): " + "; ".join(checks) + ".",
        ]
    loader = res.get("_loader_rows_per_s", {})
    if loader:
        lines += [
            "",
            "Loader (ShardedParquetLoader, measured on its own): rows/s per rank: "
            + "; ".join(
                f"{w} proc: " + ", ".join(f"{x:,.0f}" for x in v) for w, v in loader.items()
            ),
        ]
    lines += [
        "",
        f"Load average at the end of the run: {result.get('load_at_end', '?')} (the CPU may "
        "be shared with other jobs: the absolute numbers are noisy; compare rows measured in "
        "the same run).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
