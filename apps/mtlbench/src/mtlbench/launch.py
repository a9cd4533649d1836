"""``mtlbench run SPEC --nproc N``, and the same command under torchrun.

With ``--nproc N`` (N > 1) outside a job, the command starts N copies of itself as the ranks
of one job (:func:`mtltrain.distributed.launch`: gloo on CPU, nccl on GPU; a rank that fails
stops the others, naming it). Inside a job — those copies, or ``torchrun --nproc-per-node N
-m mtlbench.cli run SPEC`` on each node — every rank joins the process group from the
environment and trains its shard of each global batch; rank 0 alone holds the ``--out`` lock,
tracks (MLflow, spool), writes checkpoints and prints the report (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from mtltrain import distributed
from mtltrain.progress import rank

__all__ = ["NullTracker", "is_rank0", "job", "relaunch"]

CHILD_MARK = "MTLBENCH_NPROC"


def relaunch(argv: Sequence[str], nproc: int) -> int | None:
    """Start ``nproc`` ranks running ``argv`` (without ``--nproc``) and wait for them; None
    when this process is already a rank (or nproc is 1: nothing to start)."""
    job_env = distributed.env()
    if job_env is not None:
        if nproc not in (1, job_env.world_size):
            raise ValueError(
                f"--nproc {nproc} inside a job of WORLD_SIZE={job_env.world_size} (torchrun "
                f"starts the ranks): drop --nproc, or make it match"
            )
        return None
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, not {nproc}")
    if nproc == 1:
        return None
    child = _without_nproc(list(argv))
    return distributed.launch(
        [sys.executable, "-m", "mtlbench.cli", *child],
        nproc,
        extra_env={CHILD_MARK: str(nproc)},
    )


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


@contextlib.contextmanager
def job(device: str) -> Iterator[None]:
    """Join the job the environment describes for the command's duration (nothing outside
    one); ``device`` picks gloo (CPU) or nccl (CUDA)."""
    import torch

    if distributed.env() is None:
        yield
        return
    dev = device
    if device == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    distributed.init_from_env(dev)
    try:
        yield
    finally:
        distributed.shutdown()


def is_rank0() -> bool:
    return rank() == 0


@contextlib.contextmanager
def quiet_preflight() -> Iterator[None]:
    """The preflight's one-step balancers are local on purpose: no data-parallel warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="mtlbalance: torch.distributed is initialised")
        yield


class NullTracker:
    """What ranks other than 0 track: nothing (rank 0 tracks the job)."""

    parent: str | None = None

    def __init__(self) -> None:
        self.run_id = f"rank{rank()}-{os.getpid()}"

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None
