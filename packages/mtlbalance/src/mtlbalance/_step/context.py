"""The per-step object and what every step of one balancer runs with."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .._params import FlatLayout
from ..aggregators.base import Aggregator
from ..transforms.base import LossTransform
from .buffers import EngineSlot, UpdateBuffers
from .collective import Collective
from .mode import FastMode

Grads = list[Tensor | None]


@dataclass
class Accumulation:
    """Sums over the micro-batches of one optimizer step."""

    count: int
    loss_sum: Tensor
    rows: Tensor  # (T, P) raw rows ∇θ ℓ_t, or (1, P) Σ_t ∇θ ℓ_t for plain EW
    task_grads: list[Grads]
    reached: list[bool]
    plain_sum: bool
    engine: str | None
    scale_bad: Tensor | None = None  # set when a micro-batch had a loss scale (invalid flag)
    # the tables' gradient sums: per task ∇ℓ_t (or one row Σ_t ∇ℓ_t for plain EW)
    table_grads: list[Grads] = field(default_factory=list)
    table_reached: list[bool] = field(default_factory=list)


@dataclass
class Options:
    """The balancer's options that the stages read (the Balancer's attributes of the same
    names set them)."""

    check_finite: bool
    allow_unused: bool
    retain_graph: bool
    max_update_norm: float | None


@dataclass
class Setup:
    """What every step of one balancer runs with (fixed once the tasks are known)."""

    task_names: tuple[str, ...]
    layout: FlatLayout  # the shared parameters
    task_params: list[list[Tensor]]  # per task, its own parameters
    tables: list[tuple[str, Tensor]]  # the approximately balanced tables, named
    transform: LossTransform
    aggregator: Aggregator
    engine: EngineSlot
    buffers: UpdateBuffers
    options: Options
    mode: FastMode  # exact, or an approximate variant of the engine stage (and its state)
    warned: set[str] = field(default_factory=set)  # one-time warnings already given
    collective: Collective | None = None  # data parallel: the process group (see reduce.py)

    @property
    def table_params(self) -> list[Tensor]:
        return [p for _, p in self.tables]

    @property
    def engine_retains_graph(self) -> bool:
        """The engine keeps the graph when the caller asks, or when the tables' backward (or
        the probe mode's one backward, after its first, exact step) follows the engine's."""
        return self.options.retain_graph or bool(self.tables) or self.mode.name == "probe"

    def transform_params(self) -> list[Tensor]:
        return [p for p in self.transform.parameters() if p.requires_grad]


@dataclass
class Step:
    """One balancing step, as it flows through the stages (each fills its part).

    inputs / transform / loss scale:
        ``vec``: the raw losses (T,) — attached to the graph for a direct step, the detached
        means over the micro-batches for an accumulated one; ``raw``: the graph-attached
        scalar losses (None when accumulated); ``transformed``, ``seed`` (``∂ℓ̃/∂ℓ``, (T,)
        or (T, T)), ``backward_seed`` (``S ∂ℓ̃/∂ℓ``, what a backward through the network is
        seeded with) and ``transform_grads`` (the transform's own parameters' gradients);
        ``scale`` (the loss scale, None without one) and ``scale_bad`` (its device flag, or
        the micro-batches' accumulated one); ``representation``.
    engine / reduce:
        ``rows`` (T, P) ``∇θ ℓ̃_t`` or ``rep_rows`` (T, R) at the representation;
        ``task_grads``: per task, its own parameters' gradients; ``engine``: its label;
        ``grad_norms``: the rows' norms.
    weighting / aggregation:
        ``weights`` (for stats), ``task_weights`` (factors of the task-specific gradients),
        ``update_index``: the update buffer the aggregator wrote into; ``update``: a flat
        shared update to copy there instead; ``shared_grads``: per-parameter shared
        gradients of one combined backward instead.
    tables:
        ``table_grads`` and ``table_factors``.
    mode: ``mode``: the mode that ran (``"exact"``, ``"probe"``, ``"representation"``,
        ``"periodic/exact"``, ``"periodic/reuse"``), for the stats.
    check / write-back:
        ``combined`` and ``combined_norms``: what the shared parameters and tables get, and
        its norms, when a stage needed them for the check; ``per_rank``: the per-rank
        tables' gradients with their global norms (data parallel); ``update_norm``;
        ``skipped``.
    """

    vec: Tensor
    transformed: Tensor
    seed: Tensor
    raw: list[Tensor] | None = None
    backward_seed: Tensor | None = None  # S ∂ℓ̃/∂ℓ: what every backward is seeded with
    transform_grads: Grads | None = None
    scale: Tensor | None = None
    scale_bad: Tensor | None = None
    representation: tuple[Tensor, ...] | None = None
    accumulated: Accumulation | None = None
    # engine / reduce
    rows: Tensor | None = None
    rep_rows: Tensor | None = None
    rep_gram: Tensor | None = None  # representation mode, data parallel: the global R Rᵀ
    task_grads: list[Grads] = field(default_factory=list)
    engine: str | None = None
    grad_norms: Tensor | None = None
    # weighting / aggregation
    weights: Tensor | None = None
    task_weights: Tensor | None = None
    update_index: int | None = None
    update: Tensor | None = None
    shared_grads: Grads | None = None
    # tables
    table_grads: Grads = field(default_factory=list)
    table_factors: Tensor | None = None
    # check / write-back
    combined: list[Tensor] = field(default_factory=list)
    combined_norms: Tensor | None = None
    # data parallel, per-rank tables (:mod:`.perrank`): (gradient, its global norm)
    per_rank: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    update_norm: Tensor | None = None
    skipped: bool = False
    mode: str = "exact"
