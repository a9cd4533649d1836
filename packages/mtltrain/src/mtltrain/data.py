"""In-memory batches without per-sample overhead."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

__all__ = ["TensorLoader"]


class TensorLoader:
    """Batches ``(inputs[idx], {task: target[idx]})`` of tensors held in memory.

    With ``shuffle`` the order is a ``torch.randperm`` drawn from the global torch RNG when
    iteration starts, so :class:`~mtltrain.trainer.Trainer` can replay an interrupted epoch.
    ``drop_last`` drops a last batch smaller than ``batch_size``.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Mapping[str, Tensor],
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        n = inputs.shape[0]
        if n == 0:
            raise ValueError("inputs hold no rows")
        for task, y in targets.items():
            if y.shape[0] != n:
                raise ValueError(f"targets[{task!r}] has {y.shape[0]} rows, inputs have {n}")
        self.inputs = inputs
        self.targets = dict(targets)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = self.inputs.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        n = self.inputs.shape[0]
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.inputs[idx], {t: y[idx] for t, y in self.targets.items()}
