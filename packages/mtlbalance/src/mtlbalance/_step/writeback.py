"""Stage "write-back": the ONE writer of ``.grad`` — shared parameters, tables, each task's
own parameters, the transform's parameters — after the optional clip of the shared update
(its norm global: a per-rank table's part is ``sqrt(Σ_r ‖g_r‖²)``, :mod:`.perrank`).

It accumulates like ``loss.backward()`` (a ``.grad`` not cleared since the last step is
added to). The shared update lives in one of two flat buffers whose views become the shared
parameters' ``.grad``: an aggregator writes into the free one directly (no copy), and the two
alternate so that a ``.grad`` left from the last step is added to, never overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._norms import norms
from . import perrank
from .context import Setup, Step


def accumulate(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """``p.grad += g`` (``p.grad = g`` where None); a None gradient writes nothing."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.detach()
        else:
            p.grad.add_(g)


def clip(tensors: list[Tensor], max_norm: float | None, given: Tensor | None) -> Tensor | None:
    """The norm of ``tensors`` together (from their per-tensor norms ``given``, when a stage
    already computed them); with ``max_norm``, scale them in place so that it is at most
    ``max_norm``, and return the norm after the clip."""
    if not tensors:
        return None
    norm = torch.linalg.vector_norm(norms(tensors) if given is None else given)
    if max_norm is None:
        return norm
    scale = (max_norm / norm.clamp_min(1e-30)).clamp(max=1.0)
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        if t.is_sparse:  # (the tables' sparse gradients)
            t.mul_(scale.to(device=t.device, dtype=t.dtype))
        else:
            groups.setdefault((t.dtype, t.device), []).append(t)
    for (dtype, device), group in groups.items():
        torch._foreach_mul_(group, scale.to(device=device, dtype=dtype))
    return norm * scale


def write(setup: Setup, step: Step) -> None:
    """Clip, then write everything the step computed into ``.grad``."""
    tables = [g for g in step.table_grads if g is not None]
    max_norm = setup.options.max_update_norm
    if step.shared_grads is not None:  # one combined backward: per-parameter gradients
        step.update_norm = clip(step.combined, max_norm, step.combined_norms)
        accumulate(setup.layout.params, step.shared_grads)
    else:
        if step.update_index is None:  # a flat update computed elsewhere: into a buffer
            assert step.update is not None
            step.update_index, buf = setup.buffers.free()
            buf.copy_(step.update)
        buf = setup.buffers.buffer(step.update_index)
        given = step.combined_norms
        if given is None and step.per_rank:  # (a gradient-level method's per-rank tables)
            given = perrank.norms(step, [buf, *tables])
        step.update_norm = clip([buf, *tables], max_norm, given)
        setup.buffers.assign(step.update_index)
    accumulate(setup.table_params, step.table_grads)
    task_weights = step.task_weights
    for t, params in enumerate(setup.task_params):
        grads = step.task_grads[t]
        if task_weights is not None:
            grads = [None if g is None else g * task_weights[t] for g in grads]
        accumulate(params, grads)
    if step.transform_grads is not None:
        accumulate(setup.transform_params(), step.transform_grads)
