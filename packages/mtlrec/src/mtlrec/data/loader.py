"""Batches for the trainer: :class:`RecLoader` over tensors in memory, and
:func:`iter_batches` / :class:`LazyLoader` that stream a file in slices so it is never held
whole."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import torch
from torch import Tensor

from ._diagnose import reading, scan_paths
from .batch import RecBatch, RecInputs
from .errors import ORIGIN_FILE
from .spec import FittedFeatures

__all__ = ["LazyLoader", "RecLoader", "iter_batches", "make_loader"]


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")


class RecLoader:
    """Batches ``(RecInputs, {task: target})`` of a :class:`RecBatch` held in memory.

    With ``shuffle`` the order is a ``torch.randperm`` from the global torch RNG drawn when
    iteration starts (as :class:`mtltrain.data.TensorLoader`), so a resumed epoch replays.
    """

    def __init__(
        self, data: RecBatch, batch_size: int, *, shuffle: bool = False, drop_last: bool = False
    ) -> None:
        _check_batch_size(batch_size)
        n = len(data)
        if n == 0:
            raise ValueError("the data hold no rows")
        for task, y in data.labels.items():
            if y.shape[0] != n:
                raise ValueError(f"labels[{task!r}] has {y.shape[0]} rows, inputs have {n}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[RecInputs, dict[str, Tensor]]]:
        n = len(self.data)
        order = torch.randperm(n) if self.shuffle else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            idx = order[lo:hi] if order is not None else torch.arange(lo, hi)
            yield self.data.index(idx).as_pair()


def make_loader(data: RecBatch, batch_size: int, shuffle: bool) -> RecLoader:
    """``Problem.loader``: ``(split, batch_size, shuffle) -> RecLoader``."""
    return RecLoader(data, batch_size, shuffle=shuffle)


def iter_batches(
    frame: pl.LazyFrame,
    fitted: FittedFeatures,
    batch_size: int,
    *,
    source: str | None = None,
    labels: bool = True,
    drop_last: bool = False,
) -> Iterator[RecBatch]:
    """Stream ``frame`` (e.g. ``pl.scan_csv`` / ``pl.scan_parquet``) as :class:`RecBatch` es of
    ``batch_size`` rows, in file order, never collecting the whole frame.

    Uses polars' streaming engine (``LazyFrame.collect_batches``) and cuts its chunks into
    exact batches; at most one chunk plus one batch is held at a time.

    Errors are :class:`~mtlrec.data.errors.DataError` s naming the file and its data row: the
    row the origin columns of this package's readers give (right after a ``filter`` too), else
    the position in the stream, counted in ``source``. A file polars cannot parse is checked
    then (the error path only) to name the line and column.
    """
    _check_batch_size(batch_size)
    pending: list[pl.DataFrame] = []
    held = 0
    offset = 0
    with reading(frame, source):
        if source is None and ORIGIN_FILE not in frame.collect_schema().names():
            source = ", ".join(scan_paths(frame)) or None  # name the file for positional rows
        chunks = iter(frame.collect_batches(chunk_size=batch_size, maintain_order=True))
    while True:
        with reading(frame, source):
            chunk = next(chunks, None)
        if chunk is None:
            break
        if chunk.height == 0:
            continue
        pending.append(chunk)
        held += chunk.height
        while held >= batch_size:
            df = pl.concat(pending) if len(pending) > 1 else pending[0]
            out, rest = df[:batch_size], df[batch_size:]
            yield fitted.transform(out, source=source, row_offset=offset, labels=labels)
            offset += batch_size
            pending, held = ([rest] if rest.height else []), rest.height
    if held and not drop_last:
        df = pl.concat(pending) if len(pending) > 1 else pending[0]
        yield fitted.transform(df, source=source, row_offset=offset, labels=labels)


class LazyLoader:
    """A re-iterable of ``(RecInputs, {task: target})`` streamed from a lazy frame (see
    :func:`iter_batches`), for training on files larger than memory.

    Rows come in file order; ``shuffle`` shuffles within a window of ``shuffle_window``
    batches with ``torch.randperm`` from the global torch RNG (an approximate shuffle, as
    every streaming loader's; shuffle the file itself once for a full one).
    """

    def __init__(
        self,
        frame: pl.LazyFrame,
        fitted: FittedFeatures,
        batch_size: int,
        *,
        shuffle: bool = False,
        shuffle_window: int = 16,
        source: str | None = None,
        drop_last: bool = False,
    ) -> None:
        _check_batch_size(batch_size)
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1, not {shuffle_window}")
        self.frame = frame
        self.fitted = fitted
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.shuffle_window = shuffle_window
        self.source = source
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[tuple[RecInputs, dict[str, Tensor]]]:
        it = iter_batches(
            self.frame, self.fitted, self.batch_size, source=self.source, drop_last=self.drop_last
        )
        if not self.shuffle:
            for b in it:
                yield b.as_pair()
            return
        window: list[RecBatch] = []
        for b in it:
            window.append(b)
            if len(window) == self.shuffle_window:
                yield from self._flush(window)
                window = []
        if window:
            yield from self._flush(window)

    def _flush(self, window: list[RecBatch]) -> Iterator[tuple[RecInputs, dict[str, Tensor]]]:
        data = RecBatch.cat(window)
        order = torch.randperm(len(data))
        for lo in range(0, len(data), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            if self.drop_last and idx.shape[0] < self.batch_size:
                break
            yield data.index(idx).as_pair()
