"""The reports of the step-time benchmark (``step_time.py``): machine information, ratios to
EW, the Markdown table, the JSON/Markdown files (``--merge`` keeps other shapes' rows)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _step_shapes import SHAPES

REPO = Path(__file__).resolve().parents[2]

#: Targets from the issue (H100, full size): DB-MTL step time / EW step time.
TARGETS: dict[str, float] = {"resnet18": 2.0, "deeplab": 1.7, "ctr": 1.25, "qm9": 4.0}


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def machine_info(device: torch.device) -> dict[str, Any]:
    import mtlbalance  # (the one the running script imported: the environment's or the repo's)

    info: dict[str, Any] = {
        # timezone.utc, not datetime.UTC: the script also runs on Python 3.10.
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        "argv": list(sys.argv),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "mtlbalance": getattr(mtlbalance, "__version__", None),
        "mtlbalance_path": str(Path(mtlbalance.__file__).parent),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    for dist in ("torchvision", "torch_geometric"):
        try:  # the installed version, without importing it
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # only the shapes that need it fail
            info[dist] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_mib"] = mib(props.total_memory)
        info["cudnn"] = torch.backends.cudnn.version()
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        info["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    info["git_commit"] = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    info["git_dirty"] = None if status is None else bool(status)
    return info


def _git(*cmd: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *cmd], capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratio of each row's median to the first ``ew`` median of the same shape."""
    base: dict[str, float] = {}
    for row in rows:
        if row["config"] == "ew" and "median_ms" in row:
            base.setdefault(row["shape"], row["median_ms"])
    for row in rows:
        ew = base.get(row["shape"])
        if ew and "median_ms" in row:
            row["ratio_to_ew"] = round(row["median_ms"] / ew, 3)


def _notes(row: dict[str, Any]) -> str:
    notes = []
    if "error" in row:
        notes.append("ERROR " + row["error"].splitlines()[0][:160])
    if row.get("auto_chosen"):
        medians = {k: statistics.median(v) for k, v in row.get("auto_timings_ms", {}).items() if v}
        shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(medians.items(), key=lambda x: x[1]))
        notes.append(f"auto picked {row['auto_chosen']} (trial ms: {shown})")
    for name, why in row.get("auto_dropped", {}).items():
        notes.append(f"auto dropped {name}: {why[:120]}")
    if row.get("fallback"):
        notes.append(f"fell back {row['fallback']}")
    if row.get("losses_finite") is False:
        notes.append("NON-FINITE LOSS")
    mtl_warnings = [w for w in row.get("warnings", []) if "mtlbalance" in w["message"]]
    other = len(row.get("warnings", [])) - len(mtl_warnings)
    for w in mtl_warnings:
        if "auto engine: not using" in w["message"]:
            continue  # already shown as "auto dropped"
        notes.append("warning: " + w["message"][:200])
    if other:
        notes.append(f"{other} other warning(s), see JSON")
    return "; ".join(notes).replace("|", "\\|")


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    info, rows = result["machine"], result["rows"]
    settings = result["settings"]
    gpu = info.get("gpu") or "—"
    lines = [
        f"# Step time: DB-MTL vs EW ({settings['tag']}, size {settings['size']})",
        "",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}; host: {info['hostname']}; git: {info['git_commit'] or '—'}"
        + (" (dirty)" if info.get("git_dirty") else ""),
        f"- device: {info['device']}; GPU: {gpu}; torch {info['torch']}; CUDA "
        f"{info['cuda'] or '—'}; cuDNN benchmark: {info.get('cudnn_benchmark', '—')}; "
        f"CPUs: {info['cpu_count']} (torch threads {info['torch_threads']})",
        f"- step = zero_grad + forward + backward/balancer.backward + Adam(lr 1e-4); warm-up "
        f"{settings['warmup']} steps ({settings['auto_warmup']} for dbmtl-auto), "
        f"{settings['steps']} timed steps; median and IQR in ms; ratio = median / first `ew` "
        f"median of the shape; peak = max_memory_allocated over the whole configuration; "
        f"check_finite={not settings['no_check_finite']}",
        "- targets (issue, H100, full size): DB-MTL ≤ "
        + ", ".join(f"{v:g}× EW on {k}" for k, v in TARGETS.items()),
    ]
    for run in result["runs"]:
        if run["run"] == result["run"]:
            continue
        m = run["machine"]
        lines.append(
            f"- rows of {', '.join(run['shapes'])} come from an earlier run (merged): "
            f"`{m['command']}` on {m['date']}, {m.get('gpu') or m['device']}, torch {m['torch']}"
        )
    lines += [
        "",
        "| shape | config | median ms | IQR ms | ratio to EW | peak MiB | engine used | notes |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['config']} | {_fmt(r.get('median_ms'), '.1f')} | "
            f"{_fmt(r.get('iqr_ms'), '.1f')} | {_fmt(r.get('ratio_to_ew'), '.2f')} | "
            f"{_fmt(r.get('peak_mib'), '.0f')} | {r.get('engine_used') or '—'} | {_notes(r)} |"
        )
    summary = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        dbmtl = [
            r for r in rows if r["shape"] == shape and r["method"] == "dbmtl" and "ratio_to_ew" in r
        ]
        if not dbmtl:
            continue
        best = min(dbmtl, key=lambda r: r["ratio_to_ew"])
        auto = next((r for r in dbmtl if r["config"] == "dbmtl-auto"), None)
        target = TARGETS.get(shape)
        summary.append(
            f"| {shape} | {best['config']} {best['ratio_to_ew']:.2f}× | "
            + (f"{auto['ratio_to_ew']:.2f}× ({auto.get('auto_chosen')})" if auto else "—")
            + f" | ≤ {target:g}× | "
            + ("yes" if best["ratio_to_ew"] <= (target or 0) else "no")
            + " |"
        )
    if summary:
        lines += [
            "",
            "| shape | best DB-MTL | DB-MTL auto | H100 target | best within target |",
            "|---|---|---|---|---|",
            *summary,
        ]
    lines += ["", "Shapes:", ""]
    lines += [f"- `{k}`: {result['shapes'][k]}" for k in SHAPES if k in result["shapes"]]
    return "\n".join(lines) + "\n"


def load_for_merge(path: Path, shapes: Sequence[str], result: dict[str, Any]) -> None:
    """``--merge``: keep the rows (and their runs) of the shapes this run does not measure."""
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    kept = [r for r in old.get("rows", []) if r["shape"] not in shapes]
    used = {r.get("run") for r in kept}
    runs = [run for run in old.get("runs", []) if run["run"] in used]
    result["kept_rows"] = kept
    result["runs"] = [*runs, *result["runs"]]
    result["run"] = max(run["run"] for run in result["runs"]) + 1
    result["runs"][-1]["run"] = result["run"]
    for name, text in old.get("shapes", {}).items():
        if name not in shapes:
            result["shapes"][name] = text


def write_outputs(
    result: dict[str, Any], rows: list[dict[str, Any]], out_dir: Path, stem: str
) -> tuple[Path, Path]:
    for row in rows:
        row["run"] = result["run"]
    merged = [*result.get("kept_rows", []), *rows]
    order = {name: i for i, name in enumerate(SHAPES)}
    result["rows"] = sorted(merged, key=lambda r: order.get(r["shape"], len(order)))
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    saved = {k: v for k, v in result.items() if k != "kept_rows"}
    json_path.write_text(json.dumps(saved, indent=1) + "\n")
    md_path.write_text(markdown(result))
    return json_path, md_path


def _source_commit(path: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", path, "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip()[:90]


def comparison_markdown(result: dict[str, Any], labels: Sequence[str]) -> str:
    """``--compare``: per shape and configuration, each source's pooled median step time, its
    ratio to that source's own plain-torch EW, and the ratio of the last source to the
    first."""
    info, settings = result["machine"], result["settings"]
    first, last = labels[0], labels[-1]
    med = {(r["shape"], r["config"], r["source"]): r for r in result.get("summary", [])}
    lines = [
        f"# Step time, {' vs '.join(labels)} in one run ({settings['tag']}, size "
        f"{settings['size']})",
        "",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}; host: {info['hostname']}; device: {info['device']}; torch "
        f"{info['torch']}; CPUs: {info['cpu_count']} (torch threads {info['torch_threads']})",
        *(
            f"- `{label}`: `{path}` — {_source_commit(path)}"
            for label, path in result["sources"].items()
        ),
        f"- each source measures each shape in a fresh process, {settings['rounds']} rounds, "
        f"sources alternating (ABBA); per round {settings['warmup']} warm-up steps "
        f"({settings['auto_warmup']} for dbmtl-auto) and {settings['steps']} timed steps; "
        f"medians and IQRs over all timed steps of all rounds (ms); ratio to EW = median / the "
        f"same source's `ew` (plain `sum(losses).backward()`) median; "
        f"`{last}/{first}` = ratio of the two medians",
        "",
        "| shape | config | "
        + " | ".join(f"{label} ms (IQR)" for label in labels)
        + " | "
        + " | ".join(f"{label} ratio to EW" for label in labels)
        + f" | {last}/{first} |",
        "|---|---|" + "---:|" * (2 * len(labels) + 1),
    ]
    configs: dict[tuple[str, str], None] = {}
    for row in result.get("summary", []):
        configs[(row["shape"], row["config"])] = None
    for shape, config in configs:
        cells, ratios = [], []
        for label in labels:
            row = med.get((shape, config, label))
            ew = med.get((shape, "ew", label))
            if row is None:
                cells.append("—")
                ratios.append("—")
                continue
            cells.append(f"{row['median_ms']:.1f} ({row['iqr_ms']:.1f})")
            ratios.append(f"{row['median_ms'] / ew['median_ms']:.3f}" if ew else "—")
        a, b = med.get((shape, config, first)), med.get((shape, config, last))
        change = f"{b['median_ms'] / a['median_ms']:.3f}" if a and b else "—"
        lines.append(
            f"| {shape} | {config} | {' | '.join(cells)} | {' | '.join(ratios)} | {change} |"
        )
    errors = [w for w in result.get("workers", []) if "error" in w]
    errors += [r for r in result.get("rows", []) if "error" in r]
    if errors:
        lines += ["", f"{len(errors)} worker(s)/row(s) failed; see the JSON."]
    return "\n".join(lines) + "\n"
