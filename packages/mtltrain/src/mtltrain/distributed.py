"""torch.distributed for training: joining a job, starting one, and failing cleanly.

A job is W processes that each train on their shard of every global batch; the
:class:`mtlbalance.Balancer` (``process_group="world"``) averages what it reads across them,
so every rank computes the same update and holds the same state (docs/distributed.md).

* :func:`init_from_env` joins the job described by the environment torchrun sets (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, nccl on GPU,
  with a timeout so that a collective waiting for a dead rank fails instead of hanging.
* :func:`launch` starts W such processes itself (``mtlbench run SPEC --nproc W``) and watches
  them: when one exits with an error, the others are stopped within ``grace`` seconds and the
  launcher exits non-zero naming the failed rank.
* :func:`broadcast_module` makes every rank start from rank 0's parameters and buffers;
  :func:`shard_loader` gives each rank its shard of a ``DataLoader``'s batches.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import nn

__all__ = [
    "DistEnv",
    "RankFailed",
    "broadcast_module",
    "broadcast_tensors",
    "end_rank",
    "env",
    "fail_cleanly",
    "free_port",
    "init_from_env",
    "is_distributed",
    "launch",
    "shard_loader",
    "shutdown",
    "split_batch",
    "world_size",
]

DEFAULT_TIMEOUT_S = 300.0
HEALTH_TIMEOUT_S = 10.0


class RankFailed(RuntimeError):
    """A rank of the job failed: the others stop instead of waiting for it."""


@dataclass(frozen=True)
class DistEnv:
    """The job this process belongs to, as torchrun (or :func:`launch`) describes it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def env(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The job described by ``RANK``/``WORLD_SIZE``/... (None when ``WORLD_SIZE`` is unset);
    a missing or malformed variable is an error naming it."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    values: dict[str, int] = {}
    for key in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        raw = environ.get(key)
        if raw is None:
            raise ValueError(
                f"WORLD_SIZE is set but {key} is not: launch with torchrun (or mtlbench run "
                f"--nproc N), which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"
            )
        try:
            values[key] = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {key}={raw!r} is not an integer") from None
    rank, world, port = values["RANK"], values["WORLD_SIZE"], values["MASTER_PORT"]
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    local = int(environ.get("LOCAL_RANK", str(rank)))
    return DistEnv(rank, world, local, environ.get("MASTER_ADDR", "127.0.0.1"), port)


def is_distributed() -> bool:
    """torch.distributed is initialised with more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def world_size() -> int:
    """Processes in the job (1 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return 1


def init_from_env(
    device: str | torch.device = "cpu",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    backend: str | None = None,
) -> DistEnv | None:
    """Join the job the environment describes (None, doing nothing, without one).

    ``backend``: gloo for a CPU device, nccl for CUDA (each rank then takes the GPU
    ``LOCAL_RANK``), unless given. ``timeout_s``: how long a collective waits for the other
    ranks before it raises — a dead rank makes the others fail, never hang.
    """
    job = env()
    if job is None:
        return None
    dev = torch.device(device)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(job.local_rank)
    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", job.master_addr)
        torch.distributed.init_process_group(  # env://: torchrun's agent store when it has one
            backend=backend,
            init_method="env://",
            rank=job.rank,
            world_size=job.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    if job.world_size > 1:
        _Heartbeat.start(job)
    return job


class _Heartbeat:
    """A daemon thread that bumps this rank's counter in the job's store every
    ``PERIOD_S``: when a collective fails, the ranks whose counters stopped are the dead ones
    (counters, not clocks: the nodes' clocks may differ)."""

    PERIOD_S = 0.5
    PREFIX = "mtltrain/heartbeat/"
    running: _Heartbeat | None = None

    def __init__(self, job: DistEnv):
        self.job = job
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="mtltrain-heartbeat", daemon=True)

    @classmethod
    def start(cls, job: DistEnv) -> None:
        if cls.running is None:
            cls.running = cls(job)
            cls.running.thread.start()
            atexit.register(shutdown)

    @classmethod
    def stop(cls) -> None:
        beat, cls.running = cls.running, None
        if beat is not None:
            beat.stopped.set()
            beat.thread.join(timeout=HEALTH_TIMEOUT_S + 1.0)

    def _store(self, timeout_s: float = HEALTH_TIMEOUT_S) -> Any:
        return torch.distributed.TCPStore(
            self.job.master_addr,
            self.job.master_port,
            is_master=False,
            timeout=datetime.timedelta(seconds=timeout_s),
        )

    def _beat(self) -> None:
        try:
            store, key = self._store(), f"{self.PREFIX}{self.job.rank}"
            while not self.stopped.is_set():
                store.add(key, 1)
                self.stopped.wait(self.PERIOD_S)
        except Exception:  # the store is gone: the diagnosis will say so
            return

    def dead(self) -> list[int] | None:
        """The ranks whose counters do not move over a few periods (None: the store, hosted
        by rank 0 unless torchrun's agent hosts it, cannot be reached)."""
        try:
            store = self._store(timeout_s=2.0)
            keys = [f"{self.PREFIX}{r}" for r in range(self.job.world_size)]
            before = [store.add(k, 0) for k in keys]
            time.sleep(6 * self.PERIOD_S)
            after = [store.add(k, 0) for k in keys]
        except Exception:
            return None
        return [
            r
            for r, (b, a) in enumerate(zip(before, after, strict=True))
            if a == b and r != self.job.rank
        ]


def shutdown() -> None:
    """Leave the job: stop this rank's heartbeat, then destroy the process group. Run at
    interpreter exit for a job joined with :func:`init_from_env` (a daemon thread still inside
    a store call, or a process group torn down by the interpreter's finalisation, can abort a
    process whose run succeeded: "terminate called without an active exception"); call it
    yourself to leave earlier."""
    _Heartbeat.stop()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()


def end_rank(code: int = 0) -> NoReturn:
    """End a rank whose work is done and written: :func:`shutdown`, flush the output streams,
    then ``os._exit(code)``, skipping the interpreter's finalisation. Finished ranks were seen
    to abort there ("terminate called without an active exception", SIGABRT), in fresh-clone
    CI runs of ``mtlbench --nproc`` and once in a test job — with and without the heartbeat
    thread, so its cause inside the finalisation is not known; a rank that ends here cannot
    hit it. Nothing registered with ``atexit`` runs after this: close files, trackers and
    loaders first."""
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def unresponsive_ranks() -> list[int] | None:
    """The other ranks of the job that no longer run ([] when all do; None when it cannot be
    told: the store is unreachable — it lives in rank 0 unless torchrun's agent hosts it)."""
    beat = _Heartbeat.running
    return None if beat is None else beat.dead()


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    """Around a job's training loop: when a collective fails (another rank died, or stopped
    answering within the process group's timeout), find which ranks no longer run and raise
    :class:`RankFailed` naming them, so this rank exits with a clear error instead of a
    transport error (or a hang)."""
    try:
        yield
    except RankFailed:
        raise
    except (RuntimeError, ConnectionError) as err:
        if not is_distributed() or _Heartbeat.running is None:
            raise
        me, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        missing = unresponsive_ranks()
        if missing == []:
            raise  # every rank still runs: this error is this rank's own
        who = (
            f"rank {', '.join(map(str, missing))} stopped"
            if missing
            else "rank 0 (which hosts the job's store) cannot be reached"
        )
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RankFailed(
            f"rank {me} of {world}: a collective failed because {who}; stopping this rank too "
            f"(the failed rank's own output says why it stopped). The error here: {first}"
        ) from err


def local_device(device: str | torch.device) -> torch.device:
    """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a job."""
    dev = torch.device(device)
    job = env()
    if dev.type == "cuda" and dev.index is None and job is not None:
        return torch.device("cuda", job.local_rank)
    return dev


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Every rank takes rank ``src``'s parameters and buffers (no-op without a job)."""
    broadcast_tensors([*module.parameters(), *module.buffers()], src=src)


@torch.no_grad()
def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Every rank takes rank ``src``'s values of ``tensors`` (in place; no-op without a job)."""
    if not is_distributed():
        return
    for tensor in tensors:
        if tensor.is_sparse:
            continue
        if tensor.is_contiguous():
            torch.distributed.broadcast(tensor.data, src=src)
        else:
            tmp = tensor.detach().contiguous()
            torch.distributed.broadcast(tmp, src=src)
            tensor.copy_(tmp)


def shard_loader(loader: Any, *, seed: int = 0) -> Any:
    """``loader`` (a ``torch.utils.data.DataLoader``) with a ``DistributedSampler``: rank r
    reads samples r, r+W, … of each epoch's order (shuffled by ``seed`` and the epoch when the
    loader shuffles; the trainer calls ``set_epoch``), every rank the same number of batches
    (the sampler pads by repeating samples). Without a job, the loader unchanged."""
    from torch.utils.data import DataLoader, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    if not is_distributed():
        return loader
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"shard_loader takes a torch DataLoader, got {type(loader).__name__}; shard an "
            f"iterable yourself (rank r takes every W-th batch) or build a DataLoader"
        )
    if loader.batch_size is None:
        raise ValueError("shard_loader needs a DataLoader with a batch_size (not a batch_sampler)")
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def split_batch(inputs: Any, targets: Mapping[str, Any]) -> tuple[Any, dict[str, Any], float]:
    """This rank's contiguous slice (along dim 0) of a global batch, and the weight of its
    losses: rank r of W takes rows ``[⌊r n/W⌋, ⌊(r+1) n/W⌋)`` of every tensor (in dicts,
    lists, tuples), of every object with ``index(rows)`` and ``len()`` (mtlrec's
    ``RecInputs``: ``obj.index(arange(lo, hi))``) and graphs ``lo … hi-1`` of a
    torch_geometric ``Batch``; a mean loss over its ``n_r`` rows weighted by ``W n_r / n``
    averages across the ranks to the global batch's mean loss, even when W does not divide
    n."""
    world = world_size()
    me = int(torch.distributed.get_rank()) if world > 1 else 0
    sizes = {int(t.shape[0]) for t in _tensors(targets) if t.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(
            f"cannot split the batch across {world} ranks: its targets have first dimensions "
            f"{sorted(sizes) or 'none'}, not one batch size"
        )
    (n,) = sizes
    if n < world:
        raise ValueError(
            f"a batch of {n} sample(s) cannot be split across {world} ranks; use a batch size "
            f"of at least {world} (and drop_last=True for a short last batch)"
        )
    lo, hi = me * n // world, (me + 1) * n // world
    return _slice(inputs, lo, hi, n), _slice(dict(targets), lo, hi, n), world * (hi - lo) / n


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


def _slice(obj: Any, lo: int, hi: int, n: int) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0 or obj.shape[0] != n:
            raise ValueError(
                f"cannot split a batch of {n} samples: a tensor of shape {tuple(obj.shape)} "
                f"has no batch dimension first; give the trainer a rank-sharded loader "
                f"instead (TrainerConfig(data_parallel='sharded_loader'))"
            )
        return obj[lo:hi]
    if isinstance(obj, Mapping):
        return {k: _slice(v, lo, hi, n) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_slice(v, lo, hi, n) for v in obj)
    rows = _rows_of(obj)
    if rows is not None:
        if rows != n:
            raise ValueError(
                f"cannot split a batch of {n} samples: its {type(obj).__name__} holds {rows} "
                f"rows, not {n}; give the trainer a rank-sharded loader instead "
                f"(TrainerConfig(data_parallel='sharded_loader'))"
            )
        if hasattr(obj, "to_data_list"):  # a torch_geometric Batch: graphs lo … hi-1
            return type(obj).from_data_list(obj.index_select(slice(lo, hi)))
        idx = torch.arange(lo, hi, device=getattr(obj, "device", None))
        return obj.index(idx)
    raise TypeError(
        f"cannot split a batch holding a {type(obj).__name__} across ranks (tensors, dicts, "
        f"lists and tuples of them can be, and objects with index(rows) and len(), such as "
        f"mtlrec's RecInputs, or torch_geometric Batches); give the trainer a rank-sharded "
        f"loader instead (TrainerConfig(data_parallel='sharded_loader'), e.g. "
        f"mtltrain.distributed.shard_loader)"
    )


def _rows_of(obj: Any) -> int | None:
    """The batch size of a batch object :func:`split_batch` can cut: a torch_geometric
    ``Batch`` (its ``num_graphs``) or an object with ``index(rows: Tensor)`` and ``len()`` (its
    rows, e.g. mtlrec's ``RecInputs``); None for anything else."""
    if isinstance(obj, str | bytes):
        return None
    if hasattr(obj, "to_data_list") and hasattr(obj, "index_select"):
        return int(obj.num_graphs)
    if callable(getattr(obj, "index", None)) and hasattr(obj, "__len__"):
        return len(obj)
    return None


def free_port() -> int:
    """A TCP port free on this machine now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch(
    command: Sequence[str],
    nproc: int,
    *,
    extra_env: Mapping[str, str] | None = None,
    grace_s: float = 10.0,
    timeout_s: float | None = None,
    master_port: int | None = None,
    poll_s: float = 0.1,
) -> int:
    """Run ``command`` as ``nproc`` ranks of one job on this machine; return 0 when all
    succeed.

    Each child gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT`` (a free port unless given). When a rank exits non-zero, the others get
    ``grace_s`` seconds to finish on their own (a collective with the dead rank makes them
    fail), then are terminated (SIGTERM, then SIGKILL); the launcher reports the first rank
    that failed on stderr and returns its exit code (1 for a signal). ``timeout_s`` bounds
    the whole job (the ranks are then stopped and 124 is returned).
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    port = master_port if master_port is not None else free_port()
    base = {**os.environ, **(extra_env or {})}
    procs: list[subprocess.Popen[bytes]] = []
    for rank in range(nproc):
        child_env = {
            **base,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(subprocess.Popen(list(command), env=child_env))
    start = time.monotonic()
    failed: tuple[int, int] | None = None
    failed_at = 0.0
    try:
        while True:
            codes = [p.poll() for p in procs]
            if failed is None:
                for rank, code in enumerate(codes):
                    if code not in (None, 0):
                        failed, failed_at = (rank, code), time.monotonic()
                        print(
                            f"mtltrain.distributed: rank {rank} of {nproc} {_describe(code)}; "
                            f"stopping the other ranks (they get {grace_s:g} s to exit)",
                            file=sys.stderr,
                            flush=True,
                        )
                        break
            if all(c is not None for c in codes):
                break
            now = time.monotonic()
            if failed is not None and now - failed_at > grace_s:
                _stop(procs)
                break
            if timeout_s is not None and now - start > timeout_s:
                print(
                    f"mtltrain.distributed: the job ran past its timeout of {timeout_s:g} s; "
                    f"stopping all {nproc} ranks",
                    file=sys.stderr,
                    flush=True,
                )
                _stop(procs)
                return 124
            time.sleep(poll_s)
    except BaseException:
        _stop(procs)
        raise
    if failed is not None:
        rank, code = failed
        print(
            f"mtltrain.distributed: the job failed: rank {rank} {_describe(code)} (see its "
            f"output above)",
            file=sys.stderr,
            flush=True,
        )
        return code if code > 0 else 1
    return 0


def _stop(procs: Sequence[subprocess.Popen[bytes]], wait_s: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + wait_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
