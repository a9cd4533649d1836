"""What a domain package hands to the benchmark runner: a :class:`Problem` (data, tasks, a
model factory) built from a benchmark spec's options.

A domain package provides a builder ``build(*, data: dict, model: dict) -> Problem``; a spec
names it (``problem = "mtlrec.bench:census_income"``). Models follow
:class:`MultiTaskModel`: ``forward(inputs)`` returns ``{task: prediction}`` or
``(representation, {task: prediction})``, and the model says which parameters are shared and
which belong to each task, so every balancing method applies unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import nn

from .task import Task
from .trainer import Unpack

__all__ = ["MultiTaskModel", "Problem"]


@runtime_checkable
class MultiTaskModel(Protocol):
    """A model that names its shared and task-specific parameters."""

    def shared_parameters(self) -> Iterable[nn.Parameter] | nn.Module: ...

    def task_parameters(self) -> Mapping[str, Iterable[nn.Parameter] | nn.Module]: ...


Loader = Callable[[Any, int, bool], Iterable[Any]]
"""``(dataset, batch_size, shuffle) -> re-iterable of batches``"""


@dataclass
class Problem:
    """Data, tasks and a model factory for one benchmark.

    Attributes:
        tasks: the tasks in order (their names are the balancer's task names).
        train, val, test: the splits, in whatever form ``loader`` takes.
        make_model: builds a fresh :class:`MultiTaskModel` (seed before calling it).
        loader: ``(split, batch_size, shuffle) -> batches``. Shuffling must draw from the
            global torch RNG at iteration start (as ``DataLoader(shuffle=True)`` and
            :class:`~mtltrain.data.TensorLoader` do) so an interrupted epoch replays.
        unpack: ``batch -> (inputs, {task: target})`` when batches are not such pairs.
        info: anything worth logging about the data (sizes, split seed, source files).
        balance_tables: ``"exact"`` — every shared parameter goes into the per-task gradient
            matrix; ``"approx"`` — a model with ``embedding_parameters()`` and
            ``dense_shared_parameters()`` has its tables balanced approximately
            (``Balancer(tables=...)``: one backward of Σ_t c_t ℓ̃_t with the dense part's
            per-task factors c_t).
    """

    tasks: list[Task]
    train: Any
    val: Any
    test: Any
    make_model: Callable[[], nn.Module]
    loader: Loader
    unpack: Unpack | None = None
    info: dict[str, Any] = field(default_factory=dict)
    balance_tables: str = "exact"
