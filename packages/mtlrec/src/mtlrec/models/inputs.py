"""The model input of every :mod:`mtlrec` model: :class:`RecInputs`, defined in
:mod:`mtlrec.data.batch` and re-exported here (one class for the data and the model side).

One batch of ``N`` rows:

- ``sparse``: ``{feature: ids}``, one ``int64`` id per row, shape ``(N,)``;
- ``multi_hot``: ``{feature: Jagged(offsets, values)}`` in CSR form — ``values`` the ``int64``
  ids of all rows concatenated, ``offsets`` of shape ``(N + 1,)`` with ``offsets[0] == 0`` and
  ``offsets[-1] == len(values)``; row ``i`` holds ``values[offsets[i]:offsets[i + 1]]`` (an
  empty row pools to zeros);
- ``dense``: ``(N, D)`` float32, always a tensor — ``(N, 0)`` when there are no dense
  features (the constructor turns ``dense=None`` into that).

The data side (:mod:`mtlrec.data`) produces it; the embeddings
(:class:`~mtlrec.models.SparseEmbeddings`) and models consume it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..data.batch import Jagged, RecInputs

__all__ = ["Jagged", "RecInputs", "as_bag", "check_inputs", "random_inputs"]


def as_bag(entry: Any, feature: str = "?") -> tuple[Tensor, Tensor]:
    """``(values, offsets)`` of one multi-hot feature given as a :class:`Jagged` — the order
    ``torch.nn.EmbeddingBag`` takes them in. Anything else is a ``TypeError`` naming
    ``feature``."""
    if isinstance(entry, Jagged):
        return entry.values, entry.offsets
    hint = (
        "; wrap a (values, offsets) pair as Jagged(offsets, values) — note the order"
        if isinstance(entry, tuple | list)
        else ""
    )
    raise TypeError(
        f"multi-hot feature {feature!r}: expected a Jagged(offsets, values), got "
        f"{type(entry).__name__}{hint}"
    )


def check_inputs(inputs: Any, who: str = "the model") -> None:
    """Raise a ``TypeError`` naming ``who`` unless ``inputs`` is a :class:`RecInputs`."""
    if not isinstance(inputs, RecInputs):
        raise TypeError(
            f"{who} takes RecInputs (mtlrec.models.RecInputs, the same class as "
            f"mtlrec.data.RecInputs: sparse, dense and multi_hot fields), not "
            f"{type(inputs).__name__}"
        )


def random_inputs(
    n: int,
    features: Mapping[str, tuple[int, int]],
    *,
    dense_dim: int = 0,
    multi_hot: Mapping[str, int] | None = None,
    generator: torch.Generator | None = None,
) -> RecInputs:
    """Random :class:`RecInputs` of ``n`` rows for an embedding config ``features`` (feature ->
    ``(num_embeddings, dim)``): uniform ids, standard-normal dense features (``(n, 0)`` when
    ``dense_dim`` is 0). Features named in ``multi_hot`` (feature -> max bag length) get
    :class:`Jagged` bags of 0..max ids; the others one id a row. For tests, examples and
    throughput work."""
    multi_hot = dict(multi_hot or {})
    unknown = sorted(set(multi_hot) - set(features))
    if unknown:
        raise ValueError(f"multi_hot names features {unknown} that are not in features")
    if n < 0 or dense_dim < 0:
        raise ValueError(f"n and dense_dim must be >= 0, got n={n}, dense_dim={dense_dim}")
    sparse: dict[str, Tensor] = {}
    bags: dict[str, Jagged] = {}
    for name, (num, _) in features.items():
        if name in multi_hot:
            lengths = torch.randint(0, multi_hot[name] + 1, (n,), generator=generator)
            offsets = torch.zeros(n + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(lengths, 0)
            values = torch.randint(0, num, (int(offsets[-1]),), generator=generator)
            bags[name] = Jagged(offsets, values)
        else:
            sparse[name] = torch.randint(0, num, (n,), generator=generator)
    dense = torch.randn(n, dense_dim, generator=generator) if dense_dim > 0 else torch.zeros(n, 0)
    return RecInputs(sparse, dense, bags)
