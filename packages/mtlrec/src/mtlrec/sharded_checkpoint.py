"""Checkpoint and resume of a sharded run (TorchRec ``DistributedModelParallel``).

:func:`save_sharded` writes, and :func:`load_sharded` restores, everything a run built with
:func:`mtlrec.distributed.shard_model` needs to continue bit for bit on the same ranks (or,
resharded, on another number of ranks or with another plan):

- each rank's **table shards** and the dense parameters (``dmp.state_dict()``: the sharded
  tables as ``ShardedTensor`` whose ``local_shards()`` carry their offsets, the replicated
  tables and dense layers as tensors);
- the **fused optimizer's state** of those shards (``dmp.fused_optimizer.state_dict()``, a
  ``KeyedOptimizer`` over ``ShardedTensor`` s: Adagrad's sum of squares ``momentum1``, …),
  and each fused kernel's step counter (fbgemm's ``iter``, which fused Adam's bias
  correction reads and TorchRec's state dict leaves out);
- the dense optimizers' ``state_dict`` s, the balancer's ``state_dict``, the step, plain
  ``extra`` values (a data position, …) and this rank's RNG states
  (:func:`mtltrain.checkpoint.rng_state`).

Layout of ``directory`` (it must be one directory every rank can read and write)::

    manifest.pt                      rank 0, written last: which save is complete
    save-<step>-<token>/rank{r}-of-{W}.pt   one file per rank, its own shards and state

Every file is written by :func:`mtltrain.checkpoint.atomic_save` (temporary file, fsync,
rename; a SHA-256 trailer) and read by :func:`mtltrain.checkpoint.load_file`
(``weights_only=True``: tensors and plain values, nothing unpickled — unlike
``torch.distributed.checkpoint``'s ``FileSystemReader``, which unpickles its ``.metadata``).
A save writes a fresh ``save-*`` folder; after every rank has written its file, rank 0
writes the manifest (the world size, the step, the plan, and the SHA-256 of every rank's
file), then removes the older folders. A kill at any moment therefore leaves the previous
manifest and the folder it names intact: the previous complete checkpoint stays usable.

Loading refuses, on every rank at once (the ranks agree on the outcome before anything is
restored, so none trains on while another failed), with a :class:`CheckpointError` naming
the file and what to do:

- a different world size or sharding plan, unless ``reshard=True`` (otherwise: resume with
  the same number of processes and the same plan — :func:`saved_plan` gives the saved one
  for ``shard_model(plan=...)`` — or pass ``reshard=True``);
- a rank file that is not the one the manifest names (its SHA-256 differs), damaged, or not
  data only;
- a shard whose offsets or sizes, a table, a dense parameter or an optimizer state that does
  not match this run's model (a different model or optimizer).

Resharding (``load_sharded(..., reshard=True)``) loads a checkpoint saved at another world
size or with another plan: each rank fills its table shards, and every fused optimizer state
tensor of them, from the overlapping regions of the saved shards (offsets and sizes from the
manifest's plan and the rank files); the replicated state comes from rank 0's file, checked
identical in every saved rank's. Refused there: another model (a table missing or of another
shape), another fused optimizer, a row-wise optimizer state (row-wise Adagrad) whose table's
column split changes, fused state that would have to be invented or dropped (a stateful fused
optimizer on a table moving between data-parallel and sharded), a dense optimizer whose
parameters changed. See :func:`load_sharded`.
"""

from __future__ import annotations

import re
import shutil
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtltrain.checkpoint import CheckpointError, atomic_save, load_file, rng_state, set_rng_state

__all__ = [
    "MANIFEST",
    "SHARDED_FORMAT",
    "CheckpointError",
    "Resumed",
    "has_sharded_checkpoint",
    "load_sharded",
    "plan_summary",
    "save_sharded",
    "saved_extra",
    "saved_plan",
]

SHARDED_FORMAT = 1
"""Version of the layout below (manifest and rank files)."""
MANIFEST = "manifest.pt"
_KIND = "mtlrec.sharded_checkpoint"
_SAVE_DIR = re.compile(r"save-\d+-[0-9a-f]{12}")
# mtltrain.checkpoint's trailer (its module doc): magic (8) | payload length (8) | SHA-256 (32)
_TRAILER = struct.Struct("<8sQ32s")


class _Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> Any: ...


@dataclass
class Resumed:
    """What :func:`load_sharded` restored: the ``step`` given to :func:`save_sharded`, its
    ``extra`` values, and the checkpoint's folder."""

    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


# ---------------------------------------------------------------------- helpers
def _world() -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: a sharded checkpoint is saved and loaded by "
            "every rank of the job (call torch.distributed.init_process_group first)"
        )
    return dist.get_rank(), dist.get_world_size()


def _rank_file(rank: int, world: int) -> str:
    return f"rank{rank}-of-{world}.pt"


def _digest(path: Path) -> str:
    """The SHA-256 that :func:`atomic_save` wrote into ``path``'s trailer (hex)."""
    with open(path, "rb") as f:
        f.seek(-_TRAILER.size, 2)
        _, _, digest = _TRAILER.unpack(f.read(_TRAILER.size))
    return bytes(digest).hex()


def _is_sharded(value: Any) -> bool:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return isinstance(value, ShardedTensor)


def _pack(value: Any) -> Any:
    """A state-dict value as plain data: a ShardedTensor becomes its global size and this
    rank's shards (offsets, sizes, a copy of the values); a tensor is copied."""
    if _is_sharded(value):
        return {
            "sharded": list(value.size()),
            "shards": [
                {
                    "offsets": list(s.metadata.shard_offsets),
                    "sizes": list(s.metadata.shard_sizes),
                    "tensor": s.tensor.detach().cpu().clone(),
                }
                for s in value.local_shards()
            ],
        }
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: _pack(v) for k, v in value.items()}
    return value


def _describe(value: Any) -> str:
    if _is_sharded(value):
        shards = [
            (list(s.metadata.shard_offsets), list(s.metadata.shard_sizes))
            for s in value.local_shards()
        ]
        return f"sharded {list(value.size())}, local shards (offsets, sizes) {shards}"
    if isinstance(value, Tensor):
        return f"tensor {list(value.shape)} {value.dtype}"
    if isinstance(value, Mapping) and "sharded" in value:
        shards = [(s["offsets"], s["sizes"]) for s in value["shards"]]
        return f"sharded {value['sharded']}, local shards (offsets, sizes) {shards}"
    return type(value).__name__


def _match(target: Any, saved: Any, where: str, problems: list[str]) -> None:
    """Check that ``saved`` (from :func:`_pack`) fits ``target`` (this run's value) exactly:
    the same keys, shards at the same offsets with the same sizes, the same shapes/dtypes."""
    if _is_sharded(target):
        mine = [
            (list(s.metadata.shard_offsets), list(s.metadata.shard_sizes))
            for s in target.local_shards()
        ]
        theirs = (
            [(s["offsets"], s["sizes"]) for s in saved["shards"]]
            if isinstance(saved, Mapping) and "sharded" in saved
            else None
        )
        if theirs != mine or list(target.size()) != saved.get("sharded"):
            problems.append(
                f"{where}: this run has {_describe(target)}, the file {_describe(saved)}"
            )
            return
        for s, t in zip(target.local_shards(), saved["shards"], strict=True):
            if not isinstance(t["tensor"], Tensor) or t["tensor"].dtype != s.tensor.dtype:
                problems.append(f"{where}: shard at {t['offsets']} has another dtype")
    elif isinstance(target, Tensor):
        if (
            not isinstance(saved, Tensor)
            or saved.shape != target.shape
            or saved.dtype != target.dtype
        ):
            problems.append(
                f"{where}: this run has {_describe(target)}, the file {_describe(saved)}"
            )
    elif isinstance(target, Mapping):
        if not isinstance(saved, Mapping):
            problems.append(f"{where}: this run has a dict, the file {_describe(saved)}")
            return
        missing, unknown = sorted(set(target) - set(saved)), sorted(set(saved) - set(target))
        if missing or unknown:
            problems.append(
                f"{where}: entries only in this run {missing}, only in the file {unknown}"
            )
            return
        for k in target:
            _match(target[k], saved[k], f"{where}[{k!r}]", problems)


@torch.no_grad()
def _fill(target: Any, saved: Any) -> Any:
    """``target`` (this run's state dict) with the checked ``saved`` values: tensors copied
    in place (a ShardedTensor's local shards at their offsets), other values taken from the
    file."""
    if _is_sharded(target):
        for s, t in zip(target.local_shards(), saved["shards"], strict=True):
            s.tensor.copy_(t["tensor"])
        return target
    if isinstance(target, Tensor):
        target.copy_(saved)
        return target
    if isinstance(target, Mapping):
        return {k: _fill(target[k], saved[k]) for k in target}
    return saved


def _fused_kernels(fused: Any) -> dict[str, Any]:
    """The fbgemm kernels behind the fused optimizer (``path`` -> kernel), found by walking
    TorchRec's ``CombinedOptimizer`` tree down to its ``EmbeddingFusedOptimizer`` leaves.

    Each kernel counts its steps in a buffer (``iter``) that fused Adam and LAMB use for their
    bias correction, and that TorchRec's optimizer ``state_dict`` does not include: it is saved
    beside it and restored with the kernel's ``set_optimizer_step``."""
    out: dict[str, Any] = {}

    def walk(opt: Any, path: str) -> None:
        kernel = getattr(opt, "_emb_module", None)
        if kernel is not None:
            if isinstance(getattr(kernel, "iter", None), Tensor):
                out[path] = kernel
            return
        for key, sub in getattr(opt, "optimizers", []):
            walk(sub, f"{path}/{key}")

    walk(fused, "")
    return out


_PLAIN = (Tensor, int, float, bool, str, bytes, type(None))


def _check_plain(value: Any, where: str) -> None:
    """``extra`` must load as data only (``weights_only``): refuse other objects at save time
    rather than write a checkpoint that cannot be loaded."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where} has the key {k!r}: keys must be str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}: a checkpoint holds tensors and plain Python "
        "values only (dict, list, tuple, str, bytes, int, float, bool, None), so that loading "
        "it runs no code; convert it (e.g. a dataclass with dataclasses.asdict)"
    )


def _agree(error: str | None, what: str, payload: Any = None) -> list[Any]:
    """Every rank learns whether any rank failed (one all-gather); then all raise, naming the
    ranks and their errors (identical errors once), or none does. Returns every rank's
    ``payload`` (plain values gathered with the errors)."""
    _, world = _world()
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (error, payload))
    by_message: dict[str, list[int]] = {}
    for r, (e, _) in enumerate(gathered):
        if e is not None:
            by_message.setdefault(e, []).append(r)
    if by_message:
        parts = [
            f"{'every rank' if len(ranks) == world else 'rank ' + ', '.join(map(str, ranks))}: {e}"
            for e, ranks in by_message.items()
        ]
        raise CheckpointError(f"{what}: " + " | ".join(parts))
    return [p for _, p in gathered]


# ---------------------------------------------------------------------- the plan
def plan_summary(dmp: nn.Module) -> dict[str, dict[str, Any]]:
    """The sharding plan of ``dmp`` as plain data: ``"module.table"`` -> sharding type,
    compute kernel, ranks and shards ``[offsets, sizes, placement]`` (what the manifest
    records, and what a resumed run must match)."""
    plan = getattr(dmp, "plan", None)
    if plan is None or not hasattr(plan, "plan"):
        raise TypeError(
            f"expected the DistributedModelParallel that shard_model returned, got "
            f"{type(dmp).__name__} (it has no sharding plan)"
        )
    out: dict[str, dict[str, Any]] = {}
    for module, module_plan in sorted(plan.plan.items()):
        for param, ps in sorted(module_plan.items()):
            spec = ps.sharding_spec
            shards = (
                [
                    [list(m.shard_offsets), list(m.shard_sizes), str(m.placement)]
                    for m in spec.shards
                ]
                if spec is not None and hasattr(spec, "shards")
                else None
            )
            out[f"{module}.{param}" if module else param] = {
                "sharding_type": str(ps.sharding_type),
                "compute_kernel": str(ps.compute_kernel),
                "ranks": list(ps.ranks) if ps.ranks is not None else None,
                "shards": shards,
            }
    return out


def _plan_text(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "absent"
    text = f"{entry['sharding_type']} ({entry['compute_kernel']}) on ranks {entry['ranks']}"
    if entry["shards"]:
        text += ", shards " + ", ".join(f"{o}+{s}@{p}" for o, s, p in entry["shards"])
    return text


def _placed_by_rank(entry: Mapping[str, Any] | None) -> Any:
    """``entry`` with each shard's placement reduced to its rank (``rank:1/cuda:1`` ->
    ``rank:1``): the values are saved on the CPU, so the device does not have to match."""
    if entry is None or entry["shards"] is None:
        return entry
    return {**entry, "shards": [[o, s, str(p).split("/")[0]] for o, s, p in entry["shards"]]}


def _plan_differences(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    return [
        f"{name}: checkpoint {_plan_text(saved.get(name))}; this run {_plan_text(mine.get(name))}"
        for name in sorted(set(saved) | set(mine))
        if _placed_by_rank(saved.get(name)) != _placed_by_rank(mine.get(name))
    ]


def saved_plan(directory: str | Path) -> Any:
    """The sharding plan the checkpoint in ``directory`` was written with, as a TorchRec
    ``ShardingPlan`` to pass to ``shard_model(model, plan=...)`` so that a resumed run (with
    the same number of processes) shards its tables exactly as the saved run did."""
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
    from torchrec.distributed.types import (
        EmbeddingModuleShardingPlan,
        ParameterSharding,
        ShardingPlan,
    )

    manifest = _read_manifest(Path(directory))
    modules: dict[str, EmbeddingModuleShardingPlan] = {}
    for name, entry in manifest["plan"].items():
        module, _, param = name.rpartition(".")
        spec = (
            EnumerableShardingSpec(
                [ShardMetadata(list(o), list(s), p) for o, s, p in entry["shards"]]
            )
            if entry["shards"] is not None
            else None
        )
        modules.setdefault(module, EmbeddingModuleShardingPlan())[param] = ParameterSharding(
            sharding_type=entry["sharding_type"],
            compute_kernel=entry["compute_kernel"],
            ranks=entry["ranks"],
            sharding_spec=spec,
        )
    return ShardingPlan(dict(modules))


# ---------------------------------------------------------------------- save
def save_sharded(
    directory: str | Path,
    dmp: nn.Module,
    *,
    step: int,
    optimizers: Mapping[str, _Stateful] | None = None,
    balancer: _Stateful | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a sharded run's state into ``directory`` (a collective: call it on every rank at
    the same point, between steps; ``directory`` must be the same folder for every rank).

    ``dmp``: what :func:`mtlrec.distributed.shard_model` returned (its ``state_dict`` — the
    local table shards, the replicated tables, the dense parameters — and its
    ``fused_optimizer``'s state). ``optimizers``: name -> the dense optimizers (their
    ``state_dict``); ``balancer``: the Balancer (its ``state_dict``); ``step``: the number
    of steps done; ``extra``: plain values to hand back on load (tensors, str, int, float,
    bool, None, lists, tuples and dicts of them). Every rank also saves its RNG states.

    Returns the folder of this save. When it returns on any rank, the checkpoint is complete
    (the manifest is written after every rank's file); a kill before that leaves the previous
    checkpoint as the one :func:`load_sharded` loads. A rank that cannot write its file (full
    disk, ...) makes every rank raise OSError, the previous checkpoint unchanged.

    Memory: the rank's state is copied to the CPU (its shards and their optimizer state)
    before it is written: about the size of this rank's shards plus their fused state."""
    rank, world = _world()
    directory = Path(directory)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be the number of steps done (an int >= 0), not {step!r}")
    if extra is not None:
        _check_plain(dict(extra), "extra")
    plan = plan_summary(dmp)
    fused = getattr(dmp, "fused_optimizer", None)
    if fused is None:
        raise TypeError(f"{type(dmp).__name__} has no fused_optimizer: pass the DMP itself")
    # one fresh folder per save, named by rank 0: never overwrite the complete checkpoint
    token = [f"save-{step:08d}-{uuid.uuid4().hex[:12]}" if rank == 0 else ""]
    dist.broadcast_object_list(token, src=0)
    folder = directory / token[0]
    state = {
        "format": SHARDED_FORMAT,
        "kind": _KIND,
        "rank": rank,
        "world": world,
        "step": step,
        "save": token[0],
        "model": _pack(dmp.state_dict()),
        "fused_optimizer": _pack(fused.state_dict()),
        "fused_steps": {p: int(k.iter.item()) for p, k in _fused_kernels(fused).items()},
        "optimizers": {n: o.state_dict() for n, o in (optimizers or {}).items()},
        "balancer": balancer.state_dict() if balancer is not None else None,
        "extra": dict(extra or {}),
        "rng": rng_state(),
    }
    error = None
    try:
        path = atomic_save(state, folder / _rank_file(rank, world))
        digest = _digest(path)
    except OSError as e:
        error, digest = str(e), ""
    written: list[Any] = [None] * world
    dist.all_gather_object(written, (digest, error))  # also: every rank's file is written
    failed = [(r, e) for r, (_, e) in enumerate(written) if e is not None]
    if failed:
        raise OSError(
            f"sharded checkpoint {folder}: rank(s) {[r for r, _ in failed]} could not write "
            f"their file ({failed[0][1]}); the previous checkpoint in {directory} is unchanged"
        )
    outcome: list[str | None] = [None]
    if rank == 0:
        try:
            atomic_save(
                {
                    "format": SHARDED_FORMAT,
                    "kind": _KIND,
                    "world": world,
                    "step": step,
                    "save": token[0],
                    "plan": plan,
                    "files": {_rank_file(r, world): d for r, (d, _) in enumerate(written)},
                },
                directory / MANIFEST,
            )
        except OSError as e:
            outcome = [str(e)]
        else:
            for old in directory.iterdir():
                if old.is_dir() and _SAVE_DIR.fullmatch(old.name) and old.name != token[0]:
                    shutil.rmtree(old, ignore_errors=True)
    # every rank returns only once the checkpoint is complete, or raises with rank 0
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise OSError(
            f"sharded checkpoint {folder}: rank 0 could not write the manifest ({outcome[0]}); "
            f"the previous checkpoint in {directory} is unchanged"
        )
    return folder


# ---------------------------------------------------------------------- load
def has_sharded_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a complete sharded checkpoint (its manifest)."""
    return (Path(directory) / MANIFEST).is_file()


def saved_extra(directory: str | Path, rank: int = 0) -> dict[str, Any]:
    """The ``extra`` values rank ``rank`` saved into the checkpoint in ``directory``, read
    without a model or a process group (e.g. to find the tracked run to reopen before
    resuming). The file is checked against the manifest's SHA-256 and read as data only."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    world = int(manifest["world"])
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not a rank of {directory}'s {world}-process save")
    return dict(_read_rank_file(directory, manifest, rank)["extra"])


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no sharded checkpoint in {directory} (no {MANIFEST}: nothing was saved there, or "
            "no save finished)"
        )
    manifest = load_file(path)
    if not isinstance(manifest, dict) or manifest.get("kind") != _KIND:
        raise CheckpointError(f"{path} is not the manifest of an mtlrec sharded checkpoint")
    if manifest.get("format") != SHARDED_FORMAT:
        raise CheckpointError(
            f"{path} has format {manifest.get('format')!r}, not {SHARDED_FORMAT}: it was written "
            "by another mtlrec version"
        )
    return manifest


def _read_rank_file(directory: Path, manifest: Mapping[str, Any], saved_rank: int) -> dict:
    """Saved rank ``saved_rank``'s file, read once as data only, checked against its own
    SHA-256 trailer and the manifest's record of it."""
    world = int(manifest["world"])
    path = directory / manifest["save"] / _rank_file(saved_rank, world)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint in {directory} is incomplete")
    state = load_file(path)  # checks the file's own SHA-256 trailer; data only
    if _digest(path) != manifest["files"].get(path.name):
        raise CheckpointError(
            f"{path} is not the file the manifest {directory / MANIFEST} records (another "
            "SHA-256): it was replaced or copied from another checkpoint"
        )
    if not isinstance(state, dict) or state.get("kind") != _KIND:
        raise CheckpointError(f"{path} is not a rank file of an mtlrec sharded checkpoint")
    if (state["rank"], state["world"], state["save"]) != (saved_rank, world, manifest["save"]):
        raise CheckpointError(
            f"{path} holds rank {state['rank']} of {state['world']} of save {state['save']}, "
            f"not rank {saved_rank} of {world} of {manifest['save']}"
        )
    return state


def _check_presence(
    state: Mapping[str, Any],
    optimizers: Mapping[str, Any],
    balancer: Any,
    problems: list[str],
    *,
    stateless_may_go: bool = False,
) -> None:
    """The dense optimizers and the balancer passed match those saved (by name; with
    ``stateless_may_go``, a saved optimizer without per-parameter state may be left out)."""
    saved = state["optimizers"]
    missing = sorted(set(saved) - set(optimizers))
    if stateless_may_go:
        missing = [n for n in missing if saved[n].get("state")]
    unknown = sorted(set(optimizers) - set(saved))
    if missing or unknown:
        problems.append(
            f"dense optimizers: the file holds {sorted(saved)}, this call passes "
            f"{sorted(optimizers)} (pass the same optimizers= names as at the save"
            + (
                "; when resharding, one that keeps no per-parameter state, e.g. plain SGD of a "
                "data-parallel table that is sharded now, may be left out)"
                if stateless_may_go
                else ")"
            )
        )
    if (balancer is None) != (state["balancer"] is None):
        have = "holds" if state["balancer"] is not None else "holds no"
        problems.append(
            f"balancer: the file {have} balancer state; pass balancer= exactly when the save did"
        )


def load_sharded(
    directory: str | Path,
    dmp: nn.Module,
    *,
    optimizers: Mapping[str, _Stateful] | None = None,
    balancer: _Stateful | None = None,
    reshard: bool = False,
) -> Resumed:
    """Restore what :func:`save_sharded` saved into ``directory`` (a collective: every rank
    calls it, with the model built and sharded, before any step).

    ``optimizers`` and ``balancer`` must name the same objects as at the save (their state is
    loaded into them). Restores the table shards and dense parameters (``dmp.load_state_dict``),
    the fused optimizer's state (``dmp.fused_optimizer.load_state_dict``) and its kernels'
    step counters, the dense optimizers, the balancer and the RNG states; returns the saved
    ``step`` and ``extra``. Every rank first reads and checks what it needs; if any rank finds
    a problem (a damaged or foreign file, a model or optimizer that does not match, ...), every
    rank raises :class:`CheckpointError` and nothing is restored.

    **Same world size and plan** (the default, ``reshard=False``): rank r reads only saved
    rank r's file and restores it as it is — a checkpoint saved at another world size or with
    another plan is refused (naming ``reshard=True`` and :func:`saved_plan`).

    **Resharding** (``reshard=True``, used only when the world size or the plan differ): each
    rank fills each of its local shards — the table's weights and every fused optimizer
    state tensor of that table — from the overlapping regions of the saved shards (their
    offsets and sizes in the manifest's plan and the rank files). Element-wise state (exact
    Adagrad's ``momentum1``, Adam's two moments) has the weight's shape and is cut like it;
    row-wise state (row-wise Adagrad: one value per row of each column shard, computed from
    that shard's columns) is copied for overlapping rows of the *same* column range, so a
    change of a table's column split is refused for it. The replicated state — the dense
    parameters and data-parallel tables, the dense optimizers, the balancer, the step, the
    fused kernels' step counters — comes from saved rank 0's file, after checking that every
    saved rank's copy is identical (saved rank s is read, and compared, at least by loading
    rank ``s % world``; the counters must be one value across every saved kernel: the
    kernels group the tables differently after resharding). ``extra`` is rank 0's. Rank r
    takes saved rank r's RNG states; a rank beyond the saved world keeps its own (as the
    program seeded it before the load) — never another rank's, which would duplicate its
    random stream. The global batch is split over another number of ranks, so a resharded run
    is not bit-comparable to an uninterrupted one, only its state at the load is.
    Refused: a table missing or of another shape, another model (other keys or shapes),
    another fused optimizer (other state names or kinds), a row-wise state whose column split
    changes, a table whose fused optimizer state would be invented or dropped (a stateful
    fused optimizer on a table that moves between data-parallel and sharded), a dense
    optimizer whose parameter groups changed (a data-parallel table moved in or out of it),
    saved ranks whose replicated copies differ.

    Memory (resharding): a loading rank reads each saved file it needs once, one at a time
    (``load_file`` holds its bytes and its tensors: about twice the file), and stages its own
    shards (weights and fused state) in a copy until every rank agreed, plus saved rank 0's
    replicated state; it reads the files holding shards that overlap its own, rank 0's, its
    own rank's (RNG) and those it checks (``s % world``)."""
    rank, world = _world()
    directory = Path(directory)
    fused = getattr(dmp, "fused_optimizer", None)
    if fused is None:
        raise TypeError(f"{type(dmp).__name__} has no fused_optimizer: pass the DMP itself")
    optimizers = dict(optimizers or {})
    error: str | None = None
    resharded: _Resharded | None = None
    state: dict[str, Any] = {}
    model_target: dict[str, Any] = {}
    fused_target: dict[str, Any] = {}
    kernels: dict[str, Any] = {}
    try:
        manifest = _read_manifest(directory)
        differences = _plan_differences(manifest["plan"], plan_summary(dmp))
        if manifest["world"] != world or differences:
            if not reshard:
                if manifest["world"] != world:
                    raise CheckpointError(
                        f"{directory} was saved by {manifest['world']} processes, this run has "
                        f"{world}: resume with the same number of processes (--nproc "
                        f"{manifest['world']}) and the same sharding plan, or load it with "
                        "load_sharded(..., reshard=True) to reshard it onto this run's ranks"
                    )
                raise CheckpointError(
                    f"{directory} was saved with another sharding plan: "
                    + "; ".join(differences)
                    + ". Resume with the same plan: shard_model(model, plan=saved_plan(directory)) "
                    "(or the same sharding= constraints and number of processes), or load it with "
                    "load_sharded(..., reshard=True) to reshard it onto this plan"
                )
            resharded = _reshard_read(directory, manifest, dmp, fused, optimizers, balancer)
        else:
            state = _read_rank_file(directory, manifest, rank)
            path = directory / manifest["save"] / _rank_file(rank, world)
            problems: list[str] = []
            model_target = dmp.state_dict()
            _match(model_target, state["model"], "model", problems)
            fused_target = fused.state_dict()
            _match(fused_target, state["fused_optimizer"], "fused optimizer", problems)
            kernels = _fused_kernels(fused)
            if sorted(kernels) != sorted(state["fused_steps"]):
                problems.append(
                    f"fused kernels: the file has {sorted(state['fused_steps'])}, this run "
                    f"{sorted(kernels)}"
                )
            _check_presence(state, optimizers, balancer, problems)
            if problems:
                raise CheckpointError(
                    f"{path} does not fit this run's model/optimizers (was it saved by another "
                    "model or optimizer?): " + "; ".join(problems)
                )
    except (CheckpointError, OSError) as e:  # (FileNotFoundError: no manifest, ...)
        error = str(e)
    except Exception as e:  # every rank must reach the agreement below, whatever failed
        error = f"{type(e).__name__}: {e}"
    counters = _agree(error, "cannot resume", sorted(resharded.counters) if resharded else [])

    if resharded is not None:
        every = sorted({c for mine in counters for c in mine})
        if len(every) > 1:  # (every rank saw the same gathered values: all raise)
            raise CheckpointError(
                f"cannot resume: {directory}'s fused kernels saved different step counters "
                f"{every}; resharding regroups the tables into other kernels, which need one"
            )
        resharded.apply(dmp, fused, optimizers, balancer, every[0] if every else None)
        dist.barrier()
        return Resumed(step=resharded.step, extra=resharded.extra, path=resharded.path)

    # TorchRec's own load paths (the local shards copied into the tables and into the fused
    # kernel's state), given this run's state dicts filled with the saved values
    dmp.load_state_dict(_fill(model_target, state["model"]))
    fused.load_state_dict(_fill(fused_target, state["fused_optimizer"]))
    for path, kernel in kernels.items():
        kernel.set_optimizer_step(state["fused_steps"][path])
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    if balancer is not None:
        balancer.load_state_dict(state["balancer"])
    set_rng_state(state["rng"])
    dist.barrier()
    return Resumed(
        step=int(state["step"]), extra=dict(state["extra"]), path=directory / state["save"]
    )


# ---------------------------------------------------------------------- resharding
Region = tuple[int, int, int, int]
"""A block of a table: first row, first column, rows, columns."""


@dataclass
class _Piece:
    """One of this rank's shards to fill — a table's weight (``state`` None) or one fused
    optimizer state tensor of it — staged in ``staged`` until every rank agreed. ``region``
    is where it lies in the table; a row-wise state (``rowwise``) holds one value per row of
    that region."""

    key: str
    state: str | None
    region: Region
    rowwise: bool
    target: Tensor
    staged: Tensor
    covered: int = 0

    def where(self) -> str:
        what = f"model[{self.key!r}]" if self.state is None else f"fused state {self.state!r}"
        r, c, n, d = self.region
        return f"{what} rows {r}-{r + n - 1}, columns {c}-{c + d - 1}"


def _overlap(a: Region, b: Region) -> Region | None:
    r0, r1 = max(a[0], b[0]), min(a[0] + a[2], b[0] + b[2])
    c0, c1 = max(a[1], b[1]), min(a[1] + a[3], b[1] + b[3])
    return (r0, c0, r1 - r0, c1 - c0) if r1 > r0 and c1 > c0 else None


def _rowwise_regions(shards: list[tuple[list[int], list[int]]], rows: int, cols: int) -> dict:
    """Where TorchRec (1.9, ``EmbeddingFusedOptimizer``) puts a row-wise optimizer state
    (one value per row of a shard) in its 1-d sharded tensor: a shard's state starts at the
    shard's first row, or, when the table's columns are split (column-wise), at
    ``i * rows`` for the i-th shard by column offset. -> state offset -> the table region."""
    split_columns = any(s[1] != cols for _, s in shards)
    if split_columns and any(s[0] != rows for _, s in shards):
        raise CheckpointError(
            "a table split by rows and columns at once (grid sharding): its row-wise optimizer "
            "state cannot be resharded"
        )
    if split_columns:
        ordered = sorted(shards, key=lambda shard: shard[0][1])
        return {i * rows: (0, o[1], rows, s[1]) for i, (o, s) in enumerate(ordered)}
    return {o[0]: (o[0], 0, s[0], cols) for o, s in shards}


def _plan_entries(plan: Mapping[str, Any], keys: Any) -> dict[str, Mapping[str, Any]]:
    """State-dict key of a table's weight (``embedding.ebc.embedding_bags.t_user.weight``) ->
    its entry in a plan summary (``embedding.ebc.t_user``)."""
    out: dict[str, Mapping[str, Any]] = {}
    for name, entry in plan.items():
        module, _, param = name.rpartition(".")
        for key in keys:
            if key.startswith(f"{module}.") and key.endswith(f".{param}.weight"):
                out[key] = entry
    return out


def _placement_rank(placement: str) -> int:
    return int(str(placement).split("/")[0].split(":")[1])  # "rank:1/cpu" -> 1


def _same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of saved values (tensors, dicts, lists, plain values; NaN equals
    NaN)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and (torch.equal(a, b) or bool(torch.isclose(a, b, 0, 0, equal_nan=True).all()))
        )
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)


@dataclass
class _Resharded:
    """What a rank read and staged for a resharded load, applied once every rank agreed."""

    pieces: list[_Piece]
    replicated: dict[str, Tensor]  # model key -> rank 0's saved value (dense, data-parallel)
    model_target: dict[str, Any]
    fused_target: dict[str, Any]
    optimizers: dict[str, Any]  # name -> saved state_dict (rank 0's)
    balancer: Any
    rng: Any  # saved rank r's RNG states, or None (a rank beyond the saved world)
    counters: set[int]
    step: int
    extra: dict[str, Any]
    path: Path

    @torch.no_grad()
    def apply(
        self,
        dmp: nn.Module,
        fused: Any,
        optimizers: Mapping[str, _Stateful],
        balancer: _Stateful | None,
        counter: int | None,
    ) -> None:
        for piece in self.pieces:
            piece.target.copy_(piece.staged)
        for key, value in self.replicated.items():
            self.model_target[key].copy_(value)
        dmp.load_state_dict(self.model_target)
        fused.load_state_dict(self.fused_target)
        if counter is not None:
            for kernel in _fused_kernels(fused).values():
                kernel.set_optimizer_step(counter)
        for name, opt in optimizers.items():
            opt.load_state_dict(self.optimizers[name])
        if balancer is not None:
            balancer.load_state_dict(self.balancer)
        if self.rng is not None:
            set_rng_state(self.rng)


def _copy_overlaps(
    pieces: list[_Piece], region: Region, values: Tensor, rowwise: bool, where: str
) -> None:
    """Copy the saved block ``values`` (lying at ``region`` of the table) into the parts of
    ``pieces`` it overlaps."""
    for piece in pieces:
        if piece.rowwise != rowwise:
            raise CheckpointError(
                f"{where}: the checkpoint holds a {'row-wise' if rowwise else 'element-wise'} "
                f"state, this run a {'row-wise' if piece.rowwise else 'element-wise'} one "
                "(another fused optimizer: resume with the saved one)"
            )
        if values.dtype != piece.staged.dtype:
            raise CheckpointError(
                f"{where}: the checkpoint holds {values.dtype}, this run {piece.staged.dtype}"
            )
        both = _overlap(piece.region, region)
        if both is None:
            continue
        r, c, n, d = both
        if rowwise:
            if (piece.region[1], piece.region[3]) != (region[1], region[3]):
                raise CheckpointError(
                    f"{where}: a row-wise optimizer state (one value per row of each column "
                    f"shard, from that shard's columns) saved for columns {region[1]}-"
                    f"{region[1] + region[3] - 1}, needed for columns {piece.region[1]}-"
                    f"{piece.region[1] + piece.region[3] - 1}: the table's column split "
                    "changed, which this state cannot follow; keep its column split (or its "
                    "sharding type)"
                )
            piece.staged[r - piece.region[0] : r - piece.region[0] + n] = values[
                r - region[0] : r - region[0] + n
            ]
            piece.covered += n
        else:
            piece.staged[
                r - piece.region[0] : r - piece.region[0] + n,
                c - piece.region[1] : c - piece.region[1] + d,
            ] = values[r - region[0] : r - region[0] + n, c - region[1] : c - region[1] + d]
            piece.covered += n * d


def _reshard_read(
    directory: Path,
    manifest: Mapping[str, Any],
    dmp: nn.Module,
    fused: Any,
    optimizers: Mapping[str, Any],
    balancer: Any,
) -> _Resharded:
    """Read the saved files this rank needs (each once) and stage this rank's shards from
    the overlapping saved ones (see :func:`load_sharded`); raise CheckpointError on what
    cannot be resharded. Restores nothing."""
    rank, world = _world()
    saved_world = int(manifest["world"])
    model_target = dmp.state_dict()
    fused_target = fused.state_dict()
    fused_state: Mapping[str, Any] = fused_target.get("state", {})

    # this rank's pieces: the sharded tables' local shards and their fused state
    pieces: list[_Piece] = []
    for key, value in model_target.items():
        if _is_sharded(value):
            if len(value.size()) != 2:
                raise CheckpointError(
                    f"model[{key!r}] is a sharded tensor of {len(value.size())} dimensions: "
                    "resharding handles tables (2 dimensions) only"
                )
            for s in value.local_shards():
                o, n = s.metadata.shard_offsets, s.metadata.shard_sizes
                region: Region = (o[0], o[1], n[0], n[1])
                staged = torch.empty(s.tensor.shape, dtype=s.tensor.dtype)
                pieces.append(_Piece(key, None, region, False, s.tensor, staged))
    for key, named in fused_state.items():
        weight: Any = model_target.get(key)
        if not _is_sharded(weight):
            raise CheckpointError(
                f"the fused optimizer holds state for {key!r}, which is no sharded table of "
                "this model: resharding cannot place it"
            )
        rows, cols = weight.size()
        table = [
            (list(m.shard_offsets), list(m.shard_sizes)) for m in weight.metadata().shards_metadata
        ]
        for name, value in named.items():
            if not _is_sharded(value) or len(value.size()) not in (1, 2):
                raise CheckpointError(
                    f"fused state {name!r} of {key!r} is {_describe(value)}: resharding handles "
                    "element-wise (the weight's shape) and row-wise (1-d) optimizer state only"
                )
            rowwise = len(value.size()) == 1
            if not rowwise and list(value.size()) != [rows, cols]:
                raise CheckpointError(
                    f"fused state {name!r} of {key!r} is {list(value.size())}, not the table's "
                    f"{[rows, cols]}: resharding cannot place it"
                )
            layout = _rowwise_regions(table, rows, cols) if rowwise else {}
            for s in value.local_shards():
                offsets, sizes = list(s.metadata.shard_offsets), list(s.metadata.shard_sizes)
                if rowwise:
                    found = layout.get(offsets[0])
                    if found is None or found[2] != sizes[0]:
                        raise CheckpointError(
                            f"fused state {name!r} of {key!r}: a row-wise shard at {offsets} "
                            f"{sizes} that matches no shard of the table {table}"
                        )
                    region = found
                else:
                    region = (offsets[0], offsets[1], sizes[0], sizes[1])
                staged = torch.empty(s.tensor.shape, dtype=s.tensor.dtype)
                pieces.append(_Piece(key, name, region, rowwise, s.tensor, staged))
    by_target: dict[tuple[str, str | None], list[_Piece]] = {}
    for piece in pieces:
        by_target.setdefault((piece.key, piece.state), []).append(piece)

    # saved rank 0 first: the replicated state, and where the model's entries were saved
    first = _read_rank_file(directory, manifest, 0)
    where0 = directory / manifest["save"] / _rank_file(0, saved_world)
    if first["step"] != manifest["step"]:
        raise CheckpointError(
            f"{where0} holds step {first['step']}, the manifest {manifest['step']}"
        )
    saved_model: Mapping[str, Any] = first["model"]
    problems: list[str] = []
    missing, unknown = (
        sorted(set(model_target) - set(saved_model)),
        sorted(set(saved_model) - set(model_target)),
    )
    if missing or unknown:
        problems.append(f"model: entries only in this run {missing}, only in the file {unknown}")
    replicated: dict[str, Tensor] = {}
    for key in sorted(set(model_target) & set(saved_model)):
        mine, saved = model_target[key], saved_model[key]
        my_size = list(mine.size()) if _is_sharded(mine) else list(mine.shape)
        saved_sharded = isinstance(saved, Mapping) and "sharded" in saved
        saved_size = list(saved["sharded"]) if saved_sharded else list(getattr(saved, "shape", []))
        if my_size != saved_size or not (saved_sharded or isinstance(saved, Tensor)):
            problems.append(
                f"model[{key!r}]: this run has {_describe(mine)}, the file {_describe(saved)}"
            )
        elif not _is_sharded(mine):
            if not saved_sharded:
                if saved.dtype != mine.dtype:
                    problems.append(
                        f"model[{key!r}]: this run has {mine.dtype}, the file {saved.dtype}"
                    )
                replicated[key] = saved
            elif len(my_size) != 2:
                problems.append(f"model[{key!r}]: a sharded {my_size} is replicated now")
            else:  # a sharded table that is data-parallel now: gathered whole
                staged = torch.empty(mine.shape, dtype=mine.dtype)
                piece = _Piece(key, None, (0, 0, *my_size), False, mine, staged)
                pieces.append(piece)
                by_target.setdefault((key, None), []).append(piece)
    _check_presence(first, optimizers, balancer, problems, stateless_may_go=True)
    for name, opt in optimizers.items():
        saved_groups = first["optimizers"].get(name, {}).get("param_groups")
        if saved_groups is None:
            continue
        have = [len(g["params"]) for g in opt.state_dict()["param_groups"]]
        had = [len(g["params"]) for g in saved_groups]
        if have != had:
            problems.append(
                f"dense optimizer {name!r}: parameters per group {had} in the file, {have} now "
                "(a data-parallel table moved in or out of it with the new plan?): its state "
                "cannot be loaded"
            )
    if problems:
        raise CheckpointError(
            f"{where0} does not fit this run's model/optimizers (was it saved by another "
            "model or optimizer?): " + "; ".join(problems)
        )

    # the files to read: holding shards that overlap this rank's, 0, this rank's, checked
    saved_plan = manifest["plan"]
    entries = _plan_entries(saved_plan, {p.key for p in pieces})
    needed = {0, *range(rank, saved_world, world)}
    if rank < saved_world:
        needed.add(rank)
    for piece in pieces:
        entry = entries.get(piece.key)
        if isinstance(saved_model.get(piece.key), Tensor):
            continue  # replicated in the checkpoint: rank 0's copy
        if entry is None or entry["shards"] is None:
            needed.update(range(saved_world))  # (not in the plan: look everywhere)
            continue
        for o, s, placement in entry["shards"]:
            if _overlap(piece.region, (o[0], o[1], s[0], s[1])) is not None:
                needed.add(_placement_rank(placement))

    rng = None
    counters: set[int] = set()
    for saved_rank in sorted(needed):
        state = first if saved_rank == 0 else _read_rank_file(directory, manifest, saved_rank)
        where = directory / manifest["save"] / _rank_file(saved_rank, saved_world)
        if saved_rank != 0:
            for what in ("step", "optimizers", "balancer"):
                if not _same(state[what], first[what]):
                    raise CheckpointError(
                        f"{where}: its {what} differs from rank 0's: the saved ranks were not "
                        "in step, so there is no one replicated state to reshard"
                    )
            for key, value in state["model"].items():
                if isinstance(value, Tensor) and not _same(value, saved_model.get(key)):
                    raise CheckpointError(
                        f"{where}: its replicated model[{key!r}] differs from rank 0's: the "
                        "saved ranks were not in step, so there is no one value to reshard"
                    )
        if saved_rank == rank:
            rng = state["rng"]
        counters.update(int(v) for v in state["fused_steps"].values())
        # the weights
        for key, value in state["model"].items():
            targets = by_target.get((key, None))
            if not targets:
                continue
            if isinstance(value, Mapping) and "sharded" in value:
                for shard in value["shards"]:
                    region = (*shard["offsets"], *shard["sizes"])
                    _copy_overlaps(
                        targets, region, shard["tensor"], False, f"{where}: model[{key!r}]"
                    )
            elif saved_rank == 0 and isinstance(value, Tensor):
                _copy_overlaps(
                    targets, (0, 0, *value.shape), value, False, f"{where}: model[{key!r}]"
                )
        # the fused optimizer's state
        for key, named in state["fused_optimizer"].get("state", {}).items():
            if not named:
                continue
            if key not in fused_state:
                if _is_sharded(model_target.get(key)):
                    continue  # sharded in this run too, with no shard on this rank
                raise CheckpointError(
                    f"{where}: fused optimizer state {sorted(named)} of {key!r}, which has none "
                    "in this run (a table that is data-parallel now, or another fused optimizer): "
                    "resharding would drop it; keep the table sharded, or save with a fused "
                    "optimizer without state (exact_sgd)"
                )
            if set(named) != set(fused_state[key]):
                raise CheckpointError(
                    f"{where}: the fused optimizer state of {key!r} is {sorted(named)} in the "
                    f"file, {sorted(fused_state[key])} in this run: another fused optimizer "
                    "(resume with the saved one)"
                )
            table_entry = entries.get(key) or _plan_entries(saved_plan, [key]).get(key)
            for name, packed in named.items():
                rowwise = len(packed["sharded"]) == 1
                layout = {}
                if rowwise:
                    if table_entry is None or table_entry["shards"] is None:
                        raise CheckpointError(
                            f"{where}: row-wise state {name!r} of {key!r}, a table the "
                            "manifest's plan does not shard"
                        )
                    rows, cols = saved_model[key]["sharded"]
                    layout = _rowwise_regions(
                        [(o, s) for o, s, _ in table_entry["shards"]], rows, cols
                    )
                for shard in packed["shards"]:
                    if rowwise:
                        found = layout.get(shard["offsets"][0])
                        if found is None or found[2] != shard["sizes"][0]:
                            raise CheckpointError(
                                f"{where}: row-wise state {name!r} of {key!r} at "
                                f"{shard['offsets']} {shard['sizes']} matches no shard of the "
                                "manifest's plan"
                            )
                        region = found
                    else:
                        region = (*shard["offsets"], *shard["sizes"])
                    _copy_overlaps(
                        by_target.get((key, name), []),
                        region,
                        shard["tensor"],
                        rowwise,
                        f"{where}: fused state {name!r}",
                    )
        if saved_rank == 0:  # keep only its replicated state: one file's shards at a time
            first = {
                **first,
                "model": {
                    k: {"sharded": v["sharded"]} if isinstance(v, Mapping) and "sharded" in v else v
                    for k, v in first["model"].items()
                },
                "fused_optimizer": None,
                "rng": None,
            }
            saved_model = first["model"]
        del state

    for piece in pieces:
        if piece.covered != piece.staged.numel():
            was = entries.get(piece.key)
            hint = ""
            if piece.state is not None and was is not None and was["shards"] is None:
                hint = (
                    ": the table was data-parallel in the checkpoint (updated by a dense "
                    "optimizer), so it has no fused optimizer state to load; keep it "
                    "data-parallel, or use a fused optimizer without state (exact_sgd)"
                )
            elif piece.state is not None:
                hint = ": the checkpoint holds no such state for it (another fused optimizer?)"
            raise CheckpointError(
                f"{directory}: {piece.where()} is covered by {piece.covered} of its "
                f"{piece.staged.numel()} values in the checkpoint{hint}"
            )
    return _Resharded(
        pieces=pieces,
        replicated=replicated,
        model_target=model_target,
        fused_target=fused_target,
        optimizers={n: first["optimizers"][n] for n in optimizers},
        balancer=first["balancer"],
        rng=rng,
        counters=counters,
        step=int(first["step"]),
        extra=dict(first["extra"]),
        path=directory / manifest["save"],
    )
