"""Tables marked :func:`mtlbalance.per_rank` under a process group (data parallel): each
rank holds its OWN rows of such a tensor (an activation leaf: the pooled embeddings of its
samples), not a replica, so its gradient is never averaged across the ranks.

With W ranks on equal shards, the global loss ``ℓ_t = (1/W) Σ_r ℓ_t^r`` reaches rank r's rows
``Ê_r`` through ``ℓ^r`` only::

    ∂ℓ/∂Ê_r = (1/W) ∂ℓ^r/∂Ê_r          (the local gradient times 1/W, no collective)

The ranks then hold different gradients, so what the balancer DECIDES from them must be made
the same everywhere, or the ranks diverge (one skips a step, another does not) or deadlock
(one raises while the other waits in a collective). Everything decided reads norms, and the
global norm of a per-rank gradient is ``‖g‖ = sqrt(Σ_r ‖g_r‖²)``: :func:`global_norms` sums
the squared local norms (float64: no overflow for finite float32 entries; a non-finite entry
on any rank makes the sum non-finite on every rank) in ONE all-reduce of one float64 per
per-rank tensor, and the readers use those norms:

* the check (:mod:`.check`): a non-finite gradient on any rank → every rank skips the step
  (under a loss scale) or raises; its rare path (a finite gradient whose norm overflows)
  computes the exact norm across the ranks (:func:`exact_norm`);
* the clip to ``max_update_norm`` and the reported ``update_norm`` (:mod:`.writeback`): the
  norm of the whole update, per-rank parts global.

With one process (no ``process_group``) nothing here runs: a marked tensor is an ordinary
table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._norms import exact_norm as local_exact_norm
from .._norms import norms as local_norms
from .._params import is_per_rank
from .context import Grads, Setup, Step


def flags(setup: Setup) -> list[bool]:
    """Per table (``tables=`` order): marked per rank AND reduced across ranks."""
    if setup.collective is None:
        return [False] * len(setup.tables)
    return [is_per_rank(p) for p in setup.table_params]


def refuse_accumulation(setup: Setup) -> None:
    """A per-rank table cannot accumulate micro-batches under a process group (its rows
    differ between micro-batches: their gradients do not add up)."""
    names = [n for (n, _), m in zip(setup.tables, flags(setup), strict=True) if m]
    if names:
        raise ValueError(
            f"table(s) {', '.join(names)} are marked per_rank (this rank's own rows, e.g. a "
            f"table frontier) and cannot accumulate micro-batches under a process group: "
            f"each micro-batch has other rows. Call backward() on each batch instead"
        )


def reduced(setup: Setup, grads: Grads, averaged: Grads) -> Grads:
    """The tables' reduced gradients: ``averaged`` (the collective's output, computed for the
    replicated tables only) and, for a per-rank table, its local gradient times ``1/W``."""
    assert setup.collective is not None
    world = setup.collective.world_size
    return [
        (None if g is None else g / world) if mine else a
        for g, a, mine in zip(grads, averaged, flags(setup), strict=True)
    ]


def replicated_only(setup: Setup, grads: Grads) -> Grads:
    """``grads`` with the per-rank tables' entries left out (None): what is averaged."""
    return [None if mine else g for g, mine in zip(grads, flags(setup), strict=True)]


def _sq_norm(g: Tensor) -> Tensor:
    values = g.coalesce().values() if g.is_sparse else g
    return torch.linalg.vector_norm(values.detach(), dtype=torch.float64).square()


def global_norms(setup: Setup, step: Step) -> None:
    """``step.per_rank``: each per-rank table's (reduced) gradient with its global norm
    ``sqrt(Σ_r ‖g_r‖²)`` (float64), from one all-reduce of their squared local norms."""
    step.per_rank = []
    mine = [g for g, m in zip(step.table_grads, flags(setup), strict=True) if m and g is not None]
    if not mine:
        return
    assert setup.collective is not None
    squares = torch.stack([_sq_norm(g) for g in mine])
    setup.collective.all_reduce_([squares])
    step.per_rank = list(zip(mine, squares.sqrt().unbind(), strict=True))


def norms(step: Step, tensors: Sequence[Tensor]) -> Tensor:
    """:func:`mtlbalance._norms.norms` of ``tensors``, a per-rank gradient's entry its global
    norm (the same on every rank)."""
    out = local_norms(tensors)
    if not step.per_rank:
        return out
    where = {id(g): n for g, n in step.per_rank}
    hits = [(i, where[id(t)]) for i, t in enumerate(tensors) if id(t) in where]
    if hits:
        out = out.clone()
        for i, n in hits:
            out[i] = n.to(device=out.device, dtype=out.dtype)
    return out


def exact_norm(setup: Setup, step: Step, tensors: Sequence[Tensor]) -> float | None:
    """:func:`mtlbalance._norms.exact_norm` of ``tensors`` together, the per-rank gradients
    among them taken across the ranks (two small all-reduces; the check's rare path, which
    every rank enters together since its flags are global): None if an entry is not finite
    on some rank."""
    where = {id(g) for g, _ in step.per_rank}
    local = [t for t in tensors if id(t) in where]
    if not local or setup.collective is None:
        return local_exact_norm(tensors)
    others = [t for t in tensors if id(t) not in where]
    flat = [
        (t.coalesce().values() if t.is_sparse else t).detach().reshape(-1).double() for t in local
    ]
    finite = all(bool(torch.isfinite(f).all()) for f in flat)
    big = max((float(f.abs().max()) for f in flat if f.numel() and finite), default=0.0)
    head = torch.tensor([0.0 if finite else 1.0, big], dtype=torch.float64)
    setup.collective.all_reduce_([head], op="max")
    rest = local_exact_norm(others) if others else 0.0
    if head[0] > 0 or rest is None:
        return None
    big = max(float(head[1]), rest)
    part = torch.zeros(1, dtype=torch.float64)
    if big > 0:
        part += sum((float((f / big).square().sum()) for f in flat), 0.0)
    setup.collective.all_reduce_([part])
    if big == 0.0:
        return 0.0
    return big * math.sqrt(float(part) + (rest / big) ** 2)
