"""Checks that run before anything trains, so that a mistake costs seconds, not the hours of
the runs before it: every method name and its ``[method_options]`` (one balancing step on a
tiny problem), the checkpoints a run would overwrite, and one invocation per ``--out``."""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import mtlbalance
from mtltrain.checkpoint import BEST_MODEL, LAST_CHECKPOINT
from mtltrain.sharded import BEST_SHARDED, LAST_SHARDED

from .spec import Spec

__all__ = [
    "check_checkpoints",
    "check_methods",
    "delete_checkpoints",
    "lock_out_dir",
    "saved_checkpoint",
    "suggest_method",
]

STL = "stl"


def _squash(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum() or c == "+")


def suggest_method(name: str) -> str:
    """' (did you mean ...?)' for an unknown method name, '' when nothing is close. LibMTL's
    spellings (``DB_MTL``, ``Nash_MTL``, ``Aligned_MTL``) map to ours."""
    known = mtlbalance.available()
    head = name.rpartition("+")[2]
    exact = [k for k in known if _squash(k) == _squash(head)]
    close = exact or difflib.get_close_matches(head.lower(), known, n=3, cutoff=0.6)
    if not close:
        return ""
    prefix = name[: len(name) - len(head)]
    return f" (did you mean {' or '.join(repr(prefix + c) for c in close)}?)"


def check_methods(spec: Spec, methods: Sequence[str]) -> None:
    """Build every method with its spec options and take one balancing step on a tiny problem
    with the spec's tasks; any failure is a ValueError naming the spec file and the method.
    Also rejects ``[method_options.<name>]`` tables whose name is not a method."""
    where = str(spec.path) if spec.path is not None else f"spec {spec.name!r}"
    for name in spec.method_options:
        try:
            mtlbalance.make(name, nn.Linear(1, 1))
        except ValueError as e:
            raise ValueError(
                f"{where}: [method_options.{name}] does not name a method "
                f"({str(e).partition('; available')[0]})"
                f"{suggest_method(name)}; methods are listed in docs/methods.md"
            ) from e
    tasks = list(spec.tasks)
    for method in dict.fromkeys([*methods, STL] if STL in methods else methods):
        options = spec.options_for(method)
        if method == STL:
            options["task"] = tasks[0]
        try:
            _one_step(method, tasks, options)
        except ValueError as e:
            if "unknown method" in str(e) or "unknown transform" in str(e):
                raise ValueError(
                    f"unknown method {method!r}{suggest_method(method)}; see `mtlbench list` "
                    "and docs/methods.md for the names"
                ) from e
            raise ValueError(_bad_options(where, method, options, e)) from e
        except (TypeError, RuntimeError, ArithmeticError) as e:
            raise ValueError(_bad_options(where, method, options, e)) from e


def _bad_options(where: str, method: str, options: dict[str, Any], error: Exception) -> str:
    shown = {k: v for k, v in options.items() if k != "task"}
    return (
        f"{where}: method {method!r} with [method_options.{method}] {shown} fails before "
        f"training ({type(error).__name__}: {error}); fix the option's name or value (numbers "
        "without quotes)"
    )


def _one_step(method: str, tasks: list[str], options: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(0)
    encoder = nn.Linear(3, 4)
    heads = {t: nn.Linear(4, 1) for t in tasks}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        balancer = mtlbalance.make(method, encoder, heads, **options)
        z = encoder(torch.randn(8, 3, generator=g))
        losses = {t: (h(z) ** 2).mean() + 0.1 * (i + 1) for i, (t, h) in enumerate(heads.items())}
        balancer.backward(losses, representation=z)


def saved_checkpoint(ckpt_dir: Path) -> Path | None:
    """The run's resume checkpoint in ``ckpt_dir``: ``last.pt``, or the folder ``last/`` of a
    run with sharded tables (any save begun there, complete or not); None when neither."""
    last = ckpt_dir / LAST_CHECKPOINT
    if last.is_file():
        return last
    folder = ckpt_dir / LAST_SHARDED
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    return None


def delete_checkpoints(ckpt_dir: Path) -> None:
    """``--restart``: the run's checkpoints deleted (every rank may call it at once)."""
    for name in (LAST_CHECKPOINT, BEST_MODEL):
        (ckpt_dir / name).unlink(missing_ok=True)
    for name in (LAST_SHARDED, BEST_SHARDED):
        shutil.rmtree(ckpt_dir / name, ignore_errors=True)


def check_checkpoints(ckpt_dirs: Sequence[Path], *, resume: bool, restart: bool) -> None:
    """Refuse to start over on top of earlier checkpoints (in the runs' checkpoint folders)
    unless told which to do."""
    if resume or restart:
        return
    found = [p for p in (saved_checkpoint(d) for d in ckpt_dirs) if p is not None]
    if found:
        listed = ", ".join(str(p) for p in found[:3]) + (" ..." if len(found) > 3 else "")
        raise ValueError(
            f"{len(found)} run(s) of this invocation already have a checkpoint ({listed}): "
            "pass --resume to continue them, or --restart to delete them and start over"
        )


@contextlib.contextmanager
def lock_out_dir(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.mtlbench.lock`` for the duration: two invocations writing the same
    checkpoints and reports would corrupt each other's runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ".mtlbench.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise ValueError(
                f"another mtlbench run (pid {holder}) is using --out {out_dir}: wait for it to "
                "finish, or give this one another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
