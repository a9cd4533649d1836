"""Checkpoint and resume of a sharded run (TorchRec ``DistributedModelParallel``).

:func:`save_sharded` writes, and :func:`load_sharded` restores, everything a run built with
:func:`mtlrec.distributed.shard_model` needs to continue bit for bit on the same ranks:

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

- a different world size or sharding plan (resume with the same number of processes and the
  same plan: :func:`saved_plan` gives the saved one for ``shard_model(plan=...)``);
- a rank file that is not the one the manifest names (its SHA-256 differs), damaged, or not
  data only;
- a shard whose offsets or sizes, a table, a dense parameter or an optimizer state that does
  not match this run's model (a different model or optimizer).

Resharding (loading at another world size or plan) is not supported.
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


def _agree(error: str | None, what: str) -> None:
    """Every rank learns whether any rank failed (one all-gather); then all raise, naming the
    ranks and their errors (identical errors once), or none does."""
    _, world = _world()
    errors: list[str | None] = [None] * world
    dist.all_gather_object(errors, error)
    by_message: dict[str, list[int]] = {}
    for r, e in enumerate(errors):
        if e is not None:
            by_message.setdefault(e, []).append(r)
    if by_message:
        parts = [
            f"{'every rank' if len(ranks) == world else 'rank ' + ', '.join(map(str, ranks))}: {e}"
            for e, ranks in by_message.items()
        ]
        raise CheckpointError(f"{what}: " + " | ".join(parts))


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
    path = directory / manifest["save"] / _rank_file(rank, world)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint in {directory} is incomplete")
    if _digest(path) != manifest["files"].get(path.name):
        raise CheckpointError(
            f"{path} is not the file the manifest {directory / MANIFEST} records (another "
            "SHA-256): it was replaced or copied from another checkpoint"
        )
    state = load_file(path)
    if not isinstance(state, dict) or state.get("kind") != _KIND:
        raise CheckpointError(f"{path} is not a rank file of an mtlrec sharded checkpoint")
    return dict(state["extra"])


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


def load_sharded(
    directory: str | Path,
    dmp: nn.Module,
    *,
    optimizers: Mapping[str, _Stateful] | None = None,
    balancer: _Stateful | None = None,
) -> Resumed:
    """Restore what :func:`save_sharded` saved into ``directory`` (a collective: every rank
    calls it, with the model built and sharded as in the saved run, before any step).

    ``optimizers`` and ``balancer`` must name the same objects as at the save (their state is
    loaded into them). Restores the table shards and dense parameters (``dmp.load_state_dict``),
    the fused optimizer's state (``dmp.fused_optimizer.load_state_dict``), the dense
    optimizers, the balancer and this rank's RNG states; returns the saved ``step`` and
    ``extra``. Every rank first reads and checks its file; if any rank finds a problem (a
    different world size or plan, a damaged or foreign file, a model or optimizer that does
    not match), every rank raises :class:`CheckpointError` and nothing is restored."""
    rank, world = _world()
    directory = Path(directory)
    fused = getattr(dmp, "fused_optimizer", None)
    if fused is None:
        raise TypeError(f"{type(dmp).__name__} has no fused_optimizer: pass the DMP itself")
    optimizers = dict(optimizers or {})
    error: str | None = None
    state: dict[str, Any] = {}
    model_target: dict[str, Any] = {}
    fused_target: dict[str, Any] = {}
    kernels: dict[str, Any] = {}
    try:
        manifest = _read_manifest(directory)
        if manifest["world"] != world:
            raise CheckpointError(
                f"{directory} was saved by {manifest['world']} processes, this run has {world}: "
                f"resume with the same number of processes (--nproc {manifest['world']}) and the "
                "same sharding plan; loading into another world size (resharding) is not "
                "supported"
            )
        differences = _plan_differences(manifest["plan"], plan_summary(dmp))
        if differences:
            raise CheckpointError(
                f"{directory} was saved with another sharding plan: "
                + "; ".join(differences)
                + ". Resume with the same plan: shard_model(model, plan=saved_plan(directory)) "
                "(or the same sharding= constraints and number of processes); resharding is "
                "not supported"
            )
        path = directory / manifest["save"] / _rank_file(rank, world)
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
        if (state["rank"], state["world"], state["save"]) != (rank, world, manifest["save"]):
            raise CheckpointError(
                f"{path} holds rank {state['rank']} of {state['world']} of save {state['save']}, "
                f"not rank {rank} of {world} of {manifest['save']}"
            )
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
        if sorted(optimizers) != sorted(state["optimizers"]):
            problems.append(
                f"dense optimizers: the file holds {sorted(state['optimizers'])}, this call "
                f"passes {sorted(optimizers)} (pass the same optimizers= names as at the save)"
            )
        if (balancer is None) != (state["balancer"] is None):
            have = "holds" if state["balancer"] is not None else "holds no"
            problems.append(
                f"balancer: the file {have} balancer state; pass balancer= exactly when the "
                "save did"
            )
        if problems:
            raise CheckpointError(
                f"{path} does not fit this run's model/optimizers (was it saved by another "
                "model or optimizer?): " + "; ".join(problems)
            )
    except (CheckpointError, OSError) as e:  # (FileNotFoundError: no manifest, ...)
        error = str(e)
    except Exception as e:  # every rank must reach the agreement below, whatever failed
        error = f"{type(e).__name__}: {e}"
    _agree(error, "cannot resume")

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
