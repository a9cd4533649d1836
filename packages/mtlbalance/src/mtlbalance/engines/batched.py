"""The batched engine: all T rows in one vmapped backward."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from .base import Engine, EngineInputs, EngineResult, VmapCall, task_param_grads, write_row


class BatchedEngine(Engine):
    """``torch.autograd.grad(ℓ̃, shared, grad_outputs=I_T, is_grads_batched=True)``: one
    vmapped backward gives all T rows (optionally ``chunk_size`` rows at a time, to bound
    memory). Task-specific gradients come from one small backward per task that runs only
    through that task's head.

    Layers without a vmap batching rule are looped over by PyTorch (a warning names them); a
    layer vmap cannot handle at all (cuDNN's RNN backward) raises
    :class:`~mtlbalance.engines.BatchingUnsupported`, which the balancer turns into a fallback
    to the loop engine (see :func:`mtlbalance.without_cudnn_rnn`)."""

    name: ClassVar[str] = "batched"

    def __init__(self, chunk_size: int | None = None):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        self.chunk_size = chunk_size
        self._vmap = VmapCall(self.name)

    def compute(self, inputs: EngineInputs, out: Tensor, retain_graph: bool) -> EngineResult:
        num_tasks = inputs.num_tasks
        task_grads = [task_param_grads(inputs, t, (), True)[1] for t in range(num_tasks)]
        chunk = self.chunk_size or num_tasks
        reached = [False] * len(inputs.layout.params)
        for r0 in range(0, num_tasks, chunk):
            r1 = min(r0 + chunk, num_tasks)
            # The first call keeps the graph so a missing batching rule can fall back cleanly.
            keep = retain_graph or r1 < num_tasks or self._vmap.calls == 0
            outputs, seeds = inputs.batched_seed(r0, r1)
            grads = self._vmap(outputs, inputs.layout.params, seeds, keep)
            for i, g in enumerate(grads):
                reached[i] = reached[i] or g is not None
            write_row(out[r0:r1], grads, inputs.layout)
        return EngineResult(task_grads=task_grads, reached=reached)
