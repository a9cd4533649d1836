"""Tensor containers for recommendation inputs: :class:`Jagged` (multi-hot bags as offsets +
values), :class:`RecInputs` (sparse ids, dense matrix, bags) and :class:`RecBatch` (inputs +
labels per task)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Jagged", "RecBatch", "RecInputs"]


@dataclass
class Jagged:
    """One multi-hot feature for ``N`` rows: row ``i`` holds ``values[offsets[i]:offsets[i+1]]``.

    ``offsets`` is int64 of shape ``(N + 1,)`` starting at 0; ``values`` int64 ids. This is the
    layout of ``torch.nn.EmbeddingBag(input, offsets[:-1])`` and of one key of a TorchRec
    ``KeyedJaggedTensor`` (``lengths = offsets.diff()``).
    """

    offsets: Tensor
    values: Tensor

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def lengths(self) -> Tensor:
        """Bag sizes, int64 ``(N,)``."""
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device: torch.device | str) -> Jagged:
        """Both tensors on ``device``."""
        return Jagged(self.offsets.to(device), self.values.to(device))

    def index(self, idx: Tensor) -> Jagged:
        """The bags of rows ``idx`` (a 1-D int64 tensor), in that order."""
        idx = idx.to(self.offsets.device)
        lengths = self.lengths[idx]
        offsets = torch.zeros(idx.shape[0] + 1, dtype=torch.int64, device=self.offsets.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        shift = torch.repeat_interleave(self.offsets[:-1][idx] - offsets[:-1], lengths)
        positions = torch.arange(int(offsets[-1]), device=self.offsets.device) + shift
        return Jagged(offsets, self.values[positions])

    @staticmethod
    def cat(parts: list[Jagged]) -> Jagged:
        """Rows of ``parts`` one after another."""
        offsets = [parts[0].offsets]
        end = parts[0].offsets[-1]
        for p in parts[1:]:
            offsets.append(p.offsets[1:] + end)
            end = end + p.offsets[-1]
        return Jagged(torch.cat(offsets), torch.cat([p.values for p in parts]))


@dataclass
class RecInputs:
    """Model inputs for ``N`` rows.

    Attributes:
        sparse: feature name -> int64 ``(N,)`` ids (0 is the reserved out-of-vocabulary id).
        dense: float32 ``(N, D)``, columns in the order of ``FittedFeatures.dense_names``.
        multi_hot: feature name -> :class:`Jagged` bag of ids.
    """

    sparse: dict[str, Tensor] = field(default_factory=dict)
    dense: Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    multi_hot: dict[str, Jagged] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RecInputs:
        """A copy with every tensor on ``device``."""
        return RecInputs(
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.sparse.items()},
            self.dense.to(device, non_blocking=non_blocking),
            {k: v.to(device) for k, v in self.multi_hot.items()},
        )

    def index(self, idx: Tensor) -> RecInputs:
        """Rows ``idx`` (1-D int64 tensor)."""
        return RecInputs(
            {k: v[idx] for k, v in self.sparse.items()},
            self.dense[idx],
            {k: v.index(idx) for k, v in self.multi_hot.items()},
        )

    @staticmethod
    def cat(parts: list[RecInputs]) -> RecInputs:
        """Rows of ``parts`` one after another (same features in each)."""
        first = parts[0]
        return RecInputs(
            {k: torch.cat([p.sparse[k] for p in parts]) for k in first.sparse},
            torch.cat([p.dense for p in parts]),
            {k: Jagged.cat([p.multi_hot[k] for p in parts]) for k in first.multi_hot},
        )


@dataclass
class RecBatch:
    """Inputs and labels (task -> float32 ``(N,)``) for ``N`` rows."""

    inputs: RecInputs
    labels: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.inputs)

    def to(self, device: torch.device | str) -> RecBatch:
        """A copy with every tensor on ``device``."""
        return RecBatch(self.inputs.to(device), {k: v.to(device) for k, v in self.labels.items()})

    def index(self, idx: Tensor) -> RecBatch:
        """Rows ``idx`` (1-D int64 tensor)."""
        return RecBatch(self.inputs.index(idx), {k: v[idx] for k, v in self.labels.items()})

    def as_pair(self) -> tuple[RecInputs, dict[str, Tensor]]:
        """``(inputs, {task: target})`` as the trainer takes batches."""
        return self.inputs, self.labels

    @staticmethod
    def cat(parts: list[RecBatch]) -> RecBatch:
        """Rows of ``parts`` one after another."""
        return RecBatch(
            RecInputs.cat([p.inputs for p in parts]),
            {k: torch.cat([p.labels[k] for p in parts]) for k in parts[0].labels},
        )
