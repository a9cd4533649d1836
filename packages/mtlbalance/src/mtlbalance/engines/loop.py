"""The loop engine: one ``torch.autograd.grad`` per task."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import Engine, EngineInputs, EngineResult, write_row


class LoopEngine(Engine):
    """Row t of the matrix is ``torch.autograd.grad(ℓ̃_t, shared + own params of t)``.

    T backward passes through the whole network. Works with every layer (no vmap needed);
    memory is one backward at a time plus the (T, P) buffer."""

    name: ClassVar[str] = "loop"

    def compute(self, inputs: EngineInputs, out: Tensor, retain_graph: bool) -> EngineResult:
        layout = inputs.layout
        shared = layout.params
        num_tasks = inputs.num_tasks
        reached = [False] * len(shared)
        task_grads: list[list[Tensor | None]] = []
        for t in range(num_tasks):
            own = list(inputs.task_params[t])
            keep = retain_graph or t < num_tasks - 1
            outputs, seeds = inputs.row_seed(t)
            grads = torch.autograd.grad(
                outputs, [*shared, *own], grad_outputs=seeds, retain_graph=keep, allow_unused=True
            )
            shared_grads = grads[: len(shared)]
            for i, g in enumerate(shared_grads):
                reached[i] = reached[i] or g is not None
            write_row(out[t], shared_grads, layout)
            task_grads.append(list(grads[len(shared) :]))
        return EngineResult(task_grads=task_grads, reached=reached)
