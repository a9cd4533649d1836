"""Single-task learning (STL) as a balancing mode: train one task alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from .base import LossWeighting


class STL(LossWeighting):
    r"""Single-task learning: one-hot weights, ``update = ∇ ℓ̃_task``.

    The reference runs of Δp train each task alone; with this aggregator the same multi-task
    model and loop do it (the other tasks' losses are still computed, and their heads get
    zero gradients). ``task`` is required: a task name, or its position in the task order.

    Args:
        task: the task to train (name or index). Checked when the task names are known.
    """

    name: ClassVar[str] = "stl"
    reference: ClassVar[str] = "Single-task learning, the reference of Δp (one task trained alone)"
    cost: ClassVar[str] = "one backward (as EW)"

    def __init__(self, task: str | int | None = None):
        super().__init__()
        if task is not None and (isinstance(task, bool) or not isinstance(task, str | int)):
            raise ValueError(f"task must be a task name or index, got {task!r}")
        self.task = task
        self.index: int | None = None

    def setup(self, task_names: Sequence[str]) -> None:
        names = list(task_names)
        if self.task is None:
            raise ValueError(
                f"stl trains a single task: pass task=<name> (one of {names}) or its index"
            )
        if isinstance(self.task, int):
            if not -len(names) <= self.task < len(names):
                raise ValueError(f"stl: task index {self.task} is out of range for tasks {names}")
            self.index = self.task % len(names)
        elif self.task in names:
            self.index = names.index(self.task)
        else:
            raise ValueError(f"stl: unknown task {self.task!r}; the tasks are {names}")

    def forward(self, losses: Tensor, transformed: Tensor) -> Tensor:
        if self.index is None:  # pragma: no cover - setup runs before the first backward
            raise RuntimeError("stl: the task names are not known yet")
        positions = torch.arange(losses.shape[0], device=losses.device)
        return (positions == self.index).to(losses.dtype)  # (no host sync, unlike w[i] = 1)

    def extra_repr(self) -> str:
        return f"task={self.task!r}"
