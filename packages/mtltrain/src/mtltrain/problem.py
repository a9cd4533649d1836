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

import torch
from torch import nn

from .sharded import ShardedModel
from .task import Task
from .trainer import Unpack

__all__ = ["BalancerParameters", "MultiTaskModel", "Problem", "TableModel"]

Params = Iterable[nn.Parameter] | nn.Module


@runtime_checkable
class MultiTaskModel(Protocol):
    """A model that names its shared and task-specific parameters."""

    def shared_parameters(self) -> Params: ...

    def task_parameters(self) -> Mapping[str, Params]: ...


@runtime_checkable
class TableModel(MultiTaskModel, Protocol):
    """A model whose shared parameters are embedding tables and dense shared layers (recsys):
    ``shared_parameters()`` is both; the split lets the tables be balanced approximately
    (``Balancer(tables=...)``) while the dense part gets exact per-task gradients."""

    def embedding_parameters(self) -> Params: ...

    def dense_shared_parameters(self) -> Params: ...


@dataclass(frozen=True)
class BalancerParameters:
    """What a balancer is built over: ``mtlbalance.make(method, shared, tasks, tables=...)``
    (``tables`` None: every shared parameter is in the exact per-task gradient matrix)."""

    shared: Params
    tasks: Mapping[str, Params]
    tables: Params | None = None


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
            per-task factors c_t); ``"sharded"`` — as ``"approx"``, the tables sharded across
            the ranks of a distributed run by ``shard`` (the balancer gets the model's
            ``table_frontier()`` as its tables).
        shard: ``(model, device) -> ShardedModel`` for ``balance_tables="sharded"`` (a
            collective: every rank, after the process group is up).
        data_parallel: how a distributed run's ranks get their training rows
            (:attr:`TrainerConfig.data_parallel`): ``"split_batch"`` (every rank reads every
            batch and takes its slice) or ``"sharded_loader"`` (``loader`` already yields this
            rank's rows, e.g. a streamed split each rank reads its share of).
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
    shard: Callable[[nn.Module, torch.device], ShardedModel] | None = None
    data_parallel: str = "split_batch"

    def __post_init__(self) -> None:
        if self.balance_tables not in ("exact", "approx", "sharded"):
            raise ValueError(
                f"balance_tables must be 'exact', 'approx' or 'sharded', not "
                f"{self.balance_tables!r}"
            )
        if (self.balance_tables == "sharded") != (self.shard is not None):
            raise ValueError("shard= is given exactly when balance_tables='sharded'")

    def balancer_parameters(self, model: nn.Module) -> BalancerParameters:
        """How ``model``'s parameters split for the balancer under ``balance_tables``."""
        if not isinstance(model, MultiTaskModel):
            raise TypeError(
                f"the model {type(model).__name__} must define shared_parameters() and "
                "task_parameters() (mtltrain.problem.MultiTaskModel)"
            )
        if self.balance_tables == "exact":
            return BalancerParameters(model.shared_parameters(), model.task_parameters())
        if not isinstance(model, TableModel):
            raise TypeError(
                f"approximate table balancing needs a model with embedding_parameters() and "
                f"dense_shared_parameters() (mtltrain.problem.TableModel); "
                f"{type(model).__name__} has not"
            )
        if self.balance_tables == "sharded":
            frontier = getattr(model, "table_frontier", None)
            if frontier is None:
                raise TypeError(
                    f"sharded tables need a model with table_frontier() (mtlrec's models); "
                    f"{type(model).__name__} has not"
                )
            return BalancerParameters(
                model.dense_shared_parameters(), model.task_parameters(), tables=[frontier()]
            )
        return BalancerParameters(
            model.dense_shared_parameters(),
            model.task_parameters(),
            tables=model.embedding_parameters(),
        )
