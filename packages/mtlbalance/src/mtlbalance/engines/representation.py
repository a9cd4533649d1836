"""The representation engine: per-task gradients at the shared representation, then one
batched backward through the shared part."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import Engine, EngineInputs, EngineResult, VmapCall, task_param_grads, write_row


class RepresentationEngine(Engine):
    r"""Exact per-task gradients through the shared representation ``z = f_θ(x)``:

    1. for each task, one backward through its head only: ``∂ℓ̃_t/∂z`` and ``∇ψ_t ℓ̃_t``;
    2. one vmapped backward of the T rows ``∂ℓ̃_t/∂z`` through the shared part:
       ``∇θ ℓ̃_t = (∂z/∂θ)ᵀ ∂ℓ̃_t/∂z``.

    Each head is back-propagated once (as in EW) and only the shared part T times, batched.
    Exact when the shared parameters reach the losses only through ``z`` (the usual hard
    parameter sharing); pass every tensor the heads read from the shared part (a tuple for
    multi-scale features) — but none computed from another (a nested pair would count the
    path between them twice; this is checked on the first step). The ``auto`` engine also
    compares this engine's matrix with the loop engine's on its first step."""

    name: ClassVar[str] = "representation"
    needs_representation: ClassVar[bool] = True

    def __init__(self, chunk_size: int | None = None):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        self.chunk_size = chunk_size
        self._vmap = VmapCall(self.name)
        self._checked = False

    def compute(self, inputs: EngineInputs, out: Tensor, retain_graph: bool) -> EngineResult:
        zs = inputs.representation
        if zs is None:
            raise ValueError(
                "the representation engine needs the shared representation: call "
                "balancer.backward(losses, representation=z) with z the output of the shared "
                "part that the task heads read"
            )
        if not self._checked:
            _check_not_nested(zs)
            self._checked = True
        num_tasks = inputs.num_tasks
        rows: list[list[Tensor]] = [[] for _ in zs]
        task_grads: list[list[Tensor | None]] = []
        for t in range(num_tasks):
            gz, own = task_param_grads(inputs, t, zs, True)
            for i, (z, g) in enumerate(zip(zs, gz, strict=True)):
                rows[i].append(torch.zeros_like(z) if g is None else g)
            task_grads.append(own)
        stacked = [torch.stack(r) for r in rows]
        chunk = self.chunk_size or num_tasks
        reached = [False] * len(inputs.layout.params)
        for r0 in range(0, num_tasks, chunk):
            r1 = min(r0 + chunk, num_tasks)
            keep = retain_graph or r1 < num_tasks or self._vmap.calls == 0
            grads = self._vmap(zs, inputs.layout.params, [s[r0:r1] for s in stacked], keep)
            for i, g in enumerate(grads):
                reached[i] = reached[i] or g is not None
            write_row(out[r0:r1], grads, inputs.layout)
        return EngineResult(task_grads=task_grads, reached=reached)


def _check_not_nested(zs: tuple[Tensor, ...]) -> None:
    """Raise if one representation tensor is computed from another (checked once: a short
    backward between each pair)."""
    for i, zi in enumerate(zs):
        for j, zj in enumerate(zs):
            if i == j:
                continue
            (g,) = torch.autograd.grad(
                zj, zi, grad_outputs=torch.ones_like(zj), retain_graph=True, allow_unused=True
            )
            if g is not None:
                raise ValueError(
                    f"representation[{j}] is computed from representation[{i}]; the "
                    f"representation engine needs tensors that do not depend on each other "
                    f"(the frontier where the shared part ends). Pass only independent "
                    f"tensors, or use engine='batched'"
                )
