"""Tensor containers for recommendation inputs: :class:`Jagged` (multi-hot bags as offsets +
values), :class:`RecInputs` (sparse ids, dense matrix, bags — the input of every
:mod:`mtlrec.models` model) and :class:`RecBatch` (inputs + labels per task)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Jagged", "RecBatch", "RecInputs"]

_ID_DTYPES = (torch.int64, torch.int32)


@dataclass
class Jagged:
    """One multi-hot feature for ``N`` rows: row ``i`` holds ``values[offsets[i]:offsets[i+1]]``.

    ``offsets`` is int64 of shape ``(N + 1,)`` starting at 0 and ending at ``len(values)``;
    ``values`` int64 ids (an empty row pools to zeros). This is the layout of
    ``torch.nn.EmbeddingBag(values, offsets[:-1])`` and of one key of a TorchRec
    ``KeyedJaggedTensor`` (``lengths = offsets.diff()``). Note the argument order:
    ``Jagged(offsets, values)``.
    """

    offsets: Tensor
    values: Tensor

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def lengths(self) -> Tensor:
        """Bag sizes, int64 ``(N,)``."""
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Jagged:
        """Both tensors on ``device``."""
        return Jagged(
            self.offsets.to(device, non_blocking=non_blocking),
            self.values.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Jagged:
        """Both tensors in pinned host memory."""
        return Jagged(self.offsets.pin_memory(), self.values.pin_memory())

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

    def validate(self, feature: str = "?", n: int | None = None) -> Jagged:
        """Check dtypes, shapes and the offsets (``0`` first, ``len(values)`` last, never
        decreasing; one host sync) and, if given, that there are ``n`` rows. Returns ``self``;
        raises ``TypeError``/``ValueError`` naming ``feature``."""
        for what, t in (("offsets", self.offsets), ("values", self.values)):
            if not isinstance(t, Tensor):
                raise TypeError(
                    f"multi-hot feature {feature!r}: {what} must be a tensor, got "
                    f"{type(t).__name__}"
                )
            if t.dtype not in _ID_DTYPES:
                raise TypeError(
                    f"multi-hot feature {feature!r}: {what} must be int64 (or int32), got "
                    f"{t.dtype}; note the order Jagged(offsets, values)"
                )
            if t.dim() != 1:
                raise ValueError(
                    f"multi-hot feature {feature!r}: {what} must be 1-d, got shape {tuple(t.shape)}"
                )
        if self.offsets.shape[0] < 1 or (n is not None and self.offsets.shape[0] != n + 1):
            want = f"({n + 1},) (N + 1 entries)" if n is not None else "(N + 1,)"
            raise ValueError(
                f"multi-hot feature {feature!r}: expected offsets of shape {want}, got "
                f"{tuple(self.offsets.shape)}"
            )
        first, last = int(self.offsets[0]), int(self.offsets[-1])
        if first != 0 or last != self.values.shape[0]:
            raise ValueError(
                f"multi-hot feature {feature!r}: offsets must run from 0 to len(values) = "
                f"{self.values.shape[0]}, got {first} .. {last}"
            )
        if bool((self.lengths < 0).any()):
            raise ValueError(f"multi-hot feature {feature!r}: offsets must never decrease")
        return self


def _rows_of(sparse: Mapping[str, Tensor], multi_hot: Mapping[str, Jagged]) -> int | None:
    for ids in sparse.values():
        return int(ids.shape[0])
    for bag in multi_hot.values():
        return len(bag)
    return None


def _device_of(sparse: Mapping[str, Tensor], multi_hot: Mapping[str, Jagged]) -> torch.device:
    for ids in sparse.values():
        return ids.device
    for bag in multi_hot.values():
        return bag.values.device
    return torch.device("cpu")


class RecInputs:
    """Model inputs for ``N`` rows: the input of every :mod:`mtlrec.models` model, produced by
    :meth:`FittedFeatures.transform <mtlrec.data.FittedFeatures.transform>` and the loaders.

    Attributes:
        sparse: feature name -> int64 ``(N,)`` ids (0 is the reserved out-of-vocabulary id).
        dense: float32 ``(N, D)``, columns in the order of ``FittedFeatures.dense_names``;
            **always a tensor**: ``(N, 0)`` when there are no dense features.
        multi_hot: feature name -> :class:`Jagged` bag of ids.

    ``dense=None`` (the default) is accepted by the constructor and stored as an empty
    ``(N, 0)`` float32 matrix on the device of the other tensors, ``N`` taken from the first
    sparse or multi-hot feature; a batch with no features at all needs an explicit
    ``dense=torch.zeros(N, 0)``. The constructor does not check shapes (it runs per batch);
    :meth:`validate` does.
    """

    __slots__ = ("dense", "multi_hot", "sparse")

    def __init__(
        self,
        sparse: Mapping[str, Tensor] | None = None,
        dense: Tensor | None = None,
        multi_hot: Mapping[str, Jagged] | None = None,
    ) -> None:
        self.sparse: dict[str, Tensor] = dict(sparse or {})
        self.multi_hot: dict[str, Jagged] = dict(multi_hot or {})
        if dense is None:
            n = _rows_of(self.sparse, self.multi_hot)
            if n is None:
                raise ValueError(
                    "RecInputs has no sparse, multi_hot or dense features: it is empty; pass "
                    "dense=torch.zeros(N, 0) for N rows without features"
                )
            dense = torch.zeros(n, 0, device=_device_of(self.sparse, self.multi_hot))
        self.dense: Tensor = dense

    def __repr__(self) -> str:
        return (
            f"RecInputs(N={len(self)}, sparse={list(self.sparse)}, "
            f"dense={tuple(self.dense.shape)}, multi_hot={list(self.multi_hot)})"
        )

    @property
    def batch_size(self) -> int:
        """``N``, the number of rows (``dense.shape[0]``)."""
        return int(self.dense.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        """The device of the first sparse, else multi-hot, else dense tensor (all are expected
        on one device)."""
        if self.sparse or self.multi_hot:
            return _device_of(self.sparse, self.multi_hot)
        return self.dense.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RecInputs:
        """A copy with every tensor on ``device``."""
        return RecInputs(
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.sparse.items()},
            self.dense.to(device, non_blocking=non_blocking),
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.multi_hot.items()},
        )

    def pin_memory(self) -> RecInputs:
        """A copy in pinned host memory (for ``non_blocking`` copies to a GPU)."""
        return RecInputs(
            {k: v.pin_memory() for k, v in self.sparse.items()},
            self.dense.pin_memory(),
            {k: v.pin_memory() for k, v in self.multi_hot.items()},
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

    def validate(self) -> RecInputs:
        """Check types, shapes and dtypes (not id ranges: the embeddings know the table sizes;
        one host sync per multi-hot feature); returns ``self``. Raises
        ``ValueError``/``TypeError`` naming the feature."""
        if not isinstance(self.dense, Tensor):
            raise TypeError(
                f"dense features must be a (N, D) tensor ((N, 0) for none), got "
                f"{type(self.dense).__name__}"
            )
        rows = _rows_of(self.sparse, self.multi_hot)
        n = self.batch_size if rows is None else rows
        for name, ids in self.sparse.items():
            if not isinstance(ids, Tensor):
                raise TypeError(
                    f"sparse feature {name!r}: expected a tensor, got {type(ids).__name__}"
                )
            if ids.dtype not in _ID_DTYPES:
                raise TypeError(
                    f"sparse feature {name!r}: ids must be int64 (or int32), got {ids.dtype}; "
                    f"encode the column with the fitted feature spec first"
                )
            if ids.dim() != 1 or ids.shape[0] != n:
                raise ValueError(
                    f"sparse feature {name!r}: expected shape ({n},) (one id per row), got "
                    f"{tuple(ids.shape)}"
                )
        for name, bag in self.multi_hot.items():
            if not isinstance(bag, Jagged):
                raise TypeError(
                    f"multi-hot feature {name!r}: expected a Jagged(offsets, values), got "
                    f"{type(bag).__name__}"
                )
            bag.validate(name, n)
        if not self.dense.is_floating_point():
            raise TypeError(f"dense features must be floating point, got {self.dense.dtype}")
        if self.dense.dim() != 2 or self.dense.shape[0] != n:
            raise ValueError(
                f"dense features: expected shape ({n}, D) (one row per id; (N, 0) for none), "
                f"got {tuple(self.dense.shape)}"
            )
        return self


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
