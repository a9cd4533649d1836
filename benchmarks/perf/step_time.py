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
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[2]

try:
    import mtlbalance
except ImportError:  # not installed (e.g. a bare GPU machine): use the repository's source
    sys.path.insert(0, str(REPO / "packages" / "mtlbalance" / "src"))
    import mtlbalance

SHAPES = ("resnet18", "deeplab", "ctr", "qm9")

#: Targets from the issue (H100, full size): DB-MTL step time / EW step time.
TARGETS: dict[str, float] = {"resnet18": 2.0, "deeplab": 1.7, "ctr": 1.25, "qm9": 4.0}

Losses = dict[str, Tensor]


# ------------------------------------------------------------------------------------ shapes
class Shape:
    """A model shape: fixed data, a fresh model (shared encoder + task heads), the losses."""

    name: str = ""
    tasks: tuple[str, ...] = ()

    def __init__(self, small: bool):
        self.small = small

    def describe(self) -> str:
        raise NotImplementedError

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        raise NotImplementedError

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        raise NotImplementedError

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        """``z = encoder(input)`` and the task losses computed from ``z`` by the heads."""
        raise NotImplementedError


class ResNet18Shape(Shape):
    name = "resnet18"
    tasks = ("amazon", "dslr", "webcam")

    def __init__(self, small: bool):
        super().__init__(small)
        self.batch, self.hw = (4, 64) if small else (64, 224)
        self.classes = 31

    def describe(self) -> str:
        return (
            f"torchvision resnet18 (fc=Identity), batch {self.batch}x3x{self.hw}x{self.hw}, "
            f"{len(self.tasks)} heads Linear(512, {self.classes}), cross-entropy"
        )

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        x = torch.randn(self.batch, 3, self.hw, self.hw, generator=gen)
        ys = {t: torch.randint(0, self.classes, (self.batch,), generator=gen) for t in self.tasks}
        return x.to(device), {t: y.to(device) for t, y in ys.items()}

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        from torchvision.models import resnet18

        encoder = resnet18(weights=None)
        encoder.fc = nn.Identity()
        heads = nn.ModuleDict({t: nn.Linear(512, self.classes) for t in self.tasks})
        return encoder, heads

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        x, ys = data
        z = encoder(x)
        return z, {t: F.cross_entropy(heads[t](z), ys[t]) for t in self.tasks}


class DeepLabEncoder(nn.Module):
    """DeepLabV3's dilated ResNet-50 backbone; returns its ``"out"`` feature map (2048 ch)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_resnet50

        self.backbone = deeplabv3_resnet50(weights=None, weights_backbone=None).backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)["out"]


class DeepLabShape(Shape):
    name = "deeplab"
    tasks = ("segmentation", "depth", "normal")
    channels: dict[str, int] = {"segmentation": 13, "depth": 1, "normal": 3}  # noqa: RUF012

    def __init__(self, small: bool):
        super().__init__(small)
        # Batch 2 at least: the ASPP pooling branch has a BatchNorm over a 1x1 map.
        self.batch, self.h, self.w = (2, 32, 48) if small else (8, 288, 384)

    def describe(self) -> str:
        return (
            f"deeplabv3_resnet50 backbone (dilated ResNet-50, 2048 ch), batch "
            f"{self.batch}x3x{self.h}x{self.w}, 3 DeepLabHead (ASPP) heads: segmentation "
            f"(13, CE), depth (1, L1), normal (3, 1-cos)"
        )

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        b, h, w = self.batch, self.h, self.w
        x = torch.randn(b, 3, h, w, generator=gen)
        seg = torch.randint(0, self.channels["segmentation"], (b, h, w), generator=gen)
        depth = torch.rand(b, 1, h, w, generator=gen) * 10
        normal = F.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1)
        return tuple(t.to(device) for t in (x, seg, depth, normal))

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        encoder = DeepLabEncoder()
        heads = nn.ModuleDict({t: DeepLabHead(2048, c) for t, c in self.channels.items()})
        return encoder, heads

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        x, seg, depth, normal = data
        z = encoder(x)
        size = x.shape[-2:]

        def out(task: str) -> Tensor:
            return F.interpolate(heads[task](z), size=size, mode="bilinear", align_corners=False)

        pred_normal = F.normalize(out("normal"), dim=1)
        losses = {
            "segmentation": F.cross_entropy(out("segmentation"), seg, ignore_index=-1),
            "depth": F.l1_loss(out("depth"), depth),
            "normal": 1 - (pred_normal * normal).sum(dim=1).mean(),
        }
        return z, losses


class CTREncoder(nn.Module):
    """Sparse embeddings (sum-pooled bags of one id, dense gradients) + dense features → MLP."""

    def __init__(self, tables: int, rows: int, dim: int, dense: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for _ in range(tables))
        self.mlp = nn.Sequential(
            nn.Linear(tables * dim + dense, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU()
        )

    def forward(self, ids: Tensor, dense: Tensor) -> Tensor:
        embs = [table(ids[:, i : i + 1]) for i, table in enumerate(self.tables)]
        return self.mlp(torch.cat([*embs, dense], dim=1))


class CTRShape(Shape):
    name = "ctr"
    tasks = ("click", "conversion")

    def __init__(self, small: bool):
        super().__init__(small)
        self.tables, self.dim, self.dense = 26, 16, 13
        self.rows, self.batch = (1_000, 256) if small else (100_000, 4096)

    def describe(self) -> str:
        return (
            f"{self.tables} EmbeddingBag(sum) tables {self.rows}x{self.dim} (dense grads) + "
            f"{self.dense} dense features -> MLP 512-256, batch {self.batch}, "
            f"{len(self.tasks)} heads Linear(256, 1), BCE-with-logits"
        )

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        ids = torch.randint(0, self.rows, (self.batch, self.tables), generator=gen)
        dense = torch.randn(self.batch, self.dense, generator=gen)
        labels = torch.randint(0, 2, (self.batch, len(self.tasks)), generator=gen).float()
        return ids.to(device), dense.to(device), labels.to(device)

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        encoder = CTREncoder(self.tables, self.rows, self.dim, self.dense)
        heads = nn.ModuleDict({t: nn.Linear(256, 1) for t in self.tasks})
        return encoder, heads

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        ids, dense, labels = data
        z = encoder(ids, dense)
        losses = {
            t: F.binary_cross_entropy_with_logits(heads[t](z).squeeze(-1), labels[:, i])
            for i, t in enumerate(self.tasks)
        }
        return z, losses


class QM9Encoder(nn.Module):
    """The encoder of PyG's examples/qm9_nn_conv.py, up to ``relu(lin1(set2set(...)))``."""

    def __init__(self, in_dim: int = 11, edge_dim: int = 5, dim: int = 64):
        super().__init__()
        from torch_geometric.nn import NNConv, Set2Set

        self.lin0 = nn.Linear(in_dim, dim)
        net = nn.Sequential(nn.Linear(edge_dim, 128), nn.ReLU(), nn.Linear(128, dim * dim))
        self.conv = NNConv(dim, dim, net, aggr="mean")
        self.gru = nn.GRU(dim, dim)
        self.set2set = Set2Set(dim, processing_steps=3)
        self.lin1 = nn.Linear(2 * dim, dim)

    def forward(self, data: Any) -> Tensor:
        out = F.relu(self.lin0(data.x))
        h = out.unsqueeze(0)
        for _ in range(3):
            m = F.relu(self.conv(out, data.edge_index, data.edge_attr))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        # dim_size given: no device-to-host sync for index.max() on every step.
        out = self.set2set(out, data.batch, dim_size=data.num_graphs)
        return F.relu(self.lin1(out))


class QM9Shape(Shape):
    name = "qm9"
    tasks = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G")

    def __init__(self, small: bool):
        super().__init__(small)
        # Small: fewer and smaller molecules (NNConv's per-edge 64x64 weights dominate on CPU).
        self.molecules, self.atoms = (4, (6, 12)) if small else (128, (10, 26))
        self.edges = 0
        self.nodes = 0

    def describe(self) -> str:
        return (
            f"NNConv(aggr=mean)+GRU x3 + Set2Set(3) + Linear(128,64) encoder, {self.molecules} "
            f"random molecules of {self.atoms[0]}-{self.atoms[1]} atoms, complete graphs "
            f"({self.nodes} nodes, {self.edges} edges), {len(self.tasks)} heads Linear(64, 1), MSE"
        )

    def make_data(self, gen: torch.Generator, device: torch.device) -> Any:
        from torch_geometric.data import Batch, Data

        graphs = []
        for _ in range(self.molecules):
            n = int(torch.randint(self.atoms[0], self.atoms[1] + 1, (1,), generator=gen))
            idx = torch.arange(n)
            src, dst = idx.repeat_interleave(n), idx.repeat(n)
            keep = src != dst
            edge_index = torch.stack([src[keep], dst[keep]])
            graphs.append(
                Data(
                    x=torch.randn(n, 11, generator=gen),
                    edge_index=edge_index,
                    edge_attr=torch.rand(edge_index.shape[1], 5, generator=gen),
                    y=torch.randn(1, len(self.tasks), generator=gen),
                )
            )
        batch = Batch.from_data_list(graphs)
        self.nodes, self.edges = int(batch.num_nodes), int(batch.num_edges)
        return batch.to(device)

    def make_model(self) -> tuple[nn.Module, nn.ModuleDict]:
        heads = nn.ModuleDict({t: nn.Linear(64, 1) for t in self.tasks})
        return QM9Encoder(), heads

    def forward(self, encoder: nn.Module, heads: nn.ModuleDict, data: Any) -> tuple[Tensor, Losses]:
        z = encoder(data)
        losses = {
            t: F.mse_loss(heads[t](z).squeeze(-1), data.y[:, i]) for i, t in enumerate(self.tasks)
        }
        return z, losses


SHAPE_CLASSES: dict[str, type[Shape]] = {
    "resnet18": ResNet18Shape,
    "deeplab": DeepLabShape,
    "ctr": CTRShape,
    "qm9": QM9Shape,
}


# ------------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class Config:
    name: str
    method: str  # "ew" (plain sum backward), "ew-balancer", "dbmtl"
    engine: str | None = None
    nocudnn: bool = False


COMMON_CONFIGS = (
    Config("ew", "ew"),
    Config("ew-balancer", "ew-balancer"),
    Config("dbmtl-loop", "dbmtl", "loop"),
    Config("dbmtl-batched", "dbmtl", "batched"),
    Config("dbmtl-representation", "dbmtl", "representation"),
    Config("dbmtl-auto", "dbmtl", "auto"),
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


def mib(n: int) -> float:
    return round(n / 2**20, 1)


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
    for _ in range(args.steps):
        synchronize(device)
        start = time.perf_counter()
        engines.append(step())
        synchronize(device)
        times.append(time.perf_counter() - start)

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


# ------------------------------------------------------------------------------------ report
def machine_info(device: torch.device) -> dict[str, Any]:
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tag = args.tag or device.type
    stem = f"step_time-{tag}-{args.size}"
    settings = {
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
    }
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
    rows: list[dict[str, Any]] = []
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    total = time.perf_counter()
    for name in args.shapes:
        shape = SHAPE_CLASSES[name](small=args.size == "small")
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
        result["shapes"][name] = shape.describe()
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
            write_outputs(result, rows, args.out, stem)
        del data
        free_memory(device)
    result["total_wall_s"] = round(time.perf_counter() - total, 1)
    json_path, md_path = write_outputs(result, rows, args.out, stem)
    print(markdown(result))
    log(f"wrote {json_path} and {md_path} ({result['total_wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
