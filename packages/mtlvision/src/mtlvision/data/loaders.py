"""Batch loaders whose randomness is all drawn from the global torch RNG when iteration starts.

An epoch's batches (order and augmentation: one seed per sample, passed with its index to a
:class:`Keyed` dataset) depend only on the RNG state at the start of the epoch, not on what
training draws during it (dropout, RLW's random weights, GradDrop's masks), and
:class:`mtltrain.trainer.Trainer`'s mid-epoch resume (restore the epoch-start RNG state,
iterate past the batches already trained on, then restore the saved state) replays them.
Images are decoded by ``torch.utils.data.DataLoader`` (``workers`` processes, or
in-process), which never touches the global RNG here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader

__all__ = ["BatchLoader", "Keyed", "MultiInputLoader"]

_SEED_HIGH = 2**62


class Keyed(Protocol):
    """A map-style dataset indexed by ``(index, seed)``; ``seed`` None means no augmentation."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: tuple[int, int | None]) -> Any: ...


def _dataloader(dataset: Any, batches: Sequence[Sequence[Any]], workers: int) -> DataLoader[Any]:
    # A fixed generator: the DataLoader's own base-seed draw must not consume the global RNG.
    return DataLoader(
        dataset,
        batch_sampler=batches,  # type: ignore[arg-type]
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )


class BatchLoader:
    """Batches of one :class:`Keyed` dataset.

    Args:
        dataset: indexed by ``(index, seed)``.
        batch_size: samples per batch.
        shuffle: a new ``torch.randperm`` order every epoch (global RNG, at iteration start).
        drop_last: drop a last batch smaller than ``batch_size``.
        augment: draw one seed per sample at iteration start and pass it with the index (the
            dataset augments with it); else the seed is None.
        workers: ``DataLoader`` worker processes (0: load in this process).
    """

    def __init__(
        self,
        dataset: Keyed,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: bool = False,
        workers: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.workers = workers
        if len(self) == 0:
            raise ValueError(
                f"batch_size {batch_size} with drop_last leaves no batch of the "
                f"{len(dataset)} samples; use a smaller batch_size"
            )

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        n = len(self.dataset)
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        seeds = torch.randint(0, _SEED_HIGH, (n,)) if self.augment else None
        bs = self.batch_size
        batches: list[list[tuple[int, int | None]]] = []
        for b in range(len(self)):
            idx = order[b * bs : (b + 1) * bs].tolist()
            if seeds is None:
                batches.append([(i, None) for i in idx])
            else:
                batches.append([(i, int(seeds[i])) for i in idx])
        yield from _dataloader(self.dataset, batches, self.workers)


class MultiInputLoader:
    """One batch of every task per step, each task from its own data set (Office-31/-Home:
    every domain is a task with its own images). Batches are ``({task: x}, {task: y})``.

    Training (``shuffle=True``), as LibMTL does for multi-input problems: an epoch has
    ``max_t ⌊n_t / batch_size⌋`` steps; a task with fewer samples starts over (a new
    permutation) when it runs out. All permutations of the epoch are drawn at its start.

    Evaluation (``shuffle=False``): every sample of every task exactly once, in
    ``B = min(⌈max_t n_t / batch_size⌉, min_t n_t)`` steps, task ``t`` split into ``B`` nearly
    equal consecutive chunks — so every step holds every task (the trainer needs a target of
    each task in each batch) and per-task means over steps are means over samples up to the
    ±1 difference in chunk sizes.
    """

    def __init__(
        self,
        datasets: Mapping[str, Keyed],
        batch_size: int,
        *,
        shuffle: bool = False,
        workers: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        if not datasets:
            raise ValueError("no task data sets given")
        empty = [t for t, d in datasets.items() if len(d) == 0]
        if empty:
            raise ValueError(f"tasks {empty} have no samples")
        self.datasets = dict(datasets)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.workers = workers
        if len(self) == 0:
            sizes = {t: len(d) for t, d in self.datasets.items()}
            raise ValueError(
                f"batch_size {batch_size} is larger than every task's training set {sizes}; "
                f"use a smaller batch_size"
            )

    def __len__(self) -> int:
        sizes = [len(d) for d in self.datasets.values()]
        if self.shuffle:
            return max(n // self.batch_size for n in sizes)
        return min(math.ceil(max(sizes) / self.batch_size), min(sizes))

    def _batches(self) -> dict[str, list[list[tuple[int, int | None]]]]:
        steps = len(self)
        out: dict[str, list[list[tuple[int, int | None]]]] = {}
        for task, dataset in self.datasets.items():
            n = len(dataset)
            if self.shuffle:
                need = steps * self.batch_size
                order = torch.cat([torch.randperm(n) for _ in range(math.ceil(need / n))])
                chunks = [
                    order[k * self.batch_size : (k + 1) * self.batch_size] for k in range(steps)
                ]
            else:
                chunks = list(torch.tensor_split(torch.arange(n), steps))
            out[task] = [[(int(i), None) for i in c] for c in chunks]
        return out

    def __iter__(self) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        batches = self._batches()  # every random draw of the epoch happens here
        iterators = {
            t: iter(_dataloader(self.datasets[t], b, self.workers)) for t, b in batches.items()
        }
        for _ in range(len(self)):
            inputs: dict[str, Tensor] = {}
            targets: dict[str, Tensor] = {}
            for task, it in iterators.items():
                x, y = next(it)
                inputs[task], targets[task] = x, y
            yield inputs, targets
