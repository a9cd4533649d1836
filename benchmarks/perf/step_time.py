#!/usr/bin/env python3
"""Step-time benchmark of the balancing overhead: DB-MTL (each gradient engine) vs EW.

One training step = ``zero_grad`` + forward + backward (plain ``sum(losses).backward()`` for
EW, ``balancer.backward(losses, representation=z)`` otherwise) + ``Adam.step()``, on fixed
random data already on the device. Four model shapes, built here from plain torch,
torchvision and torch_geometric (no other package of this repository):

* ``resnet18``: ResNet-18 encoder (fc removed), 3 linear heads 512→31 (Office-31 shape);
* ``deeplab``:  DeepLabV3's dilated ResNet-50 backbone, 3 ASPP heads for segmentation (13
  classes), depth and surface normals (NYUv2 shape);
* ``ctr``:      26 embedding tables + 13 dense features → MLP 512-256, 2 logistic heads;
* ``qm9``:      the NNConv + GRU + Set2Set encoder of PyG's ``examples/qm9_nn_conv.py``, 11
  regression heads (plus variants with ``mtlbalance.without_cudnn_rnn``).

Usage (see README.md next to this file)::

    python benchmarks/perf/step_time.py                      # all shapes, full size, auto device
    python benchmarks/perf/step_time.py --size small --device cpu --out /tmp/perf
    python benchmarks/perf/step_time.py --shapes qm9 --configs ew dbmtl-auto --tag h100

Writes ``step_time-<tag or device>-<size>.json`` and ``.md`` into ``--out`` after every
configuration (a run cut short keeps what it measured) and prints the Markdown table at the
end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]

try:
    import mtlbalance
except ImportError:  # not installed (e.g. a bare GPU machine): use the repository's source
    sys.path.insert(0, str(REPO / "packages" / "mtlbalance" / "src"))
    import mtlbalance

from _step_report import (  # noqa: E402 (after the mtlbalance fallback)
    TARGETS,
    add_ratios,
    comparison_markdown,
    load_for_merge,
    machine_info,
    markdown,
    mib,
    write_outputs,
)
from _step_shapes import SHAPE_CLASSES, SHAPES, Shape  # noqa: E402


# ------------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class Config:
    name: str
    method: str  # "ew" (plain sum backward), "ew-balancer", "dbmtl"
    engine: str | None = None
    nocudnn: bool = False
    mode: str = "exact"  # Balancer(mode=...): the fast, approximate modes (issue 12)


COMMON_CONFIGS = (
    Config("ew", "ew"),
    Config("ew-balancer", "ew-balancer"),
    Config("dbmtl-loop", "dbmtl", "loop"),
    Config("dbmtl-batched", "dbmtl", "batched"),
    Config("dbmtl-representation", "dbmtl", "representation"),
    Config("dbmtl-auto", "dbmtl", "auto"),
    Config("dbmtl-probe", "dbmtl", "auto", mode="probe"),
    Config("dbmtl-rep", "dbmtl", "auto", mode="representation"),
    Config("dbmtl-periodic", "dbmtl", "auto", mode="periodic"),
)
RNN_CONFIGS = (
    Config("ew-nocudnn", "ew", nocudnn=True),
    Config("dbmtl-batched-nocudnn", "dbmtl", "batched", nocudnn=True),
    Config("dbmtl-representation-nocudnn", "dbmtl", "representation", nocudnn=True),
)
#: The plain EW configuration again at the end of each shape, to show drift.
EW_END = Config("ew-end", "ew")
ALL_CONFIG_NAMES = [c.name for c in (*COMMON_CONFIGS, *RNN_CONFIGS, EW_END)]


def configs_for(shape: str, only: Sequence[str] | None) -> list[Config]:
    configs = list(COMMON_CONFIGS)
    if shape == "qm9":
        configs += RNN_CONFIGS
    configs.append(EW_END)
    if only:
        configs = [c for c in configs if c.name in only]
    return configs


# ------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def summarize_warnings(caught: Sequence[warnings.WarningMessage]) -> list[dict[str, Any]]:
    """Unique warnings (category + message) in order of first appearance, with counts."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for w in caught:
        key = (w.category.__name__, str(w.message))
        if key in seen:
            seen[key]["count"] += 1
        else:
            seen[key] = {
                "category": key[0],
                "message": key[1],
                "where": f"{w.filename}:{w.lineno}",
                "count": 1,
            }
    return list(seen.values())


def measure(
    shape: Shape,
    config: Config,
    data: Any,
    device: torch.device,
    args: argparse.Namespace,
    row: dict[str, Any],
) -> None:
    """Build model + optimizer + balancer, warm up, time; fills ``row`` (raises on failure)."""
    torch.manual_seed(args.seed)
    encoder, heads = shape.make_model()
    if config.nocudnn:
        mtlbalance.without_cudnn_rnn(encoder)
    encoder.to(device).train()
    heads.to(device).train()
    row["shared_params"] = sum(p.numel() for p in encoder.parameters())
    row["task_params"] = sum(p.numel() for p in heads.parameters())
    optimizer = torch.optim.Adam([*encoder.parameters(), *heads.parameters()], lr=1e-4)
    balancer: mtlbalance.Balancer | None = None
    options: dict[str, Any] = {"check_finite": not args.no_check_finite}
    if config.method == "ew-balancer":
        balancer = mtlbalance.EW(encoder, dict(heads), **options)
    elif config.method == "dbmtl":
        if config.mode != "exact":
            options["mode"] = config.mode
        balancer = mtlbalance.DBMTL(
            encoder, dict(heads), engine=config.engine, beta=0.9, sigma=0.5, **options
        )
    last: dict[str, Any] = {}

    def step() -> str | None:
        optimizer.zero_grad(set_to_none=True)
        z, losses = shape.forward(encoder, heads, data)
        engine = None
        if balancer is None:
            sum(losses.values(), torch.zeros((), device=device)).backward()
        else:
            engine = balancer.backward(losses, representation=z).engine
        optimizer.step()
        last["losses"] = losses
        return engine

    warmup = args.auto_warmup if config.engine == "auto" else args.warmup
    row["warmup"] = warmup
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        row["peak_warmup_mib"] = mib(torch.cuda.max_memory_allocated(device))
        torch.cuda.reset_peak_memory_stats(device)

    times: list[float] = []
    engines: list[str | None] = []
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for _ in range(args.steps):
        synchronize(device)
        start = clock()
        engines.append(step())
        synchronize(device)
        times.append(clock() - start)

    if device.type == "cuda":
        row["peak_timed_mib"] = mib(torch.cuda.max_memory_allocated(device))
    ms = sorted(t * 1e3 for t in times)
    q1, median, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    row.update(
        median_ms=round(median, 3),
        iqr_ms=round(q3 - q1, 3),
        q1_ms=round(q1, 3),
        q3_ms=round(q3, 3),
        min_ms=round(ms[0], 3),
        max_ms=round(ms[-1], 3),
        times_ms=[round(t * 1e3, 3) for t in times],
    )
    used = sorted({e for e in engines if e is not None})
    row["engine_used"] = used[0] if len(used) == 1 else (",".join(used) or None)
    losses = last["losses"]
    row["last_losses"] = {t: float(v.detach()) for t, v in losses.items()}
    row["losses_finite"] = all(torch.isfinite(v).item() for v in losses.values())
    if balancer is not None:
        engine = balancer.engine
        row["balancer_engine"] = engine.name
        if config.engine not in (None, "auto") and engine.name != config.engine:
            row["fallback"] = f"{config.engine} -> {engine.name}"
        if isinstance(engine, mtlbalance.engines.AutoEngine):
            row["auto_chosen"] = engine.chosen
            row["auto_timings_ms"] = {
                k: [round(v * 1e3, 3) for v in vs] for k, vs in engine.timings.items()
            }
            row["auto_dropped"] = dict(engine.dropped)


def run_config(
    shape: Shape, config: Config, data: Any, device: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "shape": shape.name,
        "config": config.name,
        "method": config.method,
        "engine_requested": config.engine,
        "nocudnn": config.nocudnn,
        "steps": args.steps,
    }
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            measure(shape, config, data, device, args, row)
        except Exception as err:  # OOM, unsupported op, ...: an error row, not a crash
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc()
    if device.type == "cuda":
        # The peak of the whole configuration (build, warm-up, timed steps); measure() resets
        # the counter after the warm-up to record the timed steps' own peak as well.
        peak = mib(torch.cuda.max_memory_allocated(device))
        row["peak_mib"] = max(peak, row.get("peak_warmup_mib", 0.0))
    row["wall_s"] = round(time.perf_counter() - started, 2)
    row["warnings"] = summarize_warnings(caught)
    del caught
    free_memory(device)
    return row


# ------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--warmup", type=int, default=None, help="default: 5 full, 2 small")
    parser.add_argument(
        "--auto-warmup",
        type=int,
        default=None,
        help="warm-up of dbmtl-auto (its trial steps happen here); default: warmup + 8",
    )
    parser.add_argument("--steps", type=int, default=None, help="default: 20 full, 5 small")
    parser.add_argument(
        "--configs", nargs="+", choices=ALL_CONFIG_NAMES, default=None, help="default: all"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "perf")
    parser.add_argument("--tag", default=None, help="file name tag; default: the device type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-check-finite",
        action="store_true",
        help="build the balancers with check_finite=False (skips one small D2H copy per step)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of the other shapes already in the output file (one shape per "
        "command, e.g. under a time limit, into one table)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=SRC",
        default=None,
        help="measure several mtlbalance sources in one run (SRC: a packages/mtlbalance/src "
        "folder, e.g. of a `git worktree` of another commit): each shape runs in a fresh "
        "process per source, the sources alternating (ABBA...) over --rounds rounds; writes "
        "step_time-<tag>-<size>-compare.{json,md} with each source's ratios to EW and the "
        "ratios between sources",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per source (--compare)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what a step's time is: wall clock (default), or the process's CPU time "
        "(time.process_time; CPU only), which other jobs on a shared machine disturb far less",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    small = args.size == "small"
    if args.warmup is None:
        args.warmup = 2 if small else 5
    if args.steps is None:
        args.steps = 5 if small else 20
    if args.auto_warmup is None:
        args.auto_warmup = args.warmup + 8
    if args.auto_warmup < 8:
        parser.error(
            "--auto-warmup must be >= 8 (the auto engine's verification step and 2 timed "
            "steps per candidate engine happen in the warm-up)"
        )
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_shapes(
    args: argparse.Namespace,
    device: torch.device,
    shapes: dict[str, str],
    on_row: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
) -> list[dict[str, Any]]:
    """Every configuration of every shape in ``args.shapes``: one row each (``shapes`` gets
    each shape's description)."""
    rows: list[dict[str, Any]] = []
    for name in args.shapes:
        shape: Shape = SHAPE_CLASSES[name](small=args.size == "small")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch_geometric's import noise
                data = shape.make_data(torch.Generator().manual_seed(args.seed), device)
        except Exception as err:  # e.g. torch_geometric missing: an error row for the shape
            rows.append(
                {
                    "shape": name,
                    "config": "data",
                    "method": "-",
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(),
                }
            )
            log(f"[{name}] cannot build the data: {err}")
            continue
        shapes[name] = shape.describe()
        log(f"[{name}] {shape.describe()}")
        for config in configs_for(name, args.configs):
            row = run_config(shape, config, data, device, args)
            rows.append(row)
            add_ratios(rows)
            if "error" in row:
                log(f"[{name}] {config.name}: ERROR {row['error'].splitlines()[0][:300]}")
            else:
                log(
                    f"[{name}] {config.name}: median {row['median_ms']:.2f} ms, IQR "
                    f"{row['iqr_ms']:.2f}, ratio {row.get('ratio_to_ew', float('nan')):.2f}, "
                    f"engine {row.get('engine_used')}, {len(row['warnings'])} warning(s), "
                    f"{row['wall_s']:.1f} s"
                )
            on_row(rows)
        del data
        free_memory(device)
    return rows


def settings_of(args: argparse.Namespace, tag: str) -> dict[str, Any]:
    return {
        "tag": tag,
        "size": args.size,
        "shapes": args.shapes,
        "configs": args.configs,
        "warmup": args.warmup,
        "auto_warmup": args.auto_warmup,
        "steps": args.steps,
        "seed": args.seed,
        "no_check_finite": args.no_check_finite,
        "optimizer": "torch.optim.Adam(lr=1e-4)",
        "dbmtl": {"beta": 0.9, "sigma": 0.5},
        "merge": args.merge,
        "compare": args.compare,
        "rounds": args.rounds if args.compare else None,
        "clock": args.clock,
        "threads": args.threads,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type == "cuda":
        print("error: --clock cpu times host CPU work only; use it with --device cpu")
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tag = args.tag or device.type
    if args.worker_out is not None:  # one source's rows, for --compare
        shapes: dict[str, str] = {}
        rows = measure_shapes(args, device, shapes)
        payload = {"rows": rows, "shapes": shapes, "machine": machine_info(device)}
        args.worker_out.write_text(json.dumps(payload))
        return 0
    if args.compare:
        return compare(args, device, tag)
    stem = f"step_time-{tag}-{args.size}"
    settings = settings_of(args, tag)
    machine = machine_info(device)
    result: dict[str, Any] = {
        "benchmark": "step_time",
        "run": 0,
        "settings": settings,
        "machine": machine,
        "targets_h100_ratio_to_ew": TARGETS,
        "runs": [{"run": 0, "shapes": args.shapes, "settings": settings, "machine": machine}],
        "shapes": {},
        "rows": [],
    }
    if args.merge:
        load_for_merge(args.out / f"{stem}.json", args.shapes, result)
    total = time.perf_counter()
    rows = measure_shapes(
        args, device, result["shapes"], lambda rows: write_outputs(result, rows, args.out, stem)
    )
    result["total_wall_s"] = round(time.perf_counter() - total, 1)
    json_path, md_path = write_outputs(result, rows, args.out, stem)
    print(markdown(result))
    log(f"wrote {json_path} and {md_path} ({result['total_wall_s']} s)")
    return 0


def _worker_command(args: argparse.Namespace, shape: str, out: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-out", str(out)]
    cmd += ["--shapes", shape, "--size", args.size, "--device", args.device]
    cmd += ["--warmup", str(args.warmup), "--auto-warmup", str(args.auto_warmup)]
    cmd += ["--steps", str(args.steps), "--seed", str(args.seed), "--clock", args.clock]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.configs:
        cmd += ["--configs", *args.configs]
    if args.no_check_finite:
        cmd.append("--no-check-finite")
    return cmd


def compare(args: argparse.Namespace, device: torch.device, tag: str) -> int:
    """``--compare``: every source measures every shape in a fresh process, the sources
    alternating (A B, then B A, ...) so that slow drift of a shared machine falls on both;
    each source's step times are pooled over the rounds."""
    sources: dict[str, Path] = {}
    for item in args.compare:
        label, _, path = item.partition("=")
        if not label or not path or not Path(path, "mtlbalance").is_dir():
            print(f"error: --compare {item!r}: want LABEL=<a packages/mtlbalance/src folder>")
            return 2
        sources[label] = Path(path).resolve()
    stem = f"step_time-{tag}-{args.size}-compare"
    result: dict[str, Any] = {
        "benchmark": "step_time --compare",
        "settings": settings_of(args, tag),
        "machine": machine_info(device),
        "sources": {label: str(path) for label, path in sources.items()},
        "shapes": {},
        "rows": [],
        "workers": [],
    }
    total = time.perf_counter()
    labels = list(sources)
    for name in args.shapes:
        for r in range(args.rounds):
            for label in labels if r % 2 == 0 else labels[::-1]:
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "rows.json"
                    env = dict(os.environ)
                    env["PYTHONPATH"] = os.pathsep.join(
                        [str(sources[label]), env.get("PYTHONPATH", "")]
                    )
                    log(f"[{name}] round {r + 1}/{args.rounds}: {label} ({sources[label]})")
                    done = subprocess.run(_worker_command(args, name, out), env=env, check=False)
                    if done.returncode != 0 or not out.is_file():
                        result["workers"].append(
                            {"shape": name, "round": r, "source": label, "error": done.returncode}
                        )
                        continue
                    payload = json.loads(out.read_text())
                result["shapes"].update(payload["shapes"])
                result["workers"].append(
                    {
                        "shape": name,
                        "round": r,
                        "source": label,
                        "mtlbalance_path": payload["machine"]["mtlbalance_path"],
                    }
                )
                for row in payload["rows"]:
                    row.update(source=label, round=r)
                    result["rows"].append(row)
                _write_compare(result, labels, args.out, stem)
    result["total_wall_s"] = round(time.perf_counter() - total, 1)
    json_path, md_path = _write_compare(result, labels, args.out, stem)
    print(md_path.read_text())
    log(f"wrote {json_path} and {md_path} ({result['total_wall_s']} s)")
    return 0


def _write_compare(
    result: dict[str, Any], labels: list[str], out_dir: Path, stem: str
) -> tuple[Path, Path]:
    pooled: dict[tuple[str, str, str], list[float]] = {}
    for row in result["rows"]:
        if "times_ms" in row:
            key = (row["shape"], row["config"], row["source"])
            pooled.setdefault(key, []).extend(row["times_ms"])
    summary = []
    for (shape, config, source), times in pooled.items():
        ms = sorted(times)
        q1, median, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        summary.append(
            {
                "shape": shape,
                "config": config,
                "source": source,
                "steps": len(ms),
                "median_ms": round(median, 3),
                "iqr_ms": round(q3 - q1, 3),
            }
        )
    result["summary"] = summary
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(comparison_markdown(result, labels))
    return json_path, md_path


if __name__ == "__main__":
    sys.exit(main())
