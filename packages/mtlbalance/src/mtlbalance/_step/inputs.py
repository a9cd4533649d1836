"""Stage "inputs": the task losses and the representation a step is given, validated."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

Losses = Mapping[str, Tensor] | Tensor | Sequence[Tensor]
Representation = Tensor | Sequence[Tensor] | None


def default_names(losses: Losses) -> tuple[str, ...]:
    """Task names when the balancer was given none: a dict's keys, else positions."""
    if isinstance(losses, Mapping):
        return tuple(str(k) for k in losses)
    return tuple(str(i) for i in range(len(_sequence(losses))))


def _sequence(losses: Tensor | Sequence[Tensor]) -> Sequence[Tensor]:
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses must be a dict task -> scalar loss or a 1-D tensor of task "
                f"losses; got a tensor of shape {tuple(losses.shape)}"
            )
        return list(losses.unbind(0))
    return list(losses)


def task_losses(losses: Losses, names: tuple[str, ...]) -> list[Tensor]:
    """The losses in task order, as 0-dim tensors of one floating dtype (float32 at least:
    ε, logs and norms are computed in it); errors name the task and what to fix."""
    if isinstance(losses, Mapping):
        given = tuple(str(k) for k in losses)
        unknown = [n for n in given if n not in names]
        missing = [n for n in names if n not in given]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown task(s) {unknown}")
            if missing:
                parts.append(f"missing loss for task(s) {missing}")
            raise ValueError(f"{' and '.join(parts)}; the balancer's tasks are {list(names)}")
        items = [(n, losses[n]) for n in names]
    else:
        seq = _sequence(losses)
        if len(seq) != len(names):
            raise ValueError(f"got {len(seq)} losses for {len(names)} tasks {list(names)}")
        items = list(zip(names, seq, strict=True))
    for name, loss in items:
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss of task {name!r} is a {type(loss).__name__}, not a tensor")
        if loss.numel() != 1:
            raise ValueError(
                f"loss of task {name!r} has shape {tuple(loss.shape)}; each task loss must be "
                f"a scalar (reduce it, e.g. with .mean())"
            )
        if not loss.requires_grad:
            raise ValueError(
                f"loss of task {name!r} does not require grad; was it computed under "
                f"torch.no_grad() or detached?"
            )
    dtype = functools.reduce(torch.promote_types, [loss.dtype for _, loss in items], torch.float32)
    return [loss.reshape(()).to(dtype) for _, loss in items]


def representation(rep: Representation) -> tuple[Tensor, ...] | None:
    """The shared representation(s) the heads read, checked to be part of the graph."""
    if rep is None:
        return None
    zs = (rep,) if isinstance(rep, Tensor) else tuple(rep)
    for i, z in enumerate(zs):
        if not isinstance(z, Tensor) or z.grad_fn is None:
            raise ValueError(
                f"representation[{i}] must be the output of the shared part of the model, "
                f"attached to the autograd graph (not detached, not a leaf)"
            )
    return zs


def after_step_losses(losses: Losses, names: tuple[str, ...]) -> Tensor:
    """The (T,) losses given to ``after_step`` (no gradients are taken)."""
    with torch.no_grad():
        if isinstance(losses, Mapping):
            missing = [n for n in names if n not in losses]
            if missing or len(losses) != len(names):
                raise ValueError(
                    f"after_step needs one loss per task {list(names)}, got {list(losses)}"
                )
            return torch.stack([losses[n].detach().reshape(()) for n in names])
        return torch.stack([t.detach().reshape(()) for t in losses])
