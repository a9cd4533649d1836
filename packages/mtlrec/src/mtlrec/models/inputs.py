"""The model input of every :mod:`mtlrec` model: :class:`RecInputs`.

One batch of ``N`` rows:

- ``sparse``: ``{feature: ids}``, one ``int64`` id per row, shape ``(N,)``;
- ``multi_hot``: ``{feature: (values, offsets)}`` in CSR form — ``values`` the ``int64`` ids of
  all rows concatenated, ``offsets`` of shape ``(N + 1,)`` with ``offsets[0] == 0`` and
  ``offsets[-1] == len(values)``; row ``i`` holds ``values[offsets[i]:offsets[i + 1]]`` (an
  empty row pools to zeros);
- ``dense``: ``(N, D)`` float32, or None.

The data side (:mod:`mtlrec.data`) produces it; the embeddings
(:class:`~mtlrec.models.SparseEmbeddings`) and models consume it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["RecInputs", "as_bag", "batch_size_of", "check_inputs", "random_inputs"]


def as_bag(entry: Any, feature: str = "?") -> tuple[Tensor, Tensor]:
    """``(values, offsets)`` of one multi-hot feature given as a ``(values, offsets)`` pair or
    as an object with ``.values`` and ``.offsets`` (``mtlrec.data.Jagged``)."""
    if hasattr(entry, "offsets") and hasattr(entry, "values") and not isinstance(entry, tuple):
        return entry.values, entry.offsets
    if isinstance(entry, tuple) and len(entry) == 2:
        return entry[0], entry[1]
    raise TypeError(
        f"multi-hot feature {feature!r}: expected a (values, offsets) pair or a Jagged, got "
        f"{type(entry).__name__}"
    )


def check_inputs(inputs: Any, who: str = "the model") -> None:
    """Raise a TypeError unless ``inputs`` looks like :class:`RecInputs` (``sparse``,
    ``multi_hot`` and ``dense`` attributes; ``mtlrec.data.RecInputs`` qualifies)."""
    if not all(hasattr(inputs, a) for a in ("sparse", "multi_hot", "dense")):
        raise TypeError(
            f"{who} takes RecInputs (sparse, multi_hot and dense fields; see "
            f"mtlrec.models.RecInputs), not {type(inputs).__name__}"
        )


def batch_size_of(inputs: Any) -> int:
    """``N`` of a RecInputs-like object: from its sparse ids, else its bags, else its dense
    matrix."""
    for ids in inputs.sparse.values():
        return int(ids.shape[0])
    for name, entry in inputs.multi_hot.items():
        return int(as_bag(entry, name)[1].shape[0]) - 1
    if inputs.dense is not None:
        return int(inputs.dense.shape[0])
    raise ValueError("RecInputs has no sparse, multi_hot or dense features: it is empty")


@dataclass
class RecInputs:
    """Sparse ids, multi-hot bags and dense features of one batch (see the module docstring
    for the layout). :meth:`validate` checks shapes and dtypes; :meth:`to` moves everything."""

    sparse: dict[str, Tensor] = field(default_factory=dict)
    multi_hot: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    dense: Tensor | None = None
    # mtlrec.data.RecInputs has the same fields (bags as Jagged(offsets, values), dense
    # (N, 0) when absent); the embeddings and models take either.

    @property
    def batch_size(self) -> int:
        """``N``, the number of rows (from the first field present)."""
        return batch_size_of(self)

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        """The device of the first tensor (all are expected on one device)."""
        for ids in self.sparse.values():
            return ids.device
        for values, _ in self.multi_hot.values():
            return values.device
        if self.dense is not None:
            return self.dense.device
        return torch.device("cpu")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RecInputs:
        """A copy with every tensor on ``device``."""
        return RecInputs(
            sparse={k: v.to(device, non_blocking=non_blocking) for k, v in self.sparse.items()},
            multi_hot={
                k: (
                    v.to(device, non_blocking=non_blocking),
                    o.to(device, non_blocking=non_blocking),
                )
                for k, (v, o) in self.multi_hot.items()
            },
            dense=None if self.dense is None else self.dense.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> RecInputs:
        """A copy in pinned host memory (for ``non_blocking`` copies to a GPU)."""
        return RecInputs(
            sparse={k: v.pin_memory() for k, v in self.sparse.items()},
            multi_hot={
                k: (v.pin_memory(), o.pin_memory())
                for k, (v, o) in ((k, as_bag(e, k)) for k, e in self.multi_hot.items())
            },
            dense=None if self.dense is None else self.dense.pin_memory(),
        )

    def validate(self) -> RecInputs:
        """Check shapes and dtypes (not id ranges: the embeddings know the table sizes);
        returns ``self``. Raises ``ValueError``/``TypeError`` naming the feature."""
        n = self.batch_size
        for name, ids in self.sparse.items():
            if not isinstance(ids, Tensor):
                raise TypeError(
                    f"sparse feature {name!r}: expected a tensor, got {type(ids).__name__}"
                )
            if ids.dtype not in (torch.int64, torch.int32):
                raise TypeError(
                    f"sparse feature {name!r}: ids must be int64 (or int32), got {ids.dtype}; "
                    f"encode the column with the fitted feature spec first"
                )
            if ids.dim() != 1 or ids.shape[0] != n:
                raise ValueError(
                    f"sparse feature {name!r}: expected shape ({n},) (one id per row), got "
                    f"{tuple(ids.shape)}"
                )
        for name, pair in self.multi_hot.items():
            values, offsets = as_bag(pair, name)
            if values.dtype not in (torch.int64, torch.int32) or offsets.dtype not in (
                torch.int64,
                torch.int32,
            ):
                raise TypeError(
                    f"multi-hot feature {name!r}: values and offsets must be int64, got "
                    f"{values.dtype} and {offsets.dtype}"
                )
            if values.dim() != 1 or offsets.dim() != 1 or offsets.shape[0] != n + 1:
                raise ValueError(
                    f"multi-hot feature {name!r}: expected 1-d values and offsets of shape "
                    f"({n + 1},) (CSR: N + 1 entries), got {tuple(values.shape)} and "
                    f"{tuple(offsets.shape)}"
                )
        if self.dense is not None:
            if not self.dense.is_floating_point():
                raise TypeError(f"dense features must be floating point, got {self.dense.dtype}")
            if self.dense.dim() != 2 or self.dense.shape[0] != n:
                raise ValueError(
                    f"dense features: expected shape ({n}, D), got {tuple(self.dense.shape)}"
                )
        return self


def random_inputs(
    n: int,
    features: Mapping[str, tuple[int, int]],
    *,
    dense_dim: int = 0,
    multi_hot: Mapping[str, int] | None = None,
    generator: torch.Generator | None = None,
) -> RecInputs:
    """Random :class:`RecInputs` of ``n`` rows for an embedding config ``features`` (feature ->
    ``(num_embeddings, dim)``): uniform ids, standard-normal dense features. Features named in
    ``multi_hot`` (feature -> max bag length) get bags of 0..max ids; the others one id a row.
    For tests, examples and throughput work."""
    multi_hot = dict(multi_hot or {})
    unknown = sorted(set(multi_hot) - set(features))
    if unknown:
        raise ValueError(f"multi_hot names features {unknown} that are not in features")
    sparse: dict[str, Tensor] = {}
    bags: dict[str, tuple[Tensor, Tensor]] = {}
    for name, (num, _) in features.items():
        if name in multi_hot:
            lengths = torch.randint(0, multi_hot[name] + 1, (n,), generator=generator)
            offsets = torch.zeros(n + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(lengths, 0)
            values = torch.randint(0, num, (int(offsets[-1]),), generator=generator)
            bags[name] = (values, offsets)
        else:
            sparse[name] = torch.randint(0, num, (n,), generator=generator)
    dense = torch.randn(n, dense_dim, generator=generator) if dense_dim > 0 else None
    return RecInputs(sparse=sparse, multi_hot=bags, dense=dense)
